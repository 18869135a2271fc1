//! Crowd studies: people play the user of a gym while a model plays the agent. A study names the tasks and
//! models to test and the rules of the worker flow (consent, episodes per worker, time limit, completion);
//! a worker session is one person's pass through it; each assigned episode is stored with its transcript,
//! reward and per-answer times. Shared by the store, the server and the browser.

use serde::{Deserialize, Serialize};

use crate::TranscriptRecord;

/// Where the workers come from; decides the link parameters and how the completion code is handed back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Platform {
    /// `PROLIFIC_PID`, `STUDY_ID`, `SESSION_ID`; the code goes back through Prolific's completion redirect.
    Prolific,
    /// `workerId`, `assignmentId`, `hitId`, `turkSubmitTo`; the code goes back by a form post to MTurk.
    Mturk,
    /// A plain link with `worker=<id>` (pilots, lab studies); the code is only shown.
    Direct,
}

impl Platform {
    pub const ALL: [Platform; 3] = [Platform::Prolific, Platform::Mturk, Platform::Direct];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Prolific => "prolific",
            Platform::Mturk => "mturk",
            Platform::Direct => "direct",
        }
    }

    pub fn parse(name: &str) -> Option<Platform> {
        Platform::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// A study's lifecycle: only an `open` study admits new workers; sessions already started may finish in
/// `closed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StudyStatus {
    Draft,
    Open,
    Closed,
}

impl StudyStatus {
    pub const ALL: [StudyStatus; 3] = [StudyStatus::Draft, StudyStatus::Open, StudyStatus::Closed];

    pub fn as_str(self) -> &'static str {
        match self {
            StudyStatus::Draft => "draft",
            StudyStatus::Open => "open",
            StudyStatus::Closed => "closed",
        }
    }

    pub fn parse(name: &str) -> Option<StudyStatus> {
        StudyStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// One task a study may assign: a gym and a task id of that gym.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StudyTask {
    pub gym: String,
    pub task_id: String,
}

/// A study as the admin defines it (creation form, JSON API).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudySpec {
    pub name: String,
    /// The link's path segment: lowercase letters, digits and `-`, unique.
    pub slug: String,
    /// The tasks workers are assigned from (balanced: least-assigned first).
    pub tasks: Vec<StudyTask>,
    /// The split the tasks were drawn from (`test` or `train`), shown beside the scores.
    pub split: String,
    /// The agents under test: checkpoint folders, GGUF files, or `expert` / `random`.
    pub models: Vec<String>,
    pub episodes_per_worker: i64,
    /// Seconds from the first visit until the session can no longer complete.
    pub time_limit_s: i64,
    /// Most agent turns per episode (the gym's step budget).
    pub max_turns: i64,
    pub pay_note: String,
    pub instructions: String,
    pub consent_text: String,
    /// Stored with every consent, so a changed text can be told apart.
    pub consent_version: String,
    pub platform: Platform,
    /// The Prolific completion redirect base (`https://app.prolific.com/submissions/complete`); the code is
    /// appended as `?cc=`. Ignored for other platforms.
    pub completion_url: String,
    /// Prolific only: one completion code for the whole study (set up the same code on Prolific); empty = a
    /// random code per session. Either way a session gets its code once, after the completion rules are met.
    #[serde(default)]
    pub completion_code: String,
}

/// A stored study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyRow {
    pub id: i64,
    pub spec: StudySpec,
    pub status: StudyStatus,
    pub created_at: i64,
}

/// Where a worker is in the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Entered, not yet consented.
    Consent,
    /// Consented, reading the instructions.
    Instructions,
    /// Playing the assigned episodes.
    Episodes,
    /// Every episode ended within the time limit; the completion code was issued.
    Completed,
    /// The time limit passed, or the worker gave up: no code.
    Expired,
}

impl SessionState {
    pub const ALL: [SessionState; 5] = [
        SessionState::Consent,
        SessionState::Instructions,
        SessionState::Episodes,
        SessionState::Completed,
        SessionState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Consent => "consent",
            SessionState::Instructions => "instructions",
            SessionState::Episodes => "episodes",
            SessionState::Completed => "completed",
            SessionState::Expired => "expired",
        }
    }

    pub fn parse(name: &str) -> Option<SessionState> {
        SessionState::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Completed and expired sessions never change again.
    pub fn is_final(self) -> bool {
        matches!(self, SessionState::Completed | SessionState::Expired)
    }
}

/// The platform's identifiers of one worker visit, as they came in the link.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformIds {
    /// `PROLIFIC_PID`, MTurk `workerId`, or `worker` for direct links.
    pub worker_id: String,
    /// Prolific `STUDY_ID` / MTurk `hitId`.
    pub study_ref: String,
    /// Prolific `SESSION_ID` / MTurk `assignmentId`.
    pub session_ref: String,
    /// MTurk `turkSubmitTo` (the sandbox or production host).
    pub submit_to: String,
}

/// One worker session, as the admin sees it (never the token or its hash).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRow {
    pub id: i64,
    pub study_id: i64,
    pub platform: Platform,
    pub ids: PlatformIds,
    pub state: SessionState,
    pub consent_at: Option<i64>,
    pub consent_version: Option<String>,
    pub started_at: i64,
    pub last_seen_at: i64,
    pub finished_at: Option<i64>,
    /// Whether a completion code was issued (the code itself is in exports only).
    pub code_issued: bool,
    pub completion_code: Option<String>,
    pub excluded: bool,
    pub exclusion_reason: String,
}

/// Where an assigned episode is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeState {
    Assigned,
    Running,
    Ended,
}

impl EpisodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            EpisodeState::Assigned => "assigned",
            EpisodeState::Running => "running",
            EpisodeState::Ended => "ended",
        }
    }

    pub fn parse(name: &str) -> Option<EpisodeState> {
        [EpisodeState::Assigned, EpisodeState::Running, EpisodeState::Ended].into_iter().find(|s| s.as_str() == name)
    }
}

/// One assigned episode of a session (the list view: no transcript).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyEpisodeRow {
    pub id: i64,
    pub session_id: i64,
    pub study_id: i64,
    /// Position in the worker's assignment (0-based).
    pub index: i64,
    pub gym: String,
    pub task_id: String,
    pub model: String,
    pub state: EpisodeState,
    /// The paper's episode score (reference §9), its normalised value, success: NaN / false until ended.
    #[serde(deserialize_with = "crate::nan_if_null")]
    pub score: f64,
    #[serde(deserialize_with = "crate::nan_if_null")]
    pub normalized: f64,
    pub success: bool,
    pub termination: String,
    pub turns: i64,
    /// Milliseconds the person took for each answer, in order.
    pub answer_ms: Vec<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// How an episode ended, to store.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpisodeResult {
    pub score: f64,
    pub normalized: f64,
    pub success: bool,
    pub termination: String,
    pub turns: i64,
    pub record: TranscriptRecord,
}

/// One answer a person gave during an episode (kept for per-turn times and the duplicate-text check).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyAnswer {
    pub episode_id: i64,
    /// The prompt it answered (unique within the episode).
    pub prompt_id: i64,
    /// The answer's values as JSON.
    pub answer: String,
    /// The free text typed, if any (all text fields joined by a newline).
    pub text: String,
    /// Milliseconds between the prompt appearing and the answer.
    pub elapsed_ms: i64,
    pub created_at: i64,
}

/// Something the admin should look at; flags never exclude anyone by themselves.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum StudyFlag {
    /// Answers faster than a person can read the prompt (the median answer time of an episode is below the
    /// threshold).
    TooFast { session_id: i64, episode_id: i64, median_ms: i64 },
    /// The same free text (after trimming and lowercasing) typed by another worker of the study.
    DuplicateText { session_id: i64, other_session_id: i64, text: String },
    /// The worker left: an episode was abandoned, or the time limit passed before the end.
    LeftEarly { session_id: i64, detail: String },
}

impl StudyFlag {
    pub fn session_id(&self) -> i64 {
        match self {
            StudyFlag::TooFast { session_id, .. }
            | StudyFlag::DuplicateText { session_id, .. }
            | StudyFlag::LeftEarly { session_id, .. } => *session_id,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            StudyFlag::TooFast { .. } => "too_fast",
            StudyFlag::DuplicateText { .. } => "duplicate_text",
            StudyFlag::LeftEarly { .. } => "left_early",
        }
    }
}

/// A study's live numbers for the admin page.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StudyProgress {
    pub sessions: i64,
    pub consented: i64,
    pub completed: i64,
    pub expired: i64,
    pub excluded: i64,
    pub episodes_assigned: i64,
    pub episodes_ended: i64,
    /// Mean episode score over ended, non-abandoned episodes of sessions that are not excluded.
    #[serde(deserialize_with = "crate::nan_if_null")]
    pub mean_score: f64,
    #[serde(deserialize_with = "crate::nan_if_null")]
    pub success_rate: f64,
    /// Median milliseconds per answer over all answers.
    pub median_answer_ms: Option<i64>,
}
