//! Per-key token buckets (per IP for the site's limits, per worker id for the crowd portal). Each key holds up
//! to `burst` tokens that refill at `per_second`; a request takes one or is refused with how long to wait.
//! Memory stays bounded: past `MAX_KEYS` keys, the buckets that have refilled completely are forgotten (a full
//! bucket and no bucket behave the same).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Most keys one limiter tracks before it forgets full buckets; beyond it, unknown keys are refused until
/// buckets refill (an attacker spraying addresses cannot grow memory without bound).
const MAX_KEYS: usize = 100_000;

/// A bucket's size and refill speed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Tokens added per second (0 = never refills).
    pub per_second: f64,
    /// Most tokens a key can hold: how many requests may come at once.
    pub burst: u32,
}

impl Rate {
    /// `per_minute` requests a minute on average, `burst` at once.
    pub fn per_minute(per_minute: u32, burst: u32) -> Rate {
        Rate { per_second: per_minute as f64 / 60.0, burst }
    }

    pub fn per_second(per_second: f64, burst: u32) -> Rate {
        Rate { per_second, burst }
    }
}

/// A refused request: how long until the key has a token again. As a response: 429 with `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limited {
    pub retry_after: Duration,
}

impl Limited {
    /// Whole seconds to wait, at least one (what `Retry-After` says).
    pub fn retry_after_secs(&self) -> u64 {
        (self.retry_after.as_secs_f64().ceil() as u64).max(1)
    }
}

impl IntoResponse for Limited {
    fn into_response(self) -> Response {
        let secs = self.retry_after_secs();
        let body = serde_json::json!({
            "error": format!("too many requests: try again in {secs} s"),
            "retry_after": secs,
        });
        let mut res = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        res
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by key. Cheap to share behind an `Arc`; every call takes a short lock (no await inside).
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: Rate,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    pub fn new(rate: Rate) -> RateLimiter<K> {
        RateLimiter { rate, buckets: Mutex::new(HashMap::new()) }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes one token for `key` now, or says how long to wait.
    pub fn check(&self, key: &K) -> Result<(), Limited> {
        self.check_at(key, Instant::now())
    }

    /// [`RateLimiter::check`] at a given instant (tests drive the clock).
    pub fn check_at(&self, key: &K, now: Instant) -> Result<(), Limited> {
        let burst = self.rate.burst as f64;
        // A poisoned lock only means another request panicked mid-update; the counts are still usable.
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let rate = self.rate.per_second;
            buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= MAX_KEYS {
                return Err(Limited { retry_after: Duration::from_secs(1) });
            }
        }
        let bucket = buckets.entry(key.clone()).or_insert(Bucket { tokens: burst, at: now });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate.per_second).min(burst);
        bucket.at = now.max(bucket.at);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = if self.rate.per_second > 0.0 {
            Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate.per_second)
        } else {
            Duration::from_secs(u64::from(u32::MAX))
        };
        Err(Limited { retry_after: wait })
    }

    /// How many keys are tracked now.
    pub fn len(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_key_waits_for_its_refill() {
        let limiter = RateLimiter::new(Rate::per_second(2.0, 3));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at(&"a", t0).is_ok());
        }
        let refused = limiter.check_at(&"a", t0).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert_eq!(refused.retry_after_secs(), 1);
        // Another key has its own bucket.
        assert!(limiter.check_at(&"b", t0).is_ok());
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert!(limiter.check_at(&"a", t1).is_ok());
        assert!(limiter.check_at(&"a", t1).is_err());
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.check_at(&"a", t2).is_ok());
        }
        assert!(limiter.check_at(&"a", t2).is_err());
    }

    #[test]
    fn per_minute_rates_and_never_refilling_buckets() {
        let limiter = RateLimiter::new(Rate::per_minute(6, 1));
        let t0 = Instant::now();
        assert!(limiter.check_at(&1u8, t0).is_ok());
        assert_eq!(limiter.check_at(&1u8, t0).unwrap_err().retry_after_secs(), 10);
        let frozen = RateLimiter::new(Rate::per_second(0.0, 1));
        assert!(frozen.check_at(&1u8, t0).is_ok());
        assert!(frozen.check_at(&1u8, t0 + Duration::from_secs(3600)).is_err());
    }

    #[test]
    fn the_429_response_says_when_to_retry() {
        let res = Limited { retry_after: Duration::from_millis(2_100) }.into_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers()[header::RETRY_AFTER], "3");
    }
}
