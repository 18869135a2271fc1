//! How the scripted persuadee reads an argument: the text is cut into sentences and clauses, each counter-argument
//! point is a set of concept groups (synonym phrases, `word*` for a word family) that must all appear, not
//! negated, within one sentence or two adjacent ones. A point whose concepts appear but are negated is a denial
//! of it (the persuader argues for the claim). The lexicon of a task is compiled once when the gym loads, so a
//! reply costs microseconds.

use std::collections::HashSet;

use crate::text::{self, NEGATORS};

/// Phrases that say the persuader agrees with the persuadee (unless negated).
const AGREEMENT: &[&str] = &[
    "i agree",
    "agree with you",
    "you are right",
    "you right",
    "you are correct",
    "i support the claim",
    "the claim is true",
    "the claim is correct",
    "the claim is right",
    "i am on your side",
];

/// Phrases that flatly deny the claim: on their own they are an assertion, not an argument.
const DENIAL: &[&str] = &[
    "you are wrong",
    "you wrong",
    "is wrong",
    "is false",
    "is untrue",
    "i disagree",
    "bad idea",
    "terrible idea",
    "is a mistake",
    "you are mistaken",
];

/// One word of a pattern: an exact stemmed word, or the start of a word (`pollut*`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Exact(String),
    Prefix(String),
}

/// A contiguous phrase of `Tok`s.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(Vec<Tok>);

impl Pattern {
    /// Compiles a phrase: words ending in `*` match by prefix, the others by stem; contractions are split as
    /// in `text::words`.
    pub fn new(phrase: &str) -> Pattern {
        let mut toks = Vec::new();
        for raw in phrase.split_whitespace() {
            if let Some(prefix) = raw.strip_suffix('*') {
                let prefix = prefix.to_lowercase();
                if !prefix.is_empty() {
                    toks.push(Tok::Prefix(prefix));
                }
            } else {
                toks.extend(text::words(raw).iter().map(|w| Tok::Exact(text::stem(w))));
            }
        }
        Pattern(toks)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn matches_at(&self, s: &Sentence, at: usize) -> bool {
        if at + self.0.len() > s.words.len() {
            return false;
        }
        self.0.iter().enumerate().all(|(k, tok)| match tok {
            Tok::Exact(stem) => s.stems[at + k] == *stem,
            Tok::Prefix(prefix) => s.words[at + k].starts_with(prefix.as_str()),
        })
    }

    /// `Some(negated)` when the pattern occurs in the sentence; negated only when every occurrence is.
    fn find(&self, s: &Sentence) -> Option<bool> {
        if self.0.is_empty() || s.words.len() < self.0.len() {
            return None;
        }
        let mut found: Option<bool> = None;
        for at in 0..=s.words.len() - self.0.len() {
            if self.matches_at(s, at) {
                let negated = s.negated_at(at);
                found = Some(found.map_or(negated, |prev| prev && negated));
                if !negated {
                    return found;
                }
            }
        }
        found
    }
}

/// One sentence, tokenised, with the clause of every word (negation does not cross a comma).
#[derive(Clone, Debug)]
pub struct Sentence {
    words: Vec<String>,
    stems: Vec<String>,
    clauses: Vec<u16>,
    /// Long enough and not a bag of keywords: only such sentences can make a point.
    pub valid: bool,
}

impl Sentence {
    fn new(text: &str) -> Sentence {
        let mut words = Vec::new();
        let mut clauses = Vec::new();
        for (c, clause) in text.split([',', ':', '(', ')', '—', '–', '"', '“', '”']).enumerate() {
            for w in text::words(clause) {
                words.push(w);
                clauses.push(c.min(u16::MAX as usize) as u16);
            }
        }
        let stems = words.iter().map(|w| text::stem(w)).collect();
        let valid = words.len() >= 3 && !is_keyword_list(text, &words);
        Sentence { words, stems, clauses, valid }
    }

    /// The sentence's content stems (neither stopwords nor negators).
    fn content_stems(&self) -> impl Iterator<Item = &String> {
        self.words
            .iter()
            .zip(&self.stems)
            .filter(|(w, _)| !text::is_stopword(w) && !NEGATORS.contains(&w.as_str()))
            .map(|(_, s)| s)
    }

    /// A negator among the three words before `at`, in the same clause (`not only` does not negate).
    fn negated_at(&self, at: usize) -> bool {
        let from = at.saturating_sub(3);
        (from..at).any(|j| {
            self.clauses[j] == self.clauses[at]
                && NEGATORS.contains(&self.words[j].as_str())
                && !(self.words[j] == "not" && self.words.get(j + 1).is_some_and(|w| w == "only"))
        })
    }
}

/// `text::is_keyword_list` on words already split (the same rule, without tokenising the sentence twice).
fn is_keyword_list(text: &str, words: &[String]) -> bool {
    if words.len() < 8 {
        return false;
    }
    let function_words = words.iter().filter(|w| text::is_stopword(w)).count();
    let separators = text.chars().filter(|c| matches!(c, ',' | ';' | '|' | '/' | '\n')).count();
    (function_words as f64) / (words.len() as f64) < 0.12 || separators * 3 >= words.len()
}

/// Splits a text into sentences (at `.`, `!`, `?`, `;` and line breaks).
pub fn sentences(text: &str) -> Vec<Sentence> {
    text.split(['.', '!', '?', ';', '\n']).filter(|s| text::has_words(s)).map(Sentence::new).collect()
}

/// A counter-argument point, compiled: every group must be present (one of its patterns).
#[derive(Clone, Debug)]
pub struct CompiledPoint {
    groups: Vec<Vec<Pattern>>,
}

impl CompiledPoint {
    pub fn new(concepts: &[Vec<String>]) -> CompiledPoint {
        let groups = concepts
            .iter()
            .map(|g| g.iter().map(|p| Pattern::new(p)).filter(|p| !p.is_empty()).collect::<Vec<_>>())
            .filter(|g: &Vec<Pattern>| !g.is_empty())
            .collect();
        CompiledPoint { groups }
    }

    fn group_in(group: &[Pattern], s: &Sentence) -> Option<bool> {
        let mut found: Option<bool> = None;
        for p in group {
            if let Some(negated) = p.find(s) {
                found = Some(found.map_or(negated, |prev| prev && negated));
                if !negated {
                    return found;
                }
            }
        }
        found
    }

    /// What the sentences say about this point: `Some(true)` made, `Some(false)` denied, `None` absent.
    fn judge(&self, sentences: &[Sentence]) -> Option<bool> {
        if self.groups.is_empty() {
            return None;
        }
        let status: Vec<Vec<Option<bool>>> = sentences
            .iter()
            .map(|s| self.groups.iter().map(|g| if s.valid { Self::group_in(g, s) } else { None }).collect())
            .collect();
        let mut denied = false;
        for i in 0..status.len() {
            // Windows of one sentence and of two adjacent sentences.
            for j in i..(i + 2).min(status.len()) {
                let window = &status[i..=j];
                let all_affirmed = (0..self.groups.len()).all(|g| window.iter().any(|s| s[g] == Some(false)));
                let all_present = (0..self.groups.len()).all(|g| window.iter().any(|s| s[g].is_some()));
                if all_affirmed {
                    return Some(true);
                }
                denied |= all_present;
            }
        }
        if denied { Some(false) } else { None }
    }
}

/// A task's compiled vocabulary.
#[derive(Clone, Debug, Default)]
pub struct Lexicon {
    pub points: Vec<CompiledPoint>,
    /// Content stems of the claim, the persuadee's argument and the points' plain words: a text sharing none of
    /// them is off topic.
    topic: HashSet<String>,
    claim: HashSet<String>,
    own_argument: HashSet<String>,
}

/// What one argument does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Analysis {
    /// Points it makes (indices into the task's points).
    pub made: Vec<usize>,
    /// Points whose concepts it mentions only to negate them.
    pub denied: Vec<usize>,
    pub agrees: bool,
    pub flat_denial: bool,
    pub on_topic: bool,
    /// Content overlap with the persuadee's own argument.
    pub echo: f64,
}

fn jaccard(a: &HashSet<String>, b: &HashSet<String>) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let inter = a.intersection(b).count() as f64;
    inter / a.union(b).count() as f64
}

fn find_any(patterns: &[Pattern], sentences: &[Sentence]) -> bool {
    sentences.iter().any(|s| patterns.iter().any(|p| p.find(s) == Some(false)))
}

impl Lexicon {
    pub fn new(claim: &str, argument: &str, points: &[Vec<Vec<String>>]) -> Lexicon {
        let mut topic: HashSet<String> = text::content_stems(claim).into_iter().collect();
        topic.extend(text::content_stems(argument));
        for concepts in points {
            for phrase in concepts.iter().flatten() {
                topic.extend(phrase.split_whitespace().filter(|w| !w.ends_with('*')).flat_map(text::content_stems));
            }
        }
        Lexicon {
            points: points.iter().map(|c| CompiledPoint::new(c)).collect(),
            topic,
            claim: text::content_stems(claim).into_iter().collect(),
            own_argument: text::content_stems(argument).into_iter().collect(),
        }
    }

    pub fn analyze(&self, argument: &str) -> Analysis {
        static AGREE: std::sync::LazyLock<Vec<Pattern>> =
            std::sync::LazyLock::new(|| AGREEMENT.iter().map(|p| Pattern::new(p)).collect());
        static DENY: std::sync::LazyLock<Vec<Pattern>> =
            std::sync::LazyLock::new(|| DENIAL.iter().map(|p| Pattern::new(p)).collect());
        let sentences = sentences(argument);
        let mut analysis = Analysis::default();
        for (i, point) in self.points.iter().enumerate() {
            match point.judge(&sentences) {
                Some(true) => analysis.made.push(i),
                Some(false) => analysis.denied.push(i),
                None => {}
            }
        }
        analysis.agrees = find_any(&AGREE, &sentences);
        let stems: HashSet<String> = sentences.iter().flat_map(Sentence::content_stems).cloned().collect();
        let negates = sentences.iter().any(|s| s.words.iter().any(|w| NEGATORS.contains(&w.as_str())));
        analysis.flat_denial = find_any(&DENY, &sentences) || (negates && jaccard(&stems, &self.claim) >= 0.3);
        analysis.on_topic = stems.iter().any(|s| self.topic.contains(s));
        analysis.echo = jaccard(&stems, &self.own_argument);
        analysis
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(groups: &[&[&str]]) -> CompiledPoint {
        CompiledPoint::new(&groups.iter().map(|g| g.iter().map(|s| s.to_string()).collect()).collect::<Vec<_>>())
    }

    #[test]
    fn patterns_match_stems_and_prefixes() {
        let s = &sentences("The factories were polluting the rivers badly.")[0];
        assert_eq!(Pattern::new("pollut*").find(s), Some(false));
        assert_eq!(Pattern::new("river").find(s), Some(false));
        assert_eq!(Pattern::new("factory river").find(s), None);
        assert_eq!(Pattern::new("the river").find(s), Some(false));
    }

    #[test]
    fn negation_stays_inside_its_clause() {
        let s = &sentences("It does not harm children.")[0];
        assert_eq!(Pattern::new("harm*").find(s), Some(true));
        let s = &sentences("Without a car, elderly people are stranded.")[0];
        assert_eq!(Pattern::new("elderly").find(s), Some(false));
        let s = &sentences("It is not only costly but slow.")[0];
        assert_eq!(Pattern::new("costly").find(s), Some(false));
    }

    #[test]
    fn a_point_needs_every_group_in_one_window() {
        let p = point(&[&["shop*", "business*"], &["los* customers", "sales"]]);
        assert_eq!(p.judge(&sentences("Local shops would lose customers.")), Some(true));
        assert_eq!(p.judge(&sentences("Sales would fall for every business in town.")), Some(true));
        assert_eq!(p.judge(&sentences("Think of the shops. Their sales would fall.")), Some(true));
        assert_eq!(p.judge(&sentences("Think of the shops. It is raining today. Their sales would fall.")), None);
        assert_eq!(p.judge(&sentences("Shops would not lose customers at all.")), Some(false));
        assert_eq!(p.judge(&sentences("Shops are nice.")), None);
    }
}
