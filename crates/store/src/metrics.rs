//! Metric points and the bucketed chart query.
//!
//! Buckets have equal step width: over the range `lo..=hi` (the series' own first and last step unless the
//! caller gives one), a point at `step` falls in bucket `(step - lo) * n / (hi - lo + 1)`. Empty buckets are
//! left out, so the answer has at most `n` buckets, in step order. Each carries the exact first and last step,
//! min, max, the value at its last step (the latest logged if a step was logged twice) and the point count.
//! The grouping runs in SQL over the `(run_id, key, step)` index; only the buckets come back.

use sqlx::Row;

use crate::write::Entry;
use crate::{MAX_BUCKETS, MetricBucket, MetricPoint, Store, StoreError, clean, from_db, on_pool};

const BUCKETS_SQL: &str = "\
WITH p AS (
    SELECT (step - $3) * $5 / $6 AS b, step, value FROM metrics
    WHERE run_id = $1 AND key = $2 AND step >= $3 AND step <= $4
), g AS (
    SELECT b, MIN(step) AS first_step, MAX(step) AS last_step, MIN(value) AS lo, MAX(value) AS hi, COUNT(*) AS n
    FROM p GROUP BY b
)
SELECT first_step, last_step, lo, hi, n,
    (SELECT m.value FROM metrics m WHERE m.run_id = $1 AND m.key = $2 AND m.step = g.last_step
     ORDER BY m.id DESC LIMIT 1) AS last
FROM g ORDER BY b";

const RANGE_SQL: &str = "SELECT \
    (SELECT MIN(step) FROM metrics WHERE run_id = $1 AND key = $2) AS lo, \
    (SELECT MAX(step) FROM metrics WHERE run_id = $1 AND key = $2) AS hi";

impl Store {
    /// Logs values at one step of a run (one transaction). `NotFound` when the run does not exist. NaN is
    /// kept (read back as NaN).
    pub async fn append_metrics(
        &self,
        run_id: i64,
        step: i64,
        wall_time: i64,
        values: &[(String, f64)],
    ) -> Result<(), StoreError> {
        if values.is_empty() {
            return Ok(());
        }
        self.write_batch(&[Entry::Metrics { run_id, step, wall_time, values: values.to_vec() }]).await?;
        Ok(())
    }

    /// The metric names a run has logged, sorted.
    pub async fn metric_keys(&self, run_id: i64) -> Result<Vec<String>, StoreError> {
        on_pool!(self, pool => {
            Ok(sqlx::query_scalar("SELECT key FROM metric_keys WHERE run_id = $1 ORDER BY key")
                .bind(run_id)
                .fetch_all(pool)
                .await?)
        })
    }

    /// The series `key` of a run in at most `buckets` buckets (see the module docs), over `steps`
    /// (inclusive) or the whole series. An unknown run or key gives no buckets.
    pub async fn metric_buckets(
        &self,
        run_id: i64,
        key: &str,
        buckets: usize,
        steps: Option<(i64, i64)>,
    ) -> Result<Vec<MetricBucket>, StoreError> {
        if buckets == 0 || buckets > MAX_BUCKETS {
            return Err(StoreError::Invalid(format!("buckets must be between 1 and {MAX_BUCKETS}, not {buckets}")));
        }
        let (lo, hi) = match steps {
            Some((lo, hi)) if lo > hi => {
                return Err(StoreError::Invalid(format!("step range {lo}..{hi} is empty (first > last)")));
            }
            Some(range) => range,
            None => match self.step_range(run_id, key).await? {
                Some(range) => range,
                None => return Ok(Vec::new()),
            },
        };
        // (step - lo) * n must fit in i64 for every step of the range.
        let width = hi as i128 - lo as i128 + 1;
        if width > i64::MAX as i128 || (width - 1) * buckets as i128 > i64::MAX as i128 {
            return Err(StoreError::Invalid(format!("step range {lo}..{hi} is too wide for {buckets} buckets")));
        }
        let (width, n) = (width as i64, buckets as i64);
        let key = clean(key);
        on_pool!(self, pool => {
            let rows = sqlx::query(BUCKETS_SQL)
                .bind(run_id)
                .bind(key.as_ref())
                .bind(lo)
                .bind(hi)
                .bind(n)
                .bind(width)
                .fetch_all(pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(MetricBucket {
                    first_step: row.try_get("first_step")?,
                    last_step: row.try_get("last_step")?,
                    min: from_db(row.try_get("lo")?),
                    max: from_db(row.try_get("hi")?),
                    last: from_db(row.try_get("last")?),
                    count: row.try_get("n")?,
                });
            }
            Ok(out)
        })
    }

    /// First and last step of a series, if it has points.
    pub async fn step_range(&self, run_id: i64, key: &str) -> Result<Option<(i64, i64)>, StoreError> {
        let key = clean(key);
        on_pool!(self, pool => {
            let row = sqlx::query(RANGE_SQL).bind(run_id).bind(key.as_ref()).fetch_one(pool).await?;
            let lo: Option<i64> = row.try_get("lo")?;
            let hi: Option<i64> = row.try_get("hi")?;
            Ok(lo.zip(hi))
        })
    }

    /// Raw points of a series in step order (ties in logging order), all of them or those after
    /// `after_step` (for live updates).
    pub async fn metric_points(
        &self,
        run_id: i64,
        key: &str,
        after_step: Option<i64>,
    ) -> Result<Vec<MetricPoint>, StoreError> {
        let key = clean(key);
        on_pool!(self, pool => {
            let query = match after_step {
                Some(after) => sqlx::query(
                    "SELECT step, wall_time, value FROM metrics WHERE run_id = $1 AND key = $2 AND step > $3 \
                     ORDER BY step, id",
                )
                .bind(run_id)
                .bind(key.as_ref())
                .bind(after),
                None => sqlx::query(
                    "SELECT step, wall_time, value FROM metrics WHERE run_id = $1 AND key = $2 ORDER BY step, id",
                )
                .bind(run_id)
                .bind(key.as_ref()),
            };
            let rows = query.fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(MetricPoint {
                    step: row.try_get("step")?,
                    wall_time: row.try_get("wall_time")?,
                    value: from_db(row.try_get("value")?),
                });
            }
            Ok(out)
        })
    }
}
