//! `userrl sft-data`: SFT cold-start data from the gyms' experts, one chat record with tool calls per kept
//! trajectory (JSONL).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use userrl_gym::Split;
use userrl_gym::eval::AgentSpec;
use userrl_rl::sft_data::{SftOptions, generate};

#[derive(clap::Args)]
pub struct Args {
    /// `all` or a comma-separated list of gyms; held-out gyms are usually left out of training data.
    #[arg(long, default_value = "function,persuade,tau,travel,turtle")]
    gyms: String,
    #[arg(long, default_value = "train")]
    split: Split,
    /// Where to write the JSONL records.
    #[arg(long, default_value = "data/sft.jsonl")]
    out: PathBuf,
    /// Episodes per task (different seeds); the best is kept.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Keep a trajectory only if its normalised score is at least this.
    #[arg(long, default_value_t = 1.0)]
    min_score: f64,
    #[arg(long, default_value = "expert")]
    agent: AgentSpec,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    tasks: super::TaskArgs,
    #[command(flatten)]
    user: super::UserArgs,
}

pub fn run(args: Args) -> Result<()> {
    let kinds = super::parse_gyms(&args.gyms)?;
    let catalog = args.tasks.catalog(&kinds)?;
    let user = args.user.build()?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = args.out.with_extension("jsonl.tmp");
    let mut out =
        std::io::BufWriter::new(std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?);
    let options = SftOptions {
        split: args.split,
        agent: args.agent,
        samples_per_task: args.samples,
        min_normalized: args.min_score,
        seed: args.seed,
        ..SftOptions::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let stats = runtime.block_on(generate(&catalog, &options, user, |record| writeln!(out, "{record}")))?;
    out.flush()?;
    drop(out);
    std::fs::rename(&tmp, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{} of {} tasks kept ({} episodes, {:.2} turns on average) -> {}",
        stats.kept,
        stats.tasks,
        stats.episodes,
        stats.mean_turns_kept,
        args.out.display()
    );
    Ok(())
}
