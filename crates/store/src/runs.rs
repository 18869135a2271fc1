//! Runs (create, status changes, the runs table), checkpoints and eval scores. A run's `step` and
//! `latest_reward` are kept on its row by the metric writers, so the runs table never scans the points.

use sqlx::Row;

use crate::write::{Entry, retry};
use crate::{
    CheckpointRow, EvalRow, NewEval, NewRun, RunRow, RunStatus, Store, StoreError, StoreEvent, clean, from_db,
    kind_name, not_found_on_fk, now_ms, on_pool, parse_kind, to_db,
};

const RUN_COLUMNS: &str = "id, name, kind, status, config, gyms, model, device, step, total_steps, latest_reward, \
                           created_at, started_at, finished_at, message, phase, phase_step, phase_total";

macro_rules! run_row {
    ($row:expr) => {{
        let row = $row;
        let kind: String = row.try_get("kind")?;
        let status: String = row.try_get("status")?;
        let gyms: String = row.try_get("gyms")?;
        RunRow {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            kind: parse_kind(&kind)?,
            status: RunStatus::parse(&status)
                .ok_or_else(|| StoreError::Invalid(format!("unknown run status {status:?} in the database")))?,
            config: row.try_get("config")?,
            // Written by us as a JSON array; an unreadable value shows as no gyms rather than hiding the run.
            gyms: serde_json::from_str(&gyms).unwrap_or_default(),
            model: row.try_get("model")?,
            device: row.try_get("device")?,
            step: row.try_get("step")?,
            total_steps: row.try_get("total_steps")?,
            latest_reward: row.try_get::<Option<f64>, _>("latest_reward")?,
            created_at: row.try_get("created_at")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            message: row.try_get("message")?,
            phase: row.try_get("phase")?,
            phase_step: row.try_get("phase_step")?,
            phase_total: row.try_get("phase_total")?,
        }
    }};
}

macro_rules! checkpoint_row {
    ($row:expr) => {{
        let row = $row;
        CheckpointRow {
            id: row.try_get("id")?,
            run_id: row.try_get("run_id")?,
            step: row.try_get("step")?,
            path: row.try_get("path")?,
            created_at: row.try_get("created_at")?,
        }
    }};
}

macro_rules! eval_row {
    ($row:expr) => {{
        let row = $row;
        EvalRow {
            id: row.try_get("id")?,
            run_id: row.try_get("run_id")?,
            model: row.try_get("model")?,
            gym: row.try_get("gym")?,
            user_kind: row.try_get("user_kind")?,
            split: row.try_get("split")?,
            episodes: row.try_get("episodes")?,
            mean_score: from_db(row.try_get("mean_score")?),
            normalized: from_db(row.try_get("normalized")?),
            success_rate: from_db(row.try_get("success_rate")?),
            mean_turns: from_db(row.try_get("mean_turns")?),
            created_at: row.try_get("created_at")?,
        }
    }};
}

impl Store {
    /// Creates a run in state `queued`; returns its id.
    pub async fn create_run(&self, new: &NewRun) -> Result<i64, StoreError> {
        if new.total_steps < 0 {
            return Err(StoreError::Invalid("total_steps must not be negative".into()));
        }
        let gyms = serde_json::to_string(&new.gyms).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let id: i64 = retry("create run", || async {
            on_pool!(self, pool => {
                sqlx::query_scalar(
                    "INSERT INTO runs (name, kind, status, config, gyms, model, device, total_steps, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                )
                .bind(clean(&new.name).as_ref())
                .bind(kind_name(new.kind))
                .bind(RunStatus::Queued.as_str())
                .bind(clean(&new.config).as_ref())
                .bind(gyms.as_str())
                .bind(clean(&new.model).as_ref())
                .bind(clean(&new.device).as_ref())
                .bind(new.total_steps)
                .bind(now_ms())
                .fetch_one(pool)
                .await
                .map_err(StoreError::from)
            })
        })
        .await?;
        self.publish(StoreEvent::Status { run_id: id, status: RunStatus::Queued, message: String::new() });
        Ok(id)
    }

    /// Sets a run's status and message. `running` stamps `started_at` (the first time only) and clears
    /// `finished_at`; `finished`, `failed`, `cancelled` and `interrupted` stamp `finished_at`.
    pub async fn set_run_status(&self, id: i64, status: RunStatus, message: &str) -> Result<(), StoreError> {
        self.write(&[Entry::Status { run_id: id, status, message: message.to_string() }]).await?;
        Ok(())
    }

    /// Records where a run stands: `step` of the `total` steps of its current `phase` (`sft`, `grpo`, `eval`)
    /// done. `NotFound` when the run does not exist.
    pub async fn set_progress(&self, run_id: i64, phase: &str, step: i64, total: i64) -> Result<(), StoreError> {
        self.write(&[Entry::Progress { run_id, phase: phase.to_string(), step, total }]).await?;
        Ok(())
    }

    pub async fn run(&self, id: i64) -> Result<Option<RunRow>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
        on_pool!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?;
            match row {
                Some(row) => Ok(Some(run_row!(&row))),
                None => Ok(None),
            }
        })
    }

    /// All runs, newest first.
    pub async fn runs(&self) -> Result<Vec<RunRow>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC");
        on_pool!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?;
            let mut runs = Vec::with_capacity(rows.len());
            for row in &rows {
                runs.push(run_row!(row));
            }
            Ok(runs)
        })
    }

    /// At server start: runs left `queued` or `running` by a previous process become `interrupted`.
    /// Returns how many.
    pub async fn mark_interrupted(&self) -> Result<u64, StoreError> {
        const MESSAGE: &str = "the server stopped while this run was going";
        let ids: Vec<i64> = retry("mark interrupted", || async {
            on_pool!(self, pool => {
                sqlx::query_scalar(
                    "UPDATE runs SET status = $1, message = $2, finished_at = $3 \
                     WHERE status IN ('queued', 'running') RETURNING id",
                )
                .bind(RunStatus::Interrupted.as_str())
                .bind(MESSAGE)
                .bind(now_ms())
                .fetch_all(pool)
                .await
                .map_err(StoreError::from)
            })
        })
        .await?;
        for &run_id in &ids {
            self.publish(StoreEvent::Status { run_id, status: RunStatus::Interrupted, message: MESSAGE.into() });
        }
        Ok(ids.len() as u64)
    }

    /// Records a checkpoint; returns its id. `NotFound` when the run does not exist.
    pub async fn add_checkpoint(&self, run_id: i64, step: i64, path: &str) -> Result<i64, StoreError> {
        let written = self.write(&[Entry::Checkpoint { run_id, step, path: path.to_string() }]).await?;
        written.checkpoint_ids.first().copied().ok_or(StoreError::NotFound)
    }

    /// A run's checkpoints by step.
    pub async fn checkpoints(&self, run_id: i64) -> Result<Vec<CheckpointRow>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT id, run_id, step, path, created_at FROM checkpoints WHERE run_id = $1 ORDER BY step, id",
            )
            .bind(run_id)
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(checkpoint_row!(row));
            }
            Ok(out)
        })
    }

    /// Records one eval score; returns its id. `NotFound` when `run_id` names a run that does not exist.
    pub async fn add_eval(&self, row: &NewEval) -> Result<i64, StoreError> {
        if row.episodes < 0 {
            return Err(StoreError::Invalid("episodes must not be negative".into()));
        }
        retry("add eval", || async {
            on_pool!(self, pool => {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO evals (run_id, model, gym, user_kind, split, episodes, mean_score, normalized, \
                     success_rate, mean_turns, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                     RETURNING id",
                )
                .bind(row.run_id)
                .bind(clean(&row.model).as_ref())
                .bind(clean(&row.gym).as_ref())
                .bind(clean(&row.user_kind).as_ref())
                .bind(clean(&row.split).as_ref())
                .bind(row.episodes)
                .bind(to_db(row.mean_score))
                .bind(to_db(row.normalized))
                .bind(to_db(row.success_rate))
                .bind(to_db(row.mean_turns))
                .bind(now_ms())
                .fetch_one(pool)
                .await
                .map_err(not_found_on_fk)?;
                Ok(id)
            })
        })
        .await
    }

    /// All eval scores, newest first.
    pub async fn evals(&self) -> Result<Vec<EvalRow>, StoreError> {
        on_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT id, run_id, model, gym, user_kind, split, episodes, mean_score, normalized, success_rate, \
                 mean_turns, created_at FROM evals ORDER BY id DESC",
            )
            .fetch_all(pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(eval_row!(row));
            }
            Ok(out)
        })
    }
}
