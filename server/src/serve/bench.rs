//! `userrl bench serve`: the server's two speed targets, measured against a real server started in-process on
//! a loopback port over a temporary SQLite database. The runs page (server-side rendered) under N concurrent
//! connections (target p50 < 50 ms, p99 < 200 ms at 50), and chart data for a run with a million points of one
//! metric (target p50 < 100 ms for 800 buckets).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;
use userrl_rl::events::{Event, EventSink};
use userrl_store::{NewRun, Store, StoreSink};
use userrl_types::{RunKind, RunStatus};

use super::{JobManager, JobOptions};

#[derive(Clone, Debug)]
pub struct ServeBenchOptions {
    /// Requests in flight at once against the runs page.
    pub connections: usize,
    /// Runs-page requests in total (after a warm-up of `connections`).
    pub requests: usize,
    /// Runs listed on the runs page (each with a few hundred points of a few metrics).
    pub runs: usize,
    /// Points of the `reward` metric of the big run.
    pub points: usize,
    /// Chart-data requests (one at a time) and the buckets each asks for.
    pub chart_requests: usize,
    pub buckets: usize,
}

/// Latency summary in milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub requests: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub requests_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServeBenchReport {
    pub connections: usize,
    pub runs: usize,
    pub runs_page: Latency,
    /// The same page one request at a time (latency without queueing).
    pub runs_page_single: Latency,
    /// `Store::runs()` alone, in-process, one at a time (the page's database share).
    pub runs_query: Latency,
    pub points: usize,
    pub fill_seconds: f64,
    pub buckets: usize,
    pub chart_data: Latency,
    pub runs_page_bytes: usize,
}

/// The `q`-quantile (0..=1) of sorted samples, nearest rank.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn summarize(mut samples: Vec<Duration>, wall: Duration) -> Latency {
    samples.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Latency {
        requests: samples.len(),
        p50_ms: ms(quantile(&samples, 0.50)),
        p99_ms: ms(quantile(&samples, 0.99)),
        max_ms: ms(samples.last().copied().unwrap_or_default()),
        requests_per_s: samples.len() as f64 / wall.as_secs_f64().max(1e-9),
    }
}

/// GETs `url` `requests` times from `connections` concurrent workers; every answer must be 200.
pub async fn hammer(client: &reqwest::Client, url: &str, connections: usize, requests: usize) -> Result<Latency> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..connections.max(1))
        .map(|_| {
            let (client, url, next) = (client.clone(), url.to_string(), next.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    let t = Instant::now();
                    let response = client.get(&url).send().await?;
                    let status = response.status();
                    let body = response.bytes().await?;
                    anyhow::ensure!(status.is_success(), "GET {url}: {status}: {}", String::from_utf8_lossy(&body));
                    samples.push(t.elapsed());
                }
                Ok::<_, anyhow::Error>(samples)
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(requests);
    for worker in workers {
        samples.extend(worker.await.context("a load worker panicked")??);
    }
    Ok(summarize(samples, started.elapsed()))
}

/// Fills a store: `runs` finished runs with a little history each, and one run with `points` reward points.
/// Returns the big run's id.
async fn fill(store: &Store, runs: usize, points: usize) -> Result<i64> {
    for i in 0..runs {
        let id = store
            .create_run(&NewRun {
                name: format!("bench-{i}"),
                kind: RunKind::Train,
                config: "name = \"bench\"\n".into(),
                gyms: vec!["intention".into(), "turtle".into()],
                model: "tiny 2x64".into(),
                device: "cpu".into(),
                total_steps: 200,
            })
            .await?;
        store.set_run_status(id, RunStatus::Running, "").await?;
        for step in 0..200i64 {
            let x = step as f64 / 200.0;
            let values = vec![("reward".to_string(), x), ("loss".to_string(), 1.0 - x), ("kl".to_string(), 0.01)];
            store.append_metrics(id, step, step * 1000, &values).await?;
        }
        store.set_run_status(id, RunStatus::Finished, "").await?;
    }
    let big = store
        .create_run(&NewRun {
            name: "bench-million".into(),
            kind: RunKind::Train,
            config: "name = \"bench-million\"\n".into(),
            gyms: vec!["intention".into()],
            model: "tiny 2x64".into(),
            device: "cpu".into(),
            total_steps: points as i64,
        })
        .await?;
    let sink = StoreSink::new(store.clone(), big, tokio::runtime::Handle::current());
    for step in 0..points as u64 {
        // A noisy rising curve, so min/max/last differ inside every bucket.
        let value = (step as f64 / points.max(1) as f64) + 0.1 * ((step * 7919 % 1000) as f64 / 1000.0 - 0.5);
        sink.emit(&Event::Metrics { step, values: vec![("reward".into(), value)] })?;
    }
    sink.flush().await?;
    Ok(big)
}

/// Starts the whole site on a loopback port over a fresh temporary database and measures it.
pub async fn run(options: &ServeBenchOptions) -> Result<ServeBenchReport> {
    let dir = std::env::temp_dir().join(format!("userrl-bench-serve-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = measure(options, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(options: &ServeBenchOptions, dir: &std::path::Path) -> Result<ServeBenchReport> {
    let store = Store::connect(&format!("sqlite://{}", dir.join("bench.db").display())).await?;
    let started = Instant::now();
    let big = fill(&store, options.runs, options.points).await?;
    let fill_seconds = started.elapsed().as_secs_f64();
    eprintln!("filled {} runs and {} points in {fill_seconds:.1} s", options.runs, options.points);
    let manager = JobManager::new(
        store.clone(),
        JobOptions {
            runs_dir: dir.join("runs"),
            root: super::paths::project_root(),
            configs_dir: super::paths::configs_dir(),
            max_jobs: 1,
        },
    );
    let router = super::app(store.clone(), manager, &[]).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let listener = super::no_delay(listener);
    // With the peer address, as `userrl serve` runs it (loopback clients are outside the general per-IP cap).
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, service).await });
    let client = reqwest::Client::builder().pool_max_idle_per_host(options.connections.max(1)).build()?;

    let page = format!("http://{addr}/");
    let body = client.get(&page).send().await?.error_for_status()?.text().await?;
    anyhow::ensure!(body.contains("bench-0"), "the runs page does not list the runs");
    hammer(&client, &page, options.connections, options.connections).await?;
    let runs_page = hammer(&client, &page, options.connections, options.requests).await?;
    let single = (options.requests / 10).max(1);
    let runs_page_single = hammer(&client, &page, 1, single).await?;
    let mut samples = Vec::with_capacity(single);
    let started = Instant::now();
    for _ in 0..single {
        let t = Instant::now();
        store.runs().await?;
        samples.push(t.elapsed());
    }
    let runs_query = summarize(samples, started.elapsed());

    let chart = format!("http://{addr}/api/runs/{big}/metrics/reward?buckets={}", options.buckets);
    let series: userrl_types::MetricSeries = client.get(&chart).send().await?.error_for_status()?.json().await?;
    let counted: i64 = series.buckets.iter().map(|b| b.count).sum();
    anyhow::ensure!(counted == options.points as i64, "the buckets hold {counted} points, not {}", options.points);
    let chart_data = hammer(&client, &chart, 1, options.chart_requests).await?;
    server.abort();
    store.close().await;
    Ok(ServeBenchReport {
        connections: options.connections,
        runs: options.runs,
        runs_page,
        runs_page_single,
        runs_query,
        points: options.points,
        fill_seconds,
        buckets: options.buckets,
        chart_data,
        runs_page_bytes: body.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&samples, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&samples, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&samples, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&samples[..1], 0.99), Duration::from_millis(1));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
