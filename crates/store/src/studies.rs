//! Crowd studies: the study definitions, worker sessions (platform ids, hashed session token, consent,
//! state, the one completion code), the episodes assigned to each session with their results, and every
//! answer a person gave. State changes are compare-and-set updates (`WHERE state = ...`), so two requests
//! racing on one session cannot both move it, and the completion code is written only where none exists.
//! Flags and progress are computed from these rows when asked, so they can never go stale.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::{AssertSqlSafe, Row};
use userrl_types::EvalRow;
use userrl_types::TranscriptRecord;
use userrl_types::study::{
    EpisodeResult, EpisodeState, Platform, PlatformIds, SessionRow, SessionState, StudyAnswer, StudyEpisodeRow,
    StudyFlag, StudyProgress, StudyRow, StudySpec, StudyStatus, StudyTask,
};

use crate::{Store, StoreError, clean, from_db, now_ms, on_pool, to_db};

/// Texts shorter than this (after trimming) are too common to call a duplicate ("yes", "ok thanks").
pub const DUPLICATE_MIN_CHARS: usize = 20;
/// An episode whose median answer time is below this is flagged as too fast.
pub const TOO_FAST_MEDIAN_MS: i64 = 1_500;

const STUDY_COLUMNS: &str = "id, name, slug, tasks, split, models, episodes_per_worker, time_limit_s, max_turns, \
                             pay_note, instructions, consent_text, consent_version, platform, completion_url, \
                             completion_code, status, created_at";

const SESSION_COLUMNS: &str = "id, study_id, platform, worker_id, study_ref, session_ref, submit_to, state, \
                               consent_at, consent_version, started_at, last_seen_at, finished_at, \
                               completion_code, excluded, exclusion_reason";

const EPISODE_COLUMNS: &str = "id, session_id, study_id, idx, gym, task_id, model, state, score, normalized, \
                               success, termination, turns, started_at, finished_at";

fn invalid_in_db(what: &str, value: &str) -> StoreError {
    StoreError::Invalid(format!("unknown {what} {value:?} in the database"))
}

macro_rules! study_row {
    ($row:expr) => {{
        let row = $row;
        let tasks: String = row.try_get("tasks")?;
        let models: String = row.try_get("models")?;
        let platform: String = row.try_get("platform")?;
        let status: String = row.try_get("status")?;
        StudyRow {
            id: row.try_get("id")?,
            spec: StudySpec {
                name: row.try_get("name")?,
                slug: row.try_get("slug")?,
                tasks: serde_json::from_str::<Vec<StudyTask>>(&tasks)
                    .map_err(|e| StoreError::Invalid(format!("a study's task list is unreadable: {e}")))?,
                split: row.try_get("split")?,
                models: serde_json::from_str::<Vec<String>>(&models)
                    .map_err(|e| StoreError::Invalid(format!("a study's model list is unreadable: {e}")))?,
                episodes_per_worker: row.try_get("episodes_per_worker")?,
                time_limit_s: row.try_get("time_limit_s")?,
                max_turns: row.try_get("max_turns")?,
                pay_note: row.try_get("pay_note")?,
                instructions: row.try_get("instructions")?,
                consent_text: row.try_get("consent_text")?,
                consent_version: row.try_get("consent_version")?,
                platform: Platform::parse(&platform).ok_or_else(|| invalid_in_db("platform", &platform))?,
                completion_url: row.try_get("completion_url")?,
                completion_code: row.try_get("completion_code")?,
            },
            status: StudyStatus::parse(&status).ok_or_else(|| invalid_in_db("study status", &status))?,
            created_at: row.try_get("created_at")?,
        }
    }};
}

macro_rules! session_row {
    ($row:expr) => {{
        let row = $row;
        let platform: String = row.try_get("platform")?;
        let state: String = row.try_get("state")?;
        let code: Option<String> = row.try_get("completion_code")?;
        SessionRow {
            id: row.try_get("id")?,
            study_id: row.try_get("study_id")?,
            platform: Platform::parse(&platform).ok_or_else(|| invalid_in_db("platform", &platform))?,
            ids: PlatformIds {
                worker_id: row.try_get("worker_id")?,
                study_ref: row.try_get("study_ref")?,
                session_ref: row.try_get("session_ref")?,
                submit_to: row.try_get("submit_to")?,
            },
            state: SessionState::parse(&state).ok_or_else(|| invalid_in_db("session state", &state))?,
            consent_at: row.try_get("consent_at")?,
            consent_version: row.try_get("consent_version")?,
            started_at: row.try_get("started_at")?,
            last_seen_at: row.try_get("last_seen_at")?,
            finished_at: row.try_get("finished_at")?,
            code_issued: code.is_some(),
            completion_code: code,
            excluded: row.try_get("excluded")?,
            exclusion_reason: row.try_get("exclusion_reason")?,
        }
    }};
}

macro_rules! episode_row {
    ($row:expr) => {{
        let row = $row;
        let state: String = row.try_get("state")?;
        StudyEpisodeRow {
            id: row.try_get("id")?,
            session_id: row.try_get("session_id")?,
            study_id: row.try_get("study_id")?,
            index: row.try_get("idx")?,
            gym: row.try_get("gym")?,
            task_id: row.try_get("task_id")?,
            model: row.try_get("model")?,
            state: EpisodeState::parse(&state).ok_or_else(|| invalid_in_db("episode state", &state))?,
            score: from_db(row.try_get("score")?),
            normalized: from_db(row.try_get("normalized")?),
            success: row.try_get("success")?,
            termination: row.try_get("termination")?,
            turns: row.try_get("turns")?,
            answer_ms: Vec::new(),
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
        }
    }};
}

/// One assigned episode to create with a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    pub gym: String,
    pub task_id: String,
    pub model: String,
}

/// Why a session could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NewSessionError {
    /// The worker already has a session in this study.
    #[error("this worker already has a session in this study")]
    Exists,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error().is_some_and(|db| db.is_unique_violation())
}

/// Checks what the database cannot: sizes, slug shape, non-empty lists.
pub fn validate_spec(spec: &StudySpec) -> Result<(), (String, String)> {
    let field = |name: &str, message: &str| Err((name.to_string(), message.to_string()));
    if spec.name.trim().is_empty() {
        return field("name", "a study needs a name");
    }
    if spec.name.chars().count() > 200 {
        return field("name", "at most 200 characters");
    }
    let slug_ok = !spec.slug.is_empty()
        && spec.slug.len() <= 64
        && spec.slug.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !spec.slug.starts_with('-');
    if !slug_ok {
        return field("slug", "1-64 characters: lowercase letters, digits and '-', not starting with '-'");
    }
    if spec.tasks.is_empty() {
        return field("tasks", "choose at least one task");
    }
    if spec.models.is_empty() || spec.models.iter().any(|m| m.trim().is_empty()) {
        return field("models", "name at least one model (a checkpoint, a GGUF file, or expert/random)");
    }
    if !(1..=50).contains(&spec.episodes_per_worker) {
        return field("episodes_per_worker", "between 1 and 50");
    }
    if !(60..=24 * 3600).contains(&spec.time_limit_s) {
        return field("time_limit_s", "between 60 seconds and 24 hours");
    }
    if !(1..=64).contains(&spec.max_turns) {
        return field("max_turns", "between 1 and 64");
    }
    if spec.consent_text.trim().is_empty() {
        return field("consent_text", "workers must be shown a consent text");
    }
    if spec.consent_version.trim().is_empty() {
        return field("consent_version", "name the consent text's version (e.g. v1)");
    }
    let url = &spec.completion_url;
    if spec.platform == Platform::Prolific && (!url.starts_with("https://") || url.contains(['?', '#', '"', '<', '>']))
    {
        return field("completion_url", "an https:// URL without a query (the code is appended as ?cc=CODE)");
    }
    let code = &spec.completion_code;
    if !code.is_empty() {
        if spec.platform != Platform::Prolific {
            return field("completion_code", "a fixed completion code is for Prolific studies only");
        }
        if code.len() > 64 || !code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return field("completion_code", "1-64 characters: letters, digits, '-' and '_'");
        }
    }
    for (name, text) in [("pay_note", &spec.pay_note), ("instructions", &spec.instructions)] {
        if text.chars().count() > 20_000 {
            return field(name, "at most 20,000 characters");
        }
    }
    if spec.consent_text.chars().count() > 20_000 {
        return field("consent_text", "at most 20,000 characters");
    }
    Ok(())
}

fn median(values: &mut [i64]) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let n = values.len();
    Some(if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2 })
}

/// Text as compared for duplicates: trimmed, lowercase, inner whitespace collapsed.
pub fn normalize_text(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

impl Store {
    /// Stores a new study after [`validate_spec`]; returns its id. A slug already in use is `Invalid`.
    pub async fn create_study(&self, spec: &StudySpec, status: StudyStatus) -> Result<i64, StoreError> {
        validate_spec(spec).map_err(|(field, message)| StoreError::Invalid(format!("{field}: {message}")))?;
        let tasks = serde_json::to_string(&spec.tasks).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let models = serde_json::to_string(&spec.models).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let result = on_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO studies (name, slug, tasks, split, models, episodes_per_worker, time_limit_s, max_turns, \
                 pay_note, instructions, consent_text, consent_version, platform, completion_url, completion_code, \
                 status, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) RETURNING id",
            )
            .bind(clean(&spec.name).as_ref())
            .bind(spec.slug.as_str())
            .bind(clean(&tasks).as_ref())
            .bind(clean(&spec.split).as_ref())
            .bind(clean(&models).as_ref())
            .bind(spec.episodes_per_worker)
            .bind(spec.time_limit_s)
            .bind(spec.max_turns)
            .bind(clean(&spec.pay_note).as_ref())
            .bind(clean(&spec.instructions).as_ref())
            .bind(clean(&spec.consent_text).as_ref())
            .bind(clean(&spec.consent_version).as_ref())
            .bind(spec.platform.as_str())
            .bind(clean(&spec.completion_url).as_ref())
            .bind(spec.completion_code.as_str())
            .bind(status.as_str())
            .bind(now_ms())
            .fetch_one(pool)
            .await
        });
        match result {
            Ok(id) => Ok(id),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::Invalid(format!("slug: {:?} is already used by another study", spec.slug)))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn study(&self, id: i64) -> Result<Option<StudyRow>, StoreError> {
        let sql = format!("SELECT {STUDY_COLUMNS} FROM studies WHERE id = $1");
        on_pool!(self, pool => {
            match sqlx::query(AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await? {
                Some(row) => Ok(Some(study_row!(&row))),
                None => Ok(None),
            }
        })
    }

    pub async fn study_by_slug(&self, slug: &str) -> Result<Option<StudyRow>, StoreError> {
        let sql = format!("SELECT {STUDY_COLUMNS} FROM studies WHERE slug = $1");
        on_pool!(self, pool => {
            match sqlx::query(AssertSqlSafe(sql)).bind(clean(slug).as_ref()).fetch_optional(pool).await? {
                Some(row) => Ok(Some(study_row!(&row))),
                None => Ok(None),
            }
        })
    }

    /// All studies, newest first.
    pub async fn studies(&self) -> Result<Vec<StudyRow>, StoreError> {
        let sql = format!("SELECT {STUDY_COLUMNS} FROM studies ORDER BY id DESC");
        on_pool!(self, pool => {
            let rows = sqlx::query(AssertSqlSafe(sql)).fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(study_row!(row));
            }
            Ok(out)
        })
    }

    /// `NotFound` when the study does not exist.
    pub async fn set_study_status(&self, id: i64, status: StudyStatus) -> Result<(), StoreError> {
        let n = on_pool!(self, pool => {
            sqlx::query("UPDATE studies SET status = $1 WHERE id = $2")
                .bind(status.as_str())
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if n == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    /// Creates a session (state `consent`) with its assigned episodes, in one transaction. `Exists` when the
    /// worker already has a session in this study (the unique key on study, platform and worker id).
    pub async fn create_worker_session(
        &self,
        study_id: i64,
        platform: Platform,
        ids: &PlatformIds,
        token_hash: &str,
        assignments: &[Assignment],
    ) -> Result<i64, NewSessionError> {
        let now = now_ms();
        let outcome: Result<i64, sqlx::Error> = on_pool!(self, pool => {
            async {
                let mut tx = pool.begin().await?;
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO study_sessions (study_id, platform, worker_id, study_ref, session_ref, submit_to, \
                     token_hash, state, started_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) \
                     RETURNING id",
                )
                .bind(study_id)
                .bind(platform.as_str())
                .bind(clean(&ids.worker_id).as_ref())
                .bind(clean(&ids.study_ref).as_ref())
                .bind(clean(&ids.session_ref).as_ref())
                .bind(clean(&ids.submit_to).as_ref())
                .bind(token_hash)
                .bind(SessionState::Consent.as_str())
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                for (index, a) in assignments.iter().enumerate() {
                    sqlx::query(
                        "INSERT INTO study_episodes (session_id, study_id, idx, gym, task_id, model, state) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(id)
                    .bind(study_id)
                    .bind(index as i64)
                    .bind(clean(&a.gym).as_ref())
                    .bind(clean(&a.task_id).as_ref())
                    .bind(clean(&a.model).as_ref())
                    .bind(EpisodeState::Assigned.as_str())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok::<i64, sqlx::Error>(id)
            }
            .await
        });
        match outcome {
            Ok(id) => Ok(id),
            Err(e) if is_unique_violation(&e) => Err(NewSessionError::Exists),
            Err(e) => match e.as_database_error() {
                Some(db) if db.is_foreign_key_violation() => Err(StoreError::NotFound.into()),
                _ => Err(StoreError::Db(e).into()),
            },
        }
    }

    pub async fn worker_session(&self, id: i64) -> Result<Option<SessionRow>, StoreError> {
        self.worker_session_where("id = $1", SessionKey::Id(id)).await
    }

    /// The session whose token hashes to `token_hash`.
    pub async fn worker_session_by_token(&self, token_hash: &str) -> Result<Option<SessionRow>, StoreError> {
        self.worker_session_where("token_hash = $1", SessionKey::Text(token_hash.to_string())).await
    }

    /// The worker's session in a study, if they have one.
    pub async fn worker_session_for(
        &self,
        study_id: i64,
        platform: Platform,
        worker_id: &str,
    ) -> Result<Option<SessionRow>, StoreError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM study_sessions WHERE study_id = $1 AND platform = $2 AND worker_id = $3"
        );
        on_pool!(self, pool => {
            let row = sqlx::query(AssertSqlSafe(sql))
                .bind(study_id)
                .bind(platform.as_str())
                .bind(clean(worker_id).as_ref())
                .fetch_optional(pool)
                .await?;
            match row {
                Some(row) => Ok(Some(session_row!(&row))),
                None => Ok(None),
            }
        })
    }

    async fn worker_session_where(&self, clause: &str, key: SessionKey) -> Result<Option<SessionRow>, StoreError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM study_sessions WHERE {clause}");
        on_pool!(self, pool => {
            let query = sqlx::query(AssertSqlSafe(sql));
            let query = match &key {
                SessionKey::Id(id) => query.bind(*id),
                SessionKey::Text(text) => query.bind(text.as_str()),
            };
            match query.fetch_optional(pool).await? {
                Some(row) => Ok(Some(session_row!(&row))),
                None => Ok(None),
            }
        })
    }

    /// A study's sessions, oldest first.
    pub async fn worker_sessions(&self, study_id: i64) -> Result<Vec<SessionRow>, StoreError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM study_sessions WHERE study_id = $1 ORDER BY id");
        on_pool!(self, pool => {
            let rows = sqlx::query(AssertSqlSafe(sql)).bind(study_id).fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(session_row!(row));
            }
            Ok(out)
        })
    }

    /// Moves a session from `from` to `to`; false (nothing changed) when it is not in `from`. Final states
    /// stamp `finished_at`.
    pub async fn set_worker_session_state(
        &self,
        id: i64,
        from: SessionState,
        to: SessionState,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let finished = to.is_final().then_some(now);
        let n = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE study_sessions SET state = $1, last_seen_at = $2, finished_at = COALESCE($3, finished_at) \
                 WHERE id = $4 AND state = $5",
            )
            .bind(to.as_str())
            .bind(now)
            .bind(finished)
            .bind(id)
            .bind(from.as_str())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Records consent (time and the version of the text shown) and moves `consent` -> `instructions`;
    /// false when the session is not waiting for consent.
    pub async fn record_consent(&self, id: i64, version: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let n = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE study_sessions SET state = $1, consent_at = $2, consent_version = $3, last_seen_at = $2 \
                 WHERE id = $4 AND state = $5",
            )
            .bind(SessionState::Instructions.as_str())
            .bind(now)
            .bind(clean(version).as_ref())
            .bind(id)
            .bind(SessionState::Consent.as_str())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    pub async fn touch_worker_session(&self, id: i64) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE study_sessions SET last_seen_at = $1 WHERE id = $2")
                .bind(now_ms())
                .bind(id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Completes a session in state `episodes` with `code`, once: true when this call stored the code; false
    /// when the session already has one or is in another state (the code is never replaced).
    pub async fn issue_completion_code(&self, id: i64, code: &str) -> Result<bool, StoreError> {
        let now = now_ms();
        let result = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE study_sessions SET state = $1, completion_code = $2, finished_at = $3, last_seen_at = $3 \
                 WHERE id = $4 AND state = $5 AND completion_code IS NULL",
            )
            .bind(SessionState::Completed.as_str())
            .bind(code)
            .bind(now)
            .bind(id)
            .bind(SessionState::Episodes.as_str())
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        });
        match result {
            Ok(n) => Ok(n == 1),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Invalid("completion code collision".into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Excludes a session from the scores (or takes the exclusion back); the worker is not rejected.
    pub async fn set_excluded(&self, id: i64, excluded: bool, reason: &str) -> Result<(), StoreError> {
        let at = excluded.then(now_ms);
        let n = on_pool!(self, pool => {
            sqlx::query("UPDATE study_sessions SET excluded = $1, exclusion_reason = $2, excluded_at = $3 WHERE id = $4")
                .bind(excluded)
                .bind(clean(reason).as_ref())
                .bind(at)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if n == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    /// A session's episodes in assignment order, with their answer times.
    pub async fn session_episodes(&self, session_id: i64) -> Result<Vec<StudyEpisodeRow>, StoreError> {
        self.episodes_where("session_id = $1", session_id).await
    }

    /// All episodes of a study, by session then position.
    pub async fn study_episodes(&self, study_id: i64) -> Result<Vec<StudyEpisodeRow>, StoreError> {
        self.episodes_where("study_id = $1", study_id).await
    }

    async fn episodes_where(&self, clause: &str, key: i64) -> Result<Vec<StudyEpisodeRow>, StoreError> {
        let sql = format!("SELECT {EPISODE_COLUMNS} FROM study_episodes WHERE {clause} ORDER BY session_id, idx");
        let answers_sql = format!(
            "SELECT a.episode_id, a.elapsed_ms FROM study_answers a JOIN study_episodes e ON e.id = a.episode_id \
             WHERE e.{clause} ORDER BY a.episode_id, a.id"
        );
        let (mut episodes, times) = on_pool!(self, pool => {
            let rows = sqlx::query(AssertSqlSafe(sql)).bind(key).fetch_all(pool).await?;
            let mut episodes = Vec::with_capacity(rows.len());
            for row in &rows {
                episodes.push(episode_row!(row));
            }
            let rows = sqlx::query(AssertSqlSafe(answers_sql)).bind(key).fetch_all(pool).await?;
            let mut times: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
            for row in &rows {
                times.entry(row.try_get("episode_id")?).or_default().push(row.try_get("elapsed_ms")?);
            }
            (episodes, times)
        });
        for e in &mut episodes {
            if let Some(t) = times.get(&e.id) {
                e.answer_ms = t.clone();
            }
        }
        Ok(episodes)
    }

    /// One episode with its transcript (present once it ended).
    pub async fn study_episode(
        &self,
        id: i64,
    ) -> Result<Option<(StudyEpisodeRow, Option<TranscriptRecord>)>, StoreError> {
        let sql = format!("SELECT {EPISODE_COLUMNS}, record FROM study_episodes WHERE id = $1");
        let found = on_pool!(self, pool => {
            match sqlx::query(AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await? {
                Some(row) => {
                    let raw: Option<String> = row.try_get("record")?;
                    Some((episode_row!(&row), raw))
                }
                None => None,
            }
        });
        let Some((mut episode, raw)) = found else { return Ok(None) };
        let record = match raw {
            // Written by us from a TranscriptRecord; one that no longer parses is shown as missing, not an error.
            Some(raw) => serde_json::from_str(&raw).ok(),
            None => None,
        };
        let times = on_pool!(self, pool => {
            let rows = sqlx::query("SELECT elapsed_ms FROM study_answers WHERE episode_id = $1 ORDER BY id")
                .bind(id)
                .fetch_all(pool)
                .await?;
            let mut times = Vec::with_capacity(rows.len());
            for row in &rows {
                times.push(row.try_get::<i64, _>("elapsed_ms")?);
            }
            times
        });
        episode.answer_ms = times;
        Ok(Some((episode, record)))
    }

    /// Marks an assigned episode running; false when it is not `assigned`.
    pub async fn start_study_episode(&self, id: i64) -> Result<bool, StoreError> {
        let n = on_pool!(self, pool => {
            sqlx::query("UPDATE study_episodes SET state = $1, started_at = $2 WHERE id = $3 AND state = $4")
                .bind(EpisodeState::Running.as_str())
                .bind(now_ms())
                .bind(id)
                .bind(EpisodeState::Assigned.as_str())
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }

    /// Puts a running episode back to `assigned` and forgets its answers (its live game was lost to a server
    /// restart: it is played again from the start). False when it is not running.
    pub async fn restart_study_episode(&self, id: i64) -> Result<bool, StoreError> {
        let n = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let n = sqlx::query("UPDATE study_episodes SET state = $1, started_at = NULL WHERE id = $2 AND state = $3")
                .bind(EpisodeState::Assigned.as_str())
                .bind(id)
                .bind(EpisodeState::Running.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 1 {
                sqlx::query("DELETE FROM study_answers WHERE episode_id = $1").bind(id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            n
        });
        Ok(n == 1)
    }

    /// Stores how a running episode ended; false when it is not `running` (ended already: the first result
    /// stays).
    pub async fn end_study_episode(&self, id: i64, result: &EpisodeResult) -> Result<bool, StoreError> {
        let record = serde_json::to_string(&result.record).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let n = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE study_episodes SET state = $1, score = $2, normalized = $3, success = $4, termination = $5, \
                 turns = $6, record = $7, finished_at = $8 WHERE id = $9 AND state = $10",
            )
            .bind(EpisodeState::Ended.as_str())
            .bind(to_db(result.score))
            .bind(to_db(result.normalized))
            .bind(result.success)
            .bind(clean(&result.termination).as_ref())
            .bind(result.turns)
            .bind(clean(&record).as_ref())
            .bind(now_ms())
            .bind(id)
            .bind(EpisodeState::Running.as_str())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Records one answer. An answer to a prompt already recorded is refused (`Invalid`): each prompt is
    /// answered once.
    pub async fn add_study_answer(&self, answer: &StudyAnswer) -> Result<(), StoreError> {
        let result = on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO study_answers (episode_id, prompt_id, answer, text, elapsed_ms, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(answer.episode_id)
            .bind(answer.prompt_id)
            .bind(clean(&answer.answer).as_ref())
            .bind(clean(&answer.text).as_ref())
            .bind(answer.elapsed_ms.max(0))
            .bind(now_ms())
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        });
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::Invalid(format!("prompt {} was already answered", answer.prompt_id)))
            }
            Err(e) => match e.as_database_error() {
                Some(db) if db.is_foreign_key_violation() => Err(StoreError::NotFound),
                _ => Err(e.into()),
            },
        }
    }

    /// Every answer of a study with the session that gave it, oldest first.
    pub async fn study_answers(&self, study_id: i64) -> Result<Vec<(i64, StudyAnswer)>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT e.session_id, a.episode_id, a.prompt_id, a.answer, a.text, a.elapsed_ms, a.created_at \
                 FROM study_answers a JOIN study_episodes e ON e.id = a.episode_id WHERE e.study_id = $1 \
                 ORDER BY a.id",
            )
            .bind(study_id)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push((
                    row.try_get("session_id")?,
                    StudyAnswer {
                        episode_id: row.try_get("episode_id")?,
                        prompt_id: row.try_get("prompt_id")?,
                        answer: row.try_get("answer")?,
                        text: row.try_get("text")?,
                        elapsed_ms: row.try_get("elapsed_ms")?,
                        created_at: row.try_get("created_at")?,
                    },
                ));
            }
            Ok(out)
        })
    }

    /// How many episodes of the study each (gym, task, model) has been assigned, for balancing new workers.
    pub async fn assignment_counts(
        &self,
        study_id: i64,
    ) -> Result<BTreeMap<(String, String, String), i64>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT gym, task_id, model, COUNT(*) AS n FROM study_episodes WHERE study_id = $1 \
                 GROUP BY gym, task_id, model",
            )
            .bind(study_id)
            .fetch_all(pool)
            .await?;
            let mut out = BTreeMap::new();
            for row in &rows {
                out.insert((row.try_get("gym")?, row.try_get("task_id")?, row.try_get("model")?), row.try_get("n")?);
            }
            Ok(out)
        })
    }

    /// What the admin should look at (see [`StudyFlag`]), sorted, each at most once.
    pub async fn study_flags(&self, study_id: i64) -> Result<Vec<StudyFlag>, StoreError> {
        let sessions = self.worker_sessions(study_id).await?;
        let episodes = self.study_episodes(study_id).await?;
        let answers = self.study_answers(study_id).await?;
        let mut flags = BTreeSet::new();
        for e in &episodes {
            let mut times = e.answer_ms.clone();
            if times.len() >= 2
                && let Some(m) = median(&mut times)
                && m < TOO_FAST_MEDIAN_MS
            {
                flags.insert(StudyFlag::TooFast { session_id: e.session_id, episode_id: e.id, median_ms: m });
            }
            if e.state == EpisodeState::Ended && e.termination == "abandoned" {
                flags.insert(StudyFlag::LeftEarly {
                    session_id: e.session_id,
                    detail: format!("episode {} ({} {}) was abandoned", e.index + 1, e.gym, e.task_id),
                });
            }
        }
        for s in &sessions {
            if s.state == SessionState::Expired {
                flags.insert(StudyFlag::LeftEarly {
                    session_id: s.id,
                    detail: "the session ended without completing".into(),
                });
            }
        }
        let mut by_text: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
        for (session_id, a) in &answers {
            let text = normalize_text(&a.text);
            if text.chars().count() >= DUPLICATE_MIN_CHARS {
                by_text.entry(text).or_default().insert(*session_id);
            }
        }
        for (text, who) in by_text {
            if who.len() < 2 {
                continue;
            }
            for &session_id in &who {
                let other_session_id = who.iter().copied().find(|&o| o != session_id).unwrap_or(session_id);
                flags.insert(StudyFlag::DuplicateText { session_id, other_session_id, text: text.clone() });
            }
        }
        Ok(flags.into_iter().collect())
    }

    /// A study's live numbers (see [`StudyProgress`]).
    pub async fn study_progress(&self, study_id: i64) -> Result<StudyProgress, StoreError> {
        let sessions = self.worker_sessions(study_id).await?;
        let episodes = self.study_episodes(study_id).await?;
        let excluded: BTreeSet<i64> = sessions.iter().filter(|s| s.excluded).map(|s| s.id).collect();
        let mut p = StudyProgress {
            sessions: sessions.len() as i64,
            consented: sessions.iter().filter(|s| s.consent_at.is_some()).count() as i64,
            completed: sessions.iter().filter(|s| s.state == SessionState::Completed).count() as i64,
            expired: sessions.iter().filter(|s| s.state == SessionState::Expired).count() as i64,
            excluded: excluded.len() as i64,
            episodes_assigned: episodes.len() as i64,
            episodes_ended: episodes.iter().filter(|e| e.state == EpisodeState::Ended).count() as i64,
            mean_score: f64::NAN,
            success_rate: f64::NAN,
            median_answer_ms: None,
        };
        let scored: Vec<&StudyEpisodeRow> = episodes.iter().filter(|e| counts_for_score(e, &excluded)).collect();
        if !scored.is_empty() {
            let n = scored.len() as f64;
            let with_score: Vec<f64> = scored.iter().map(|e| e.score).filter(|s| !s.is_nan()).collect();
            if !with_score.is_empty() {
                p.mean_score = with_score.iter().sum::<f64>() / with_score.len() as f64;
            }
            p.success_rate = scored.iter().filter(|e| e.success).count() as f64 / n;
        }
        let mut times: Vec<i64> = episodes.iter().flat_map(|e| e.answer_ms.iter().copied()).collect();
        p.median_answer_ms = median(&mut times);
        Ok(p)
    }

    /// The real-user column of the Eval table: ended, non-abandoned episodes of sessions not excluded,
    /// aggregated per (model, gym, split) with the same definitions as the scripted and LLM rows (mean paper
    /// score, mean normalised score, success rate, mean turns). `user_kind` is `human`, `id` 0, `created_at`
    /// the newest episode's end.
    pub async fn human_evals(&self) -> Result<Vec<EvalRow>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT e.model, e.gym, s.split, COUNT(*) AS episodes, \
                 AVG(e.score) AS mean_score, AVG(e.normalized) AS normalized, \
                 CAST(AVG(CASE WHEN e.success THEN 1.0 ELSE 0.0 END) AS DOUBLE PRECISION) AS success_rate, \
                 AVG(CAST(e.turns AS DOUBLE PRECISION)) AS mean_turns, MAX(e.finished_at) AS at \
                 FROM study_episodes e \
                 JOIN study_sessions ss ON ss.id = e.session_id \
                 JOIN studies s ON s.id = e.study_id \
                 WHERE e.state = $1 AND e.termination <> $2 AND ss.excluded = $3 \
                 GROUP BY e.model, e.gym, s.split ORDER BY e.model, e.gym, s.split",
            )
            .bind(EpisodeState::Ended.as_str())
            .bind("abandoned")
            .bind(false)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(EvalRow {
                    id: 0,
                    run_id: None,
                    model: row.try_get("model")?,
                    gym: row.try_get("gym")?,
                    user_kind: "human".into(),
                    split: row.try_get("split")?,
                    episodes: row.try_get("episodes")?,
                    mean_score: from_db(row.try_get("mean_score")?),
                    normalized: from_db(row.try_get("normalized")?),
                    success_rate: from_db(row.try_get("success_rate")?),
                    mean_turns: from_db(row.try_get("mean_turns")?),
                    created_at: row.try_get::<Option<i64>, _>("at")?.unwrap_or(0),
                });
            }
            Ok(out)
        })
    }
}

/// Whether an episode counts toward the scores: ended, not abandoned, its session not excluded.
fn counts_for_score(e: &StudyEpisodeRow, excluded: &BTreeSet<i64>) -> bool {
    e.state == EpisodeState::Ended && e.termination != "abandoned" && !excluded.contains(&e.session_id)
}

enum SessionKey {
    Id(i64),
    Text(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_normalised_text() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [5, 1, 3]), Some(3));
        assert_eq!(median(&mut [4, 1, 3, 2]), Some(2));
        assert_eq!(normalize_text("  The  Hotel\nnear the BEACH "), "the hotel near the beach");
    }
}
