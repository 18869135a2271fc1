//! The eight gyms and what they share: the `GymKind` list (names, allowed choices, held-in/held-out roles),
//! the `Gym` trait (a task set that makes environments and experts), typed task sets loaded from the embedded
//! data or from JSONL files, and the `Catalog` that holds all of them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::agent::Agent;
use crate::env::{Env, EnvConfig};
use crate::split::Split;
use crate::tool::Choice;
use crate::user::{User, UserError};

pub mod function;
pub mod intention;
pub mod persuade;
pub mod search;
pub mod tau;
pub mod telepathy;
pub mod travel;
pub mod turtle;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum GymKind {
    Intention,
    Turtle,
    Persuade,
    Telepathy,
    Function,
    Travel,
    Tau,
    Search,
}

impl GymKind {
    pub const ALL: [GymKind; 8] = [
        GymKind::Intention,
        GymKind::Turtle,
        GymKind::Persuade,
        GymKind::Telepathy,
        GymKind::Function,
        GymKind::Travel,
        GymKind::Tau,
        GymKind::Search,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GymKind::Intention => "intention",
            GymKind::Turtle => "turtle",
            GymKind::Persuade => "persuade",
            GymKind::Telepathy => "telepathy",
            GymKind::Function => "function",
            GymKind::Travel => "travel",
            GymKind::Tau => "tau",
            GymKind::Search => "search",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            GymKind::Intention => "IntentionGym",
            GymKind::Turtle => "TurtleGym",
            GymKind::Persuade => "PersuadeGym",
            GymKind::Telepathy => "TelepathyGym",
            GymKind::Function => "FunctionGym",
            GymKind::Travel => "TravelGym",
            GymKind::Tau => "TauGym",
            GymKind::Search => "SearchGym",
        }
    }

    /// The choices the gym's system prompt offers (reference §4.9).
    pub fn allowed_choices(self) -> &'static [Choice] {
        use Choice::*;
        match self {
            GymKind::Turtle | GymKind::Telepathy => &[Action, Answer],
            GymKind::Persuade => &[Answer],
            GymKind::Intention => &[Action],
            GymKind::Search => &[Search, Answer],
            GymKind::Function | GymKind::Travel | GymKind::Tau => &[Search, Action, Answer],
        }
    }

    /// Held-in gyms are trained on; held-out gyms are only evaluated (reference §5).
    pub fn held_in(self) -> bool {
        matches!(self, GymKind::Travel | GymKind::Tau | GymKind::Turtle | GymKind::Persuade | GymKind::Function)
    }

    pub fn parse(s: &str) -> Option<GymKind> {
        let s = s.trim().to_ascii_lowercase();
        let s = s.strip_suffix("gym").unwrap_or(&s);
        GymKind::ALL.into_iter().find(|k| k.name() == s || (s == "intent" && *k == GymKind::Intention))
    }

    /// Parses `all` or a comma-separated list of gym names.
    pub fn parse_list(s: &str) -> Result<Vec<GymKind>, String> {
        if s.trim().eq_ignore_ascii_case("all") {
            return Ok(GymKind::ALL.to_vec());
        }
        s.split(',')
            .map(|name| {
                GymKind::parse(name).ok_or_else(|| format!("unknown gym `{}` (known: {})", name.trim(), Self::names()))
            })
            .collect()
    }

    pub fn names() -> String {
        GymKind::ALL.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
    }
}

impl std::fmt::Display for GymKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GymError {
    #[error("{gym} has no task `{task}`")]
    UnknownTask { gym: GymKind, task: String },
    #[error(transparent)]
    User(#[from] UserError),
    #[error("bad {gym} task data in {location}: {message}")]
    Data { gym: GymKind, location: String, message: String },
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
}

/// A task's id and split, as listed by a gym.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub id: String,
    pub split: Split,
}

/// One gym with its task set.
pub trait Gym: Send + Sync {
    fn kind(&self) -> GymKind;
    fn tasks(&self) -> &[TaskInfo];
    /// The system prompt the agent reads: the environment, its choices and their formats, the rules, and the
    /// hint to be efficient.
    fn system_prompt(&self) -> String;
    /// A fresh environment for one task. Fails when the task is unknown or the user cannot play it (a scripted
    /// user on imported data that lacks the structure it needs).
    fn new_env(&self, task_id: &str, config: &EnvConfig, user: Arc<dyn User>) -> Result<Box<dyn Env>, GymError>;
    /// The gym's scripted expert for one task (it may know the hidden answer; its dialogue is a valid play).
    fn expert(&self, task_id: &str, seed: u64) -> Result<Box<dyn Agent>, GymError>;
    /// The tasks in this project's JSONL task format, one JSON object a task.
    fn export_tasks(&self) -> Vec<serde_json::Value>;

    fn task_ids(&self, split: Option<Split>) -> Vec<String> {
        self.tasks().iter().filter(|t| split.is_none_or(|s| t.split == s)).map(|t| t.id.clone()).collect()
    }
}

/// A task record of one gym: identified, assigned to a split, serialisable in the JSONL task format.
pub trait Task: Serialize + DeserializeOwned + Send + Sync {
    fn id(&self) -> &str;
    fn split(&self) -> Split;
}

/// Tasks of one gym, indexed by id.
pub struct TaskSet<T> {
    kind: GymKind,
    tasks: Vec<Arc<T>>,
    info: Vec<TaskInfo>,
    index: HashMap<String, usize>,
}

impl<T: Task> TaskSet<T> {
    pub fn new(kind: GymKind, tasks: Vec<T>) -> Result<TaskSet<T>, GymError> {
        let mut index = HashMap::with_capacity(tasks.len());
        for (i, task) in tasks.iter().enumerate() {
            if index.insert(task.id().to_string(), i).is_some() {
                return Err(GymError::Data {
                    gym: kind,
                    location: format!("task {i}"),
                    message: format!("duplicate task id `{}`", task.id()),
                });
            }
        }
        let info = tasks.iter().map(|t| TaskInfo { id: t.id().to_string(), split: t.split() }).collect();
        Ok(TaskSet { kind, tasks: tasks.into_iter().map(Arc::new).collect(), info, index })
    }

    /// Reads one task per line; blank lines are skipped; errors name the line.
    pub fn from_jsonl(kind: GymKind, text: &str, source: &str) -> Result<TaskSet<T>, GymError> {
        let mut tasks = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let task = serde_json::from_str(line).map_err(|e| GymError::Data {
                gym: kind,
                location: format!("{source}:{}", n + 1),
                message: e.to_string(),
            })?;
            tasks.push(task);
        }
        TaskSet::new(kind, tasks)
    }

    pub fn get(&self, id: &str) -> Result<&Arc<T>, GymError> {
        self.index
            .get(id)
            .map(|&i| &self.tasks[i])
            .ok_or_else(|| GymError::UnknownTask { gym: self.kind, task: id.to_string() })
    }

    pub fn all(&self) -> &[Arc<T>] {
        &self.tasks
    }

    pub fn info(&self) -> &[TaskInfo] {
        &self.info
    }

    pub fn export(&self) -> Vec<serde_json::Value> {
        self.tasks.iter().filter_map(|t| serde_json::to_value(t.as_ref()).ok()).collect()
    }
}

/// Builds one gym from the embedded task set.
pub fn builtin(kind: GymKind) -> Result<Arc<dyn Gym>, GymError> {
    Ok(match kind {
        GymKind::Function => Arc::new(function::FunctionGym::builtin()?),
        GymKind::Intention => Arc::new(intention::IntentionGym::builtin()?),
        GymKind::Persuade => Arc::new(persuade::PersuadeGym::builtin()?),
        GymKind::Search => Arc::new(search::SearchGym::builtin()?),
        GymKind::Tau => Arc::new(tau::TauGym::builtin()?),
        GymKind::Telepathy => Arc::new(telepathy::TelepathyGym::builtin()?),
        GymKind::Travel => Arc::new(travel::TravelGym::builtin()?),
        GymKind::Turtle => Arc::new(turtle::TurtleGym::builtin()?),
    })
}

/// Builds one gym from a JSONL task file in this project's format.
pub fn from_jsonl(kind: GymKind, text: &str, source: &str) -> Result<Arc<dyn Gym>, GymError> {
    Ok(match kind {
        GymKind::Function => Arc::new(function::FunctionGym::from_jsonl(text, source)?),
        GymKind::Intention => Arc::new(intention::IntentionGym::from_jsonl(text, source)?),
        GymKind::Persuade => Arc::new(persuade::PersuadeGym::from_jsonl(text, source)?),
        GymKind::Search => Arc::new(search::SearchGym::from_jsonl(text, source)?),
        GymKind::Tau => Arc::new(tau::TauGym::from_jsonl(text, source)?),
        GymKind::Telepathy => Arc::new(telepathy::TelepathyGym::from_jsonl(text, source)?),
        GymKind::Travel => Arc::new(travel::TravelGym::from_jsonl(text, source)?),
        GymKind::Turtle => Arc::new(turtle::TurtleGym::from_jsonl(text, source)?),
    })
}

/// The gyms a run uses.
#[derive(Clone, Default)]
pub struct Catalog {
    gyms: Vec<Arc<dyn Gym>>,
}

impl Catalog {
    /// The embedded task sets of the given gyms.
    pub fn builtin(kinds: &[GymKind]) -> Result<Catalog, GymError> {
        Ok(Catalog { gyms: kinds.iter().map(|&k| builtin(k)).collect::<Result<_, _>>()? })
    }

    /// Task files `<dir>/<gym>.jsonl` (as `userrl data import` writes them) for the given gyms that have one.
    pub fn from_dir(dir: &Path, kinds: &[GymKind]) -> Result<Catalog, GymError> {
        let mut gyms = Vec::new();
        for &kind in kinds {
            let path = dir.join(format!("{}.jsonl", kind.name()));
            if !path.exists() {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| GymError::Io { path: path.display().to_string(), message: e.to_string() })?;
            gyms.push(from_jsonl(kind, &text, &path.display().to_string())?);
        }
        Ok(Catalog { gyms })
    }

    pub fn gyms(&self) -> &[Arc<dyn Gym>] {
        &self.gyms
    }

    pub fn get(&self, kind: GymKind) -> Option<&Arc<dyn Gym>> {
        self.gyms.iter().find(|g| g.kind() == kind)
    }
}
