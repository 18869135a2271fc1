//! What the store costs: the sink's `emit` on the training thread (metrics and a realistic transcript), the
//! sink's write throughput, and the chart query (800 buckets) over a run with 1,000,000 points, on SQLite and,
//! when `USERRL_TEST_POSTGRES_URL` names a server (scripts/test-postgres), on Postgres.
//!
//! Besides criterion's estimates it prints p50/p99 of the bucket query over repeated calls, the number the
//! issue's target (< 100 ms p50) is about.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use sqlx::Connection;
use tokio::runtime::Runtime;
use userrl_rl::events::{Event, EventSink};
use userrl_store::{NewRun, RunKind, Store, StoreSink};

const POINTS: u64 = 1_000_000;
const BUCKETS: usize = 800;

fn new_run() -> NewRun {
    NewRun {
        name: "bench".into(),
        kind: RunKind::Train,
        config: String::new(),
        gyms: vec!["turtle".into()],
        model: "bench".into(),
        device: "cpu".into(),
        total_steps: POINTS as i64,
    }
}

/// The metrics one GRPO step logs (TRL's names plus multi-turn ones).
fn step_metrics(step: u64) -> Event {
    let names = [
        "reward",
        "reward_std",
        "reward/turtle",
        "frac_reward_zero_std",
        "completions/mean_length",
        "completions/clipped_ratio",
        "entropy",
        "kl",
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "grad_norm",
        "loss",
        "learning_rate",
        "num_tokens",
        "step_time",
        "turns/mean",
        "success/turtle",
        "rollout/tokens_per_s",
        "train/tokens_per_s",
        "user_latency/p50",
    ];
    Event::Metrics {
        step,
        values: names.iter().enumerate().map(|(i, n)| (n.to_string(), (step + i as u64) as f64)).collect(),
    }
}

/// An 8-turn episode with a few hundred tokens carrying advantages.
fn transcript(step: u64) -> Event {
    let mut messages = vec![json!({"speaker": "system", "text": "You are a helpful agent. ".repeat(10)})];
    for turn in 0..8 {
        messages.push(json!({"speaker": "user", "text": format!("The user says something in turn {turn}.")}));
        let tokens: Vec<_> = (0..40).map(|i| json!([format!("tok{i} "), 0.01 * i as f64])).collect();
        messages.push(json!({"speaker": "assistant", "text": "tok ".repeat(40), "tokens": tokens, "reward": 0.1}));
        messages.push(json!({"speaker": "tool", "text": "Feedback.\nReward: 0.1"}));
    }
    let record = json!({"gym": "turtle", "task_id": "t1", "reward": 0.8, "score": 0.8, "normalized": 0.4,
        "success": true, "termination": "finished", "advantage": 0.3, "turn_rewards": vec![0.1; 8], "messages": messages});
    Event::Transcript { step, group: 0, sample: 0, validate: false, record }
}

/// A fresh database of each available dialect: (label, url, guard keeping the SQLite folder alive).
fn databases() -> Vec<(String, String, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut out = vec![("sqlite".to_string(), format!("sqlite://{}/bench.db", dir.path().display()), Some(dir))];
    if let Ok(admin) = std::env::var("USERRL_TEST_POSTGRES_URL") {
        let name = format!("userrl_bench_{}", std::process::id());
        Runtime::new().expect("runtime").block_on(async {
            let mut conn = sqlx::PgConnection::connect(&admin).await.expect("postgres admin connection");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.expect("db");
        });
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap_or(admin.clone());
        out.push(("postgres".to_string(), format!("{base}/{name}"), None));
    } else {
        eprintln!("USERRL_TEST_POSTGRES_URL unset: benchmarking SQLite only (see scripts/test-postgres)");
    }
    out
}

fn sink_emit(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = rt.block_on(Store::connect(&format!("sqlite://{}/emit.db", dir.path().display()))).expect("store");
    let run = rt.block_on(store.create_run(&new_run())).expect("run");
    let sink = StoreSink::new(store.clone(), run, rt.handle().clone());
    let mut group = c.benchmark_group("sink_emit");
    for (name, make) in [("metrics_20_values", step_metrics as fn(u64) -> Event), ("transcript_8_turns", transcript)] {
        let event = make(1);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    sink.emit(black_box(&event)).expect("emit");
                }
                let elapsed = start.elapsed();
                // Drain outside the timing, so queued work does not pile up across samples.
                sink.flush_blocking().expect("flush");
                elapsed
            })
        });
    }
    group.finish();
}

fn fill_and_query(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    for (label, url, _guard) in databases() {
        let store = rt.block_on(Store::connect(&url)).expect("store");
        let run = rt.block_on(store.create_run(&new_run())).expect("run");
        let sink = StoreSink::new(store.clone(), run, rt.handle().clone());
        let start = Instant::now();
        for step in 0..POINTS {
            let value = (step as f64 * 0.001).sin() + (step % 97) as f64 * 0.01;
            sink.emit(&Event::Metrics { step, values: vec![("reward".into(), value)] }).expect("emit");
        }
        sink.flush_blocking().expect("flush");
        let fill = start.elapsed();
        println!(
            "{label}: sink wrote {POINTS} single-value metric events in {:.1} s ({:.0} events/s)",
            fill.as_secs_f64(),
            POINTS as f64 / fill.as_secs_f64()
        );
        // Let Postgres set its visibility map and statistics, as autovacuum would on a live server.
        if label == "postgres" {
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
                sqlx::query("VACUUM ANALYZE metrics").execute(&mut conn).await.expect("vacuum");
            });
        }

        let zoom = Some((250_000, 750_000));
        for (what, range) in [("whole", None), ("zoom_half", zoom)] {
            let mut times: Vec<Duration> = (0..30)
                .map(|_| {
                    let start = Instant::now();
                    let buckets = rt.block_on(store.metric_buckets(run, "reward", BUCKETS, range)).expect("buckets");
                    assert!(buckets.len() <= BUCKETS && buckets.len() > BUCKETS / 2);
                    start.elapsed()
                })
                .collect();
            times.sort();
            println!(
                "{label}: metric_buckets {what} ({BUCKETS} buckets over {} points): p50 {:.1} ms, p99 {:.1} ms",
                if range.is_some() { POINTS / 2 + 1 } else { POINTS },
                times[times.len() / 2].as_secs_f64() * 1e3,
                times[times.len() * 99 / 100].as_secs_f64() * 1e3
            );
            c.bench_function(&format!("metric_buckets_1m/{label}/{what}"), |b| {
                b.iter(|| rt.block_on(store.metric_buckets(run, "reward", BUCKETS, black_box(range))).expect("buckets"))
            });
        }
        c.bench_function(&format!("runs_table/{label}"), |b| b.iter(|| rt.block_on(store.runs()).expect("runs")));
        rt.block_on(store.close());
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = sink_emit, fill_and_query
}
criterion_main!(benches);
