//! `userrl play <gym>`: you are the agent. Each line you type is one tool call: `action: …`, `answer: …`,
//! `search: …` (or `/action …`), `finish`, or `quit`.

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use userrl_gym::env::{EnvConfig, Episode, Mode};
use userrl_gym::tool::{self, Action, Choice, ToolError};
use userrl_gym::{GymKind, Split};

#[derive(clap::Args)]
pub struct Args {
    /// The gym to play.
    gym: String,
    /// The task id; default: the first task of `--split`.
    #[arg(long)]
    task: Option<String>,
    #[arg(long, default_value = "test")]
    split: Split,
    /// `train` shows the reward line after each feedback, as the policy sees it in training.
    #[arg(long, default_value = "eval")]
    mode: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print the system prompt the agent would read.
    #[arg(long)]
    show_prompt: bool,
    /// Reproduce bugs of the original system by name (e.g. `persuade.repay_levels`); see docs/gyms.md.
    #[arg(long, value_name = "GYM.SWITCH,...")]
    compat: Vec<String>,
    #[command(flatten)]
    tasks: super::TaskArgs,
    #[command(flatten)]
    user: super::UserArgs,
}

/// Reads one typed line as a tool call.
pub fn parse_line(line: &str) -> Result<Action, ToolError> {
    let line = line.trim();
    if line.eq_ignore_ascii_case("finish") || line.eq_ignore_ascii_case("/finish") {
        return Ok(Action::Finish);
    }
    let line = line.strip_prefix('/').unwrap_or(line);
    let (head, rest) = match line.find([':', ' ']) {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let choice = Choice::parse(head).ok_or_else(|| ToolError::UnknownChoice(head.chars().take(40).collect()))?;
    tool::action_from_content(choice, rest)
}

pub fn run(args: Args) -> Result<()> {
    let kind = GymKind::parse(&args.gym)
        .with_context(|| format!("unknown gym `{}` (known: {})", args.gym, GymKind::names()))?;
    let mode = match args.mode.as_str() {
        "train" => Mode::Train,
        "eval" => Mode::Eval,
        other => anyhow::bail!("unknown mode `{other}` (train or eval)"),
    };
    let catalog = args.tasks.catalog(&[kind])?;
    let gym = catalog.get(kind).context("the gym has no tasks here")?.clone();
    let task = match args.task {
        Some(t) => t,
        None => gym.task_ids(Some(args.split)).into_iter().next().context("the split has no tasks")?,
    };
    let user = args.user.build()?;
    let config =
        EnvConfig { mode, seed: args.seed, compat: super::parse_compat(&args.compat)?, ..EnvConfig::default() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let env = gym.new_env(&task, &config, user)?;
    let mut episode = Episode::new(env, config);
    if args.show_prompt {
        println!("--- system prompt ---\n{}\n---------------------", gym.system_prompt());
    }
    let choices: Vec<&str> = kind.allowed_choices().iter().map(|c| c.name()).collect();
    println!(
        "{} · task {task} · choices: {} (type `<choice>: <text>`, `finish` or `quit`)",
        kind.title(),
        choices.join(", ")
    );
    println!("\nuser: {}\n", episode.opening());
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    while !episode.is_done() {
        print!("you> ");
        std::io::stdout().flush()?;
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        if line.trim().eq_ignore_ascii_case("quit") {
            break;
        }
        let outcome = runtime.block_on(episode.step(parse_line(&line)));
        println!(
            "env: {}\n     reward {}{}\n",
            outcome.feedback,
            tool::format_reward(outcome.reward),
            if outcome.done() { " · episode over" } else { "" }
        );
    }
    let transcript = episode.into_transcript();
    println!(
        "score {:.3} (normalised {:.3}) · success {} · {} turns · {}",
        transcript.score,
        transcript.normalized,
        transcript.success,
        transcript.turns.len(),
        transcript.termination.name()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_lines_become_tool_calls() {
        assert_eq!(parse_line("answer: Paris"), Ok(Action::Answer("Paris".into())));
        assert_eq!(parse_line("/search test"), Ok(Action::Search("test".into())));
        assert_eq!(parse_line("finish"), Ok(Action::Finish));
        assert!(matches!(parse_line("dance: now"), Err(ToolError::UnknownChoice(_))));
        assert!(matches!(parse_line("action:"), Err(ToolError::EmptyContent(_))));
    }
}
