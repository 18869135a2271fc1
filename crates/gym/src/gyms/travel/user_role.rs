//! TravelGym's side of the conversation with its user (reference §4.7): the search judge, the utterance
//! judge (types 1-4), and the three responders (preference, proactive, natural), each as a scripted rule over
//! the task data and as an LLM prompt with the original's JSON fields.
//!
//! The scripted user is what an RL agent will probe for exploits, so: a search must name exactly one aspect
//! and carry that aspect's arguments and no others (listing every city and date fails); a question reveals at
//! most one preference, and only when it is concrete (a keyword list or a question touching three or more
//! topics is "too vague"); a preference comes out only as its implicit statement, never as the preference
//! text; anything not understood gets a neutral, half-hearted reply.

use std::sync::{Arc, LazyLock};

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Aspect, FALLBACK_REPLY, TravelTask, catalog};
use crate::llm::{Prompt, extract_json};
use crate::text::{Parsed, Phrase, is_keyword_list, pick};
use crate::user::{Protocol, UserError, UserQuery, UserReply};

/// A remaining preference as the judge sees it: its id (`P3`) and its index in the task's preference order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefRef {
    pub id: String,
    pub index: usize,
}

impl PrefRef {
    pub fn new(index: usize) -> PrefRef {
        PrefRef { id: format!("P{}", index + 1), index }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogRole {
    Agent,
    User,
    Database,
}

/// One line of the conversation log the judges read; `note` says what the line did (a preference revealed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub role: LogRole,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Query {
    /// Does the search query ask for exactly one aspect with all its ground-truth arguments?
    Search { task: Arc<TravelTask>, query: String },
    /// Which of types 1-4 is the agent's utterance, and which remaining preference does a type 2 ask about?
    Classify { task: Arc<TravelTask>, history: Vec<LogEntry>, utterance: String, remaining: Vec<PrefRef> },
    /// Answer the question, revealing `preference` implicitly.
    Reveal { task: Arc<TravelTask>, history: Vec<LogEntry>, utterance: String, preference: PrefRef, seed: u64 },
    /// Reply to a turn that asked nothing useful, volunteering `preference` implicitly.
    Volunteer { task: Arc<TravelTask>, history: Vec<LogEntry>, utterance: String, preference: PrefRef, seed: u64 },
    /// Reply briefly and neutrally, revealing nothing.
    Chat { task: Arc<TravelTask>, history: Vec<LogEntry>, utterance: String, seed: u64 },
}

/// The search judge's verdict: the original's "True", "False", "N/A", or an unreadable reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Alignment {
    Aligned,
    Misaligned,
    Unrelated,
    Failed,
}

/// The utterance judge's types (reference §4.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UtteranceType {
    /// 1: ordinary conversation.
    Conversation,
    /// 2: a concrete question about a preference the user holds.
    Preference,
    /// 3: a concrete question about something the user has no preference on.
    Missing,
    /// 4: too vague or broad.
    Vague,
}

impl UtteranceType {
    pub fn number(self) -> u8 {
        match self {
            UtteranceType::Conversation => 1,
            UtteranceType::Preference => 2,
            UtteranceType::Missing => 3,
            UtteranceType::Vague => 4,
        }
    }
    pub fn from_number(n: i64) -> Option<UtteranceType> {
        Some(match n {
            1 => UtteranceType::Conversation,
            2 => UtteranceType::Preference,
            3 => UtteranceType::Missing,
            4 => UtteranceType::Vague,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Search { alignment: Alignment, aspect: Option<Aspect> },
    Classify { kind: UtteranceType, preference_id: Option<String> },
    Say { thought: String, response: String },
}

pub struct UserRole;

impl Protocol for UserRole {
    type Query = Query;
    type Reply = Reply;

    fn scripted(query: &Query) -> Result<Reply, UserError> {
        Ok(match query {
            Query::Search { task, query } => {
                let (alignment, aspect) = judge_search(task, query);
                Reply::Search { alignment, aspect }
            }
            Query::Classify { task, utterance, remaining, .. } => {
                let (kind, pref) = classify(task, utterance, remaining);
                Reply::Classify { kind, preference_id: pref.map(|p| p.id.clone()) }
            }
            Query::Reveal { task, preference, seed, .. } => {
                let implicit = task.preference(preference.index).map(|p| p.implicit.as_str()).unwrap_or("");
                let opener =
                    pick(&["", "Good question. ", "Hmm, let me think. ", "Well, ", "Oh, that reminds me: "], *seed);
                say(format!("{opener}{implicit}"))
            }
            Query::Volunteer { task, preference, seed, .. } => {
                let implicit = task.preference(preference.index).map(|p| p.implicit.as_str()).unwrap_or("");
                let opener =
                    pick(&["By the way, ", "Oh, one more thing: ", "Actually, something I should mention: "], *seed);
                say(format!("{opener}{implicit}"))
            }
            Query::Chat { seed, .. } => say(pick(
                &[
                    "Sure, that sounds fine.",
                    "Hmm, okay.",
                    "I guess so.",
                    "Alright, let's keep going.",
                    "Maybe.",
                    "Okay, if you say so.",
                ],
                *seed,
            )
            .to_string()),
        })
    }

    fn prompt(query: &Query) -> Prompt {
        match query {
            Query::Search { task, query } => search_prompt(task, query),
            Query::Classify { task, history, utterance, remaining } => {
                classify_prompt(task, history, utterance, remaining)
            }
            Query::Reveal { task, history, utterance, preference, .. } => {
                responder_prompt(task, history, utterance, Some(preference), false)
            }
            Query::Volunteer { task, history, utterance, preference, .. } => {
                responder_prompt(task, history, utterance, Some(preference), true)
            }
            Query::Chat { task, history, utterance, .. } => responder_prompt(task, history, utterance, None, false),
        }
    }

    fn parse(query: &Query, text: &str) -> Option<Reply> {
        let v = extract_json(text)?;
        match query {
            Query::Search { task, .. } => {
                let alignment = match v.get("alignment_judgement")? {
                    Value::Bool(true) => Alignment::Aligned,
                    Value::Bool(false) => Alignment::Misaligned,
                    Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                        "true" => Alignment::Aligned,
                        "false" => Alignment::Misaligned,
                        "n/a" | "na" | "none" | "n.a." => Alignment::Unrelated,
                        _ => return None,
                    },
                    Value::Null => Alignment::Unrelated,
                    _ => return None,
                };
                let aspect = v["alignment_aspect"].as_str().and_then(Aspect::parse);
                if alignment == Alignment::Aligned && aspect.is_none_or(|a| task.aspect(a).is_none()) {
                    return None;
                }
                Some(Reply::Search { alignment, aspect })
            }
            Query::Classify { remaining, .. } => {
                let n = match &v["type"] {
                    Value::Number(n) => n.as_i64()?,
                    Value::String(s) => s.trim().trim_start_matches("type").trim().parse().ok()?,
                    _ => return None,
                };
                let kind = UtteranceType::from_number(n)?;
                let preference_id = match &v["preference_id"] {
                    Value::String(s) if !s.trim().is_empty() && !s.eq_ignore_ascii_case("null") => {
                        Some(s.trim().to_ascii_uppercase())
                    }
                    Value::Number(n) => Some(format!("P{n}")),
                    _ => None,
                };
                if kind == UtteranceType::Preference {
                    let id = preference_id?;
                    remaining.iter().find(|p| p.id == id)?;
                    return Some(Reply::Classify { kind, preference_id: Some(id) });
                }
                Some(Reply::Classify { kind, preference_id: None })
            }
            _ => {
                let response = v["response"].as_str()?.trim();
                if response.is_empty() {
                    return None;
                }
                let thought = v["thought"].as_str().unwrap_or("").to_string();
                Some(Reply::Say { thought, response: response.to_string() })
            }
        }
    }

    fn fallback(query: &Query) -> Reply {
        match query {
            // The original answers an unreadable search judgement with the backend-issue message.
            Query::Search { .. } => Reply::Search { alignment: Alignment::Failed, aspect: None },
            // A judge error is treated as ordinary conversation (type 1).
            Query::Classify { .. } => Reply::Classify { kind: UtteranceType::Conversation, preference_id: None },
            _ => say(FALLBACK_REPLY.to_string()),
        }
    }

    fn wrap(query: Query) -> UserQuery {
        UserQuery::Travel(query)
    }

    fn unwrap(reply: UserReply) -> Option<Reply> {
        match reply {
            UserReply::Travel(r) => Some(r),
            _ => None,
        }
    }
}

fn say(response: String) -> Reply {
    Reply::Say { thought: String::new(), response }
}

// ---------------------------------------------------------------------------------------------------------
// Lexicon, built once

struct Lexicon {
    /// Words that name an aspect, for the search judge and for scoping a question.
    aspects: Vec<(Aspect, Vec<Phrase>)>,
    /// Topic name -> its phrases (the union over the aspects that share it).
    concepts: Vec<(&'static str, Vec<Phrase>)>,
    /// Catch-all phrasing of a question without a topic ("any preferences?").
    vague: Vec<Phrase>,
    /// City spellings as word sequences, longest first.
    cities: Vec<(Vec<String>, &'static str)>,
}

static LEXICON: LazyLock<Lexicon> = LazyLock::new(|| {
    let phrases = |list: &[&str]| list.iter().map(|s| Phrase::new(s)).filter(|p| !p.is_empty()).collect::<Vec<_>>();
    let aspects = vec![
        (
            Aspect::Flight,
            phrases(&["flight", "fly", "flying", "plane", "airfare", "airline", "air ticket", "plane ticket"]),
        ),
        (Aspect::Hotel, phrases(&["hotel", "motel", "inn", "resort", "hostel"])),
        (
            Aspect::Restaurant,
            phrases(&["restaurant", "dinner", "lunch", "dining", "dine", "eatery", "bistro", "place to eat"]),
        ),
        (Aspect::Apartment, phrases(&["apartment", "flat", "airbnb", "condo", "vacation rental", "holiday rental"])),
        (
            Aspect::RentalCar,
            phrases(&[
                "rental car",
                "car rental",
                "rent a car",
                "car hire",
                "hire a car",
                "car",
                "cars",
                "vehicle",
                "suv",
                "minivan",
            ]),
        ),
    ];
    let mut concepts: Vec<(&'static str, Vec<Phrase>)> = Vec::new();
    for spec in &catalog::SPECS {
        for s in spec.subcats {
            let new = phrases(s.keywords);
            match concepts.iter_mut().find(|(c, _)| *c == s.concept) {
                Some((_, list)) => {
                    for p in new {
                        if !list.contains(&p) {
                            list.push(p);
                        }
                    }
                }
                None => concepts.push((s.concept, new)),
            }
        }
    }
    let vague = phrases(&[
        "preference",
        "preferences",
        "prefer",
        "requirement",
        "requirements",
        "anything else",
        "what else",
        "any other",
        "needs",
        "looking for",
        "important to you",
        "what do you want",
        "what would you like",
        "tell me more",
        "details",
        "specific",
        "expectations",
        "wishes",
        "must-have",
        "care about",
        "kind of",
        "sort of",
        "type of",
    ]);
    let mut cities: Vec<(Vec<String>, &'static str)> = catalog::CITIES
        .iter()
        .flat_map(|(name, aliases)| aliases.iter().map(move |a| (crate::text::words(a), *name)))
        .collect();
    cities.sort_by_key(|(w, _)| std::cmp::Reverse(w.len()));
    Lexicon { aspects, concepts, vague, cities }
});

/// The aspects a text names, in `Aspect::ALL` order.
fn named_aspects(parsed: &Parsed) -> Vec<Aspect> {
    LEXICON.aspects.iter().filter(|(_, ps)| parsed.find_any(ps).is_some()).map(|(a, _)| *a).collect()
}

// ---------------------------------------------------------------------------------------------------------
// Search judge

static MONTH_RE: &str = "(january|february|march|april|may|june|july|august|september|october|november|december|jan|feb|mar|apr|jun|jul|aug|sept|sep|oct|nov|dec)";

static MONTH_FIRST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?i)\b{MONTH_RE}\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:\s*(?:-|–|to|through|until|till)\s*(\d{{1,2}})(?:st|nd|rd|th)?\b)?"
    ))
    .expect("static regex")
});
static DAY_FIRST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(r"(?i)\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?{MONTH_RE}\b")).expect("static regex")
});
static NUMERIC: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b(?:(\d{4})-(\d{1,2})-(\d{1,2})|(\d{1,2})/(\d{1,2})(?:/\d{2,4})?)\b").expect("static regex")
});

fn month_number(name: &str) -> Option<u32> {
    let n = name.to_ascii_lowercase();
    let key = n.get(..3)?;
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
        .iter()
        .position(|m| *m == key)
        .map(|i| i as u32 + 1)
}

/// Every calendar date in a text as (byte position, month, day): "December 10th", "Dec 10-20", "10 December",
/// "10th of December", "12/10", "2025-12-10".
pub fn extract_dates(text: &str) -> Vec<(usize, u32, u32)> {
    let mut out: Vec<(usize, u32, u32)> = Vec::new();
    let valid = |m: u32, d: u32| (1..=12).contains(&m) && (1..=31).contains(&d);
    for c in MONTH_FIRST.captures_iter(text) {
        let (Some(m), Some(d)) = (c.get(1).and_then(|m| month_number(m.as_str())), c.get(2)) else {
            continue;
        };
        let Ok(day) = d.as_str().parse::<u32>() else {
            continue;
        };
        if valid(m, day) {
            out.push((d.start(), m, day));
        }
        if let Some(end) = c.get(3) {
            // "December 28 to 3 January": the second number belongs to the next month, read by DAY_FIRST.
            let rest = text[c.get(0).map_or(end.end(), |x| x.end())..].trim_start();
            let next_is_month =
                rest.split(|ch: char| !ch.is_alphabetic()).next().and_then(month_number).is_some() && !rest.is_empty();
            if let (false, Ok(day2)) = (next_is_month, end.as_str().parse::<u32>())
                && valid(m, day2)
            {
                out.push((end.start(), m, day2));
            }
        }
    }
    for c in DAY_FIRST.captures_iter(text) {
        let (Some(d), Some(m)) = (c.get(1), c.get(2).and_then(|m| month_number(m.as_str()))) else {
            continue;
        };
        let Ok(day) = d.as_str().parse::<u32>() else {
            continue;
        };
        if valid(m, day) && !out.iter().any(|(p, _, _)| *p == d.start()) {
            out.push((d.start(), m, day));
        }
    }
    for c in NUMERIC.captures_iter(text) {
        let (m, d, pos) = match (c.get(2), c.get(3), c.get(4), c.get(5)) {
            (Some(m), Some(d), _, _) => (m.as_str(), d.as_str(), m.start()),
            (_, _, Some(m), Some(d)) => (m.as_str(), d.as_str(), m.start()),
            _ => continue,
        };
        if let (Ok(m), Ok(d)) = (m.parse::<u32>(), d.parse::<u32>())
            && valid(m, d)
        {
            out.push((pos, m, d));
        }
    }
    out.sort_unstable();
    out
}

/// Every known city in a text as (word position, canonical name, the word before it).
fn extract_cities(words: &[String]) -> Vec<(usize, &'static str, Option<&str>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let hit = LEXICON
            .cities
            .iter()
            .find(|(alias, _)| words.len() - i >= alias.len() && words[i..i + alias.len()] == alias[..]);
        match hit {
            Some((alias, name)) => {
                out.push((i, *name, i.checked_sub(1).map(|j| words[j].as_str())));
                i += alias.len();
            }
            None => i += 1,
        }
    }
    out
}

/// The scripted search judge: `Aligned` when the query names exactly one of the task's aspects and carries all
/// of that aspect's arguments (cities and dates in any common format) and no other city or date; `Unrelated`
/// when it names no aspect of the task; `Misaligned` otherwise.
pub fn judge_search(task: &TravelTask, query: &str) -> (Alignment, Option<Aspect>) {
    let parsed = Parsed::new(query);
    let named = named_aspects(&parsed);
    let in_task: Vec<Aspect> = named.iter().copied().filter(|a| task.aspect(*a).is_some()).collect();
    if named.len() > 1 {
        // One focused request at a time: a query for several aspects is malformed.
        return (if in_task.is_empty() { Alignment::Unrelated } else { Alignment::Misaligned }, None);
    }
    let Some(&aspect) = in_task.first() else {
        return (Alignment::Unrelated, None);
    };
    let Some(at) = task.aspect(aspect) else {
        return (Alignment::Unrelated, None);
    };

    let dates = extract_dates(query);
    let cities = extract_cities(&parsed.words);
    let mut want_dates: Vec<(&str, (u32, u32))> = Vec::new();
    let mut want_cities: Vec<(&str, &str)> = Vec::new();
    for arg in &at.arguments {
        if let Some(&(_, m, d)) = extract_dates(&arg.value).first() {
            want_dates.push((arg.name.as_str(), (m, d)));
        } else {
            let canonical = extract_cities(&crate::text::words(&arg.value)).first().map(|c| c.1).unwrap_or("");
            want_cities.push((arg.name.as_str(), if canonical.is_empty() { arg.value.as_str() } else { canonical }));
        }
    }
    // Every argument present.
    let date_pos = |want: (u32, u32)| dates.iter().find(|(_, m, d)| (*m, *d) == want).map(|(p, _, _)| *p);
    let city_pos = |want: &str| cities.iter().find(|c| c.1 == want).map(|c| c.0);
    if want_dates.iter().any(|(_, w)| date_pos(*w).is_none()) || want_cities.iter().any(|(_, w)| city_pos(w).is_none())
    {
        return (Alignment::Misaligned, Some(aspect));
    }
    // No stray values: listing every date or city the agent can think of must not pass.
    if dates.iter().any(|(_, m, d)| !want_dates.iter().any(|(_, w)| *w == (*m, *d)))
        || cities.iter().any(|c| !want_cities.iter().any(|(_, w)| *w == c.1))
    {
        return (Alignment::Misaligned, Some(aspect));
    }
    // Start before end (check-in before check-out), when the arguments have two dates.
    if let [(_, first), (_, second)] = want_dates[..]
        && first != second
        && date_pos(first) > date_pos(second)
    {
        return (Alignment::Misaligned, Some(aspect));
    }
    // A flight's direction: "from X" must be the origin, "to Y" the destination; without markers, X before Y.
    let origin = want_cities.iter().find(|(n, _)| *n == "origin").map(|(_, c)| *c);
    let destination = want_cities.iter().find(|(n, _)| *n == "destination").map(|(_, c)| *c);
    if let (Some(origin), Some(destination)) = (origin, destination) {
        let mut marked = false;
        for (_, name, before) in &cities {
            match *before {
                Some("from") => {
                    marked = true;
                    if *name != origin {
                        return (Alignment::Misaligned, Some(aspect));
                    }
                }
                Some("to" | "into") => {
                    marked = true;
                    if *name != destination {
                        return (Alignment::Misaligned, Some(aspect));
                    }
                }
                _ => {}
            }
        }
        if !marked && city_pos(origin) > city_pos(destination) {
            return (Alignment::Misaligned, Some(aspect));
        }
    }
    (Alignment::Aligned, Some(aspect))
}

// ---------------------------------------------------------------------------------------------------------
// Utterance judge

/// The topics (concepts) a text touches. Mentions under a negation ("never mind the price") only count when
/// nothing else is mentioned.
fn touched_concepts(parsed: &Parsed, task: &TravelTask) -> Vec<String> {
    let mut plain: Vec<String> = Vec::new();
    let mut negated: Vec<String> = Vec::new();
    let mut add = |name: &str, found: Option<bool>| match found {
        Some(false) if !plain.iter().any(|c| c == name) => plain.push(name.to_string()),
        Some(true) if !negated.iter().any(|c| c == name) => negated.push(name.to_string()),
        _ => {}
    };
    for (name, phrases) in &LEXICON.concepts {
        add(name, parsed.find_any(phrases));
    }
    // Data from elsewhere may carry subcategories the catalog does not know: use their own keywords.
    for p in task.preferences() {
        if !LEXICON.concepts.iter().any(|(c, _)| *c == p.subcategory) {
            let phrases: Vec<Phrase> = p.keywords.iter().map(|k| Phrase::new(k)).filter(|p| !p.is_empty()).collect();
            add(&p.subcategory, parsed.find_any(&phrases));
        }
    }
    if plain.is_empty() { negated } else { plain }
}

/// The scripted utterance judge (reference §4.7 types): a keyword list or three or more topics is type 4;
/// one or two topics is type 2 for the first remaining preference on them (within the aspects the utterance
/// names, else all), or type 3 when the user has none; no topic is type 4 for a catch-all question and type
/// 1 otherwise.
pub fn classify<'a>(
    task: &TravelTask,
    utterance: &str,
    remaining: &'a [PrefRef],
) -> (UtteranceType, Option<&'a PrefRef>) {
    if is_keyword_list(utterance) {
        return (UtteranceType::Vague, None);
    }
    let parsed = Parsed::new(utterance);
    if parsed.words.is_empty() {
        return (UtteranceType::Conversation, None);
    }
    let concepts = touched_concepts(&parsed, task);
    if concepts.len() >= 3 {
        return (UtteranceType::Vague, None);
    }
    if concepts.is_empty() {
        let vague = parsed.find_any(&LEXICON.vague).is_some();
        return (if vague { UtteranceType::Vague } else { UtteranceType::Conversation }, None);
    }
    let named = named_aspects(&parsed);
    let in_scope = |a: Aspect| named.is_empty() || named.contains(&a);
    let hit = remaining
        .iter()
        .find(|r| task.preference(r.index).is_some_and(|p| in_scope(p.aspect) && concepts.contains(&p.subcategory)));
    match hit {
        Some(r) => (UtteranceType::Preference, Some(r)),
        None => (UtteranceType::Missing, None),
    }
}

// ---------------------------------------------------------------------------------------------------------
// LLM prompts (this project's wording; the JSON fields are the original's)

fn history_text(history: &[LogEntry]) -> String {
    if history.is_empty() {
        return "(nothing yet)".into();
    }
    history
        .iter()
        .map(|h| {
            let role = match h.role {
                LogRole::Agent => "Agent",
                LogRole::User => "User",
                LogRole::Database => "Database",
            };
            match &h.note {
                Some(note) => format!("{role}: {} [note: {note}]", h.content),
                None => format!("{role}: {}", h.content),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn search_prompt(task: &TravelTask, query: &str) -> Prompt {
    let args: Vec<String> = task
        .aspects
        .iter()
        .map(|a| {
            let list: Vec<String> = a.arguments.iter().map(|x| format!("{}: {}", x.name, x.value)).collect();
            format!("- {}: {}", a.aspect.key(), list.join("; "))
        })
        .collect();
    let system = "You guard a travel database. An agent sends search requests; you decide whether a request matches \
what the database holds for this trip. Reply with a JSON object only.";
    let user = format!(
        "The database holds one set of options for each travel aspect below, found with exactly these search \
arguments:\n{}\n\nThe agent's search request:\n{query}\n\nDecide:\n- \"True\" if the request is one single request \
for one of these aspects and states all of that aspect's arguments correctly (any reasonable wording or date \
format is fine).\n- \"False\" if it targets one of these aspects but is malformed, asks for several aspects at \
once, or misses or gets wrong any argument.\n- \"N/A\" if it is unrelated to every aspect above.\n\nAnswer as \
{{\"alignment_judgement\": \"True\" | \"False\" | \"N/A\", \"alignment_aspect\": \"<the aspect key, e.g. \
flight or rental_car, or empty>\"}}.",
        args.join("\n")
    );
    Prompt::new(system, user)
}

fn classify_prompt(task: &TravelTask, history: &[LogEntry], utterance: &str, remaining: &[PrefRef]) -> Prompt {
    let prefs: Vec<String> = remaining
        .iter()
        .filter_map(|r| task.preference(r.index).map(|p| format!("- {} ({}): {}", r.id, p.aspect.noun(), p.text)))
        .collect();
    let prefs = if prefs.is_empty() { "(none left)".to_string() } else { prefs.join("\n") };
    let system = "You classify what a travel agent says to a traveller. Reply with a JSON object only.";
    let user = format!(
        "Trip: {}\n\nConversation so far:\n{}\n\nThe traveller's preferences not yet revealed:\n{prefs}\n\nThe agent \
now says:\n{utterance}\n\nClassify the agent's message:\n1 - ordinary conversation that asks about no concrete \
preference (greetings, remarks, confirmations, recommendations).\n2 - a specific, concrete question about one of \
the preferences listed above; give its id.\n3 - a specific, concrete question about something the traveller has \
no listed preference on.\n4 - a question that is too vague or general (\"any preferences?\", \"what else do you \
need?\") or that asks about many things at once.\n\nAnswer as {{\"type\": <1-4>, \"preference_id\": \"<id such \
as P2 for type 2, otherwise null>\"}}.",
        task.scenario,
        history_text(history)
    );
    Prompt::new(system, user)
}

fn responder_prompt(
    task: &TravelTask,
    history: &[LogEntry],
    utterance: &str,
    preference: Option<&PrefRef>,
    volunteer: bool,
) -> Prompt {
    let system = "You play a traveller talking with a travel agent. Stay in character, speak naturally and briefly, \
and reply with a JSON object only.";
    let pref = preference.and_then(|r| task.preference(r.index));
    let task_text = match (pref, volunteer) {
        (Some(p), false) => format!(
            "The agent's message touches on this preference of yours about the {}: \"{}\". Answer the agent, and \
let the preference show only indirectly, through a remark in the spirit of: \"{}\". Do not state the preference \
itself, do not name option ids, and do not ask questions.",
            p.aspect.noun(),
            p.text,
            p.implicit
        ),
        (Some(p), true) => format!(
            "The agent has not asked about what matters to you for a while. Reply to the message, and volunteer \
this preference about the {} indirectly, through a remark in the spirit of: \"{}\" (the preference itself is \
\"{}\", which you must not state outright). Do not ask questions.",
            p.aspect.noun(),
            p.implicit,
            p.text
        ),
        (None, _) => "Reply briefly and neutrally, a little half-heartedly. Reveal none of your preferences and ask \
nothing."
            .to_string(),
    };
    let user = format!(
        "Your situation: {}\nWhat you first told the agent: {}\n\nConversation so far:\n{}\n\nThe agent now \
says:\n{utterance}\n\n{task_text}\n\nAnswer as {{\"thought\": \"<your private reasoning>\", \"response\": \"<what \
you say to the agent>\"}}.",
        task.scenario,
        task.initial_description,
        history_text(history)
    );
    Prompt::new(system, user)
}
