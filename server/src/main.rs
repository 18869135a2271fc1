//! `userrl`: the command-line entry point. Lists the gyms, plays one in the terminal, evaluates agents
//! across gyms and users, imports the original UserRL task files, generates with the policy model, serves the
//! web app with its job manager, and runs the benchmarks.

use anyhow::Result;
use clap::{Parser, Subcommand};
use userrl_server::commands;

#[derive(Parser)]
#[command(name = "userrl", version, about = "Train and evaluate user-centric interactive agents (UserRL gyms)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the gyms with their choices, task counts per split and held-in/held-out role.
    Gyms(commands::gyms::Args),
    /// Play a gym as the agent in the terminal.
    Play(commands::play::Args),
    /// Evaluate an agent over gyms and print the per-gym table.
    Eval(commands::eval::Args),
    /// Generate one chat answer from a model (.gguf or checkpoint directory) on the CPU.
    Generate(commands::generate::Args),
    /// Train a policy: SFT cold start and/or multi-turn GRPO, as a run config says.
    Train(commands::train::Args),
    /// Write SFT cold-start data: expert trajectories as chat records with tool calls (JSONL).
    SftData(commands::sft_data::Args),
    /// Task data: import the original UserRL files.
    Data {
        #[command(subcommand)]
        command: commands::data::Command,
    },
    /// Serve the web app, the JSON API and the job manager (http://127.0.0.1:3000 by default).
    Serve(commands::serve::Args),
    /// Benchmarks: gym step throughput, LLM-client overhead, the policy engine on the CPU.
    Bench {
        #[command(subcommand)]
        command: commands::bench::Command,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,userrl_server::serve=info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Gyms(args) => commands::gyms::run(args),
        Command::Play(args) => commands::play::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::SftData(args) => commands::sft_data::run(args),
        Command::Data { command } => commands::data::run(command),
        Command::Serve(args) => commands::serve::run(args),
        Command::Bench { command } => commands::bench::run(command),
    }
}
