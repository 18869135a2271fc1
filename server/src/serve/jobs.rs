//! The job manager: launches training and evaluation runs inside the server process, cancels and resumes
//! them, and keeps their status rows true.
//!
//! A launch validates the whole config first (a bad key is named, nothing is created), then creates the run
//! row (`queued`) and a supervisor task on the server's runtime. The supervisor waits for a slot (`max_jobs`,
//! one by default: training is CPU-bound and this box has two cores), then runs the job on its OWN OS thread
//! with its own single-threaded tokio runtime, so a training step never stalls an HTTP request. Events go
//! through a `StoreSink` whose writer runs on the server's runtime. When the thread ends the supervisor flushes
//! and sets the final status: finished, failed (with the error), cancelled — or interrupted when the server is
//! shutting down, so the run can be resumed after a restart. A panicking job thread becomes a failed run.
//! Both kinds resume: training from its latest resumable checkpoint, evaluation by playing the episodes it
//! has not stored yet.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{Notify, Semaphore, oneshot};
use userrl_rl::config::{ConfigError, RunConfig};
use userrl_rl::events::{Event, EventSink};
use userrl_rl::train::{self, RunControl, TrainError};
use userrl_store::{MAX_TRANSCRIPT_PAGE, NewEval, NewRun, Store, StoreError, StoreSink, TranscriptFilter};
use userrl_types::TranscriptSummary;
use userrl_types::{RunKind, RunStatus};

use super::evaljob::{self, EvalJobConfig};
use super::paths;

/// Where jobs write and how many run at once.
#[derive(Clone, Debug)]
pub struct JobOptions {
    /// Checkpoints and the config of run `id` go under `<runs_dir>/<id>/`.
    pub runs_dir: PathBuf,
    /// Relative paths in configs (models, task files) that do not exist from the working directory are taken
    /// relative to this folder (the project root).
    pub root: PathBuf,
    pub configs_dir: Option<PathBuf>,
    /// Jobs running at once; the others wait in `queued`.
    pub max_jobs: usize,
}

/// A launch refused before anything was created: the config key at fault (when known) and what is wrong.
pub use userrl_app::LaunchError;

/// What a run does.
enum Job {
    Train { config: Box<RunConfig>, resume: bool },
    Eval(Box<EvalJobConfig>),
}

/// How a job's thread ended.
#[derive(Debug, PartialEq)]
enum Outcome {
    Finished,
    Cancelled,
    Failed(String),
}

#[derive(Clone)]
pub struct JobManager {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    handle: Handle,
    options: JobOptions,
    slots: Arc<Semaphore>,
    /// Runs queued or running in this process, with the switch that stops each.
    live: Mutex<HashMap<i64, RunControl>>,
    /// Woken whenever a job leaves `live`.
    left: Notify,
    shutting_down: AtomicBool,
}

impl JobManager {
    /// A manager whose jobs write through `store`; call it from within the server's runtime.
    pub fn new(store: Store, options: JobOptions) -> JobManager {
        let slots = Arc::new(Semaphore::new(options.max_jobs.max(1)));
        JobManager {
            inner: Arc::new(Inner {
                store,
                handle: Handle::current(),
                options,
                slots,
                live: Mutex::new(HashMap::new()),
                left: Notify::new(),
                shutting_down: AtomicBool::new(false),
            }),
        }
    }

    /// Run ids queued or running in this process.
    pub fn live_runs(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.live().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<i64, RunControl>> {
        // A poisoned map still holds valid controls: a panic elsewhere must not stop cancelling.
        self.inner.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Launches `configs/quickstart.toml` (from the configs directory) when the store has no runs at all.
    pub async fn launch_demo_if_empty(&self) -> anyhow::Result<Option<i64>> {
        if !self.inner.store.runs().await?.is_empty() {
            return Ok(None);
        }
        let Some(dir) = &self.inner.options.configs_dir else {
            anyhow::bail!("no configs directory found (set USERRL_CONFIGS); no demo run started");
        };
        let path = dir.join("quickstart.toml");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| anyhow::anyhow!("reading the demo config {}: {e}", path.display()))?;
        let id = self.launch(&text).await.map_err(|e| anyhow::anyhow!("the demo config: {}", e.message))?;
        Ok(Some(id))
    }

    /// Stops every job for a server shutdown: each is cancelled and, once its thread has stopped (or after
    /// `grace`), marked interrupted so that it can be resumed after the restart.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        for control in self.live().values() {
            control.cancel();
        }
        let drained = tokio::time::timeout(grace, async {
            loop {
                let left = self.inner.left.notified();
                if self.live().is_empty() {
                    break;
                }
                left.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(runs = ?self.live_runs(), "jobs still running at shutdown; marking them interrupted");
        }
        match self.inner.store.mark_interrupted().await {
            Ok(n) if n > 0 => tracing::info!(runs = n, "marked interrupted"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "marking runs interrupted at shutdown"),
        }
    }

    fn start(&self, id: i64, job: Job) {
        let control = RunControl::new();
        self.live().insert(id, control.clone());
        let manager = self.clone();
        self.inner.handle.spawn(async move {
            let outcome = manager.supervise(id, job, control).await;
            let inner = &manager.inner;
            let (status, message) = match outcome {
                _ if inner.shutting_down.load(Ordering::SeqCst) && outcome != Outcome::Finished => {
                    (RunStatus::Interrupted, "the server stopped; resume it to continue".to_string())
                }
                Outcome::Finished => (RunStatus::Finished, String::new()),
                Outcome::Cancelled => (RunStatus::Cancelled, String::new()),
                Outcome::Failed(message) => (RunStatus::Failed, message),
            };
            match &status {
                RunStatus::Failed => tracing::warn!(run = id, %message, "run failed"),
                _ => tracing::info!(run = id, status = status.as_str(), "run ended"),
            }
            if let Err(e) = inner.store.set_run_status(id, status, &message).await {
                tracing::error!(run = id, error = %e, "recording the run's final status");
            }
            manager.live().remove(&id);
            inner.left.notify_waiters();
        });
    }

    /// Waits for a slot, runs the job on its own thread and waits for it.
    async fn supervise(&self, id: i64, job: Job, control: RunControl) -> Outcome {
        // A queued run polls its cancel switch while it waits, so cancelling it does not wait for the slot.
        let acquire = self.inner.slots.clone().acquire_owned();
        tokio::pin!(acquire);
        let _slot = loop {
            if control.is_cancelled() {
                return Outcome::Cancelled;
            }
            tokio::select! {
                slot = &mut acquire => match slot {
                    Ok(slot) => break slot,
                    Err(_) => return Outcome::Failed("the job manager is closed".into()),
                },
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        };
        if control.is_cancelled() {
            return Outcome::Cancelled;
        }
        if let Err(e) = self.inner.store.set_run_status(id, RunStatus::Running, "").await {
            return Outcome::Failed(format!("recording the run as running: {e}"));
        }
        let out = self.inner.options.runs_dir.join(id.to_string());
        let sink = Arc::new(StoreSink::new(self.inner.store.clone(), id, self.inner.handle.clone()));
        let (done, finished) = oneshot::channel();
        let thread_control = control.clone();
        let thread_sink = sink.clone();
        let (store, handle) = (self.inner.store.clone(), self.inner.handle.clone());
        let spawned = std::thread::Builder::new().name(format!("run-{id}")).spawn(move || {
            let outcome = execute(job, &out, &thread_sink, &thread_control, (&store, &handle));
            let _ = done.send(outcome);
        });
        let outcome = match spawned {
            Err(e) => Outcome::Failed(format!("starting the job's thread: {e}")),
            Ok(_) => finished.await.unwrap_or_else(|_| Outcome::Failed("the job's thread panicked".into())),
        };
        if let Err(e) = sink.flush().await {
            tracing::error!(run = id, error = %e, "flushing the run's last events");
        }
        outcome
    }
}

/// Runs one job to its end on the calling (dedicated) thread.
/// `server` is the store and the server's runtime, for writes the job makes outside its event stream.
fn execute(job: Job, out: &Path, sink: &StoreSink, control: &RunControl, server: (&Store, &Handle)) -> Outcome {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return Outcome::Failed(format!("starting the job's runtime: {e}")),
    };
    if let Err(e) = std::fs::create_dir_all(out) {
        return Outcome::Failed(format!("creating {}: {e}", out.display()));
    }
    match job {
        Job::Train { config, resume } => {
            // A run stopped before its first resumable checkpoint has nothing to continue from: start it over.
            let result = if resume && userrl_rl::resume::latest(out).is_ok() {
                runtime.block_on(train::resume(out, sink, control))
            } else {
                runtime.block_on(train::run_with(&config, out, sink, control))
            };
            match result {
                Ok(_) => Outcome::Finished,
                Err(TrainError::Cancelled) => Outcome::Cancelled,
                Err(e) => Outcome::Failed(e.to_string()),
            }
        }
        Job::Eval(config) => run_eval(&runtime, &config, sink, control, server),
    }
}

/// Every episode an eval run has stored (its validation transcripts).
async fn stored_episodes(store: &Store, run_id: i64) -> Result<Vec<TranscriptSummary>, StoreError> {
    let mut out = Vec::new();
    loop {
        let filter = TranscriptFilter {
            validate: Some(true),
            limit: MAX_TRANSCRIPT_PAGE,
            offset: out.len() as i64,
            ..TranscriptFilter::default()
        };
        let page = store.transcripts(run_id, &filter).await?;
        let last = (page.len() as i64) < MAX_TRANSCRIPT_PAGE;
        out.extend(page);
        if last {
            return Ok(out);
        }
    }
}

fn run_eval(
    runtime: &tokio::runtime::Runtime,
    config: &EvalJobConfig,
    sink: &StoreSink,
    control: &RunControl,
    (store, handle): (&Store, &Handle),
) -> Outcome {
    let run_id = sink.run_id();
    // A resumed job skips what its first attempt stored. Outside the job's runtime, so blocking on the
    // server's is allowed.
    let stored = match handle.block_on(stored_episodes(store, run_id)) {
        Ok(stored) => stored,
        Err(e) => return Outcome::Failed(format!("reading the episodes already played: {e}")),
    };
    let done: HashSet<(String, String)> = stored.iter().map(|t| (t.gym.clone(), t.task_id.clone())).collect();
    let total = config.episodes().unwrap_or(0);
    let mut finished = done.len();
    let mut emit_error = None;
    let emit = |event: &Event, emit_error: &mut Option<String>| {
        if let Err(e) = sink.emit(event) {
            emit_error.get_or_insert_with(|| format!("writing events: {e}"));
        }
    };
    let progress =
        |finished: usize| Event::Progress { phase: "eval".into(), step: finished as u64, total: total as u64 };
    emit(&progress(finished), &mut emit_error);
    let result = runtime.block_on(evaljob::run(
        config,
        &done,
        |index, t| {
            let record = match serde_json::to_value(evaljob::record(t)) {
                Ok(record) => record,
                Err(e) => {
                    emit_error.get_or_insert_with(|| format!("encoding a transcript: {e}"));
                    return;
                }
            };
            let step = index as u64 + 1;
            finished += 1;
            let events = [
                Event::Transcript { step, group: 0, sample: 0, validate: true, record },
                Event::Metrics {
                    step,
                    values: vec![
                        ("eval/normalized".into(), t.normalized),
                        ("eval/success".into(), f64::from(u8::from(t.success))),
                        (format!("eval/normalized/{}", t.gym.name()), t.normalized),
                    ],
                },
                progress(finished),
            ];
            for event in &events {
                emit(event, &mut emit_error);
            }
        },
        || control.is_cancelled(),
    ));
    let outcome = match result {
        Err(e) => return Outcome::Failed(format!("{e:#}")),
        Ok(outcome) => outcome,
    };
    if let Some(e) = emit_error {
        return Outcome::Failed(e);
    }
    if !outcome.completed {
        return Outcome::Cancelled;
    }
    // The rows cover every episode of the job, those of an earlier attempt included: read them back.
    if let Err(e) = sink.flush_blocking() {
        return Outcome::Failed(format!("storing the episodes: {e}"));
    }
    let stored = match handle.block_on(stored_episodes(store, run_id)) {
        Ok(stored) => stored,
        Err(e) => return Outcome::Failed(format!("reading the episodes back: {e}")),
    };
    let spec = &config.evaluate;
    let user_kind = serde_json::to_value(spec.user.kind).ok().and_then(|v| v.as_str().map(String::from));
    let split = serde_json::to_value(spec.split).ok().and_then(|v| v.as_str().map(String::from));
    for row in evaljob::gym_scores(&stored) {
        let new = NewEval {
            run_id: Some(run_id),
            model: spec.agent.clone(),
            gym: row.gym,
            user_kind: user_kind.clone().unwrap_or_default(),
            split: split.clone().unwrap_or_default(),
            episodes: row.episodes as i64,
            mean_score: row.mean_score,
            normalized: row.mean_normalized,
            success_rate: row.success_rate,
            mean_turns: row.mean_turns,
        };
        if let Err(e) = handle.block_on(store.add_eval(&new)) {
            return Outcome::Failed(format!("recording the eval row: {e}"));
        }
    }
    Outcome::Finished
}

fn launch_error(field: Option<&str>, message: impl Into<String>) -> LaunchError {
    LaunchError { field: field.map(String::from), message: message.into() }
}

/// Parses and validates a training config; errors name the key at fault.
pub fn parse_run_config(text: &str) -> Result<RunConfig, LaunchError> {
    let config: RunConfig = toml::from_str(text)
        .map_err(|e| LaunchError { field: super::toml_error_key(text, &e), message: e.message().trim().to_string() })?;
    config.validate().map_err(|e| match e {
        ConfigError::Invalid { key, message } => launch_error(Some(key), message),
        other => launch_error(None, other.to_string()),
    })?;
    Ok(config)
}

/// Makes the config's relative paths work from any working directory, and checks that its files exist, so
/// that a typo fails the launch and not the job a minute later.
fn resolve_paths(config: &mut RunConfig, root: &Path) -> Result<(), LaunchError> {
    fn check(slot: &mut String, key: &str, root: &Path) -> Result<(), LaunchError> {
        *slot = paths::resolve(slot, root);
        if Path::new(slot.as_str()).exists() {
            Ok(())
        } else {
            Err(launch_error(Some(key), format!("`{slot}` does not exist")))
        }
    }
    if let Some(path) = config.model.path.as_mut() {
        check(path, "model.path", root)?;
    }
    if let Some(tiny) = config.model.tiny.as_mut() {
        check(&mut tiny.tokenizer, "model.tiny.tokenizer", root)?;
    }
    if let Some(tasks) = config.data.tasks.as_mut() {
        check(tasks, "data.tasks", root)?;
    }
    if let Some(data) = config.sft.as_mut().and_then(|s| s.data.as_mut()) {
        check(data, "sft.data", root)?;
    }
    Ok(())
}

fn model_label(config: &RunConfig) -> String {
    match (&config.model.path, &config.model.tiny) {
        (Some(path), _) => path.clone(),
        (None, Some(t)) => format!("tiny {}x{} (ffn {})", t.layers, t.hidden, t.ffn),
        (None, None) => String::new(),
    }
}

impl JobManager {
    fn parse_train(&self, text: &str) -> Result<RunConfig, LaunchError> {
        let mut config = parse_run_config(text)?;
        resolve_paths(&mut config, &self.inner.options.root)?;
        Ok(config)
    }
}

impl JobManager {
    /// The preset configs: (name, TOML text) of each file in the configs directory.
    pub fn presets(&self) -> Vec<(String, String)> {
        paths::presets(self.inner.options.configs_dir.as_deref())
    }

    /// Validates a training config or an eval document and queues it; returns the run id.
    pub async fn launch(&self, config_toml: &str) -> Result<i64, LaunchError> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(launch_error(None, "the server is shutting down"));
        }
        let (new, job) = if evaljob::is_eval_document(config_toml) {
            let config = EvalJobConfig::from_toml(config_toml)
                .map_err(|e| LaunchError { field: e.field, message: e.message })?;
            let episodes = config.episodes().map_err(|e| LaunchError { field: e.field, message: e.message })?;
            let new = NewRun {
                name: config.name.clone(),
                kind: RunKind::Eval,
                config: config_toml.to_string(),
                gyms: config.evaluate.gyms.iter().map(|g| g.name().to_string()).collect(),
                model: config.evaluate.agent.clone(),
                device: "cpu".into(),
                total_steps: episodes as i64,
            };
            (new, Job::Eval(Box::new(config)))
        } else {
            let config = self.parse_train(config_toml)?;
            let new = NewRun {
                name: config.name.clone(),
                kind: RunKind::Train,
                config: config_toml.to_string(),
                gyms: config.data.gyms.iter().map(|g| g.name().to_string()).collect(),
                model: model_label(&config),
                device: serde_json::to_value(config.model.device)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                total_steps: config.grpo.as_ref().map_or(0, |g| g.steps as i64),
            };
            (new, Job::Train { config: Box::new(config), resume: false })
        };
        let id = self
            .inner
            .store
            .create_run(&new)
            .await
            .map_err(|e| launch_error(None, format!("recording the run: {e}")))?;
        tracing::info!(run = id, name = %new.name, kind = ?new.kind, "launched");
        self.start(id, job);
        Ok(id)
    }

    /// Stops a queued or running run (it ends `cancelled`; a training run saves a resumable checkpoint).
    pub async fn cancel(&self, run_id: i64) -> Result<(), String> {
        match self.live().get(&run_id) {
            Some(control) => {
                control.cancel();
                tracing::info!(run = run_id, "cancel requested");
                Ok(())
            }
            None => Err(format!("run {run_id} is not queued or running")),
        }
    }

    /// Continues an interrupted or cancelled run: training from its latest resumable checkpoint, evaluation
    /// with the episodes it has not stored yet.
    pub async fn resume(&self, run_id: i64) -> Result<(), String> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err("the server is shutting down".into());
        }
        let run = self.inner.store.run(run_id).await.map_err(|e| e.to_string())?.ok_or(format!("no run {run_id}"))?;
        if self.live().contains_key(&run_id) || run.status.is_live() {
            return Err(format!("run {run_id} is already {}", run.status.as_str()));
        }
        if !matches!(run.status, RunStatus::Interrupted | RunStatus::Cancelled) {
            return Err(format!("run {run_id} is {}; only interrupted or cancelled runs resume", run.status.as_str()));
        }
        let job = match run.kind {
            RunKind::Eval => Job::Eval(Box::new(EvalJobConfig::from_toml(&run.config).map_err(|e| e.to_string())?)),
            RunKind::Train => {
                Job::Train { config: Box::new(self.parse_train(&run.config).map_err(|e| e.message)?), resume: true }
            }
        };
        self.inner.store.set_run_status(run_id, RunStatus::Queued, "resuming").await.map_err(|e| e.to_string())?;
        tracing::info!(run = run_id, "resuming");
        self.start(run_id, job);
        Ok(())
    }
}

/// The web app's launcher is the job manager itself.
#[async_trait::async_trait]
impl userrl_app::RunLauncher for JobManager {
    fn presets(&self) -> Vec<(String, String)> {
        JobManager::presets(self)
    }

    async fn launch(&self, config_toml: &str) -> Result<i64, LaunchError> {
        JobManager::launch(self, config_toml).await
    }

    async fn cancel(&self, run_id: i64) -> Result<(), String> {
        JobManager::cancel(self, run_id).await
    }

    async fn resume(&self, run_id: i64) -> Result<(), String> {
        JobManager::resume(self, run_id).await
    }
}
