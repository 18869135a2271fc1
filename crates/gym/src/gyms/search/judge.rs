//! The scripted answer judge: the deterministic stand-in for the original's LLM judge. It accepts the gold
//! answer or an alias in any equivalent form (case, punctuation, articles, number words for digits, the answer
//! inside a short sentence) and refuses anything that hedges between candidates: a second name of the same
//! kind, a second number for a numeric answer, "or"/"either", a negation, a keyword list, or a long essay. So
//! listing every candidate in one answer earns nothing.

use std::collections::{HashMap, HashSet};

use super::world::AnswerKind;
use crate::text;

/// Longer answers are not "short answers"; refusing them stops an agent from pasting whole search results.
pub const MAX_ANSWER_WORDS: usize = 30;

/// Words that join alternatives.
const LIST_WORDS: &[&str] = &["or", "either", "nor", "versus", "vs", "alternatively", "otherwise"];

/// What the judge decided, with feedback that never names the gold answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub correct: bool,
    pub feedback: String,
}

impl Verdict {
    fn no(feedback: &str) -> Verdict {
        Verdict { correct: false, feedback: feedback.to_string() }
    }
}

/// The names the judge knows: name token -> kind, and the given names.
pub struct Lexicon<'a> {
    pub names: &'a HashMap<String, AnswerKind>,
    pub first_names: &'a HashSet<String>,
}

/// Lowercase alphanumeric only: the original's rule-check normalisation.
pub fn normalise(text: &str) -> String {
    text.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

/// Lowercase alphanumeric words with number words turned into digits ("eighteen forty-three" -> "1843").
pub fn tokens(text: &str) -> Vec<String> {
    let words: Vec<String> = text::words(text)
        .into_iter()
        .map(|w| w.chars().filter(|c| c.is_alphanumeric()).collect::<String>())
        .filter(|w| !w.is_empty())
        .collect();
    numbers_to_digits(&words)
}

fn small_number(word: &str) -> Option<u64> {
    const UNITS: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    const TENS: [&str; 8] = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];
    if let Some(i) = UNITS.iter().position(|u| *u == word) {
        return Some(i as u64);
    }
    TENS.iter().position(|t| *t == word).map(|i| (i as u64 + 2) * 10)
}

/// Replaces runs of number words by their value. Handles "one thousand eight hundred and forty-three",
/// "eighteen hundred", and year style "eighteen forty-three" (two groups read as hundreds).
fn numbers_to_digits(words: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        if small_number(&words[i]).is_none() {
            out.push(words[i].clone());
            i += 1;
            continue;
        }
        let (mut total, mut current) = (0u64, 0u64);
        let mut j = i;
        while j < words.len() {
            let w = words[j].as_str();
            if let Some(n) = small_number(w) {
                let last2 = current % 100;
                if current == 0 {
                    current = n;
                } else if (n < 10 && last2 >= 20 && last2.is_multiple_of(10))
                    || (current >= 100 && last2 == 0 && n < 100)
                {
                    // "forty" + "three", "eight hundred" + "forty"
                    current += n;
                } else if current < 100 && n < 100 && n > 0 {
                    current = current * 100 + n;
                } else {
                    break;
                }
            } else if w == "hundred" && current > 0 && current < 100 {
                current *= 100;
            } else if w == "thousand" && current > 0 && current < 1000 && total == 0 {
                total = current * 1000;
                current = 0;
            } else if w == "and"
                && j + 1 < words.len()
                && small_number(&words[j + 1]).is_some()
                && (current >= 100 || total > 0)
            {
                // "… hundred and forty": "and" inside a number.
            } else {
                break;
            }
            j += 1;
        }
        out.push((total + current).to_string());
        i = j.max(i + 1);
    }
    out
}

/// Whether `text` contains `phrase` as whole words (after the same normalisation as answers).
pub fn mentions(text: &str, phrase: &str) -> bool {
    find(&tokens(text), &tokens(phrase)).is_some()
}

fn find(hay: &[String], needle: &[String]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    (0..=hay.len() - needle.len()).find(|&i| hay[i..i + needle.len()] == needle[..])
}

fn is_number(token: &str) -> bool {
    !token.is_empty() && token.chars().all(|c| c.is_ascii_digit())
}

/// The token forms that count as the answer: the gold and each alias, each also without a leading article.
fn forms(gold: &str, aliases: &[String]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    for text in std::iter::once(gold).chain(aliases.iter().map(String::as_str)) {
        let t = tokens(text);
        if t.is_empty() {
            continue;
        }
        if matches!(t[0].as_str(), "the" | "a" | "an") && t.len() > 1 {
            out.push(t[1..].to_vec());
        }
        out.push(t);
    }
    // Longest first, so "Ansel Marrow" is matched before its alias "Marrow".
    out.sort_by_key(|f| std::cmp::Reverse(f.len()));
    out.dedup();
    out
}

/// Judges `answer` against the gold answer and aliases of a question whose answer is of `kind` (`None` for
/// imported questions, whose kind is unknown).
pub fn judge(answer: &str, gold: &str, aliases: &[String], kind: Option<AnswerKind>, lexicon: &Lexicon<'_>) -> Verdict {
    let answer_tokens = tokens(answer);
    if answer_tokens.is_empty() {
        return Verdict::no("The answer is empty.");
    }
    if answer_tokens.len() > MAX_ANSWER_WORDS {
        return Verdict::no("The answer is too long; state one short answer.");
    }
    if text::is_keyword_list(answer) {
        return Verdict::no("The answer reads as a list of keywords; state one short answer.");
    }
    let gold_numeric = kind == Some(AnswerKind::Year) || tokens(gold).iter().all(|t| is_number(t));
    let mut matched: Option<(usize, usize, &Vec<String>)> = None;
    let forms = forms(gold, aliases);
    for form in &forms {
        if let Some(at) = find(&answer_tokens, form) {
            matched = Some((at, form.len(), form));
            break;
        }
    }
    let Some((at, len, form)) = matched else {
        return Verdict::no("The answer does not match the expected answer.");
    };
    let rest: Vec<&str> = answer_tokens[..at].iter().chain(&answer_tokens[at + len..]).map(String::as_str).collect();
    if rest.iter().any(|w| text::NEGATORS.contains(w)) {
        return Verdict::no("The answer is negated or unsure; state one definite answer.");
    }
    // Imported questions have no name lexicon, so "and" joining two names is the only sign of a list there.
    let joins =
        |w: &&str| LIST_WORDS.contains(w) || (kind.is_none() && *w == "and" && !form.iter().any(|f| f == "and"));
    if rest.iter().any(joins) {
        return Verdict::no("The answer offers several candidates; give exactly one.");
    }
    // Words of the gold answer or its aliases repeated elsewhere ("Keidre Thotho (Thotho)") name no rival.
    let own: HashSet<&str> = forms.iter().flatten().map(String::as_str).collect();
    let rest: Vec<&str> = rest.into_iter().filter(|w| !own.contains(w)).collect();
    if gold_numeric && rest.iter().any(|w| is_number(w)) {
        return Verdict::no("The answer contains more than one number; give exactly one.");
    }
    if let Some(kind) = kind {
        let rival = rest.iter().any(|w| {
            lexicon.names.get(*w) == Some(&kind) || (kind == AnswerKind::Person && lexicon.first_names.contains(*w))
        });
        if rival {
            return Verdict::no("The answer names more than one candidate; give exactly one.");
        }
    }
    Verdict { correct: true, feedback: "The answer is correct.".to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_words_become_digits() {
        let t = |s: &str| tokens(s).join(" ");
        assert_eq!(t("eighteen forty-three"), "1843");
        assert_eq!(t("one thousand eight hundred and forty-three"), "1843");
        assert_eq!(t("It was in nineteen hundred"), "it was in 1900");
        assert_eq!(t("twenty one"), "21");
        assert_eq!(t("Forty"), "40");
        assert_eq!(t("two thousand and five"), "2005");
        assert_eq!(t("one and two"), "1 and 2");
        assert_eq!(t("seven seven"), "707");
    }

    #[test]
    fn normalise_keeps_alphanumerics() {
        assert_eq!(normalise("  The Sea-of Orvan! "), "theseaoforvan");
        assert_eq!(normalise("Ünïcode 42"), "ünïcode42");
    }
}
