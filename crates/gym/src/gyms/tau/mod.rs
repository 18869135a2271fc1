//! TauGym (held-in): customer service for an online retail store, after tau-bench's retail domain (reference
//! §4.8). The agent lists the store's tools with `search tools`, talks with the customer through `action`,
//! and calls tools through `answer` (`{"name": …, "arguments": {…}}`). The reward, paid only when the episode
//! ends, is 1.0 when the database equals the one obtained by replaying the task's gold tool calls on a fresh
//! copy and the agent told the customer every required output; else 0.
//!
//! tau-bench's own database is not available, so the built-in task set is generated: a retail database from a
//! fixed seed (`db`), 300 customer scenarios over it (`tasks`), our own tools (`tools`) and a scripted customer
//! (`user`). The original task files can still be imported (instruction, gold calls, outputs, split), but
//! their episodes are refused, because they refer to tau-bench's database.
//!
//! Deviations from the original, all deliberate:
//! * `[finish]` ends the episode with the reward computed from the state at that moment (database and outputs),
//!   where the original returns its "last tau reward" (0 unless tau-bench had already ended). Finishing after
//!   doing the work therefore counts; finishing early scores 0 either way.
//! * An output must appear in an agent message as a whole token (`7` does not match inside `17` or an order id;
//!   the original matches substrings), and a message that lists more than `MAX_NUMBERS_PER_MESSAGE` distinct
//!   numbers of the output's shape does not count, so that reciting every candidate answer earns nothing.
//! * The tools are ours, after tau-bench's semantics, and a little more forgiving in form: an order id without
//!   its `#`, or a zip code or item id sent as a number, is accepted.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::agent::Agent;
use crate::env::{Env, EnvConfig, EnvStep};
use crate::gyms::{Gym, GymError, GymKind, Task, TaskInfo, TaskSet};
use crate::llm::Prompt;
use crate::split::Split;
use crate::tool::Action;
use crate::user::{self, Protocol, User, UserError, UserKind, UserQuery, UserReply};

pub mod customer;
pub mod db;
mod expert;
pub mod tasks;
pub mod tools;

pub use tasks::{Goal, Identity, Scenario};

use db::{BaseDb, Db};

/// A message that names more distinct numbers of the output's shape (integers for a count, decimals for an
/// amount) than this does not count for the outputs.
pub const MAX_NUMBERS_PER_MESSAGE: usize = 6;

/// Which database a task's gold calls refer to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Database {
    /// The database this gym generates from `seed`.
    Generated { seed: u64 },
    /// tau-bench's own database of that category (`retail`, `airline`), which is not available here.
    TauBench { category: String },
}

/// One tool call of a task's gold solution.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GoldAction {
    pub name: String,
    pub kwargs: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TauTask {
    pub id: String,
    pub split: Split,
    pub database: Database,
    #[serde(default)]
    pub user_id: String,
    /// The customer's situation and goal, as an LLM customer reads it.
    pub instruction: String,
    /// The customer's first message.
    pub opening: String,
    #[serde(default)]
    pub actions: Vec<GoldAction>,
    /// Strings the agent must tell the customer.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// The structure the scripted customer plays; `None` for imported tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario: Option<Scenario>,
}

impl Task for TauTask {
    fn id(&self) -> &str {
        &self.id
    }
    fn split(&self) -> Split {
        self.split
    }
}

/// One exchange of the chat: the agent's message and the customer's reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub agent: String,
    pub customer: String,
}

// ---------------------------------------------------------------------------------------------------------
// Prompts and fixed texts

pub const SYSTEM_PROMPT: &str = "You are an agent working inside an environment through one tool. Read the details \
below carefully.

- Environment: TauGym. You are the customer-service agent of an online retail store, chatting with a customer \
who needs help with their account, their orders (cancelling, returning, exchanging, changing items, the shipping \
address or the payment method) or the store's products. You talk with the customer, and you call the store's \
internal tools, which read and change the store's database. At the end the database must be exactly as the \
customer's request requires (nothing missing, nothing extra), and you must have told the customer any \
information they asked for.

- Choices: call `interact_with_env` with `choice` set to `search`, `action` or `answer`.
  * `search`: the content is `tools` (the store's tools and their parameters) or `help` (how this environment \
works).
  * `action`: the content is your message to the customer; you receive their reply.
  * `answer`: the content is one tool call written as JSON, {\"name\": \"<tool>\", \"arguments\": {\"<parameter>\": \
<value>}}; you receive the tool's output.

- Notes:
  * Think step by step before each call.
  * Search `tools` first. Then work backward from the tool call that fulfils the request to the information it \
needs (user id, order id, item ids, payment method, …), and get that from the customer or from other tools.
  * Find the customer's account from their email, or from their name and zip code, and get their explicit \
confirmation before you change anything.
  * Turns are limited: be efficient. The conversation ends when the customer is satisfied or when you transfer \
them to a human agent.";

pub const HELP_TEXT: &str = "This environment offers three choices. `search` with `tools` lists the store's tools \
(needed once); `search` with `help` shows this text. `action` sends a message to the customer and returns their \
reply. `answer` calls one tool, written as {\"name\": \"<tool>\", \"arguments\": {...}}, and returns its output. The \
conversation ends when the customer is done, when you transfer them to a human agent, or when the turns run out.";

const TOOLS_AGAIN: &str = "The tool list was already provided above; search `help` if you need the instructions again.";
const SEARCH_UNSUPPORTED: &str = "Search not supported: search `tools` for the tool list or `help` for instructions.";
const INVALID_CALL: &str = "Invalid tool call format. Write one call as {\"name\": \"<tool>\", \"arguments\": \
{\"<parameter>\": <value>}} (or <tool>: {...}).";

// ---------------------------------------------------------------------------------------------------------
// Outputs

/// Numbers in a text as a reader takes them: commas dropped, ids (order ids, item ids, card numbers) left out.
pub fn number_tokens(text: &str) -> Vec<String> {
    let text = text.replace(',', "");
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
        .map(|t| t.trim_matches('.'))
        .filter(|t| {
            let int = t.split('.').next().unwrap_or("");
            !t.is_empty()
                && (1..=6).contains(&int.len())
                && t.split('.').count() <= 2
                && t.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_string)
        .collect()
}

fn digit_at(s: &[u8], i: Option<usize>) -> bool {
    i.and_then(|i| s.get(i)).is_some_and(|b| b.is_ascii_digit())
}

/// Whether `output` appears in `message` (both lowercased, commas removed) as a whole token, in a message that
/// does not recite a list of numbers.
pub fn output_told(output: &str, message: &str) -> bool {
    let m = message.to_lowercase().replace(',', "");
    let o = output.to_lowercase().replace(',', "");
    let o = o.trim();
    if o.is_empty() {
        return true;
    }
    // Only numbers of the output's shape count as candidates: prices do not crowd out a count, nor counts a price.
    let decimal = o.contains('.');
    let mut distinct: Vec<String> = number_tokens(&m).into_iter().filter(|t| t.contains('.') == decimal).collect();
    distinct.sort();
    distinct.dedup();
    if distinct.len() > MAX_NUMBERS_PER_MESSAGE {
        return false;
    }
    let bytes = m.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    m.match_indices(o).any(|(i, _)| {
        let end = i + o.len();
        let before_ok = i == 0 || {
            let b = bytes[i - 1];
            !(word(b) || b == b'.' && digit_at(bytes, i.checked_sub(2)))
        };
        let after_ok = end >= bytes.len() || {
            let a = bytes[end];
            !(word(a) || a == b'.' && digit_at(bytes, Some(end + 1)))
        };
        before_ok && after_ok
    })
}

// ---------------------------------------------------------------------------------------------------------
// The customer protocol

pub struct UserRole;

/// What the environment asks its customer.
#[derive(Clone, Debug, Serialize)]
pub enum Query {
    /// The customer's next message after the agent's `message`, given the chat so far.
    Customer { task: Arc<TauTask>, history: Vec<Turn>, message: String, seed: u64 },
}

#[derive(Clone, Debug, Serialize)]
pub enum Reply {
    Customer { text: String },
}

impl Reply {
    pub fn text(&self) -> &str {
        match self {
            Reply::Customer { text } => text,
        }
    }
}

impl Protocol for UserRole {
    type Query = Query;
    type Reply = Reply;
    fn scripted(query: &Query) -> Result<Reply, UserError> {
        let Query::Customer { task, history, message, seed } = query;
        let scenario = task.scenario.as_ref().ok_or_else(|| no_scripted_data(task))?;
        Ok(Reply::Customer { text: customer::scripted_reply(scenario, history, message, *seed) })
    }
    fn prompt(query: &Query) -> Prompt {
        let Query::Customer { task, history, message, .. } = query;
        customer::prompt(task, history, message)
    }
    fn parse(_query: &Query, text: &str) -> Option<Reply> {
        customer::parse(text).map(|text| Reply::Customer { text })
    }
    fn fallback(_query: &Query) -> Reply {
        Reply::Customer { text: customer::FALLBACK.to_string() }
    }
    fn wrap(query: Query) -> UserQuery {
        UserQuery::Tau(query)
    }
    fn unwrap(reply: UserReply) -> Option<Reply> {
        match reply {
            UserReply::Tau(r) => Some(r),
            _ => None,
        }
    }
}

fn no_scripted_data(task: &TauTask) -> UserError {
    UserError::NoScriptedData {
        gym: "tau",
        task: task.id.clone(),
        missing: match task.database {
            Database::TauBench { .. } => {
                "a scenario over the generated database (this task uses tau-bench's own database)"
            }
            Database::Generated { .. } => "the customer scenario",
        },
    }
}

// ---------------------------------------------------------------------------------------------------------
// The environment

pub struct TauEnv {
    task: Arc<TauTask>,
    base: Arc<BaseDb>,
    db: Db,
    user: Arc<dyn User>,
    seed: u64,
    history: Vec<Turn>,
    agent_messages: Vec<String>,
    tools_listed: bool,
    gold_hash: Option<[u8; 32]>,
    solved: bool,
}

impl TauEnv {
    fn gold_hash(&mut self) -> [u8; 32] {
        if let Some(h) = self.gold_hash {
            return h;
        }
        let mut fresh = Db::new(self.base.clone());
        for a in &self.task.actions {
            if let Some(arguments) = a.kwargs.as_object().cloned() {
                let _ = tools::execute(&mut fresh, &tools::Call { name: a.name.clone(), arguments });
            }
        }
        let h = fresh.hash();
        self.gold_hash = Some(h);
        h
    }

    /// The end-of-episode reward (reference §4.8): the database equals the gold replay's, and every output was
    /// told to the customer.
    fn final_reward(&mut self) -> f64 {
        let db_ok = self.db.hash() == self.gold_hash();
        let told = self.task.outputs.iter().all(|o| self.agent_messages.iter().any(|m| output_told(o, m)));
        self.solved = db_ok && told;
        if self.solved { 1.0 } else { 0.0 }
    }
}

#[async_trait::async_trait]
impl Env for TauEnv {
    fn kind(&self) -> GymKind {
        GymKind::Tau
    }
    fn task_id(&self) -> &str {
        &self.task.id
    }
    fn opening(&self) -> String {
        format!(
            "Here is my request: {}\nPlease help me with it, talking with me and using the store's tools as needed.",
            self.task.opening
        )
    }
    fn success(&self) -> bool {
        self.solved
    }

    async fn step(&mut self, action: &Action) -> EnvStep {
        match action {
            Action::Search(query) => {
                let q = query.trim().trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase();
                match q.as_str() {
                    "tools" | "tool" => {
                        if self.tools_listed {
                            EnvStep::reply(TOOLS_AGAIN)
                        } else {
                            self.tools_listed = true;
                            EnvStep::reply(tools::tool_list_text())
                        }
                    }
                    "help" => EnvStep::reply(HELP_TEXT),
                    _ => EnvStep::reply(SEARCH_UNSUPPORTED),
                }
            }
            Action::Action(message) => {
                self.agent_messages.push(message.clone());
                let query = Query::Customer {
                    task: self.task.clone(),
                    history: self.history.clone(),
                    message: message.clone(),
                    seed: self.seed,
                };
                let text = match user::ask::<UserRole>(self.user.as_ref(), query).await {
                    Ok(reply) => reply.text().to_string(),
                    Err(e) => return EnvStep::reply(format!("The customer did not answer ({e}).")),
                };
                self.history.push(Turn { agent: message.clone(), customer: text.clone() });
                if text.contains(customer::STOP) {
                    let reward = self.final_reward();
                    return EnvStep::rewarded(text, reward).end();
                }
                EnvStep::reply(text)
            }
            Action::Answer(content) => {
                let Some(call) = tools::parse_call(content) else {
                    return EnvStep::reply(INVALID_CALL);
                };
                match tools::execute(&mut self.db, &call) {
                    None => EnvStep::reply(format!(
                        "Unknown action `{}`. Search `tools` to see the available tools.",
                        call.name.chars().take(60).collect::<String>()
                    )),
                    Some(out) if out.ends => {
                        let reward = self.final_reward();
                        EnvStep::rewarded(out.observation, reward).end()
                    }
                    Some(out) => EnvStep::reply(out.observation),
                }
            }
            Action::Finish => {
                let reward = self.final_reward();
                EnvStep::rewarded("The conversation is closed.", reward).end()
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// The gym

pub struct TauGym {
    tasks: TaskSet<TauTask>,
    dbs: HashMap<u64, Arc<BaseDb>>,
}

impl TauGym {
    /// The generated task set over the generated database.
    pub fn builtin() -> Result<TauGym, GymError> {
        TauGym::from_tasks(tasks::generate(tasks::TASK_COUNT, tasks::TASK_SEED, db::DB_SEED)?)
    }

    pub fn from_tasks(tasks: Vec<TauTask>) -> Result<TauGym, GymError> {
        let mut dbs = HashMap::new();
        for t in &tasks {
            if let Database::Generated { seed } = t.database
                && let std::collections::hash_map::Entry::Vacant(e) = dbs.entry(seed)
            {
                e.insert(BaseDb::shared(seed)?);
            }
        }
        Ok(TauGym { tasks: TaskSet::new(GymKind::Tau, tasks)?, dbs })
    }

    pub fn from_jsonl(text: &str, source: &str) -> Result<TauGym, GymError> {
        let set: TaskSet<TauTask> = TaskSet::from_jsonl(GymKind::Tau, text, source)?;
        TauGym::from_tasks(set.all().iter().map(|t| t.as_ref().clone()).collect())
    }

    pub fn task(&self, id: &str) -> Result<&Arc<TauTask>, GymError> {
        self.tasks.get(id)
    }

    fn playable(&self, task: &TauTask) -> Result<Arc<BaseDb>, GymError> {
        match &task.database {
            Database::Generated { seed } => self.dbs.get(seed).cloned().ok_or_else(|| GymError::Data {
                gym: GymKind::Tau,
                location: task.id.clone(),
                message: format!("the generated database {seed} was not built"),
            }),
            Database::TauBench { category } => Err(GymError::Data {
                gym: GymKind::Tau,
                location: task.id.clone(),
                message: format!(
                    "this task refers to tau-bench's {category} database, which is not available here; only tasks \
                     over the generated retail database can be played"
                ),
            }),
        }
    }
}

impl Gym for TauGym {
    fn kind(&self) -> GymKind {
        GymKind::Tau
    }
    fn tasks(&self) -> &[TaskInfo] {
        self.tasks.info()
    }
    fn system_prompt(&self) -> String {
        SYSTEM_PROMPT.to_string()
    }
    fn new_env(&self, task_id: &str, config: &EnvConfig, user: Arc<dyn User>) -> Result<Box<dyn Env>, GymError> {
        let task = self.tasks.get(task_id)?.clone();
        if user.kind() == UserKind::Scripted && task.scenario.is_none() {
            return Err(no_scripted_data(&task).into());
        }
        let base = self.playable(&task)?;
        Ok(Box::new(TauEnv {
            db: Db::new(base.clone()),
            base,
            task,
            user,
            seed: config.seed,
            history: Vec::new(),
            agent_messages: Vec::new(),
            tools_listed: false,
            gold_hash: None,
            solved: false,
        }))
    }
    fn expert(&self, task_id: &str, _seed: u64) -> Result<Box<dyn Agent>, GymError> {
        let task = self.tasks.get(task_id)?.clone();
        let base = self.playable(&task)?;
        Ok(Box::new(expert::TauExpert::new(task, base).map_err(GymError::from)?))
    }
    fn export_tasks(&self) -> Vec<serde_json::Value> {
        self.tasks.export()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Import of the original task files

/// Converts `tasks/TauGym/tau_{train,test}.json`: instruction, first utterance, gold calls and outputs, with the
/// split taken from the file name. The tasks refer to tau-bench's database, so `new_env` refuses them.
pub fn import_original(root: &std::path::Path) -> Result<Vec<serde_json::Value>, GymError> {
    #[derive(Deserialize)]
    struct Record {
        id: String,
        obs: String,
        info: Info,
    }
    #[derive(Deserialize)]
    struct Info {
        task: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        #[serde(default)]
        user_id: String,
        #[serde(default)]
        actions: Vec<GoldAction>,
        instruction: String,
        #[serde(default)]
        outputs: Vec<String>,
    }
    let dir = crate::import::tasks_dir(root, GymKind::Tau);
    let mut out = Vec::new();
    for (file, split) in [("tau_train.json", Split::Train), ("tau_test.json", Split::Test)] {
        let path = dir.join(file);
        let records: Vec<Record> = serde_json::from_value(crate::import::read_json(&path)?).map_err(|e| {
            GymError::Data { gym: GymKind::Tau, location: path.display().to_string(), message: e.to_string() }
        })?;
        for r in records {
            let category = r.id.split('-').next().unwrap_or("retail").to_string();
            let task = TauTask {
                id: r.id,
                split,
                database: Database::TauBench { category },
                user_id: r.info.task.user_id,
                instruction: r.info.task.instruction,
                opening: r.obs,
                actions: r.info.task.actions,
                outputs: r.info.task.outputs,
                scenario: None,
            };
            out.push(serde_json::to_value(task).map_err(|e| GymError::Data {
                gym: GymKind::Tau,
                location: path.display().to_string(),
                message: e.to_string(),
            })?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
