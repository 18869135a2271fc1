//! `userrl train --config <file.toml>`: SFT and/or GRPO as the config says; events to
//! `<out>/events.jsonl`, checkpoints under `<out>/`. `--resume` continues a stopped run from its newest
//! resumable checkpoint.

use std::path::PathBuf;

use anyhow::{Context, Result};
use userrl_rl::config::RunConfig;
use userrl_rl::events::JsonlSink;
use userrl_rl::train::RunControl;

#[derive(clap::Args)]
pub struct Args {
    /// The run config (TOML); see configs/. Not needed with `--resume <run dir>`.
    #[arg(long, required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Where events and checkpoints go (default: runs/<name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue a stopped or killed run from its newest resumable checkpoint, with the config saved in it:
    /// `--resume <run dir>`, or `--resume` alone for the run at `--out` (default runs/<name> of `--config`).
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "RUN DIR")]
    resume: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let summary = match &args.resume {
        Some(dir) => {
            let out = if !dir.as_os_str().is_empty() {
                dir.clone()
            } else if let Some(out) = &args.out {
                out.clone()
            } else {
                let path = args.config.as_ref().context("--resume without a run dir needs --config or --out")?;
                PathBuf::from("runs").join(RunConfig::from_file(path)?.name)
            };
            anyhow::ensure!(out.is_dir(), "{} is not a run directory", out.display());
            let sink = JsonlSink::append(&out.join("events.jsonl")).context("opening the event log")?;
            runtime
                .block_on(userrl_rl::train::resume(&out, &sink, &RunControl::new()))
                .with_context(|| format!("resuming the run in {}", out.display()))?
        }
        None => {
            let path = args.config.as_ref().context("--config is required")?;
            let config = RunConfig::from_file(path)?;
            let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&config.name));
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            std::fs::write(out.join("config.toml"), std::fs::read(path)?)?;
            let sink = JsonlSink::append(&out.join("events.jsonl")).context("opening the event log")?;
            runtime.block_on(userrl_rl::train::run(&config, &out, &sink))?
        }
    };
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
