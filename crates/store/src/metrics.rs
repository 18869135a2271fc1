//! Metric points and the bucketed chart query.
//!
//! Buckets have equal step width. Over the range `lo..=hi` (the series' own first and last step unless the
//! caller gives one) with `n` buckets, let `w = ceil((hi - lo + 1) / n)` steps:
//! - if `w < BLOCK_STEPS` (or the range holds no whole block), bucket `k` covers steps `lo + k*w ..
//!   lo + (k+1)*w - 1`, computed from the raw points;
//! - otherwise buckets follow the grid of blocks of `BLOCK_STEPS` steps (`block = floor(step / BLOCK_STEPS)`):
//!   with `base = floor(lo / BLOCK_STEPS)` and `wb = ceil((hi - base*BLOCK_STEPS + 1) / (n*BLOCK_STEPS))`,
//!   bucket `k` covers blocks `base + k*wb .. base + (k+1)*wb - 1` cut to `lo..=hi`. Whole blocks are read from
//!   their stored summaries (`metric_blocks`), the cut blocks at either end from raw points, so a chart over a
//!   million points reads about 16,000 summary rows.
//!
//! Either way there are at most `n` buckets, empty ones left out, in step order, and each is exact: first and
//! last step, min and max (NaN ignored; NaN when all are NaN), the value at its last step (the latest logged
//! if a step was logged twice: a step holds one point) and the point count.

use sqlx::Row;

use crate::write::Entry;
use crate::{BLOCK_STEPS, MAX_BUCKETS, MetricBucket, MetricPoint, Store, StoreError, clean, from_db, on_pool};

/// The value at each bucket's last step, looked up per bucket (a step holds one point: a step logged again
/// replaces its value).
const LAST_VALUE: &str = "(SELECT m.value FROM metrics m WHERE m.run_id = $1 AND m.key = $2 AND m.step = g.last_step) \
                          AS last";

const RAW_BUCKETS_SQL: &str = "\
WITH p AS (
    SELECT (step - $3) / $5 AS b, step, value FROM metrics
    WHERE run_id = $1 AND key = $2 AND step >= $3 AND step <= $4
), g AS (
    SELECT b, MIN(step) AS first_step, MAX(step) AS last_step, MIN(value) AS lo, MAX(value) AS hi,
        CAST(COUNT(*) AS BIGINT) AS n
    FROM p GROUP BY b
)
SELECT first_step, last_step, lo, hi, n, ";

const BLOCK_BUCKETS_SQL: &str = "\
WITH parts AS (
    SELECT (block - $5) / $6 AS b, first_step, last_step, min_value AS lo, max_value AS hi, cnt
    FROM metric_blocks WHERE run_id = $1 AND key = $2 AND block >= $7 AND block <= $8
    UNION ALL
    SELECT 0, step, step, value, value, 1 FROM metrics
    WHERE run_id = $1 AND key = $2 AND step >= $3 AND step <= $9
    UNION ALL
    SELECT $11, step, step, value, value, 1 FROM metrics
    WHERE run_id = $1 AND key = $2 AND step >= $10 AND step <= $4
), g AS (
    SELECT b, MIN(first_step) AS first_step, MAX(last_step) AS last_step, MIN(lo) AS lo, MAX(hi) AS hi,
        CAST(SUM(cnt) AS BIGINT) AS n
    FROM parts GROUP BY b
)
SELECT first_step, last_step, lo, hi, n, ";

const RANGE_SQL: &str = "SELECT \
    (SELECT MIN(step) FROM metrics WHERE run_id = $1 AND key = $2) AS lo, \
    (SELECT MAX(step) FROM metrics WHERE run_id = $1 AND key = $2) AS hi";

/// How one bucket query runs (see the module docs).
#[derive(Debug, PartialEq)]
enum Plan {
    /// Buckets of `width` steps from `lo`, over raw points.
    Raw { width: i64 },
    /// Buckets of `wb` blocks from block `base`; whole blocks `first..=last` from summaries, raw points for
    /// `lo..=low_end` (bucket 0) and `high_start..=hi` (bucket `high_bucket`).
    Blocks { base: i64, wb: i64, first: i64, last: i64, low_end: i64, high_start: i64, high_bucket: i64 },
}

/// Plans a query over `lo..=hi` (already checked: `hi - lo + 1` fits in i64) in `n` buckets.
fn plan(lo: i64, hi: i64, n: i64) -> Plan {
    let b = BLOCK_STEPS as i128;
    let (lo, hi, n) = (lo as i128, hi as i128, n as i128);
    let width = (hi - lo + 1 + n - 1) / n;
    let raw = Plan::Raw { width: width as i64 };
    if width < b {
        return raw;
    }
    let first = (lo + b - 1).div_euclid(b);
    let last = (hi + 1).div_euclid(b) - 1;
    if first > last {
        return raw;
    }
    let base = lo.div_euclid(b);
    let span = hi - base * b + 1;
    let wb = (span + n * b - 1) / (n * b);
    let fit = |v: i128| i64::try_from(v).ok();
    match (fit(base), fit(wb), fit(first), fit(last), fit(first * b - 1), fit((last + 1) * b)) {
        (Some(base_), Some(wb_), Some(first), Some(last_), Some(low_end), Some(high_start)) => Plan::Blocks {
            base: base_,
            wb: wb_,
            first,
            last: last_,
            low_end,
            high_start,
            high_bucket: ((last + 1 - base) / wb) as i64,
        },
        _ => raw,
    }
}

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
        self.write(&[Entry::Metrics { run_id, step, wall_time, values: values.to_vec() }]).await?;
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
        // step - lo must fit in i64 for every step of the range.
        if hi as i128 - lo as i128 + 1 > i64::MAX as i128 {
            return Err(StoreError::Invalid(format!("step range {lo}..{hi} is too wide")));
        }
        let key = clean(key);
        let plan = plan(lo, hi, buckets as i64);
        on_pool!(self, pool => {
            let rows = match plan {
                Plan::Raw { width } => {
                    sqlx::query(sqlx::AssertSqlSafe(format!("{RAW_BUCKETS_SQL}{LAST_VALUE} FROM g ORDER BY b")))
                        .bind(run_id)
                        .bind(key.as_ref())
                        .bind(lo)
                        .bind(hi)
                        .bind(width)
                        .fetch_all(pool)
                        .await?
                }
                Plan::Blocks { base, wb, first, last, low_end, high_start, high_bucket } => {
                    sqlx::query(sqlx::AssertSqlSafe(format!("{BLOCK_BUCKETS_SQL}{LAST_VALUE} FROM g ORDER BY b")))
                        .bind(run_id)
                        .bind(key.as_ref())
                        .bind(lo)
                        .bind(hi)
                        .bind(base)
                        .bind(wb)
                        .bind(first)
                        .bind(last)
                        .bind(low_end)
                        .bind(high_start)
                        .bind(high_bucket)
                        .fetch_all(pool)
                        .await?
                }
            };
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

    /// Raw points of a series in step order (one per step), all of them or those after
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
                     ORDER BY step",
                )
                .bind(run_id)
                .bind(key.as_ref())
                .bind(after),
                None => sqlx::query(
                    "SELECT step, wall_time, value FROM metrics WHERE run_id = $1 AND key = $2 ORDER BY step",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ranges_bucket_raw_points() {
        assert_eq!(plan(0, 99, 800), Plan::Raw { width: 1 });
        assert_eq!(plan(5, 100, 1), Plan::Raw { width: 96 });
    }

    #[test]
    fn long_ranges_use_blocks() {
        // A million steps in 800 buckets: 20 blocks (1,280 steps) per bucket, no cut blocks.
        let p = plan(0, 999_999, 800);
        assert_eq!(
            p,
            Plan::Blocks {
                base: 0,
                wb: 20,
                first: 0,
                last: 15_624,
                low_end: -1,
                high_start: 1_000_000,
                high_bucket: 781
            }
        );
        // Cut blocks at both ends, negative steps included.
        let p = plan(-100, 1000, 2);
        assert_eq!(
            p,
            Plan::Blocks { base: -2, wb: 9, first: -1, last: 14, low_end: -65, high_start: 960, high_bucket: 1 }
        );
        let p = plan(0, 999, 10);
        assert_eq!(
            p,
            Plan::Blocks { base: 0, wb: 2, first: 0, last: 14, low_end: -1, high_start: 960, high_bucket: 7 }
        );
        // A block edge past i64::MAX falls back to raw points rather than overflow.
        assert_eq!(plan(i64::MAX - 1_000_000, i64::MAX, 2), Plan::Raw { width: 500_001 });
    }
}
