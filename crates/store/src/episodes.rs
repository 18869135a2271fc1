//! Live episodes played with a person as the user, stored without a run: who started them, the agent model,
//! and the episode's `TranscriptRecord` JSON (the same record the transcripts table keeps), with its list
//! columns read by the transcripts' own `Summary`.

use serde_json::Value;
use sqlx::{AssertSqlSafe, Row};
use userrl_types::human::EpisodeSummary;

use crate::transcripts::{Summary, parse_record};
use crate::{Store, StoreError, TranscriptRecord, TranscriptSummary, clean, from_db, now_ms, on_pool, to_db};

/// A finished live episode to store.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEpisode {
    pub origin: String,
    pub model: String,
    pub user_kind: String,
    /// Unix milliseconds.
    pub started_at: i64,
    pub record: Value,
}

const COLUMNS: &str = "id, origin, model, user_kind, gym, task_id, reward, normalized, success, termination, turns, \
                       started_at, finished_at";

macro_rules! episode_row {
    ($row:expr) => {{
        let row = $row;
        EpisodeSummary {
            id: row.try_get("id")?,
            origin: row.try_get("origin")?,
            model: row.try_get("model")?,
            user_kind: row.try_get("user_kind")?,
            gym: row.try_get("gym")?,
            task_id: row.try_get("task_id")?,
            reward: from_db(row.try_get("reward")?),
            normalized: from_db(row.try_get("normalized")?),
            success: row.try_get("success")?,
            termination: row.try_get("termination")?,
            turns: row.try_get("turns")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
        }
    }};
}

impl Store {
    /// Stores a finished live episode; returns its id.
    pub async fn add_episode(&self, new: &NewEpisode) -> Result<i64, StoreError> {
        let summary = Summary::of(&new.record);
        on_pool!(self, pool => {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO episodes (origin, model, user_kind, gym, task_id, reward, normalized, success, \
                 termination, turns, record, started_at, finished_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING id",
            )
            .bind(clean(&new.origin).as_ref())
            .bind(clean(&new.model).as_ref())
            .bind(clean(&new.user_kind).as_ref())
            .bind(clean(&summary.gym).as_ref())
            .bind(clean(&summary.task_id).as_ref())
            .bind(to_db(summary.reward))
            .bind(to_db(summary.normalized))
            .bind(summary.success)
            .bind(clean(&summary.termination).as_ref())
            .bind(summary.turns)
            .bind(clean(&new.record.to_string()).as_ref())
            .bind(new.started_at)
            .bind(now_ms())
            .fetch_one(pool)
            .await?;
            Ok(id)
        })
    }

    /// One stored episode with its record.
    pub async fn episode(&self, id: i64) -> Result<Option<(EpisodeSummary, TranscriptRecord)>, StoreError> {
        let sql = format!("SELECT {COLUMNS}, record FROM episodes WHERE id = $1");
        on_pool!(self, pool => {
            let Some(row) = sqlx::query(AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await? else {
                return Ok(None);
            };
            let summary = episode_row!(&row);
            let raw: String = row.try_get("record")?;
            let record = parse_record(&as_transcript(&summary), &raw);
            Ok(Some((summary, record)))
        })
    }

    /// Stored episodes, newest first; `origin` filters by who started them (`chat`, `study:<slug>`).
    pub async fn episodes(&self, origin: Option<&str>, limit: i64) -> Result<Vec<EpisodeSummary>, StoreError> {
        if limit <= 0 {
            return Err(StoreError::Invalid(format!("limit must be positive, not {limit}")));
        }
        let limit = limit.min(crate::MAX_TRANSCRIPT_PAGE);
        on_pool!(self, pool => {
            let rows = match origin {
                Some(origin) => {
                    let sql = format!("SELECT {COLUMNS} FROM episodes WHERE origin = $1 ORDER BY id DESC LIMIT $2");
                    sqlx::query(AssertSqlSafe(sql)).bind(clean(origin).into_owned()).bind(limit).fetch_all(pool).await?
                }
                None => {
                    let sql = format!("SELECT {COLUMNS} FROM episodes ORDER BY id DESC LIMIT $1");
                    sqlx::query(AssertSqlSafe(sql)).bind(limit).fetch_all(pool).await?
                }
            };
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(episode_row!(row));
            }
            Ok(out)
        })
    }
}

/// The transcript columns an episode shares (for the unreadable-record fallback).
fn as_transcript(e: &EpisodeSummary) -> TranscriptSummary {
    TranscriptSummary {
        id: e.id,
        run_id: 0,
        step: 0,
        group: 0,
        sample: 0,
        validate: true,
        gym: e.gym.clone(),
        task_id: e.task_id.clone(),
        reward: e.reward,
        normalized: e.normalized,
        success: e.success,
        termination: e.termination.clone(),
        turns: e.turns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn episodes_round_trip_and_filter_by_origin() {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let record = json!({"gym": "telepathy", "task_id": "t1", "reward": 1.0, "score": 1.0, "normalized": 1.0,
            "success": true, "termination": "terminated", "advantage": 0.0, "turn_rewards": [0.0, 1.0],
            "messages": [{"speaker": "user", "text": "<script>x</script>"}]});
        let new = NewEpisode {
            origin: "chat".into(),
            model: "smollm2".into(),
            user_kind: "human".into(),
            started_at: 5,
            record,
        };
        let id = store.add_episode(&new).await.unwrap();
        store.add_episode(&NewEpisode { origin: "study:a".into(), ..new.clone() }).await.unwrap();
        let (summary, record) = store.episode(id).await.unwrap().unwrap();
        assert_eq!((summary.gym.as_str(), summary.turns, summary.success), ("telepathy", 2, true));
        assert_eq!((summary.reward, summary.started_at), (1.0, 5));
        assert_eq!(record.turn_rewards, vec![0.0, 1.0]);
        assert_eq!(record.messages[0].text, "<script>x</script>");
        assert_eq!(store.episodes(Some("chat"), 10).await.unwrap().len(), 1);
        assert_eq!(store.episodes(None, 10).await.unwrap().len(), 2);
        assert!(store.episode(id + 100).await.unwrap().is_none());
        assert!(matches!(store.episodes(None, 0).await, Err(StoreError::Invalid(_))));
    }
}
