//! Persistence for userrl: runs, metrics, transcripts, checkpoints, eval scores, admin sessions and crowd
//! studies, in SQLite (the default, one file in WAL mode) or Postgres (for teams), through sqlx with
//! runtime-checked queries. Migrations for both dialects live in the workspace's `migrations/` and run at
//! connect. The [`StoreSink`] turns a training run's events into batched writes; every write is announced on a
//! broadcast channel for live views.
//!
//! One SQL text serves both dialects: placeholders are `$N` (SQLite accepts them too) and only portable SQL is
//! used; the few values SQLite cannot hold (NaN) are stored as NULL on both sides so both answer alike.

mod auth;
mod episodes;
mod metrics;
mod runs;
mod sink;
mod studies;
mod transcripts;
mod write;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::broadcast;

pub use auth::AuthSession;
pub use episodes::NewEpisode;
pub use sink::{BATCH_WINDOW, MAX_BATCH, StoreSink, status_from_name};
pub use studies::{
    Assignment, DUPLICATE_MIN_CHARS, NewSessionError, TOO_FAST_MEDIAN_MS, normalize_text, validate_spec,
};
pub use userrl_types::{
    CheckpointRow, EvalRow, MetricBucket, MetricPoint, MetricSeries, RolloutHealth, RunKind, RunRow, RunStatus,
    Speaker, TranscriptMessage, TranscriptRecord, TranscriptSummary,
};
pub use write::RETRY_FOR;

/// The database used when `DATABASE_URL` is not set, relative to the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/userrl.db";
/// Steps per stored block summary (`metric_blocks`); fixed by the migrations' data, never change it.
pub const BLOCK_STEPS: i64 = 64;
/// Most buckets one chart query may ask for.
pub const MAX_BUCKETS: usize = 100_000;
/// Most transcripts one page may hold; larger limits are cut to this.
pub const MAX_TRANSCRIPT_PAGE: i64 = 1_000;
/// How long a query waits for a connection (an unreachable server fails writes after this, not 30 s).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many store events a slow live reader may fall behind before it sees `Lagged`.
const EVENT_CAPACITY: usize = 4_096;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot prepare the database location: {0}")]
    Io(#[from] std::io::Error),
    /// The sink's writer could not store some events (after retries) or has stopped.
    #[error("store sink: {0}")]
    Sink(String),
}

/// A run to create; it starts `queued`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewRun {
    pub name: String,
    pub kind: RunKind,
    /// The run config as submitted (TOML).
    pub config: String,
    pub gyms: Vec<String>,
    pub model: String,
    pub device: String,
    pub total_steps: i64,
}

/// One eval score to record (see [`EvalRow`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewEval {
    pub run_id: Option<i64>,
    pub model: String,
    pub gym: String,
    pub user_kind: String,
    pub split: String,
    pub episodes: i64,
    pub mean_score: f64,
    pub normalized: f64,
    pub success_rate: f64,
    pub mean_turns: f64,
}

/// Which transcripts of a run to list. `None` fields do not filter; reward bounds are inclusive. `limit` must
/// be positive (values above [`MAX_TRANSCRIPT_PAGE`] are cut to it); `offset` must not be negative.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TranscriptFilter {
    pub gym: Option<String>,
    pub step: Option<i64>,
    pub min_reward: Option<f64>,
    pub max_reward: Option<f64>,
    pub termination: Option<String>,
    pub validate: Option<bool>,
    pub limit: i64,
    pub offset: i64,
}

impl Default for TranscriptFilter {
    fn default() -> TranscriptFilter {
        TranscriptFilter {
            gym: None,
            step: None,
            min_reward: None,
            max_reward: None,
            termination: None,
            validate: None,
            limit: 100,
            offset: 0,
        }
    }
}

/// What changed, published after the write committed (for SSE and other live views).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum StoreEvent {
    Metrics {
        run_id: i64,
        step: i64,
        wall_time: i64,
        values: Vec<(String, f64)>,
    },
    Status {
        run_id: i64,
        status: RunStatus,
        message: String,
    },
    Transcript {
        run_id: i64,
        id: i64,
        step: i64,
    },
    Checkpoint {
        run_id: i64,
        step: i64,
        path: String,
    },
    /// `step` of the `total` steps of the run's current `phase` are done.
    Progress {
        run_id: i64,
        phase: String,
        step: i64,
        total: i64,
    },
}

#[derive(Clone, Debug)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs the same code against whichever pool the store holds: the body is compiled once per dialect, so
/// `sqlx::query(..).bind(..)` and `row.try_get(..)` resolve to each driver's types.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.pool {
            $crate::Pool::Sqlite($pool) => $body,
            $crate::Pool::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// A handle on the database; cheap to clone (it wraps a connection pool and a broadcast sender).
#[derive(Clone, Debug)]
pub struct Store {
    pool: Pool,
    events: Arc<broadcast::Sender<StoreEvent>>,
}

impl Store {
    /// Opens `sqlite://path` (creating folders and file; WAL, 5 s busy timeout), `sqlite::memory:`, or
    /// `postgres://...`, and applies the migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let pool = if url.starts_with("sqlite:") {
            let mut options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let mut pool_options = SqlitePoolOptions::new().max_connections(8).acquire_timeout(ACQUIRE_TIMEOUT);
            if in_memory {
                // Every connection to `:memory:` is its own database: keep exactly one, forever.
                pool_options = pool_options.max_connections(1).min_connections(1).idle_timeout(None).max_lifetime(None);
            } else {
                options = options.journal_mode(SqliteJournalMode::Wal).synchronous(SqliteSynchronous::Normal);
                if let Some(dir) = options.get_filename().parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
            }
            let pool = pool_options.connect_with(options).await?;
            SQLITE_MIGRATIONS.run(&pool).await?;
            Pool::Sqlite(pool)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url)?;
            let pool =
                PgPoolOptions::new().max_connections(10).acquire_timeout(ACQUIRE_TIMEOUT).connect_with(options).await?;
            POSTGRES_MIGRATIONS.run(&pool).await?;
            Pool::Postgres(pool)
        } else {
            return Err(StoreError::Invalid(format!(
                "unsupported database URL {:?}: use sqlite://PATH or postgres://...",
                redact(url)
            )));
        };
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Ok(Store { pool, events: Arc::new(events) })
    }

    /// Connects to `DATABASE_URL`, or to [`DEFAULT_DATABASE_URL`] when it is unset or empty.
    pub async fn from_env() -> Result<Store, StoreError> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Store::connect(url.trim()).await,
            _ => Store::connect(DEFAULT_DATABASE_URL).await,
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn dialect(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Live updates: every committed write, in commit order. A reader that falls more than a few thousand
    /// events behind gets `Lagged` and should reload what it shows.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    fn publish(&self, event: StoreEvent) {
        // No receiver is not an error: nobody is watching.
        let _ = self.events.send(event);
    }
}

/// PostgreSQL text cannot hold NUL (SQLite can): every text we store or look up goes through this, so both
/// dialects keep the same text (U+FFFD in place of NUL) and a stray NUL is never an error.
pub(crate) fn clean(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{fffd}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// NaN cannot be stored in SQLite (it becomes NULL): store it as NULL on both sides and read NULL back as NaN.
pub(crate) fn to_db(value: f64) -> Option<f64> {
    if value.is_nan() { None } else { Some(value) }
}

pub(crate) fn from_db(value: Option<f64>) -> f64 {
    value.unwrap_or(f64::NAN)
}

/// A foreign-key failure means the run the row points at does not exist.
pub(crate) fn not_found_on_fk(err: sqlx::Error) -> StoreError {
    match err.as_database_error() {
        Some(db) if db.is_foreign_key_violation() => StoreError::NotFound,
        _ => StoreError::Db(err),
    }
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***{}", &url[..scheme], &url[at..]),
        _ => url.to_string(),
    }
}

pub(crate) fn kind_name(kind: RunKind) -> &'static str {
    match kind {
        RunKind::Train => "train",
        RunKind::Eval => "eval",
    }
}

pub(crate) fn parse_kind(name: &str) -> Result<RunKind, StoreError> {
    match name {
        "train" => Ok(RunKind::Train),
        "eval" => Ok(RunKind::Eval),
        other => Err(StoreError::Invalid(format!("unknown run kind {other:?} in the database"))),
    }
}

/// The file a `sqlite:` URL names (`None` for in-memory databases and other schemes), for messages such as
/// "database at data/userrl.db".
pub fn sqlite_path(url: &str) -> Option<&Path> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path.contains(":memory:") { None } else { Some(Path::new(path)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@host/db"), "postgres://***@host/db");
        assert_eq!(redact("sqlite://data/x.db"), "sqlite://data/x.db");
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(sqlite_path("sqlite://data/userrl.db"), Some(Path::new("data/userrl.db")));
        assert_eq!(sqlite_path("sqlite:///tmp/a.db?mode=rwc"), Some(Path::new("/tmp/a.db")));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(sqlite_path("postgres://x"), None);
    }
}
