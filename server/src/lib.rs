//! The `userrl` binary's library half: every subcommand, and `serve` (the axum server, its job manager and
//! JSON API). A library so that integration tests and benches can start the server in-process.

pub mod chat;
pub mod commands;
pub mod episodes;
pub mod openai;
pub mod serve;
#[cfg(test)]
mod test_support;
