//! `userrl train --config <file.toml>`: SFT and/or GRPO as the config says; events to
//! `<out>/events.jsonl`, checkpoints under `<out>/`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use userrl_rl::config::RunConfig;
use userrl_rl::events::JsonlSink;

#[derive(clap::Args)]
pub struct Args {
    /// The run config (TOML); see configs/.
    #[arg(long)]
    config: PathBuf,
    /// Where events and checkpoints go (default: runs/<name>).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let config = RunConfig::from_file(&args.config)?;
    let out = args.out.unwrap_or_else(|| PathBuf::from("runs").join(&config.name));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(out.join("config.toml"), std::fs::read(&args.config)?)?;
    let sink = JsonlSink::append(&out.join("events.jsonl")).context("opening the event log")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let summary = runtime.block_on(userrl_rl::train::run(&config, &out, &sink))?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
