//! SearchGym (held-out): the agent answers a factual question by querying a search engine and then stating a
//! short answer, which a judge checks against the gold answer (reference §4.6).
//!
//! The original searched the web through Serper. Here the engine is tantivy (BM25) over an offline corpus: a
//! procedurally generated fictional world (`world`) of a few thousand encyclopedia entries, indexed in RAM once
//! per process (`corpus`) and shared by every episode. The built-in questions are generated from the same
//! world, single-hop ("Who founded Taskel Works?") and two-hop ("Who founded the company that built the
//! Korrin Bridge?"), so every fact is findable and none can be known from outside.
//!
//! Rules (§4.6): `search` shows up to five results; at most five searches an episode (later ones get a message
//! and still use the turn); `answer` is correct on a normalised exact match with the gold answer or an alias,
//! else the judge (the user: `judge` when scripted, an LLM otherwise) decides; a correct answer pays 1.0 and
//! ends the episode; a judge failure counts as incorrect. There is no known bug of the original to reproduce,
//! so this gym has no `Compat` switches.

pub mod corpus;
pub mod judge;
pub mod world;

use std::sync::{Arc, LazyLock};

use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentTurn, Message};
use crate::env::{Env, EnvConfig, EnvStep};
use crate::gyms::{Gym, GymError, GymKind, Task, TaskInfo, TaskSet};
use crate::llm::{Prompt, extract_json};
use crate::split::{self, Split};
use crate::tool::{Action, Choice};
use crate::user::{self, Protocol, User, UserError, UserQuery, UserReply};

pub use corpus::Corpus;
pub use world::{AnswerKind, Hop};

/// Searches allowed in one episode (the original's `max_search_steps`).
pub const MAX_SEARCHES: usize = 5;
const TEST_FRACTION: f64 = 0.2;
const SPLIT_SEED: u64 = 0x005E_A2C4;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchTask {
    pub id: String,
    pub split: Split,
    pub question: String,
    /// The gold answer.
    pub answer: String,
    /// Other accepted spellings (a surname alone, "Orvan Sea" for "Sea of Orvan"…).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// What the answer names; `None` for imported questions.
    #[serde(default)]
    pub answer_kind: Option<AnswerKind>,
    /// The searches that lead to the answer, one per fact; empty for imported questions.
    #[serde(default)]
    pub hops: Vec<Hop>,
}

impl Task for SearchTask {
    fn id(&self) -> &str {
        &self.id
    }
    fn split(&self) -> Split {
        self.split
    }
}

/// The generated world (pure data, no index), shared by the task generator and the scripted judge.
static WORLD: LazyLock<world::World> = LazyLock::new(|| world::generate(world::WORLD_SEED, world::QUESTION_COUNT));

/// The one search index of the process.
static CORPUS: LazyLock<Result<Arc<Corpus>, String>> =
    LazyLock::new(|| Corpus::build(WORLD.docs.clone()).map(Arc::new).map_err(|e| e.to_string()));

/// The shared corpus of the built-in world (built on first use).
pub fn corpus() -> Result<Arc<Corpus>, GymError> {
    CORPUS.as_ref().map(Arc::clone).map_err(|message| GymError::Data {
        gym: GymKind::Search,
        location: "search index".into(),
        message: message.clone(),
    })
}

/// The built-in questions: generated from the world, split 160 train / 40 test by a seeded shuffle.
pub fn builtin_tasks() -> Vec<SearchTask> {
    let splits = split::assign(WORLD.questions.len(), TEST_FRACTION, SPLIT_SEED);
    WORLD
        .questions
        .iter()
        .zip(splits)
        .enumerate()
        .map(|(i, (q, split))| SearchTask {
            id: format!("search-{i:03}"),
            split,
            question: q.question.clone(),
            answer: q.answer.clone(),
            aliases: q.aliases.clone(),
            answer_kind: Some(q.kind),
            hops: q.hops.clone(),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Import of the original `questions.json` (Bamboogle)

/// Converts `tasks/SearchGym/questions.json` (Bamboogle). All 125 are test questions in the original
/// (`bamboogle_multiturn/test.parquet`); the parquet ids decide when the file is present.
///
/// Our corpus does not contain Bamboogle's real-world facts, so these questions can only be answered by an agent
/// that knows them, and judged fairly only by the LLM judge. The scripted judge still works on them by string
/// match against the gold answer, so they may run with the scripted user.
pub fn import_original(root: &std::path::Path) -> Result<Vec<serde_json::Value>, GymError> {
    #[derive(Deserialize)]
    struct Original {
        id: String,
        question: String,
        answer: String,
    }
    let path = crate::import::tasks_dir(root, GymKind::Search).join("questions.json");
    let value = crate::import::read_json(&path)?;
    let bad = |message: String| GymError::Data { gym: GymKind::Search, location: path.display().to_string(), message };
    let originals: Vec<Original> = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    let test_ids: std::collections::HashSet<String> =
        crate::import::parquet_ids(root, "bamboogle_multiturn", "test")?.into_iter().collect();
    originals
        .into_iter()
        .map(|o| {
            let split = if test_ids.is_empty() || test_ids.contains(&o.id) { Split::Test } else { Split::Train };
            let task = SearchTask {
                id: o.id,
                split,
                question: o.question,
                answer: o.answer,
                aliases: Vec::new(),
                answer_kind: None,
                hops: Vec::new(),
            };
            serde_json::to_value(task).map_err(|e| bad(e.to_string()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// The gym

pub struct SearchGym {
    tasks: TaskSet<SearchTask>,
    corpus: Arc<Corpus>,
}

impl SearchGym {
    pub fn builtin() -> Result<SearchGym, GymError> {
        SearchGym::from_tasks(builtin_tasks())
    }

    pub fn from_tasks(tasks: Vec<SearchTask>) -> Result<SearchGym, GymError> {
        for t in &tasks {
            if t.answer.trim().is_empty() || t.question.trim().is_empty() {
                return Err(GymError::Data {
                    gym: GymKind::Search,
                    location: t.id.clone(),
                    message: "a task needs a question and a gold answer".into(),
                });
            }
        }
        Ok(SearchGym { tasks: TaskSet::new(GymKind::Search, tasks)?, corpus: corpus()? })
    }

    pub fn from_jsonl(text: &str, source: &str) -> Result<SearchGym, GymError> {
        let set: TaskSet<SearchTask> = TaskSet::from_jsonl(GymKind::Search, text, source)?;
        SearchGym::from_tasks(set.all().iter().map(|t| t.as_ref().clone()).collect())
    }

    /// The best `k` documents for `query` as (title, snippet) pairs, best first.
    pub fn search(&self, query: &str, k: usize) -> Vec<(String, String)> {
        self.corpus.search(query, k)
    }

    pub fn corpus(&self) -> &Arc<Corpus> {
        &self.corpus
    }

    pub fn task(&self, id: &str) -> Result<&Arc<SearchTask>, GymError> {
        self.tasks.get(id)
    }
}

pub const SYSTEM_PROMPT: &str = "You are an agent working inside an environment through one tool. Read the details \
below carefully.

- Environment: SearchGym. You must answer a factual question. The facts you need are in a document collection \
that you can query with a search engine. A question may need several facts found one after another, for \
example first which company built something and then who founded that company.

- Choices: call `interact_with_env` with `choice` set to `search` or `answer`.
  * `search`: the content is a search query in plain words. You receive up to 5 documents, each with its title \
and a snippet. You may search at most 5 times in one episode.
  * `answer`: the content is your final answer, as short as possible: just the name, year or place asked for. \
A correct answer ends the episode; a wrong one only costs a turn.

- Notes:
  * Think step by step before each call.
  * Make a plan: split the question into the facts it depends on, search for one fact at a time, and use the \
names you find in the next query.
  * Give exactly one answer. An answer that lists several candidates counts as wrong.
  * Turns are limited: be efficient, and answer as soon as the search results support it.";

impl Gym for SearchGym {
    fn kind(&self) -> GymKind {
        GymKind::Search
    }
    fn tasks(&self) -> &[TaskInfo] {
        self.tasks.info()
    }
    fn system_prompt(&self) -> String {
        SYSTEM_PROMPT.to_string()
    }
    fn new_env(&self, task_id: &str, _config: &EnvConfig, user: Arc<dyn User>) -> Result<Box<dyn Env>, GymError> {
        // Every task can be judged by the scripted user: it needs only the gold answer, which imported
        // questions have too.
        let task = self.tasks.get(task_id)?.clone();
        Ok(Box::new(SearchEnv { task, corpus: self.corpus.clone(), user, searches: 0, solved: false }))
    }
    fn expert(&self, task_id: &str, _seed: u64) -> Result<Box<dyn Agent>, GymError> {
        let task = self.tasks.get(task_id)?.clone();
        Ok(Box::new(SearchExpert { task, turn: 0 }))
    }
    fn export_tasks(&self) -> Vec<serde_json::Value> {
        self.tasks.export()
    }
}

// ---------------------------------------------------------------------------------------------------------
// The environment

pub struct SearchEnv {
    task: Arc<SearchTask>,
    corpus: Arc<Corpus>,
    user: Arc<dyn User>,
    searches: usize,
    solved: bool,
}

/// Whether `answer` equals the gold answer or an alias after normalisation (the original's rule check).
pub fn exact_match(task: &SearchTask, answer: &str) -> bool {
    let a = judge::normalise(answer);
    !a.is_empty() && std::iter::once(&task.answer).chain(&task.aliases).any(|g| judge::normalise(g) == a)
}

#[async_trait::async_trait]
impl Env for SearchEnv {
    fn kind(&self) -> GymKind {
        GymKind::Search
    }
    fn task_id(&self) -> &str {
        &self.task.id
    }
    fn opening(&self) -> String {
        format!(
            "{}\nPlan which facts you need, look them up with the search engine one at a time, and then give a \
             short final answer.",
            self.task.question
        )
    }
    fn success(&self) -> bool {
        self.solved
    }

    async fn step(&mut self, action: &Action) -> EnvStep {
        match action {
            Action::Search(query) => {
                if self.searches >= MAX_SEARCHES {
                    return EnvStep::reply(format!(
                        "You have reached the maximum number of searches ({MAX_SEARCHES}) for this question. Answer \
                         with the information you have."
                    ));
                }
                self.searches += 1;
                let results = self.corpus.search(query, corpus::MAX_RESULTS);
                EnvStep::reply(corpus::format_results(query.trim(), &results))
            }
            Action::Answer(answer) => {
                let answer = answer.trim();
                if exact_match(&self.task, answer) {
                    self.solved = true;
                    return EnvStep::rewarded(format!("Correct! Your answer '{answer}' is correct."), 1.0).end();
                }
                let query = Query::Judge { task: self.task.clone(), answer: answer.to_string() };
                // A judge that fails or answers garbage counts as "incorrect" (reference §4.6).
                let reply = match user::ask::<UserRole>(self.user.as_ref(), query.clone()).await {
                    Ok(reply) => reply,
                    Err(error) => {
                        tracing::warn!(%error, task = %self.task.id, "search judge failed; counting the answer as incorrect");
                        UserRole::fallback(&query)
                    }
                };
                let Reply::Judgment { correct, feedback, .. } = reply;
                if correct {
                    self.solved = true;
                    EnvStep::rewarded(format!("Correct! Your answer '{answer}' is correct."), 1.0).end()
                } else {
                    let feedback = safe_feedback(&self.task, &feedback);
                    EnvStep::reply(
                        format!("Incorrect. Your answer '{answer}' is not correct. {feedback}").trim_end().to_string(),
                    )
                }
            }
            Action::Action(_) => EnvStep::reply(
                "Invalid action: this environment only accepts `search` (a query) and `answer` (a short answer).",
            ),
            Action::Finish => EnvStep::reply("The episode is over.").end(),
        }
    }
}

/// The judge's feedback unless it gives the gold answer away (an LLM judge may, despite its instructions).
fn safe_feedback(task: &SearchTask, feedback: &str) -> String {
    let leaks = std::iter::once(&task.answer).chain(&task.aliases).any(|g| judge::mentions(feedback, g));
    if leaks {
        "Search for the facts the question depends on and try again.".to_string()
    } else {
        feedback.trim().to_string()
    }
}

// ---------------------------------------------------------------------------------------------------------
// The user: an answer judge

pub struct UserRole;

#[derive(Clone, Debug, Serialize)]
pub enum Query {
    /// Is `answer` a correct answer to the task's question? (Asked only after the exact match failed.)
    Judge { task: Arc<SearchTask>, answer: String },
}

#[derive(Clone, Debug, Serialize)]
pub enum Reply {
    Judgment { correct: bool, reasoning: String, feedback: String },
}

const JUDGE_SYSTEM: &str = "You grade answers in a question-answering game. You compare a player's answer with \
the reference answer and decide whether the player got it right. You never reveal the reference answer.";

impl Protocol for UserRole {
    type Query = Query;
    type Reply = Reply;

    fn scripted(query: &Query) -> Result<Reply, UserError> {
        let Query::Judge { task, answer } = query;
        let lexicon = judge::Lexicon { names: &WORLD.lexicon, first_names: &WORLD.first_names };
        let verdict = judge::judge(answer, &task.answer, &task.aliases, task.answer_kind, &lexicon);
        Ok(Reply::Judgment {
            correct: verdict.correct,
            reasoning: "Rule-based comparison with the reference answer.".into(),
            feedback: verdict.feedback,
        })
    }

    fn prompt(query: &Query) -> Prompt {
        let Query::Judge { task, answer } = query;
        let user = format!(
            "Question: {}\nPlayer's answer: {}\nReference answer: {}\n\n\
             Decide whether the player's answer is correct in the context of the question. Count it as correct when \
             it states the same fact as the reference: an exact match, an equivalent form (another spelling, an \
             abbreviation, a number written in words, the answer inside a short sentence) or a synonym. Count it as \
             incorrect when it states something else, is vaguer than the question asks, or offers several candidates \
             instead of one.\n\n\
             Reply with one JSON object and nothing else:\n\
             {{\"reasoning\": \"a brief justification\", \"judgment\": \"Yes\" or \"No\", \"feedback\": \"one sentence \
             for the player\"}}\n\
             The feedback must not contain or hint at the reference answer.",
            task.question, answer, task.answer
        );
        let mut prompt = Prompt::new(JUDGE_SYSTEM, user);
        prompt.max_tokens = Some(512);
        prompt
    }

    fn parse(_query: &Query, text: &str) -> Option<Reply> {
        let value = extract_json(text)?;
        let correct = match &value["judgment"] {
            serde_json::Value::String(s) => {
                match s.trim().trim_matches(|c: char| !c.is_alphanumeric()).to_ascii_lowercase().as_str() {
                    "yes" | "correct" | "true" => true,
                    "no" | "incorrect" | "false" => false,
                    _ => return None,
                }
            }
            serde_json::Value::Bool(b) => *b,
            _ => return None,
        };
        let field = |name: &str| value[name].as_str().unwrap_or("").trim().to_string();
        Some(Reply::Judgment { correct, reasoning: field("reasoning"), feedback: field("feedback") })
    }

    fn fallback(_query: &Query) -> Reply {
        Reply::Judgment {
            correct: false,
            reasoning: "The judge could not be reached or did not answer in the expected format.".into(),
            feedback: "The answer could not be verified.".into(),
        }
    }

    fn wrap(query: Query) -> UserQuery {
        UserQuery::Search(query)
    }

    fn unwrap(reply: UserReply) -> Option<Reply> {
        match reply {
            UserReply::Search(r) => Some(r),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The expert

/// Searches once per fact along the question's hop chain (the question itself for imported tasks), then
/// answers the gold answer, which it knows.
struct SearchExpert {
    task: Arc<SearchTask>,
    turn: usize,
}

#[async_trait::async_trait]
impl Agent for SearchExpert {
    async fn act(&mut self, _conversation: &[Message]) -> AgentTurn {
        let turn = self.turn;
        self.turn += 1;
        let searches: Vec<&str> = if self.task.hops.is_empty() {
            vec![self.task.question.as_str()]
        } else {
            self.task.hops.iter().map(|h| h.query.as_str()).take(MAX_SEARCHES).collect()
        };
        match searches.get(turn) {
            Some(query) => {
                let thought = match (turn, self.task.hops.get(turn.wrapping_sub(1))) {
                    (0, _) => "First I look up the entity the question starts from.".to_string(),
                    (_, Some(prev)) => format!("The last search showed {}; now I look that up.", prev.finds),
                    _ => "I look up the next fact.".to_string(),
                };
                AgentTurn::call_with_thought(thought, Choice::Search, *query)
            }
            None => AgentTurn::call_with_thought(
                "The search results give the answer.",
                Choice::Answer,
                self.task.answer.clone(),
            ),
        }
    }
}

#[cfg(test)]
mod tests;
