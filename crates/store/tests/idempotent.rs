//! Writes are idempotent on both dialects: a resumed run re-emits the events of the steps after its checkpoint,
//! and the store must then hold what one emission gives (no duplicate points, transcripts or checkpoints;
//! block summaries exact when a value is replaced). The migration that brought the unique keys removes the
//! duplicates an older store already holds.

mod common;

use std::path::Path;

use serde_json::json;
use sqlx::Connection;
use userrl_rl::events::{Event, EventSink};
use userrl_store::{RunStatus, Store, StoreSink, TranscriptFilter};

use common::new_run;

both_dialects! {
    replayed_events_give_the_rows_of_one_emission,
}

const KEYS: [&str; 3] = ["reward", "loss", "step_time"];

/// The events of GRPO steps `steps`, with `value(step, key index)` as each metric's value.
fn step_events(steps: std::ops::Range<u64>, value: impl Fn(u64, usize) -> f64) -> Vec<Event> {
    let mut events = Vec::new();
    for step in steps {
        let values = KEYS.iter().enumerate().map(|(i, k)| (k.to_string(), value(step, i))).collect();
        events.push(Event::Metrics { step, values });
        events.push(Event::Progress { phase: "grpo".into(), step: step + 1, total: 200 });
        if step % 10 == 0 {
            for sample in 0..2 {
                let record = json!({"gym": "turtle", "task_id": format!("t{step}"), "reward": value(step, 0),
                    "termination": "finished", "turn_rewards": [value(step, 0)], "messages": []});
                events.push(Event::Transcript { step, group: 0, sample, validate: false, record });
            }
        }
        if step % 50 == 49 {
            events.push(Event::Checkpoint { step, path: format!("runs/x/step-{:05}", step + 1) });
        }
    }
    events
}

async fn emit_all(store: &Store, run: i64, events: &[Event]) {
    let sink = StoreSink::new(store.clone(), run, tokio::runtime::Handle::current());
    for event in events {
        sink.emit(event).unwrap();
    }
    sink.flush().await.unwrap();
}

/// What the pages read of a run, without ids, run ids and write times (which differ between two runs).
async fn snapshot(store: &Store, run: i64) -> String {
    let mut out = String::new();
    for key in store.metric_keys(run).await.unwrap() {
        let points: Vec<(i64, f64)> =
            store.metric_points(run, &key, None).await.unwrap().iter().map(|p| (p.step, p.value)).collect();
        out.push_str(&format!("{key} points {points:?}\n"));
        // Buckets over whole blocks (summaries) and over raw points, whole series and cut ranges.
        for (n, range) in [(1, None), (3, None), (800, None), (2, Some((10, 190))), (1, Some((128, 191)))] {
            let buckets = store.metric_buckets(run, &key, n, range).await.unwrap();
            out.push_str(&format!("{key} {n} {range:?} {buckets:?}\n"));
        }
    }
    let filter = TranscriptFilter { limit: 1000, ..Default::default() };
    for t in store.transcripts(run, &filter).await.unwrap() {
        let (_, raw) = store.transcript_raw(t.id).await.unwrap().unwrap();
        out.push_str(&format!(
            "transcript {} {} {} {} {} {} {} {raw}\n",
            t.step, t.group, t.sample, t.validate, t.gym, t.task_id, t.reward
        ));
    }
    for c in store.checkpoints(run).await.unwrap() {
        out.push_str(&format!("checkpoint {} {}\n", c.step, c.path));
    }
    let row = store.run(run).await.unwrap().unwrap();
    out.push_str(&format!(
        "run step {} reward {:?} phase {} {}/{} status {:?}\n",
        row.step, row.latest_reward, row.phase, row.phase_step, row.phase_total, row.status
    ));
    out
}

async fn replayed_events_give_the_rows_of_one_emission(store: Store) {
    // Run A: steps 0..200, then a resume from the checkpoint after step 129 replays 130..200 — with other
    // values (timings differ on every attempt), smaller than the first ones so the replaced points held
    // their blocks' maxima. Run B: the same history emitted once.
    let first = |step: u64, i: usize| 1_000.0 + step as f64 + i as f64;
    let again = |step: u64, i: usize| if step >= 130 { step as f64 / 1_000.0 - i as f64 } else { first(step, i) };
    let a = store.create_run(&new_run("a")).await.unwrap();
    emit_all(&store, a, &step_events(0..200, first)).await;
    let mut replay = vec![Event::Status { status: "running".into(), message: "resumed".into() }];
    replay.extend(step_events(130..200, again));
    emit_all(&store, a, &replay).await;
    let b = store.create_run(&new_run("b")).await.unwrap();
    let mut once = vec![Event::Status { status: "running".into(), message: "resumed".into() }];
    once.extend(step_events(0..200, again));
    emit_all(&store, b, &once).await;
    let (sa, sb) = (snapshot(&store, a).await, snapshot(&store, b).await);
    assert_eq!(sa, sb);

    // The numbers themselves: 200 points a key, the replaced block's max from the replayed values.
    let reward = store.metric_buckets(a, "reward", 1, None).await.unwrap();
    assert_eq!((reward[0].count, reward[0].first_step, reward[0].last_step), (200, 0, 199));
    assert_eq!((reward[0].max, reward[0].last), (first(129, 0), again(199, 0)));
    let block = store.metric_buckets(a, "reward", 1, Some((128, 191))).await.unwrap();
    assert_eq!((block[0].count, block[0].min, block[0].max), (64, again(130, 0), first(129, 0)));
    let tail = store.metric_buckets(a, "reward", 1, Some((192, 255))).await.unwrap();
    assert_eq!((tail[0].count, tail[0].min, tail[0].max), (8, again(192, 0), again(199, 0)));
    let filter = TranscriptFilter { limit: 1000, ..Default::default() };
    assert_eq!(store.transcripts(a, &filter).await.unwrap().len(), 40);
    assert_eq!(store.checkpoints(a).await.unwrap().len(), 4);
    let row = store.run(a).await.unwrap().unwrap();
    assert_eq!((row.phase.as_str(), row.phase_step, row.phase_total), ("grpo", 200, 200));
    assert_eq!((row.step, row.latest_reward, row.status), (199, Some(again(199, 0)), RunStatus::Running));

    // Emitting the very same events a second time changes nothing, transcript ids included.
    let ids: Vec<i64> = store.transcripts(a, &filter).await.unwrap().iter().map(|t| t.id).collect();
    let checkpoint_ids: Vec<i64> = store.checkpoints(a).await.unwrap().iter().map(|c| c.id).collect();
    emit_all(&store, a, &step_events(130..200, again)).await;
    assert_eq!(snapshot(&store, a).await, sa);
    assert_eq!(store.transcripts(a, &filter).await.unwrap().iter().map(|t| t.id).collect::<Vec<_>>(), ids);
    assert_eq!(store.checkpoints(a).await.unwrap().iter().map(|c| c.id).collect::<Vec<_>>(), checkpoint_ids);
}

/// The migrations before the unique keys, from the workspace's folder of `dialect`.
async fn old_migrator(dialect: &str) -> (sqlx::migrate::Migrator, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../migrations").join(dialect);
    let first = "20261125000001_store.sql";
    std::fs::copy(source.join(first), dir.path().join(first)).unwrap();
    (sqlx::migrate::Migrator::new(dir.path()).await.unwrap(), dir)
}

/// After the migrations, the old run (duplicates of every kind, see [`old_rows`]) holds one of each, the latest.
async fn check_deduplicated(store: &Store) {
    let points = store.metric_points(1, "reward", None).await.unwrap();
    assert_eq!(points.len(), 100);
    assert!(
        points.iter().all(|p| p.value == if p.step >= 60 { p.step as f64 / 100.0 } else { 1000.0 + p.step as f64 })
    );
    let b = store.metric_buckets(1, "reward", 1, Some((0, 127))).await.unwrap();
    assert_eq!((b[0].count, b[0].max, b[0].min, b[0].last), (100, 1059.0, 0.6, 0.99));
    let block = store.metric_buckets(1, "reward", 1, Some((64, 127))).await.unwrap();
    assert_eq!((block[0].count, block[0].max), (36, 0.99));
    let transcripts = store.transcripts(1, &TranscriptFilter::default()).await.unwrap();
    assert_eq!(transcripts.iter().map(|t| t.task_id.as_str()).collect::<Vec<_>>(), ["newer"]);
    assert_eq!(store.checkpoints(1).await.unwrap().len(), 1);
    let row = store.run(1).await.unwrap().unwrap();
    assert_eq!((row.phase.as_str(), row.phase_step, row.phase_total), ("", 0, 0));
}

/// One run with duplicates, as the old schema let them in: reward at steps 0..100 with steps 60..100 logged
/// twice (the second time lower), two copies of a transcript and of a checkpoint.
fn old_rows() -> Vec<String> {
    vec![
        "INSERT INTO runs (name, kind, status, config, gyms, model, device, total_steps, created_at) \
         VALUES ('old', 'train', 'interrupted', '', '[]', 'm', 'cpu', 100, 0)"
            .to_string(),
        (0..100)
            .map(|s| format!("(1, 'reward', {s}, 0, {})", 1000 + s))
            .chain((60..100).map(|s| format!("(1, 'reward', {s}, 1, {})", s as f64 / 100.0)))
            .fold("INSERT INTO metrics (run_id, key, step, wall_time, value) VALUES ".to_string(), |mut sql, row| {
                if !sql.ends_with("VALUES ") {
                    sql.push(',');
                }
                sql.push_str(&row);
                sql
            }),
        // The old writers kept summaries that counted every point, duplicates included.
        "INSERT INTO metric_blocks (run_id, key, block, first_step, last_step, min_value, max_value, cnt) \
         VALUES (1, 'reward', 0, 0, 63, 0.6, 1063, 68), (1, 'reward', 1, 64, 99, 0.64, 1099, 72)"
            .to_string(),
        "INSERT INTO metric_keys (run_id, key) VALUES (1, 'reward')".to_string(),
        "INSERT INTO transcripts (run_id, step, grp, sample, validate, gym, task_id, reward, normalized, success, \
         termination, turns, parse_failures, record, created_at) VALUES \
         (1, 5, 0, 0, false, 'turtle', 'older', 0.1, 0.1, false, 'x', 1, 0, '{}', 0), \
         (1, 5, 0, 0, false, 'turtle', 'newer', 0.2, 0.2, false, 'x', 1, 0, '{}', 1)"
            .to_string(),
        "INSERT INTO checkpoints (run_id, step, path, created_at) VALUES (1, 49, 'runs/1/step-00050', 0), \
         (1, 49, 'runs/1/step-00050', 1)"
            .to_string(),
    ]
}

#[tokio::test]
async fn the_migration_removes_old_duplicates_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/old.db?mode=rwc", dir.path().display());
    let (migrator, _files) = old_migrator("sqlite").await;
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    migrator.run(&pool).await.unwrap();
    for sql in old_rows() {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let store = Store::connect(&url).await.unwrap();
    check_deduplicated(&store).await;
}

#[tokio::test]
async fn the_migration_removes_old_duplicates_on_postgres() {
    let Some(url) = common::postgres_database("the_migration_removes_old_duplicates").await else { return };
    let (migrator, _files) = old_migrator("postgres").await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    migrator.run(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    for sql in old_rows() {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let store = Store::connect(&url).await.unwrap();
    check_deduplicated(&store).await;
    store.close().await;
}
