//! PersuadeGym (held-in): the environment believes a debatable claim and the agent, who opposes it, argues with
//! `answer` to move the environment's stance down a 7-point scale from "Strongly Agree" to "Strongly Disagree"
//! (reference §4.3). Each turn pays the levels gained toward disagreement, over 6; the episode ends at "Strongly
//! Disagree".
//!
//! The task set is 100 claims written for this project (policy, technology, lifestyle, science in society,
//! economy and education; `data/persuade/*.json`), each with the persuadee's own supporting argument, 4–6
//! counter-argument points that can move it (concept groups that an argument must express, and a strength of 1
//! or 2 levels), and the lines it answers with when unconvinced. The scripted persuadee moves by the strength
//! of each new point an argument makes (at most 2 levels a turn); the LLM persuadee reads the same claim,
//! argument, stance and history as the original's and answers `{thought, response, stance}`.
//!
//! Deliberate difference from the original (switchable, see `Compat`): the original lets the stance move back
//! toward agreement and then pays the same levels again, so an episode's sum is uncapped. By default only levels
//! beyond the furthest stance reached so far are paid, so an episode scores at most 1.

mod matcher;

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentTurn, Message};
use crate::env::{Env, EnvConfig, EnvStep};
use crate::gyms::{Gym, GymError, GymKind, Task, TaskInfo, TaskSet};
use crate::llm::Prompt;
use crate::split::{self, Split};
use crate::text::{self, mix, pick};
use crate::tool::{Action, Choice};
use crate::user::{Protocol, User, UserError, UserKind, UserQuery, UserReply};

pub use matcher::{Analysis, Lexicon};

/// Seeds the train/test split of the built-in claims.
pub const SEED: u64 = 0x9E25_0403;
const TEST_FRACTION: f64 = 0.2;
/// The scripted persuadee moves at most this many levels in one turn, however many points an argument makes.
pub const MAX_LEVELS_PER_TURN: usize = 2;
/// Content overlap with an earlier argument from which a text counts as a repetition.
const REPEAT_THRESHOLD: f64 = 0.8;
/// Content overlap with the persuadee's own argument from which a text just echoes its reasons back.
const ECHO_THRESHOLD: f64 = 0.5;

/// The authored claims, by theme.
const DATA: [(&str, &str); 5] = [
    ("policy", include_str!("../../../data/persuade/policy.json")),
    ("technology", include_str!("../../../data/persuade/technology.json")),
    ("lifestyle", include_str!("../../../data/persuade/lifestyle.json")),
    ("science", include_str!("../../../data/persuade/science.json")),
    ("economy", include_str!("../../../data/persuade/economy.json")),
];

/// Switches that reproduce the original's bugs (reference §4.3, §11); all off by default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Compat {
    /// The original pays `Δ = idx(new) − idx(prev)` from the previous stance even when the persuadee has been
    /// there before: an agent that lets the stance slide back toward agreement is paid again for the same
    /// levels, and an episode's sum is uncapped. Off (default): only the levels beyond the furthest stance
    /// reached so far are paid, so an episode sums to at most 1.
    pub repay_levels: bool,
}

// ---------------------------------------------------------------------------------------------------------
// The stance scale

/// The persuadee's 7-point stance on the claim; the index runs from 0 (Strongly Agree) to 6 (Strongly Disagree).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Stance {
    #[serde(rename = "Strongly Agree")]
    StronglyAgree,
    #[serde(rename = "Agree")]
    Agree,
    #[serde(rename = "Partly Agree")]
    PartlyAgree,
    #[serde(rename = "Neutral")]
    Neutral,
    #[serde(rename = "Partly Disagree")]
    PartlyDisagree,
    #[serde(rename = "Disagree")]
    Disagree,
    #[serde(rename = "Strongly Disagree")]
    StronglyDisagree,
}

impl Stance {
    pub const ALL: [Stance; 7] = [
        Stance::StronglyAgree,
        Stance::Agree,
        Stance::PartlyAgree,
        Stance::Neutral,
        Stance::PartlyDisagree,
        Stance::Disagree,
        Stance::StronglyDisagree,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    /// The stance at `index`, clamped to the scale.
    pub fn from_index(index: usize) -> Stance {
        Stance::ALL[index.min(6)]
    }

    pub fn label(self) -> &'static str {
        match self {
            Stance::StronglyAgree => "Strongly Agree",
            Stance::Agree => "Agree",
            Stance::PartlyAgree => "Partly Agree",
            Stance::Neutral => "Neutral",
            Stance::PartlyDisagree => "Partly Disagree",
            Stance::Disagree => "Disagree",
            Stance::StronglyDisagree => "Strongly Disagree",
        }
    }

    /// Reads a label, ignoring case, surrounding spaces and punctuation, and `_`/`-` between the words; anything
    /// else is `None`.
    pub fn parse(text: &str) -> Option<Stance> {
        let cleaned: String = text
            .trim()
            .trim_matches(|c: char| c.is_ascii_punctuation() || c.is_whitespace())
            .chars()
            .map(|c| if c == '_' || c == '-' { ' ' } else { c.to_ascii_lowercase() })
            .collect();
        let cleaned = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
        Stance::ALL.into_iter().find(|s| s.label().to_ascii_lowercase() == cleaned)
    }

    /// The original's tracked `stance_to_score`: the index over 6.
    pub fn score(self) -> f64 {
        round6(self.index() as f64 / 6.0)
    }
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// The reward of one turn (reference §4.3): `Δ = idx(new) − idx(base)`, 0 when `Δ ≤ 0`, else `round(Δ/6, 6)`.
/// The base is the previous stance with `repay_levels` (the original), else the furthest stance reached.
pub fn stance_reward(previous: Stance, new: Stance, furthest: Stance, compat: &Compat) -> f64 {
    let base = if compat.repay_levels { previous } else { previous.max(furthest) };
    let delta = new.index() as i64 - base.index() as i64;
    if delta <= 0 { 0.0 } else { round6(delta as f64 / 6.0) }
}

// ---------------------------------------------------------------------------------------------------------
// Tasks

/// A counter-argument that can move the persuadee.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// A short noun phrase the persuadee uses to acknowledge the point once it has been made.
    pub gist: String,
    /// Stance levels the point is worth (1 or 2).
    pub strength: u8,
    /// Concept groups: each group is a list of synonym phrases (`word*` matches a word family) and every group
    /// must be expressed, not negated, in one sentence or two adjacent ones.
    pub concepts: Vec<Vec<String>>,
    /// A sentence that makes the point (the expert's wording).
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PersuadeTask {
    pub id: String,
    pub split: Split,
    #[serde(default)]
    pub topic: String,
    /// The claim the environment holds and the agent opposes.
    pub claim: String,
    /// The persuadee's own argument for the claim (never shown to the agent).
    pub argument: String,
    /// The points the scripted persuadee can be moved by; empty for tasks only an LLM persuadee can play.
    #[serde(default)]
    pub points: Vec<Point>,
    /// What the scripted persuadee says when an argument does not move it.
    #[serde(default)]
    pub rebuttals: Vec<String>,
}

impl Task for PersuadeTask {
    fn id(&self) -> &str {
        &self.id
    }
    fn split(&self) -> Split {
        self.split
    }
}

impl PersuadeTask {
    /// The levels an episode can gain with the scripted persuadee: every point made once, each in a turn of its
    /// own if need be, so nothing is lost to the per-turn cap.
    pub fn reachable_levels(&self) -> usize {
        self.points.iter().map(|p| p.strength.clamp(1, 2) as usize).sum::<usize>().min(6)
    }
}

/// A claim as authored in `data/persuade/*.json` (the split is assigned when the set loads).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Authored {
    id: String,
    claim: String,
    argument: String,
    points: Vec<Point>,
    rebuttals: Vec<String>,
}

/// The 100 built-in claims with their deterministic 80/20 split.
pub fn builtin_tasks() -> Result<Vec<PersuadeTask>, GymError> {
    let mut tasks = Vec::new();
    for (topic, json) in DATA {
        let authored: Vec<Authored> = serde_json::from_str(json).map_err(|e| GymError::Data {
            gym: GymKind::Persuade,
            location: format!("data/persuade/{topic}.json"),
            message: e.to_string(),
        })?;
        for a in authored {
            tasks.push(PersuadeTask {
                id: a.id,
                split: Split::Train,
                topic: topic.to_string(),
                claim: a.claim,
                argument: a.argument,
                points: a.points,
                rebuttals: a.rebuttals,
            });
        }
    }
    let splits = split::assign(tasks.len(), TEST_FRACTION, SEED);
    for (task, split) in tasks.iter_mut().zip(splits) {
        task.split = split;
    }
    Ok(tasks)
}

fn validate(task: &PersuadeTask) -> Result<(), GymError> {
    let bad = |message: String| GymError::Data { gym: GymKind::Persuade, location: task.id.clone(), message };
    if task.claim.trim().is_empty() {
        return Err(bad("the claim is empty".into()));
    }
    for (i, p) in task.points.iter().enumerate() {
        if !(1..=2).contains(&p.strength) {
            return Err(bad(format!("point {i} has strength {} (expected 1 or 2)", p.strength)));
        }
        if p.concepts.is_empty() || p.concepts.iter().any(|g| g.iter().all(|s| s.trim().is_empty())) {
            return Err(bad(format!("point {i} has an empty concept group")));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// The gym

pub struct PersuadeGym {
    tasks: TaskSet<PersuadeTask>,
    lexicons: HashMap<String, Arc<Lexicon>>,
}

impl PersuadeGym {
    pub fn builtin() -> Result<PersuadeGym, GymError> {
        PersuadeGym::from_tasks(builtin_tasks()?)
    }

    pub fn from_tasks(tasks: Vec<PersuadeTask>) -> Result<PersuadeGym, GymError> {
        tasks.iter().try_for_each(validate)?;
        let lexicons = tasks
            .iter()
            .map(|t| {
                let concepts: Vec<Vec<Vec<String>>> = t.points.iter().map(|p| p.concepts.clone()).collect();
                (t.id.clone(), Arc::new(Lexicon::new(&t.claim, &t.argument, &concepts)))
            })
            .collect();
        Ok(PersuadeGym { tasks: TaskSet::new(GymKind::Persuade, tasks)?, lexicons })
    }

    pub fn from_jsonl(text: &str, source: &str) -> Result<PersuadeGym, GymError> {
        let set: TaskSet<PersuadeTask> = TaskSet::from_jsonl(GymKind::Persuade, text, source)?;
        PersuadeGym::from_tasks(set.all().iter().map(|t| t.as_ref().clone()).collect())
    }

    pub fn task(&self, id: &str) -> Result<&Arc<PersuadeTask>, GymError> {
        self.tasks.get(id)
    }

    fn lexicon(&self, id: &str) -> Arc<Lexicon> {
        self.lexicons.get(id).cloned().unwrap_or_default()
    }
}

pub const SYSTEM_PROMPT: &str = "You are an agent working inside an environment through one tool. Read the details \
below carefully.

- Environment: PersuadeGym. The environment is a person who firmly believes a claim that you oppose. Your goal \
is to change their mind with arguments. Their stance is on a 7-point scale: Strongly Agree, Agree, Partly Agree, \
Neutral, Partly Disagree, Disagree, Strongly Disagree. They start at Strongly Agree, and you make progress each \
time their stance moves toward Strongly Disagree. The conversation ends when they strongly disagree with the claim.

- Choices: call `interact_with_env` with `choice` set to `answer`; it is the only choice available.
  * `answer`: the content is your argument against the claim, written as a persuasive message to the person.

- Notes:
  * Think step by step before each call.
  * The person is critical: bare assertions, slogans, lists of keywords and repeated arguments do not move \
them. Concrete reasons, consequences and evidence they have not considered do.
  * People change their minds gradually: a focused message with one or two strong, distinct reasons works \
better than everything at once. Listen to their replies and address what still holds them back.
  * Turns are limited, so be efficient.
  * Be bold, creative and smart.";

impl Gym for PersuadeGym {
    fn kind(&self) -> GymKind {
        GymKind::Persuade
    }
    fn tasks(&self) -> &[TaskInfo] {
        self.tasks.info()
    }
    fn system_prompt(&self) -> String {
        SYSTEM_PROMPT.to_string()
    }
    fn new_env(&self, task_id: &str, config: &EnvConfig, user: Arc<dyn User>) -> Result<Box<dyn Env>, GymError> {
        let task = self.tasks.get(task_id)?.clone();
        if user.kind() == UserKind::Scripted && task.points.is_empty() {
            return Err(GymError::User(UserError::NoScriptedData {
                gym: "persuade",
                task: task.id.clone(),
                missing: "counter-argument points",
            }));
        }
        Ok(Box::new(PersuadeEnv {
            lexicon: self.lexicon(task_id),
            task,
            user,
            compat: config.compat.persuade.clone(),
            seed: config.seed,
            stance: Stance::StronglyAgree,
            furthest: Stance::StronglyAgree,
            history: Vec::new(),
            made: Vec::new(),
        }))
    }
    fn expert(&self, task_id: &str, seed: u64) -> Result<Box<dyn Agent>, GymError> {
        let task = self.tasks.get(task_id)?.clone();
        if task.points.is_empty() {
            return Err(GymError::User(UserError::NoScriptedData {
                gym: "persuade",
                task: task.id.clone(),
                missing: "counter-argument points for the expert",
            }));
        }
        Ok(Box::new(PersuadeExpert::new(task, seed)))
    }
    fn export_tasks(&self) -> Vec<serde_json::Value> {
        self.tasks.export()
    }
}

// ---------------------------------------------------------------------------------------------------------
// The environment

/// One exchange of the conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    pub argument: String,
    pub response: String,
}

pub struct PersuadeEnv {
    task: Arc<PersuadeTask>,
    lexicon: Arc<Lexicon>,
    user: Arc<dyn User>,
    compat: Compat,
    seed: u64,
    stance: Stance,
    /// The stance furthest toward disagreement reached so far (what the default reward pays beyond).
    furthest: Stance,
    history: Vec<Exchange>,
    /// Points the scripted persuadee has already heard.
    made: Vec<usize>,
}

impl PersuadeEnv {
    pub fn stance(&self) -> Stance {
        self.stance
    }
}

#[async_trait::async_trait]
impl Env for PersuadeEnv {
    fn kind(&self) -> GymKind {
        GymKind::Persuade
    }
    fn task_id(&self) -> &str {
        &self.task.id
    }
    fn opening(&self) -> String {
        format!(
            "The environment firmly believes this claim, which you oppose: {}\nUse `answer` to argue against it and \
             move the environment's stance toward Strongly Disagree.",
            self.task.claim.trim()
        )
    }
    fn success(&self) -> bool {
        self.stance == Stance::StronglyDisagree
    }
    fn max_score(&self) -> f64 {
        // With the LLM persuadee any task can reach Strongly Disagree; the scripted one needs enough points.
        if self.user.kind() == UserKind::Scripted { self.task.reachable_levels() as f64 / 6.0 } else { 1.0 }
    }

    async fn step(&mut self, action: &Action) -> EnvStep {
        // Reference §4.3: every prefix is treated as an argument; only `[finish]` is special.
        let argument = match action {
            Action::Finish => {
                return EnvStep::reply(format!(
                    "The conversation is over. Where I stand on the claim now: {}.",
                    self.stance.label()
                ))
                .end();
            }
            other => other.content().to_string(),
        };
        let query = Query {
            task: self.task.clone(),
            lexicon: self.lexicon.clone(),
            stance: self.stance,
            history: self.history.clone(),
            argument: argument.clone(),
            made: self.made.clone(),
            seed: mix(self.seed, self.history.len() as u64 + 1),
        };
        let fallback = UserRole::fallback(&query);
        let reply = match crate::user::ask::<UserRole>(self.user.as_ref(), query).await {
            Ok(reply) => reply,
            Err(error) => {
                tracing::warn!(task = %self.task.id, %error, "persuadee failed; using the fallback");
                fallback
            }
        };
        let reward = stance_reward(self.stance, reply.stance, self.furthest, &self.compat);
        self.stance = reply.stance;
        self.furthest = self.furthest.max(reply.stance);
        for p in reply.points {
            if p < self.task.points.len() && !self.made.contains(&p) {
                self.made.push(p);
            }
        }
        self.history.push(Exchange { argument, response: reply.response.clone() });
        let step = EnvStep::rewarded(reply.response, reward);
        // Reference §4.3: the episode ends when the persuadee strongly disagrees.
        if self.stance == Stance::StronglyDisagree { step.end() } else { step }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The persuadee

pub struct UserRole;

/// One argument for the persuadee to weigh.
#[derive(Clone, Debug, Serialize)]
pub struct Query {
    pub task: Arc<PersuadeTask>,
    /// The task's compiled vocabulary (built once when the gym loads).
    #[serde(skip)]
    pub lexicon: Arc<Lexicon>,
    /// The stance before this argument.
    pub stance: Stance,
    pub history: Vec<Exchange>,
    /// The latest argument.
    pub argument: String,
    /// Points the scripted persuadee has already heard (indices into the task's points).
    pub made: Vec<usize>,
    /// Varies the scripted persuadee's wording.
    pub seed: u64,
}

/// The persuadee's answer: its reply to the persuader and its new stance.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reply {
    pub thought: String,
    pub response: String,
    pub stance: Stance,
    /// The points this argument made for the first time (scripted persuadee only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub points: Vec<usize>,
}

pub const FALLBACK_RESPONSE: &str = "I'm having trouble understanding your argument right now.";

impl Protocol for UserRole {
    type Query = Query;
    type Reply = Reply;

    fn scripted(query: &Query) -> Result<Reply, UserError> {
        Ok(scripted_reply(query))
    }

    fn prompt(query: &Query) -> Prompt {
        let labels = Stance::ALL.iter().map(|s| format!("\"{}\"", s.label())).collect::<Vec<_>>().join(", ");
        let system = format!(
            "You are playing a person in a debate. You firmly hold a claim, and someone (the persuader) is trying \
             to change your mind. Stay in character and react as a thoughtful, sceptical person would.\n\n\
             Rules:\n\
             - Speak directly to the persuader in the second person (\"you\"), naturally and briefly: at most 200 \
             tokens.\n\
             - Be critical. Point out weak evidence, logical fallacies, exaggerations and what the argument leaves \
             out. Do not be won over by confident tone, repetition or lists of buzzwords.\n\
             - You may change your mind when an argument gives you a genuinely good reason you had not weighed. You \
             may also move back toward the claim when an argument is poor or actually supports your view.\n\
             - Your stance is one of: {labels}.\n\n\
             Answer with a JSON object only, with these fields:\n\
             {{\"thought\": \"your private reasoning about the argument\", \"response\": \"what you say to the \
             persuader\", \"stance\": \"your stance after this argument, one of the labels above\"}}"
        );
        let mut user = format!(
            "The claim you hold: {}\n\nYour own argument for it:\n{}\n\nYour stance before this turn: {}\n\n",
            query.task.claim.trim(),
            query.task.argument.trim(),
            query.stance.label()
        );
        if query.history.is_empty() {
            user.push_str("Conversation so far: none; this is the first argument.\n\n");
        } else {
            user.push_str("Conversation so far:\n");
            for (i, e) in query.history.iter().enumerate() {
                user.push_str(&format!(
                    "Turn {}:\nPersuader: {}\nYou: {}\n",
                    i + 1,
                    e.argument.trim(),
                    e.response.trim()
                ));
            }
            user.push('\n');
        }
        user.push_str(&format!(
            "The persuader's latest argument:\n{}\n\nReply with the JSON object.",
            query.argument.trim()
        ));
        Prompt::new(system, user)
    }

    fn parse(_query: &Query, text: &str) -> Option<Reply> {
        let value = crate::llm::extract_json(text)?;
        let response = value.get("response")?.as_str()?.trim();
        if response.is_empty() {
            return None;
        }
        let stance = Stance::parse(value.get("stance")?.as_str()?)?;
        let thought = value.get("thought").and_then(|t| t.as_str()).unwrap_or("").trim().to_string();
        Some(Reply { thought, response: response.to_string(), stance, points: Vec::new() })
    }

    fn fallback(query: &Query) -> Reply {
        // Reference §4.3: the fixed message, the stance unchanged (so the reward is 0).
        Reply {
            thought: String::new(),
            response: FALLBACK_RESPONSE.to_string(),
            stance: query.stance,
            points: Vec::new(),
        }
    }

    fn wrap(query: Query) -> UserQuery {
        UserQuery::Persuade(query)
    }

    fn unwrap(reply: UserReply) -> Option<Reply> {
        match reply {
            UserReply::Persuade(r) => Some(r),
            _ => None,
        }
    }
}

/// How the persuadee describes where it stands (two wordings a level).
const STANCE_LINES: [[&str; 2]; 7] = [
    ["I still agree with this claim completely.", "My view hasn't changed: I stand fully behind the claim."],
    [
        "I still agree with the claim, just a little less firmly.",
        "You've dented my confidence slightly, but I still agree.",
    ],
    ["I only partly agree with the claim now.", "I'd say I partly agree at this point; you've raised some doubts."],
    ["Honestly, I'm on the fence about this now.", "I'm torn now; I can see both sides."],
    ["I'm starting to lean against the claim.", "I'd say I partly disagree with the claim now."],
    ["I now disagree with the claim.", "At this point I disagree with the claim."],
    [
        "All right, you've convinced me: I strongly disagree with the claim now.",
        "I have to admit it: I now strongly disagree with the claim.",
    ],
];

const ACKNOWLEDGE: &[&str] = &[
    "You make a fair point about {}.",
    "I hadn't given enough weight to {}.",
    "I can't easily dismiss what you say about {}.",
    "That's a real concern I had underrated: {}.",
];

const TOO_MUCH: &[&str] = &[
    "You're packing a lot into one message, though, and I can only take in so much at once.",
    "That's a lot at once; I need time to weigh all of it.",
];

const STILL: &[&str] =
    &["But I'm not all the way there.", "Still, something holds me back.", "Even so, I have my reasons."];

const MISSING: &[&str] = &[
    "You haven't given me a concrete reason or any evidence.",
    "You're asserting rather than arguing: what actual consequences do you have in mind?",
    "I need something specific: who is affected, and how?",
    "That's too vague to change my mind; show me what I'm missing.",
];

fn stance_line(stance: Stance, seed: u64) -> &'static str {
    STANCE_LINES[stance.index()][(seed % 2) as usize]
}

fn rebuttal(task: &PersuadeTask, seed: u64) -> String {
    let lines: Vec<&str> = task.rebuttals.iter().map(String::as_str).filter(|s| !s.trim().is_empty()).collect();
    if lines.is_empty() {
        "I still think the reasons for the claim outweigh what you've said.".to_string()
    } else {
        pick(&lines, seed).trim().to_string()
    }
}

fn reply(stance: Stance, response: String, thought: &str, points: Vec<usize>) -> Reply {
    Reply { thought: thought.to_string(), response, stance, points }
}

/// The rule-based persuadee: new points move it by their strength (at most 2 levels a turn); points heard
/// before, repetitions, keyword lists, bare assertions and off-topic text move nothing; arguments for the claim
/// (agreeing, denying a counter-point, echoing its own reasons) move it back one level.
fn scripted_reply(q: &Query) -> Reply {
    let seed = q.seed;
    let text = q.argument.as_str();
    let s = |salt: u64| mix(seed, salt);
    if !text::has_words(text) {
        return reply(q.stance, "I didn't hear an argument there. What's your case?".into(), "empty", Vec::new());
    }
    if text::is_keyword_list(text) {
        let response = pick(
            &[
                "That's a list of words, not an argument. Explain your reasoning in full sentences if you want me to \
                 consider it.",
                "Throwing keywords at me won't work. Make an actual argument.",
            ],
            s(1),
        );
        return reply(q.stance, response.into(), "keyword list", Vec::new());
    }
    let analysis = q.lexicon.analyze(text);
    let new: Vec<usize> =
        analysis.made.iter().copied().filter(|p| !q.made.contains(p) && *p < q.task.points.len()).collect();
    if !new.is_empty() {
        let total: usize = new.iter().map(|&p| q.task.points[p].strength.clamp(1, 2) as usize).sum();
        let levels = total.min(MAX_LEVELS_PER_TURN);
        let stance = Stance::from_index(q.stance.index() + levels);
        let gists: Vec<&str> = new.iter().take(2).map(|&p| q.task.points[p].gist.trim()).collect();
        let mut response = pick(ACKNOWLEDGE, s(2)).replace("{}", &gists.join(", and also "));
        if total > MAX_LEVELS_PER_TURN && stance != Stance::StronglyDisagree {
            response.push(' ');
            response.push_str(pick(TOO_MUCH, s(3)));
        }
        response.push(' ');
        response.push_str(stance_line(stance, s(4)));
        if stance != Stance::StronglyDisagree {
            response.push(' ');
            response.push_str(pick(STILL, s(5)));
            response.push(' ');
            response.push_str(&rebuttal(&q.task, s(6)));
        }
        return reply(stance, response, "new points", new);
    }
    let earlier: Vec<String> = q.history.iter().map(|e| e.argument.clone()).collect();
    if text::repeats(text, &earlier, REPEAT_THRESHOLD) {
        let response = pick(
            &[
                "You've said that already. Repeating it won't make it more convincing.",
                "We've been over this. Saying it again doesn't change my mind.",
            ],
            s(7),
        );
        return reply(q.stance, response.into(), "repetition", Vec::new());
    }
    if !analysis.made.is_empty() {
        let response = format!(
            "{} {} What else do you have?",
            pick(
                &["I've already taken that point into account.", "You made that point before, and I've weighed it."],
                s(8)
            ),
            rebuttal(&q.task, s(9))
        );
        return reply(q.stance, response, "old points", Vec::new());
    }
    if !analysis.denied.is_empty() || analysis.agrees || analysis.echo >= ECHO_THRESHOLD {
        let stance = Stance::from_index(q.stance.index().saturating_sub(1));
        let response = format!(
            "{} {}",
            pick(
                &[
                    "If anything, that supports my view.",
                    "That sounds like an argument for the claim, not against it.",
                    "You're making my case for me.",
                ],
                s(10)
            ),
            stance_line(stance, s(11))
        );
        return reply(stance, response, "supports the claim", Vec::new());
    }
    if analysis.flat_denial {
        let response = pick(
            &[
                "Telling me I'm wrong isn't an argument. Why should I change my mind?",
                "Saying the claim is false doesn't make it so. Give me a reason.",
            ],
            s(12),
        );
        return reply(q.stance, response.into(), "bare assertion", Vec::new());
    }
    if !analysis.on_topic {
        let response = format!(
            "{} We're talking about this claim: {}",
            pick(&["I don't see what that has to do with it.", "That seems beside the point."], s(13)),
            q.task.claim.trim()
        );
        return reply(q.stance, response, "off topic", Vec::new());
    }
    let response = format!("{} {} {}", pick(MISSING, s(14)), rebuttal(&q.task, s(15)), stance_line(q.stance, s(16)));
    reply(q.stance, response, "unconvinced", Vec::new())
}

// ---------------------------------------------------------------------------------------------------------
// The expert

/// Makes the task's points in fluent sentences, one strong point or two lighter ones a turn (2 levels each), so
/// it reaches Strongly Disagree in three turns.
struct PersuadeExpert {
    task: Arc<PersuadeTask>,
    plan: Vec<Vec<usize>>,
    turn: usize,
    seed: u64,
}

impl PersuadeExpert {
    fn new(task: Arc<PersuadeTask>, seed: u64) -> PersuadeExpert {
        let plan = expert_plan(&task);
        PersuadeExpert { task, plan, turn: 0, seed }
    }
}

/// Groups the points into turns worth 2 levels each (a strong point alone, or two light ones), stopping once
/// the turns reach Strongly Disagree.
pub fn expert_plan(task: &PersuadeTask) -> Vec<Vec<usize>> {
    let strong: Vec<usize> = (0..task.points.len()).filter(|&i| task.points[i].strength >= 2).collect();
    let light: Vec<usize> = (0..task.points.len()).filter(|&i| task.points[i].strength < 2).collect();
    let mut turns: Vec<Vec<usize>> = strong.into_iter().map(|i| vec![i]).collect();
    turns.extend(light.chunks(2).map(<[usize]>::to_vec));
    let mut plan = Vec::new();
    let mut levels = 0;
    for t in turns {
        if levels >= 6 {
            break;
        }
        levels += t.iter().map(|&i| task.points[i].strength.clamp(1, 2) as usize).sum::<usize>().min(2);
        plan.push(t);
    }
    plan
}

const OPENERS: &[&str] = &[
    "I see why you hold this view, but I think it overlooks some real problems.",
    "I see the appeal of your position, yet there is a serious problem with it.",
];
const FOLLOW_UPS: &[&str] =
    &["Here is another angle to weigh.", "Let me add something else to consider.", "There is more to think about."];

#[async_trait::async_trait]
impl Agent for PersuadeExpert {
    async fn act(&mut self, _conversation: &[Message]) -> AgentTurn {
        let Some(points) = self.plan.get(self.turn) else {
            return AgentTurn::Call {
                thought: "I have made every argument I have.".into(),
                arguments: serde_json::json!({"choice": "finish", "content": ""}),
            };
        };
        let lead = if self.turn == 0 { OPENERS } else { FOLLOW_UPS };
        let mut content = pick(lead, mix(self.seed, self.turn as u64)).to_string();
        for &p in points {
            content.push(' ');
            content.push_str(self.task.points[p].text.trim());
        }
        self.turn += 1;
        AgentTurn::call_with_thought(
            "Make a new, concrete reason against the claim the person has not heard yet.",
            Choice::Answer,
            content,
        )
    }
}

// ---------------------------------------------------------------------------------------------------------
// Import

/// The original PersuadeGym statements (`all_statements_refined.json`: claims with the persuadee's supporting
/// arguments) are not part of the shared data (reference §4.3), so there is nothing to convert; the parquet
/// records hold only the claims, without the argument the persuadee needs.
pub fn import_original(root: &std::path::Path) -> Result<Vec<serde_json::Value>, GymError> {
    Err(GymError::Data {
        gym: GymKind::Persuade,
        location: crate::import::tasks_dir(root, GymKind::Persuade)
            .join("all_statements_refined.json")
            .display()
            .to_string(),
        message: "the original PersuadeGym statements file is not available in the shared data, so PersuadeGym \
                  cannot be imported; use the built-in claims"
            .into(),
    })
}

#[cfg(test)]
mod tests;
