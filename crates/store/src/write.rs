//! The one write path: a batch of entries (metrics, transcripts, checkpoints, status changes) written in a
//! single transaction, then announced as [`StoreEvent`]s. The public `append_*`/`add_*` methods write
//! one-entry batches; the sink writes hundreds at once, which is what keeps logging cheap.

use std::collections::HashMap;

use sqlx::AssertSqlSafe;

use crate::transcripts::Summary;
use std::borrow::Cow;

use crate::{BLOCK_STEPS, RunStatus, Store, StoreError, StoreEvent, clean, not_found_on_fk, now_ms, on_pool, to_db};

/// Rows per multi-row INSERT: 5 parameters each stays far below SQLite's 32,766-parameter limit.
const ROWS_PER_INSERT: usize = 1_000;

#[derive(Clone, Debug)]
pub(crate) enum Entry {
    Metrics { run_id: i64, step: i64, wall_time: i64, values: Vec<(String, f64)> },
    Transcript { run_id: i64, step: i64, group: i64, sample: i64, validate: bool, record: String, summary: Summary },
    Checkpoint { run_id: i64, step: i64, path: String },
    Status { run_id: i64, status: RunStatus, message: String },
}

/// Ids of the rows a batch created, in entry order.
#[derive(Debug, Default)]
pub(crate) struct Written {
    pub transcript_ids: Vec<i64>,
    pub checkpoint_ids: Vec<i64>,
}

/// One metric row to insert.
struct MetricRow<'a> {
    run_id: i64,
    key: Cow<'a, str>,
    step: i64,
    wall_time: i64,
    value: Option<f64>,
}

/// A batch's points within one block of one series (merged into `metric_blocks`).
struct BlockPart {
    first_step: i64,
    last_step: i64,
    min: Option<f64>,
    max: Option<f64>,
    count: i64,
}

/// Merges a batch's block summaries into the stored ones (min/max ignore NULL, that is NaN).
const UPSERT_BLOCKS_TAIL: &str = " ON CONFLICT (run_id, key, block) DO UPDATE SET \
    first_step = CASE WHEN excluded.first_step < metric_blocks.first_step \
        THEN excluded.first_step ELSE metric_blocks.first_step END, \
    last_step = CASE WHEN excluded.last_step > metric_blocks.last_step \
        THEN excluded.last_step ELSE metric_blocks.last_step END, \
    min_value = CASE WHEN metric_blocks.min_value IS NULL OR excluded.min_value < metric_blocks.min_value \
        THEN excluded.min_value ELSE metric_blocks.min_value END, \
    max_value = CASE WHEN metric_blocks.max_value IS NULL OR excluded.max_value > metric_blocks.max_value \
        THEN excluded.max_value ELSE metric_blocks.max_value END, \
    cnt = metric_blocks.cnt + excluded.cnt";

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
    sql
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

impl Store {
    pub(crate) async fn write_batch(&self, entries: &[Entry]) -> Result<Written, StoreError> {
        let mut rows = Vec::new();
        let mut progress: HashMap<i64, RunProgress> = HashMap::new();
        let mut keys: Vec<(i64, Cow<str>)> = Vec::new();
        for entry in entries {
            if let Entry::Metrics { run_id, step, wall_time, values } = entry {
                let p = progress.entry(*run_id).or_insert(RunProgress { step: *step, reward: None });
                p.step = p.step.max(*step);
                for (key, value) in values {
                    if key == "reward" && p.reward.is_none_or(|(s, _)| s <= *step) {
                        p.reward = Some((*step, to_db(*value)));
                    }
                    let key = clean(key);
                    keys.push((*run_id, key.clone()));
                    rows.push(MetricRow {
                        run_id: *run_id,
                        key,
                        step: *step,
                        wall_time: *wall_time,
                        value: to_db(*value),
                    });
                }
            }
        }
        keys.sort_unstable();
        keys.dedup();
        let mut blocks: HashMap<(i64, &str, i64), BlockPart> = HashMap::new();
        for row in &rows {
            let part = blocks
                .entry((row.run_id, row.key.as_ref(), row.step.div_euclid(BLOCK_STEPS)))
                .or_insert(BlockPart { first_step: row.step, last_step: row.step, min: None, max: None, count: 0 });
            part.first_step = part.first_step.min(row.step);
            part.last_step = part.last_step.max(row.step);
            if let Some(v) = row.value {
                part.min = Some(part.min.map_or(v, |m| m.min(v)));
                part.max = Some(part.max.map_or(v, |m| m.max(v)));
            }
            part.count += 1;
        }
        let blocks: Vec<_> = blocks.into_iter().collect();
        let now = now_ms();
        let mut written = Written::default();

        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for chunk in rows.chunks(ROWS_PER_INSERT) {
                let sql = insert_sql("INSERT INTO metrics (run_id, key, step, wall_time, value)", 5, chunk.len());
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for row in chunk {
                    query = query.bind(row.run_id).bind(row.key.as_ref()).bind(row.step).bind(row.wall_time).bind(row.value);
                }
                query.execute(&mut *tx).await.map_err(not_found_on_fk)?;
            }
            for chunk in keys.chunks(ROWS_PER_INSERT) {
                let mut sql = insert_sql("INSERT INTO metric_keys (run_id, key)", 2, chunk.len());
                sql.push_str(" ON CONFLICT DO NOTHING");
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for (run_id, key) in chunk {
                    query = query.bind(*run_id).bind(key.as_ref());
                }
                query.execute(&mut *tx).await.map_err(not_found_on_fk)?;
            }
            for chunk in blocks.chunks(ROWS_PER_INSERT) {
                let mut sql = insert_sql(
                    "INSERT INTO metric_blocks (run_id, key, block, first_step, last_step, min_value, max_value, cnt)",
                    8,
                    chunk.len(),
                );
                sql.push_str(UPSERT_BLOCKS_TAIL);
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for ((run_id, key, block), part) in chunk {
                    query = query
                        .bind(*run_id)
                        .bind(*key)
                        .bind(*block)
                        .bind(part.first_step)
                        .bind(part.last_step)
                        .bind(part.min)
                        .bind(part.max)
                        .bind(part.count);
                }
                query.execute(&mut *tx).await.map_err(not_found_on_fk)?;
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
            for entry in entries {
                match entry {
                    Entry::Metrics { .. } => {}
                    Entry::Transcript { run_id, step, group, sample, validate, record, summary } => {
                        let id: i64 = sqlx::query_scalar(
                            "INSERT INTO transcripts (run_id, step, grp, sample, validate, gym, task_id, reward, \
                             normalized, success, termination, turns, parse_failures, record, created_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING id",
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
                             RETURNING id",
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
