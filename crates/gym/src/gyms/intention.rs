//! IntentionGym (held-out): the agent gets a vague request ("plan a trip to Lisbon") and must find the missing
//! details that matter (duration, budget, lodging…) by asking the user one clarifying question per turn
//! (reference §4.4). A simulated user answers each question and a judge says which of the still-open details
//! the question addressed; each newly covered detail pays by its importance, with a penalty for covering several
//! in one question. The episode ends once every detail is covered.
//!
//! The embedded task set is authored (`data/intention/`): per-category detail templates (description,
//! importance, an example inquiry, the concept phrases a question must touch, candidate preferences) and 150
//! vague tasks that pick 2–6 of their category's details and one preference for each.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentTurn, Message};
use crate::env::{Env, EnvConfig, EnvStep};
use crate::gyms::{Gym, GymError, GymKind, Task, TaskInfo, TaskSet};
use crate::llm::{Prompt, extract_json};
use crate::split::{self, Split};
use crate::text::{self, Parsed, Phrase, mix, pick};
use crate::tool::{Action, Choice};
use crate::user::{Protocol, User, UserError, UserKind, UserQuery, UserReply, ask};

/// Seed of the train/test split of the embedded tasks.
pub const SPLIT_SEED: u64 = 0x1A7E_2025;
/// 30 of the 150 embedded tasks are held out for testing.
const TEST_FRACTION: f64 = 0.2;
/// A question that touches more details than this is treated by the scripted judge as asking about everything
/// at once, and covers nothing (so a catch-all question can never beat asking one thing at a time).
pub const MAX_DETAILS_PER_QUESTION: usize = 2;
/// A clarifying question longer than this (in characters) is not one question; the scripted side reads no
/// further, which also keeps an 8 KB wall of text from costing more than a glance.
pub const MAX_QUESTION_CHARS: usize = 600;
/// How many earlier exchanges the user and the judge see (the original's window).
const HISTORY_WINDOW: usize = 3;
/// Penalty per extra detail covered by one question (reference §4.4).
const MULTI_DETAIL_PENALTY: f64 = 0.2;

const CATEGORIES_JSON: &str = include_str!("../../data/intention/categories.json");
const TASKS_JSON: &str = include_str!("../../data/intention/tasks.json");

/// Switches that reproduce the original's behaviour where we consider it a bug (reference §4.4, §11). All off
/// by default.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Compat {
    /// The original formats the whole task record (including `missing_details` with their descriptions, example
    /// inquiries and options) into the LLM simulator's prompt, although its own comment says the simulator must
    /// not know them. Off (default): the simulator sees the request, its category and — when the task has them —
    /// the person's private wishes, to share only when asked; never the list of what is missing.
    pub leak_details_to_simulator: bool,
    /// The original's step counter ends the episode as *terminated* (not merely truncated) once it reaches
    /// `max_steps`. Off (default): the shared episode budget truncates the episode instead. Only the
    /// termination label differs; rewards are the same.
    pub terminate_at_max_steps: bool,
}

// ---------------------------------------------------------------------------------------------------------
// Task format

/// How much a missing detail matters: 1 (low), 2 (medium) or 3 (high). Written as the strings "1"–"3", as in
/// the original data; plain numbers are accepted too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Importance(u8);

impl Importance {
    pub const LOW: Importance = Importance(1);
    pub const MEDIUM: Importance = Importance(2);
    pub const HIGH: Importance = Importance(3);

    pub fn new(level: u8) -> Option<Importance> {
        (1..=3).contains(&level).then_some(Importance(level))
    }

    pub fn level(self) -> u8 {
        self.0
    }

    /// The reward for covering a detail of this importance alone (reference §4.4: {3: 1.0, 2: 0.7, 1: 0.4}).
    pub fn base_reward(self) -> f64 {
        match self.0 {
            3 => 1.0,
            2 => 0.7,
            _ => 0.4,
        }
    }

    /// The label the judge prompt shows.
    pub fn label(self) -> &'static str {
        match self.0 {
            3 => "HIGH",
            2 => "MEDIUM",
            _ => "LOW",
        }
    }
}

impl Serialize for Importance {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Importance {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        let level = match &value {
            serde_json::Value::String(s) => s.trim().parse::<u8>().ok(),
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u8::try_from(n).ok()),
            _ => None,
        };
        level
            .and_then(Importance::new)
            .ok_or_else(|| serde::de::Error::custom(format!("importance must be \"1\", \"2\" or \"3\", got {value}")))
    }
}

/// One detail the vague request leaves open.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MissingDetail {
    pub description: String,
    pub importance: Importance,
    /// An example of a question that addresses the detail (shown to the LLM judge).
    #[serde(default)]
    pub inquiry: String,
    /// Candidate answers (the original IN3 data has them; the embedded tasks leave them out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    /// Concept phrases for the scripted judge: a question addresses the detail when it contains one of them
    /// (stemmed, in any inflection, negated or not). A phrase written `a + b` needs both parts, in any order.
    /// Empty in imported original tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub concepts: Vec<String>,
    /// What the person actually wants here: the scripted user's answer when asked. Absent in imported tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntentionTask {
    pub id: String,
    pub split: Split,
    pub category: String,
    /// The vague request as the person wrote it.
    pub task: String,
    pub missing_details: Vec<MissingDetail>,
}

impl Task for IntentionTask {
    fn id(&self) -> &str {
        &self.id
    }
    fn split(&self) -> Split {
        self.split
    }
}

impl IntentionTask {
    /// The best reachable episode score: every detail asked about on its own.
    pub fn max_score(&self) -> f64 {
        self.missing_details.iter().map(|d| d.importance.base_reward()).sum()
    }

    /// Whether the scripted user can play this task (every detail has concepts and a preference).
    pub fn has_scripted_data(&self) -> bool {
        self.missing_details
            .iter()
            .all(|d| !d.concepts.is_empty() && d.preference.as_deref().is_some_and(|p| !p.trim().is_empty()))
    }
}

/// The reward for one question that covered details of these importances (reference §4.4): 0 when none,
/// else the base of the most important one minus 0.2 for each extra detail, floored at 0 and clipped to [0, 1].
pub fn coverage_reward(covered: &[Importance]) -> f64 {
    let Some(best) = covered.iter().max() else { return 0.0 };
    let extra = (covered.len() - 1) as f64;
    (best.base_reward() - MULTI_DETAIL_PENALTY * extra).clamp(0.0, 1.0)
}

// ---------------------------------------------------------------------------------------------------------
// The authored data

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryTemplate {
    label: String,
    details: BTreeMap<String, DetailTemplate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetailTemplate {
    description: String,
    importance: Importance,
    inquiry: String,
    concepts: Vec<String>,
    preferences: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthoredTask {
    id: String,
    category: String,
    task: String,
    details: Vec<DetailRef>,
}

/// A task's use of a category detail: `"budget"` (preference chosen by a hash of the task id), `"budget:1"`
/// (the second candidate preference), or an object overriding the importance or the preference.
#[derive(Deserialize)]
#[serde(untagged)]
enum DetailRef {
    Key(String),
    Full {
        key: String,
        #[serde(default)]
        importance: Option<Importance>,
        #[serde(default)]
        preference: Option<String>,
    },
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn data_error(location: impl Into<String>, message: impl Into<String>) -> GymError {
    GymError::Data { gym: GymKind::Intention, location: location.into(), message: message.into() }
}

/// Expands the authored templates and tasks into full tasks, with the seeded train/test split.
pub fn authored_tasks() -> Result<Vec<IntentionTask>, GymError> {
    let categories: BTreeMap<String, CategoryTemplate> = serde_json::from_str(CATEGORIES_JSON)
        .map_err(|e| data_error("data/intention/categories.json", e.to_string()))?;
    let authored: Vec<AuthoredTask> =
        serde_json::from_str(TASKS_JSON).map_err(|e| data_error("data/intention/tasks.json", e.to_string()))?;
    let splits = split::assign(authored.len(), TEST_FRACTION, SPLIT_SEED);
    let mut tasks = Vec::with_capacity(authored.len());
    for (a, split) in authored.into_iter().zip(splits) {
        let location = format!("data/intention/tasks.json: {}", a.id);
        let category = categories
            .get(&a.category)
            .ok_or_else(|| data_error(&location, format!("unknown category `{}`", a.category)))?;
        let mut details = Vec::with_capacity(a.details.len());
        for r in a.details {
            let (spec, importance, preference) = match r {
                DetailRef::Key(spec) => (spec, None, None),
                DetailRef::Full { key, importance, preference } => (key, importance, preference),
            };
            let (key, index) = match spec.split_once(':') {
                Some((k, i)) => {
                    (k.to_string(), Some(i.parse::<usize>().map_err(|e| data_error(&location, e.to_string()))?))
                }
                None => (spec, None),
            };
            let t =
                category.details.get(&key).ok_or_else(|| data_error(&location, format!("unknown detail `{key}`")))?;
            if t.preferences.is_empty() {
                return Err(data_error(&location, format!("detail `{key}` has no preferences")));
            }
            let index = index.unwrap_or((mix(fnv(&a.id), fnv(&key)) % t.preferences.len() as u64) as usize);
            let preference = match preference {
                Some(p) => p,
                None => t
                    .preferences
                    .get(index)
                    .cloned()
                    .ok_or_else(|| data_error(&location, format!("no preference {index} for `{key}`")))?,
            };
            details.push(MissingDetail {
                description: t.description.clone(),
                importance: importance.unwrap_or(t.importance),
                inquiry: t.inquiry.clone(),
                options: Vec::new(),
                concepts: t.concepts.clone(),
                preference: Some(preference),
            });
        }
        tasks.push(IntentionTask {
            id: a.id,
            split,
            category: category.label.clone(),
            task: a.task,
            missing_details: details,
        });
    }
    Ok(tasks)
}

// ---------------------------------------------------------------------------------------------------------
// Understanding questions (shared by the scripted user and the scripted judge)

/// A task's concept phrases, compiled once when the gym loads.
#[derive(Debug)]
pub struct Lexicon {
    /// Per detail: alternatives, each a set of phrases that must all occur.
    details: Vec<Vec<Vec<Phrase>>>,
    /// Content stems of the request and its category, to tell an on-topic question from an unrelated one.
    topic: HashSet<String>,
    scripted_ready: bool,
}

impl Lexicon {
    pub fn new(task: &IntentionTask) -> Lexicon {
        let details = task
            .missing_details
            .iter()
            .map(|d| {
                d.concepts
                    .iter()
                    .map(|c| c.split(" + ").map(Phrase::new).filter(|p| !p.is_empty()).collect::<Vec<_>>())
                    .filter(|parts| !parts.is_empty())
                    .collect()
            })
            .collect();
        let topic = text::content_stems(&format!("{} {}", task.task, task.category)).into_iter().collect();
        Lexicon { details, topic, scripted_ready: task.has_scripted_data() }
    }

    /// The details (indices into the task's list) whose concepts the text touches.
    fn touched(&self, parsed: &Parsed) -> Vec<usize> {
        self.details
            .iter()
            .enumerate()
            .filter(|(_, alternatives)| alternatives.iter().any(|parts| parts.iter().all(|p| parsed.contains(p))))
            .map(|(i, _)| i)
            .collect()
    }
}

/// Phrases that make a question at least related to some request even when it touches none of this task's
/// details: every concept of the embedded categories plus words about wishes and constraints. Such a question
/// gets a neutral answer; anything else is steered back to the request.
static RELATED: LazyLock<Related> = LazyLock::new(|| {
    let mut phrases: Vec<String> = [
        "prefer",
        "preference",
        "important",
        "priority",
        "urgent",
        "need",
        "expect",
        "plan",
        "require",
        "matter",
        "mind",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Ok(categories) = serde_json::from_str::<BTreeMap<String, CategoryTemplate>>(CATEGORIES_JSON) {
        for c in categories.values() {
            for d in c.details.values() {
                // Whole single-phrase concepts with a content word only: `what + for` or `when` alone would make
                // every question look related.
                let useful = d.concepts.iter().filter(|c| !c.contains(" + ") && !text::content_stems(c).is_empty());
                phrases.extend(useful.cloned());
            }
        }
    }
    let mut related = Related { words: HashSet::new(), phrases: Vec::new() };
    for p in phrases {
        let stems = text::stems(&p);
        match stems.as_slice() {
            [] => {}
            [one] => {
                related.words.insert(one.clone());
            }
            _ => related.phrases.push(Phrase::new(&p)),
        }
    }
    related
});

/// One-word phrases are looked up in a set, so that checking a question against hundreds of them stays cheap.
struct Related {
    words: HashSet<String>,
    phrases: Vec<Phrase>,
}

impl Related {
    fn matches(&self, parsed: &Parsed) -> bool {
        parsed.stems.iter().any(|s| self.words.contains(s)) || self.phrases.iter().any(|p| parsed.contains(p))
    }
}

/// What the scripted side makes of a question.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No words at all.
    Empty,
    /// A bag of keywords rather than a question.
    KeywordList,
    /// A statement or instruction, not a question to the user.
    NotAQuestion,
    /// Asks about more than `MAX_DETAILS_PER_QUESTION` details at once.
    TooBroad,
    /// Longer than `MAX_QUESTION_CHARS`: a wall of text, not one clarifying question.
    TooLong,
    /// A proper question (it may still touch no detail).
    Clear,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    pub verdict: Verdict,
    /// Details the question touches (indices into the task's list), whatever the verdict.
    pub touched: Vec<usize>,
    /// Whether the question is related to the request (shares a word with it, or asks about wishes and
    /// constraints of any kind).
    pub on_topic: bool,
}

const QUESTION_STARTS: &[&str] = &[
    "what",
    "which",
    "how",
    "when",
    "where",
    "who",
    "whom",
    "whose",
    "why",
    "do",
    "does",
    "did",
    "are",
    "is",
    "was",
    "were",
    "will",
    "would",
    "could",
    "can",
    "should",
    "shall",
    "may",
    "might",
    "have",
    "has",
    "had",
    "tell",
    "describe",
    "share",
    "let",
    "please",
    "any",
    "explain",
    "give",
    "mention",
    "specify",
    "am",
    "roughly",
    "approximately",
];

static REQUEST_MARKERS: LazyLock<Vec<Phrase>> = LazyLock::new(|| {
    [
        "let me know",
        "tell me",
        "wondering",
        "curious",
        "could you",
        "would you",
        "can you",
        "like to know",
        "need to know",
        "want to know",
        "wanted to ask",
        "ask you",
    ]
    .iter()
    .map(|p| Phrase::new(p))
    .collect()
});

/// Whether the text asks the user something: a question mark, an interrogative or request opening, or a
/// request phrase ("I'd like to know…", "I was wondering…").
fn is_inquiry(text: &str, parsed: &Parsed) -> bool {
    text.contains('?')
        || text.contains('？')
        || parsed.words.first().is_some_and(|w| QUESTION_STARTS.contains(&w.as_str()))
        || REQUEST_MARKERS.iter().any(|p| parsed.contains(p))
}

/// Reads a question against a task's lexicon.
pub fn read_question(lexicon: &Lexicon, question: &str) -> Reading {
    if !text::has_words(question) {
        return Reading { verdict: Verdict::Empty, touched: Vec::new(), on_topic: false };
    }
    if question.chars().count() > MAX_QUESTION_CHARS {
        return Reading { verdict: Verdict::TooLong, touched: Vec::new(), on_topic: false };
    }
    let parsed = Parsed::new(question);
    let touched = lexicon.touched(&parsed);
    // Only needed when no detail is touched; skipped otherwise to keep the common case fast.
    let on_topic = !touched.is_empty()
        || text::content_stems(question).iter().any(|s| lexicon.topic.contains(s))
        || RELATED.matches(&parsed);
    let verdict = if text::is_keyword_list(question) {
        Verdict::KeywordList
    } else if !is_inquiry(question, &parsed) {
        Verdict::NotAQuestion
    } else if touched.len() > MAX_DETAILS_PER_QUESTION {
        Verdict::TooBroad
    } else {
        Verdict::Clear
    };
    Reading { verdict, touched, on_topic }
}

// ---------------------------------------------------------------------------------------------------------
// The user protocol: a simulator that answers, and a judge that says which open details a question covered

/// One earlier question and the user's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub question: String,
    pub response: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Query {
    /// The person who made the request answers the agent's question.
    Respond {
        task: Arc<IntentionTask>,
        #[serde(skip)]
        lexicon: Arc<Lexicon>,
        question: String,
        /// The last exchanges before this question (at most three).
        history: Vec<Exchange>,
        /// `Compat::leak_details_to_simulator`.
        leak_details: bool,
        /// Varies the scripted wording and the fallback line.
        seed: u64,
    },
    /// The judge says which of the still-open details the question addresses.
    Judge {
        task: Arc<IntentionTask>,
        #[serde(skip)]
        lexicon: Arc<Lexicon>,
        question: String,
        /// The last exchanges before this question (at most three), as the original judge sees them.
        history: Vec<Exchange>,
        /// Indices (into the task's details) of the details not yet covered, in order; the judge numbers
        /// them from 0.
        remaining: Vec<usize>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Reply {
    Respond {
        thought: String,
        response: String,
    },
    Judge {
        analysis: String,
        is_task_related: bool,
        /// Indices into the task's details (already mapped from the judge's numbering, out-of-range ones dropped).
        covered: Vec<usize>,
    },
}

/// The lines the original falls back to when its simulator call fails (reworded).
const FALLBACK_LINES: &[&str] = &[
    "Hmm, that's a fair question, let me think it over.",
    "Oh, good point, I hadn't really thought about that part.",
    "Thanks for asking, it helps me work out what I actually need.",
    "Right, that's something I should pin down.",
    "I'm glad you're helping me think this through.",
];

const OPENERS: &[&str] =
    &["", "Good question. ", "Sure. ", "Right, I should have said. ", "Let me think. ", "Glad you asked. "];
const REPEAT_OPENERS: &[&str] = &["As I said, ", "Like I mentioned, ", "Same as before: "];
const NEUTRAL_LINES: &[&str] = &[
    "Hmm, maybe? I don't have a strong opinion on that.",
    "I'm not sure, I haven't really thought about that. Whatever you think works.",
    "That doesn't matter much to me, to be honest.",
];
const UNCLEAR_LINES: &[&str] = &[
    "Sorry, I'm not sure what you're asking me. Could you put it as a question?",
    "I don't quite follow. What would you like to know?",
];
const KEYWORD_LINES: &[&str] = &[
    "That's just a list of words. What exactly would you like to know?",
    "I'm not sure how to answer a list like that. Could you ask me a proper question?",
];
const BROAD_LINES: &[&str] = &[
    "That's a lot of things at once! Could you ask me about one thing at a time?",
    "Whoa, that's many questions in one. Let's take them one by one, please.",
];

/// First letter lowercased unless it is the pronoun "I" (for joining two answers into one sentence).
fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some('I') if matches!(chars.clone().next(), Some(' ' | '\'' | '’')) => s.to_string(),
        Some(c) => c.to_lowercase().collect::<String>() + chars.as_str(),
        None => String::new(),
    }
}

fn scripted_respond(task: &IntentionTask, lexicon: &Lexicon, question: &str, history: &[Exchange], seed: u64) -> Reply {
    let reading = read_question(lexicon, question);
    let line = |lines: &[&str]| pick(lines, seed).to_string();
    let (thought, response) = match reading.verdict {
        Verdict::Empty | Verdict::NotAQuestion => ("I did not hear a question.", line(UNCLEAR_LINES)),
        Verdict::KeywordList => ("That was a list of keywords, not a question.", line(KEYWORD_LINES)),
        Verdict::TooBroad | Verdict::TooLong => ("They asked about too many things at once.", line(BROAD_LINES)),
        Verdict::Clear if reading.touched.is_empty() && reading.on_topic => {
            ("This is not something I have a preference about.", line(NEUTRAL_LINES))
        }
        Verdict::Clear if reading.touched.is_empty() => (
            "This question is unrelated to my request; I steer back to it.",
            format!(
                "{} What I really need help with is this: {}",
                pick(
                    &[
                        "I'm not sure how that relates to my request.",
                        "That's interesting, but it's not really what I'm after."
                    ],
                    seed
                ),
                task.task
            ),
        ),
        Verdict::Clear => {
            let answers: Vec<&str> = reading
                .touched
                .iter()
                .filter_map(|&i| task.missing_details.get(i).and_then(|d| d.preference.as_deref()))
                .collect();
            let repeated = answers.iter().all(|a| history.iter().any(|h| h.response.contains(a)));
            let opener = if repeated { pick(REPEAT_OPENERS, seed) } else { pick(OPENERS, mix(seed, 1)) };
            let mut response = String::from(opener);
            for (n, answer) in answers.iter().enumerate() {
                if n == 0 {
                    // "As I said, i'm…" reads wrong: only lowercase after a comma.
                    response.push_str(&if opener.ends_with(", ") { lower_first(answer) } else { answer.to_string() });
                } else {
                    response.push_str(" Also, ");
                    response.push_str(&lower_first(answer));
                }
            }
            ("They asked about something I have in mind; I answer honestly.", response)
        }
    };
    Reply::Respond { thought: thought.to_string(), response }
}

fn scripted_judge(lexicon: &Lexicon, question: &str, remaining: &[usize]) -> Reply {
    let reading = read_question(lexicon, question);
    let (analysis, related, covered) = match reading.verdict {
        Verdict::Clear => {
            let covered: Vec<usize> = reading.touched.iter().copied().filter(|i| remaining.contains(i)).collect();
            let related = reading.on_topic;
            let analysis = if covered.is_empty() {
                "The question addresses none of the open details."
            } else {
                "The question addresses open details."
            };
            (analysis, related, covered)
        }
        Verdict::TooBroad | Verdict::TooLong => {
            ("The question tries to cover many details at once; it counts for none.", true, Vec::new())
        }
        Verdict::KeywordList => ("A keyword list is not a clarifying question.", false, Vec::new()),
        Verdict::Empty | Verdict::NotAQuestion => ("This is not a clarifying question.", false, Vec::new()),
    };
    Reply::Judge { analysis: analysis.to_string(), is_task_related: related, covered }
}

fn no_scripted_data(task: &IntentionTask) -> UserError {
    UserError::NoScriptedData {
        gym: "intention",
        task: task.id.clone(),
        missing: "concept phrases and preferences for the missing details",
    }
}

fn history_text(history: &[Exchange], asker: &str, answerer: &str) -> String {
    if history.is_empty() {
        return "(none yet)".to_string();
    }
    let start = history.len().saturating_sub(HISTORY_WINDOW);
    history[start..]
        .iter()
        .map(|h| format!("{asker}: {}\n{answerer}: {}", h.question, h.response))
        .collect::<Vec<_>>()
        .join("\n")
}

const RESPOND_SYSTEM: &str = "You play a person who asked for help with a request that was too vague. A helper now asks \
you clarifying questions. Stay in character and answer as that person would.";

const JUDGE_SYSTEM: &str = "You are an impartial judge of clarifying questions. You only decide which open details a \
question addresses; you never answer the question yourself.";

fn respond_prompt(task: &IntentionTask, question: &str, history: &[Exchange], leak: bool) -> Prompt {
    let background = if leak {
        // The original's behaviour: the full task record, missing details included.
        format!("Your full task record:\n{}\n", serde_json::to_string_pretty(task).unwrap_or_default())
    } else {
        let wishes: Vec<String> =
            task.missing_details.iter().filter_map(|d| d.preference.as_deref()).map(|p| format!("- {p}")).collect();
        if wishes.is_empty() {
            "You have not decided the specifics yet; when asked, give realistic and consistent preferences that a \
             person with this request could have.\n"
                .to_string()
        } else {
            format!(
                "What you privately have in mind (reveal a point only when the question asks about it; never recite \
                 this list):\n{}\nIf asked about something not covered here, answer plausibly and briefly.\n",
                wishes.join("\n")
            )
        }
    };
    let user = format!(
        "Your request: {request}\nCategory: {category}\n\n{background}\nEarlier conversation:\n{history}\n\nThe helper now asks: \
         {question}\n\nHow to answer:\n1. If the question is about what you want for this request, answer naturally, \
         concretely and consistently with what you said before.\n2. If it is not about your request, reply politely \
         and steer the conversation back to what you need.\n3. Never list which details are still missing, never \
         hint at questions the helper has not asked, and never propose solutions: you are the one asking for \
         help.\n\nReply with JSON only:\n{{\"thought\": \"your private reasoning about the question\", \"response\": \
         \"what you say to the helper\"}}",
        request = task.task,
        category = task.category,
        history = history_text(history, "Helper", "You"),
    );
    Prompt::new(RESPOND_SYSTEM, user)
}

fn judge_prompt(task: &IntentionTask, question: &str, history: &[Exchange], remaining: &[usize]) -> Prompt {
    let mut list = String::new();
    for (n, &i) in remaining.iter().enumerate() {
        if let Some(d) = task.missing_details.get(i) {
            list.push_str(&format!("{n}. [{}] {}\n", d.importance.label(), d.description));
            if !d.inquiry.is_empty() {
                list.push_str(&format!("   A question that would address it: {}\n", d.inquiry));
            }
        }
    }
    if list.is_empty() {
        list.push_str("(none: every detail has been covered)\n");
    }
    let user = format!(
        "Vague request: {request}\nCategory: {category}\n\nDetails still open (numbered from 0):\n{list}\nEarlier \
         conversation:\n{history}\n\nLatest question from the helper: {question}\n\nDecide which open details the \
         latest question addresses. A question addresses a detail when its answer would reveal what the person \
         wants for that detail. If the question does not try to clarify the request at all, it is not task-related \
         and addresses nothing.\n\nReply with JSON only:\n{{\"analysis\": \"a short explanation\", \
         \"is_task_related\": true or false, \"covered_detail_indices\": [numbers from the list above]}}",
        request = task.task,
        category = task.category,
        history = history_text(history, "Q", "A"),
    );
    Prompt::new(JUDGE_SYSTEM, user)
}

fn parse_bool(value: &serde_json::Value) -> Option<bool> {
    match value {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" => Some(true),
            "false" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

pub struct UserRole;

impl Protocol for UserRole {
    type Query = Query;
    type Reply = Reply;

    fn scripted(query: &Query) -> Result<Reply, UserError> {
        match query {
            Query::Respond { task, lexicon, question, history, seed, .. } => {
                if !lexicon.scripted_ready {
                    return Err(no_scripted_data(task));
                }
                Ok(scripted_respond(task, lexicon, question, history, *seed))
            }
            Query::Judge { task, lexicon, question, remaining, .. } => {
                if !lexicon.scripted_ready {
                    return Err(no_scripted_data(task));
                }
                Ok(scripted_judge(lexicon, question, remaining))
            }
        }
    }

    fn prompt(query: &Query) -> Prompt {
        match query {
            Query::Respond { task, question, history, leak_details, .. } => {
                respond_prompt(task, question, history, *leak_details)
            }
            Query::Judge { task, question, history, remaining, .. } => judge_prompt(task, question, history, remaining),
        }
    }

    fn parse(query: &Query, text: &str) -> Option<Reply> {
        match query {
            Query::Respond { .. } => {
                let raw = text.trim();
                if raw.is_empty() {
                    return None;
                }
                match extract_json(raw) {
                    Some(v) => {
                        let response = v.get("response")?.as_str()?.trim();
                        if response.is_empty() {
                            return None;
                        }
                        let thought = v.get("thought").and_then(|t| t.as_str()).unwrap_or("").to_string();
                        Some(Reply::Respond { thought, response: response.to_string() })
                    }
                    // The original keeps the raw text as the answer when there is no JSON in it.
                    None => Some(Reply::Respond { thought: String::new(), response: raw.to_string() }),
                }
            }
            Query::Judge { remaining, .. } => {
                let v = extract_json(text)?;
                let list = v.get("covered_detail_indices")?.as_array()?;
                // The original treats a missing flag as related.
                let related = match v.get("is_task_related") {
                    None | Some(serde_json::Value::Null) => true,
                    Some(flag) => parse_bool(flag)?,
                };
                let analysis = v.get("analysis").and_then(|a| a.as_str()).unwrap_or("").to_string();
                let mut covered = Vec::new();
                if related {
                    for item in list {
                        let n = match item {
                            serde_json::Value::Number(n) => n.as_u64(),
                            serde_json::Value::String(s) => s.trim().parse::<u64>().ok(),
                            _ => None,
                        };
                        if let Some(&detail) = n.and_then(|n| usize::try_from(n).ok()).and_then(|n| remaining.get(n))
                            && !covered.contains(&detail)
                        {
                            covered.push(detail);
                        }
                    }
                }
                Some(Reply::Judge { analysis, is_task_related: related, covered })
            }
        }
    }

    fn fallback(query: &Query) -> Reply {
        match query {
            Query::Respond { seed, .. } => {
                Reply::Respond { thought: String::new(), response: pick(FALLBACK_LINES, *seed).to_string() }
            }
            Query::Judge { .. } => Reply::Judge {
                analysis: "The judge's answer could not be read; nothing is counted as covered.".to_string(),
                is_task_related: false,
                covered: Vec::new(),
            },
        }
    }

    fn wrap(query: Query) -> UserQuery {
        UserQuery::Intention(query)
    }

    fn unwrap(reply: UserReply) -> Option<Reply> {
        match reply {
            UserReply::Intention(r) => Some(r),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Import of the original IN3-style files

/// Converts `tasks/IntentionGym/all_intentions_{train,test}.json`. The test split is the tasks whose ids the
/// original's `intention_multiturn/test.parquet` lists (its 40 evaluation tasks); without that file, the task's
/// source file decides. Imported tasks have no concepts or preferences, so only an LLM or human user can play
/// them. Tasks without missing details cannot be scored and are skipped.
pub fn import_original(root: &std::path::Path) -> Result<Vec<serde_json::Value>, GymError> {
    #[derive(Deserialize)]
    struct OriginalDetail {
        description: String,
        importance: Importance,
        #[serde(default)]
        inquiry: String,
        #[serde(default)]
        options: Vec<serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct Original {
        id: String,
        #[serde(default)]
        category: String,
        task: String,
        #[serde(default)]
        missing_details: Vec<OriginalDetail>,
    }
    let dir = crate::import::tasks_dir(root, GymKind::Intention);
    let test_ids: HashSet<String> =
        crate::import::parquet_ids(root, "intention_multiturn", "test")?.into_iter().collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (file, file_split) in [("all_intentions_train.json", Split::Train), ("all_intentions_test.json", Split::Test)] {
        let path = dir.join(file);
        let value = crate::import::read_json(&path)?;
        let originals: Vec<Original> =
            serde_json::from_value(value).map_err(|e| data_error(path.display().to_string(), e.to_string()))?;
        for o in originals {
            if o.missing_details.is_empty() || !seen.insert(o.id.clone()) {
                continue;
            }
            let split = if test_ids.is_empty() {
                file_split
            } else if test_ids.contains(&o.id) {
                Split::Test
            } else {
                Split::Train
            };
            let missing_details = o
                .missing_details
                .into_iter()
                .map(|d| MissingDetail {
                    description: d.description,
                    importance: d.importance,
                    inquiry: d.inquiry,
                    // Options are free text in the original; numbers or other scalars are kept as their JSON text.
                    options: d
                        .options
                        .into_iter()
                        .map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string()))
                        .collect(),
                    concepts: Vec::new(),
                    preference: None,
                })
                .collect();
            let category = if o.category.trim().is_empty() { "General".to_string() } else { o.category };
            let task = IntentionTask { id: o.id, split, category, task: o.task, missing_details };
            out.push(serde_json::to_value(&task).map_err(|e| data_error(path.display().to_string(), e.to_string()))?);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------
// The gym

pub struct IntentionGym {
    tasks: TaskSet<IntentionTask>,
    lexicons: HashMap<String, Arc<Lexicon>>,
}

impl IntentionGym {
    pub fn builtin() -> Result<IntentionGym, GymError> {
        IntentionGym::from_tasks(authored_tasks()?)
    }

    pub fn from_tasks(tasks: Vec<IntentionTask>) -> Result<IntentionGym, GymError> {
        for t in &tasks {
            if t.missing_details.is_empty() {
                return Err(data_error(&t.id, "a task needs at least one missing detail"));
            }
            if t.task.trim().is_empty() || t.missing_details.iter().any(|d| d.description.trim().is_empty()) {
                return Err(data_error(&t.id, "the request and every detail description must be non-empty"));
            }
        }
        let lexicons = tasks.iter().map(|t| (t.id.clone(), Arc::new(Lexicon::new(t)))).collect();
        Ok(IntentionGym { tasks: TaskSet::new(GymKind::Intention, tasks)?, lexicons })
    }

    pub fn from_jsonl(text: &str, source: &str) -> Result<IntentionGym, GymError> {
        let set: TaskSet<IntentionTask> = TaskSet::from_jsonl(GymKind::Intention, text, source)?;
        IntentionGym::from_tasks(set.all().iter().map(|t| t.as_ref().clone()).collect())
    }

    pub fn task(&self, id: &str) -> Result<&Arc<IntentionTask>, GymError> {
        self.tasks.get(id)
    }

    fn lexicon(&self, id: &str) -> Result<Arc<Lexicon>, GymError> {
        self.lexicons
            .get(id)
            .cloned()
            .ok_or_else(|| GymError::UnknownTask { gym: GymKind::Intention, task: id.to_string() })
    }
}

pub const SYSTEM_PROMPT: &str = "You are an agent working inside an environment through one tool. Read the details \
below carefully.

- Environment: IntentionGym. A person has made a request that is too vague to act on. Before anything can be \
done, you must find out the details they left out, such as their constraints and preferences, by asking them.

- Choices: call `interact_with_env` with `choice` set to `action`.
  * `action`: the content is one clarifying question for the person. You receive their answer.

- Notes:
  * Think step by step before each call.
  * Ask about one missing detail per question; questions that bundle many topics together are worth less, or \
nothing.
  * Start with the details that matter most for the request, and do not ask about what has already been answered.
  * Turns are limited: be efficient. The conversation ends once every important detail has been clarified.
  * Be bold, creative and smart!";

impl Gym for IntentionGym {
    fn kind(&self) -> GymKind {
        GymKind::Intention
    }
    fn tasks(&self) -> &[TaskInfo] {
        self.tasks.info()
    }
    fn system_prompt(&self) -> String {
        SYSTEM_PROMPT.to_string()
    }
    fn new_env(&self, task_id: &str, config: &EnvConfig, user: Arc<dyn User>) -> Result<Box<dyn Env>, GymError> {
        let task = self.tasks.get(task_id)?.clone();
        let lexicon = self.lexicon(task_id)?;
        if user.kind() == UserKind::Scripted && !lexicon.scripted_ready {
            return Err(GymError::User(no_scripted_data(&task)));
        }
        let remaining = (0..task.missing_details.len()).collect();
        Ok(Box::new(IntentionEnv {
            task,
            lexicon,
            user,
            remaining,
            history: Vec::new(),
            seed: config.seed,
            steps: 0,
            max_steps: config.max_steps,
            compat: config.compat.intention.clone(),
        }))
    }
    fn expert(&self, task_id: &str, seed: u64) -> Result<Box<dyn Agent>, GymError> {
        let task = self.tasks.get(task_id)?.clone();
        Ok(Box::new(IntentionExpert::new(task, seed)))
    }
    fn export_tasks(&self) -> Vec<serde_json::Value> {
        self.tasks.export()
    }
}

pub struct IntentionEnv {
    task: Arc<IntentionTask>,
    lexicon: Arc<Lexicon>,
    user: Arc<dyn User>,
    /// Details not yet covered, in the task's order.
    remaining: Vec<usize>,
    history: Vec<Exchange>,
    seed: u64,
    steps: usize,
    max_steps: usize,
    compat: Compat,
}

impl IntentionEnv {
    fn recent_history(&self) -> Vec<Exchange> {
        self.history[self.history.len().saturating_sub(HISTORY_WINDOW)..].to_vec()
    }

    async fn ask_user(&self, query: Query) -> Reply {
        match ask::<UserRole>(self.user.as_ref(), query.clone()).await {
            Ok(reply) => reply,
            Err(error) => {
                tracing::warn!(task = %self.task.id, %error, "intention user failed; using the fallback");
                UserRole::fallback(&query)
            }
        }
    }
}

#[async_trait::async_trait]
impl Env for IntentionEnv {
    fn kind(&self) -> GymKind {
        GymKind::Intention
    }
    fn task_id(&self) -> &str {
        &self.task.id
    }
    fn opening(&self) -> String {
        format!(
            "Task category: {}\nMy request (still vague): {}\nAsk me clarifying questions until you know every detail \
             you would need.",
            self.task.category, self.task.task
        )
    }
    fn success(&self) -> bool {
        self.remaining.is_empty()
    }
    fn max_score(&self) -> f64 {
        self.task.max_score()
    }

    async fn step(&mut self, action: &Action) -> EnvStep {
        let question = match action {
            Action::Action(text) => text.trim().to_string(),
            Action::Finish => return EnvStep::reply("Alright, let's stop here. Thanks for your questions.").end(),
            Action::Answer(_) | Action::Search(_) => {
                return EnvStep::reply("Here you can only ask me clarifying questions with `action`.");
            }
        };
        self.steps += 1;
        let history = self.recent_history();
        let respond = Query::Respond {
            task: self.task.clone(),
            lexicon: self.lexicon.clone(),
            question: question.clone(),
            history: history.clone(),
            leak_details: self.compat.leak_details_to_simulator,
            seed: mix(self.seed, self.steps as u64),
        };
        let response = match self.ask_user(respond).await {
            Reply::Respond { response, .. } => response,
            Reply::Judge { .. } => pick(FALLBACK_LINES, self.steps as u64).to_string(),
        };
        let judge = Query::Judge {
            task: self.task.clone(),
            lexicon: self.lexicon.clone(),
            question: question.clone(),
            history,
            remaining: self.remaining.clone(),
        };
        let mut covered = match self.ask_user(judge).await {
            Reply::Judge { is_task_related: true, covered, .. } => covered,
            _ => Vec::new(),
        };
        // Only details still open count, each once, whatever the user component returned.
        let mut seen = HashSet::new();
        covered.retain(|i| self.remaining.contains(i) && seen.insert(*i));
        let importances: Vec<Importance> =
            covered.iter().filter_map(|&i| self.task.missing_details.get(i)).map(|d| d.importance).collect();
        let reward = coverage_reward(&importances);
        self.remaining.retain(|i| !covered.contains(i));
        self.history.push(Exchange { question, response: response.clone() });
        let step = EnvStep::rewarded(response, reward);
        if self.remaining.is_empty() || (self.compat.terminate_at_max_steps && self.steps >= self.max_steps) {
            step.end()
        } else {
            step
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The expert

const EXPERT_LEADS: &[&str] = &["", "", "Quick question: ", "One more thing: ", "To get this right: "];

/// Asks one concrete question per missing detail, the most important first. It knows the hidden list (it is
/// the privileged expert), but every question is an ordinary clarifying question.
struct IntentionExpert {
    task: Arc<IntentionTask>,
    order: Vec<usize>,
    next: usize,
    seed: u64,
}

impl IntentionExpert {
    fn new(task: Arc<IntentionTask>, seed: u64) -> IntentionExpert {
        let mut order: Vec<usize> = (0..task.missing_details.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(task.missing_details[i].importance));
        IntentionExpert { task, order, next: 0, seed }
    }
}

#[async_trait::async_trait]
impl Agent for IntentionExpert {
    async fn act(&mut self, _conversation: &[Message]) -> AgentTurn {
        let Some(detail) = self.order.get(self.next).and_then(|&i| self.task.missing_details.get(i)) else {
            return AgentTurn::Call {
                thought: "I have asked about everything that matters.".into(),
                arguments: serde_json::json!({"choice": "finish", "content": ""}),
            };
        };
        self.next += 1;
        let question = if detail.inquiry.trim().is_empty() {
            format!("Could you tell me more about this: {}?", detail.description.to_lowercase())
        } else {
            format!("{}{}", pick(EXPERT_LEADS, mix(self.seed, self.next as u64)), detail.inquiry)
        };
        AgentTurn::call_with_thought(
            format!("The most important open point now is: {}.", detail.description.to_lowercase()),
            Choice::Action,
            question,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{Episode, Termination};
    use crate::eval::{AgentSpec, EvalPlan, evaluate};
    use crate::gyms::Catalog;
    use crate::user::ScriptedUser;
    use futures::executor::block_on;

    fn gym() -> &'static IntentionGym {
        static GYM: LazyLock<IntentionGym> = LazyLock::new(|| IntentionGym::builtin().unwrap());
        &GYM
    }

    fn episode(task_id: &str, config: EnvConfig) -> Episode {
        let env = gym().new_env(task_id, &config, Arc::new(ScriptedUser)).unwrap();
        Episode::new(env, config)
    }

    fn ask_q(ep: &mut Episode, q: &str) -> crate::env::StepOutcome {
        block_on(ep.step(Ok(Action::Action(q.to_string()))))
    }

    fn detail_index(task_id: &str, description: &str) -> usize {
        gym().task(task_id).unwrap().missing_details.iter().position(|d| d.description == description).unwrap()
    }

    fn touched(task_id: &str, q: &str) -> Reading {
        read_question(&gym().lexicon(task_id).unwrap(), q)
    }

    #[test]
    fn embedded_tasks_load_and_split_120_30() {
        let tasks = authored_tasks().unwrap();
        assert_eq!(tasks.len(), 150);
        assert_eq!(tasks.iter().filter(|t| t.split == Split::Test).count(), 30);
        assert_eq!(gym().task_ids(Some(Split::Train)).len(), 120);
        assert_eq!(tasks, authored_tasks().unwrap(), "the task set is deterministic");
        let categories: HashSet<&str> = tasks.iter().map(|t| t.category.as_str()).collect();
        assert!(categories.len() >= 10);
        for t in &tasks {
            assert!((2..=6).contains(&t.missing_details.len()), "{}", t.id);
            assert!(t.has_scripted_data(), "{}", t.id);
        }
        // The embedded tasks survive the JSONL round trip.
        let jsonl: String = gym().export_tasks().iter().map(|v| v.to_string() + "\n").collect();
        let again = IntentionGym::from_jsonl(&jsonl, "export").unwrap();
        assert_eq!(again.task("travel-01").unwrap().as_ref(), gym().task("travel-01").unwrap().as_ref());
    }

    // The data must be consistent for the scripted judge: each example inquiry touches exactly its own detail,
    // both inside every task and across its whole category library.
    #[test]
    fn every_inquiry_covers_exactly_its_own_detail() {
        let mut wrong = Vec::new();
        for info in gym().tasks() {
            let task = gym().task(&info.id).unwrap();
            for (i, d) in task.missing_details.iter().enumerate() {
                let r = touched(&info.id, &d.inquiry);
                if (r.verdict, r.touched.clone()) != (Verdict::Clear, vec![i]) {
                    wrong.push(format!("{}: {} -> {:?}", info.id, d.inquiry, r.touched));
                }
            }
        }
        let categories: BTreeMap<String, CategoryTemplate> = serde_json::from_str(CATEGORIES_JSON).unwrap();
        for (name, c) in &categories {
            let task = IntentionTask {
                id: name.clone(),
                split: Split::Train,
                category: c.label.clone(),
                task: "x".into(),
                missing_details: c
                    .details
                    .values()
                    .map(|t| MissingDetail {
                        description: t.description.clone(),
                        importance: t.importance,
                        inquiry: t.inquiry.clone(),
                        options: vec![],
                        concepts: t.concepts.clone(),
                        preference: Some(t.preferences[0].clone()),
                    })
                    .collect(),
            };
            let lexicon = Lexicon::new(&task);
            for (i, d) in task.missing_details.iter().enumerate() {
                let got = read_question(&lexicon, &d.inquiry).touched;
                if got != vec![i] {
                    let names: Vec<&str> = got.iter().map(|&j| task.missing_details[j].description.as_str()).collect();
                    wrong.push(format!("{name}: {} -> {names:?}", d.inquiry));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    // Reference §4.4: r = 0 if nothing is covered, else {3: 1.0, 2: 0.7, 1: 0.4}[max importance] - 0.2 (k - 1),
    // floored at 0 and clipped to [0, 1].
    #[test]
    fn reward_rule_follows_the_reference() {
        use Importance as I;
        assert_eq!(coverage_reward(&[]), 0.0);
        assert_eq!(coverage_reward(&[I::HIGH]), 1.0);
        assert_eq!(coverage_reward(&[I::MEDIUM]), 0.7);
        assert_eq!(coverage_reward(&[I::LOW]), 0.4);
        assert!((coverage_reward(&[I::LOW, I::HIGH]) - 0.8).abs() < 1e-12);
        assert!((coverage_reward(&[I::MEDIUM, I::MEDIUM, I::LOW]) - 0.3).abs() < 1e-12);
        assert_eq!(coverage_reward(&[I::LOW; 4]), 0.0);
        assert_eq!(coverage_reward(&[I::HIGH; 9]), 0.0);
        // max_score is the sum of the bases (one detail per question).
        let t = gym().task("travel-01").unwrap();
        let expected: f64 = t.missing_details.iter().map(|d| d.importance.base_reward()).sum();
        assert_eq!(t.max_score(), expected);
    }

    // Reference §4.4: each covered detail pays by importance once, is removed, and the episode terminates when
    // every detail has been covered.
    #[test]
    fn one_question_per_detail_reaches_max_score_and_terminates() {
        let task = gym().task("travel-01").unwrap().clone();
        let mut ep = episode("travel-01", EnvConfig::default());
        for (i, d) in task.missing_details.iter().enumerate() {
            let out = ask_q(&mut ep, &d.inquiry);
            assert_eq!(out.reward, d.importance.base_reward(), "{}", d.inquiry);
            assert!(out.feedback.contains(d.preference.as_deref().unwrap()), "{}", out.feedback);
            assert_eq!(out.terminated, i + 1 == task.missing_details.len());
        }
        let t = ep.into_transcript();
        assert!(t.success);
        assert_eq!(t.termination, Termination::Terminated);
        assert!((t.normalized - 1.0).abs() < 1e-12);
    }

    // Reference §4.4: `[finish]` ends the episode with reward 0.
    #[test]
    fn finish_ends_with_zero() {
        let mut ep = episode("cooking-01", EnvConfig::default());
        let out = block_on(ep.step(Ok(Action::Finish)));
        assert_eq!((out.reward, out.terminated), (0.0, true));
        assert_eq!(ep.into_transcript().termination, Termination::Finished);
    }

    // Reference §4.4: a covered detail leaves the remaining list, so asking again earns nothing.
    #[test]
    fn repeating_a_question_earns_nothing() {
        let mut ep = episode("travel-01", EnvConfig::default());
        let q = "What budget do you have in mind for the whole trip?";
        assert_eq!(ask_q(&mut ep, q).reward, 1.0);
        let again = ask_q(&mut ep, q);
        assert_eq!(again.reward, 0.0);
        assert!(
            again.feedback.contains(gym().task("travel-01").unwrap().missing_details[1].preference.as_deref().unwrap())
        );
        assert_eq!(ask_q(&mut ep, "And how much money can you spend, again?").reward, 0.0);
    }

    // Anti-exploit: bundling everything into one question, keyword lists and statements earn nothing; two
    // details at once earn less than asking them one by one.
    #[test]
    fn bundling_and_keyword_stuffing_do_not_pay() {
        let all = "How long is the trip, what's your budget, where will you stay, which activities, and what food do you like?";
        let mut ep = episode("travel-01", EnvConfig::default());
        let out = ask_q(&mut ep, all);
        assert_eq!(out.reward, 0.0);
        assert!(!out.feedback.contains("dollars"), "nothing is revealed: {}", out.feedback);
        let mut ep = episode("travel-01", EnvConfig::default());
        assert_eq!(ask_q(&mut ep, "duration budget hotel activities food restaurant museum price nights").reward, 0.0);
        assert_eq!(ask_q(&mut ep, "budget, hotel, duration?").reward, 0.0);
        assert_eq!(ask_q(&mut ep, "I will book you a cheap hotel for five nights.").reward, 0.0);
        let wall = format!("{} What is your budget?", "Let me explain my whole approach first. ".repeat(20));
        assert_eq!(ask_q(&mut ep, &wall).reward, 0.0);
        // Two at once: 1.0 - 0.2 = 0.8 versus 2.0 when asked separately.
        let mut ep = episode("travel-01", EnvConfig::default());
        let both = ask_q(&mut ep, "How many days will you be away, and what is your budget?").reward;
        assert!((both - 0.8).abs() < 1e-12);
        let mut ep = episode("travel-01", EnvConfig::default());
        let apart =
            ask_q(&mut ep, "How many days will you be away?").reward + ask_q(&mut ep, "What is your budget?").reward;
        assert!(apart > both + 1.0);
        // Over a whole episode: every detail in one question, then nothing is left to gain by repeating it.
        let mut ep = episode("travel-01", EnvConfig::default());
        for _ in 0..16 {
            ask_q(&mut ep, all);
        }
        assert_eq!(ep.into_transcript().score, 0.0);
    }

    #[test]
    fn scripted_understanding_handles_synonyms_negation_and_word_order() {
        let budget = detail_index("travel-01", "Total budget for the trip");
        let duration = detail_index("travel-01", "How long the trip should last");
        let lodging = detail_index("travel-01", "Preferred kind of accommodation");
        for q in [
            "How much are you willing to spend?",
            "Is there a price limit I should keep in mind?",
            "You don't have a strict budget, do you?",
            "Could you tell me what the trip may cost at most?",
        ] {
            assert_eq!(touched("travel-01", q).touched, vec![budget], "{q}");
        }
        assert_eq!(touched("travel-01", "The trip, how long should it be?").touched, vec![duration]);
        assert_eq!(touched("travel-01", "Where would you like to stay?").touched, vec![lodging]);
        assert_eq!(touched("travel-01", "Stay where, ideally?").touched, vec![lodging]);
        assert_eq!(touched("travel-01", "I was wondering about the number of nights").verdict, Verdict::Clear);
        // Neutral answer to an on-topic question that touches no detail; redirect for an unrelated one.
        let mut ep = episode("travel-01", EnvConfig::default());
        let out = ask_q(&mut ep, "Is Lisbon your favourite city?");
        assert_eq!(out.reward, 0.0);
        assert!(NEUTRAL_LINES.contains(&out.feedback.as_str()), "{}", out.feedback);
        let out = ask_q(&mut ep, "Is this urgent for you?");
        assert!(NEUTRAL_LINES.contains(&out.feedback.as_str()), "{}", out.feedback);
        let out = ask_q(&mut ep, "What is the capital of Australia?");
        assert_eq!(out.reward, 0.0);
        assert!(out.feedback.contains("plan a trip to Lisbon"), "{}", out.feedback);
    }

    // The scripted user never reveals what is missing: replies to vague, broad or off-topic questions contain
    // no preference and no detail description.
    #[test]
    fn scripted_user_never_leaks_the_missing_details() {
        let task = gym().task("events-03").unwrap().clone();
        let mut ep = episode("events-03", EnvConfig::default());
        for q in [
            "What else should I know?",
            "Is there anything I forgot to ask?",
            "hello",
            "Tell me everything.",
            "Any other details?",
        ] {
            let out = ask_q(&mut ep, q);
            assert_eq!(out.reward, 0.0, "{q}");
            for d in &task.missing_details {
                assert!(!out.feedback.contains(d.preference.as_deref().unwrap()), "{q}: {}", out.feedback);
                assert!(!out.feedback.to_lowercase().contains(&d.description.to_lowercase()), "{q}: {}", out.feedback);
            }
        }
    }

    #[test]
    fn replies_vary_with_the_seed_and_are_deterministic() {
        let q = "What budget do you have in mind for the whole trip?";
        let reply = |seed| {
            let mut ep = episode("travel-01", EnvConfig { seed, ..EnvConfig::default() });
            ask_q(&mut ep, q).feedback
        };
        assert_eq!(reply(3), reply(3));
        let distinct: HashSet<String> = (0..12).map(reply).collect();
        assert!(distinct.len() >= 3, "{distinct:?}");
    }

    fn judge_query(task_id: &str, remaining: Vec<usize>) -> Query {
        Query::Judge {
            task: gym().task(task_id).unwrap().clone(),
            lexicon: gym().lexicon(task_id).unwrap(),
            question: "What is your budget?".into(),
            history: vec![],
            remaining,
        }
    }

    fn respond_query(task_id: &str, leak: bool) -> Query {
        Query::Respond {
            task: gym().task(task_id).unwrap().clone(),
            lexicon: gym().lexicon(task_id).unwrap(),
            question: "What is your budget?".into(),
            history: vec![Exchange { question: "How long?".into(), response: "Five days.".into() }],
            leak_details: leak,
            seed: 1,
        }
    }

    #[test]
    fn llm_simulator_replies_parse_with_raw_text_fallback() {
        let q = respond_query("travel-01", false);
        let fenced = "```json\n{\"thought\": \"about money\", \"response\": \"About 1,500 dollars.\"}\n```";
        assert_eq!(
            UserRole::parse(&q, fenced),
            Some(Reply::Respond { thought: "about money".into(), response: "About 1,500 dollars.".into() })
        );
        let prose = "Sure, here you go: {\"thought\": \"t\", \"response\": \"Cheap, please.\"} Hope it helps.";
        assert!(
            matches!(UserRole::parse(&q, prose), Some(Reply::Respond { response, .. }) if response == "Cheap, please.")
        );
        // No JSON: the raw text is the answer (the original's behaviour).
        assert!(
            matches!(UserRole::parse(&q, "  Maybe 800 dollars.  "), Some(Reply::Respond { response, .. }) if response == "Maybe 800 dollars.")
        );
        assert_eq!(UserRole::parse(&q, "{\"thought\": \"no answer\"}"), None);
        assert_eq!(UserRole::parse(&q, "   "), None);
        match UserRole::fallback(&q) {
            Reply::Respond { response, .. } => assert!(FALLBACK_LINES.contains(&response.as_str())),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn llm_judge_replies_parse_and_map_indices() {
        let q = judge_query("travel-01", vec![1, 3, 4]);
        let text = "```json\n{\"analysis\": \"asks about money\", \"is_task_related\": true, \"covered_detail_indices\": [0, 2]}\n```";
        assert_eq!(
            UserRole::parse(&q, text),
            Some(Reply::Judge { analysis: "asks about money".into(), is_task_related: true, covered: vec![1, 4] })
        );
        // Extra prose, string indices, duplicates and out-of-range numbers.
        let text = "My verdict: {\"analysis\": \"a\", \"is_task_related\": \"true\", \"covered_detail_indices\": [\"1\", 1, 7, -1, \"x\"]} done";
        assert!(matches!(UserRole::parse(&q, text), Some(Reply::Judge { covered, .. }) if covered == vec![3]));
        // Not task-related forces an empty list.
        let text = "{\"analysis\": \"chit-chat\", \"is_task_related\": false, \"covered_detail_indices\": [0]}";
        assert!(
            matches!(UserRole::parse(&q, text), Some(Reply::Judge { covered, is_task_related: false, .. }) if covered.is_empty())
        );
        // Missing list or unreadable text: unusable.
        assert_eq!(UserRole::parse(&q, "{\"analysis\": \"x\", \"is_task_related\": true}"), None);
        assert_eq!(UserRole::parse(&q, "I think it covers the budget."), None);
        assert!(matches!(UserRole::fallback(&q), Reply::Judge { covered, .. } if covered.is_empty()));
    }

    #[test]
    fn llm_prompts_carry_the_right_information() {
        let task = gym().task("travel-01").unwrap().clone();
        let p = UserRole::prompt(&respond_query("travel-01", false));
        assert!(p.user.contains(&task.task) && p.user.contains("\"response\"") && p.user.contains("Five days."));
        assert!(p.user.contains(task.missing_details[0].preference.as_deref().unwrap()));
        for d in &task.missing_details {
            assert!(!p.user.contains(&d.description), "the default prompt lists no missing details");
        }
        let leaky = UserRole::prompt(&respond_query("travel-01", true));
        assert!(leaky.user.contains("missing_details") && leaky.user.contains(&task.missing_details[0].description));
        let j = UserRole::prompt(&judge_query("travel-01", vec![1, 3]));
        assert!(j.user.contains(&format!("0. [HIGH] {}", task.missing_details[1].description)));
        assert!(j.user.contains(&format!(
            "1. [{}] {}",
            task.missing_details[3].importance.label(),
            task.missing_details[3].description
        )));
        assert!(!j.user.contains(&task.missing_details[0].description));
        assert!(j.user.contains("covered_detail_indices") && j.user.contains("is_task_related"));
        // Queries serialise (for logs and the human user's page) without the compiled lexicon.
        let v = serde_json::to_value(UserRole::wrap(judge_query("travel-01", vec![1, 3]))).unwrap();
        assert_eq!(v["query"]["role"], "judge");
        assert_eq!(v["query"]["remaining"], serde_json::json!([1, 3]));
    }

    /// A user that answers as an LLM would, with fixed texts, to test the env on the LLM path.
    struct CannedLlm(&'static str, &'static str);

    #[async_trait::async_trait]
    impl User for CannedLlm {
        fn kind(&self) -> UserKind {
            UserKind::Llm
        }
        async fn reply(&self, query: &UserQuery) -> Result<UserReply, UserError> {
            let UserQuery::Intention(q) = query else { return Err(UserError::WrongReply) };
            let text = if matches!(q, Query::Respond { .. }) { self.0 } else { self.1 };
            Ok(UserReply::Intention(UserRole::parse(q, text).unwrap_or_else(|| UserRole::fallback(q))))
        }
    }

    // Reference §4.4: the judge's indices point into the remaining list; with k details covered the reward is
    // the best base minus 0.2 (k - 1) (no scripted cap on the LLM path).
    #[test]
    fn llm_path_applies_the_reward_rule() {
        let user = Arc::new(CannedLlm(
            "Five days, 1,500 dollars, a hotel.",
            "{\"analysis\": \"\", \"is_task_related\": true, \"covered_detail_indices\": [0, 1, 2]}",
        ));
        let task = gym().task("travel-01").unwrap().clone();
        let env = gym().new_env("travel-01", &EnvConfig::default(), user).unwrap();
        let mut ep = Episode::new(env, EnvConfig::default());
        let out = ask_q(&mut ep, "Tell me everything.");
        let best = task.missing_details[..3].iter().map(|d| d.importance.base_reward()).fold(0.0, f64::max);
        assert!((out.reward - (best - 0.4)).abs() < 1e-12);
        assert_eq!(out.feedback, "Five days, 1,500 dollars, a hotel.");
        // Garbage from the judge: fallback, no coverage.
        let user = Arc::new(CannedLlm("ok", "no idea"));
        let env = gym().new_env("travel-01", &EnvConfig::default(), user).unwrap();
        let mut ep = Episode::new(env, EnvConfig::default());
        assert_eq!(ask_q(&mut ep, "What is your budget?").reward, 0.0);
    }

    // Compat: the original ends the episode as terminated at max_steps; by default the shared budget truncates.
    #[test]
    fn max_steps_quirk_only_behind_compat() {
        let mut config = EnvConfig { max_steps: 3, ..EnvConfig::default() };
        let mut ep = episode("travel-01", config.clone());
        for _ in 0..3 {
            ask_q(&mut ep, "Is Lisbon nice?");
        }
        assert_eq!(ep.into_transcript().termination, Termination::MaxSteps);
        config.compat.intention.terminate_at_max_steps = true;
        let mut ep = episode("travel-01", config);
        let outs: Vec<_> = (0..3).map(|_| ask_q(&mut ep, "Is Lisbon nice?")).collect();
        assert!(!outs[1].terminated && outs[2].terminated);
        assert_eq!(ep.into_transcript().termination, Termination::Terminated);
    }

    #[test]
    fn expert_beats_random_on_the_test_split() {
        let catalog = Catalog::builtin(&[GymKind::Intention]).unwrap();
        let user: Arc<dyn User> = Arc::new(ScriptedUser);
        let (expert, _) =
            block_on(evaluate(&catalog, &EvalPlan::new(Split::Test, AgentSpec::Expert), user.clone(), |_| {})).unwrap();
        let (random, _) =
            block_on(evaluate(&catalog, &EvalPlan::new(Split::Test, AgentSpec::Random), user, |_| {})).unwrap();
        let (e, r) = (expert.rows[0].mean_normalized, random.rows[0].mean_normalized);
        eprintln!("expert {e:.3} ({:.2} turns), random {r:.3}", expert.rows[0].mean_turns);
        assert_eq!(expert.rows[0].episodes, 30);
        assert!(e >= 0.8, "expert {e}");
        assert!(r < 0.2 && r < e - 0.6, "random {r} vs expert {e}");
        assert!(expert.rows[0].mean_turns <= 6.0);
    }

    #[test]
    fn import_reads_the_original_files() {
        let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/userrl-data"));
        let values = import_original(root).unwrap();
        let tasks: Vec<IntentionTask> = values.iter().map(|v| serde_json::from_value(v.clone()).unwrap()).collect();
        assert!(tasks.len() > 1000);
        let test_ids = crate::import::parquet_ids(root, "intention_multiturn", "test").unwrap();
        assert_eq!(test_ids.len(), 40);
        assert_eq!(tasks.iter().filter(|t| t.split == Split::Test).count(), 40);
        assert!(tasks.iter().filter(|t| t.split == Split::Test).all(|t| test_ids.contains(&t.id)));
        assert!(tasks.iter().all(|t| !t.missing_details.is_empty() && !t.has_scripted_data()));
        let jsonl: String = values.iter().map(|v| v.to_string() + "\n").collect();
        let imported = IntentionGym::from_jsonl(&jsonl, "import").unwrap();
        let id = &test_ids[0];
        match imported.new_env(id, &EnvConfig::default(), Arc::new(ScriptedUser)) {
            Err(GymError::User(UserError::NoScriptedData { .. })) => {}
            other => panic!("expected NoScriptedData, got {:?}", other.err()),
        }
        let user = Arc::new(CannedLlm(
            "I want it simple.",
            "{\"analysis\": \"\", \"is_task_related\": true, \"covered_detail_indices\": [0]}",
        ));
        let env = imported.new_env(id, &EnvConfig::default(), user).unwrap();
        let mut ep = Episode::new(env, EnvConfig::default());
        assert!(ask_q(&mut ep, "What level are you at?").reward > 0.0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]
        #[test]
        fn random_text_never_panics_and_rewards_stay_in_bounds(content in "\\PC{0,300}", long in proptest::bool::ANY) {
            let mut ep = episode("travel-01", EnvConfig::default());
            let content = if long { content.repeat(8_192 / content.len().max(1)).chars().take(8_192).collect() } else { content };
            let call = crate::tool::action_from_content(Choice::Action, &content);
            let out = block_on(ep.step(call));
            proptest::prop_assert!(out.reward.is_finite() && (0.0..=1.0).contains(&out.reward));
            let out = block_on(ep.step(Ok(Action::Action(format!("What budget? {content}")))));
            proptest::prop_assert!(out.reward.is_finite() && (0.0..=1.0).contains(&out.reward));
        }
    }
}
