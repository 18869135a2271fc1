//! TurtleGym (held-in): lateral-thinking "turtle soup" puzzles (reference §4.1). The agent reads a puzzle's
//! surface, asks yes/no questions (`action`, answered only "Yes", "No" or "Maybe") and submits full stories
//! (`answer`) that are judged against the hidden story's weighted criteria. Only answers pay: the reward is the
//! gain over the best story so far, so an episode's rewards sum to its best story's score.
//!
//! The embedded task set is 60 puzzles written for this project (`data/turtle/puzzles.json`). Each carries what
//! the scripted user needs: yes/no facts with synonym groups (true and false ones) and, for each criterion, the
//! concept groups a story must mention. Imported original tasks lack that structure and play only with an LLM
//! user.
//!
//! Deviation from the original, on purpose: a story succeeds when its score is within 1e-9 of the threshold.
//! The original compares `score >= 1.0` exactly, and weights such as 0.5/0.2/0.2/0.1 add up to
//! 0.9999999999999999 in floating point, so a perfect story on such a task never ended the episode there.

use std::collections::HashSet;
use std::sync::Arc;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::{Agent, AgentTurn, Message};
use crate::env::{Env, EnvConfig, EnvStep};
use crate::gyms::{Gym, GymError, GymKind, Task, TaskInfo, TaskSet};
use crate::llm::{Prompt, extract_json};
use crate::split::{self, Split};
use crate::text::{self, Parsed, Phrase};
use crate::tool::{Action, Choice};
use crate::user::{self, Protocol, User, UserError, UserKind, UserQuery, UserReply};

/// The authored puzzles (written for this project).
const PUZZLES_JSON: &str = include_str!("../../data/turtle/puzzles.json");
/// Seeds the train/test split of the authored puzzles.
pub const SPLIT_SEED: u64 = 0x7A27_2025;
/// 12 of the 60 authored puzzles are held out for testing.
const TEST_FRACTION: f64 = 0.2;
/// The original's training and evaluation runs override the default 0.9 with 1.0 (reference §4.1, §9).
pub const SUCCESS_THRESHOLD: f64 = 1.0;
/// Slack for the float sum of weights (see the module docs).
const SCORE_EPSILON: f64 = 1e-9;
/// The original's feedback when the user model fails or answers garbage (reference §4.1).
pub const FALLBACK_FEEDBACK: &str = "Feedback not available currently. Please try again.";

/// A question that touches more facts than this asks too much at once and gets "Maybe".
const MAX_FACTS_PER_QUESTION: usize = 3;
/// A longer question is not one question; it gets "Maybe".
const MAX_QUESTION_WORDS: usize = 40;
/// A longer story is a dump rather than an explanation; it covers nothing.
const MAX_STORY_WORDS: usize = 350;
/// A story that asserts more false facts than this reads as a list of guesses; it covers nothing.
const MAX_FALSE_CLAIMS: usize = 1;
/// Words that make a sentence offer alternatives instead of committing to one account. What such a sentence
/// mentions does not count for the criteria, so listing candidates ("poisoned or stabbed or drowned") earns
/// nothing.
const HEDGES: &[&str] = &["or", "either", "whether", "alternatively", "maybe", "perhaps", "possibly"];

// ---------------------------------------------------------------------------------------------------------
// Task format

/// A yes/no fact about the hidden story, for the scripted user. A question that mentions every concept group
/// of the fact (any synonym of each, in any order) is about this fact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    /// A natural question about the fact (the expert asks it; the tests check the user understands it).
    #[serde(default)]
    pub question: String,
    /// Groups of synonym phrases; all groups must appear.
    pub concepts: Vec<Vec<String>>,
    /// Whether the hidden story makes the fact true.
    pub truth: bool,
}

/// One weighted evaluation point of a story (the original's `evaluation` entry).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Criterion {
    pub statement: String,
    pub weight: f64,
    /// Groups of synonym phrases a story must mention to cover the point (empty for imported tasks).
    #[serde(default)]
    pub concepts: Vec<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TurtleTask {
    pub id: String,
    pub split: Split,
    pub title: String,
    pub surface: String,
    /// The hidden story.
    pub bottom: String,
    /// Facts for the scripted user's yes/no answers (empty for imported tasks).
    #[serde(default)]
    pub facts: Vec<Fact>,
    /// 1–5 criteria whose weights sum to 1.
    pub criteria: Vec<Criterion>,
}

impl Task for TurtleTask {
    fn id(&self) -> &str {
        &self.id
    }
    fn split(&self) -> Split {
        self.split
    }
}

impl TurtleTask {
    /// Whether the scripted user can play this task: facts to answer from and concepts for every criterion.
    pub fn has_scripted_data(&self) -> bool {
        !self.facts.is_empty() && self.criteria.iter().all(|c| !c.concepts.is_empty())
    }

    fn validate(&self) -> Result<(), String> {
        if self.title.trim().is_empty() || self.surface.trim().is_empty() || self.bottom.trim().is_empty() {
            return Err("title, surface and bottom must not be empty".into());
        }
        if self.criteria.is_empty() {
            return Err("a task needs at least one criterion".into());
        }
        if self.criteria.iter().any(|c| !c.weight.is_finite() || c.weight < 0.0 || c.statement.trim().is_empty()) {
            return Err("criteria need a statement and a finite, non-negative weight".into());
        }
        let groups = self.facts.iter().map(|f| &f.concepts).chain(self.criteria.iter().map(|c| &c.concepts));
        for concepts in groups {
            if concepts.iter().any(|g| g.is_empty() || g.iter().any(|p| Phrase::new(p).is_empty())) {
                return Err("every concept group needs at least one phrase with a word in it".into());
            }
        }
        if self.facts.iter().any(|f| f.concepts.is_empty()) {
            return Err("every fact needs at least one concept group".into());
        }
        Ok(())
    }
}

/// A puzzle as authored in `data/turtle/puzzles.json` (the split is assigned when loading).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Authored {
    id: String,
    title: String,
    surface: String,
    bottom: String,
    facts: Vec<Fact>,
    criteria: Vec<Criterion>,
}

/// The authored puzzles with their deterministic split.
pub fn authored_tasks() -> Result<Vec<TurtleTask>, GymError> {
    let authored: Vec<Authored> = serde_json::from_str(PUZZLES_JSON).map_err(|e| GymError::Data {
        gym: GymKind::Turtle,
        location: "data/turtle/puzzles.json".into(),
        message: e.to_string(),
    })?;
    let splits = split::assign(authored.len(), TEST_FRACTION, SPLIT_SEED);
    Ok(authored
        .into_iter()
        .zip(splits)
        .map(|(a, split)| TurtleTask {
            id: a.id,
            split,
            title: a.title,
            surface: a.surface,
            bottom: a.bottom,
            facts: a.facts,
            criteria: a.criteria,
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------------------
// The task prepared for fast scripted replies

type Group = Vec<Phrase>;

#[derive(Debug)]
struct CompiledFact {
    groups: Vec<Group>,
    truth: bool,
}

/// A task with its phrases stemmed once, shared by every episode and every user query of the task.
#[derive(Debug)]
pub struct Puzzle {
    task: Arc<TurtleTask>,
    facts: Vec<CompiledFact>,
    criteria: Vec<Vec<Group>>,
}

impl Puzzle {
    pub fn new(task: Arc<TurtleTask>) -> Puzzle {
        let compile = |concepts: &[Vec<String>]| -> Vec<Group> {
            concepts.iter().map(|g| g.iter().flat_map(|p| phrase_variants(p)).collect()).collect()
        };
        let facts = task.facts.iter().map(|f| CompiledFact { groups: compile(&f.concepts), truth: f.truth }).collect();
        let criteria = task.criteria.iter().map(|c| compile(&c.concepts)).collect();
        Puzzle { task, facts, criteria }
    }

    pub fn task(&self) -> &Arc<TurtleTask> {
        &self.task
    }

    fn no_scripted_data(&self) -> UserError {
        UserError::NoScriptedData {
            gym: "turtle",
            task: self.task.id.clone(),
            missing: "yes/no facts and concept groups for the criteria",
        }
    }
}

/// The phrase and its spellings with the other inflection of each word, so that an author's `staged` also
/// matches `stage` and `stages` (the light stemmer maps `staged` to `stag` but `stage` to `stage`). Irregular
/// forms (`fell`/`fall`) are the author's job.
fn phrase_variants(text: &str) -> Vec<Phrase> {
    let mut spellings: Vec<Vec<String>> = vec![Vec::new()];
    for word in text::words(text) {
        let mut forms = vec![word.clone()];
        if word.len() > 3 {
            if word.ends_with('e') {
                forms.push(format!("{word}d"));
            } else if let Some(base) = word.strip_suffix("ed").or_else(|| word.strip_suffix("ing")) {
                // A short base is no verb (`shed`, `thing`); `she` and `the` must not become phrases.
                if base.len() >= 3 {
                    forms.push(format!("{base}e"));
                }
            }
        }
        spellings = spellings
            .iter()
            .flat_map(|prefix| {
                forms.iter().map(move |form| {
                    let mut next = prefix.clone();
                    next.push(form.clone());
                    next
                })
            })
            .collect();
    }
    let mut phrases: Vec<Phrase> = Vec::with_capacity(spellings.len());
    for spelling in spellings {
        let phrase = Phrase::new(&spelling.join(" "));
        if !phrase.is_empty() && !phrases.contains(&phrase) {
            phrases.push(phrase);
        }
    }
    phrases
}

/// A query carries the whole task; only the task is serialised (the compiled phrases are derived from it).
impl Serialize for Puzzle {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.task.serialize(serializer)
    }
}

// ---------------------------------------------------------------------------------------------------------
// The user protocol

/// The only answers a question gets (reference §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    Yes,
    No,
    Maybe,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Yes => "Yes",
            Verdict::No => "No",
            Verdict::Maybe => "Maybe",
        }
    }

    fn parse(text: &str) -> Option<Verdict> {
        match text.trim().trim_matches(|c: char| !c.is_alphanumeric()).to_ascii_lowercase().as_str() {
            "yes" => Some(Verdict::Yes),
            "no" => Some(Verdict::No),
            "maybe" => Some(Verdict::Maybe),
            _ => None,
        }
    }
}

/// What the gym asks its user: answer a yes/no question, or judge a story against the criteria.
#[derive(Clone, Debug, Serialize)]
pub enum Query {
    Question { puzzle: Arc<Puzzle>, question: String },
    Story { puzzle: Arc<Puzzle>, story: String },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Reply {
    Answer(Verdict),
    /// One score in {0, 0.5, 1} per criterion, in the criteria's order, and the judge's note (not shown).
    Judgement {
        scores: Vec<f64>,
        feedback: String,
    },
    /// The user could not answer (the original's fallback).
    Unavailable,
}

pub struct UserRole;

const QUESTION_SYSTEM: &str = "You host a lateral-thinking puzzle game (\"turtle soup\"). You know the hidden \
story behind the puzzle; the player only knows its surface and tries to work out the rest by asking yes/no \
questions.

Answer the player's question with exactly one word:
- \"Yes\" when the hidden story confirms it or agrees with it;
- \"No\" when the hidden story contradicts it or it is far from what happened;
- \"Maybe\" when the hidden story cannot settle it or it does not matter. Use \"Maybe\" sparingly.

Give away nothing else: no hints, no details of the hidden story.

Reply with a JSON object only:
{\"thought\": \"<your short reasoning>\", \"response\": \"Yes\" | \"No\" | \"Maybe\"}";

const STORY_SYSTEM: &str = "You judge a player of a lateral-thinking puzzle game (\"turtle soup\"). The player \
has read the puzzle's surface and now tells the full story they believe lies behind it. You know the hidden \
story and a numbered list of evaluation points.

For every evaluation point, in the given order, decide how well the player's story covers it:
- 1.0: the story clearly contains it (the meaning counts, not the wording);
- 0.5: the story gets part of it;
- 0: the story misses or contradicts it, or only offers it as one of several guesses.

Copy each point's statement exactly. Then write a short feedback for the player that reveals nothing of the \
hidden story and nothing about points the story did not cover.

Reply with a JSON object only:
{\"scores\": [{\"statement\": \"<the point, copied>\", \"thought\": \"<your reasoning>\", \"score\": 0 | 0.5 | 1.0}, \
...], \"feedback\": \"<feedback for the player>\"}
The list `scores` must have exactly one entry per evaluation point.";

impl Protocol for UserRole {
    type Query = Query;
    type Reply = Reply;

    fn scripted(query: &Query) -> Result<Reply, UserError> {
        match query {
            Query::Question { puzzle, question } => {
                if !puzzle.task.has_scripted_data() {
                    return Err(puzzle.no_scripted_data());
                }
                Ok(Reply::Answer(answer_question(puzzle, question)))
            }
            Query::Story { puzzle, story } => {
                if !puzzle.task.has_scripted_data() {
                    return Err(puzzle.no_scripted_data());
                }
                let scores = judge_story(puzzle, story);
                let feedback = if scores.iter().any(|s| *s > 0.0) {
                    "Parts of your story match what happened.".to_string()
                } else {
                    "Your story does not match what happened yet.".to_string()
                };
                Ok(Reply::Judgement { scores, feedback })
            }
        }
    }

    fn prompt(query: &Query) -> Prompt {
        match query {
            Query::Question { puzzle, question } => {
                let task = &puzzle.task;
                Prompt::new(
                    QUESTION_SYSTEM,
                    format!(
                        "Puzzle surface:\n{}\n\nHidden story:\n{}\n\nThe player's question:\n{}",
                        task.surface, task.bottom, question
                    ),
                )
            }
            Query::Story { puzzle, story } => {
                let task = &puzzle.task;
                let points: String =
                    task.criteria.iter().enumerate().map(|(i, c)| format!("{}. {}\n", i + 1, c.statement)).collect();
                Prompt::new(
                    STORY_SYSTEM,
                    format!(
                        "Puzzle surface:\n{}\n\nHidden story:\n{}\n\nThe player's story:\n{}\n\nEvaluation points \
                         ({} in all):\n{}",
                        task.surface,
                        task.bottom,
                        story,
                        task.criteria.len(),
                        points
                    ),
                )
            }
        }
    }

    fn parse(query: &Query, text: &str) -> Option<Reply> {
        match query {
            Query::Question { .. } => {
                let verdict = match extract_json(text) {
                    Some(json) => Verdict::parse(json.get("response")?.as_str()?)?,
                    // A bare one-word answer is as clear as the JSON.
                    None => Verdict::parse(text)?,
                };
                Some(Reply::Answer(verdict))
            }
            Query::Story { puzzle, .. } => {
                let json = extract_json(text)?;
                let entries = json.get("scores")?.as_array()?;
                // The original asserts one score per criterion; anything else is unusable.
                if entries.len() != puzzle.task.criteria.len() {
                    return None;
                }
                let scores = entries.iter().map(|e| snap_score(e.get("score")?)).collect::<Option<Vec<f64>>>()?;
                let feedback = json.get("feedback").and_then(Value::as_str).unwrap_or_default().to_string();
                Some(Reply::Judgement { scores, feedback })
            }
        }
    }

    fn fallback(_query: &Query) -> Reply {
        Reply::Unavailable
    }

    fn wrap(query: Query) -> UserQuery {
        UserQuery::Turtle(query)
    }

    fn unwrap(reply: UserReply) -> Option<Reply> {
        match reply {
            UserReply::Turtle(r) => Some(r),
            _ => None,
        }
    }
}

/// Reads one criterion score (a number or a numeric string) and rounds it to 0, 0.5 or 1; out of range is
/// unusable.
fn snap_score(value: &Value) -> Option<f64> {
    let x = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    if !x.is_finite() || !(0.0..=1.0).contains(&x) {
        return None;
    }
    Some((x * 2.0).round() / 2.0)
}

// ---------------------------------------------------------------------------------------------------------
// The scripted user's rules

/// Answers a yes/no question from the facts. A question is about a fact when it mentions every concept group
/// of the fact; a negated mention flips the answer. Among the facts a question is about, only the most
/// specific count (those with the most groups: "a body inside the ice" is about the body, not about the ice).
/// Nothing recognised, facts that disagree, or too many facts at once give "Maybe".
fn answer_question(puzzle: &Puzzle, question: &str) -> Verdict {
    if !text::has_words(question) || text::is_keyword_list(question) {
        return Verdict::Maybe;
    }
    let parsed = Parsed::new(question);
    if parsed.words.len() > MAX_QUESTION_WORDS {
        return Verdict::Maybe;
    }
    // (fact index, answer) of every fact whose groups all appear.
    let mut matched: Vec<(usize, bool)> = Vec::new();
    'facts: for (i, fact) in puzzle.facts.iter().enumerate() {
        let mut negations = 0;
        for group in &fact.groups {
            match parsed.find_any(group) {
                None => continue 'facts,
                Some(negated) => negations += usize::from(negated),
            }
        }
        matched.push((i, fact.truth ^ (negations % 2 == 1)));
    }
    if matched.len() > MAX_FACTS_PER_QUESTION + 1 {
        return Verdict::Maybe;
    }
    let most_groups = matched.iter().map(|(i, _)| puzzle.facts[*i].groups.len()).max().unwrap_or(0);
    let specific: Vec<bool> =
        matched.iter().filter(|(i, _)| puzzle.facts[*i].groups.len() == most_groups).map(|(_, a)| *a).collect();
    match specific.as_slice() {
        [] => Verdict::Maybe,
        many if many.len() > MAX_FACTS_PER_QUESTION => Verdict::Maybe,
        [first, rest @ ..] if rest.iter().all(|a| a == first) => {
            if *first {
                Verdict::Yes
            } else {
                Verdict::No
            }
        }
        _ => Verdict::Maybe,
    }
}

/// Where a group of synonyms occurs in a text: in a plain mention, in a negated one.
#[derive(Clone, Copy, Default)]
struct Mentions {
    plain: bool,
    negated: bool,
}

fn mentions(parsed: &Parsed, group: &Group) -> Mentions {
    let mut m = Mentions::default();
    for phrase in group {
        for pos in phrase.positions(&parsed.stems) {
            if parsed.negated_at(pos) {
                m.negated = true;
            } else {
                m.plain = true;
            }
        }
    }
    m
}

/// Scores a story against each criterion: 1 when every concept group is mentioned, 0.5 when at least half
/// are, else 0. Only sentences that commit to one account count (a sentence with "or", "maybe"… offers
/// guesses); a criterion whose concept is both stated and denied scores 0; a keyword list, an overlong dump or
/// a story asserting several false facts scores 0 everywhere.
fn judge_story(puzzle: &Puzzle, story: &str) -> Vec<f64> {
    let zero = vec![0.0; puzzle.criteria.len()];
    if !text::has_words(story) || text::is_keyword_list(story) {
        return zero;
    }
    let sentences: Vec<Parsed> = story
        .split(['.', '!', '?', ';', '\n'])
        .map(Parsed::new)
        .filter(|p| !p.words.is_empty() && !p.words.iter().any(|w| HEDGES.contains(&w.as_str())))
        .collect();
    let total_words: usize = story.split_whitespace().count();
    if sentences.is_empty() || total_words > MAX_STORY_WORDS {
        return zero;
    }
    let false_claims = puzzle
        .facts
        .iter()
        .filter(|f| !f.truth)
        .filter(|f| sentences.iter().any(|s| f.groups.iter().all(|g| mentions(s, g).plain)))
        .count();
    if false_claims > MAX_FALSE_CLAIMS {
        return zero;
    }
    puzzle
        .criteria
        .iter()
        .map(|groups| {
            let mut present = 0;
            for group in groups {
                let m = sentences.iter().fold(Mentions::default(), |acc, s| {
                    let here = mentions(s, group);
                    Mentions { plain: acc.plain || here.plain, negated: acc.negated || here.negated }
                });
                if m.plain && m.negated {
                    // Saying a thing and its opposite covers neither.
                    return 0.0;
                }
                present += usize::from(m.plain);
            }
            if present == groups.len() {
                1.0
            } else if present * 2 >= groups.len() && present > 0 {
                0.5
            } else {
                0.0
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// The gym

pub struct TurtleGym {
    tasks: TaskSet<TurtleTask>,
    puzzles: Vec<Arc<Puzzle>>,
}

impl TurtleGym {
    /// The 60 authored puzzles, 48 train / 12 test.
    pub fn builtin() -> Result<TurtleGym, GymError> {
        TurtleGym::from_tasks(authored_tasks()?)
    }

    pub fn from_jsonl(text: &str, source: &str) -> Result<TurtleGym, GymError> {
        let set: TaskSet<TurtleTask> = TaskSet::from_jsonl(GymKind::Turtle, text, source)?;
        TurtleGym::from_tasks(set.all().iter().map(|t| t.as_ref().clone()).collect())
    }

    pub fn from_tasks(tasks: Vec<TurtleTask>) -> Result<TurtleGym, GymError> {
        for t in &tasks {
            t.validate().map_err(|message| GymError::Data { gym: GymKind::Turtle, location: t.id.clone(), message })?;
        }
        let tasks = TaskSet::new(GymKind::Turtle, tasks)?;
        let puzzles = tasks.all().iter().map(|t| Arc::new(Puzzle::new(t.clone()))).collect();
        Ok(TurtleGym { tasks, puzzles })
    }

    fn puzzle(&self, task_id: &str) -> Result<&Arc<Puzzle>, GymError> {
        let task = self.tasks.get(task_id)?;
        self.puzzles
            .iter()
            .find(|p| Arc::ptr_eq(&p.task, task))
            .ok_or_else(|| GymError::UnknownTask { gym: GymKind::Turtle, task: task_id.to_string() })
    }
}

pub const SYSTEM_PROMPT: &str = "You are an agent working inside an environment through one tool. Read the details \
below carefully.

- Environment: TurtleGym, a lateral-thinking puzzle (\"turtle soup\"). You get the puzzle's title and surface: \
a short, puzzling situation. Behind it lies a hidden story with a twist that explains everything. Your goal is to \
reconstruct that hidden story.

- Choices: call `interact_with_env` with `choice` set to `action` or `answer`.
  * `action`: the content is one yes/no question about the hidden story. The reply is only \"Yes\", \"No\" or \
\"Maybe\" (Maybe: the question cannot be settled or does not matter).
  * `answer`: the content is your complete account of the hidden story, told as one coherent explanation. The \
reply lists the key points your story gets right. You are rewarded for improving on your best story so far, and \
the game ends once your story covers every key point.

- Notes:
  * Think step by step before each call.
  * Ask about one thing at a time; questions that bundle many guesses cannot be answered.
  * Commit to one explanation in each story: listing alternatives or bare keywords earns nothing.
  * Turns are limited: be efficient, and tell a story as soon as you have a plausible explanation.
  * Look for the unusual reading of the surface. Be bold, creative and smart.";

impl Gym for TurtleGym {
    fn kind(&self) -> GymKind {
        GymKind::Turtle
    }
    fn tasks(&self) -> &[TaskInfo] {
        self.tasks.info()
    }
    fn system_prompt(&self) -> String {
        SYSTEM_PROMPT.to_string()
    }
    fn new_env(&self, task_id: &str, _config: &EnvConfig, user: Arc<dyn User>) -> Result<Box<dyn Env>, GymError> {
        let puzzle = self.puzzle(task_id)?.clone();
        if user.kind() == UserKind::Scripted && !puzzle.task.has_scripted_data() {
            return Err(GymError::User(puzzle.no_scripted_data()));
        }
        Ok(Box::new(TurtleEnv { puzzle, user, best: 0.0, solved: false }))
    }
    fn expert(&self, task_id: &str, seed: u64) -> Result<Box<dyn Agent>, GymError> {
        let task = self.tasks.get(task_id)?.clone();
        Ok(Box::new(TurtleExpert::new(task, seed)))
    }
    fn export_tasks(&self) -> Vec<Value> {
        self.tasks.export()
    }
}

// ---------------------------------------------------------------------------------------------------------
// The environment

pub struct TurtleEnv {
    puzzle: Arc<Puzzle>,
    user: Arc<dyn User>,
    /// The best story score so far; answers pay only what they add to it.
    best: f64,
    solved: bool,
}

impl TurtleEnv {
    async fn question(&self, question: &str) -> EnvStep {
        let query = Query::Question { puzzle: self.puzzle.clone(), question: question.to_string() };
        match user::ask::<UserRole>(self.user.as_ref(), query).await {
            Ok(Reply::Answer(verdict)) => EnvStep::reply(verdict.as_str()),
            Ok(_) => EnvStep::reply(FALLBACK_FEEDBACK),
            Err(error) => {
                tracing::warn!(%error, task = %self.puzzle.task.id, "turtle user failed on a question");
                EnvStep::reply(FALLBACK_FEEDBACK)
            }
        }
    }

    async fn story(&mut self, story: &str) -> EnvStep {
        let task = self.puzzle.task.clone();
        let query = Query::Story { puzzle: self.puzzle.clone(), story: story.to_string() };
        let scores = match user::ask::<UserRole>(self.user.as_ref(), query).await {
            Ok(Reply::Judgement { scores, .. }) if scores.len() == task.criteria.len() => scores,
            Ok(_) => return EnvStep::reply(FALLBACK_FEEDBACK),
            Err(error) => {
                tracing::warn!(%error, task = %task.id, "turtle judge failed on a story");
                return EnvStep::reply(FALLBACK_FEEDBACK);
            }
        };
        // Reference §4.1: score = Σ w_i s_i; reward = max(0, score - best); best = max(best, score).
        let score: f64 = task.criteria.iter().zip(&scores).map(|(c, s)| c.weight * s.clamp(0.0, 1.0)).sum();
        let reward = (score - self.best).max(0.0);
        self.best = self.best.max(score);
        let solved = score >= SUCCESS_THRESHOLD - SCORE_EPSILON;
        let covered: Vec<&str> =
            task.criteria.iter().zip(&scores).filter(|(_, s)| **s >= 1.0).map(|(c, _)| c.statement.as_str()).collect();
        let feedback = if covered.is_empty() {
            "Your story does not capture any of the key points yet.".to_string()
        } else {
            let mut text = String::from("Your story gets these key points right:\n");
            for statement in covered {
                text.push_str(statement);
                text.push_str(": Covered\n");
            }
            text.push_str(if solved {
                "That is the whole story. Well done!"
            } else {
                "The hidden story may hold more twists; keep digging."
            });
            text
        };
        let step = EnvStep::rewarded(feedback, reward);
        if solved {
            self.solved = true;
            step.end()
        } else {
            step
        }
    }
}

#[async_trait::async_trait]
impl Env for TurtleEnv {
    fn kind(&self) -> GymKind {
        GymKind::Turtle
    }
    fn task_id(&self) -> &str {
        &self.puzzle.task.id
    }
    fn opening(&self) -> String {
        let task = &self.puzzle.task;
        format!(
            "Title: {}\nSurface: {}\nFind the hidden story behind this surface and explain the twist that makes \
             sense of it!",
            task.title, task.surface
        )
    }
    fn success(&self) -> bool {
        self.solved
    }
    fn max_score(&self) -> f64 {
        // The weights sum to 1 up to float rounding; the best story scores exactly their sum.
        let total: f64 = self.puzzle.task.criteria.iter().map(|c| c.weight).sum();
        if total > 0.0 { total } else { 1.0 }
    }

    async fn step(&mut self, action: &Action) -> EnvStep {
        match action {
            Action::Answer(story) => self.story(story).await,
            // Reference §4.1: every other prefix, `[search]` included, is a question.
            Action::Action(question) | Action::Search(question) => self.question(question).await,
            Action::Finish => EnvStep::reply("The game is over.").end(),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The expert

/// Asks one to three questions about true facts (as a solver checks a hunch), then tells the hidden story,
/// which it knows. If that somehow does not end the game it stops.
struct TurtleExpert {
    task: Arc<TurtleTask>,
    questions: Vec<String>,
    turn: usize,
}

impl TurtleExpert {
    fn new(task: Arc<TurtleTask>, seed: u64) -> TurtleExpert {
        let mut questions: Vec<String> =
            task.facts.iter().filter(|f| f.truth && text::has_words(&f.question)).map(|f| f.question.clone()).collect();
        questions.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        questions.truncate(1 + (seed % 3) as usize);
        TurtleExpert { task, questions, turn: 0 }
    }
}

#[async_trait::async_trait]
impl Agent for TurtleExpert {
    async fn act(&mut self, _conversation: &[Message]) -> AgentTurn {
        let turn = self.turn;
        self.turn += 1;
        if let Some(q) = self.questions.get(turn) {
            return AgentTurn::call_with_thought("Let me check my hunch about the twist.", Choice::Action, q.clone());
        }
        if turn == self.questions.len() {
            return AgentTurn::call_with_thought(
                "The answers fit my explanation; time to tell the whole story.",
                Choice::Answer,
                self.task.bottom.clone(),
            );
        }
        AgentTurn::Call {
            thought: "I have told everything I know.".into(),
            arguments: serde_json::json!({"choice": "finish", "content": ""}),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Import of the original `all_stories_refined.json`

/// Converts `tasks/TurtleGym/all_stories_refined.json` (a dict keyed by id). The test split is the set of
/// titles in `parquet/turtle_multiturn/test.parquet` (the original looks stories up by title, ignoring case);
/// without that file, the original's proportion (48 of 471) from a seeded shuffle. Imported tasks have no
/// facts or concept groups, so only an LLM user can play them.
pub fn import_original(root: &std::path::Path) -> Result<Vec<Value>, GymError> {
    #[derive(Deserialize)]
    struct OriginalCriterion {
        statement: String,
        score: f64,
    }
    #[derive(Deserialize)]
    struct Original {
        new_title: String,
        new_surface: String,
        new_bottom: String,
        evaluation: Vec<OriginalCriterion>,
    }
    let path = crate::import::tasks_dir(root, GymKind::Turtle).join("all_stories_refined.json");
    let value = crate::import::read_json(&path)?;
    let bad = |location: String, message: String| GymError::Data { gym: GymKind::Turtle, location, message };
    let Value::Object(map) = value else {
        return Err(bad(path.display().to_string(), "expected an object keyed by story id".into()));
    };
    let mut entries: Vec<(String, Value)> = map.into_iter().collect();
    // Numeric ids in numeric order, so the fallback split does not depend on how the map was stored.
    entries.sort_by(|(a, _), (b, _)| match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    });
    let test_titles: HashSet<String> = crate::import::parquet_ids(root, "turtle_multiturn", "test")?
        .into_iter()
        .map(|t| t.trim().to_lowercase())
        .collect();
    let fallback = split::assign(entries.len(), 48.0 / 471.0, 42);
    let mut out = Vec::with_capacity(entries.len());
    for (i, (id, raw)) in entries.into_iter().enumerate() {
        let location = format!("{}: {id}", path.display());
        let o: Original = serde_json::from_value(raw).map_err(|e| bad(location.clone(), e.to_string()))?;
        let split = if test_titles.is_empty() {
            fallback[i]
        } else if test_titles.contains(&o.new_title.trim().to_lowercase()) {
            Split::Test
        } else {
            Split::Train
        };
        let task = TurtleTask {
            id,
            split,
            title: o.new_title,
            surface: o.new_surface,
            bottom: o.new_bottom,
            facts: Vec::new(),
            criteria: o
                .evaluation
                .into_iter()
                .map(|c| Criterion { statement: c.statement, weight: c.score, concepts: Vec::new() })
                .collect(),
        };
        task.validate().map_err(|message| bad(location.clone(), message))?;
        out.push(serde_json::to_value(task).map_err(|e| bad(location, e.to_string()))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{Episode, Termination};
    use crate::eval::{AgentSpec, EvalPlan, evaluate};
    use crate::gyms::Catalog;
    use crate::user::ScriptedUser;
    use futures::executor::block_on;

    fn gym() -> TurtleGym {
        TurtleGym::builtin().unwrap()
    }

    fn puzzle(id: &str) -> Arc<Puzzle> {
        gym().puzzle(id).unwrap().clone()
    }

    fn ask(id: &str, question: &str) -> Verdict {
        answer_question(&puzzle(id), question)
    }

    fn episode(gym: &TurtleGym, id: &str, user: Arc<dyn User>) -> Episode {
        let env = gym.new_env(id, &EnvConfig::default(), user).unwrap();
        Episode::new(env, EnvConfig::default())
    }

    fn answer(ep: &mut Episode, text: &str) -> crate::env::StepOutcome {
        block_on(ep.step(Ok(Action::Answer(text.into()))))
    }

    /// A small task with known weights, for exact reward checks.
    fn small_task(weights: &[f64]) -> TurtleTask {
        let concepts = [["insurance"], ["alarm"], ["fake"], ["nephew"], ["debt"]];
        TurtleTask {
            id: "small".into(),
            split: Split::Test,
            title: "Small".into(),
            surface: "An alarm stayed silent.".into(),
            bottom: "The owner wanted the insurance.".into(),
            facts: vec![Fact { question: "Insurance?".into(), concepts: vec![vec!["insurance".into()]], truth: true }],
            criteria: weights
                .iter()
                .zip(concepts)
                .map(|(w, c)| Criterion {
                    statement: format!("The story mentions {}.", c[0]),
                    weight: *w,
                    concepts: vec![vec![c[0].to_string()]],
                })
                .collect(),
        }
    }

    const SILENT_ALARM: &str = "turtle-001";
    const ALARM_STORY: &str = "The owner was in debt, so he staged the robbery to claim the insurance money. He \
                               had turned off the alarm himself, and the stolen jewels were only fakes.";

    #[test]
    fn authored_set_is_complete_and_split_48_12() {
        let g = gym();
        assert_eq!(g.tasks().len(), 60);
        assert_eq!(g.task_ids(Some(Split::Test)).len(), 12);
        assert_eq!(g.task_ids(Some(Split::Train)).len(), 48);
        assert_eq!(g.tasks(), gym().tasks(), "the split is deterministic");
        for p in &g.puzzles {
            let t = &p.task;
            assert!(t.has_scripted_data(), "{}", t.id);
            assert!((1..=5).contains(&t.criteria.len()), "{}", t.id);
            let total: f64 = t.criteria.iter().map(|c| c.weight).sum();
            assert!((total - 1.0).abs() < 1e-9, "{} weights sum to {total}", t.id);
            assert!(t.facts.iter().any(|f| f.truth) && t.facts.iter().any(|f| !f.truth), "{}", t.id);
        }
    }

    // The scripted user must understand the authored questions: each fact's own question gets its truth.
    #[test]
    fn every_authored_question_gets_its_fact_answer() {
        let mut failures = Vec::new();
        for p in &gym().puzzles {
            for fact in &p.task.facts {
                let expected = if fact.truth { Verdict::Yes } else { Verdict::No };
                let got = answer_question(p, &fact.question);
                if got != expected {
                    failures.push(format!("{}: {:?} -> {got:?}", p.task.id, fact.question));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    // The expert tells the bottom; it must cover every criterion. The surface alone must not.
    #[test]
    fn bottom_covers_everything_and_surface_little() {
        let mut failures = Vec::new();
        for p in &gym().puzzles {
            let scores = judge_story(p, &p.task.bottom);
            if scores.iter().any(|s| *s < 1.0) {
                failures.push(format!("{} bottom: {scores:?}", p.task.id));
            }
            let surface: f64 =
                judge_story(p, &p.task.surface).iter().zip(&p.task.criteria).map(|(s, c)| s * c.weight).sum();
            if surface >= 0.5 {
                failures.push(format!("{} surface scores {surface}", p.task.id));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    // Reference §4.1: questions are answered only "Yes" | "No" | "Maybe"; synonyms, word order and negation.
    #[test]
    fn scripted_user_understands_varied_questions() {
        assert_eq!(ask(SILENT_ALARM, "Was the alarm switched off by the owner?"), Verdict::Yes);
        assert_eq!(ask(SILENT_ALARM, "Did the jeweller deactivate the alarm?"), Verdict::Yes);
        assert_eq!(ask(SILENT_ALARM, "Is this an insurance scam?"), Verdict::Yes);
        assert_eq!(ask(SILENT_ALARM, "Were the diamonds replicas?"), Verdict::Yes);
        assert_eq!(ask(SILENT_ALARM, "Weren't the jewels fake?"), Verdict::No);
        assert_eq!(ask(SILENT_ALARM, "Was the alarm faulty?"), Verdict::No);
        assert_eq!(ask(SILENT_ALARM, "Was the alarm not faulty?"), Verdict::Yes);
        assert_eq!(ask(SILENT_ALARM, "Did anybody die?"), Verdict::No);
        // Nothing recognised: a neutral answer.
        assert_eq!(ask(SILENT_ALARM, "What colour was the sky?"), Verdict::Maybe);
        assert_eq!(ask(SILENT_ALARM, "Tell me the hidden story."), Verdict::Maybe);
        assert_eq!(ask(SILENT_ALARM, "?!"), Verdict::Maybe);
        // Specific beats general: a body inside the ice is about the body, not about the ice.
        assert_eq!(ask("turtle-009", "Was there a body inside the ice?"), Verdict::No);
        assert_eq!(ask("turtle-009", "Was the swan made of ice?"), Verdict::Yes);
    }

    // Anti-exploit: bundling hypotheses or stuffing keywords into one question tells nothing.
    #[test]
    fn bundled_and_stuffed_questions_get_maybe() {
        // Facts that disagree.
        assert_eq!(ask(SILENT_ALARM, "Was the alarm faulty, or was it insurance?"), Verdict::Maybe);
        // Asking about everything at once.
        let everything = "Was it insurance, fake jewels, a debt, a nephew, a broken alarm, or did someone die?";
        assert_eq!(ask(SILENT_ALARM, everything), Verdict::Maybe);
        assert_eq!(ask(SILENT_ALARM, "insurance fake nephew debt staged robbery alarm disabled"), Verdict::Maybe);
        let long = format!("Is it insurance {}", "and so on ".repeat(30));
        assert_eq!(ask(SILENT_ALARM, &long), Verdict::Maybe);
    }

    // Reference §4.1: answers pay max(0, score - best); best is updated; questions pay 0.
    #[test]
    fn answers_pay_only_improvements() {
        let g = TurtleGym::from_tasks(vec![small_task(&[0.5, 0.3, 0.2])]).unwrap();
        let mut ep = episode(&g, "small", Arc::new(ScriptedUser));
        let q = block_on(ep.step(Ok(Action::Action("Was it for the insurance?".into()))));
        assert_eq!((q.feedback.as_str(), q.reward), ("Yes", 0.0));
        let out = answer(&mut ep, "The man set off the alarm in his shop on purpose.");
        assert!((out.reward - 0.3).abs() < 1e-12, "{}", out.reward);
        assert!(out.feedback.contains("The story mentions alarm.: Covered"), "{}", out.feedback);
        assert!(!out.feedback.contains("insurance"), "only covered points are listed: {}", out.feedback);
        // A worse story pays nothing; the best stays 0.3.
        let out = answer(&mut ep, "He wanted the insurance money from the company.");
        assert!((out.reward - 0.2).abs() < 1e-12, "0.5 - 0.3 = {}", out.reward);
        let out = answer(&mut ep, "The man set off the alarm in his shop on purpose.");
        assert_eq!(out.reward, 0.0, "repeating an earlier answer earns nothing");
        let out = answer(&mut ep, "He wanted the insurance money, so he switched the alarm off and sold fake stones.");
        assert!((out.reward - 0.5).abs() < 1e-12);
        assert!(out.terminated, "a full score ends the episode");
        let t = ep.into_transcript();
        assert!((t.score - 1.0).abs() < 1e-12 && t.success);
        assert_eq!(t.termination, Termination::Terminated);
    }

    // Reference §4.1: the episode ends on score >= 1.0 even when the weights add up to 0.9999999999999999.
    #[test]
    fn float_weights_still_terminate() {
        let weights = [0.5, 0.2, 0.2, 0.1];
        assert!(weights.iter().sum::<f64>() < 1.0);
        let g = TurtleGym::from_tasks(vec![small_task(&weights)]).unwrap();
        let mut ep = episode(&g, "small", Arc::new(ScriptedUser));
        let out =
            answer(&mut ep, "His nephew wanted insurance money, so he silenced the alarm and showed a fake necklace.");
        assert!(out.terminated, "{}", out.feedback);
        assert!((ep.into_transcript().normalized - 1.0).abs() < 1e-9);
    }

    // Reference §4.1: "none covered" feedback; the episode goes on; a partly matching criterion scores 0.5.
    #[test]
    fn feedback_and_half_credit() {
        let g = gym();
        let mut ep = episode(&g, SILENT_ALARM, Arc::new(ScriptedUser));
        let out = answer(&mut ep, "A ghost visited the shop at night and took everything.");
        assert_eq!(out.reward, 0.0);
        assert_eq!(out.feedback, "Your story does not capture any of the key points yet.");
        assert!(!out.terminated);
        // Insurance without staging: half of the first criterion (weight 0.5).
        let out = answer(&mut ep, "The owner was glad because the insurance would pay for the loss.");
        assert!((out.reward - 0.25).abs() < 1e-12, "{}", out.reward);
        assert_eq!(out.feedback, "Your story does not capture any of the key points yet.");
        let out = answer(&mut ep, ALARM_STORY);
        assert!(out.terminated && (out.reward - 0.75).abs() < 1e-12, "{} {}", out.reward, out.feedback);
        assert!(out.feedback.contains(": Covered"));
    }

    // Anti-exploit: keyword lists, lists of alternatives, contradictions and dumps earn nothing.
    #[test]
    fn story_exploits_earn_nothing() {
        let p = puzzle(SILENT_ALARM);
        let total = |story: &str| -> f64 {
            judge_story(&p, story).iter().zip(&p.task.criteria).map(|(s, c)| s * c.weight).sum()
        };
        assert!((total(ALARM_STORY) - 1.0).abs() < 1e-12);
        assert_eq!(total("insurance, staged, alarm, disabled, fake, replica, nephew, debt, robbery"), 0.0);
        assert_eq!(total("insurance staged alarm disabled fake replica nephew debt robbery heist"), 0.0);
        let hedged = "Either the owner staged the robbery for the insurance, or the alarm was turned off by a \
                      ghost, or the jewels were fake, or maybe someone died.";
        assert_eq!(total(hedged), 0.0);
        let guesses = "The owner staged the robbery for the insurance. The alarm was broken. The thieves were \
                       caught. Somebody died. The alarm was switched off and the jewels were fake.";
        assert_eq!(total(guesses), 0.0, "several false claims read as a list of guesses");
        let contradiction = "The owner staged the robbery for the insurance. The jewels were fake. The alarm was \
                             disabled, and then the alarm was not disabled.";
        assert!((total(contradiction) - 0.7).abs() < 1e-12, "{}", total(contradiction));
        let dump = format!("{ALARM_STORY} {}", "The night was long and quiet in the town. ".repeat(60));
        assert_eq!(total(&dump), 0.0);
    }

    // Anti-exploit: the same story again, or reworded, earns nothing (the max rule of reference §4.1).
    #[test]
    fn repeating_a_story_earns_nothing() {
        let g = gym();
        let mut ep = episode(&g, SILENT_ALARM, Arc::new(ScriptedUser));
        let first = answer(&mut ep, "The owner staged the robbery to get insurance money.");
        assert!((first.reward - 0.5).abs() < 1e-12);
        for _ in 0..5 {
            assert_eq!(answer(&mut ep, "The owner staged the robbery to get insurance money.").reward, 0.0);
            assert_eq!(answer(&mut ep, "To get insurance money, the owner staged the robbery!").reward, 0.0);
        }
        assert!((ep.into_transcript().score - 0.5).abs() < 1e-12);
    }

    // Reference §4.1: `[search]` is treated as a question; `[finish]` ends the episode without reward.
    #[test]
    fn search_is_a_question_and_finish_ends() {
        let g = gym();
        let env = g.new_env(SILENT_ALARM, &EnvConfig::default(), Arc::new(ScriptedUser)).unwrap();
        let mut env = env;
        let step = block_on(env.step(&Action::Search("Is insurance involved?".into())));
        assert_eq!((step.feedback.as_str(), step.reward), ("Yes", 0.0));
        let step = block_on(env.step(&Action::Finish));
        assert!(step.terminated && step.reward == 0.0);
        assert!(!step.feedback.contains("nephew"), "finishing does not reveal the story");
    }

    /// An LLM user stand-in: answers with fixed model text, parsed like a real model's.
    struct CannedUser {
        question: &'static str,
        story: &'static str,
    }

    #[async_trait::async_trait]
    impl User for CannedUser {
        fn kind(&self) -> UserKind {
            UserKind::Llm
        }
        async fn reply(&self, query: &UserQuery) -> Result<UserReply, UserError> {
            let UserQuery::Turtle(q) = query else { return Err(UserError::WrongReply) };
            let text = match q {
                Query::Question { .. } => self.question,
                Query::Story { .. } => self.story,
            };
            Ok(UserReply::Turtle(UserRole::parse(q, text).unwrap_or_else(|| UserRole::fallback(q))))
        }
    }

    fn imported_like() -> TurtleTask {
        let mut t = small_task(&[0.6, 0.4]);
        t.facts.clear();
        for c in &mut t.criteria {
            c.concepts.clear();
        }
        t
    }

    // Imported tasks lack facts and concepts: the scripted user refuses them, an LLM user plays them.
    #[test]
    fn scripted_user_refuses_tasks_without_structure() {
        let g = TurtleGym::from_tasks(vec![imported_like()]).unwrap();
        let err = g.new_env("small", &EnvConfig::default(), Arc::new(ScriptedUser)).err().unwrap();
        assert!(matches!(err, GymError::User(UserError::NoScriptedData { gym: "turtle", .. })), "{err}");
        let user = CannedUser {
            question: "```json\n{\"thought\": \"fits\", \"response\": \"No\"}\n```",
            story: r#"{"scores": [{"statement": "a", "thought": "x", "score": 1.0}, {"statement": "b", "thought": "y", "score": 0.5}], "feedback": "Good."}"#,
        };
        let mut ep = episode(&g, "small", Arc::new(user));
        assert_eq!(block_on(ep.step(Ok(Action::Action("Was it a ghost?".into())))).feedback, "No");
        let out = answer(&mut ep, "Some story.");
        assert!((out.reward - 0.8).abs() < 1e-12);
        assert!(out.feedback.contains("The story mentions insurance.: Covered"));
        assert!(!out.feedback.contains("alarm"));
    }

    // Reference §4.1: on a failed or unreadable LLM reply the feedback is the fallback and the score 0.
    #[test]
    fn llm_failure_falls_back() {
        let g = TurtleGym::from_tasks(vec![imported_like()]).unwrap();
        let user = CannedUser { question: "I think so, probably.", story: r#"{"scores": [{"score": 1}]}"# };
        let mut ep = episode(&g, "small", Arc::new(user));
        let q = block_on(ep.step(Ok(Action::Action("Was it a ghost?".into()))));
        assert_eq!((q.feedback.as_str(), q.reward), (FALLBACK_FEEDBACK, 0.0));
        let out = answer(&mut ep, "Some story.");
        assert_eq!((out.feedback.as_str(), out.reward, out.terminated), (FALLBACK_FEEDBACK, 0.0, false));
        assert!(matches!(
            UserRole::fallback(&Query::Question { puzzle: puzzle(SILENT_ALARM), question: "x".into() }),
            Reply::Unavailable
        ));
    }

    #[test]
    fn parse_reads_realistic_model_output() {
        let p = puzzle(SILENT_ALARM);
        let q = Query::Question { puzzle: p.clone(), question: "Was it insurance?".into() };
        let verdict = |text: &str| match UserRole::parse(&q, text) {
            Some(Reply::Answer(v)) => Some(v),
            _ => None,
        };
        assert_eq!(
            verdict("```json\n{\"thought\": \"The bottom says so.\", \"response\": \"Yes\"}\n```"),
            Some(Verdict::Yes)
        );
        assert_eq!(verdict("Sure. {\"thought\": \"no\", \"response\": \"no.\"} Hope this helps"), Some(Verdict::No));
        assert_eq!(verdict("{'thought': 'unclear', 'response': 'Maybe'}"), Some(Verdict::Maybe));
        assert_eq!(verdict("Yes."), Some(Verdict::Yes));
        assert_eq!(verdict("{\"thought\": \"missing the answer\"}"), None);
        assert_eq!(verdict("{\"thought\": \"t\", \"response\": \"Probably\"}"), None);
        assert_eq!(verdict("Well, it depends on the details."), None);

        let s = Query::Story { puzzle: p.clone(), story: ALARM_STORY.into() };
        let entry = |score: &str| format!("{{\"statement\": \"s\", \"thought\": \"t\", \"score\": {score}}}");
        let three = |a: &str, b: &str, c: &str| {
            format!(
                "Here you go:\n```json\n{{\"scores\": [{}, {}, {}], \"feedback\": \"Nice.\"}}\n```",
                entry(a),
                entry(b),
                entry(c)
            )
        };
        match UserRole::parse(&s, &three("1.0", "\"0.5\"", "0.7")) {
            Some(Reply::Judgement { scores, feedback }) => {
                assert_eq!(scores, vec![1.0, 0.5, 0.5]);
                assert_eq!(feedback, "Nice.");
            }
            other => panic!("{other:?}"),
        }
        assert!(UserRole::parse(&s, &three("1", "0", "1.5")).is_none(), "out of range");
        assert!(UserRole::parse(&s, &three("1", "0", "null")).is_none(), "not a number");
        let two = format!("{{\"scores\": [{}, {}], \"feedback\": \"x\"}}", entry("1"), entry("1"));
        assert!(UserRole::parse(&s, &two).is_none(), "the number of scores must equal the number of criteria");
        assert!(UserRole::parse(&s, "{\"feedback\": \"no scores\"}").is_none());
        assert!(UserRole::parse(&s, "The story is great!").is_none());
    }

    #[test]
    fn prompts_carry_what_the_judge_needs() {
        let p = puzzle(SILENT_ALARM);
        let q = UserRole::prompt(&Query::Question { puzzle: p.clone(), question: "Was it insurance?".into() });
        assert!(
            q.user.contains(&p.task.surface) && q.user.contains(&p.task.bottom) && q.user.contains("Was it insurance?")
        );
        assert!(q.system.contains("\"response\"") && q.system.contains("Maybe"));
        let s = UserRole::prompt(&Query::Story { puzzle: p.clone(), story: "My story.".into() });
        assert!(s.user.contains("My story.") && s.user.contains(&p.task.bottom));
        for c in &p.task.criteria {
            assert!(s.user.contains(&c.statement));
            assert!(!s.user.contains(&format!("{}", c.weight)), "weights are not shown to the judge");
        }
        assert!(s.system.contains("\"scores\"") && s.system.contains("\"feedback\""));
    }

    #[test]
    fn expert_beats_random_on_the_test_split() {
        let catalog = Catalog::builtin(&[GymKind::Turtle]).unwrap();
        let run = |agent| {
            block_on(evaluate(&catalog, &EvalPlan::new(Split::Test, agent), Arc::new(ScriptedUser), |_| {})).unwrap().0
        };
        let expert = run(AgentSpec::Expert);
        let random = run(AgentSpec::Random);
        let (e, r) = (expert.rows[0].mean_normalized, random.rows[0].mean_normalized);
        println!("turtle test split: expert {e:.3}, random {r:.3}");
        assert_eq!(expert.rows[0].episodes, 12);
        assert!(e >= 0.8, "expert {e}");
        assert!(r < 0.2 && r < e / 4.0, "random {r} vs expert {e}");
        assert!(expert.rows[0].mean_turns <= 4.0);
    }

    #[test]
    fn import_reads_the_original_data() {
        let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/userrl-data"));
        if !root.join("tasks/TurtleGym").exists() {
            // The shared data sits beside the repository in this project's workspace; the import of a missing
            // folder must fail cleanly.
            assert!(import_original(root).is_err());
            return;
        }
        let tasks = import_original(root).unwrap();
        assert_eq!(tasks.len(), 471);
        let text: String = tasks.iter().map(|t| format!("{t}\n")).collect();
        let g = TurtleGym::from_jsonl(&text, "import").unwrap();
        assert_eq!(g.task_ids(Some(Split::Test)).len(), 48);
        assert_eq!(g.task_ids(Some(Split::Train)).len(), 423);
        let id = g.task_ids(Some(Split::Test))[0].clone();
        let err = g.new_env(&id, &EnvConfig::default(), Arc::new(ScriptedUser)).err().unwrap();
        assert!(matches!(err, GymError::User(UserError::NoScriptedData { .. })));
        assert!(g.puzzles.iter().all(|p| (1..=5).contains(&p.task.criteria.len())));
    }

    #[test]
    fn export_round_trips() {
        let g = gym();
        let text: String = g.export_tasks().iter().map(|t| format!("{t}\n")).collect();
        let again = TurtleGym::from_jsonl(&text, "export").unwrap();
        assert_eq!(again.tasks(), g.tasks());
        assert!(again.puzzles.iter().all(|p| p.task.has_scripted_data()));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        // Odd input never panics; rewards stay finite and within [0, 1].
        #[test]
        fn random_text_never_breaks_the_env(text in "\\PC{0,300}", answer_it in proptest::bool::ANY, big in proptest::bool::ANY) {
            let g = gym_once();
            let content = if big { text.repeat(30) } else { text };
            let mut ep = Episode::new(g.new_env(SILENT_ALARM, &EnvConfig::default(), Arc::new(ScriptedUser)).unwrap(), EnvConfig::default());
            let call = crate::tool::action_from_content(if answer_it { Choice::Answer } else { Choice::Action }, &content);
            let out = block_on(ep.step(call));
            proptest::prop_assert!(out.reward.is_finite() && (0.0..=1.0).contains(&out.reward));
        }
    }

    fn gym_once() -> &'static TurtleGym {
        static GYM: std::sync::LazyLock<TurtleGym> = std::sync::LazyLock::new(|| TurtleGym::builtin().unwrap());
        &GYM
    }
}
