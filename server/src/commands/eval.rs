//! `userrl eval`: an agent over gyms, splits and users; the per-gym table (reference §9 scoring), JSON for
//! machines, transcripts as JSONL.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use userrl_gym::Split;
use userrl_gym::env::{EnvConfig, Mode};
use userrl_gym::eval::{AgentSpec, EvalPlan, evaluate};

#[derive(clap::Args)]
pub struct Args {
    /// expert (the scripted expert of each gym) or random.
    #[arg(long, default_value = "expert")]
    agent: AgentSpec,
    /// `all` or a comma-separated list of gyms.
    #[arg(long, default_value = "all")]
    gyms: String,
    #[arg(long, default_value = "test")]
    split: Split,
    /// At most this many tasks per gym.
    #[arg(long)]
    limit: Option<usize>,
    /// Episodes run at once (raise it for LLM users).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 16)]
    max_steps: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Write every episode's transcript to this JSONL file.
    #[arg(long)]
    transcripts: Option<PathBuf>,
    /// Reproduce bugs of the original system by name (e.g. `persuade.repay_levels`); see docs/gyms.md.
    #[arg(long, value_name = "GYM.SWITCH,...")]
    compat: Vec<String>,
    #[command(flatten)]
    tasks: super::TaskArgs,
    #[command(flatten)]
    user: super::UserArgs,
}

pub fn run(args: Args) -> Result<()> {
    let kinds = super::parse_gyms(&args.gyms)?;
    let catalog = args.tasks.catalog(&kinds)?;
    let user = args.user.build()?;
    let config = EnvConfig {
        mode: Mode::Eval,
        seed: args.seed,
        max_steps: args.max_steps,
        compat: super::parse_compat(&args.compat)?,
    };
    let total: usize = catalog
        .gyms()
        .iter()
        .map(|g| {
            let n = g.task_ids(Some(args.split)).len();
            args.limit.map_or(n, |l| l.min(n))
        })
        .sum();
    let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new(total as u64) };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} episodes {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut out = match &args.transcripts {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let mut write_error: Option<std::io::Error> = None;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let plan = EvalPlan {
        split: args.split,
        agent: args.agent,
        config,
        concurrency: args.concurrency,
        limit_per_gym: args.limit,
    };
    let (report, _) = runtime.block_on(evaluate(&catalog, &plan, user, |t| {
        bar.inc(1);
        bar.set_message(t.gym.name());
        if let (Some(out), None) = (out.as_mut(), write_error.as_ref()) {
            let line = serde_json::to_string(t).map_err(std::io::Error::other).and_then(|l| writeln!(out, "{l}"));
            if let Err(e) = line {
                write_error = Some(e);
            }
        }
    }))?;
    bar.finish_and_clear();
    if let Some(e) = write_error {
        return Err(e).context("writing transcripts");
    }
    if let Some(mut out) = out {
        out.flush().context("writing transcripts")?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
