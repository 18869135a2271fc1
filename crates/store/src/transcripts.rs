//! Transcripts: the trainer's record JSON is kept exactly as received; the list columns (gym, task, reward,
//! termination, turns...) are read from it best-effort, so a record of an unexpected shape is still stored
//! and listed. Rollout health is counted from these columns.

use serde_json::Value;
use sqlx::{AssertSqlSafe, Row};

use crate::write::Entry;
use crate::{
    MAX_TRANSCRIPT_PAGE, RolloutHealth, Speaker, Store, StoreError, TranscriptFilter, TranscriptMessage,
    TranscriptRecord, TranscriptSummary, clean, from_db, on_pool,
};

/// The columns read out of a record.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Summary {
    pub gym: String,
    pub task_id: String,
    pub reward: f64,
    pub normalized: f64,
    pub success: bool,
    pub termination: String,
    pub turns: i64,
    pub parse_failures: i64,
}

impl Summary {
    /// Missing numbers become NaN (unknown), missing text empty. `turns` counts `turn_rewards`, else the
    /// assistant messages. `parse_failures` is the record's own count when it has one, else 1 for an episode
    /// that ended on a turn without a tool call.
    pub(crate) fn of(record: &Value) -> Summary {
        let text = |key: &str| match record.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        let number = |key: &str| record.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN);
        let termination = text("termination");
        let turns = match (record.get("turn_rewards"), record.get("messages")) {
            (Some(Value::Array(rewards)), _) => rewards.len(),
            (_, Some(Value::Array(messages))) => {
                messages.iter().filter(|m| m.get("speaker").and_then(Value::as_str) == Some("assistant")).count()
            }
            _ => 0,
        } as i64;
        let parse_failures = match record.get("parse_failures").and_then(Value::as_i64) {
            Some(n) => n.max(0),
            None => i64::from(termination == "no_tool_call"),
        };
        Summary {
            gym: text("gym"),
            task_id: text("task_id"),
            reward: number("reward"),
            normalized: number("normalized"),
            success: record.get("success").and_then(Value::as_bool).unwrap_or(false),
            termination,
            turns,
            parse_failures,
        }
    }
}

/// A bind value of a query assembled at run time.
enum Param {
    I64(i64),
    F64(f64),
    Text(String),
    Bool(bool),
}

const SUMMARY_COLUMNS: &str =
    "id, run_id, step, grp, sample, validate, gym, task_id, reward, normalized, success, termination, turns";

macro_rules! summary_row {
    ($row:expr) => {{
        let row = $row;
        TranscriptSummary {
            id: row.try_get("id")?,
            run_id: row.try_get("run_id")?,
            step: row.try_get("step")?,
            group: row.try_get("grp")?,
            sample: row.try_get("sample")?,
            validate: row.try_get("validate")?,
            gym: row.try_get("gym")?,
            task_id: row.try_get("task_id")?,
            reward: from_db(row.try_get("reward")?),
            normalized: from_db(row.try_get("normalized")?),
            success: row.try_get("success")?,
            termination: row.try_get("termination")?,
            turns: row.try_get("turns")?,
        }
    }};
}

/// The record as the UI wants it. A stored record that does not have the expected shape comes back with the
/// list columns and one system message saying so (its raw JSON stays available from `transcript_raw`).
pub(crate) fn parse_record(summary: &TranscriptSummary, raw: &str) -> TranscriptRecord {
    match serde_json::from_str::<TranscriptRecord>(raw) {
        Ok(record) => record,
        Err(err) => TranscriptRecord {
            gym: summary.gym.clone(),
            task_id: summary.task_id.clone(),
            reward: summary.reward,
            score: f64::NAN,
            normalized: summary.normalized,
            success: summary.success,
            termination: summary.termination.clone(),
            advantage: f64::NAN,
            turn_rewards: Vec::new(),
            messages: vec![TranscriptMessage {
                speaker: Speaker::System,
                text: format!("This transcript's record is not in the expected format ({err}); it is kept as sent."),
                tokens: Vec::new(),
                reward: None,
            }],
        },
    }
}

impl Store {
    /// Stores one episode's record (any JSON; see [`Summary`] for the columns); returns its id.
    /// `NotFound` when the run does not exist.
    pub async fn add_transcript(
        &self,
        run_id: i64,
        step: i64,
        group: i64,
        sample: i64,
        validate: bool,
        record: &Value,
    ) -> Result<i64, StoreError> {
        let entry = Entry::Transcript {
            run_id,
            step,
            group,
            sample,
            validate,
            record: record.to_string(),
            summary: Summary::of(record),
        };
        let written = self.write(&[entry]).await?;
        written.transcript_ids.first().copied().ok_or(StoreError::NotFound)
    }

    /// One page of a run's transcripts matching `filter`, newest step first, then by group and sample.
    pub async fn transcripts(
        &self,
        run_id: i64,
        filter: &TranscriptFilter,
    ) -> Result<Vec<TranscriptSummary>, StoreError> {
        if filter.limit <= 0 {
            return Err(StoreError::Invalid(format!("limit must be positive, not {}", filter.limit)));
        }
        if filter.offset < 0 {
            return Err(StoreError::Invalid(format!("offset must not be negative, not {}", filter.offset)));
        }
        if filter.min_reward.is_some_and(f64::is_nan) || filter.max_reward.is_some_and(f64::is_nan) {
            return Err(StoreError::Invalid("reward bounds must be numbers".into()));
        }
        let mut sql = format!("SELECT {SUMMARY_COLUMNS} FROM transcripts WHERE run_id = $1");
        let mut params = vec![Param::I64(run_id)];
        let mut push = |sql: &mut String, clause: &str, param: Param| {
            params.push(param);
            sql.push_str(&format!(" AND {clause} ${}", params.len()));
        };
        if let Some(gym) = &filter.gym {
            push(&mut sql, "gym =", Param::Text(clean(gym).into_owned()));
        }
        if let Some(step) = filter.step {
            push(&mut sql, "step =", Param::I64(step));
        }
        if let Some(min) = filter.min_reward {
            push(&mut sql, "reward >=", Param::F64(min));
        }
        if let Some(max) = filter.max_reward {
            push(&mut sql, "reward <=", Param::F64(max));
        }
        if let Some(termination) = &filter.termination {
            push(&mut sql, "termination =", Param::Text(clean(termination).into_owned()));
        }
        if let Some(validate) = filter.validate {
            push(&mut sql, "validate =", Param::Bool(validate));
        }
        let n = params.len();
        sql.push_str(&format!(" ORDER BY step DESC, grp, sample, id LIMIT ${} OFFSET ${}", n + 1, n + 2));
        params.push(Param::I64(filter.limit.min(MAX_TRANSCRIPT_PAGE)));
        params.push(Param::I64(filter.offset));

        on_pool!(self, pool => {
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for param in &params {
                query = match param {
                    Param::I64(v) => query.bind(*v),
                    Param::F64(v) => query.bind(*v),
                    Param::Text(v) => query.bind(v.as_str()),
                    Param::Bool(v) => query.bind(*v),
                };
            }
            let rows = query.fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(summary_row!(row));
            }
            Ok(out)
        })
    }

    /// One transcript with its record.
    pub async fn transcript(&self, id: i64) -> Result<Option<(TranscriptSummary, TranscriptRecord)>, StoreError> {
        Ok(self.transcript_raw(id).await?.map(|(summary, raw)| {
            let record = parse_record(&summary, &raw);
            (summary, record)
        }))
    }

    /// One transcript with its record exactly as the trainer sent it (JSON text).
    pub async fn transcript_raw(&self, id: i64) -> Result<Option<(TranscriptSummary, String)>, StoreError> {
        let sql = format!("SELECT {SUMMARY_COLUMNS}, record FROM transcripts WHERE id = $1");
        on_pool!(self, pool => {
            let row = sqlx::query(AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?;
            match row {
                Some(row) => {
                    let raw: String = row.try_get("record")?;
                    Ok(Some((summary_row!(&row), raw)))
                }
                None => Ok(None),
            }
        })
    }

    /// The rollouts of one GRPO group (training rollouts first, then any evaluation episodes stored under the
    /// same step and group), by sample.
    pub async fn group(
        &self,
        run_id: i64,
        step: i64,
        group: i64,
    ) -> Result<Vec<(TranscriptSummary, TranscriptRecord)>, StoreError> {
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS}, record FROM transcripts WHERE run_id = $1 AND step = $2 AND grp = $3 \
             ORDER BY validate, sample, id"
        );
        on_pool!(self, pool => {
            let rows = sqlx::query(AssertSqlSafe(sql)).bind(run_id).bind(step).bind(group).fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                let summary = summary_row!(row);
                let raw: String = row.try_get("record")?;
                let record = parse_record(&summary, &raw);
                out.push((summary, record));
            }
            Ok(out)
        })
    }

    /// Counts for a run's rollout-health panel. Groups are the training groups (step, group) and a group has
    /// zero variance when all its rewards are equal (a single rollout included). Episode counts cover every
    /// stored episode: parse failures as [`Summary`] counts them, length truncations are episodes ended by
    /// `length`, stuck episodes those ended by `agent_error` (dead endpoint, timeout).
    pub async fn rollout_health(&self, run_id: i64) -> Result<RolloutHealth, StoreError> {
        on_pool!(self, pool => {
            let groups = sqlx::query(
                "SELECT CAST(COUNT(*) AS BIGINT) AS groups, \
                 CAST(COALESCE(SUM(CASE WHEN lo = hi THEN 1 ELSE 0 END), 0) AS BIGINT) AS zero \
                 FROM (SELECT MIN(reward) AS lo, MAX(reward) AS hi FROM transcripts \
                       WHERE run_id = $1 AND validate = $2 GROUP BY step, grp) g",
            )
            .bind(run_id)
            .bind(false)
            .fetch_one(pool)
            .await?;
            let episodes = sqlx::query(
                "SELECT CAST(COUNT(*) AS BIGINT) AS episodes, \
                 CAST(COALESCE(SUM(parse_failures), 0) AS BIGINT) AS parse_failures, \
                 CAST(COALESCE(SUM(CASE WHEN termination = 'length' THEN 1 ELSE 0 END), 0) AS BIGINT) AS length, \
                 CAST(COALESCE(SUM(CASE WHEN termination = 'agent_error' THEN 1 ELSE 0 END), 0) AS BIGINT) AS stuck \
                 FROM transcripts WHERE run_id = $1",
            )
            .bind(run_id)
            .fetch_one(pool)
            .await?;
            Ok(RolloutHealth {
                zero_variance_groups: groups.try_get("zero")?,
                groups: groups.try_get("groups")?,
                parse_failures: episodes.try_get("parse_failures")?,
                length_truncations: episodes.try_get("length")?,
                stuck_episodes: episodes.try_get("stuck")?,
                episodes: episodes.try_get("episodes")?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn summary_reads_a_full_record() {
        let record = json!({
            "gym": "intention", "task_id": "t7", "reward": 0.5, "score": 1.0, "normalized": 0.25,
            "success": true, "termination": "finished", "advantage": 0.1, "turn_rewards": [0.0, 0.5],
            "messages": []
        });
        let s = Summary::of(&record);
        assert_eq!((s.gym.as_str(), s.task_id.as_str(), s.reward, s.normalized), ("intention", "t7", 0.5, 0.25));
        assert!(s.success);
        assert_eq!((s.termination.as_str(), s.turns, s.parse_failures), ("finished", 2, 0));
    }

    #[test]
    fn summary_of_odd_records_never_fails() {
        let s = Summary::of(&json!({"task_id": 12, "termination": "no_tool_call",
            "messages": [{"speaker": "assistant"}, {"speaker": "user"}, {"speaker": "assistant"}]}));
        assert_eq!((s.task_id.as_str(), s.turns, s.parse_failures), ("12", 2, 1));
        assert!(s.reward.is_nan() && !s.success && s.gym.is_empty());
        let s = Summary::of(&json!([1, 2, 3]));
        assert_eq!((s.turns, s.parse_failures), (0, 0));
        let s = Summary::of(&json!({"parse_failures": 3}));
        assert_eq!(s.parse_failures, 3);
    }
}
