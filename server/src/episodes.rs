//! Live episodes with a person as the user: the server's [`LiveEpisodes`]. Each episode is one tokio task that
//! plays the gym with `userrl_rl::rollout::rollout_live` (the trainer's rollout code, on the engine of a model
//! served on /v1) against a `HumanUser`; the person answers through the episode's `HumanChannel`. Every
//! sampled token, gym step and prompt change updates the episode's `EpisodeState` in a watch channel, which
//! the web app pushes to the browser (SSE). A question left unanswered for the idle timeout abandons the
//! episode. Each finished episode is stored as a run-less episode row (`Store::add_episode`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use userrl_app::{EpisodeError, LiveEpisodes};
use userrl_gym::human::{self, HumanAnswer, HumanChannel, HumanError, HumanUser, Shown, Value};
use userrl_gym::{Catalog, EnvConfig, GymKind, Mode, tool};
use userrl_nn::generate::Sampling;
use userrl_rl::rollout::{RolloutConfig, RolloutError, RolloutEvent, RolloutJob, Trajectory, rollout_live};
use userrl_store::{NewEpisode, Store};
use userrl_types::human::{
    Control, EpisodeItem, EpisodeOutcome, EpisodeSpec, EpisodeState, EpisodeStatus, GymTasks, ToolCallView,
};
use userrl_types::{Speaker, TranscriptMessage, TranscriptRecord};

use crate::openai::{OpenAiState, ServedModel};

/// Limits of the registry.
#[derive(Clone, Debug)]
pub struct EpisodeOptions {
    /// An unanswered question abandons the episode after this long.
    pub idle_timeout: Duration,
    /// Most episodes live at once (each holds an engine sequence).
    pub max_live: usize,
    /// How long a finished episode's state stays readable.
    pub keep_finished: Duration,
    /// Most new tokens per agent turn a spec may ask for.
    pub max_new_tokens: usize,
}

impl Default for EpisodeOptions {
    fn default() -> EpisodeOptions {
        EpisodeOptions {
            idle_timeout: human::DEFAULT_TIMEOUT,
            max_live: 32,
            keep_finished: Duration::from_secs(30 * 60),
            max_new_tokens: 1024,
        }
    }
}

struct Live {
    state: watch::Sender<EpisodeState>,
    channel: Arc<HumanChannel>,
    finished: Option<Instant>,
}

struct Inner {
    openai: OpenAiState,
    store: Store,
    catalog: Arc<Catalog>,
    options: EpisodeOptions,
    live: Mutex<HashMap<String, Live>>,
}

/// The registry of live episodes. Cheap to clone (shared).
#[derive(Clone)]
pub struct EpisodeRegistry {
    inner: Arc<Inner>,
}

fn invalid(message: impl Into<String>) -> EpisodeError {
    EpisodeError::Invalid(message.into())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl EpisodeRegistry {
    pub fn new(openai: OpenAiState, store: Store, catalog: Arc<Catalog>, options: EpisodeOptions) -> EpisodeRegistry {
        EpisodeRegistry { inner: Arc::new(Inner { openai, store, catalog, options, live: Mutex::new(HashMap::new()) }) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Live>> {
        // Every update of the map is a single insert/remove: a panic elsewhere cannot leave it half-written.
        self.inner.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gym(&self, name: &str) -> Result<&Arc<dyn userrl_gym::Gym>, EpisodeError> {
        let kind = GymKind::parse(name).ok_or_else(|| invalid(format!("unknown gym `{name}`")))?;
        self.inner.catalog.get(kind).ok_or_else(|| invalid(format!("the gym `{name}` is not loaded on this server")))
    }

    /// Forgets finished episodes older than `keep_finished`.
    fn sweep(&self) {
        let keep = self.inner.options.keep_finished;
        self.lock().retain(|_, live| live.finished.is_none_or(|at| at.elapsed() < keep));
    }

    fn check(&self, spec: &EpisodeSpec) -> Result<Arc<ServedModel>, EpisodeError> {
        let gym = self.gym(&spec.gym)?;
        if !gym.tasks().iter().any(|t| t.id == spec.task_id) {
            return Err(invalid(format!("{} has no task `{}`", gym.kind(), spec.task_id)));
        }
        let model = self.inner.openai.model(&spec.model).ok_or_else(|| {
            EpisodeError::Unavailable(format!("the model `{}` is not loaded (load it on the chat page)", spec.model))
        })?;
        if !(0.0..=2.0).contains(&spec.temperature) {
            return Err(invalid("temperature must be between 0 and 2"));
        }
        if !(spec.top_p > 0.0 && spec.top_p <= 1.0) {
            return Err(invalid("top_p must be in (0, 1]"));
        }
        let max = self.inner.options.max_new_tokens;
        if spec.max_new_tokens == 0 || spec.max_new_tokens > max {
            return Err(invalid(format!("max new tokens must be between 1 and {max}")));
        }
        if spec.origin.is_empty() || spec.origin.len() > 200 {
            return Err(invalid("origin must be 1 to 200 characters"));
        }
        Ok(model)
    }
}

/// A tool call as a card.
pub fn call_view(name: &str, arguments: &serde_json::Value) -> ToolCallView {
    ToolCallView {
        name: name.to_string(),
        arguments: serde_json::to_string_pretty(arguments).unwrap_or_else(|_| arguments.to_string()),
        choice: arguments.get("choice").and_then(serde_json::Value::as_str).map(String::from),
        content: arguments.get("content").and_then(serde_json::Value::as_str).map(String::from),
    }
}

/// An agent turn's text: what comes before its first tool call, and the call.
fn split_turn(text: &str) -> (String, Option<ToolCallView>) {
    let parsed = tool::parse_hermes(text);
    match parsed.calls.first() {
        Some(call) => {
            let before = text.find("<tool_call>").map_or(text, |i| &text[..i]).trim().to_string();
            (before, Some(call_view(&call.name, &call.arguments)))
        }
        None => (text.trim().to_string(), None),
    }
}

/// The person's answer as one readable line per control (option labels, not ids).
fn answer_text(controls: &[Control], answer: &HumanAnswer) -> String {
    let mut lines = Vec::new();
    for control in controls {
        let Some(value) = answer.values.get(control.name()) else { continue };
        let label_of = |options: &[human::Pick], id: &str| {
            options.iter().find(|o| o.id == id).map_or_else(|| id.to_string(), |o| o.label.clone())
        };
        let (label, shown): (&str, String) = match (control, value) {
            (Control::Buttons { label, options, .. }, Value::Text(id)) => (label, label_of(options, id)),
            (Control::Checkboxes { label, options, .. }, Value::List(ids)) => {
                let picked: Vec<String> = ids.iter().map(|id| label_of(options, id)).collect();
                (label, if picked.is_empty() { "none".to_string() } else { picked.join("; ") })
            }
            (Control::Scale { label, min, labels, .. }, Value::Number(n)) => {
                let name = usize::try_from(n - min).ok().and_then(|i| labels.get(i));
                (label, name.map_or_else(|| n.to_string(), |l| format!("{n} ({l})")))
            }
            (Control::Text { label, .. }, Value::Text(text)) => (label, text.clone()),
            // `validate` accepted the answer, so the kinds match; anything else is shown as it came.
            (control, other) => (control.name(), format!("{other:?}")),
        };
        if let Control::Text { .. } = control
            && shown.trim().is_empty()
        {
            continue;
        }
        lines.push(format!("{label}: {shown}"));
    }
    lines.join("\n")
}

/// The stored record of a finished episode: the agent's turns as sampled, the person's answers as user
/// messages, the environment's feedback as tool messages.
fn record(state: &EpisodeState, raw_turns: &[String], trajectory: Option<&Trajectory>) -> TranscriptRecord {
    let message =
        |speaker, text: &str, reward| TranscriptMessage { speaker, text: text.to_string(), tokens: Vec::new(), reward };
    let mut messages = Vec::new();
    if let Some(t) = trajectory {
        messages.push(message(Speaker::System, &t.system, None));
    }
    for item in &state.items {
        match item {
            EpisodeItem::Opening { text } => messages.push(message(Speaker::User, text, None)),
            EpisodeItem::Agent { turn, text, reward, .. } => {
                let raw = raw_turns.get(*turn).cloned().unwrap_or_else(|| text.clone());
                messages.push(message(Speaker::Assistant, &raw, Some(reward.unwrap_or(0.0))));
            }
            EpisodeItem::Human { text, .. } => messages.push(message(Speaker::User, &format!("[person] {text}"), None)),
            EpisodeItem::Feedback { text, .. } => messages.push(message(Speaker::Tool, text, None)),
        }
    }
    let outcome = state.outcome.clone();
    let (score, normalized, success, termination) = match (&outcome, trajectory) {
        (_, Some(t)) => {
            (t.transcript.score, t.transcript.normalized, t.transcript.success, t.termination.name().to_string())
        }
        (Some(o), None) => (o.score, o.normalized, o.success, o.termination.clone()),
        (None, None) => (0.0, 0.0, false, "agent_error".to_string()),
    };
    TranscriptRecord {
        gym: state.spec.gym.clone(),
        task_id: state.spec.task_id.clone(),
        reward: score,
        score,
        normalized,
        success,
        termination,
        advantage: 0.0,
        turn_rewards: state.turn_rewards.clone(),
        messages,
    }
}

/// Applies one rollout report to the state (`raw_turns` keeps each turn's decoded text for the record).
fn apply(
    state: &mut EpisodeState,
    event: RolloutEvent,
    model: &ServedModel,
    stream_ids: &mut Vec<u32>,
    raw_turns: &mut Vec<String>,
) -> bool {
    let without_stop = |ids: &[u32]| -> String {
        let end = ids.iter().rposition(|id| !model.stop.contains(id)).map_or(0, |i| i + 1);
        model.tokenizer.decode(&ids[..end]).unwrap_or_default()
    };
    match event {
        RolloutEvent::Started { opening } => state.items.push(EpisodeItem::Opening { text: opening }),
        RolloutEvent::Token { id, .. } => {
            stream_ids.push(id);
            let text = without_stop(stream_ids);
            // A character split across tokens: wait for the rest.
            if text.ends_with('\u{FFFD}') || text == state.streaming {
                return false;
            }
            state.streaming = text;
        }
        RolloutEvent::Sampled { turn, tokens } => {
            stream_ids.clear();
            state.streaming.clear();
            let raw = without_stop(&tokens);
            let (text, call) = split_turn(&raw);
            raw_turns.push(raw);
            state.items.push(EpisodeItem::Agent { turn, text, call, reward: None });
        }
        RolloutEvent::Stepped { turn, reward, feedback, .. } => {
            for item in state.items.iter_mut().rev() {
                if let EpisodeItem::Agent { turn: t, reward: r, .. } = item
                    && *t == turn
                {
                    *r = Some(reward);
                    break;
                }
            }
            state.turn_rewards.push(reward);
            state.items.push(EpisodeItem::Feedback { turn, text: feedback });
        }
    }
    true
}

fn bump(state: &mut EpisodeState) {
    state.version += 1;
}

struct Run {
    registry: EpisodeRegistry,
    id: String,
    model: Arc<ServedModel>,
    job: RolloutJob,
    channel: Arc<HumanChannel>,
    state: watch::Sender<EpisodeState>,
    started_ms: i64,
}

impl Run {
    async fn play(self) {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let mut prompts = self.channel.subscribe();
        let user = Arc::new(HumanUser::new(self.channel.clone()));
        let model = self.model.clone();
        let mut stream_ids = Vec::new();
        let mut raw_turns = Vec::new();
        let played = rollout_live(model.engine.as_ref(), self.job.clone(), &model.tokenizer, user, events_tx);
        tokio::pin!(played);
        let result: Result<Trajectory, RolloutError> = loop {
            tokio::select! {
                biased;
                Some(event) = events.recv() => {
                    self.state.send_if_modified(|s| {
                        let changed = apply(s, event, &self.model, &mut stream_ids, &mut raw_turns);
                        if changed {
                            bump(s);
                        }
                        changed
                    });
                }
                Ok(()) = prompts.changed() => {
                    let pending = self.channel.pending().map(|p| p.open());
                    self.state.send_if_modified(|s| {
                        if s.prompt == pending {
                            return false;
                        }
                        s.status = if pending.is_some() { EpisodeStatus::Waiting } else { EpisodeStatus::Agent };
                        s.prompt = pending;
                        bump(s);
                        true
                    });
                }
                result = &mut played => break result,
            }
        };
        while let Ok(event) = events.try_recv() {
            self.state.send_modify(|s| {
                apply(s, event, &self.model, &mut stream_ids, &mut raw_turns);
            });
        }
        self.finish(result, &raw_turns).await;
    }

    async fn finish(self, result: Result<Trajectory, RolloutError>, raw_turns: &[String]) {
        let (trajectory, error) = match result {
            Ok(t) => (Some(t), None),
            Err(e) => {
                tracing::warn!(episode = %self.id, error = %e, "live episode failed");
                (None, Some(e.to_string()))
            }
        };
        let outcome = match &trajectory {
            Some(t) => EpisodeOutcome {
                termination: t.termination.name().to_string(),
                score: t.transcript.score,
                normalized: t.transcript.normalized,
                success: t.transcript.success,
                turn_rewards: t.turn_rewards.clone(),
                step_seconds: t.step_seconds.clone(),
                stored_id: None,
                error: None,
            },
            None => EpisodeOutcome {
                termination: "agent_error".into(),
                score: 0.0,
                normalized: 0.0,
                success: false,
                turn_rewards: self.state.borrow().turn_rewards.clone(),
                step_seconds: Vec::new(),
                stored_id: None,
                error: error.clone(),
            },
        };
        // The person may still see an open prompt if the episode failed while it was open.
        self.channel.quit("the episode ended");
        self.state.send_modify(|s| {
            s.streaming.clear();
            s.prompt = None;
            s.outcome = Some(outcome);
            bump(s);
        });
        let snapshot = self.state.borrow().clone();
        let new = NewEpisode {
            origin: snapshot.spec.origin.clone(),
            model: format!("{} ({})", self.model.name, self.model.source),
            user_kind: "human".into(),
            started_at: self.started_ms,
            record: serde_json::to_value(record(&snapshot, raw_turns, trajectory.as_ref())).unwrap_or_default(),
        };
        let stored = self.registry.inner.store.add_episode(&new).await;
        self.state.send_modify(|s| {
            if let Some(outcome) = &mut s.outcome {
                match stored {
                    Ok(id) => outcome.stored_id = Some(id),
                    Err(e) => {
                        tracing::error!(episode = %self.id, error = %e, "could not store a live episode");
                        outcome.error.get_or_insert_with(|| format!("the episode could not be stored: {e}"));
                    }
                }
            }
            s.status = EpisodeStatus::Done;
            bump(s);
        });
        if let Some(live) = self.registry.lock().get_mut(&self.id) {
            live.finished = Some(Instant::now());
        }
    }
}

#[async_trait::async_trait]
impl LiveEpisodes for EpisodeRegistry {
    fn gyms(&self) -> Vec<GymTasks> {
        self.inner
            .catalog
            .gyms()
            .iter()
            .map(|g| GymTasks {
                gym: g.kind().name().to_string(),
                title: g.kind().title().to_string(),
                tasks: g.tasks().iter().map(|t| (t.id.clone(), t.split.name().to_string())).collect(),
            })
            .collect()
    }

    fn briefing(&self, gym: &str, task_id: &str) -> Result<Vec<Shown>, EpisodeError> {
        human::briefing(self.gym(gym)?.as_ref(), task_id).map_err(|e| invalid(e.to_string()))
    }

    async fn start(&self, spec: EpisodeSpec) -> Result<EpisodeState, EpisodeError> {
        self.sweep();
        let model = self.check(&spec)?;
        let gym = self.gym(&spec.gym)?.clone();
        let briefing = human::briefing(gym.as_ref(), &spec.task_id).map_err(|e| invalid(e.to_string()))?;
        let live = self.lock().values().filter(|l| l.finished.is_none()).count();
        if live >= self.inner.options.max_live {
            return Err(EpisodeError::Unavailable(format!(
                "{live} episodes are being played; try again in a few minutes"
            )));
        }
        let id = userrl_app::hosts::random_id();
        let seed = spec.seed.unwrap_or_else(|| now_ms() as u64 ^ u64::from_str_radix(&id[..16], 16).unwrap_or(0));
        let config = RolloutConfig {
            env: EnvConfig { mode: Mode::Eval, seed, ..EnvConfig::default() },
            max_new_tokens: spec.max_new_tokens,
            max_total_tokens: model.engine.config().context,
            sampling: Sampling {
                temperature: spec.temperature,
                top_k: 0,
                top_p: spec.top_p,
                seed,
                max_new_tokens: spec.max_new_tokens,
            },
            // The person's own timeout (the channel's) bounds each step.
            step_timeout: None,
        };
        let channel = HumanChannel::new(self.inner.options.idle_timeout);
        let state = EpisodeState {
            id: id.clone(),
            gym_title: gym.kind().title().to_string(),
            spec: spec.clone(),
            briefing,
            items: Vec::new(),
            streaming: String::new(),
            prompt: None,
            turn_rewards: Vec::new(),
            status: EpisodeStatus::Agent,
            outcome: None,
            idle_timeout_s: self.inner.options.idle_timeout.as_secs(),
            version: 1,
        };
        let (tx, _) = watch::channel(state.clone());
        self.lock().insert(id.clone(), Live { state: tx.clone(), channel: channel.clone(), finished: None });
        let run = Run {
            registry: self.clone(),
            id,
            model,
            job: RolloutJob { gym, task_id: spec.task_id.clone(), config },
            channel,
            state: tx,
            started_ms: now_ms(),
        };
        tokio::spawn(run.play());
        Ok(state)
    }

    fn state(&self, id: &str) -> Option<EpisodeState> {
        self.lock().get(id).map(|l| l.state.borrow().clone())
    }

    fn watch(&self, id: &str) -> Option<watch::Receiver<EpisodeState>> {
        self.lock().get(id).map(|l| l.state.subscribe())
    }

    fn answer(&self, id: &str, prompt_id: u64, answer: &HumanAnswer) -> Result<EpisodeState, EpisodeError> {
        let (state, channel) = {
            let map = self.lock();
            let live = map.get(id).ok_or_else(|| EpisodeError::NotFound(id.to_string()))?;
            (live.state.clone(), live.channel.clone())
        };
        let prompt = channel.pending().filter(|p| p.id == prompt_id).ok_or(EpisodeError::NotOpen(prompt_id))?;
        let mut refused = None;
        // The answer and its line in the conversation change together, under the state's lock, so the gym's
        // feedback (which the answer releases) can never be listed before it.
        state.send_if_modified(|s| match channel.answer(prompt_id, answer) {
            Ok(()) => {
                let turn = s.items.iter().filter(|i| matches!(i, EpisodeItem::Agent { .. })).count().saturating_sub(1);
                s.items.push(EpisodeItem::Human { turn, text: answer_text(&prompt.controls, answer) });
                s.prompt = None;
                s.status = EpisodeStatus::Agent;
                bump(s);
                true
            }
            Err(e) => {
                refused = Some(e);
                false
            }
        });
        match refused {
            None => Ok(state.borrow().clone()),
            Some(HumanError::NotOpen(n)) => Err(EpisodeError::NotOpen(n)),
            Some(other) => Err(invalid(other.to_string())),
        }
    }

    fn abandon(&self, id: &str) -> Result<(), EpisodeError> {
        let map = self.lock();
        let live = map.get(id).ok_or_else(|| EpisodeError::NotFound(id.to_string()))?;
        live.channel.quit("the person left the episode");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
