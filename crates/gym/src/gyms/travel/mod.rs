//! TravelGym (held-in; reference §4.7, after UserBench): the agent plans a trip with 2-4 travel aspects
//! (flight, hotel, restaurant, apartment, rental car). It must search the database with the right arguments
//! for each aspect, draw out the user's hidden preferences (which the user only reveals implicitly, one per
//! concrete question), and recommend one option per aspect: the cheapest option that satisfies every
//! preference is the best.
//!
//! The task set is procedural (`generate`): 1,000 scenarios from a fixed seed with the original files'
//! preference-count patterns (22, 33, 44, 233, 333, 334, 444, 2222), split 850/150. The original JSON files
//! are not available, so there is no import (`import_original` says so).
//!
//! Rules follow the original's async path (the one used in training and evaluation); its three bugs are
//! behind `Compat` switches, off by default.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use rand::SeedableRng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentTurn, Message, Role};
use crate::env::{DEFAULT_MAX_STEPS, Env, EnvConfig, EnvStep, Mode, TurnRecord};
use crate::gyms::{Gym, GymError, GymKind, Task, TaskInfo, TaskSet};
use crate::split::Split;
use crate::text::mix;
use crate::tool::{Action, Choice};
use crate::user::{self, User, UserError, UserKind};

pub mod catalog;
pub mod generate;
mod user_role;

#[cfg(test)]
mod tests;

pub use user_role::{Alignment, LogEntry, LogRole, PrefRef, Query, Reply, UserRole, UtteranceType};

/// Switches that reproduce the original async path's bugs (reference §4.7 and §11); all off by default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Compat {
    /// The original's proactive branch (after `ELICITATION_INTERVAL` turns without a revealed preference)
    /// always ends in the fallback reply and reveals nothing, because of an unassigned variable. Off: the user
    /// volunteers one remaining preference implicitly (it counts as elicited; no reward).
    pub proactive_elicitation_fallback: bool,
    /// The async path accepts several comma-separated ids in one answer and sums their rewards without the cap
    /// at 1. Off: an answer must carry exactly one option id (as the original's sync path demands); several
    /// ids are refused with a message and reward 0.
    pub uncapped_answer_reward: bool,
    /// The async path never ends the episode when every aspect has been answered (only when every best option
    /// was found). Off: the episode ends once every aspect has an answer.
    pub no_all_answered_termination: bool,
}

/// The reward for picking an aspect's best option, a correct (suitable but dearer) one, and the penalty for a
/// wrong one (reference §4.7 config).
pub const CHOICE_BEST_REWARD: f64 = 1.0;
pub const CHOICE_CORRECT_REWARD: f64 = 0.8;
pub const WRONG_CHOICE_PENALTY: f64 = 0.0;
/// After this many turns in a row without a revealed preference, the user volunteers one.
pub const ELICITATION_INTERVAL: u32 = 3;
/// Every this-many-th search fails with the backend message (the original's deliberate failure).
pub const SEARCH_FAILURE_PERIOD: u32 = 5;

/// `(search_correct_reward, preference_correct_reward)` per mode (reference §4.7: training 0.0/0.8, eval 0.2/0.6).
pub fn mode_rewards(mode: Mode) -> (f64, f64) {
    match mode {
        Mode::Train => (0.0, 0.8),
        Mode::Eval => (0.2, 0.6),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Task format

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Aspect {
    Flight,
    Hotel,
    Restaurant,
    Apartment,
    RentalCar,
}

impl Aspect {
    pub const ALL: [Aspect; 5] =
        [Aspect::Flight, Aspect::Hotel, Aspect::Restaurant, Aspect::Apartment, Aspect::RentalCar];

    /// The original's key (`rental_car`).
    pub fn key(self) -> &'static str {
        match self {
            Aspect::Flight => "flight",
            Aspect::Hotel => "hotel",
            Aspect::Restaurant => "restaurant",
            Aspect::Apartment => "apartment",
            Aspect::RentalCar => "rental_car",
        }
    }

    /// The plain-language name (`rental car`).
    pub fn noun(self) -> &'static str {
        match self {
            Aspect::RentalCar => "rental car",
            other => other.key(),
        }
    }

    /// The initial of its option ids.
    pub fn letter(self) -> char {
        match self {
            Aspect::Flight => 'F',
            Aspect::Hotel => 'H',
            Aspect::Restaurant => 'R',
            Aspect::Apartment => 'A',
            Aspect::RentalCar => 'C',
        }
    }

    pub fn from_letter(c: char) -> Option<Aspect> {
        Aspect::ALL.into_iter().find(|a| a.letter() == c.to_ascii_uppercase())
    }

    /// Reads an aspect name as a model may write it: `rental_car`, `Rental Car`, `car rental`, `flights`.
    pub fn parse(s: &str) -> Option<Aspect> {
        let norm: String = s
            .trim()
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { ' ' })
            .collect::<String>()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let norm = norm.strip_suffix('s').unwrap_or(&norm);
        match norm {
            "flight" | "plane" | "airline" | "air ticket" => Some(Aspect::Flight),
            "hotel" => Some(Aspect::Hotel),
            "restaurant" => Some(Aspect::Restaurant),
            "apartment" => Some(Aspect::Apartment),
            "rental car" | "car rental" | "rental" | "car" | "rental_car" => Some(Aspect::RentalCar),
            _ => None,
        }
    }
}

impl std::fmt::Display for Aspect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

/// One hidden preference: the original's `[aspect, subcategory, preference, implicit statement]`, plus the
/// keywords that let the scripted judge recognise a question about its subcategory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preference {
    pub aspect: Aspect,
    pub subcategory: String,
    pub text: String,
    pub implicit: String,
    /// Phrases that touch the subcategory (the scripted judge's concept group). Empty in data that lacks it.
    #[serde(default)]
    pub keywords: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchArgument {
    pub name: String,
    pub value: String,
}

/// One database option: its id and its fields in display order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TravelOption {
    pub id: String,
    pub fields: Vec<(String, serde_json::Value)>,
}

impl TravelOption {
    /// One JSON line, id first, fields in their order.
    pub fn json_line(&self) -> String {
        let mut out = format!("{{\"id\": {}", serde_json::Value::String(self.id.clone()));
        for (name, value) in &self.fields {
            out.push_str(&format!(", {}: {}", serde_json::Value::String(name.clone()), value));
        }
        out.push('}');
        out
    }

    pub fn cost(&self) -> Option<f64> {
        self.fields.iter().find(|(n, _)| n == "cost").and_then(|(_, v)| v.as_f64())
    }
}

/// The options of one aspect by kind: `correct` satisfy every preference (the cheapest is the best), `wrong`
/// violate some, `noise` are random near-misses.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OptionGroups {
    pub correct: Vec<TravelOption>,
    pub wrong: Vec<TravelOption>,
    pub noise: Vec<TravelOption>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AspectTask {
    pub aspect: Aspect,
    pub preferences: Vec<Preference>,
    pub best_id: String,
    /// Every option that satisfies all preferences, the best included.
    pub correct_ids: Vec<String>,
    pub options: OptionGroups,
    /// The ground-truth search arguments, in order.
    pub arguments: Vec<SearchArgument>,
}

impl AspectTask {
    /// All options in display order (by the number of their id).
    pub fn shown_options(&self) -> Vec<&TravelOption> {
        let mut all: Vec<&TravelOption> =
            self.options.correct.iter().chain(&self.options.wrong).chain(&self.options.noise).collect();
        all.sort_by_key(|o| (o.id.get(1..).and_then(|n| n.parse::<u64>().ok()).unwrap_or(u64::MAX), o.id.clone()));
        all
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TravelTask {
    pub id: String,
    pub split: Split,
    /// Preferences per aspect, as the original file names give them (`233`).
    pub pattern: String,
    /// Context for the LLM user: who travels, where, why.
    pub scenario: String,
    /// What the user says first.
    pub initial_description: String,
    pub dimensions: Vec<Aspect>,
    pub aspects: Vec<AspectTask>,
}

impl Task for TravelTask {
    fn id(&self) -> &str {
        &self.id
    }
    fn split(&self) -> Split {
        self.split
    }
}

impl TravelTask {
    pub fn aspect(&self, aspect: Aspect) -> Option<&AspectTask> {
        self.aspects.iter().find(|a| a.aspect == aspect)
    }

    /// Every preference in dimension order; its position is its global index (`P{index + 1}`).
    pub fn preferences(&self) -> impl Iterator<Item = &Preference> {
        self.aspects.iter().flat_map(|a| a.preferences.iter())
    }

    pub fn preference(&self, index: usize) -> Option<&Preference> {
        self.preferences().nth(index)
    }

    pub fn preference_count(&self) -> usize {
        self.aspects.iter().map(|a| a.preferences.len()).sum()
    }

    /// The best option ids (the original's `ground_truth`).
    pub fn ground_truth(&self) -> Vec<String> {
        self.aspects.iter().map(|a| a.best_id.clone()).collect()
    }

    /// The first user message: the request and the budget rule.
    pub fn opening(&self) -> String {
        format!(
            "{}\nMy budget is tight, too: as long as my preferences are met, I'd like the cheapest option for each \
             part of the trip.",
            self.initial_description
        )
    }

    /// Structural checks: ids with the aspect's letter and unique, the best among the correct ones and the
    /// cheapest of them, one entry per dimension.
    pub fn validate(&self) -> Result<(), String> {
        if self.aspects.is_empty() {
            return Err("the task has no travel aspects".into());
        }
        if self.dimensions.len() != self.aspects.len()
            || self.dimensions.iter().zip(&self.aspects).any(|(d, a)| *d != a.aspect)
        {
            return Err("`dimensions` must list the aspects in order".into());
        }
        let mut seen = std::collections::HashSet::new();
        for a in &self.aspects {
            if !seen.insert(a.aspect) {
                return Err(format!("aspect {} appears twice", a.aspect));
            }
            let options = a.shown_options();
            let mut ids = std::collections::HashSet::new();
            for o in &options {
                if !valid_id(&o.id) || Aspect::from_letter(o.id.chars().next().unwrap_or(' ')) != Some(a.aspect) {
                    return Err(format!("option id `{}` does not belong to {}", o.id, a.aspect));
                }
                if !ids.insert(o.id.as_str()) {
                    return Err(format!("option id `{}` appears twice", o.id));
                }
            }
            let correct: Vec<&str> = a.options.correct.iter().map(|o| o.id.as_str()).collect();
            if !correct.contains(&a.best_id.as_str()) || !a.correct_ids.contains(&a.best_id) {
                return Err(format!("best id `{}` of {} is not among its correct options", a.best_id, a.aspect));
            }
            if a.correct_ids.iter().any(|id| !correct.contains(&id.as_str())) {
                return Err(format!("`correct_ids` of {} lists an option that is not correct", a.aspect));
            }
            if a.arguments.is_empty() {
                return Err(format!("{} has no search arguments", a.aspect));
            }
        }
        Ok(())
    }
}

/// `^[ACFHR]\d+$`, the original's answer format.
pub fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some('A' | 'C' | 'F' | 'H' | 'R'))
        && id.len() >= 2
        && id.len() <= 12
        && chars.all(|c| c.is_ascii_digit())
}

// ---------------------------------------------------------------------------------------------------------
// The gym

pub struct TravelGym {
    tasks: TaskSet<TravelTask>,
}

impl TravelGym {
    /// The embedded task set: `generate::TASK_COUNT` scenarios from `generate::SEED`.
    pub fn builtin() -> Result<TravelGym, GymError> {
        TravelGym::from_tasks(generate::generate_all(generate::SEED))
    }

    pub fn from_tasks(tasks: Vec<TravelTask>) -> Result<TravelGym, GymError> {
        for t in &tasks {
            t.validate().map_err(|message| GymError::Data { gym: GymKind::Travel, location: t.id.clone(), message })?;
        }
        Ok(TravelGym { tasks: TaskSet::new(GymKind::Travel, tasks)? })
    }

    pub fn from_jsonl(text: &str, source: &str) -> Result<TravelGym, GymError> {
        let set: TaskSet<TravelTask> = TaskSet::from_jsonl(GymKind::Travel, text, source)?;
        TravelGym::from_tasks(set.all().iter().map(|t| t.as_ref().clone()).collect())
    }

    pub fn task(&self, id: &str) -> Result<&Arc<TravelTask>, GymError> {
        self.tasks.get(id)
    }
}

pub const SYSTEM_PROMPT: &str = "You are an agent working inside an environment through one tool. Read the details \
below carefully.

- Environment: TravelGym. You help a user plan a trip that involves one or more travel aspects (flight, hotel, \
restaurant, apartment, rental car). You can talk with the user and query a travel database. The user's first \
message is incomplete: they have further preferences they have not told you, so you must draw them out, search \
the database, and recommend the options that suit them best.

- Choices: call `interact_with_env` with `choice` set to `search`, `action` or `answer`.
  * `search`: send one focused query to the database in `content`. Name the travel aspect (for example flight or \
hotel) and give every detail it needs (places and dates). Search one aspect at a time. The database returns the \
matching options, each with an id.
  * `action`: say something to the user in `content`. Ask clear, specific questions about one concrete detail at a \
time; vague or catch-all questions get no useful answer.
  * `answer`: recommend an option in `content`: exactly one option id from the search results (for example F3).

- Notes:
  * Think step by step before each call.
  * Turns are limited, so balance searching, asking and recommending to serve the user efficiently.
  * A good order is to search first, then ask about the user's preferences, then recommend. Every travel aspect in \
the request needs a recommendation, and you may recommend only one option per aspect, so learn what the user \
wants before you commit.
  * The user may care about several things for each aspect and rarely says them outright: read their replies \
carefully and infer what they need. Among the suitable options, the user wants the cheapest.
  * Be bold, creative and smart. Let's begin!";

impl Gym for TravelGym {
    fn kind(&self) -> GymKind {
        GymKind::Travel
    }
    fn tasks(&self) -> &[TaskInfo] {
        self.tasks.info()
    }
    fn system_prompt(&self) -> String {
        SYSTEM_PROMPT.to_string()
    }
    fn new_env(&self, task_id: &str, config: &EnvConfig, user: Arc<dyn User>) -> Result<Box<dyn Env>, GymError> {
        let task = self.tasks.get(task_id)?.clone();
        if user.kind() == UserKind::Scripted && task.preferences().any(|p| p.keywords.is_empty()) {
            return Err(GymError::User(UserError::NoScriptedData {
                gym: "travel",
                task: task.id.clone(),
                missing: "preference keywords",
            }));
        }
        Ok(Box::new(TravelEnv::new(task, config, user)))
    }
    fn expert(&self, task_id: &str, _seed: u64) -> Result<Box<dyn Agent>, GymError> {
        let task = self.tasks.get(task_id)?.clone();
        Ok(Box::new(TravelExpert::new(task, DEFAULT_MAX_STEPS)))
    }
    fn export_tasks(&self) -> Vec<serde_json::Value> {
        self.tasks.export()
    }
}

/// The original TravelGym files are not available (reference: userrl-data/README.md), so nothing can be
/// imported; the parquet records carry only prompts and best ids, not the preferences and options the rules
/// need.
pub fn import_original(root: &std::path::Path) -> Result<Vec<serde_json::Value>, GymError> {
    Err(GymError::Data {
        gym: GymKind::Travel,
        location: root.display().to_string(),
        message: "the original TravelGym JSON files (preferences, options, search arguments) are not available, so \
                  TravelGym cannot be imported; use the built-in procedural task set"
            .into(),
    })
}

// ---------------------------------------------------------------------------------------------------------
// The environment

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PrefStatus {
    Remaining,
    Elicited,
    /// The aspect was answered before the preference came out.
    Dropped,
}

pub const SEARCH_FAILED: &str = "The search service is having trouble at the moment. Please try again a little later.";
pub const SEARCH_REFINE: &str = "The database could not match your request. Send one focused query for a single \
travel aspect that names the aspect and gives every detail it needs, such as the places and the dates.";
pub const NO_PREFERENCE_REPLY: &str = "I don't really have a particular preference about what you're asking right now.";
pub const TOO_VAGUE_REPLY: &str = "That's too broad for me to answer. Could you ask about one specific thing instead?";
pub const FALLBACK_REPLY: &str = "Sorry, I'm not sure how to respond to that.";

pub struct TravelEnv {
    task: Arc<TravelTask>,
    user: Arc<dyn User>,
    compat: Compat,
    search_reward: f64,
    preference_reward: f64,
    status: Vec<PrefStatus>,
    pref_aspect: Vec<Aspect>,
    searched: Vec<Aspect>,
    remaining_best: Vec<String>,
    remaining_correct: Vec<String>,
    chosen: Vec<char>,
    search_times: u32,
    nonpreference_times: u32,
    active_elicited: u32,
    passive_elicited: u32,
    history: Vec<LogEntry>,
    seed: u64,
    steps: u64,
}

impl TravelEnv {
    pub fn new(task: Arc<TravelTask>, config: &EnvConfig, user: Arc<dyn User>) -> TravelEnv {
        let (search_reward, preference_reward) = mode_rewards(config.mode);
        let pref_aspect: Vec<Aspect> = task.preferences().map(|p| p.aspect).collect();
        TravelEnv {
            status: vec![PrefStatus::Remaining; pref_aspect.len()],
            pref_aspect,
            searched: Vec::new(),
            remaining_best: task.aspects.iter().map(|a| a.best_id.clone()).collect(),
            remaining_correct: task.aspects.iter().flat_map(|a| a.correct_ids.iter().cloned()).collect(),
            chosen: Vec::new(),
            search_times: 0,
            nonpreference_times: 0,
            active_elicited: 0,
            passive_elicited: 0,
            history: Vec::new(),
            compat: config.compat.travel.clone(),
            seed: config.seed,
            steps: 0,
            search_reward,
            preference_reward,
            task,
            user,
        }
    }

    fn remaining(&self) -> Vec<PrefRef> {
        self.status
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == PrefStatus::Remaining)
            .map(|(i, _)| PrefRef::new(i))
            .collect()
    }

    /// How many preferences were drawn out by questions and volunteered by the user.
    pub fn elicitation_counts(&self) -> (u32, u32) {
        (self.active_elicited, self.passive_elicited)
    }

    fn log(&mut self, role: LogRole, content: &str, note: Option<String>) {
        self.history.push(LogEntry { role, content: content.chars().take(2000).collect(), note });
    }

    async fn search(&mut self, query: &str) -> EnvStep {
        self.search_times += 1;
        self.log(LogRole::Agent, &format!("[search] {query}"), None);
        if self.search_times.is_multiple_of(SEARCH_FAILURE_PERIOD) {
            self.log(LogRole::Database, SEARCH_FAILED, None);
            return EnvStep::reply(SEARCH_FAILED);
        }
        let q = Query::Search { task: self.task.clone(), query: query.to_string() };
        let reply = user::ask::<UserRole>(self.user.as_ref(), q).await.ok();
        let (alignment, aspect) = match reply {
            Some(Reply::Search { alignment, aspect }) => (alignment, aspect),
            _ => (Alignment::Failed, None),
        };
        let step = match (alignment, aspect.and_then(|a| self.task.aspect(a))) {
            (Alignment::Failed, _) => EnvStep::reply(SEARCH_FAILED),
            (Alignment::Aligned, Some(at)) => {
                if self.searched.contains(&at.aspect) {
                    EnvStep::reply(format!(
                        "You already have the search results for the {}; use them instead of searching again.",
                        at.aspect.noun()
                    ))
                } else {
                    self.searched.push(at.aspect);
                    let spec = catalog::spec(at.aspect);
                    let lines: Vec<String> = at.shown_options().iter().map(|o| o.json_line()).collect();
                    let text =
                        format!("Search results for the {}:\n{}\n{}", at.aspect.noun(), spec.schema, lines.join("\n"));
                    EnvStep::rewarded(text, self.search_reward)
                }
            }
            _ => EnvStep::reply(SEARCH_REFINE),
        };
        // The log keeps a short note instead of the whole listing, so the judges' prompts stay small.
        let note = match aspect {
            Some(a) if step.feedback.starts_with("Search results") => {
                Some(format!("returned the {} options", a.noun()))
            }
            _ => None,
        };
        let summary = if note.is_some() { "(search results)".to_string() } else { step.feedback.clone() };
        self.log(LogRole::Database, &summary, note);
        step
    }

    async fn utter(&mut self, utterance: &str) -> EnvStep {
        self.steps += 1;
        let seed = mix(self.seed, self.steps);
        let history = self.history.clone();
        self.log(LogRole::Agent, utterance, None);
        let remaining = self.remaining();
        let q = Query::Classify {
            task: self.task.clone(),
            history: history.clone(),
            utterance: utterance.to_string(),
            remaining: remaining.clone(),
        };
        let (kind, preference_id) = match user::ask::<UserRole>(self.user.as_ref(), q).await {
            Ok(Reply::Classify { kind, preference_id }) => (kind, preference_id),
            _ => (UtteranceType::Conversation, None),
        };
        let target = match kind {
            UtteranceType::Preference => {
                preference_id.as_deref().and_then(|id| remaining.iter().find(|p| p.id == id)).cloned()
            }
            _ => None,
        };
        let say = |reply: Result<Reply, UserError>| match reply {
            Ok(Reply::Say { response, .. }) if !response.trim().is_empty() => response,
            _ => FALLBACK_REPLY.to_string(),
        };
        if let Some(pref) = target {
            let q = Query::Reveal {
                task: self.task.clone(),
                history,
                utterance: utterance.to_string(),
                preference: pref.clone(),
                seed,
            };
            let response = say(user::ask::<UserRole>(self.user.as_ref(), q).await);
            self.status[pref.index] = PrefStatus::Elicited;
            self.active_elicited += 1;
            self.nonpreference_times = 0;
            self.log(LogRole::User, &response, Some(format!("revealed {} implicitly", pref.id)));
            return EnvStep::rewarded(response, self.preference_reward);
        }
        if self.nonpreference_times >= ELICITATION_INTERVAL && !remaining.is_empty() {
            self.nonpreference_times = 0;
            if self.compat.proactive_elicitation_fallback {
                self.log(LogRole::User, FALLBACK_REPLY, None);
                return EnvStep::reply(FALLBACK_REPLY);
            }
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let Some(pref) = remaining.choose(&mut rng).cloned() else {
                return EnvStep::reply(FALLBACK_REPLY);
            };
            let q = Query::Volunteer {
                task: self.task.clone(),
                history,
                utterance: utterance.to_string(),
                preference: pref.clone(),
                seed,
            };
            let response = say(user::ask::<UserRole>(self.user.as_ref(), q).await);
            self.status[pref.index] = PrefStatus::Elicited;
            self.passive_elicited += 1;
            self.log(LogRole::User, &response, Some(format!("volunteered {} implicitly", pref.id)));
            return EnvStep::reply(response);
        }
        self.nonpreference_times += 1;
        let response = match kind {
            UtteranceType::Missing => NO_PREFERENCE_REPLY.to_string(),
            UtteranceType::Vague => TOO_VAGUE_REPLY.to_string(),
            _ => {
                let q = Query::Chat { task: self.task.clone(), history, utterance: utterance.to_string(), seed };
                say(user::ask::<UserRole>(self.user.as_ref(), q).await)
            }
        };
        self.log(LogRole::User, &response, None);
        EnvStep::reply(response)
    }

    fn answer(&mut self, content: &str) -> EnvStep {
        self.log(LogRole::Agent, &format!("[answer] {content}"), None);
        let ids: Vec<String> = content
            .split(',')
            .map(|s| s.trim().trim_matches(|c: char| matches!(c, '"' | '\'' | '`' | '[' | ']' | '.')).trim())
            .filter(|s| !s.is_empty())
            .map(|s| s.to_ascii_uppercase())
            .collect();
        if ids.is_empty() || ids.iter().any(|id| !valid_id(id)) {
            return EnvStep::reply(
                "Your answer could not be read: give an option id from the search results, a letter (F, H, R, A \
                 or C) followed by digits, for example F3.",
            );
        }
        if ids.len() > 1 && !self.compat.uncapped_answer_reward {
            return EnvStep::reply("Please recommend exactly one option per answer.");
        }
        let letters: Vec<char> = ids.iter().filter_map(|id| id.chars().next()).collect();
        if let Some(&c) = letters.iter().find(|c| self.chosen.contains(c)) {
            let what = Aspect::from_letter(c).map(Aspect::noun).unwrap_or("this aspect");
            return EnvStep::reply(format!(
                "You have already recommended an option for the {what}; only one recommendation per travel aspect \
                 is allowed."
            ));
        }
        let mut reward = 0.0;
        let (mut best, mut correct) = (false, false);
        for id in &ids {
            if let Some(i) = self.remaining_best.iter().position(|b| b == id) {
                self.remaining_best.remove(i);
                self.remaining_correct.retain(|c| c != id);
                reward += CHOICE_BEST_REWARD;
                best = true;
            } else if self.remaining_correct.contains(id) {
                reward += CHOICE_CORRECT_REWARD;
                correct = true;
            } else {
                reward -= WRONG_CHOICE_PENALTY;
            }
        }
        for &c in &letters {
            if !self.chosen.contains(&c) {
                self.chosen.push(c);
            }
            if let Some(aspect) = Aspect::from_letter(c) {
                for (status, a) in self.status.iter_mut().zip(&self.pref_aspect) {
                    if *a == aspect && *status == PrefStatus::Remaining {
                        *status = PrefStatus::Dropped;
                    }
                }
            }
        }
        let reward: f64 = reward.max(0.0);
        let verdict = if best {
            "Your recommendation includes the best option for the user."
        } else if correct {
            "Your recommendation suits the user's preferences, but it is not the best choice."
        } else {
            "Your recommendation does not suit the user's preferences."
        };
        let mut feedback =
            format!("{verdict} Your choice is recorded; do not recommend options of this travel aspect again.");
        let all_best = self.remaining_best.is_empty();
        let all_answered = self.task.dimensions.iter().all(|a| self.chosen.contains(&a.letter()));
        let done = all_best || (all_answered && !self.compat.no_all_answered_termination);
        if done {
            feedback.push_str(" Every travel aspect has been settled.");
        }
        self.log(LogRole::User, &feedback, None);
        let step = EnvStep::rewarded(feedback, reward);
        if done { step.end() } else { step }
    }
}

#[async_trait::async_trait]
impl Env for TravelEnv {
    fn kind(&self) -> GymKind {
        GymKind::Travel
    }
    fn task_id(&self) -> &str {
        &self.task.id
    }
    fn opening(&self) -> String {
        self.task.opening()
    }
    fn success(&self) -> bool {
        self.remaining_best.is_empty()
    }

    async fn step(&mut self, action: &Action) -> EnvStep {
        match action {
            Action::Search(query) => self.search(query).await,
            Action::Action(text) => self.utter(text).await,
            Action::Answer(text) => self.answer(text),
            Action::Finish => EnvStep::reply("You ended the conversation.").end(),
        }
    }

    /// Reference §9: for each answer turn take the aspect letter (first character of the content), keep the
    /// best reward per letter, sum, and divide by the number of aspects.
    fn episode_score(&self, turns: &[TurnRecord]) -> f64 {
        aspect_score(turns, self.task.dimensions.len())
    }
}

/// The §9 travel score of a list of turns for a task with `aspects` aspects.
pub fn aspect_score(turns: &[TurnRecord], aspects: usize) -> f64 {
    if aspects == 0 {
        return 0.0;
    }
    let mut best: BTreeMap<char, f64> = BTreeMap::new();
    for t in turns.iter().filter(|t| t.valid && t.choice == "answer") {
        let Some(letter) = t.content.trim_start().chars().next().map(|c| c.to_ascii_uppercase()) else {
            continue;
        };
        let entry = best.entry(letter).or_insert(0.0);
        *entry = entry.max(t.reward);
    }
    best.values().sum::<f64>() / aspects as f64
}

// ---------------------------------------------------------------------------------------------------------
// The expert

/// Per aspect: one search with the right arguments, one concrete question per preference while the budget
/// allows, then the best option, after checking that the search results list it. Knows the hidden task.
pub struct TravelExpert {
    task: Arc<TravelTask>,
    plan: VecDeque<(Choice, String)>,
    last_search: Option<(String, String)>,
    retries: usize,
}

impl TravelExpert {
    pub fn new(task: Arc<TravelTask>, max_steps: usize) -> TravelExpert {
        let k = task.aspects.len();
        let mut questions_left = max_steps.saturating_sub(2 * k);
        let mut plan = VecDeque::new();
        for a in &task.aspects {
            plan.push_back((Choice::Search, search_query(a)));
            for p in &a.preferences {
                if questions_left == 0 {
                    break;
                }
                questions_left -= 1;
                plan.push_back((Choice::Action, question_for(p)));
            }
            plan.push_back((Choice::Answer, a.best_id.clone()));
        }
        TravelExpert { task, plan, last_search: None, retries: 0 }
    }
}

/// A natural search query naming the aspect and its arguments.
pub fn search_query(a: &AspectTask) -> String {
    let arg = |name: &str| a.arguments.iter().find(|x| x.name == name).map(|x| x.value.as_str()).unwrap_or("");
    match a.aspect {
        Aspect::Flight => {
            format!("One-way flight from {} to {} on {}", arg("origin"), arg("destination"), arg("date"))
        }
        Aspect::Hotel => format!("Hotel in {} from {} to {}", arg("city"), arg("check_in"), arg("check_out")),
        Aspect::Apartment => {
            format!("Apartment in {} from {} to {}", arg("city"), arg("check_in"), arg("check_out"))
        }
        Aspect::RentalCar => {
            format!("Rental car in {} from {} to {}", arg("city"), arg("pickup_date"), arg("return_date"))
        }
        Aspect::Restaurant => format!("Restaurant in {} on {}", arg("city"), arg("date")),
    }
}

/// The expert's concrete question about a preference's subcategory.
pub fn question_for(p: &Preference) -> String {
    catalog::spec(p.aspect)
        .subcats
        .iter()
        .find(|s| s.concept == p.subcategory)
        .map(|s| s.question.to_string())
        .unwrap_or_else(|| format!("For the {}, what do you need regarding {}?", p.aspect.noun(), p.subcategory))
}

#[async_trait::async_trait]
impl Agent for TravelExpert {
    async fn act(&mut self, conversation: &[Message]) -> AgentTurn {
        let last_tool = conversation.iter().rev().find(|m| m.role == Role::Tool).map(|m| m.content.as_str());
        // A search that did not list the option we mean to recommend (a backend failure, an LLM judge that
        // disagreed) is retried a couple of times before moving on.
        if let (Some((query, best)), Some(tool)) = (self.last_search.take(), last_tool)
            && !tool.contains(&format!("\"id\": \"{best}\""))
            && self.retries < 2
        {
            self.retries += 1;
            self.last_search = Some((query.clone(), best));
            return AgentTurn::call_with_thought("The search did not go through; trying again.", Choice::Search, query);
        }
        let Some((choice, content)) = self.plan.pop_front() else {
            return AgentTurn::Text("Every part of the trip has a recommendation.".into());
        };
        let thought = match choice {
            Choice::Search => {
                let best = self
                    .task
                    .aspects
                    .iter()
                    .find(|a| search_query(a) == content)
                    .map(|a| a.best_id.clone())
                    .unwrap_or_default();
                self.last_search = Some((content.clone(), best));
                "First I need the options from the database."
            }
            Choice::Action => "I should learn what the user needs before recommending.",
            Choice::Answer => "Among the options that fit everything the user told me, this is the cheapest.",
        };
        AgentTurn::call_with_thought(thought, choice, content)
    }
}
