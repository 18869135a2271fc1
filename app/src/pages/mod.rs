//! The pages, one module each, with the server functions they call in `crate::api`.

pub mod admin;
pub mod chat;
pub mod episode;
pub mod eval;
pub mod run;
pub mod runs;
pub mod studies;
pub mod study;
pub mod transcripts;
