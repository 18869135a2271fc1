//! Simulated users: one trait, several kinds. A gym asks its user a typed question (`UserQuery`: "answer this
//! yes/no question about the hidden entity", "judge this story against the hidden criteria", …) and gets a typed
//! reply. The *scripted* user answers from structured task data with rules; the *llm* user turns the same
//! question into a prompt for any OpenAI-compatible endpoint (see `llm`); a *human* user (the crowd portal)
//! answers in a browser.
//!
//! Each gym defines its questions and replies and implements `Protocol` for them; the dispatch below is the
//! only place that lists the gyms.

use std::fmt::Debug;

use serde::{Deserialize, Serialize};

use crate::gyms::{intention, persuade, search, tau, telepathy, travel, turtle};
use crate::llm::Prompt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum UserKind {
    Scripted,
    Llm,
    Human,
}

impl std::str::FromStr for UserKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "scripted" => Ok(UserKind::Scripted),
            "llm" => Ok(UserKind::Llm),
            "human" => Ok(UserKind::Human),
            other => Err(format!("unknown user kind `{other}` (expected scripted, llm or human)")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum UserError {
    #[error("the {gym} task `{task}` has no data for the scripted user ({missing}); run it with `--user llm`")]
    NoScriptedData { gym: &'static str, task: String, missing: &'static str },
    #[error("the user answered a different question than the one asked")]
    WrongReply,
    #[error("the user is gone: {0}")]
    Gone(String),
}

/// A gym's side of the conversation with its user: the questions it asks and how each kind of user answers.
pub trait Protocol {
    type Query: Clone + Debug + Serialize + Send + Sync;
    type Reply: Clone + Debug + Serialize + Send;
    /// The rule-based answer from the task's structured data.
    fn scripted(query: &Self::Query) -> Result<Self::Reply, UserError>;
    /// The prompt for an LLM playing the user or judge.
    fn prompt(query: &Self::Query) -> Prompt;
    /// Reads the LLM's text (thinking already stripped); `None` when it cannot be understood.
    fn parse(query: &Self::Query, text: &str) -> Option<Self::Reply>;
    /// The reply used when the LLM fails or answers garbage (the original's fallbacks).
    fn fallback(query: &Self::Query) -> Self::Reply;
    fn wrap(query: Self::Query) -> UserQuery;
    fn unwrap(reply: UserReply) -> Option<Self::Reply>;
}

macro_rules! gym_protocols {
    ($($variant:ident => $module:ident),* $(,)?) => {
        /// A question from a gym to its user.
        #[derive(Clone, Debug, Serialize)]
        #[serde(tag = "gym", content = "query", rename_all = "lowercase")]
        pub enum UserQuery { $($variant(<$module::UserRole as Protocol>::Query)),* }

        /// The user's answer.
        #[derive(Clone, Debug, Serialize)]
        #[serde(tag = "gym", content = "reply", rename_all = "lowercase")]
        pub enum UserReply { $($variant(<$module::UserRole as Protocol>::Reply)),* }

        impl UserQuery {
            pub fn scripted_reply(&self) -> Result<UserReply, UserError> {
                match self { $(UserQuery::$variant(q) => <$module::UserRole as Protocol>::scripted(q).map(UserReply::$variant)),* }
            }
            pub fn prompt(&self) -> Prompt {
                match self { $(UserQuery::$variant(q) => <$module::UserRole as Protocol>::prompt(q)),* }
            }
            pub fn parse_llm(&self, text: &str) -> Option<UserReply> {
                match self { $(UserQuery::$variant(q) => <$module::UserRole as Protocol>::parse(q, text).map(UserReply::$variant)),* }
            }
            pub fn fallback(&self) -> UserReply {
                match self { $(UserQuery::$variant(q) => UserReply::$variant(<$module::UserRole as Protocol>::fallback(q))),* }
            }
        }
    };
}

gym_protocols! {
    Turtle => turtle,
    Telepathy => telepathy,
    Persuade => persuade,
    Intention => intention,
    Search => search,
    Travel => travel,
    Tau => tau,
}

/// Someone (or something) who answers a gym's questions.
#[async_trait::async_trait]
pub trait User: Send + Sync {
    fn kind(&self) -> UserKind;
    async fn reply(&self, query: &UserQuery) -> Result<UserReply, UserError>;
    /// Whether the user is gone for good (a person who timed out or quit): the episode runner then stops the
    /// episode as `Termination::Abandoned` instead of playing on against fallbacks.
    fn abandoned(&self) -> bool {
        false
    }
}

/// Asks `user` a question of protocol `P` and returns the typed reply.
pub async fn ask<P: Protocol>(user: &dyn User, query: P::Query) -> Result<P::Reply, UserError> {
    let reply = user.reply(&P::wrap(query)).await?;
    P::unwrap(reply).ok_or(UserError::WrongReply)
}

/// The embedded default: deterministic rules over the task's structured data, microseconds a reply.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScriptedUser;

#[async_trait::async_trait]
impl User for ScriptedUser {
    fn kind(&self) -> UserKind {
        UserKind::Scripted
    }
    async fn reply(&self, query: &UserQuery) -> Result<UserReply, UserError> {
        query.scripted_reply()
    }
}
