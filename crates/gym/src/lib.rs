//! userrl-gym: the eight UserRL environments, the one tool the agent uses to reach them, the simulated users
//! who answer (scripted or an LLM behind an OpenAI-compatible endpoint), the task sets, the expert and random
//! agents, and the episode runner that scores them.
//!
//! The crate knows nothing about the policy model or the web: an agent is anything that turns a conversation
//! into one tool call (`agent::Agent`), a user is anything that answers a gym's question (`user::User`).

pub mod agent;
pub mod env;
pub mod eval;
pub mod gyms;
pub mod human;
pub mod import;
pub mod llm;
pub mod split;
#[cfg(any(test, feature = "mock-server"))]
pub mod testserver;
pub mod text;
pub mod tool;
pub mod user;

pub use agent::{Agent, AgentTurn, Message, RandomAgent, Role};
pub use env::{Env, EnvConfig, EnvStep, Episode, Mode, Termination, Transcript, TurnRecord};
pub use gyms::{Catalog, Gym, GymError, GymKind, TaskInfo};
pub use split::Split;
pub use tool::{Action, Choice, ToolError};
pub use user::{User, UserError, UserKind, UserQuery, UserReply};
