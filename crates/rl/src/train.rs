//! The training loop behind `userrl train`: load the model (GGUF, checkpoint, or a tiny random one with a
//! GGUF's tokenizer), SFT on expert chat records with the loss on assistant tokens, then multi-turn GRPO:
//! rollout groups with the policy, UserRL shaping, old log-probs recomputed by the training forward, PPO clip
//! with dual clip over mini-batches, AdamW, grad clipping; metrics under TRL's names to the event sink, greedy
//! evaluation on the test split, checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use userrl_gym::env::{EnvConfig, Mode};
use userrl_gym::user::ScriptedUser;
use userrl_gym::{Catalog, GymKind, User, UserKind};
use userrl_nn::checkpoint::{self, load_model};
use userrl_nn::cpu_ops::{AdamW, GrpoClip};
use userrl_nn::engine::{Engine, EngineConfig};
use userrl_nn::generate::Sampling;
use userrl_nn::gguf::Gguf;
use userrl_nn::model::{Llama, LlamaConfig};
use userrl_nn::tokenizer::Tokenizer;
use userrl_nn::train::{Objective, TrainSequence, TrainStep, TrainableLlama, random_llama};

use crate::config::{GrpoConfig, LrSchedule, RunConfig, SftConfig, ZeroVariance};
use crate::events::{Event, EventSink};
use crate::learner::Learner;
use crate::resume::{Phase, Progress, ResumeState, RngState};
use crate::rollout::{CpuPolicy, RolloutConfig, RolloutJob, Trajectory, render_sft_record, rollout, rollout_batch};
use crate::sft_data::{SftOptions, generate as generate_sft};
use crate::shaping::{Shaping, ShapingInput};
use crate::transcript::{self, RecordScores};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    Nn(#[from] userrl_nn::train::TrainError),
    #[error(transparent)]
    Rollout(#[from] crate::rollout::RolloutError),
    #[error(transparent)]
    Gym(#[from] userrl_gym::GymError),
    #[error(transparent)]
    Sft(#[from] crate::sft_data::SftError),
    #[error("{0}")]
    Setup(String),
    #[error("writing events: {0}")]
    Events(#[from] std::io::Error),
    #[error("encoding a transcript: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Resume(#[from] crate::resume::ResumeError),
    #[error(transparent)]
    Wgpu(#[from] userrl_nn::wgpu::WgpuError),
    #[error("the run was cancelled")]
    Cancelled,
}

/// Stops a run from another thread: the trainer checks it between SFT batches, between rollouts and GRPO steps,
/// and between evaluation episodes, so a cancel takes effect within one of those units of work.
#[derive(Clone, Debug, Default)]
pub struct RunControl {
    cancelled: Arc<AtomicBool>,
}

impl RunControl {
    pub fn new() -> RunControl {
        RunControl::default()
    }

    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn check(&self) -> Result<(), TrainError> {
        if self.is_cancelled() { Err(TrainError::Cancelled) } else { Ok(()) }
    }
}

/// What a finished run reports.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunSummary {
    pub sft_steps: usize,
    pub sft_first_loss: Option<f32>,
    pub sft_last_loss: Option<f32>,
    pub grpo_rewards: Vec<f64>,
    /// Tokens run through the training forward in GRPO updates (TRL's cumulative `num_tokens`).
    #[serde(default)]
    pub num_tokens: u64,
    pub eval: BTreeMap<String, f64>,
    pub checkpoint: Option<String>,
}

fn metrics(sink: &dyn EventSink, step: u64, values: Vec<(String, f64)>) -> Result<(), TrainError> {
    Ok(sink.emit(&Event::Metrics { step, values })?)
}

/// `done` of the phase's `total` steps (the run header shows "SFT 140 / 150", not SFT steps against GRPO's).
fn progress(sink: &dyn EventSink, phase: &str, done: usize, total: usize) -> Result<(), TrainError> {
    Ok(sink.emit(&Event::Progress { phase: phase.into(), step: done as u64, total: total as u64 })?)
}

/// Learning rate at `step` of `total` with linear warmup, then constant or cosine to 10%.
pub fn learning_rate(base: f64, schedule: LrSchedule, warmup: usize, step: usize, total: usize) -> f64 {
    if warmup > 0 && step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    match schedule {
        LrSchedule::Constant => base,
        LrSchedule::Cosine => {
            let progress = (step - warmup.min(step)) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
            base * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()))
        }
    }
}

/// Loads or builds the model and its tokenizer as the config says. A loaded model keeps its own context (the
/// run's token budgets bound what it trains on, and its checkpoints keep what the model can do: a SmolLM2 run's
/// checkpoints stay 8,192-token models for `userrl eval` and chat); a tiny one gets `context`.
pub fn load(config: &RunConfig, context: usize) -> Result<(Llama, Tokenizer), TrainError> {
    if let Some(path) = &config.model.path {
        let loaded = load_model(Path::new(path))?;
        return Ok((loaded.model, loaded.tokenizer));
    }
    let tiny = config.model.tiny.as_ref().ok_or_else(|| TrainError::Setup("model needs `path` or `tiny`".into()))?;
    let gguf =
        Gguf::open(Path::new(&tiny.tokenizer)).map_err(|e| TrainError::Setup(format!("{}: {e}", tiny.tokenizer)))?;
    let tokenizer = Tokenizer::from_gguf(&gguf).map_err(|e| TrainError::Setup(e.to_string()))?;
    let llama_config = LlamaConfig {
        vocab: tokenizer.vocab_size(),
        hidden: tiny.hidden,
        layers: tiny.layers,
        heads: tiny.heads,
        kv_heads: tiny.kv_heads,
        ffn: tiny.ffn,
        rope_theta: 10_000.0,
        eps: 1e-5,
        context,
    };
    let model = random_llama(&llama_config, config.seed, true)?;
    Ok((model, tokenizer))
}

fn catalog(config: &RunConfig, kinds: &[GymKind]) -> Result<Catalog, TrainError> {
    Ok(match &config.data.tasks {
        Some(dir) => Catalog::from_dir(Path::new(dir), kinds)?,
        None => Catalog::builtin(kinds)?,
    })
}

fn user(config: &RunConfig) -> Result<Arc<dyn User>, TrainError> {
    match config.user.kind {
        UserKind::Scripted => Ok(Arc::new(ScriptedUser)),
        UserKind::Llm => {
            let llm = userrl_gym::llm::LlmConfig {
                base_urls: config.user.llm_urls.clone(),
                model: config.user.llm_model.clone(),
                timeout_ms: config.user.timeout_ms,
                ..Default::default()
            }
            .with_env();
            let client = userrl_gym::llm::LlmClient::new(llm).map_err(|e| TrainError::Setup(e.to_string()))?;
            Ok(Arc::new(userrl_gym::llm::LlmUser::new(Arc::new(client))))
        }
        UserKind::Human => Err(TrainError::Setup("training runs use scripted or llm users".into())),
    }
}

/// Runs SFT then GRPO as configured, writing events to `sink` and checkpoints under `out` (no cancelling).
pub async fn run(config: &RunConfig, out: &Path, sink: &dyn EventSink) -> Result<RunSummary, TrainError> {
    run_with(config, out, sink, &RunControl::new()).await
}

/// Runs a training job on a thread of its own (with a single-threaded tokio runtime for the gyms' users) and
/// returns its handle; `control` cancels it. This is how a server should start runs: see [`run_with`].
pub fn spawn(
    config: RunConfig,
    out: PathBuf,
    sink: Arc<dyn EventSink>,
    control: RunControl,
) -> std::io::Result<std::thread::JoinHandle<Result<RunSummary, TrainError>>> {
    std::thread::Builder::new().name(format!("train-{}", config.name)).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TrainError::Setup(format!("starting the run's runtime: {e}")))?;
        runtime.block_on(run_with(&config, &out, sink.as_ref(), &control))
    })
}

/// [`resume`] on a thread of its own, as [`spawn`] does for a new run.
pub fn spawn_resume(
    out: PathBuf,
    sink: Arc<dyn EventSink>,
    control: RunControl,
) -> std::io::Result<std::thread::JoinHandle<Result<RunSummary, TrainError>>> {
    std::thread::Builder::new().name("train-resume".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TrainError::Setup(format!("starting the run's runtime: {e}")))?;
        runtime.block_on(resume(&out, sink.as_ref(), &control))
    })
}

/// Continues the run under `out` from its newest resumable checkpoint (its model, AdamW state, phase and step,
/// RNG and config), with the same events and cancelling as [`run_with`]. The run goes on exactly as if it had
/// not stopped: steps after the checkpoint are done again (and their events emitted again, with the same
/// keys).
pub async fn resume(out: &Path, sink: &dyn EventSink, control: &RunControl) -> Result<RunSummary, TrainError> {
    let result = async {
        let resumed = crate::resume::load(&crate::resume::latest(out)?)?;
        let config = resumed.state.config.clone();
        run_inner(&config, out, sink, control, Some(resumed)).await
    }
    .await;
    report(sink, result)
}

/// Runs SFT then GRPO as configured, writing events to `sink` and checkpoints under `out`, until done or until
/// `control` is cancelled (then it emits `Status { "cancelled" }` and returns [`TrainError::Cancelled`]). Any
/// other error is reported as `Status { "failed", message }` before it is returned.
///
/// The future is CPU-bound: the model's forward, backward and sampling run inline for seconds to minutes
/// between await points. Never await it on a runtime that serves anything else (HTTP, SSE): give it a thread
/// of its own with its own runtime, as [`spawn`] does.
pub async fn run_with(
    config: &RunConfig,
    out: &Path,
    sink: &dyn EventSink,
    control: &RunControl,
) -> Result<RunSummary, TrainError> {
    report(sink, run_inner(config, out, sink, control, None).await)
}

/// Emits the run's final status.
fn report(sink: &dyn EventSink, result: Result<RunSummary, TrainError>) -> Result<RunSummary, TrainError> {
    let status = match &result {
        Ok(_) => Event::Status { status: "finished".into(), message: String::new() },
        Err(TrainError::Cancelled) => Event::Status { status: "cancelled".into(), message: String::new() },
        Err(e) => Event::Status { status: "failed".into(), message: e.to_string() },
    };
    // An event log that fails now cannot report it; the run's own error matters more.
    let logged = sink.emit(&status);
    let summary = result?;
    logged?;
    Ok(summary)
}

async fn run_inner(
    config: &RunConfig,
    out: &Path,
    sink: &dyn EventSink,
    control: &RunControl,
    resumed: Option<crate::resume::Resumed>,
) -> Result<RunSummary, TrainError> {
    let mut running = config.name.clone();
    let (trainable, tokenizer, start) = match resumed {
        Some(r) => {
            tracing::info!(from = %r.dir.display(), progress = ?r.state.progress, "resuming");
            // Steps from here on are done (and their events emitted) again.
            let Progress { phase, step } = r.state.progress;
            running = format!("{running}: resumed from {} ({phase:?} step {step} done)", r.dir.display());
            (r.trainable, r.tokenizer, Some(r.state))
        }
        None => {
            let context = config
                .grpo
                .as_ref()
                .map(|g| g.max_total_tokens)
                .into_iter()
                .chain(config.sft.as_ref().map(|s| s.max_seq_len))
                .max()
                .unwrap_or(2048);
            let (model, tokenizer) = load(config, context)?;
            (TrainableLlama::from_llama(&model)?, tokenizer, None)
        }
    };
    let mut trainable = Learner::new(trainable, config.model.device)?;
    tracing::info!(device = %trainable.device_name(), "optimiser steps");
    let catalog = catalog(config, &config.data.gyms)?;
    let user = user(config)?;
    let progress = start.as_ref().map_or(Progress { phase: Phase::Sft, step: 0 }, |s| s.progress);
    let grpo_rng = match start.as_ref().and_then(|s| s.grpo_rng.as_ref()) {
        Some(state) => Some(state.restore().map_err(TrainError::Setup)?),
        None => None,
    };
    let mut summary = start.map(|s| s.summary).unwrap_or_default();
    // Shared with the rollout tasks of the GRPO steps.
    let tokenizer = Arc::new(tokenizer);
    sink.emit(&Event::Status { status: "running".into(), message: running })?;
    control.check()?;
    let run = Ctx { config, tokenizer: &tokenizer, user: user.clone(), sink, control, out };
    if let Some(sft) = config.sft.as_ref().filter(|_| progress.phase == Phase::Sft) {
        run_sft(&run, sft, &mut trainable, &catalog, progress.step, &mut summary).await?;
    }
    if let Some(grpo) = &config.grpo {
        let first = if progress.phase == Phase::Grpo { progress.step } else { 0 };
        run_grpo(&run, grpo, &mut trainable, &catalog, first, grpo_rng, &mut summary).await?;
    }
    // The final numbers are logged at the step after the last GRPO step (or the last SFT step).
    let last_step = config.grpo.as_ref().map_or(summary.sft_steps, |g| g.steps) as u64;
    let eval = match evaluate_with(&run, &trainable, last_step).await {
        Err(TrainError::Cancelled) => {
            let done = match &config.grpo {
                Some(g) => Progress { phase: Phase::Grpo, step: g.steps },
                None => Progress { phase: Phase::Sft, step: summary.sft_steps },
            };
            run.save_resumable(&trainable, done, None, &summary)?;
            return Err(TrainError::Cancelled);
        }
        other => other?,
    };
    summary.eval = eval;
    let dir = out.join("final");
    checkpoint::save(&trainable.to_llama(), tokenizer.data(), &dir)?;
    sink.emit(&Event::Checkpoint { step: last_step, path: dir.display().to_string() })?;
    summary.checkpoint = Some(dir.display().to_string());
    Ok(summary)
}

/// What every phase of a run reads.
struct Ctx<'a> {
    config: &'a RunConfig,
    tokenizer: &'a Arc<Tokenizer>,
    user: Arc<dyn User>,
    sink: &'a dyn EventSink,
    control: &'a RunControl,
    out: &'a Path,
}

impl Ctx<'_> {
    /// Saves a resumable checkpoint for `progress` (unless that one is already saved) and returns its directory.
    /// `grpo_rng` is the task sampler as the next GRPO step will find it.
    fn save_resumable(
        &self,
        trainable: &TrainableLlama,
        progress: Progress,
        grpo_rng: Option<&ChaCha8Rng>,
        summary: &RunSummary,
    ) -> Result<PathBuf, TrainError> {
        let dir = self.out.join(progress.dir_name());
        let saved = crate::resume::latest(self.out).ok().filter(|d| *d == dir);
        if saved.is_none() {
            let state = ResumeState {
                version: crate::resume::FORMAT_VERSION,
                progress,
                adam_step: trainable.step,
                params: trainable.params.len(),
                grpo_rng: grpo_rng.map(RngState::of),
                summary: summary.clone(),
                config: self.config.clone(),
            };
            crate::resume::save(self.out, &dir, trainable, self.tokenizer, &state)?;
        }
        Ok(dir)
    }
}

async fn run_sft(
    run: &Ctx<'_>,
    sft: &SftConfig,
    trainable: &mut Learner,
    catalog: &Catalog,
    first_step: usize,
    summary: &mut RunSummary,
) -> Result<(), TrainError> {
    let (config, tokenizer, sink) = (run.config, run.tokenizer, run.sink);
    let records: Vec<Value> = match &sft.data {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| TrainError::Setup(format!("{path}: {e}")))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| TrainError::Setup(format!("{path}: {e}"))))
            .collect::<Result<_, _>>()?,
        None => {
            let mut records = Vec::new();
            let options = SftOptions { split: config.data.split, seed: config.seed, ..SftOptions::default() };
            generate_sft(catalog, &options, run.user.clone(), |r| {
                records.push(r);
                Ok(())
            })
            .await?;
            records
        }
    };
    let mut examples = Vec::new();
    let mut skipped = 0usize;
    for record in &records {
        let (tokens, mask) = render_sft_record(tokenizer, record)?;
        if tokens.len() > sft.max_seq_len {
            skipped += 1;
            continue;
        }
        let mut mask = mask;
        mask[0] = false;
        examples.push(TrainSequence { tokens, mask, advantages: None, old_logp: None });
    }
    if examples.is_empty() {
        return Err(TrainError::Setup(format!(
            "no SFT example fits max_seq_len {} ({skipped} skipped)",
            sft.max_seq_len
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x5F7);
    if let Some(max) = sft.max_examples {
        examples.shuffle(&mut rng);
        examples.truncate(max.max(1));
    }
    let batches_per_epoch = examples.len().div_ceil(sft.batch_size);
    let total = batches_per_epoch * sft.epochs;
    let warmup = (total as f64 * sft.warmup_fraction).round() as usize;
    progress(sink, "sft", first_step.min(total), total)?;
    let mut step = 0usize;
    for _epoch in 0..sft.epochs {
        examples.shuffle(&mut rng);
        for batch in examples.chunks(sft.batch_size) {
            // A resumed run replays the shuffles (cheap) and skips the steps already done.
            if step < first_step {
                step += 1;
                continue;
            }
            if run.control.is_cancelled() {
                summary.sft_steps = step;
                run.save_resumable(trainable, Progress { phase: Phase::Sft, step }, None, summary)?;
                return Err(TrainError::Cancelled);
            }
            let lr = learning_rate(sft.lr, LrSchedule::Cosine, warmup, step, total);
            let started = Instant::now();
            let stats = trainable.train_step(&TrainStep {
                micro_batches: vec![batch],
                objective: Objective::Sft,
                adamw: AdamW { lr: lr as f32, ..AdamW::default() },
                max_grad_norm: Some(1.0),
            })?;
            let seconds = started.elapsed().as_secs_f64();
            summary.sft_first_loss.get_or_insert(stats.loss);
            summary.sft_last_loss = Some(stats.loss);
            metrics(
                sink,
                step as u64,
                vec![
                    ("sft/loss".into(), stats.loss as f64),
                    ("sft/grad_norm".into(), stats.grad_norm as f64),
                    ("sft/learning_rate".into(), lr),
                    ("sft/entropy".into(), stats.entropy as f64),
                    ("sft/tokens_per_s".into(), stats.tokens_processed as f64 / seconds.max(1e-9)),
                ],
            )?;
            step += 1;
            summary.sft_steps = step;
            progress(sink, "sft", step, total)?;
            let every = config.checkpoint.sft_every;
            if every > 0 && step.is_multiple_of(every) && step < total {
                run.save_resumable(trainable, Progress { phase: Phase::Sft, step }, None, summary)?;
            }
        }
    }
    summary.sft_steps = step;
    if config.checkpoint.every > 0 && first_step < total {
        run.save_resumable(trainable, Progress { phase: Phase::Sft, step }, None, summary)?;
    }
    tracing::info!(steps = step, examples = examples.len(), skipped, "SFT done");
    Ok(())
}

/// The `q` quantile of sorted values (nearest rank).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn pick_gym(kinds: &[GymKind], weights: &BTreeMap<GymKind, f64>, rng: &mut ChaCha8Rng) -> GymKind {
    let w: Vec<f64> = kinds.iter().map(|k| weights.get(k).copied().unwrap_or(1.0)).collect();
    let total: f64 = w.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (k, w) in kinds.iter().zip(&w) {
        if x < *w {
            return *k;
        }
        x -= w;
    }
    kinds[kinds.len() - 1]
}

/// The frozen policy GRPO started from, for the KL penalty. It is saved as `<out>/reference` when GRPO starts,
/// and a run resumed inside GRPO loads it from there.
fn reference_policy(
    run: &Ctx<'_>,
    trainable: &TrainableLlama,
    first_step: usize,
) -> Result<TrainableLlama, TrainError> {
    let dir = run.out.join("reference");
    let mut reference = if first_step > 0 {
        TrainableLlama::from_llama(&checkpoint::load(&dir)?.model)?
    } else {
        let model = trainable.to_llama();
        checkpoint::save(&model, run.tokenizer.data(), &dir)?;
        TrainableLlama::from_llama(&model)?
    };
    // Only the forward runs on it: drop the gradient and optimizer buffers (three model sizes).
    reference.grads = Vec::new();
    reference.adam_m = Vec::new();
    reference.adam_v = Vec::new();
    Ok(reference)
}

async fn run_grpo(
    run: &Ctx<'_>,
    grpo: &GrpoConfig,
    trainable: &mut Learner,
    catalog: &Catalog,
    first_step: usize,
    rng: Option<ChaCha8Rng>,
    summary: &mut RunSummary,
) -> Result<(), TrainError> {
    let (config, tokenizer, sink, user) = (run.config, run.tokenizer, run.sink, &run.user);
    if first_step == 0 {
        // A fresh AdamW state, as the paper's RL job starts when it loads the SFT checkpoint: SFT's second moments
        // (from gradients at a learning rate orders of magnitude higher) would otherwise shrink GRPO's first
        // updates, and its step count would skip the bias correction. It also makes `SFT then GRPO` in one run
        // equal to an SFT run followed by a GRPO run from its checkpoint.
        trainable.reset_optimizer()?;
    }
    let mut rng = rng.unwrap_or_else(|| ChaCha8Rng::seed_from_u64(config.seed ^ 0x6790));
    let shaping = Shaping { score: grpo.trajectory_score, credit: grpo.turn_credit, gamma: grpo.gamma };
    let rollout_config = |seed: u64| RolloutConfig {
        env: EnvConfig { mode: Mode::Train, max_steps: grpo.max_turns, seed, ..EnvConfig::default() },
        max_new_tokens: grpo.max_new_tokens,
        max_total_tokens: grpo.max_total_tokens,
        sampling: Sampling {
            temperature: grpo.temperature,
            top_p: grpo.top_p,
            top_k: grpo.top_k,
            seed,
            max_new_tokens: grpo.max_new_tokens,
        },
        step_timeout: Some(Duration::from_secs_f64(grpo.step_timeout_s)),
    };
    let reference = if grpo.kl_coef > 0.0 { Some(reference_policy(run, trainable, first_step)?) } else { None };
    let task_lists: BTreeMap<GymKind, Vec<String>> =
        catalog.gyms().iter().map(|g| (g.kind(), g.task_ids(Some(config.data.split)))).collect();
    progress(sink, "grpo", first_step, grpo.steps)?;
    for step in first_step..grpo.steps {
        // A cancel before the update discards the step: the checkpoint holds the sampler as the step found it.
        let rng_at_start = rng.clone();
        let cancel = |trainable: &TrainableLlama, summary: &RunSummary| -> Result<(), TrainError> {
            run.save_resumable(trainable, Progress { phase: Phase::Grpo, step }, Some(&rng_at_start), summary)?;
            Err(TrainError::Cancelled)
        };
        if run.control.is_cancelled() {
            return cancel(trainable, summary);
        }
        let started = Instant::now();
        // A fresh engine per step samples from the weights the last update left.
        let engine = Engine::new(Arc::new(trainable.to_llama()), EngineConfig::default())
            .map_err(crate::rollout::RolloutError::from)?;
        let mut groups: Vec<Vec<Trajectory>> = Vec::new();
        let mut rollout_tokens = 0usize;
        let mut tries = 0;
        while groups.len() < grpo.prompts_per_step && tries < grpo.prompts_per_step * 4 {
            if run.control.is_cancelled() {
                return cancel(trainable, summary);
            }
            // One round: a task and its group's seeds for every group still missing, all played at once.
            let mut jobs = Vec::new();
            let mut drawn = 0usize;
            while groups.len() + drawn < grpo.prompts_per_step && tries < grpo.prompts_per_step * 4 {
                tries += 1;
                let kind = pick_gym(&config.data.gyms, &config.data.weights, &mut rng);
                let (Some(gym), Some(ids)) = (catalog.get(kind), task_lists.get(&kind)) else { continue };
                let Some(task) = ids.get(rng.random_range(0..ids.len().max(1))).cloned() else { continue };
                drawn += 1;
                for _ in 0..grpo.group_size {
                    let seed = rng.random::<u64>();
                    jobs.push(RolloutJob { gym: gym.clone(), task_id: task.clone(), config: rollout_config(seed) });
                }
            }
            if jobs.is_empty() {
                break;
            }
            // A cancel during the round discards the step: dropping the batch aborts its episodes (and their
            // engine sequences) at once instead of waiting for every episode to end.
            let batch = rollout_batch(&engine, jobs, tokenizer.clone(), user.clone());
            tokio::pin!(batch);
            let results = loop {
                tokio::select! {
                    results = &mut batch => break results,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {
                        if run.control.is_cancelled() {
                            return cancel(trainable, summary);
                        }
                    }
                }
            };
            let mut results = results.into_iter();
            for _ in 0..drawn {
                let group = results.by_ref().take(grpo.group_size).collect::<Result<Vec<_>, _>>()?;
                rollout_tokens +=
                    group.iter().map(|t| t.response_mask.iter().filter(|m| **m == 1).count()).sum::<usize>();
                let rewards: Vec<f64> = group.iter().map(|t| t.transcript.score).collect();
                let zero_variance = rewards.iter().all(|r| (r - rewards[0]).abs() < 1e-12);
                if zero_variance && grpo.zero_variance == ZeroVariance::Resample {
                    continue;
                }
                groups.push(group);
            }
        }
        drop(engine);
        let rollout_seconds = started.elapsed().as_secs_f64();
        // Shaping and the training batch.
        let mut sequences = Vec::new();
        let (mut scores, mut zero_groups) = (Vec::new(), 0usize);
        let mut by_gym: BTreeMap<GymKind, (f64, f64, usize)> = BTreeMap::new();
        let mut terminations: BTreeMap<String, usize> = BTreeMap::new();
        let (mut turns, mut policy_tokens, mut length_ends, mut n_traj) = (0usize, 0usize, 0usize, 0usize);
        let mut latencies: Vec<f64> = Vec::new();
        for (g, group) in groups.iter().enumerate() {
            let inputs: Vec<ShapingInput> = group
                .iter()
                .map(|t| ShapingInput {
                    rewards: t.turn_rewards.clone(),
                    policy_tokens_per_turn: t.policy_tokens_per_turn(),
                })
                .collect();
            let shaped = shaping.group(&inputs);
            let rewards: Vec<f64> = group.iter().map(|t| t.transcript.score).collect();
            let zero = rewards.iter().all(|r| (r - rewards[0]).abs() < 1e-12);
            zero_groups += zero as usize;
            for (i, (t, s)) in group.iter().zip(&shaped).enumerate() {
                let advantages = t.token_advantages(&s.turn_advantages);
                let record = transcript::record(
                    t,
                    tokenizer,
                    RecordScores { reward: s.score, advantage: s.advantage },
                    &advantages,
                )?;
                sink.emit(&Event::Transcript {
                    step: step as u64,
                    group: g as u32,
                    sample: i as u32,
                    validate: false,
                    record: serde_json::to_value(&record)?,
                })?;
                n_traj += 1;
                scores.push(t.transcript.score);
                let e = by_gym.entry(t.gym).or_default();
                e.0 += t.transcript.score;
                e.1 += t.transcript.success as u8 as f64;
                e.2 += 1;
                *terminations.entry(t.termination.name().to_string()).or_default() += 1;
                turns += t.turn_starts.len();
                latencies.extend_from_slice(&t.step_seconds);
                policy_tokens += t.response_mask.iter().filter(|m| **m == 1).count();
                length_ends += (t.termination == userrl_gym::Termination::Length) as usize;
                if zero && grpo.zero_variance == ZeroVariance::Drop {
                    continue;
                }
                if t.response_mask.iter().all(|m| *m == 0) {
                    continue;
                }
                let mut mask: Vec<bool> = t.response_mask.iter().map(|m| *m == 1).collect();
                mask[0] = false;
                sequences.push((
                    TrainSequence { tokens: t.tokens.clone(), mask, advantages: Some(advantages), old_logp: None },
                    t.sampled_logprobs.clone(),
                ));
            }
        }
        // Old log-probs from the training forward; the gap to the sampler's is logged.
        let (mut delta_sum, mut delta_n) = (0.0f64, 0usize);
        for (seq, sampled) in sequences.iter_mut() {
            if run.control.is_cancelled() {
                return cancel(trainable, summary);
            }
            let old = trainable.token_logprobs(&[&seq.tokens])?.into_iter().next().unwrap_or_default();
            for i in 0..seq.tokens.len() {
                if seq.mask[i] {
                    delta_sum += (old[i] - sampled[i]).abs() as f64;
                    delta_n += 1;
                }
            }
            seq.old_logp = Some(old);
        }
        let sequences: Vec<TrainSequence> = sequences.into_iter().map(|(s, _)| s).collect();
        let old_logps: Vec<Vec<f32>> = sequences.iter().map(|s| s.old_logp.clone().unwrap_or_default()).collect();
        // The reference's log-probs (without a reference they are not used).
        let (ref_logps, beta) = match &reference {
            Some(r) => {
                let logps = sequences
                    .iter()
                    .map(|s| Ok(r.token_logprobs(&[&s.tokens])?.into_iter().next().unwrap_or_default()))
                    .collect::<Result<Vec<_>, TrainError>>()?;
                (logps, grpo.kl_coef as f32)
            }
            None => (vec![Vec::new(); sequences.len()], 0.0),
        };
        let kl_before = reference.as_ref().map(|_| crate::kl::mean_k3(&sequences, &old_logps, &ref_logps));
        let lr = learning_rate(grpo.lr, grpo.lr_schedule, grpo.warmup_steps, step, grpo.steps);
        let train_started = Instant::now();
        let (mut loss, mut grad_norm, mut entropy, mut masked, mut processed, mut updates) =
            (0.0f64, 0.0f64, 0.0f64, 0usize, 0usize, 0usize);
        // Which side clipped needs the current log-probs, which only the KL path computes.
        let (mut clipped, mut clip_sides) = (0usize, None::<(usize, usize)>);
        if !sequences.is_empty() {
            let per = sequences.len().div_ceil(grpo.mini_batches.min(sequences.len()));
            let clip = GrpoClip { clip_eps: grpo.clip as f32, dual_clip: Some(grpo.dual_clip as f32) };
            let adamw = AdamW { lr: lr as f32, weight_decay: grpo.weight_decay as f32, ..AdamW::default() };
            let max_grad_norm = Some(grpo.grad_clip as f32);
            for (i, ((mini, refs), old)) in
                sequences.chunks(per).zip(ref_logps.chunks(per)).zip(old_logps.chunks(per)).enumerate()
            {
                let stats = if reference.is_some() {
                    // The surrogate + β·k3 is trained through its per-token derivative at the current weights
                    // (crate::kl): before the first update those are the old log-probs, later ones need a
                    // forward.
                    let now = if i == 0 {
                        old.to_vec()
                    } else {
                        trainable.token_logprobs(&mini.iter().map(|s| s.tokens.as_slice()).collect::<Vec<_>>())?
                    };
                    let batch = crate::kl::grpo_kl_batch(mini, &now, refs, &clip, beta);
                    let mut stats = trainable.train_step(&TrainStep {
                        micro_batches: vec![&batch.sequences],
                        objective: Objective::PolicyGradient,
                        adamw,
                        max_grad_norm,
                    })?;
                    stats.loss = batch.loss as f32;
                    stats.clipped = batch.clipped;
                    clip_sides.get_or_insert((0, 0));
                    if let Some((low, high)) = clip_sides.as_mut() {
                        *low += batch.clipped_low;
                        *high += batch.clipped_high;
                    }
                    stats
                } else {
                    trainable.train_step(&TrainStep {
                        micro_batches: vec![mini],
                        objective: Objective::Grpo(clip),
                        adamw,
                        max_grad_norm,
                    })?
                };
                loss += stats.loss as f64;
                grad_norm += stats.grad_norm as f64;
                entropy += stats.entropy as f64 * stats.tokens as f64;
                clipped += stats.clipped;
                masked += stats.tokens;
                processed += stats.tokens_processed;
                updates += 1;
            }
        }
        summary.num_tokens += processed as u64;
        let train_seconds = train_started.elapsed().as_secs_f64();
        let n = scores.len().max(1) as f64;
        let mean = scores.iter().sum::<f64>() / n;
        let std = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
        summary.grpo_rewards.push(mean);
        let mut values = vec![
            ("reward".to_string(), mean),
            ("reward_std".into(), std),
            ("frac_reward_zero_std".into(), zero_groups as f64 / groups.len().max(1) as f64),
            ("completions/mean_length".into(), policy_tokens as f64 / n_traj.max(1) as f64),
            ("completions/clipped_ratio".into(), length_ends as f64 / n_traj.max(1) as f64),
            ("turns/mean".into(), turns as f64 / n_traj.max(1) as f64),
            ("loss".into(), loss / updates.max(1) as f64),
            ("grad_norm".into(), grad_norm / updates.max(1) as f64),
            ("entropy".into(), entropy / masked.max(1) as f64),
            ("clip_ratio".into(), clipped as f64 / masked.max(1) as f64),
            ("learning_rate".into(), lr),
            ("num_tokens".into(), summary.num_tokens as f64),
            ("old_logprob_abs_diff".into(), delta_sum / delta_n.max(1) as f64),
            ("rollout/tokens_per_s".into(), rollout_tokens as f64 / rollout_seconds.max(1e-9)),
            ("train/tokens_per_s".into(), processed as f64 / train_seconds.max(1e-9)),
            ("step_time".into(), started.elapsed().as_secs_f64()),
        ];
        if let Some(kl) = kl_before {
            values.push(("kl".into(), kl));
        }
        if let Some((low, high)) = clip_sides {
            values.push(("clip_ratio/low_mean".into(), low as f64 / masked.max(1) as f64));
            values.push(("clip_ratio/high_mean".into(), high as f64 / masked.max(1) as f64));
        }
        if !latencies.is_empty() {
            latencies.sort_by(f64::total_cmp);
            values.push(("user_latency/p50".into(), percentile(&latencies, 0.50)));
            values.push(("user_latency/p99".into(), percentile(&latencies, 0.99)));
        }
        for (gym, (sum, success, count)) in &by_gym {
            values.push((format!("reward/{gym}"), sum / *count as f64));
            values.push((format!("success/{gym}"), success / *count as f64));
        }
        for (reason, count) in &terminations {
            values.push((format!("termination/{reason}"), *count as f64 / n_traj.max(1) as f64));
        }
        metrics(sink, step as u64, values)?;
        progress(sink, "grpo", step + 1, grpo.steps)?;
        tracing::info!(step, reward = mean, "GRPO step");
        let done = Progress { phase: Phase::Grpo, step: step + 1 };
        let every = config.eval.every;
        if every > 0 && (step + 1) % every == 0 {
            match evaluate_with(run, trainable, step as u64).await {
                Err(TrainError::Cancelled) => {
                    let dir = run.save_resumable(trainable, done, Some(&rng), summary)?;
                    sink.emit(&Event::Checkpoint { step: step as u64, path: dir.display().to_string() })?;
                    return Err(TrainError::Cancelled);
                }
                other => other?,
            };
            // Back from the evaluation to GRPO.
            progress(sink, "grpo", step + 1, grpo.steps)?;
        }
        let ck = config.checkpoint.every;
        if ck > 0 && (step + 1) % ck == 0 {
            let dir = run.save_resumable(trainable, done, Some(&rng), summary)?;
            sink.emit(&Event::Checkpoint { step: step as u64, path: dir.display().to_string() })?;
        }
    }
    Ok(())
}

/// Greedy evaluation of the current weights on the eval split (reference §9 protocol: temperature 0, feedback
/// without the reward line), one validation transcript per episode (group = the gym's index, sample = the
/// task's). Returns the mean score per gym.
async fn evaluate_with(
    run: &Ctx<'_>,
    trainable: &TrainableLlama,
    step: u64,
) -> Result<BTreeMap<String, f64>, TrainError> {
    let (config, tokenizer, sink) = (run.config, run.tokenizer, run.sink);
    let shaping = config.grpo.as_ref().map_or_else(Shaping::default, |g| Shaping {
        score: g.trajectory_score,
        credit: g.turn_credit,
        gamma: g.gamma,
    });
    let kinds = config.eval.gyms.clone().unwrap_or_else(|| config.data.gyms.clone());
    let catalog = catalog(config, &kinds)?;
    let mut policy = CpuPolicy::new(trainable.to_llama());
    let step_timeout = config.grpo.as_ref().map(|g| Duration::from_secs_f64(g.step_timeout_s));
    let (max_new, max_total, max_turns) = config
        .grpo
        .as_ref()
        .map(|g| (g.max_new_tokens, g.max_total_tokens, g.max_turns))
        .unwrap_or((256, config.sft.as_ref().map_or(2048, |s| s.max_seq_len), 16));
    let mut out = BTreeMap::new();
    let mut values = Vec::new();
    let task_lists: Vec<Vec<String>> = catalog
        .gyms()
        .iter()
        .map(|gym| {
            let ids = gym.task_ids(Some(config.eval.split));
            ids.into_iter().take(config.eval.limit_per_gym.unwrap_or(usize::MAX)).collect()
        })
        .collect();
    let episodes = task_lists.iter().map(Vec::len).sum();
    let mut played = 0;
    progress(sink, "eval", played, episodes)?;
    for ((g, gym), ids) in catalog.gyms().iter().enumerate().zip(&task_lists) {
        let (mut sum, mut normalized, mut success) = (0.0, 0.0, 0.0);
        for (i, id) in ids.iter().enumerate() {
            run.control.check()?;
            let rc = RolloutConfig {
                env: EnvConfig { mode: Mode::Eval, max_steps: max_turns, seed: i as u64, ..EnvConfig::default() },
                max_new_tokens: max_new,
                max_total_tokens: max_total,
                sampling: Sampling { temperature: 0.0, max_new_tokens: max_new, ..Sampling::default() },
                step_timeout,
            };
            let t = rollout(gym.as_ref(), id, &mut policy, tokenizer, run.user.clone(), &rc).await?;
            let reward = crate::shaping::trajectory_score(&t.turn_rewards, shaping.score, shaping.gamma);
            let zeros = vec![0.0; t.tokens.len()];
            let record = transcript::record(&t, tokenizer, RecordScores { reward, advantage: 0.0 }, &zeros)?;
            sink.emit(&Event::Transcript {
                step,
                group: g as u32,
                sample: i as u32,
                validate: true,
                record: serde_json::to_value(&record)?,
            })?;
            sum += t.transcript.score;
            normalized += t.transcript.normalized;
            success += t.transcript.success as u8 as f64;
            played += 1;
            progress(sink, "eval", played, episodes)?;
        }
        let n = ids.len().max(1) as f64;
        out.insert(gym.kind().name().to_string(), sum / n);
        values.push((format!("eval/score/{}", gym.kind()), sum / n));
        values.push((format!("eval/normalized/{}", gym.kind()), normalized / n));
        values.push((format!("eval/success/{}", gym.kind()), success / n));
    }
    metrics(sink, step, values)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::MemorySink;

    fn model_path() -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(path.exists(), "{} is missing: run scripts/setup", path.display());
        path.display().to_string()
    }

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert_eq!(percentile(&[1.0, 2.0], 0.5), 1.0);
    }

    #[test]
    fn learning_rate_warms_up_then_decays() {
        assert_eq!(learning_rate(1.0, LrSchedule::Constant, 4, 0, 10), 0.25);
        assert_eq!(learning_rate(1.0, LrSchedule::Constant, 4, 7, 10), 1.0);
        assert!((learning_rate(1.0, LrSchedule::Cosine, 0, 0, 10) - 1.0).abs() < 1e-12);
        assert!((learning_rate(1.0, LrSchedule::Cosine, 0, 10, 10) - 0.1).abs() < 1e-12);
    }

    /// A whole run, small: SFT on expert records, one GRPO step, evaluation, a checkpoint that loads back.
    #[test]
    fn a_tiny_run_goes_through_sft_grpo_eval_and_checkpoint() {
        let toml = format!(
            r#"
            name = "test"
            [model]
            tiny = {{ layers = 1, hidden = 32, heads = 2, kv_heads = 1, ffn = 64, tokenizer = "{}" }}
            [data]
            gyms = ["function"]
            [sft]
            epochs = 1
            lr = 1e-3
            batch_size = 2
            max_seq_len = 1536
            max_examples = 4
            [grpo]
            steps = 1
            prompts_per_step = 1
            group_size = 2
            mini_batches = 1
            max_turns = 2
            max_new_tokens = 8
            max_total_tokens = 1536
            kl_coef = 0.1
            [eval]
            every = 1
            limit_per_gym = 1
            [checkpoint]
            every = 1
            "#,
            model_path()
        );
        let config = RunConfig::from_toml(&toml).unwrap();
        let out = std::env::temp_dir().join(format!("userrl-train-test-{}", std::process::id()));
        let sink = MemorySink::default();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let summary = runtime.block_on(run(&config, &out, &sink)).unwrap();
        assert_eq!(summary.sft_steps, 2);
        assert!(summary.sft_first_loss.unwrap().is_finite());
        assert_eq!(summary.grpo_rewards.len(), 1);
        let events = sink.events.lock().unwrap();
        let names: Vec<String> = events
            .iter()
            .filter_map(|e| match e {
                Event::Metrics { values, .. } => Some(values.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>()),
                _ => None,
            })
            .flatten()
            .collect();
        for want in [
            "sft/loss",
            "reward",
            "reward_std",
            "frac_reward_zero_std",
            "grad_norm",
            "loss",
            "entropy",
            "clip_ratio",
            "clip_ratio/low_mean",
            "clip_ratio/high_mean",
            "kl",
            "num_tokens",
            "step_time",
            "learning_rate",
            "rollout/tokens_per_s",
            "train/tokens_per_s",
            "reward/function",
            "success/function",
            "completions/mean_length",
            "turns/mean",
            "old_logprob_abs_diff",
            "eval/score/function",
        ] {
            assert!(names.iter().any(|n| n == want), "missing metric {want}: {names:?}");
        }
        assert!(names.iter().any(|n| n.starts_with("termination/")));
        assert!(events.iter().any(|e| matches!(e, Event::Checkpoint { .. })));
        // Progress counts each phase against its own total: SFT 2 steps, GRPO 1, an evaluation of one
        // episode after GRPO step 0 (then back to GRPO) and at the end.
        let progress: Vec<(String, u64, u64)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Progress { phase, step, total } => Some((phase.clone(), *step, *total)),
                _ => None,
            })
            .collect();
        let want: Vec<(String, u64, u64)> = [
            ("sft", 0, 2),
            ("sft", 1, 2),
            ("sft", 2, 2),
            ("grpo", 0, 1),
            ("grpo", 1, 1),
            ("eval", 0, 1),
            ("eval", 1, 1),
            ("grpo", 1, 1),
            ("eval", 0, 1),
            ("eval", 1, 1),
        ]
        .into_iter()
        .map(|(p, s, t)| (p.to_string(), s, t))
        .collect();
        assert_eq!(progress, want);
        // One transcript per rollout (1 prompt x 2) and per evaluation episode (after step 0 and at the end).
        let transcripts: Vec<(u64, u32, u32, bool, userrl_types::TranscriptRecord)> = events
            .iter()
            .filter_map(|e| match e {
                Event::Transcript { step, group, sample, validate, record } => {
                    Some((*step, *group, *sample, *validate, serde_json::from_value(record.clone()).unwrap()))
                }
                _ => None,
            })
            .collect();
        let keys: Vec<(u64, u32, u32, bool)> = transcripts.iter().map(|(a, b, c, d, _)| (*a, *b, *c, *d)).collect();
        assert_eq!(keys, vec![(0, 0, 0, false), (0, 0, 1, false), (0, 0, 0, true), (1, 0, 0, true)]);
        for (_, _, _, validate, record) in &transcripts {
            assert_eq!(record.gym, "function");
            assert!(record.messages.len() >= 3, "system, opening, at least one assistant turn");
            let assistant = &record.messages[2];
            assert_eq!(assistant.tokens.iter().map(|(p, _)| p.as_str()).collect::<String>(), assistant.text);
            if *validate {
                assert!(assistant.tokens.iter().all(|(_, a)| *a == 0.0));
            }
        }
        assert_eq!(events.last(), Some(&Event::Status { status: "finished".into(), message: String::new() }));
        let loaded = load_model(&out.join("final")).unwrap();
        assert_eq!(loaded.model.config.hidden, 32);
        let _ = std::fs::remove_dir_all(&out);
    }

    fn tiny_sft_config(extra: &str) -> RunConfig {
        let toml = format!(
            r#"
            [model]
            tiny = {{ layers = 1, hidden = 16, heads = 2, kv_heads = 1, ffn = 32, tokenizer = "{}" }}
            [data]
            gyms = ["function"]
            [sft]
            epochs = 3
            batch_size = 1
            max_seq_len = 1536
            max_examples = 4
            {extra}
            [eval]
            limit_per_gym = 1
            "#,
            model_path()
        );
        RunConfig::from_toml(&toml).unwrap()
    }

    type When = Box<dyn Fn(&Event, &[Event]) -> bool + Send + Sync>;

    /// Cancels the run when an event matches.
    struct CancelWhen {
        inner: MemorySink,
        control: RunControl,
        when: When,
    }

    impl EventSink for CancelWhen {
        fn emit(&self, event: &Event) -> std::io::Result<()> {
            self.inner.emit(event)?;
            if (self.when)(event, &self.inner.events.lock().unwrap()) {
                self.control.cancel();
            }
            Ok(())
        }
    }

    fn cancel_when(
        control: &RunControl,
        when: impl Fn(&Event, &[Event]) -> bool + Send + Sync + 'static,
    ) -> Arc<CancelWhen> {
        Arc::new(CancelWhen { inner: MemorySink::default(), control: control.clone(), when: Box::new(when) })
    }

    #[test]
    fn cancel_stops_between_sft_batches_and_reports_cancelled() {
        let config = tiny_sft_config("");
        let out = std::env::temp_dir().join(format!("userrl-cancel-test-{}", std::process::id()));
        let control = RunControl::new();
        let sink = cancel_when(&control, |_, events| {
            events.iter().filter(|e| matches!(e, Event::Metrics { .. })).count() == 2
        });
        let handle = spawn(config, out.clone(), sink.clone(), control.clone()).unwrap();
        let result = handle.join().unwrap();
        assert!(matches!(result, Err(TrainError::Cancelled)), "{result:?}");
        assert!(control.is_cancelled());
        let events = sink.inner.events.lock().unwrap();
        // 12 SFT batches were planned; the run stopped right after the second.
        assert_eq!(events.iter().filter(|e| matches!(e, Event::Metrics { .. })).count(), 2);
        assert_eq!(events.last(), Some(&Event::Status { status: "cancelled".into(), message: String::new() }));
        let _ = std::fs::remove_dir_all(&out);
    }

    #[test]
    fn an_error_is_reported_as_a_failed_status() {
        let config = tiny_sft_config("data = \"/nonexistent/sft.jsonl\"");
        let out = std::env::temp_dir().join(format!("userrl-failed-test-{}", std::process::id()));
        let sink = MemorySink::default();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let result = runtime.block_on(run_with(&config, &out, &sink, &RunControl::new()));
        assert!(matches!(result, Err(TrainError::Setup(_))), "{result:?}");
        let events = sink.events.lock().unwrap();
        match events.last() {
            Some(Event::Status { status, message }) => {
                assert_eq!(status, "failed");
                assert!(message.contains("/nonexistent/sft.jsonl"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let _ = std::fs::remove_dir_all(&out);
    }

    /// Four expert records in a file (rendering the whole generated set costs seconds in a debug build).
    fn resume_config(dir: &Path) -> RunConfig {
        let catalog = Catalog::builtin(&[GymKind::Function]).unwrap();
        let mut records = Vec::new();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime
            .block_on(generate_sft(&catalog, &SftOptions::default(), Arc::new(ScriptedUser), |r| {
                records.push(r);
                Ok(())
            }))
            .unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let data = dir.join("sft.jsonl");
        let lines: Vec<String> = records.iter().take(4).map(|r| r.to_string()).collect();
        std::fs::write(&data, lines.join("\n")).unwrap();
        let toml = format!(
            r#"
            seed = 3
            [model]
            tiny = {{ layers = 1, hidden = 16, heads = 2, kv_heads = 1, ffn = 32, tokenizer = "{}" }}
            [data]
            gyms = ["function"]
            [sft]
            data = "{}"
            epochs = 2
            lr = 1e-2
            batch_size = 2
            max_seq_len = 1536
            [grpo]
            steps = 3
            prompts_per_step = 1
            group_size = 4
            mini_batches = 2
            max_turns = 2
            max_new_tokens = 8
            max_total_tokens = 1536
            temperature = 1.0
            lr = 1e-2
            kl_coef = 0.05
            [eval]
            every = 0
            limit_per_gym = 1
            [checkpoint]
            every = 1
            "#,
            model_path(),
            data.display()
        );
        RunConfig::from_toml(&toml).unwrap()
    }

    fn params_of(dir: &Path) -> Vec<f32> {
        TrainableLlama::from_llama(&load_model(dir).unwrap().model).unwrap().params
    }

    fn transcripts_of(events: &[Event]) -> Vec<Event> {
        events.iter().filter(|e| matches!(e, Event::Transcript { .. })).cloned().collect()
    }

    /// `model.device = "wgpu"` runs the optimiser steps through the WGSL trainer (lavapipe here): SFT follows the
    /// CPU run's loss curve, GRPO (KL included) completes on the device, and the checkpoint holds the device's
    /// weights.
    #[test]
    fn a_wgpu_learner_trains_like_the_cpu_one() {
        let base = std::env::temp_dir().join(format!("userrl-wgpu-learner-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut summaries = Vec::new();
        for device in [crate::config::DeviceChoice::Cpu, crate::config::DeviceChoice::Wgpu] {
            let mut config = resume_config(&base);
            config.model.device = device;
            let out = base.join(format!("{device:?}"));
            summaries.push(runtime.block_on(run(&config, &out, &MemorySink::default())).unwrap());
        }
        let (cpu, gpu) = (&summaries[0], &summaries[1]);
        assert_eq!(cpu.sft_steps, gpu.sft_steps);
        let (a, b) = (cpu.sft_last_loss.unwrap(), gpu.sft_last_loss.unwrap());
        assert!((a - b).abs() <= 1e-3 * a.abs().max(1.0), "last SFT loss: cpu {a}, wgpu {b}");
        assert_eq!(gpu.grpo_rewards.len(), 3);
        let dir = gpu.checkpoint.as_ref().unwrap();
        assert!(load_model(Path::new(dir)).is_ok(), "{dir}");
        let _ = std::fs::remove_dir_all(&base);
    }

    /// SFT then GRPO in one run ends bit-exactly where an SFT run followed by a GRPO run from its SFT checkpoint
    /// (`model.path`) ends: GRPO starts with a fresh optimizer either way, so the ablations can share one SFT start.
    #[test]
    fn grpo_from_the_sft_checkpoint_equals_sft_then_grpo() {
        let base = std::env::temp_dir().join(format!("userrl-from-sft-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let both = resume_config(&base);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let straight = runtime.block_on(run(&both, &base.join("both"), &MemorySink::default())).unwrap();
        let sft_dir = base.join("both").join(Progress { phase: Phase::Sft, step: straight.sft_steps }.dir_name());
        assert!(sft_dir.join("config.json").exists(), "{} is missing", sft_dir.display());
        let mut grpo_only = both.clone();
        grpo_only.sft = None;
        grpo_only.model.tiny = None;
        grpo_only.model.path = Some(sft_dir.display().to_string());
        grpo_only.validate().unwrap();
        let from_sft = runtime.block_on(run(&grpo_only, &base.join("grpo"), &MemorySink::default())).unwrap();
        assert_eq!(from_sft.sft_steps, 0);
        assert_eq!(from_sft.grpo_rewards, straight.grpo_rewards);
        let (a, b) = (params_of(&base.join("both/final")), params_of(&base.join("grpo/final")));
        assert_eq!(a.len(), b.len());
        let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
        assert_eq!(differ, 0, "{differ} of {} parameters differ", a.len());
        let _ = std::fs::remove_dir_all(&base);
    }

    /// Stops a run with a cancel at each of several points, resumes it, and checks that it ends exactly where
    /// the uninterrupted run ended (same RNG, AdamW state and step: bit-exact parameters).
    #[test]
    fn resume_after_a_cancel_is_bit_exact() {
        let base = std::env::temp_dir().join(format!("userrl-resume-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let config = resume_config(&base);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let straight_sink = MemorySink::default();
        let straight = runtime.block_on(run(&config, &base.join("straight"), &straight_sink)).unwrap();
        let straight_params = params_of(&base.join("straight/final"));
        let straight_t = transcripts_of(&straight_sink.events.lock().unwrap());
        let cases: Vec<(&str, When)> = vec![
            // Between SFT batches.
            ("sft", Box::new(|e, _| matches!(e, Event::Metrics { step: 2, values } if values[0].0 == "sft/loss"))),
            // After the update of GRPO step 1, before its checkpoint: the cancel lands at the next step's start.
            ("grpo", Box::new(|e, _| matches!(e, Event::Metrics { step: 1, values } if values[0].0 == "reward"))),
            // While GRPO step 2 rolls out: that step is discarded and redone.
            ("rollout", Box::new(|e, _| matches!(e, Event::Checkpoint { step: 1, .. }))),
        ];
        for (name, when) in cases {
            let out = base.join(name);
            let control = RunControl::new();
            let first = Arc::new(CancelWhen { inner: MemorySink::default(), control: control.clone(), when });
            let stopped = runtime.block_on(run_with(&config, &out, first.as_ref(), &control));
            assert!(matches!(stopped, Err(TrainError::Cancelled)), "{name}: {stopped:?}");
            let second = MemorySink::default();
            let resumed = runtime.block_on(resume(&out, &second, &RunControl::new())).unwrap();

            assert_eq!(resumed.grpo_rewards, straight.grpo_rewards, "{name}");
            assert_eq!(resumed.sft_first_loss, straight.sft_first_loss, "{name}");
            assert_eq!(resumed.sft_last_loss, straight.sft_last_loss, "{name}");
            assert_eq!(resumed.eval, straight.eval, "{name}");
            let params = params_of(&out.join("final"));
            assert_eq!(params.len(), straight_params.len());
            let differ = params.iter().zip(&straight_params).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
            assert_eq!(differ, 0, "{name}: {differ} of {} parameters differ", params.len());
            match second.events.lock().unwrap().first() {
                Some(Event::Status { status, message }) => {
                    assert_eq!(status, "running");
                    assert!(message.contains("resumed from"), "{message}");
                }
                other => panic!("{name}: {other:?}"),
            }
            // The resumed run's transcripts are the straight run's from the resume point on.
            let resumed_t = transcripts_of(&second.events.lock().unwrap());
            assert!(!resumed_t.is_empty(), "{name}");
            assert_eq!(resumed_t[..], straight_t[straight_t.len() - resumed_t.len()..], "{name}");
            // Only the newest checkpoint keeps its optimizer state.
            let resumable: Vec<_> = std::fs::read_dir(&out)
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join(crate::resume::RESUME_DIR).exists())
                .map(|e| e.file_name())
                .collect();
            assert_eq!(resumable, vec![std::ffi::OsString::from("step-00003")], "{name}");
            // Keep the disk footprint to one stopped run at a time.
            let _ = std::fs::remove_dir_all(&out);
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}
