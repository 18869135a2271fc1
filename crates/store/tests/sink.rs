//! The training event sink on both dialects: nothing emitted is lost (a 100k-event burst from a plain
//! thread included), statuses map to run statuses, failures surface at flush, and live events follow commits.

mod common;

use std::sync::Arc;

use serde_json::json;
use userrl_rl::events::{Event, EventSink};
use userrl_store::{RunStatus, Store, StoreError, StoreEvent, StoreSink, TranscriptFilter};

use common::new_run;

both_dialects! {
    burst_from_training_thread_loses_nothing,
    mixed_events_land_in_order,
    unknown_run_fails_at_flush,
    dropping_the_sink_drains_the_queue,
    concurrent_runs_and_readers,
    closed_database_fails_flush_instead_of_hanging,
}

const BURST: u64 = 100_000;

async fn burst_from_training_thread_loses_nothing(store: Store) {
    let run = store.create_run(&new_run("burst")).await.unwrap();
    let sink = Arc::new(StoreSink::new(store.clone(), run, tokio::runtime::Handle::current()));
    let trainer = {
        let sink = sink.clone();
        std::thread::spawn(move || {
            for step in 0..BURST {
                sink.emit(&Event::Metrics { step, values: vec![("reward".into(), step as f64 / 2.0)] }).unwrap();
            }
            sink.emit(&Event::Metrics { step: 7, values: vec![("loss".into(), 1.5), ("kl".into(), 0.25)] }).unwrap();
            sink.flush_blocking()
        })
    };
    tokio::task::spawn_blocking(move || trainer.join().unwrap()).await.unwrap().unwrap();

    let buckets = store.metric_buckets(run, "reward", 1, None).await.unwrap();
    assert_eq!(buckets.len(), 1);
    let b = &buckets[0];
    assert_eq!((b.count, b.first_step, b.last_step), (BURST as i64, 0, BURST as i64 - 1));
    assert_eq!((b.min, b.max, b.last), (0.0, (BURST - 1) as f64 / 2.0, (BURST - 1) as f64 / 2.0));
    let row = store.run(run).await.unwrap().unwrap();
    assert_eq!((row.step, row.latest_reward), (BURST as i64 - 1, Some((BURST - 1) as f64 / 2.0)));
    assert_eq!(store.metric_keys(run).await.unwrap(), ["kl", "loss", "reward"]);
    assert_eq!(store.metric_points(run, "loss", None).await.unwrap()[0].step, 7);
}

async fn mixed_events_land_in_order(store: Store) {
    let run = store.create_run(&new_run("mixed")).await.unwrap();
    let mut live = store.subscribe();
    let sink = StoreSink::new(store.clone(), run, tokio::runtime::Handle::current());
    let record = json!({"gym": "turtle", "task_id": "t1", "reward": 0.5, "score": 0.5, "normalized": 0.5,
        "success": false, "termination": "max_steps", "advantage": 0.1, "turn_rewards": [0.5], "messages": []});
    let events = [
        Event::Status { status: "running".into(), message: "quickstart".into() },
        Event::Metrics { step: 1, values: vec![("reward".into(), 0.5)] },
        Event::Transcript { step: 1, group: 2, sample: 3, validate: false, record: record.clone() },
        Event::Transcript { step: 1, group: 0, sample: 0, validate: true, record: json!("not an object") },
        Event::Checkpoint { step: 1, path: "runs/mixed/step-1".into() },
        Event::Status { status: "no-such-status".into(), message: String::new() },
        Event::Status { status: "finished".into(), message: String::new() },
    ];
    for event in &events {
        sink.emit(event).unwrap();
    }
    sink.flush().await.unwrap();

    let row = store.run(run).await.unwrap().unwrap();
    assert_eq!(row.status, RunStatus::Finished);
    assert!(row.started_at.is_some() && row.finished_at.is_some());
    let transcripts = store.transcripts(run, &TranscriptFilter::default()).await.unwrap();
    assert_eq!(transcripts.len(), 2);
    let train = transcripts.iter().find(|t| !t.validate).unwrap();
    assert_eq!((train.group, train.sample, train.gym.as_str(), train.turns), (2, 3, "turtle", 1));
    let (_, raw) = store.transcript_raw(train.id).await.unwrap().unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&raw).unwrap(), record);
    assert_eq!(store.checkpoints(run).await.unwrap()[0].path, "runs/mixed/step-1");

    let mut got = Vec::new();
    while let Ok(event) = live.try_recv() {
        got.push(event);
    }
    let kinds: Vec<&str> = got
        .iter()
        .map(|e| match e {
            StoreEvent::Metrics { .. } => "metrics",
            StoreEvent::Status { .. } => "status",
            StoreEvent::Transcript { .. } => "transcript",
            StoreEvent::Checkpoint { .. } => "checkpoint",
            StoreEvent::Progress { .. } => "progress",
        })
        .collect();
    assert_eq!(kinds, ["status", "metrics", "transcript", "transcript", "checkpoint", "status"]);
    assert!(got.iter().any(|e| matches!(e, StoreEvent::Status { status: RunStatus::Finished, .. })));
}

async fn unknown_run_fails_at_flush(store: Store) {
    let sink = StoreSink::new(store.clone(), 9999, tokio::runtime::Handle::current());
    for step in 0..3 {
        sink.emit(&Event::Metrics { step, values: vec![("reward".into(), 1.0)] }).unwrap();
    }
    let err = sink.flush().await.unwrap_err();
    assert!(matches!(&err, StoreError::Sink(m) if m.starts_with("3 event(s)")), "{err}");
    // Reported once; later flushes start clean.
    sink.flush().await.unwrap();
    // Blocking flush inside the runtime is refused, not a deadlock.
    assert!(matches!(sink.flush_blocking(), Err(StoreError::Sink(_))));
}

async fn dropping_the_sink_drains_the_queue(store: Store) {
    let run = store.create_run(&new_run("drop")).await.unwrap();
    let sink = StoreSink::new(store.clone(), run, tokio::runtime::Handle::current());
    for step in 0..2_000 {
        sink.emit(&Event::Metrics { step, values: vec![("reward".into(), 1.0)] }).unwrap();
    }
    drop(sink);
    // The writer finishes on its own; wait for it (bounded, so a bug fails instead of hanging).
    for _ in 0..600 {
        if store.run(run).await.unwrap().unwrap().step == 1_999 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let buckets = store.metric_buckets(run, "reward", 1, None).await.unwrap();
    assert_eq!(buckets[0].count, 2_000);
}

async fn concurrent_runs_and_readers(store: Store) {
    const RUNS: usize = 4;
    const STEPS: u64 = 5_000;
    let mut trainers = Vec::new();
    let mut runs = Vec::new();
    for r in 0..RUNS {
        let run = store.create_run(&new_run(&format!("c{r}"))).await.unwrap();
        runs.push(run);
        let sink = StoreSink::new(store.clone(), run, tokio::runtime::Handle::current());
        trainers.push(std::thread::spawn(move || {
            for step in 0..STEPS {
                let values = vec![("reward".into(), step as f64), ("loss".into(), -(step as f64))];
                sink.emit(&Event::Metrics { step, values }).unwrap();
                if step % 1_000 == 0 {
                    let record = json!({"gym": "turtle", "reward": step as f64});
                    sink.emit(&Event::Transcript { step, group: 0, sample: 0, validate: false, record }).unwrap();
                }
            }
            sink.flush_blocking()
        }));
    }
    // Readers and a direct writer run while the sinks write.
    let reader = {
        let store = store.clone();
        let runs = runs.clone();
        tokio::spawn(async move {
            for i in 0..50 {
                for &run in &runs {
                    store.metric_buckets(run, "reward", 100, None).await.unwrap();
                    store.runs().await.unwrap();
                }
                store.append_metrics(runs[0], 1_000_000 + i, 0, &[("direct".into(), 1.0)]).await.unwrap();
            }
        })
    };
    for trainer in trainers {
        tokio::task::spawn_blocking(move || trainer.join().unwrap()).await.unwrap().unwrap();
    }
    reader.await.unwrap();
    for &run in &runs {
        for key in ["reward", "loss"] {
            let b = store.metric_buckets(run, key, 1, None).await.unwrap();
            assert_eq!((b.len(), b[0].count), (1, STEPS as i64), "run {run} {key}");
        }
        assert_eq!(store.transcripts(run, &TranscriptFilter::default()).await.unwrap().len(), 5);
    }
    assert_eq!(store.metric_points(runs[0], "direct", None).await.unwrap().len(), 50);
}

async fn closed_database_fails_flush_instead_of_hanging(store: Store) {
    let run = store.create_run(&new_run("gone")).await.unwrap();
    let sink = StoreSink::new(store.clone(), run, tokio::runtime::Handle::current());
    store.close().await;
    for step in 0..1_000 {
        sink.emit(&Event::Metrics { step, values: vec![("reward".into(), 1.0)] }).unwrap();
    }
    let err = sink.flush().await.unwrap_err();
    assert!(matches!(&err, StoreError::Sink(m) if m.starts_with("1000 event(s)")), "{err}");
}

/// Several processes on one SQLite file (a server, `userrl train` runs, a second server): each its own pool.
/// Four runs log through their sinks, a fifth writer logs directly, two readers read charts and the runs table,
/// and meanwhile another connection holds the write lock for longer than the busy timeout. Every write waits
/// for it (retrying while the database is busy) and no event is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_processes_share_one_sqlite_file_without_losing_events() {
    use sqlx::{Connection, Executor};

    const RUNS: usize = 4;
    const STEPS: u64 = 2_000;
    const DIRECT: i64 = 20;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/shared.db", dir.path().display());
    let mut stores = Vec::new();
    for _ in 0..RUNS + 3 {
        stores.push(Store::connect(&url).await.unwrap());
    }
    let mut runs = Vec::new();
    for (r, store) in stores.iter().take(RUNS + 1).enumerate() {
        runs.push(store.create_run(&new_run(&format!("p{r}"))).await.unwrap());
    }

    // Longer than the 5 s busy timeout: a write that gave up after one timeout would fail here.
    let mut blocker = sqlx::SqliteConnection::connect(&url).await.unwrap();
    blocker.execute("BEGIN IMMEDIATE").await.unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        blocker.execute("COMMIT").await.unwrap();
        blocker.close().await.unwrap();
    });

    let mut trainers = Vec::new();
    for r in 0..RUNS {
        let sink = StoreSink::new(stores[r].clone(), runs[r], tokio::runtime::Handle::current());
        trainers.push(std::thread::spawn(move || {
            for step in 0..STEPS {
                let values = vec![("reward".into(), step as f64), ("loss".into(), -(step as f64))];
                sink.emit(&Event::Metrics { step, values }).unwrap();
                sink.emit(&Event::Progress { phase: "grpo".into(), step: step + 1, total: STEPS }).unwrap();
                if step % 100 == 0 {
                    let record = json!({"gym": "turtle", "reward": step as f64});
                    sink.emit(&Event::Transcript { step, group: 0, sample: 0, validate: false, record }).unwrap();
                }
            }
            sink.flush_blocking()
        }));
    }
    let direct = {
        let (store, run) = (stores[RUNS].clone(), runs[RUNS]);
        tokio::spawn(async move {
            for step in 0..DIRECT {
                store.append_metrics(run, step, 0, &[("reward".into(), step as f64)]).await.unwrap();
                store.set_progress(run, "sft", step + 1, DIRECT).await.unwrap();
            }
            store.set_run_status(run, RunStatus::Finished, "").await.unwrap();
        })
    };
    let writers_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for store in stores.iter().skip(RUNS + 1).cloned() {
        let (runs, done) = (runs.clone(), writers_done.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) || reads == 0 {
                for &run in &runs {
                    store.metric_buckets(run, "reward", 100, None).await.unwrap();
                    store.transcripts(run, &TranscriptFilter::default()).await.unwrap();
                }
                store.runs().await.unwrap();
                reads += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            reads
        }));
    }
    for trainer in trainers {
        tokio::task::spawn_blocking(move || trainer.join().unwrap()).await.unwrap().unwrap();
    }
    direct.await.unwrap();
    release.await.unwrap();
    writers_done.store(true, std::sync::atomic::Ordering::SeqCst);
    for reader in readers {
        assert!(reader.await.unwrap() > 0);
    }

    let store = &stores[0];
    for &run in &runs[..RUNS] {
        for key in ["reward", "loss"] {
            let b = store.metric_buckets(run, key, 1, None).await.unwrap();
            assert_eq!((b.len(), b[0].count), (1, STEPS as i64), "run {run} {key}");
        }
        let filter = TranscriptFilter { limit: 1000, ..Default::default() };
        assert_eq!(store.transcripts(run, &filter).await.unwrap().len(), (STEPS / 100) as usize);
        let row = store.run(run).await.unwrap().unwrap();
        assert_eq!((row.phase_step, row.phase_total, row.step), (STEPS as i64, STEPS as i64, STEPS as i64 - 1));
    }
    let direct_run = store.run(runs[RUNS]).await.unwrap().unwrap();
    assert_eq!(direct_run.status, RunStatus::Finished);
    assert_eq!((direct_run.phase.as_str(), direct_run.phase_step), ("sft", DIRECT));
    assert_eq!(store.metric_points(runs[RUNS], "reward", None).await.unwrap().len(), DIRECT as usize);
}
