//! SearchGym — PLACEHOLDER under construction (replaced by the real module).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::agent::Agent;
use crate::env::{Env, EnvConfig};
use crate::gyms::{Gym, GymError, GymKind, Task, TaskInfo, TaskSet};
use crate::llm::Prompt;
use crate::split::Split;
use crate::user::{Protocol, User, UserError, UserQuery, UserReply};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchTask {
    pub id: String,
    pub split: Split,
}

impl Task for SearchTask {
    fn id(&self) -> &str {
        &self.id
    }
    fn split(&self) -> Split {
        self.split
    }
}

pub struct SearchGym {
    tasks: TaskSet<SearchTask>,
}

impl SearchGym {
    pub fn builtin() -> Result<SearchGym, GymError> {
        Ok(SearchGym { tasks: TaskSet::new(GymKind::Search, Vec::new())? })
    }
    pub fn from_jsonl(text: &str, source: &str) -> Result<SearchGym, GymError> {
        Ok(SearchGym { tasks: TaskSet::from_jsonl(GymKind::Search, text, source)? })
    }
}

impl Gym for SearchGym {
    fn kind(&self) -> GymKind {
        GymKind::Search
    }
    fn tasks(&self) -> &[TaskInfo] {
        self.tasks.info()
    }
    fn system_prompt(&self) -> String {
        String::new()
    }
    fn new_env(&self, task_id: &str, _config: &EnvConfig, _user: Arc<dyn User>) -> Result<Box<dyn Env>, GymError> {
        Err(GymError::UnknownTask { gym: GymKind::Search, task: task_id.to_string() })
    }
    fn expert(&self, task_id: &str, _seed: u64) -> Result<Box<dyn Agent>, GymError> {
        Err(GymError::UnknownTask { gym: GymKind::Search, task: task_id.to_string() })
    }
    fn export_tasks(&self) -> Vec<serde_json::Value> {
        self.tasks.export()
    }
}

pub struct UserRole;

#[derive(Clone, Debug, Serialize)]
pub enum Query {}

#[derive(Clone, Debug, Serialize)]
pub enum Reply {}

impl Protocol for UserRole {
    type Query = Query;
    type Reply = Reply;
    fn scripted(query: &Query) -> Result<Reply, UserError> {
        match *query {}
    }
    fn prompt(query: &Query) -> Prompt {
        match *query {}
    }
    fn parse(query: &Query, _text: &str) -> Option<Reply> {
        match *query {}
    }
    fn fallback(query: &Query) -> Reply {
        match *query {}
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

/// Converts the original task files (PLACEHOLDER).
pub fn import_original(root: &std::path::Path) -> Result<Vec<serde_json::Value>, GymError> {
    Err(GymError::Data { gym: GymKind::Search, location: root.display().to_string(), message: "not yet".into() })
}
