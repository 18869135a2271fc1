//! Plain-language understanding for the scripted users: normalisation, light stemming, phrase and synonym
//! matching with negation, near-duplicate detection and keyword-stuffing detection. The scripted users are
//! what an RL agent will try to exploit, so the exploit detectors live here, shared by every gym.

use std::collections::HashSet;

/// Words that carry no topic. Used to tell a sentence from a bag of keywords and to compare texts by content.
pub const STOPWORDS: &[&str] = &[
    "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are", "as", "at", "be",
    "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does",
    "doing", "down", "during", "each", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her",
    "here", "hers", "herself", "him", "himself", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself",
    "just", "me", "might", "more", "most", "must", "my", "myself", "of", "off", "on", "once", "only", "or", "other",
    "our", "ours", "out", "over", "own", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their",
    "theirs", "them", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until",
    "up", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with",
    "would", "you", "your", "yours", "yourself", "please", "tell", "know", "let", "like", "want", "would", "also",
    "maybe", "perhaps", "really", "think", "there's", "it's", "s",
];

/// Words that negate what follows.
pub const NEGATORS: &[&str] = &["not", "no", "never", "neither", "nor", "without", "none", "nothing", "cannot"];

pub fn is_stopword(word: &str) -> bool {
    STOPWORDS.contains(&word)
}

/// Lowercases and splits into words; contractions become their parts (`isn't` -> `is not`, `can't` -> `can not`).
pub fn words(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let mut out = Vec::new();
    for raw in lower.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’')) {
        let w = raw.trim_matches(|c| c == '\'' || c == '’');
        if w.is_empty() {
            continue;
        }
        let w = w.replace('’', "'");
        if let Some(stem) = w.strip_suffix("n't") {
            let stem = match stem {
                "ca" => "can",
                "wo" => "will",
                "sha" => "shall",
                other => other,
            };
            if !stem.is_empty() {
                out.push(stem.to_string());
            }
            out.push("not".to_string());
        } else if let Some(stem) =
            w.strip_suffix("'s").or_else(|| w.strip_suffix("'re")).or_else(|| w.strip_suffix("'ve"))
        {
            out.push(stem.to_string());
        } else if let Some(stem) =
            w.strip_suffix("'ll").or_else(|| w.strip_suffix("'d")).or_else(|| w.strip_suffix("'m"))
        {
            out.push(stem.to_string());
        } else {
            out.push(w.replace('\'', ""));
        }
    }
    out
}

/// A light suffix stemmer: enough to match `cats`/`cat`, `flying`/`fly`, `married`/`marry`.
pub fn stem(word: &str) -> String {
    let w = word;
    let n = w.chars().count();
    if n <= 3 || !w.is_ascii() {
        return w.to_string();
    }
    let strip = |suffix: &str, keep_min: usize| -> Option<String> {
        w.strip_suffix(suffix).filter(|s| s.len() >= keep_min).map(str::to_string)
    };
    if let Some(s) = strip("ies", 2) {
        return s + "y";
    }
    if let Some(s) = strip("ied", 2) {
        return s + "y";
    }
    for suffix in ["ingly", "edly", "ness", "ment"] {
        if let Some(s) = strip(suffix, 3) {
            return s;
        }
    }
    if let Some(s) = strip("ing", 3).or_else(|| strip("ed", 3)) {
        let b = s.as_bytes();
        // running -> run, stopped -> stop
        if b.len() >= 2 && b[b.len() - 1] == b[b.len() - 2] && !matches!(b[b.len() - 1], b'l' | b's' | b'z') {
            return s[..s.len() - 1].to_string();
        }
        return s;
    }
    if let Some(s) = strip("es", 3)
        && (s.ends_with("sh") || s.ends_with("ch") || s.ends_with('x') || s.ends_with("ss"))
    {
        return s;
    }
    if w.ends_with("ss") || w.ends_with("us") || w.ends_with("is") {
        return w.to_string();
    }
    if let Some(s) = strip("s", 3) {
        return s;
    }
    if let Some(s) = strip("ly", 4) {
        return s;
    }
    w.to_string()
}

/// Words of `text`, stemmed.
pub fn stems(text: &str) -> Vec<String> {
    words(text).iter().map(|w| stem(w)).collect()
}

/// Stemmed words that are not stopwords.
pub fn content_stems(text: &str) -> Vec<String> {
    words(text).iter().filter(|w| !is_stopword(w) && !NEGATORS.contains(&w.as_str())).map(|w| stem(w)).collect()
}

/// A phrase to look for: its stemmed words, matched contiguously.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Phrase(Vec<String>);

impl Phrase {
    pub fn new(text: &str) -> Phrase {
        Phrase(stems(text))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Start positions of the phrase in `tokens` (stemmed words).
    pub fn positions(&self, tokens: &[String]) -> Vec<usize> {
        if self.0.is_empty() || tokens.len() < self.0.len() {
            return Vec::new();
        }
        (0..=tokens.len() - self.0.len()).filter(|&i| tokens[i..i + self.0.len()] == self.0[..]).collect()
    }
}

/// A text prepared once for many phrase lookups.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub words: Vec<String>,
    pub stems: Vec<String>,
}

impl Parsed {
    pub fn new(text: &str) -> Parsed {
        let words = words(text);
        let stems = words.iter().map(|w| stem(w)).collect();
        Parsed { words, stems }
    }

    /// Whether any of the phrases occurs; `Some(negated)` when it does. A match is negated when a negator stands
    /// within the three words before it.
    pub fn find_any(&self, phrases: &[Phrase]) -> Option<bool> {
        let mut found: Option<bool> = None;
        for phrase in phrases {
            for pos in phrase.positions(&self.stems) {
                let negated = self.negated_at(pos);
                found = Some(found.map_or(negated, |prev| prev && negated));
            }
        }
        found
    }

    pub fn contains(&self, phrase: &Phrase) -> bool {
        !phrase.positions(&self.stems).is_empty()
    }

    pub fn negated_at(&self, pos: usize) -> bool {
        let from = pos.saturating_sub(3);
        self.words[from..pos].iter().any(|w| NEGATORS.contains(&w.as_str()))
    }

    /// Whether the text negates anything at all.
    pub fn has_negation(&self) -> bool {
        self.words.iter().any(|w| NEGATORS.contains(&w.as_str()))
    }
}

/// Jaccard similarity of the content-stem sets of two texts (1.0 for two texts with no content words).
pub fn similarity(a: &str, b: &str) -> f64 {
    let a: HashSet<String> = content_stems(a).into_iter().collect();
    let b: HashSet<String> = content_stems(b).into_iter().collect();
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let inter = a.intersection(&b).count() as f64;
    let union = a.union(&b).count() as f64;
    inter / union
}

/// Whether `text` says nearly the same as one of `earlier` (content overlap at or above `threshold`).
pub fn repeats(text: &str, earlier: &[String], threshold: f64) -> bool {
    earlier.iter().any(|e| similarity(text, e) >= threshold)
}

/// Whether a text reads as a bag of keywords rather than a sentence: long enough, and almost no function words
/// or mostly separated by commas / newlines. Rewarding such text would teach an agent to stuff keywords.
pub fn is_keyword_list(text: &str) -> bool {
    let w = words(text);
    if w.len() < 8 {
        return false;
    }
    let function_words = w.iter().filter(|x| is_stopword(x)).count();
    let separators = text.chars().filter(|c| matches!(c, ',' | ';' | '|' | '/' | '\n')).count();
    (function_words as f64) / (w.len() as f64) < 0.12 || separators * 3 >= w.len()
}

/// Whether the text has the grammar of a yes/no question or statement at all (has at least one word).
pub fn has_words(text: &str) -> bool {
    text.chars().any(char::is_alphanumeric)
}

/// A deterministic 64-bit mix (splitmix64), for per-step seeds derived from an episode seed.
pub fn mix(seed: u64, salt: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Picks one of `options` by `seed`.
pub fn pick<'a>(options: &[&'a str], seed: u64) -> &'a str {
    if options.is_empty() { "" } else { options[(seed % options.len() as u64) as usize] }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contractions_and_stems() {
        assert_eq!(words("Isn't it RED? Can't say."), ["is", "not", "it", "red", "can", "not", "say"]);
        assert_eq!(stem("cats"), "cat");
        assert_eq!(stem("running"), "run");
        assert_eq!(stem("flies"), "fly");
        assert_eq!(stem("married"), "marry");
        assert_eq!(stem("glass"), "glass");
        assert_eq!(stem("boxes"), "box");
    }

    #[test]
    fn phrases_match_with_negation() {
        let p = Parsed::new("Is it not a large animal?");
        assert_eq!(p.find_any(&[Phrase::new("animals")]), Some(true));
        let p = Parsed::new("Does it live in the ocean");
        assert_eq!(p.find_any(&[Phrase::new("sea"), Phrase::new("oceans")]), Some(false));
        assert_eq!(p.find_any(&[Phrase::new("desert")]), None);
        let p = Parsed::new("lives in the deep ocean");
        assert!(p.contains(&Phrase::new("deep oceans")));
    }

    #[test]
    fn repeats_and_keyword_lists() {
        assert!(repeats("Is it an animal?", &["is it an ANIMAL".into()], 0.8));
        assert!(!repeats("Is it a plant?", &["is it an animal".into()], 0.8));
        assert!(is_keyword_list("poison knife brother twin hospital money revenge ghost dream storm"));
        assert!(is_keyword_list("poison, knife, brother, twin, in the hospital, money"));
        assert!(!is_keyword_list("The man was poisoned by his twin brother because he wanted the money."));
    }
}
