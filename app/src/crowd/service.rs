//! The crowd portal's server side: a worker's pass through a study (enter the link, consent, instructions,
//! the assigned episodes, the completion code) and the live episodes where a model plays the agent and the
//! worker plays the user through the gym's `HumanChannel`.
//!
//! Security rules it keeps: a session is bound to the worker's platform id and to a random 256-bit token
//! held in an `HttpOnly`, `SameSite=Strict` cookie, or, where cookies are not sent (MTurk's cross-site iframe),
//! by the page and sent in the `x-study-token` header (stored only as its SHA-256); one session per worker and
//! study (entering again resumes it from the same browser, and is refused from another); a token from
//! another study or that the store does not know is refused; the completion code is made on the server,
//! only once every episode ended within the time limit, and is handed out once; every answer is checked
//! against the open prompt (so a stale or replayed answer is refused) and against length limits; entering
//! is rate limited per IP, every call per worker session (the auth guard adds a per-IP ceiling for all
//! worker calls, high enough for a lab behind one NAT).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::RngCore;
use userrl_gym::eval::{AgentSpec, make_agent, play_episode};
use userrl_gym::human::{HumanAnswer, HumanChannel, HumanError, HumanUser};
use userrl_gym::user::{User, UserError, UserKind, UserQuery, UserReply};
use userrl_gym::{Catalog, EnvConfig, GymKind, Mode, Split, Transcript};
use userrl_store::{Assignment, NewSessionError, Store, StoreError};
use userrl_types::study::{
    EpisodeResult, EpisodeState, Platform, PlatformIds, SessionRow, SessionState, StudyAnswer, StudyEpisodeRow,
    StudyRow, StudyStatus,
};
use userrl_types::{Speaker, TranscriptMessage, TranscriptRecord};

/// SHA-256 of a session token, hex: what the store keeps (the same form as admin session tokens).
pub use crate::auth::hash_token;
use crate::auth::{Limited, Rate, RateLimiter};

use super::{
    AnswerView, Completion, CurrentEpisode, Entry, EpisodeBrief, MTURK_HOSTS, MTURK_PREVIEW, MturkSubmit, PromptView,
    StudyPublic, WorkerView,
};

/// The session cookie of study `<slug>` is `userrl_study_<slug>` (slugs are cookie-safe: `[a-z0-9-]`).
pub const COOKIE_PREFIX: &str = "userrl_study_";
/// How long an open prompt waits for the worker before the episode is abandoned.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);
/// The largest answer accepted, as JSON (the gym caps each text field at 2,000 characters).
pub const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// Longest platform id accepted from a link.
pub const MAX_ID_CHARS: usize = 128;

/// Termination name of an episode the worker did not finish (the gym's `Termination::Abandoned`).
const ABANDONED: &str = "abandoned";

/// An episode to play: which task, which agent, how long.
#[derive(Clone, Debug, PartialEq)]
pub struct PlayRequest {
    pub gym: String,
    pub task_id: String,
    pub model: String,
    pub max_turns: usize,
    pub seed: u64,
}

/// Plays one episode to its end with a model as the agent and `user` (the worker) as the user.
#[async_trait::async_trait]
pub trait EpisodePlayer: Send + Sync {
    async fn play(&self, request: PlayRequest, user: Arc<dyn User>) -> Result<EpisodeResult, String>;
    /// Whether `model` names an agent this player can run (checked when a study is created).
    fn check_model(&self, model: &str) -> Result<(), String>;
    /// A gym's task ids in a split (the creation form's "all tasks of the split").
    fn task_ids(&self, gym: &str, split: &str) -> Result<Vec<String>, String>;
}

/// Turns a model name from a study into an agent: checkpoint folders and GGUF files (the server loads them).
pub type AgentResolver = Arc<dyn Fn(&str) -> Result<AgentSpec, String> + Send + Sync>;

/// The player over a gym catalog (the server's, shared with live episodes): `expert` and `random` agents
/// built in, other models through the resolver (loaded once, then shared by every episode).
pub struct GymPlayer {
    catalog: Arc<Catalog>,
    resolve: Option<AgentResolver>,
    agents: Mutex<HashMap<String, AgentSpec>>,
}

impl GymPlayer {
    pub fn new(catalog: Arc<Catalog>, resolve: Option<AgentResolver>) -> GymPlayer {
        GymPlayer { catalog, resolve, agents: Mutex::new(HashMap::new()) }
    }

    fn agent(&self, model: &str) -> Result<AgentSpec, String> {
        match model {
            "expert" => return Ok(AgentSpec::Expert),
            "random" => return Ok(AgentSpec::Random),
            _ => {}
        }
        if let Some(spec) = lock(&self.agents).get(model) {
            return Ok(spec.clone());
        }
        let resolve = self.resolve.as_ref().ok_or_else(|| format!("unknown model `{model}` (use expert or random)"))?;
        let spec = resolve(model)?;
        lock(&self.agents).insert(model.to_string(), spec.clone());
        Ok(spec)
    }
}

#[async_trait::async_trait]
impl EpisodePlayer for GymPlayer {
    async fn play(&self, request: PlayRequest, user: Arc<dyn User>) -> Result<EpisodeResult, String> {
        let kind = GymKind::parse(&request.gym).ok_or_else(|| format!("unknown gym `{}`", request.gym))?;
        let gym = self.catalog.get(kind).ok_or_else(|| format!("gym `{kind}` is not loaded"))?.clone();
        let spec = self.agent(&request.model)?;
        let mut agent = make_agent(&spec, gym.as_ref(), &request.task_id, request.seed).map_err(|e| e.to_string())?;
        let config =
            EnvConfig { mode: Mode::Eval, seed: request.seed, max_steps: request.max_turns, ..EnvConfig::default() };
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A local model's forward passes are CPU-bound: the episode gets a thread and a runtime of its own so it
        // never stalls the server's request handling.
        std::thread::Builder::new()
            .name("study-episode".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(format!("cannot start the episode's runtime: {e}")));
                        return;
                    }
                };
                let played =
                    runtime.block_on(play_episode(gym.as_ref(), &request.task_id, agent.as_mut(), user, &config));
                let _ = tx.send(played.map(|p| p.transcript).map_err(|e| e.to_string()));
            })
            .map_err(|e| format!("cannot start the episode's thread: {e}"))?;
        let transcript = rx.await.map_err(|_| "the episode's thread stopped".to_string())??;
        Ok(result_of(&transcript))
    }

    fn check_model(&self, model: &str) -> Result<(), String> {
        self.agent(model).map(|_| ())
    }

    fn task_ids(&self, gym: &str, split: &str) -> Result<Vec<String>, String> {
        let kind = GymKind::parse(gym).ok_or_else(|| format!("unknown gym `{gym}` (known: {})", GymKind::names()))?;
        let split: Split = split.parse()?;
        let gym = self.catalog.get(kind).ok_or_else(|| format!("gym `{kind}` is not loaded"))?;
        Ok(gym.task_ids(Some(split)))
    }
}

/// A finished episode as stored: the paper's score and the transcript the viewer shows (the user's opening,
/// then per turn the agent's call with its reward and the gym's feedback).
pub fn result_of(t: &Transcript) -> EpisodeResult {
    let message = |speaker, text: String, reward| TranscriptMessage { speaker, text, tokens: vec![], reward };
    let mut messages = vec![message(Speaker::User, t.opening.clone(), None)];
    for turn in &t.turns {
        let call = if turn.content.is_empty() {
            format!("[{}]", turn.choice)
        } else {
            format!("[{}] {}", turn.choice, turn.content)
        };
        messages.push(message(Speaker::Assistant, call, Some(turn.reward)));
        messages.push(message(Speaker::Tool, turn.feedback.clone(), None));
    }
    EpisodeResult {
        score: t.score,
        normalized: t.normalized,
        success: t.success,
        termination: t.termination.name().to_string(),
        turns: t.turns.len() as i64,
        record: TranscriptRecord {
            gym: t.gym.name().to_string(),
            task_id: t.task_id.clone(),
            reward: t.score,
            score: t.score,
            normalized: t.normalized,
            success: t.success,
            termination: t.termination.name().to_string(),
            advantage: 0.0,
            turn_rewards: t.turns.iter().map(|turn| turn.reward).collect(),
            messages,
        },
    }
}

/// What went wrong, with the HTTP status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CrowdError {
    #[error("{0} not found")]
    NotFound(String),
    /// The study does not take workers now (draft or closed).
    #[error("{0}")]
    Closed(String),
    /// The link lacks or mangles the platform's parameters.
    #[error("{0}")]
    BadLink(String),
    /// No session cookie: open the study through its link first.
    #[error("no study session in this browser: open the study link from your platform")]
    NoSession,
    /// A token the store does not know, or one of another study or worker.
    #[error("{0}")]
    Refused(String),
    /// The request does not fit the session's state (answering before consenting, a second code…).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("too many requests: try again in {0} s")]
    TooMany(u64),
    #[error("database error: {0}")]
    Store(#[from] StoreError),
}

impl CrowdError {
    pub fn status(&self) -> u16 {
        match self {
            CrowdError::NotFound(_) => 404,
            CrowdError::Closed(_) | CrowdError::Refused(_) => 403,
            CrowdError::BadLink(_) | CrowdError::Invalid(_) => 400,
            CrowdError::NoSession => 401,
            CrowdError::Conflict(_) => 409,
            CrowdError::TooMany(_) => 429,
            CrowdError::Store(StoreError::NotFound) => 404,
            CrowdError::Store(StoreError::Invalid(_)) => 400,
            CrowdError::Store(_) => 500,
        }
    }
}

/// Request limits of the worker portal (the auth module's token buckets). The per-IP ceiling of all worker
/// calls is the auth guard's (`AuthConfig::worker_rate`).
pub struct Limits {
    /// Creating sessions, per IP: a lab of workers behind one NAT enters together, a script making sessions
    /// for made-up worker ids does not get far.
    pub enter_per_ip: RateLimiter<String>,
    /// Every call of one worker session (polling included: about 1.5 a second while the agent thinks).
    pub calls_per_session: RateLimiter<i64>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            enter_per_ip: RateLimiter::new(Rate::per_minute(120, 60)),
            calls_per_session: RateLimiter::new(Rate::per_minute(600, 120)),
        }
    }
}

fn limited(l: Limited) -> CrowdError {
    CrowdError::TooMany(l.retry_after_secs())
}

/// One live episode: its channel, and when the open prompt appeared (for the worker's answer time).
struct Live {
    channel: Arc<HumanChannel>,
    opened: Arc<Mutex<Option<Instant>>>,
}

/// The worker as the gym sees them: a `HumanUser` that also notes when each question opens.
struct TimedUser {
    inner: HumanUser,
    opened: Arc<Mutex<Option<Instant>>>,
}

#[async_trait::async_trait]
impl User for TimedUser {
    fn kind(&self) -> UserKind {
        UserKind::Human
    }
    async fn reply(&self, query: &UserQuery) -> Result<UserReply, UserError> {
        *lock(&self.opened) = Some(Instant::now());
        self.inner.reply(query).await
    }
    fn abandoned(&self) -> bool {
        self.inner.abandoned()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few assignments: a panic inside cannot leave the data half-written.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A fresh session token: 256 random bits, hex.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A completion code: 12 characters from an alphabet without look-alikes (no 0/O, 1/I/L).
pub fn new_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 12];
    rand::rng().fill_bytes(&mut bytes);
    // 256 is not a multiple of 31: the bias (at most 1/256 per character) does not matter for a code
    // that is checked against the database, not guessed against a secret.
    bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// The platform and ids a study link carries, checked. `Ok(None)`: MTurk preview.
pub fn parse_link(platform: Platform, params: &BTreeMap<String, String>) -> Result<Option<PlatformIds>, CrowdError> {
    let get = |name: &str| params.get(name).map(|v| v.trim().to_string()).unwrap_or_default();
    let id_ok = |name: &str, value: &str, required: bool| -> Result<(), CrowdError> {
        if value.is_empty() {
            return if required {
                Err(CrowdError::BadLink(format!("the link has no {name}: open the study from your platform")))
            } else {
                Ok(())
            };
        }
        let ok = value.chars().count() <= MAX_ID_CHARS
            && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok { Ok(()) } else { Err(CrowdError::BadLink(format!("{name} is not a valid id"))) }
    };
    match platform {
        Platform::Prolific => {
            let ids = PlatformIds {
                worker_id: get("PROLIFIC_PID"),
                study_ref: get("STUDY_ID"),
                session_ref: get("SESSION_ID"),
                submit_to: String::new(),
            };
            id_ok("PROLIFIC_PID", &ids.worker_id, true)?;
            id_ok("STUDY_ID", &ids.study_ref, false)?;
            id_ok("SESSION_ID", &ids.session_ref, false)?;
            Ok(Some(ids))
        }
        Platform::Mturk => {
            let assignment = get("assignmentId");
            if assignment == MTURK_PREVIEW {
                return Ok(None);
            }
            let ids = PlatformIds {
                worker_id: get("workerId"),
                study_ref: get("hitId"),
                session_ref: assignment,
                submit_to: get("turkSubmitTo").trim_end_matches('/').to_string(),
            };
            id_ok("workerId", &ids.worker_id, true)?;
            id_ok("assignmentId", &ids.session_ref, true)?;
            id_ok("hitId", &ids.study_ref, false)?;
            if !MTURK_HOSTS.contains(&ids.submit_to.as_str()) {
                return Err(CrowdError::BadLink(format!(
                    "turkSubmitTo must be one of {} (got {:?})",
                    MTURK_HOSTS.join(", "),
                    ids.submit_to
                )));
            }
            Ok(Some(ids))
        }
        Platform::Direct => {
            let ids = PlatformIds { worker_id: get("worker"), ..PlatformIds::default() };
            id_ok("worker", &ids.worker_id, true)?;
            Ok(Some(ids))
        }
    }
}

/// The session token for `slug` from a `Cookie` header.
pub fn token_from_cookies(cookie_header: &str, slug: &str) -> Option<String> {
    let name = format!("{COOKIE_PREFIX}{slug}");
    cookie_header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name && !v.is_empty()).then(|| v.to_string())
    })
}

/// The `Set-Cookie` value that stores a session token: the browser sends it back to this site only, never to
/// scripts (`HttpOnly`), never from another site's page (`SameSite=Strict`).
pub fn session_cookie(slug: &str, token: &str, secure: bool, max_age_s: i64) -> String {
    format!(
        "{COOKIE_PREFIX}{slug}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{}",
        if secure { "; Secure" } else { "" }
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The worker portal: the store, the episode player, the live episodes and the rate limits.
pub struct Crowd {
    pub store: Store,
    player: Arc<dyn EpisodePlayer>,
    live: Arc<Mutex<HashMap<i64, Live>>>,
    limits: Limits,
    answer_timeout: Duration,
}

impl Crowd {
    pub fn new(store: Store, player: Arc<dyn EpisodePlayer>) -> Crowd {
        Crowd::with_limits(store, player, Limits::default(), ANSWER_TIMEOUT)
    }

    pub fn with_limits(
        store: Store,
        player: Arc<dyn EpisodePlayer>,
        limits: Limits,
        answer_timeout: Duration,
    ) -> Crowd {
        Crowd { store, player, live: Arc::new(Mutex::new(HashMap::new())), limits, answer_timeout }
    }

    pub fn player(&self) -> &Arc<dyn EpisodePlayer> {
        &self.player
    }

    async fn open_study(&self, slug: &str) -> Result<StudyRow, CrowdError> {
        self.store.study_by_slug(slug).await?.ok_or_else(|| CrowdError::NotFound(format!("study {slug:?}")))
    }

    /// Opening the study link. A known token (cookie or header) of this worker resumes their session; a
    /// worker without a session gets a new one (and `Some(token)` to set as the cookie and hand to the page);
    /// a worker whose session lives in another browser is refused.
    pub async fn enter(
        &self,
        slug: &str,
        params: &BTreeMap<String, String>,
        cookie_token: Option<&str>,
        ip: &str,
    ) -> Result<(Entry, Option<String>), CrowdError> {
        let study = self.open_study(slug).await?;
        let Some(ids) = parse_link(study.spec.platform, params)? else {
            return Ok((Entry::Preview { study: StudyPublic::of(&study) }, None));
        };
        if let Some(token) = cookie_token
            && let Some(session) = self.store.worker_session_by_token(&hash_token(token)).await?
            && session.study_id == study.id
        {
            if session.ids.worker_id != ids.worker_id {
                return Err(CrowdError::Refused("this browser holds another worker's session for this study".into()));
            }
            self.limits.calls_per_session.check(&session.id).map_err(limited)?;
            let view = self.view_of(&study, session).await?;
            return Ok((Entry::Session { view: Box::new(view), access: None }, None));
        }
        if let Some(existing) = self.store.worker_session_for(study.id, study.spec.platform, &ids.worker_id).await? {
            return Err(if existing.state.is_final() {
                CrowdError::Conflict("you have already taken part in this study".into())
            } else {
                CrowdError::Conflict(
                    "you already started this study in another browser: continue there (one session per worker)".into(),
                )
            });
        }
        if study.status != StudyStatus::Open {
            return Err(CrowdError::Closed("this study is not taking participants now".into()));
        }
        self.limits.enter_per_ip.check(&ip.to_string()).map_err(limited)?;
        let assignments = self.assign(&study).await?;
        let token = new_token();
        let id = match self
            .store
            .create_worker_session(study.id, study.spec.platform, &ids, &hash_token(&token), &assignments)
            .await
        {
            Ok(id) => id,
            // Two tabs raced to create it: the other one won and holds the cookie.
            Err(NewSessionError::Exists) => {
                return Err(CrowdError::Conflict("a session for this worker was just started in another tab".into()));
            }
            Err(NewSessionError::Store(e)) => return Err(e.into()),
        };
        let session = self.store.worker_session(id).await?.ok_or_else(|| CrowdError::NotFound("session".into()))?;
        let view = self.view_of(&study, session).await?;
        Ok((Entry::Session { view: Box::new(view), access: None }, Some(token)))
    }

    /// `episodes_per_worker` (task, model) pairs, least assigned first (ties broken at random), never the
    /// same pair twice for one worker while others are left.
    async fn assign(&self, study: &StudyRow) -> Result<Vec<Assignment>, CrowdError> {
        let counts = self.store.assignment_counts(study.id).await?;
        let mut pool: Vec<(i64, u64, Assignment)> = Vec::new();
        let mut rng = rand::rng();
        for task in &study.spec.tasks {
            for model in &study.spec.models {
                let key = (task.gym.clone(), task.task_id.clone(), model.clone());
                let n = counts.get(&key).copied().unwrap_or(0);
                let a = Assignment { gym: task.gym.clone(), task_id: task.task_id.clone(), model: model.clone() };
                pool.push((n, rng.next_u64(), a));
            }
        }
        pool.sort_by_key(|(n, tie, _)| (*n, *tie));
        if pool.is_empty() {
            return Err(CrowdError::Invalid("the study has no tasks or no models".into()));
        }
        let want = study.spec.episodes_per_worker.max(1) as usize;
        Ok(pool.iter().cycle().take(want).map(|(_, _, a)| a.clone()).collect())
    }

    /// The session behind a token (cookie or header), checked against the study; applies the time limit.
    async fn session(&self, slug: &str, token: Option<&str>) -> Result<(StudyRow, SessionRow), CrowdError> {
        let token = token.ok_or(CrowdError::NoSession)?;
        let study = self.open_study(slug).await?;
        let session = self
            .store
            .worker_session_by_token(&hash_token(token))
            .await?
            .ok_or_else(|| CrowdError::Refused("unknown session token: open the study link again".into()))?;
        if session.study_id != study.id {
            return Err(CrowdError::Refused("this session belongs to another study".into()));
        }
        self.limits.calls_per_session.check(&session.id).map_err(limited)?;
        let session = self.enforce_deadline(&study, session).await?;
        Ok((study, session))
    }

    fn deadline(study: &StudyRow, session: &SessionRow) -> i64 {
        session.started_at + study.spec.time_limit_s * 1000
    }

    /// Past the time limit, an unfinished session ends (its live episode is abandoned).
    async fn enforce_deadline(&self, study: &StudyRow, session: SessionRow) -> Result<SessionRow, CrowdError> {
        if session.state.is_final() || now_ms() <= Self::deadline(study, &session) {
            return Ok(session);
        }
        for e in self.store.session_episodes(session.id).await? {
            if let Some(live) = lock(&self.live).get(&e.id) {
                live.channel.quit("the study's time limit passed");
            }
        }
        self.store.set_worker_session_state(session.id, session.state, SessionState::Expired).await?;
        Ok(self.store.worker_session(session.id).await?.unwrap_or(session))
    }

    /// The worker's page, read fresh.
    pub async fn view(&self, slug: &str, token: Option<&str>) -> Result<WorkerView, CrowdError> {
        let (study, session) = self.session(slug, token).await?;
        self.view_of(&study, session).await
    }

    async fn view_of(&self, study: &StudyRow, mut session: SessionRow) -> Result<WorkerView, CrowdError> {
        let mut episodes = self.store.session_episodes(session.id).await?;
        // A running episode with no live game was cut off by a server restart: it is played again from the start.
        let lost: Vec<i64> = {
            let live = lock(&self.live);
            episodes
                .iter()
                .filter(|e| e.state == EpisodeState::Running && !live.contains_key(&e.id))
                .map(|e| e.id)
                .collect()
        };
        if !lost.is_empty() {
            for id in lost {
                self.store.restart_study_episode(id).await?;
            }
            episodes = self.store.session_episodes(session.id).await?;
        }
        let left = episodes.iter().find(|e| e.state == EpisodeState::Ended && e.termination == ABANDONED);
        let mut ended_because = None;
        if let Some(e) = left {
            if !session.state.is_final() {
                self.store.set_worker_session_state(session.id, session.state, SessionState::Expired).await?;
                session = self.store.worker_session(session.id).await?.unwrap_or(session);
            }
            ended_because = Some(format!("episode {} was left without an answer", e.index + 1));
        } else if session.state == SessionState::Expired {
            ended_because = Some("the study's time limit passed".into());
        }
        // The running episode, else the one that ended last (the page offers the next one or the code).
        let current = if session.state == SessionState::Episodes {
            episodes
                .iter()
                .find(|e| e.state == EpisodeState::Running)
                .or_else(|| episodes.iter().filter(|e| e.state == EpisodeState::Ended).max_by_key(|e| e.index))
                .map(|e| self.current(e))
        } else {
            None
        };
        let all_ended = !episodes.is_empty() && episodes.iter().all(|e| e.state == EpisodeState::Ended);
        Ok(WorkerView {
            study: StudyPublic::of(study),
            state: session.state,
            deadline_ms: Self::deadline(study, &session),
            now_ms: now_ms(),
            episodes: episodes
                .iter()
                .map(|e| EpisodeBrief { index: e.index, gym: e.gym.clone(), state: e.state, turns: e.turns })
                .collect(),
            current,
            can_complete: session.state == SessionState::Episodes && all_ended && left.is_none(),
            ended_because,
        })
    }

    fn current(&self, e: &StudyEpisodeRow) -> CurrentEpisode {
        let prompt = lock(&self.live)
            .get(&e.id)
            .and_then(|live| live.channel.pending())
            .and_then(|p| serde_json::to_value(p).ok())
            .and_then(|v| serde_json::from_value::<PromptView>(v).ok());
        CurrentEpisode { index: e.index, gym: e.gym.clone(), prompt, ended: e.state == EpisodeState::Ended }
    }

    /// Consent to the text of `version` (the one the worker was shown); then the instructions.
    pub async fn consent(&self, slug: &str, token: Option<&str>, version: &str) -> Result<WorkerView, CrowdError> {
        let (study, session) = self.session(slug, token).await?;
        if version != study.spec.consent_version {
            return Err(CrowdError::Conflict(
                "the consent text changed since the page was loaded: reload and read it again".into(),
            ));
        }
        if !self.store.record_consent(session.id, version).await? {
            return Err(CrowdError::Conflict(format!(
                "consent is not open (the session is at {})",
                session.state.as_str()
            )));
        }
        self.reload(&study, session.id).await
    }

    /// After the instructions: the first episode starts.
    pub async fn begin(&self, slug: &str, token: Option<&str>) -> Result<WorkerView, CrowdError> {
        let (study, session) = self.session(slug, token).await?;
        if !self.store.set_worker_session_state(session.id, SessionState::Instructions, SessionState::Episodes).await? {
            return Err(CrowdError::Conflict(format!("cannot begin: the session is at {}", session.state.as_str())));
        }
        self.start_next(&study, session.id).await?;
        self.reload(&study, session.id).await
    }

    /// Once the current episode ended: the next one starts.
    pub async fn next(&self, slug: &str, token: Option<&str>) -> Result<WorkerView, CrowdError> {
        let (study, session) = self.session(slug, token).await?;
        if session.state != SessionState::Episodes {
            return Err(CrowdError::Conflict(format!("no episodes now: the session is at {}", session.state.as_str())));
        }
        let episodes = self.store.session_episodes(session.id).await?;
        if episodes.iter().any(|e| e.state == EpisodeState::Running) {
            return Err(CrowdError::Conflict("finish the current episode first".into()));
        }
        if !episodes.iter().any(|e| e.state == EpisodeState::Assigned) {
            return Err(CrowdError::Conflict("every episode has been played".into()));
        }
        self.start_next(&study, session.id).await?;
        self.reload(&study, session.id).await
    }

    async fn start_next(&self, study: &StudyRow, session_id: i64) -> Result<(), CrowdError> {
        let episodes = self.store.session_episodes(session_id).await?;
        let Some(e) = episodes.into_iter().find(|e| e.state == EpisodeState::Assigned) else { return Ok(()) };
        let channel = HumanChannel::new(self.answer_timeout);
        let opened = Arc::new(Mutex::new(None));
        let user: Arc<dyn User> =
            Arc::new(TimedUser { inner: HumanUser::new(channel.clone()), opened: opened.clone() });
        // Live before `running`: a page read in between must never take a running episode for a lost one.
        if lock(&self.live).contains_key(&e.id) {
            return Ok(()); // another request is starting it
        }
        lock(&self.live).insert(e.id, Live { channel, opened });
        match self.store.start_study_episode(e.id).await {
            Ok(true) => {}
            Ok(false) => {
                lock(&self.live).remove(&e.id);
                return Ok(());
            }
            Err(err) => {
                lock(&self.live).remove(&e.id);
                return Err(err.into());
            }
        }
        let request = PlayRequest {
            gym: e.gym.clone(),
            task_id: e.task_id.clone(),
            model: e.model.clone(),
            max_turns: study.spec.max_turns.max(1) as usize,
            seed: (session_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ e.index as u64,
        };
        let (player, store, live, id) = (self.player.clone(), self.store.clone(), self.live.clone(), e.id);
        tokio::spawn(async move {
            let result = match player.play(request, user).await {
                Ok(result) => result,
                Err(why) => {
                    tracing::warn!(episode = id, %why, "a study episode could not be played");
                    EpisodeResult {
                        score: f64::NAN,
                        normalized: f64::NAN,
                        success: false,
                        termination: "agent_error".into(),
                        turns: 0,
                        record: TranscriptRecord {
                            messages: vec![TranscriptMessage {
                                speaker: Speaker::System,
                                text: format!("The episode could not be played: {why}"),
                                tokens: vec![],
                                reward: None,
                            }],
                            termination: "agent_error".into(),
                            ..TranscriptRecord::default()
                        },
                    }
                }
            };
            if let Err(e) = store.end_study_episode(id, &result).await {
                tracing::error!(episode = id, error = %e, "cannot store a study episode's result");
            }
            lock(&live).remove(&id);
        });
        Ok(())
    }

    /// The worker's answer to the open prompt `prompt_id` of their current episode. Refused when it is not
    /// the open prompt (stale, replayed) or does not fit its controls; the prompt then stays open.
    pub async fn answer(
        &self,
        slug: &str,
        token: Option<&str>,
        prompt_id: u64,
        answer: &AnswerView,
    ) -> Result<WorkerView, CrowdError> {
        let (study, session) = self.session(slug, token).await?;
        if session.state != SessionState::Episodes {
            return Err(CrowdError::Conflict(format!(
                "no open question: the session is at {}",
                session.state.as_str()
            )));
        }
        let json = serde_json::to_string(answer).map_err(|e| CrowdError::Invalid(e.to_string()))?;
        if json.len() > MAX_ANSWER_BYTES {
            return Err(CrowdError::Invalid(format!("the answer is over {MAX_ANSWER_BYTES} bytes")));
        }
        let gym_answer: HumanAnswer = serde_json::from_str(&json).map_err(|e| CrowdError::Invalid(e.to_string()))?;
        let episodes = self.store.session_episodes(session.id).await?;
        let episode = episodes
            .iter()
            .find(|e| e.state == EpisodeState::Running)
            .ok_or_else(|| CrowdError::Conflict("no episode is running".into()))?;
        let (channel, opened) = {
            let live = lock(&self.live);
            let l = live.get(&episode.id).ok_or_else(|| CrowdError::Conflict("the episode is not live".into()))?;
            (l.channel.clone(), l.opened.clone())
        };
        let elapsed_ms = lock(&opened).map(|at| at.elapsed().as_millis() as i64).unwrap_or(0);
        // The channel accepts one answer per prompt, atomically: a stale or replayed prompt id, or a second
        // request racing this one, is refused here and never reaches the store.
        channel.answer(prompt_id, &gym_answer).map_err(|e| match e {
            HumanError::NotOpen(_) => CrowdError::Conflict(e.to_string()),
            other => CrowdError::Invalid(other.to_string()),
        })?;
        let text = answer
            .values
            .values()
            .filter_map(|v| match v {
                super::AnswerValue::Text(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n");
        self.store
            .add_study_answer(&StudyAnswer {
                episode_id: episode.id,
                prompt_id: prompt_id as i64,
                answer: json,
                text,
                elapsed_ms,
                created_at: 0,
            })
            .await?;
        self.reload(&study, session.id).await
    }

    async fn reload(&self, study: &StudyRow, session_id: i64) -> Result<WorkerView, CrowdError> {
        let session =
            self.store.worker_session(session_id).await?.ok_or_else(|| CrowdError::NotFound("session".into()))?;
        self.view_of(study, session).await
    }

    /// The worker leaves: the live episode is abandoned and the session ends without a code.
    pub async fn leave(&self, slug: &str, token: Option<&str>) -> Result<WorkerView, CrowdError> {
        let (study, session) = self.session(slug, token).await?;
        if session.state.is_final() {
            return Err(CrowdError::Conflict("the session has already ended".into()));
        }
        for e in self.store.session_episodes(session.id).await? {
            if let Some(live) = lock(&self.live).get(&e.id) {
                live.channel.quit("the worker left the study");
            }
        }
        self.store.set_worker_session_state(session.id, session.state, SessionState::Expired).await?;
        self.reload(&study, session.id).await
    }

    /// The completion code, made and handed out once, when every episode ended (none left unanswered) within
    /// the time limit.
    pub async fn complete(&self, slug: &str, token: Option<&str>) -> Result<Completion, CrowdError> {
        let (study, session) = self.session(slug, token).await?;
        if session.code_issued {
            return Err(CrowdError::Conflict("the completion code of this session was already given".into()));
        }
        let view = self.view_of(&study, session.clone()).await?;
        if !view.can_complete {
            return Err(CrowdError::Conflict(match view.ended_because {
                Some(why) => format!("this session cannot be completed: {why}"),
                None => "finish every episode first".into(),
            }));
        }
        // The session's own random code is stored either way: it marks the code as handed out (once, atomically).
        let session_code = new_code();
        if !self.store.issue_completion_code(session.id, &session_code).await? {
            return Err(CrowdError::Conflict("the completion code of this session was already given".into()));
        }
        let fixed = &study.spec.completion_code;
        let code =
            if study.spec.platform == Platform::Prolific && !fixed.is_empty() { fixed.clone() } else { session_code };
        Ok(Completion {
            redirect: (study.spec.platform == Platform::Prolific)
                .then(|| format!("{}?cc={code}", study.spec.completion_url)),
            mturk_submit: (study.spec.platform == Platform::Mturk).then(|| MturkSubmit {
                action: format!("{}/mturk/externalSubmit", session.ids.submit_to),
                assignment_id: session.ids.session_ref.clone(),
            }),
            code,
        })
    }

    /// Abandons every live episode (server shutdown).
    pub fn shutdown(&self) {
        for live in lock(&self.live).values() {
            live.channel.quit("the server is stopping");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn links_are_parsed_per_platform() {
        let p = parse_link(
            Platform::Prolific,
            &params(&[("PROLIFIC_PID", "5f1a"), ("STUDY_ID", "s1"), ("SESSION_ID", "x-2")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!((p.worker_id.as_str(), p.study_ref.as_str(), p.session_ref.as_str()), ("5f1a", "s1", "x-2"));
        assert!(matches!(parse_link(Platform::Prolific, &params(&[])), Err(CrowdError::BadLink(_))));
        assert!(matches!(
            parse_link(Platform::Prolific, &params(&[("PROLIFIC_PID", "<script>")])),
            Err(CrowdError::BadLink(_))
        ));
        assert_eq!(parse_link(Platform::Mturk, &params(&[("assignmentId", MTURK_PREVIEW)])).unwrap(), None);
        let m = parse_link(
            Platform::Mturk,
            &params(&[
                ("workerId", "W1"),
                ("assignmentId", "A1"),
                ("hitId", "H1"),
                ("turkSubmitTo", "https://workersandbox.mturk.com/"),
            ]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(m.submit_to, "https://workersandbox.mturk.com");
        let evil = params(&[("workerId", "W1"), ("assignmentId", "A1"), ("turkSubmitTo", "https://evil.example")]);
        assert!(matches!(parse_link(Platform::Mturk, &evil), Err(CrowdError::BadLink(_))));
        assert_eq!(parse_link(Platform::Direct, &params(&[("worker", "p7")])).unwrap().unwrap().worker_id, "p7");
    }

    #[test]
    fn tokens_codes_and_cookies() {
        let t = new_token();
        assert_eq!(t.len(), 64);
        assert_ne!(t, new_token());
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let code = new_code();
        assert_eq!(code.len(), 12);
        assert!(code.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()));
        assert!(!code.contains(['0', 'O', '1', 'I', 'L']));
        let header = format!("a=b; {COOKIE_PREFIX}pilot=tok123; {COOKIE_PREFIX}other=zzz");
        assert_eq!(token_from_cookies(&header, "pilot").as_deref(), Some("tok123"));
        assert_eq!(token_from_cookies(&header, "nope"), None);
        let cookie = session_cookie("pilot", "tok", true, 60);
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.ends_with("; Secure"));
    }
}
