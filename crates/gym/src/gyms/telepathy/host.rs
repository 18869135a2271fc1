//! The scripted TelepathyGym host: it knows the hidden entity's attributes in a small shared ontology
//! (`data/telepathy/ontology.json`) and answers yes/no questions about them, and it judges guesses by the
//! entity's names.
//!
//! A question is read as a set of *targets*: ontology concepts found by their phrases (stemmed, longest match
//! first, negation flips), time expressions ("born before 1900", "in the 1950s", "older than 100 years"),
//! size comparisons ("bigger than a breadbox"), leg counts, and entity names in "is it X?" questions. Each
//! target is answered from the attributes (Yes / No / Maybe when unknown or borderline) and the answers are
//! combined with AND. Questions that pack several targets together with "or", lists, or more than
//! `MAX_TARGETS` targets get "Maybe": asking about everything at once must earn nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::text::{self, Parsed};

/// The ontology and the authored entities, embedded.
pub const ONTOLOGY_JSON: &str = include_str!("../../../data/telepathy/ontology.json");
pub const ENTITIES_JSON: &str = include_str!("../../../data/telepathy/entities.json");

/// Questions naming more targets than this are keyword stuffing and get "Maybe".
pub const MAX_TARGETS: usize = 3;
/// A guess may carry this many descriptive words beside the name ("Albert Einstein, the physicist").
pub const MAX_GUESS_EXTRA_WORDS: usize = 8;

/// A yes/no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
pub enum Answer {
    Yes,
    No,
    Maybe,
}

impl Answer {
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Yes => "Yes",
            Answer::No => "No",
            Answer::Maybe => "Maybe",
        }
    }
    fn from_bool(b: bool) -> Answer {
        if b { Answer::Yes } else { Answer::No }
    }
    fn flip(self) -> Answer {
        match self {
            Answer::Yes => Answer::No,
            Answer::No => Answer::Yes,
            Answer::Maybe => Answer::Maybe,
        }
    }
    /// AND of two answers: any No wins, then any Maybe.
    fn and(self, other: Answer) -> Answer {
        match (self, other) {
            (Answer::No, _) | (_, Answer::No) => Answer::No,
            (Answer::Yes, Answer::Yes) => Answer::Yes,
            _ => Answer::Maybe,
        }
    }
}

/// One attribute value of an entity: a flag, a number (a year, a leg count) or a set of category values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Attr {
    Bool(bool),
    Number(f64),
    List(Vec<String>),
}

/// An entity's attributes; `None` marks an attribute as unknown (the host answers "Maybe").
pub type Attributes = BTreeMap<String, Option<Attr>>;

// ---------------------------------------------------------------------------------------------------------
// The ontology file

#[derive(Deserialize)]
struct RawOntology {
    reference_year: f64,
    sizes: Vec<String>,
    size_references: BTreeMap<String, Vec<String>>,
    kinds: BTreeMap<String, Attributes>,
    concepts: Vec<RawConcept>,
}

#[derive(Deserialize)]
struct RawConcept {
    id: String,
    #[serde(default)]
    ask: Option<String>,
    #[serde(default)]
    phrases: Vec<String>,
    #[serde(default)]
    opposites: Vec<String>,
    #[serde(default)]
    values: Vec<RawGroup>,
    #[serde(default)]
    all_of: Vec<String>,
}

#[derive(Deserialize)]
struct RawGroup {
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    ask: Option<String>,
    phrases: Vec<String>,
    #[serde(default)]
    yes: Option<Vec<String>>,
    #[serde(default)]
    maybe: Vec<String>,
}

/// How an attribute is typed.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrType {
    Bool,
    Number,
    Category(Vec<String>),
}

/// A simple condition: a flag is set, or a category holds a value.
#[derive(Clone, Debug, PartialEq)]
enum Atom {
    Flag(String),
    Has(String, String),
}

/// What a matched phrase asks about.
#[derive(Clone, Debug, PartialEq)]
enum Target {
    /// A flag; `positive` is false for an opposite phrase ("real" for `fictional`).
    Flag { attr: String, positive: bool },
    /// A category: Yes when the entity has one of `yes`, Maybe for one of `maybe`, else No.
    Category { attr: String, yes: Vec<String>, maybe: Vec<String> },
    /// Every atom holds ("man" = person and male).
    All(Vec<Atom>),
    /// A time expression.
    Time(TimeQuery),
    /// "bigger / smaller than <reference>", "the size of <reference>" (an index into `sizes`, or none).
    Size { cmp: std::cmp::Ordering, reference: Option<usize> },
    /// A leg count.
    Legs(LegQuery),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum LegQuery {
    Any,
    Exactly(f64),
    MoreThan(f64),
    FewerThan(f64),
}

/// Which year a time expression is about.
#[derive(Clone, Copy, Debug, PartialEq)]
enum YearOf {
    Born,
    Died,
    Created,
    /// The life span of a person ("alive in 1900", "lived in the 1800s").
    Lifespan,
    /// Born for people, created for everything else.
    Default,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum TimeCmp {
    Before,
    After,
    In,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct TimeQuery {
    of: YearOf,
    cmp: TimeCmp,
    /// Inclusive range of years the expression names.
    from: f64,
    to: f64,
}

/// A question the expert may ask, with the ontology's own wording.
#[derive(Clone, Debug)]
pub struct Probe {
    pub text: String,
}

pub struct Ontology {
    reference_year: f64,
    sizes: Vec<String>,
    kinds: BTreeMap<String, Attributes>,
    types: HashMap<String, AttrType>,
    phrases: PhraseIndex<Target>,
    size_refs: PhraseIndex<usize>,
    probes: Vec<Probe>,
}

/// Phrases (stemmed word sequences) indexed by their first stem.
struct PhraseIndex<T> {
    by_first: HashMap<String, Vec<(Vec<String>, T)>>,
}

impl<T: Clone> PhraseIndex<T> {
    fn new() -> Self {
        PhraseIndex { by_first: HashMap::new() }
    }
    fn insert(&mut self, stems: Vec<String>, value: T) {
        if let Some(first) = stems.first() {
            self.by_first.entry(first.clone()).or_default().push((stems, value));
        }
    }
    /// Every occurrence in `tokens`: (start, length, value).
    fn find_all(&self, tokens: &[String]) -> Vec<(usize, usize, T)> {
        let mut out = Vec::new();
        for (i, tok) in tokens.iter().enumerate() {
            if let Some(list) = self.by_first.get(tok) {
                for (stems, value) in list {
                    if tokens.len() - i >= stems.len() && tokens[i..i + stems.len()] == stems[..] {
                        out.push((i, stems.len(), value.clone()));
                    }
                }
            }
        }
        out
    }
    /// The longest phrase starting exactly at `start`.
    fn longest_at(&self, tokens: &[String], start: usize) -> Option<(usize, T)> {
        let list = self.by_first.get(tokens.get(start)?)?;
        list.iter()
            .filter(|(stems, _)| tokens.len() - start >= stems.len() && tokens[start..start + stems.len()] == stems[..])
            .max_by_key(|(stems, _)| stems.len())
            .map(|(stems, v)| (stems.len(), v.clone()))
    }
}

/// Folds common accented letters so that "Beyoncé" and "Beyonce" match.
pub fn fold(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' => 'a',
            'è' | 'é' | 'ê' | 'ë' | 'È' | 'É' | 'Ê' | 'Ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' | 'Ì' | 'Í' | 'Î' | 'Ï' => 'i',
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' => 'o',
            'ù' | 'ú' | 'û' | 'ü' | 'Ù' | 'Ú' | 'Û' | 'Ü' => 'u',
            'ñ' | 'Ñ' => 'n',
            'ç' | 'Ç' => 'c',
            other => other,
        })
        .collect()
}

fn phrase_stems(phrase: &str) -> Vec<String> {
    text::stems(&fold(phrase))
}

impl Ontology {
    pub fn parse(json: &str) -> Result<Ontology, String> {
        let raw: RawOntology = serde_json::from_str(json).map_err(|e| format!("ontology: {e}"))?;
        let mut types: HashMap<String, AttrType> = HashMap::new();
        for number in ["born", "died", "created", "legs"] {
            types.insert(number.to_string(), AttrType::Number);
        }
        types.insert("size".into(), AttrType::Category(raw.sizes.clone()));
        let mut phrases = PhraseIndex::new();
        let mut probes = Vec::new();
        let mut seen_phrases: HashMap<Vec<String>, String> = HashMap::new();
        let mut clashes: Vec<String> = Vec::new();
        // A phrase owned by two concepts could never be answered consistently; all clashes are reported.
        let mut claim = |stems: &Vec<String>, owner: &str| -> Result<(), String> {
            if let Some(prev) = seen_phrases.insert(stems.clone(), owner.to_string())
                && prev != owner
            {
                clashes.push(format!("phrase `{}` belongs to both `{prev}` and `{owner}`", stems.join(" ")));
            }
            Ok(())
        };
        // Compounds refer to other concepts, so types come first.
        for c in &raw.concepts {
            if !c.values.is_empty() {
                let values: Vec<String> = c.values.iter().filter_map(|g| g.value.clone()).collect();
                let values = if c.id == "size" { raw.sizes.clone() } else { values };
                types.insert(c.id.clone(), AttrType::Category(values));
            } else if c.all_of.is_empty() {
                types.insert(c.id.clone(), AttrType::Bool);
            }
        }
        for c in &raw.concepts {
            if !c.all_of.is_empty() {
                let atoms = c
                    .all_of
                    .iter()
                    .map(|a| match a.split_once('=') {
                        Some((attr, value)) => Atom::Has(attr.to_string(), value.to_string()),
                        None => Atom::Flag(a.clone()),
                    })
                    .collect::<Vec<_>>();
                for atom in &atoms {
                    let attr = match atom {
                        Atom::Flag(a) | Atom::Has(a, _) => a,
                    };
                    if !types.contains_key(attr) {
                        return Err(format!("concept `{}` refers to unknown `{attr}`", c.id));
                    }
                }
                for p in &c.phrases {
                    let stems = phrase_stems(p);
                    claim(&stems, &c.id)?;
                    phrases.insert(stems, Target::All(atoms.clone()));
                }
                if let Some(ask) = &c.ask {
                    probes.push(Probe { text: ask.clone() });
                }
            } else if !c.values.is_empty() {
                let known: Vec<String> = match types.get(&c.id) {
                    Some(AttrType::Category(v)) => v.clone(),
                    _ => Vec::new(),
                };
                for g in &c.values {
                    let yes = g.yes.clone().or_else(|| g.value.clone().map(|v| vec![v])).unwrap_or_default();
                    for v in yes.iter().chain(&g.maybe) {
                        if !known.contains(v) {
                            return Err(format!("concept `{}` uses unknown value `{v}`", c.id));
                        }
                    }
                    let target = Target::Category { attr: c.id.clone(), yes, maybe: g.maybe.clone() };
                    for p in &g.phrases {
                        let stems = phrase_stems(p);
                        claim(&stems, &format!("{}={:?}", c.id, g.value))?;
                        phrases.insert(stems, target.clone());
                    }
                    if let Some(ask) = &g.ask {
                        probes.push(Probe { text: ask.clone() });
                    }
                }
            } else {
                for (list, positive) in [(&c.phrases, true), (&c.opposites, false)] {
                    for p in list {
                        let stems = phrase_stems(p);
                        claim(&stems, &c.id)?;
                        phrases.insert(stems, Target::Flag { attr: c.id.clone(), positive });
                    }
                }
                if let Some(ask) = &c.ask {
                    probes.push(Probe { text: ask.clone() });
                }
            }
        }
        if !clashes.is_empty() {
            return Err(clashes.join("; "));
        }
        let mut size_refs = PhraseIndex::new();
        for (size, refs) in &raw.size_references {
            let level = raw.sizes.iter().position(|s| s == size).ok_or(format!("unknown size `{size}`"))?;
            for r in refs {
                size_refs.insert(phrase_stems(r), level);
            }
        }
        let ontology = Ontology {
            reference_year: raw.reference_year,
            sizes: raw.sizes,
            kinds: raw.kinds,
            types,
            phrases,
            size_refs,
            probes,
        };
        for (kind, attrs) in &ontology.kinds {
            ontology.check_attributes(attrs).map_err(|e| format!("kind `{kind}`: {e}"))?;
        }
        Ok(ontology)
    }

    pub fn has_kind(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    pub fn probes(&self) -> &[Probe] {
        &self.probes
    }

    /// Checks that every attribute is known and has the right type and values.
    pub fn check_attributes(&self, attrs: &Attributes) -> Result<(), String> {
        for (key, value) in attrs {
            let Some(ty) = self.types.get(key) else {
                return Err(format!("unknown attribute `{key}`"));
            };
            match (ty, value) {
                (_, None) | (AttrType::Bool, Some(Attr::Bool(_))) => {}
                (AttrType::Number, Some(Attr::Number(n))) if n.is_finite() => {}
                (AttrType::Category(known), Some(Attr::List(values))) => {
                    if let Some(v) = values.iter().find(|v| !known.contains(v)) {
                        return Err(format!("attribute `{key}` has unknown value `{v}`"));
                    }
                }
                _ => return Err(format!("attribute `{key}` has the wrong type")),
            }
        }
        Ok(())
    }
}

pub static ONTOLOGY: LazyLock<Result<Ontology, String>> = LazyLock::new(|| Ontology::parse(ONTOLOGY_JSON));

// ---------------------------------------------------------------------------------------------------------
// Names

/// One entity's names, as stemmed word sequences without leading articles.
pub fn name_variants(title: &str, aliases: &[String]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    for name in std::iter::once(title).chain(aliases.iter().map(String::as_str)) {
        let mut stems = phrase_stems(name);
        while stems.first().is_some_and(|w| matches!(w.as_str(), "the" | "a" | "an")) {
            stems.remove(0);
        }
        if !stems.is_empty() && !out.contains(&stems) {
            out.push(stems);
        }
    }
    out
}

/// The key that identifies an entity among names: its stemmed title.
pub fn entity_key(title: &str) -> String {
    phrase_stems(title).join(" ")
}

/// Every built-in entity's names, so that a guess or question naming another entity is recognised.
pub struct NameIndex {
    index: PhraseIndex<String>,
}

impl NameIndex {
    pub fn new<'a>(entities: impl IntoIterator<Item = (&'a str, &'a [String])>) -> NameIndex {
        let mut index = PhraseIndex::new();
        for (title, aliases) in entities {
            let key = entity_key(title);
            for v in name_variants(title, aliases) {
                index.insert(v, key.clone());
            }
        }
        NameIndex { index }
    }
}

#[derive(Deserialize)]
struct NameOnly {
    title: String,
    #[serde(default)]
    aliases: Vec<String>,
}

pub static BUILTIN_NAMES: LazyLock<NameIndex> = LazyLock::new(|| {
    let entities: Vec<NameOnly> = serde_json::from_str(ENTITIES_JSON).unwrap_or_default();
    NameIndex::new(entities.iter().map(|e| (e.title.as_str(), e.aliases.as_slice())))
});

/// Words that may surround a name in a guess or an "is it X?" question without changing what it names.
#[rustfmt::skip]
const NAME_FILLER: &[&str] = &[
    "is", "it", "a", "an", "the", "this", "that", "you", "are", "were", "was", "thinking", "think", "thought", "of",
    "about", "could", "would", "can", "be", "maybe", "perhaps", "probably", "entity", "answer", "your", "my", "guess",
    "i", "called", "named", "one", "mean", "do", "does", "am", "final", "it's", "must", "so", "then", "ok", "okay",
    "well", "hmm", "sure", "certain", "believe", "say", "would", "going", "go", "with", "yes", "right", "correct",
    "what", "who", "thing", "something", "someone", "person", "famous", "known", "as", "s", "to", "me", "have", "got",
    "in", "mind", "character", "animal", "place", "object", "food", "plant",
];

/// Words that join several candidates into one guess.
const JOINERS: &[&str] = &["or", "nor", "either", "and", "versus", "vs", "plus", "also", "otherwise"];

/// Names found in a text: the entity keys of every non-overlapping name, the words left over, and the spans.
struct NameScan {
    keys: Vec<String>,
    spans: Vec<(usize, usize)>,
    leftover: Vec<String>,
}

fn scan_names(parsed: &Parsed, target_key: &str, target_names: &[Vec<String>]) -> NameScan {
    let mut found: Vec<(usize, usize, String)> = BUILTIN_NAMES.index.find_all(&parsed.stems);
    for v in target_names {
        for pos in positions(&parsed.stems, v) {
            found.push((pos, v.len(), target_key.to_string()));
        }
    }
    let chosen = longest_non_overlapping(found, parsed.stems.len());
    let mut covered = vec![false; parsed.stems.len()];
    for (start, len, _) in &chosen {
        covered[*start..*start + *len].iter_mut().for_each(|c| *c = true);
    }
    let leftover = parsed.words.iter().zip(&covered).filter(|(_, c)| !**c).map(|(w, _)| w.clone()).collect();
    let mut keys: Vec<String> = Vec::new();
    for (_, _, k) in &chosen {
        if !keys.contains(k) {
            keys.push(k.clone());
        }
    }
    NameScan { keys, spans: chosen.iter().map(|(s, l, _)| (*s, *l)).collect(), leftover }
}

fn positions(tokens: &[String], phrase: &[String]) -> Vec<usize> {
    if phrase.is_empty() || tokens.len() < phrase.len() {
        return Vec::new();
    }
    (0..=tokens.len() - phrase.len()).filter(|&i| tokens[i..i + phrase.len()] == phrase[..]).collect()
}

/// Keeps the longest matches first, dropping any that overlap one already kept; returns them in text order.
fn longest_non_overlapping<T>(mut found: Vec<(usize, usize, T)>, n: usize) -> Vec<(usize, usize, T)> {
    found.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut taken = vec![false; n];
    let mut out = Vec::new();
    for m in found {
        if taken[m.0..m.0 + m.1].iter().any(|t| *t) {
            continue;
        }
        taken[m.0..m.0 + m.1].iter_mut().for_each(|t| *t = true);
        out.push(m);
    }
    out.sort_by_key(|m| m.0);
    out
}

// ---------------------------------------------------------------------------------------------------------
// The hidden entity as the host sees it

/// What the host needs about the hidden entity.
pub struct Entity<'a> {
    pub title: &'a str,
    pub aliases: &'a [String],
    pub kind: &'a str,
    pub attributes: &'a Attributes,
}

impl Entity<'_> {
    /// The attribute's value: the entity's own, else its kind's default, else false for flags and unknown
    /// for everything else.
    fn lookup(&self, ontology: &Ontology, attr: &str) -> Option<Attr> {
        if let Some(v) = self.attributes.get(attr) {
            return v.clone();
        }
        if let Some(v) = ontology.kinds.get(self.kind).and_then(|d| d.get(attr)) {
            return v.clone();
        }
        match ontology.types.get(attr) {
            Some(AttrType::Bool) => Some(Attr::Bool(false)),
            _ => None,
        }
    }
    fn flag(&self, ontology: &Ontology, attr: &str) -> Answer {
        match self.lookup(ontology, attr) {
            Some(Attr::Bool(b)) => Answer::from_bool(b),
            _ => Answer::Maybe,
        }
    }
    fn number(&self, ontology: &Ontology, attr: &str) -> Option<f64> {
        match self.lookup(ontology, attr) {
            Some(Attr::Number(n)) => Some(n),
            _ => None,
        }
    }
    fn category(&self, ontology: &Ontology, attr: &str, yes: &[String], maybe: &[String]) -> Answer {
        match self.lookup(ontology, attr) {
            Some(Attr::List(values)) => {
                if values.iter().any(|v| yes.contains(v)) {
                    Answer::Yes
                } else if values.iter().any(|v| maybe.contains(v)) {
                    Answer::Maybe
                } else {
                    Answer::No
                }
            }
            _ => Answer::Maybe,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Questions

const AUXILIARIES: &[&str] =
    &["is", "are", "was", "were", "do", "does", "did", "can", "could", "has", "have", "had", "will", "would"];
const PRONOUNS: &[&str] = &["it", "he", "she", "they", "this", "that", "you"];
const OR_WORDS: &[&str] = &["or", "nor", "either", "versus", "vs"];

/// Whether the match at `pos` is negated: a negator within the three words before it. The negation of the
/// opening auxiliary ("isn't it…", "doesn't he…") is rhetorical and does not flip the question.
fn negated_at(words: &[String], pos: usize) -> bool {
    let rhetorical = words.len() > 2
        && AUXILIARIES.contains(&words[0].as_str())
        && words[1] == "not"
        && PRONOUNS.contains(&words[2].as_str());
    let from = pos.saturating_sub(3);
    (from..pos).any(|i| text::NEGATORS.contains(&words[i].as_str()) && !(rhetorical && i == 1))
}

fn number_word(w: &str) -> Option<f64> {
    const WORDS: [&str; 11] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"];
    if let Some(i) = WORDS.iter().position(|x| *x == w) {
        return Some(i as f64);
    }
    if w.len() <= 3 && w.chars().all(|c| c.is_ascii_digit()) { w.parse().ok() } else { None }
}

#[rustfmt::skip]
const ORDINALS: [&str; 20] = [
    "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
    "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth", "eighteenth",
    "nineteenth", "twentieth",
];

fn ordinal(w: &str) -> Option<f64> {
    if let Some(i) = ORDINALS.iter().position(|x| *x == w) {
        return Some(i as f64 + 1.0);
    }
    let digits = w.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &w[digits.len()..];
    if !digits.is_empty() && digits.len() <= 2 && matches!(suffix, "st" | "nd" | "rd" | "th") {
        return digits.parse().ok();
    }
    None
}

/// Words after a number that make it a measure rather than a year.
#[rustfmt::skip]
const UNITS: &[&str] = &[
    "meter", "meters", "metre", "metres", "m", "km", "kilometers", "kilometres", "kg", "kilograms", "feet", "foot",
    "ft", "miles", "mile", "pounds", "lbs", "tons", "tonnes", "people", "percent", "mph", "degrees", "keys", "legs",
    "inches", "cm", "dollars", "species", "million", "thousand", "billion", "times", "pieces", "strings",
];

/// A time expression found in the words: its span and the years it names, or an age in years.
enum TimeSpan {
    Years { from: f64, to: f64 },
    Age(f64),
}

fn parse_time_at(words: &[String], i: usize) -> Option<(usize, TimeSpan)> {
    let w = words[i].as_str();
    let next = words.get(i + 1).map(String::as_str);
    let bc_len = |at: usize| -> usize {
        match (words.get(at).map(String::as_str), words.get(at + 1).map(String::as_str)) {
            (Some("bc" | "bce"), _) => 1,
            (Some("b"), Some("c")) => 2,
            _ => 0,
        }
    };
    // Centuries: "19th century", "nineteenth century", "5th century bc".
    if let (Some(n), Some("century" | "centuries")) = (ordinal(w), next) {
        // "twenty-first" arrives as two words.
        let n = if i > 0 && words[i - 1] == "twenty" { n + 20.0 } else { n };
        let bc = bc_len(i + 2);
        let (from, to) =
            if bc > 0 { (-(n * 100.0), -((n - 1.0) * 100.0) - 1.0) } else { ((n - 1.0) * 100.0, n * 100.0 - 1.0) };
        return Some((2 + bc, TimeSpan::Years { from, to }));
    }
    // Decades and centuries written as "1950s", "1800s", "80s".
    if let Some(digits) = w.strip_suffix('s').filter(|d| d.chars().all(|c| c.is_ascii_digit())) {
        let n: f64 = digits.parse().ok()?;
        return match digits.len() {
            2 => Some((1, TimeSpan::Years { from: 1900.0 + n, to: 1909.0 + n })),
            3 | 4 if digits.ends_with("00") && digits.len() == 4 => {
                Some((1, TimeSpan::Years { from: n, to: n + 99.0 }))
            }
            3 | 4 => Some((1, TimeSpan::Years { from: n, to: n + 9.0 })),
            _ => None,
        };
    }
    if w.chars().all(|c| c.is_ascii_digit()) && !w.is_empty() && w.len() <= 5 {
        if next.is_some_and(|u| UNITS.contains(&u)) {
            return None;
        }
        let n: f64 = w.parse().ok()?;
        if matches!(next, Some("year" | "years")) {
            let extra = usize::from(matches!(words.get(i + 2).map(String::as_str), Some("old" | "ago")));
            return Some((2 + extra, TimeSpan::Age(n)));
        }
        let bc = bc_len(i + 1);
        if w.len() >= 3 || bc > 0 {
            let y = if bc > 0 { -n } else { n };
            let ad = usize::from(bc == 0 && matches!(next, Some("ad" | "ce")));
            return Some((1 + bc + ad, TimeSpan::Years { from: y, to: y }));
        }
    }
    match (w, next) {
        ("ancient" | "antiquity", _) => Some((1, TimeSpan::Years { from: f64::NEG_INFINITY, to: 499.0 })),
        ("medieval", _) => Some((1, TimeSpan::Years { from: 500.0, to: 1499.0 })),
        ("middle", Some("ages")) => Some((2, TimeSpan::Years { from: 500.0, to: 1499.0 })),
        _ => None,
    }
}

/// Words that date a thing's making ("built before 1900").
#[rustfmt::skip]
const CREATED_WORDS: &[&str] = &[
    "built", "build", "invent", "invented", "create", "created", "made", "founded", "appear", "appeared", "written",
    "published", "discovered", "constructed", "released", "introduced", "first", "painted", "erected", "completed",
    "designed", "exist", "existed",
];

fn year_of(words: &[String]) -> YearOf {
    let has = |list: &[&str]| words.iter().any(|w| list.contains(&w.as_str()));
    if has(&["born", "birth", "birthday"]) {
        YearOf::Born
    } else if has(&["die", "died", "death", "dead", "dies"]) {
        YearOf::Died
    } else if has(&["alive", "live", "lived", "living", "lifetime", "life"]) {
        YearOf::Lifespan
    } else if has(CREATED_WORDS) {
        YearOf::Created
    } else {
        YearOf::Default
    }
}

fn comparator_before(words: &[String], start: usize) -> Option<TimeCmp> {
    let from = start.saturating_sub(3);
    for w in words[from..start].iter().rev() {
        match w.as_str() {
            "before" | "earlier" | "prior" | "pre" | "until" | "till" | "older" | "predate" | "predates" => {
                return Some(TimeCmp::Before);
            }
            "after" | "later" | "since" | "post" | "newer" | "younger" | "recent" => return Some(TimeCmp::After),
            "in" | "during" | "around" | "from" | "of" | "within" => return Some(TimeCmp::In),
            _ => {}
        }
    }
    None
}

/// Whether an age question asks "older than" (true) or "younger than" (false).
fn age_direction(words: &[String], start: usize, end: usize) -> bool {
    let from = start.saturating_sub(3);
    let around = words[from..start].iter().chain(words.get(end));
    let mut older = true;
    for w in around {
        match w.as_str() {
            "under" | "less" | "younger" | "fewer" | "newer" | "recent" | "last" | "past" | "within" => older = false,
            "over" | "more" | "older" | "least" => older = true,
            _ => {}
        }
    }
    older
}

fn parse_legs(words: &[String], stems: &[String], i: usize) -> Option<(usize, usize, LegQuery)> {
    if stems[i] != "leg" && stems[i] != "legg" {
        return None;
    }
    // Look back for a count and a comparison ("more than four legs", "6 legs").
    let from = i.saturating_sub(3);
    let mut start = i;
    let mut count = None;
    let mut cmp = 0i8;
    for j in (from..i).rev() {
        let w = words[j].as_str();
        if count.is_none()
            && let Some(n) = number_word(w)
        {
            count = Some(n);
            start = j;
            continue;
        }
        match w {
            "more" | "over" => cmp = 1,
            "fewer" | "less" | "under" => cmp = -1,
            _ => continue,
        }
        if count.is_some() {
            start = j;
        }
    }
    let query = match (count, cmp) {
        (None, _) => LegQuery::Any,
        (Some(n), 1) => LegQuery::MoreThan(n),
        (Some(n), -1) => LegQuery::FewerThan(n),
        (Some(n), _) => LegQuery::Exactly(n),
    };
    Some((start, i + 1 - start, query))
}

fn parse_size_cmp(ontology: &Ontology, words: &[String], stems: &[String], i: usize) -> Option<(usize, usize, Target)> {
    let w = words[i].as_str();
    let (cmp, after) = match (w, words.get(i + 1).map(String::as_str)) {
        ("bigger" | "larger" | "greater", Some("than")) => (std::cmp::Ordering::Greater, i + 2),
        ("smaller" | "tinier" | "littler", Some("than")) => (std::cmp::Ordering::Less, i + 2),
        ("size", Some("of")) => (std::cmp::Ordering::Equal, i + 2),
        _ => return None,
    };
    let mut j = after;
    while words.get(j).is_some_and(|w| matches!(w.as_str(), "a" | "an" | "the" | "your" | "my" | "typical" | "average"))
    {
        j += 1;
    }
    match ontology.size_refs.longest_at(stems, j) {
        Some((len, level)) => Some((i, j + len - i, Target::Size { cmp, reference: Some(level) })),
        // An unknown reference still consumes the rest of the comparison so that its words are not read
        // as other targets ("bigger than a person" is not a question about people).
        None => Some((i, (j + 1).min(words.len()) - i, Target::Size { cmp, reference: None })),
    }
}

/// What the host made of a question (for tests and debugging).
#[derive(Debug)]
pub struct Reading {
    pub answer: Answer,
    pub targets: usize,
    pub why: &'static str,
}

/// Answers a yes/no question about `entity`.
pub fn answer_question(ontology: &Ontology, entity: &Entity, question: &str) -> Reading {
    let folded = fold(question);
    let parsed = Parsed::new(&folded);
    let words = &parsed.words;
    let stems = &parsed.stems;
    if words.is_empty() {
        return Reading { answer: Answer::Maybe, targets: 0, why: "empty" };
    }
    let or_like = words.iter().any(|w| OR_WORDS.contains(&w.as_str()));
    let separators = folded.chars().filter(|c| matches!(c, ',' | ';' | '|' | '/' | '\n')).count();
    let listy = separators >= 2 || text::is_keyword_list(&folded);

    // "Is it X?" questions that name an entity are answered by the names alone.
    let target_key = entity_key(entity.title);
    let target_names = name_variants(entity.title, entity.aliases);
    let scan = scan_names(&parsed, &target_key, &target_names);
    if !scan.keys.is_empty()
        && scan.leftover.iter().all(|w| {
            NAME_FILLER.contains(&w.as_str())
                || text::NEGATORS.contains(&w.as_str())
                || OR_WORDS.contains(&w.as_str())
                || JOINERS.contains(&w.as_str())
        })
    {
        if scan.spans.len() > 1 || or_like || listy {
            return Reading { answer: Answer::Maybe, targets: scan.spans.len(), why: "several names" };
        }
        let negated = negated_at(words, scan.spans[0].0);
        let answer = Answer::from_bool(scan.keys[0] == target_key);
        return Reading { answer: if negated { answer.flip() } else { answer }, targets: 1, why: "name" };
    }

    let mut found: Vec<(usize, usize, Target)> = Vec::new();
    for i in 0..words.len() {
        if let Some((len, span)) = parse_time_at(words, i) {
            let of = year_of(words);
            let target = match span {
                TimeSpan::Years { from, to } => {
                    let cmp = comparator_before(words, i).unwrap_or(TimeCmp::In);
                    Target::Time(TimeQuery { of, cmp, from, to })
                }
                TimeSpan::Age(n) => {
                    let year = ontology.reference_year - n;
                    if age_direction(words, i, i + len) {
                        Target::Time(TimeQuery { of, cmp: TimeCmp::Before, from: year + 1.0, to: year + 1.0 })
                    } else {
                        Target::Time(TimeQuery { of, cmp: TimeCmp::After, from: year, to: year })
                    }
                }
            };
            found.push((i, len, target));
        }
        if let Some((start, len, q)) = parse_legs(words, stems, i) {
            found.push((start, len, Target::Legs(q)));
        }
        if let Some(m) = parse_size_cmp(ontology, words, stems, i) {
            found.push(m);
        }
    }
    found.extend(ontology.phrases.find_all(stems));
    let mut chosen = longest_non_overlapping(found, words.len());
    // "Was he alive in 1920?", "Did he die after 1950?": the time expression already reads "alive" / "die"
    // as a date of life or death, so the flag must not be asked on its own as well.
    if chosen.iter().any(|(_, _, t)| matches!(t, Target::Time(q) if matches!(q.of, YearOf::Died | YearOf::Lifespan))) {
        chosen.retain(|(_, _, t)| !matches!(t, Target::Flag { attr, .. } if attr == "alive"));
    }
    if chosen.is_empty() {
        return Reading { answer: Answer::Maybe, targets: 0, why: "not understood" };
    }
    // "Is the person an entertainer?": when only the kind of thing was understood and the property asked
    // about was not, answering the kind alone would mislead.
    if chosen.iter().all(|(_, _, t)| is_context(t)) {
        let mut covered = vec![false; words.len()];
        for (start, len, _) in &chosen {
            covered[*start..*start + *len].iter_mut().for_each(|c| *c = true);
        }
        let unknown = words.iter().zip(&covered).any(|(w, c)| {
            !*c && !text::is_stopword(w)
                && !text::NEGATORS.contains(&w.as_str())
                && !OR_WORDS.contains(&w.as_str())
                && !GENERIC.contains(&w.as_str())
                && !NAME_FILLER.contains(&w.as_str())
        });
        if unknown {
            // The subject can still be wrong ("Is the person an entertainer?" about a tower): then No.
            let subject = chosen.iter().fold(Answer::Yes, |acc, (start, _, t)| {
                let a = evaluate(ontology, entity, t);
                acc.and(if negated_at(words, *start) { a.flip() } else { a })
            });
            let answer = if subject == Answer::No { Answer::No } else { Answer::Maybe };
            return Reading { answer, targets: chosen.len(), why: "the property was not understood" };
        }
    }
    if chosen.len() > 1 && (or_like || listy) {
        return Reading { answer: Answer::Maybe, targets: chosen.len(), why: "several targets joined by or / a list" };
    }
    if chosen.len() > MAX_TARGETS || (listy && words.len() >= 8) {
        return Reading { answer: Answer::Maybe, targets: chosen.len(), why: "too many targets" };
    }
    let mut answer = Answer::Yes;
    for (start, _, target) in &chosen {
        let a = evaluate(ontology, entity, target);
        let a = if negated_at(words, *start) { a.flip() } else { a };
        answer = answer.and(a);
    }
    Reading { answer, targets: chosen.len(), why: "answered" }
}

/// Concepts that say what kind of thing the entity is; a question often names them only as its subject.
const CONTEXT_ATTRS: &[&str] =
    &["person", "animal", "plant", "food", "object", "place", "phenomenon", "celestial", "living_thing", "character"];

fn is_context(target: &Target) -> bool {
    match target {
        Target::Flag { attr, positive: true } => CONTEXT_ATTRS.contains(&attr.as_str()),
        Target::All(_) => true,
        _ => false,
    }
}

/// Words that add nothing to what a question asks ("Is it a *famous* person?").
#[rustfmt::skip]
const GENERIC: &[&str] = &[
    "famous", "well", "known", "kind", "type", "sort", "thing", "things", "anything", "specific", "particular",
    "typical", "typically", "commonly", "usually", "often", "generally", "mostly", "primarily", "mainly",
    "considered", "regarded", "associated", "related", "connected", "involved", "ever", "anyone", "certain",
    "many", "much", "popular", "described", "exactly", "actually", "truly", "currently", "now", "general",
    "overall", "example", "form", "variety", "category", "group", "member", "part", "class", "guessing", "game",
    "notable", "renowned", "celebrated", "important", "significant", "single", "individual", "specifically",
    "really", "physical", "concrete", "tangible", "alright", "type", "question",
];

fn evaluate(ontology: &Ontology, entity: &Entity, target: &Target) -> Answer {
    match target {
        Target::Flag { attr, positive } => {
            let a = entity.flag(ontology, attr);
            if *positive { a } else { a.flip() }
        }
        Target::Category { attr, yes, maybe } => entity.category(ontology, attr, yes, maybe),
        Target::All(atoms) => atoms.iter().fold(Answer::Yes, |acc, atom| {
            acc.and(match atom {
                Atom::Flag(attr) => entity.flag(ontology, attr),
                Atom::Has(attr, value) => entity.category(ontology, attr, std::slice::from_ref(value), &[]),
            })
        }),
        Target::Legs(q) => match entity.number(ontology, "legs") {
            None => Answer::Maybe,
            Some(n) => Answer::from_bool(match q {
                LegQuery::Any => n > 0.0,
                LegQuery::Exactly(k) => n == *k,
                LegQuery::MoreThan(k) => n > *k,
                LegQuery::FewerThan(k) => n < *k,
            }),
        },
        Target::Size { cmp, reference } => {
            let size = match entity.lookup(ontology, "size") {
                Some(Attr::List(v)) if v.len() == 1 => ontology.sizes.iter().position(|s| *s == v[0]),
                _ => None,
            };
            match (size, reference) {
                (Some(s), Some(r)) => match (s.cmp(r), cmp) {
                    (std::cmp::Ordering::Equal, std::cmp::Ordering::Equal) => Answer::Yes,
                    (std::cmp::Ordering::Equal, _) => Answer::Maybe,
                    (got, wanted) => Answer::from_bool(got == *wanted),
                },
                _ => Answer::Maybe,
            }
        }
        Target::Time(q) => evaluate_time(ontology, entity, q),
    }
}

fn evaluate_time(ontology: &Ontology, entity: &Entity, q: &TimeQuery) -> Answer {
    let born = entity.number(ontology, "born");
    let created = entity.number(ontology, "created");
    let test = |year: f64| -> bool {
        match q.cmp {
            TimeCmp::Before => year < q.from,
            TimeCmp::After => year > q.to,
            TimeCmp::In => year >= q.from && year <= q.to,
        }
    };
    let of = match q.of {
        YearOf::Default if born.is_some() => YearOf::Born,
        YearOf::Default => YearOf::Created,
        YearOf::Lifespan if born.is_none() => YearOf::Created,
        other => other,
    };
    match of {
        YearOf::Born => born.map_or(Answer::Maybe, |y| Answer::from_bool(test(y))),
        YearOf::Created | YearOf::Default => created.or(born).map_or(Answer::Maybe, |y| Answer::from_bool(test(y))),
        YearOf::Died => match (entity.number(ontology, "died"), entity.flag(ontology, "alive")) {
            (Some(y), _) => Answer::from_bool(test(y)),
            // Someone still alive has not died in any period.
            (None, Answer::Yes) => Answer::No,
            _ => Answer::Maybe,
        },
        YearOf::Lifespan => {
            let Some(b) = born else { return Answer::Maybe };
            let end = match (entity.number(ontology, "died"), entity.flag(ontology, "alive")) {
                (Some(d), _) => d,
                (None, Answer::Yes) => ontology.reference_year,
                _ => return Answer::Maybe,
            };
            Answer::from_bool(match q.cmp {
                TimeCmp::Before => b < q.from,
                TimeCmp::After => end > q.to,
                TimeCmp::In => b <= q.to && end >= q.from,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Guesses

/// The verdict on a guess.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Correct,
    Wrong,
    /// The guess names several candidates (or joins guesses with "or"): wrong, with its own feedback.
    Several,
    /// The guess is a long text rather than a name: wrong.
    NotAName,
}

/// Judges a guess: correct when it names the entity (title or alias) and nothing else.
pub fn judge_guess(entity_title: &str, aliases: &[String], guess: &str) -> Verdict {
    let folded = fold(guess);
    let parsed = Parsed::new(&folded);
    let target_key = entity_key(entity_title);
    let target_names = name_variants(entity_title, aliases);
    let scan = scan_names(&parsed, &target_key, &target_names);
    let joined = scan.leftover.iter().any(|w| JOINERS.contains(&w.as_str()))
        || folded.chars().filter(|c| matches!(c, ',' | ';' | '|' | '/' | '\n')).count() >= 2
        || folded.contains('/')
        || folded.contains('|');
    if scan.keys.len() > 1 || (joined && !scan.keys.is_empty()) {
        return Verdict::Several;
    }
    let extra: Vec<&String> = scan.leftover.iter().filter(|w| !NAME_FILLER.contains(&w.as_str())).collect();
    if extra.len() > MAX_GUESS_EXTRA_WORDS {
        return Verdict::NotAName;
    }
    // A negated name ("not Einstein") is no guess of it.
    if scan.spans.iter().any(|(start, _)| negated_at(&parsed.words, *start))
        || extra.iter().any(|w| text::NEGATORS.contains(&w.as_str()))
    {
        return Verdict::Wrong;
    }
    if scan.keys.first().is_some_and(|k| *k == target_key) { Verdict::Correct } else { Verdict::Wrong }
}

/// Distinct names across entities, for data checks: a name shared by two entities could never be judged.
pub fn shared_names<'a>(entities: impl IntoIterator<Item = (&'a str, &'a [String])>) -> Vec<String> {
    let mut owner: HashMap<Vec<String>, String> = HashMap::new();
    let mut shared = HashSet::new();
    for (title, aliases) in entities {
        let key = entity_key(title);
        for v in name_variants(title, aliases) {
            if let Some(prev) = owner.insert(v.clone(), key.clone())
                && prev != key
            {
                shared.insert(v.join(" "));
            }
        }
    }
    let mut out: Vec<String> = shared.into_iter().collect();
    out.sort();
    out
}
