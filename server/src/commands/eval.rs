//! `userrl eval`: an agent over gyms, splits and users; the per-gym table (reference §9 scoring), pass^k over
//! repeated trials, JSON for machines, transcripts as JSONL.

use std::io::Write;
use std::path::PathBuf;

use std::sync::Arc;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use userrl_gym::Split;
use userrl_gym::env::{EnvConfig, Mode};
use userrl_gym::eval::{AgentSpec, EvalPlan, evaluate_trials};
use userrl_gym::llm::{LlmClient, LlmConfig};

#[derive(clap::Args)]
pub struct Args {
    /// expert (the scripted expert of each gym) or random.
    #[arg(long, default_value = "expert", conflicts_with = "model")]
    agent: AgentSpec,
    /// Evaluate a policy model as the agent: a `.gguf` file or a checkpoint directory (run on the CPU), or a
    /// model behind an OpenAI-compatible endpoint, `openai:<base URL>#<model>` (e.g.
    /// `openai:http://localhost:8000/v1#Qwen/Qwen3-8B`; key from USERRL_AGENT_API_KEY or OPENAI_API_KEY).
    /// Paper protocol: greedy, the first tool call of each reply, feedback without the reward line.
    #[arg(long)]
    model: Option<String>,
    /// Tokens per agent reply for `--model`.
    #[arg(long, default_value_t = 512)]
    max_new_tokens: usize,
    /// Sampling temperature of a `--model` agent (the paper's protocol is 0; pass^k needs > 0 to mean much).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Report pass^1 ..= pass^k (tau-bench): the chance that k independent trials of a task all succeed,
    /// estimated per task as C(c, k) / C(n, k) from n trials with c successes, averaged over tasks.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    k: Option<u32>,
    /// Episodes per task (each with its own seed); raised to `--k` when lower.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    trials: u32,
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

/// A local model (GGUF or checkpoint) as the agent of every episode.
pub fn local_agent(path: &str, max_new_tokens: usize, temperature: f32) -> Result<AgentSpec> {
    let loaded = userrl_nn::checkpoint::load_model(std::path::Path::new(path))
        .with_context(|| format!("loading the agent model {path}"))?;
    let model = Arc::new(loaded.model);
    let tokenizer = Arc::new(loaded.tokenizer);
    let sampling = userrl_nn::generate::Sampling { max_new_tokens, temperature, ..Default::default() };
    // Each episode samples with its own seed, so the trials of a task differ when the temperature is above 0.
    let factory: userrl_gym::eval::AgentFactory = Arc::new(move |_, _, seed| {
        Ok(Box::new(userrl_rl::rollout::ModelAgent {
            model: model.clone(),
            tokenizer: tokenizer.clone(),
            sampling: userrl_nn::generate::Sampling { seed, ..sampling.clone() },
        }))
    });
    Ok(AgentSpec::Factory(format!("model:{path}"), factory))
}

/// Parses `openai:<base URL>#<model>` into an endpoint agent.
pub fn endpoint_agent(spec: &str, temperature: f32) -> Result<AgentSpec> {
    let rest = spec.strip_prefix("openai:").context(
        "--model takes `openai:<base URL>#<model>` (local GGUF and checkpoint agents come with the policy engine)",
    )?;
    let (url, model) = rest.split_once('#').context("--model needs `#<model>` after the base URL")?;
    anyhow::ensure!(!url.is_empty() && !model.is_empty(), "--model needs both a base URL and a model name");
    let api_key = std::env::var("USERRL_AGENT_API_KEY").or_else(|_| std::env::var("OPENAI_API_KEY")).ok();
    let config = LlmConfig {
        base_urls: vec![url.to_string()],
        api_key,
        model: model.to_string(),
        temperature,
        max_tokens: 2048,
        timeout_ms: 120_000,
        strip_think: false,
        ..LlmConfig::default()
    };
    Ok(AgentSpec::Llm(Arc::new(LlmClient::new(config)?)))
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
    let k = args.k.map(|k| k as usize);
    let trials = (args.trials as usize).max(k.unwrap_or(1));
    if trials > 1 && args.model.is_some() && args.temperature == 0.0 {
        tracing::warn!(
            "{trials} trials of a greedy agent differ only through the user's randomness; pass --temperature"
        );
    }
    let tasks: usize = catalog
        .gyms()
        .iter()
        .map(|g| {
            let n = g.task_ids(Some(args.split)).len();
            args.limit.map_or(n, |l| l.min(n))
        })
        .sum();
    let total = tasks * trials;
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
    let agent = match &args.model {
        Some(spec) if spec.starts_with("openai:") => endpoint_agent(spec, args.temperature)?,
        Some(path) => local_agent(path, args.max_new_tokens, args.temperature)?,
        None => args.agent.clone(),
    };
    let plan = EvalPlan { split: args.split, agent, config, concurrency: args.concurrency, limit_per_gym: args.limit };
    let (report, _) = runtime.block_on(evaluate_trials(&catalog, &plan, trials, k, user, |t| {
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
