//! The one write path: a batch of entries (metrics, transcripts, checkpoints, status and progress changes)
//! written in a single transaction, then announced as [`StoreEvent`]s. The public `append_*`/`add_*` methods
//! write one-entry batches; the sink writes hundreds at once, which is what keeps logging cheap.
//!
//! Every write is idempotent: a resumed run re-emits the events of the steps after its checkpoint, and they
//! replace what the first attempt wrote (a metric point per run, key and step; a transcript per run, step,
//! group, sample and validate; a checkpoint per run and path) instead of adding to it. Block summaries are
//! recomputed from the points of every block a batch touches, so they stay exact when a value is replaced.
//!
//! Lock contention (SQLite's one writer, Postgres serialization failures, a pool with every connection busy)
//! is retried with backoff for up to [`RETRY_FOR`]: a write waits rather than losing events.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use sqlx::AssertSqlSafe;

use crate::transcripts::Summary;
use std::borrow::Cow;

use crate::{BLOCK_STEPS, RunStatus, Store, StoreError, StoreEvent, clean, not_found_on_fk, now_ms, on_pool, to_db};

/// Rows per multi-row INSERT: 5 parameters each stays far below SQLite's 32,766-parameter limit.
const ROWS_PER_INSERT: usize = 1_000;
/// How long a write keeps retrying while the database is busy (backoff from 50 ms, doubling up to 2 s).
pub const RETRY_FOR: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub(crate) enum Entry {
    Metrics { run_id: i64, step: i64, wall_time: i64, values: Vec<(String, f64)> },
    Transcript { run_id: i64, step: i64, group: i64, sample: i64, validate: bool, record: String, summary: Summary },
    Checkpoint { run_id: i64, step: i64, path: String },
    Status { run_id: i64, status: RunStatus, message: String },
    Progress { run_id: i64, phase: String, step: i64, total: i64 },
}

/// Ids of the rows a batch created, in entry order.
#[derive(Debug, Default)]
pub(crate) struct Written {
    pub transcript_ids: Vec<i64>,
    pub checkpoint_ids: Vec<i64>,
}

/// Recomputes the summaries of the listed blocks (`t`: run, key, block and its first and last possible step)
/// from their points, replacing what was stored. The WHERE clause (not JOIN ... ON) keeps SQLite's parser
/// from reading the upsert's ON as a join constraint.
const RECOMPUTE_BLOCKS_HEAD: &str = "WITH t (run_id, key, block, lo, hi) AS (VALUES ";
const RECOMPUTE_BLOCKS_TAIL: &str = ") INSERT INTO metric_blocks \
    (run_id, key, block, first_step, last_step, min_value, max_value, cnt) \
    SELECT t.run_id, t.key, t.block, MIN(m.step), MAX(m.step), MIN(m.value), MAX(m.value), COUNT(*) \
    FROM t, metrics m WHERE m.run_id = t.run_id AND m.key = t.key AND m.step >= t.lo AND m.step <= t.hi \
    GROUP BY t.run_id, t.key, t.block \
    ON CONFLICT (run_id, key, block) DO UPDATE SET first_step = excluded.first_step, \
    last_step = excluded.last_step, min_value = excluded.min_value, max_value = excluded.max_value, \
    cnt = excluded.cnt";

/// A metric point's identity: run, key, step.
type PointKey<'a> = (i64, Cow<'a, str>, i64);

/// What a batch changes on each run's row: the largest step and the latest `reward`.
#[derive(Default)]
struct RunProgress {
    step: i64,
    reward: Option<(i64, Option<f64>)>,
}

fn insert_sql(head: &str, columns: usize, rows: usize) -> String {
    let mut sql = String::with_capacity(head.len() + rows * columns * 6);
    sql.push_str(head);
    sql.push_str(" VALUES ");
    push_tuples(&mut sql, columns, rows);
    sql
}

/// `($1,$2),($3,$4)...`: `rows` tuples of `columns` placeholders.
fn push_tuples(sql: &mut String, columns: usize, rows: usize) {
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..columns {
            if c > 0 {
                sql.push(',');
            }
            n += 1;
            sql.push('$');
            sql.push_str(&n.to_string());
        }
        sql.push(')');
    }
}

const STATUS_RUNNING: &str = "UPDATE runs SET status = $2, message = $3, started_at = COALESCE(started_at, $4), finished_at = NULL WHERE id = $1";
const STATUS_QUEUED: &str = "UPDATE runs SET status = $2, message = $3, finished_at = NULL WHERE id = $1";
const STATUS_DONE: &str = "UPDATE runs SET status = $2, message = $3, finished_at = $4 WHERE id = $1";

fn status_sql(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Running => STATUS_RUNNING,
        RunStatus::Queued => STATUS_QUEUED,
        _ => STATUS_DONE,
    }
}

/// Runs `op` again while it fails for a reason that passes (see [`busy`]), with backoff, for up to
/// [`RETRY_FOR`]; the last error otherwise.
pub(crate) async fn retry<T, F, Fut>(what: &str, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(50);
    loop {
        match op().await {
            Err(err) if busy(&err) && started.elapsed() + delay < RETRY_FOR => {
                tracing::warn!(error = %err, what, "store: database busy, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

/// Whether the same write may succeed a moment later: lock contention, serialization conflicts, a dropped
/// connection, no free connection in the pool. A closed pool or a refused statement is final.
pub(crate) fn busy(err: &StoreError) -> bool {
    match err {
        StoreError::Db(sqlx::Error::Database(db)) => transient_db(db.as_ref()),
        StoreError::Db(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut) => true,
        _ => false,
    }
}

pub(crate) fn transient_db(db: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = db.code() else { return false };
    match code.parse::<i32>() {
        // SQLite: BUSY and LOCKED, with their extended codes (BUSY_SNAPSHOT included).
        Ok(n) => matches!(n & 0xff, 5 | 6),
        // Postgres: serialization failure and deadlock (40xxx), lost connection (08xxx), admin shutdown, lock
        // not available, too many connections.
        Err(_) => {
            code.starts_with("40") || code.starts_with("08") || matches!(code.as_ref(), "57P01" | "55P03" | "53300")
        }
    }
}

impl Store {
    /// Writes a batch in one transaction, retrying while the database is busy.
    pub(crate) async fn write(&self, entries: &[Entry]) -> Result<Written, StoreError> {
        retry("write", || self.write_batch(entries)).await
    }

    async fn write_batch(&self, entries: &[Entry]) -> Result<Written, StoreError> {
        // One point per (run, key, step): the last in the batch wins, as the last write wins in the table.
        let mut points: BTreeMap<PointKey, (i64, Option<f64>)> = BTreeMap::new();
        let mut progress: HashMap<i64, RunProgress> = HashMap::new();
        let mut phases: HashMap<i64, (&str, i64, i64)> = HashMap::new();
        for entry in entries {
            match entry {
                Entry::Metrics { run_id, step, wall_time, values } => {
                    let p = progress.entry(*run_id).or_insert(RunProgress { step: *step, reward: None });
                    p.step = p.step.max(*step);
                    for (key, value) in values {
                        if key == "reward" && p.reward.is_none_or(|(s, _)| s <= *step) {
                            p.reward = Some((*step, to_db(*value)));
                        }
                        points.insert((*run_id, clean(key), *step), (*wall_time, to_db(*value)));
                    }
                }
                Entry::Progress { run_id, phase, step, total } => {
                    phases.insert(*run_id, (phase.as_str(), *step, *total));
                }
                _ => {}
            }
        }
        let points: Vec<_> = points.into_iter().collect();
        let keys: BTreeSet<(i64, &str)> = points.iter().map(|((run, key, _), _)| (*run, key.as_ref())).collect();
        let keys: Vec<_> = keys.into_iter().collect();
        let blocks: BTreeSet<(i64, &str, i64)> =
            points.iter().map(|((run, key, step), _)| (*run, key.as_ref(), step.div_euclid(BLOCK_STEPS))).collect();
        let blocks: Vec<_> = blocks.into_iter().collect();
        let now = now_ms();
        let mut written = Written::default();
        // SQLite: take the write lock at BEGIN (waiting on the busy timeout) rather than upgrading a read
        // transaction later, which fails at once when another writer got in between.
        let begin = match self.pool {
            crate::Pool::Sqlite(_) => "BEGIN IMMEDIATE",
            crate::Pool::Postgres(_) => "BEGIN",
        };

        on_pool!(self, pool => {
            let mut tx = pool.begin_with(begin).await?;
            for chunk in points.chunks(ROWS_PER_INSERT) {
                let mut sql = insert_sql("INSERT INTO metrics (run_id, key, step, wall_time, value)", 5, chunk.len());
                sql.push_str(" ON CONFLICT (run_id, key, step) DO UPDATE SET wall_time = excluded.wall_time, \
                              value = excluded.value");
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for ((run_id, key, step), (wall_time, value)) in chunk {
                    query = query.bind(*run_id).bind(key.as_ref()).bind(*step).bind(*wall_time).bind(*value);
                }
                query.execute(&mut *tx).await.map_err(not_found_on_fk)?;
            }
            for chunk in keys.chunks(ROWS_PER_INSERT) {
                let mut sql = insert_sql("INSERT INTO metric_keys (run_id, key)", 2, chunk.len());
                sql.push_str(" ON CONFLICT DO NOTHING");
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for (run_id, key) in chunk {
                    query = query.bind(*run_id).bind(*key);
                }
                query.execute(&mut *tx).await.map_err(not_found_on_fk)?;
            }
            for chunk in blocks.chunks(ROWS_PER_INSERT) {
                let mut sql = String::from(RECOMPUTE_BLOCKS_HEAD);
                push_tuples(&mut sql, 5, chunk.len());
                sql.push_str(RECOMPUTE_BLOCKS_TAIL);
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for (run_id, key, block) in chunk {
                    let lo = block * BLOCK_STEPS;
                    query = query.bind(*run_id).bind(*key).bind(*block).bind(lo).bind(lo.saturating_add(BLOCK_STEPS - 1));
                }
                query.execute(&mut *tx).await?;
            }
            for (run_id, p) in &progress {
                let done = sqlx::query(
                    "UPDATE runs SET step = CASE WHEN step < $2 THEN $2 ELSE step END WHERE id = $1",
                )
                .bind(*run_id)
                .bind(p.step)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
                if let Some((step, value)) = p.reward {
                    sqlx::query(
                        "UPDATE runs SET latest_reward = $2, reward_step = $3 \
                         WHERE id = $1 AND (reward_step IS NULL OR reward_step <= $3)",
                    )
                    .bind(*run_id)
                    .bind(value)
                    .bind(step)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            for (run_id, (phase, step, total)) in &phases {
                let done = sqlx::query("UPDATE runs SET phase = $2, phase_step = $3, phase_total = $4 WHERE id = $1")
                    .bind(*run_id)
                    .bind(clean(phase).as_ref())
                    .bind(*step)
                    .bind(*total)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound);
                }
            }
            for entry in entries {
                match entry {
                    Entry::Metrics { .. } | Entry::Progress { .. } => {}
                    Entry::Transcript { run_id, step, group, sample, validate, record, summary } => {
                        // A replayed episode replaces the stored one and keeps its id (links stay valid).
                        let id: i64 = sqlx::query_scalar(
                            "INSERT INTO transcripts (run_id, step, grp, sample, validate, gym, task_id, reward, \
                             normalized, success, termination, turns, parse_failures, record, created_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                             ON CONFLICT (run_id, step, grp, sample, validate) DO UPDATE SET gym = excluded.gym, \
                             task_id = excluded.task_id, reward = excluded.reward, normalized = excluded.normalized, \
                             success = excluded.success, termination = excluded.termination, turns = excluded.turns, \
                             parse_failures = excluded.parse_failures, record = excluded.record, \
                             created_at = excluded.created_at \
                             RETURNING id",
                        )
                        .bind(*run_id)
                        .bind(*step)
                        .bind(*group)
                        .bind(*sample)
                        .bind(*validate)
                        .bind(clean(&summary.gym).as_ref())
                        .bind(clean(&summary.task_id).as_ref())
                        .bind(to_db(summary.reward))
                        .bind(to_db(summary.normalized))
                        .bind(summary.success)
                        .bind(clean(&summary.termination).as_ref())
                        .bind(summary.turns)
                        .bind(summary.parse_failures)
                        .bind(record.as_str())
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(not_found_on_fk)?;
                        written.transcript_ids.push(id);
                    }
                    Entry::Checkpoint { run_id, step, path } => {
                        let id: i64 = sqlx::query_scalar(
                            "INSERT INTO checkpoints (run_id, step, path, created_at) VALUES ($1, $2, $3, $4) \
                             ON CONFLICT (run_id, path) DO UPDATE SET step = excluded.step, \
                             created_at = excluded.created_at RETURNING id",
                        )
                        .bind(*run_id)
                        .bind(*step)
                        .bind(clean(path).as_ref())
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(not_found_on_fk)?;
                        written.checkpoint_ids.push(id);
                    }
                    Entry::Status { run_id, status, message } => {
                        let mut query =
                            sqlx::query(status_sql(*status)).bind(*run_id).bind(status.as_str()).bind(clean(message).into_owned());
                        if *status != RunStatus::Queued {
                            query = query.bind(now);
                        }
                        let done = query.execute(&mut *tx).await?;
                        if done.rows_affected() == 0 {
                            return Err(StoreError::NotFound);
                        }
                    }
                }
            }
            tx.commit().await?;
        });

        let (mut transcripts, mut checkpoints) = (written.transcript_ids.iter(), written.checkpoint_ids.iter());
        for entry in entries {
            let event = match entry {
                Entry::Metrics { run_id, step, wall_time, values } => {
                    StoreEvent::Metrics { run_id: *run_id, step: *step, wall_time: *wall_time, values: values.clone() }
                }
                Entry::Transcript { run_id, step, .. } => {
                    let Some(id) = transcripts.next() else { continue };
                    StoreEvent::Transcript { run_id: *run_id, id: *id, step: *step }
                }
                Entry::Checkpoint { run_id, step, path } => {
                    if checkpoints.next().is_none() {
                        continue;
                    }
                    StoreEvent::Checkpoint { run_id: *run_id, step: *step, path: path.clone() }
                }
                Entry::Status { run_id, status, message } => {
                    StoreEvent::Status { run_id: *run_id, status: *status, message: message.clone() }
                }
                Entry::Progress { run_id, phase, step, total } => {
                    StoreEvent::Progress { run_id: *run_id, phase: phase.clone(), step: *step, total: *total }
                }
            };
            self.publish(event);
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_sql_numbers_every_placeholder() {
        assert_eq!(insert_sql("INSERT INTO t (a, b)", 2, 2), "INSERT INTO t (a, b) VALUES ($1,$2),($3,$4)");
    }
}
