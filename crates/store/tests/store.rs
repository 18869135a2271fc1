//! The store's behaviour on both dialects: runs, metrics and their buckets (against a brute-force
//! computation on seeded random data), transcripts, checkpoints, evals, health counts and live events.

mod common;

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use userrl_store::{
    MetricBucket, NewEval, RunStatus, Store, StoreError, StoreEvent, TranscriptFilter, TranscriptRecord,
};

use common::new_run;

both_dialects! {
    migrations_leave_an_empty_store,
    run_lifecycle,
    interrupted_runs_at_start,
    metrics_round_trip,
    buckets_match_brute_force,
    buckets_reject_bad_requests,
    transcripts_filter_and_group,
    odd_transcripts_are_kept,
    rollout_health_counts,
    checkpoints_and_evals,
    writes_are_announced,
}

async fn migrations_leave_an_empty_store(store: Store) {
    assert!(store.runs().await.unwrap().is_empty());
    assert!(store.evals().await.unwrap().is_empty());
    assert_eq!(store.run(1).await.unwrap(), None);
    assert_eq!(store.transcript(1).await.unwrap(), None);
    assert!(store.metric_buckets(1, "reward", 10, None).await.unwrap().is_empty());
}

async fn run_lifecycle(store: Store) {
    let a = store.create_run(&new_run("first")).await.unwrap();
    let b = store.create_run(&new_run("second")).await.unwrap();
    assert!(b > a);
    let runs = store.runs().await.unwrap();
    assert_eq!(runs.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["second", "first"]);
    let run = store.run(a).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!(run.gyms, ["intention", "turtle"]);
    assert_eq!((run.step, run.total_steps, run.latest_reward), (0, 10, None));
    assert_eq!((run.started_at, run.finished_at), (None, None));
    assert!(run.created_at > 1_700_000_000_000);

    store.set_run_status(a, RunStatus::Running, "going").await.unwrap();
    let running = store.run(a).await.unwrap().unwrap();
    assert_eq!((running.status, running.message.as_str()), (RunStatus::Running, "going"));
    let started = running.started_at.unwrap();
    assert_eq!(running.finished_at, None);

    store.set_run_status(a, RunStatus::Failed, "boom").await.unwrap();
    let failed = store.run(a).await.unwrap().unwrap();
    assert_eq!((failed.status, failed.message.as_str()), (RunStatus::Failed, "boom"));
    assert!(failed.finished_at.unwrap() >= started);

    // Resuming keeps the first start and clears the end.
    store.set_run_status(a, RunStatus::Running, "").await.unwrap();
    let resumed = store.run(a).await.unwrap().unwrap();
    assert_eq!((resumed.started_at, resumed.finished_at), (Some(started), None));

    assert!(matches!(store.set_run_status(9999, RunStatus::Running, "").await, Err(StoreError::NotFound)));
}

async fn interrupted_runs_at_start(store: Store) {
    let queued = store.create_run(&new_run("q")).await.unwrap();
    let running = store.create_run(&new_run("r")).await.unwrap();
    let done = store.create_run(&new_run("d")).await.unwrap();
    store.set_run_status(running, RunStatus::Running, "").await.unwrap();
    store.set_run_status(done, RunStatus::Finished, "").await.unwrap();
    assert_eq!(store.mark_interrupted().await.unwrap(), 2);
    for id in [queued, running] {
        let run = store.run(id).await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Interrupted);
        assert!(run.finished_at.is_some());
    }
    assert_eq!(store.run(done).await.unwrap().unwrap().status, RunStatus::Finished);
    assert_eq!(store.mark_interrupted().await.unwrap(), 0);
}

async fn metrics_round_trip(store: Store) {
    let run = store.create_run(&new_run("m")).await.unwrap();
    let values = |r: f64| vec![("reward".to_string(), r), ("loss".to_string(), 2.0 * r)];
    store.append_metrics(run, 1, 1000, &values(0.1)).await.unwrap();
    store.append_metrics(run, 3, 3000, &values(0.3)).await.unwrap();
    // An older step logged late changes neither the run's step nor its latest reward.
    store.append_metrics(run, 2, 4000, &values(0.2)).await.unwrap();
    store.append_metrics(run, 3, 5000, &[("entropy".into(), f64::NAN), ("kl".into(), f64::INFINITY)]).await.unwrap();
    store.append_metrics(run, 4, 6000, &[]).await.unwrap();

    assert_eq!(store.metric_keys(run).await.unwrap(), ["entropy", "kl", "loss", "reward"]);
    let row = store.run(run).await.unwrap().unwrap();
    assert_eq!((row.step, row.latest_reward), (3, Some(0.3)));

    let points = store.metric_points(run, "reward", None).await.unwrap();
    assert_eq!(
        points.iter().map(|p| (p.step, p.wall_time, p.value)).collect::<Vec<_>>(),
        [(1, 1000, 0.1), (2, 4000, 0.2), (3, 3000, 0.3)]
    );
    let after = store.metric_points(run, "reward", Some(1)).await.unwrap();
    assert_eq!(after.iter().map(|p| p.step).collect::<Vec<_>>(), [2, 3]);
    assert!(store.metric_points(run, "entropy", None).await.unwrap()[0].value.is_nan());
    assert_eq!(store.metric_points(run, "kl", None).await.unwrap()[0].value, f64::INFINITY);
    assert!(store.metric_points(run, "nope", None).await.unwrap().is_empty());

    let nan = store.metric_buckets(run, "entropy", 10, None).await.unwrap();
    assert_eq!(nan.len(), 1);
    assert!(nan[0].min.is_nan() && nan[0].last.is_nan());
    assert_eq!(nan[0].count, 1);

    let missing = store.append_metrics(9999, 1, 0, &values(1.0)).await;
    assert!(matches!(missing, Err(StoreError::NotFound)), "{missing:?}");
}

/// One logged point: step, value, and its logging order (the later of two at one step replaces the first).
#[derive(Clone, Copy)]
struct Point {
    step: i64,
    value: f64,
    order: usize,
}

/// The bucket of `step` by the definition in the store's `metrics` module docs.
fn bucket_of(step: i64, lo: i64, hi: i64, n: usize) -> i128 {
    let block = userrl_store::BLOCK_STEPS as i128;
    let (step, lo, hi, n) = (step as i128, lo as i128, hi as i128, n as i128);
    let w = (hi - lo + 1 + n - 1) / n;
    let whole_blocks = (lo + block - 1).div_euclid(block) < (hi + 1).div_euclid(block);
    if w < block || !whole_blocks {
        return (step - lo) / w;
    }
    let base = lo.div_euclid(block);
    let wb = (hi - base * block + 1 + n * block - 1) / (n * block);
    (step.div_euclid(block) - base) / wb
}

fn brute_force(points: &[Point], lo: i64, hi: i64, n: usize) -> Vec<MetricBucket> {
    // A step logged again replaces its point.
    let mut latest: BTreeMap<i64, Point> = BTreeMap::new();
    for p in points {
        latest.insert(p.step, *p);
    }
    let mut groups: BTreeMap<i128, Vec<Point>> = BTreeMap::new();
    for p in latest.values().filter(|p| p.step >= lo && p.step <= hi) {
        groups.entry(bucket_of(p.step, lo, hi, n)).or_default().push(*p);
    }
    groups
        .values()
        .map(|g| {
            let last = g.iter().max_by_key(|p| (p.step, p.order)).unwrap();
            MetricBucket {
                first_step: g.iter().map(|p| p.step).min().unwrap(),
                last_step: last.step,
                // NaN is ignored by min and max; a bucket of NaN only has NaN for both.
                min: g.iter().map(|p| p.value).filter(|v| !v.is_nan()).reduce(f64::min).unwrap_or(f64::NAN),
                max: g.iter().map(|p| p.value).filter(|v| !v.is_nan()).reduce(f64::max).unwrap_or(f64::NAN),
                last: last.value,
                count: g.len() as i64,
            }
        })
        .collect()
}

async fn buckets_match_brute_force(store: Store) {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for case in 0..12 {
        let run = store.create_run(&new_run(&format!("b{case}"))).await.unwrap();
        let len = [0, 1, 7, 200, 1500][case % 5];
        let start: i64 = rng.random_range(-50..50);
        let mut points = Vec::new();
        let mut step = start;
        for order in 0..len {
            // Gaps and repeated steps both happen in real runs (skipped logs, resumed runs).
            step += rng.random_range(0..4);
            let value = match rng.random_range(0..20) {
                0 => f64::NAN,
                1 | 2 => rng.random_range(-1e6..1e6),
                _ => rng.random_range(-1.0..1.0),
            };
            points.push(Point { step, value, order });
        }
        // Log step by step, as the trainer does, in a few batches.
        let mut i = 0;
        while i < points.len() {
            let p = points[i];
            store.append_metrics(run, p.step, 0, &[("reward".into(), p.value)]).await.unwrap();
            i += 1;
        }
        let whole = points.first().map(|f| (f.step, points.last().unwrap().step));
        for _ in 0..10 {
            let n = [1, 2, 3, 7, 10, 30, 64, 800, 5000][rng.random_range(0..9)];
            let range = if rng.random_bool(0.5) || whole.is_none() {
                let a = rng.random_range(start - 20..start + 3000);
                let b = rng.random_range(start - 20..start + 3000);
                Some((a.min(b), a.max(b)))
            } else {
                None
            };
            let got = store.metric_buckets(run, "reward", n, range).await.unwrap();
            let want = match range.or(whole) {
                Some((lo, hi)) => brute_force(&points, lo, hi, n),
                None => Vec::new(),
            };
            // Debug text compares NaN equal to NaN.
            assert_eq!(format!("{got:?}"), format!("{want:?}"), "case {case}, {n} buckets over {range:?}");
            assert!(got.len() <= n);
            assert_eq!(got.iter().map(|b| b.count).sum::<i64>(), want.iter().map(|b| b.count).sum::<i64>());
        }
    }
}

async fn buckets_reject_bad_requests(store: Store) {
    let run = store.create_run(&new_run("x")).await.unwrap();
    store.append_metrics(run, 1, 0, &[("reward".into(), 1.0)]).await.unwrap();
    let too_wide = [Some((i64::MIN, i64::MAX)), Some((0, i64::MAX)), Some((-1, i64::MAX - 1))];
    for (n, range) in
        [(0, None), (100_001, None), (10, Some((5, 4))), (1, too_wide[0]), (1, too_wide[1]), (1, too_wide[2])]
    {
        let result = store.metric_buckets(run, "reward", n, range).await;
        assert!(matches!(result, Err(StoreError::Invalid(_))), "{n} {range:?}: {result:?}");
    }
    // The widest range that fits still answers.
    let wide = store.metric_buckets(run, "reward", 1, Some((0, i64::MAX - 1))).await.unwrap();
    assert_eq!(wide.len(), 1);
    let wide = store.metric_buckets(run, "reward", 2, Some((-(1 << 60), 1 << 60))).await.unwrap();
    assert_eq!((wide.len(), wide[0].first_step), (1, 1));
}

fn record(gym: &str, reward: f64, termination: &str) -> serde_json::Value {
    json!({
        "gym": gym, "task_id": format!("{gym}-1"), "reward": reward, "score": reward, "normalized": reward / 2.0,
        "success": reward > 0.5, "termination": termination, "advantage": 0.0, "turn_rewards": [0.0, reward],
        "messages": [
            {"speaker": "user", "text": "<script>alert(1)</script>"},
            {"speaker": "assistant", "text": "ab", "tokens": [["a", 0.5], ["b", -0.25]], "reward": reward}
        ]
    })
}

async fn transcripts_filter_and_group(store: Store) {
    let run = store.create_run(&new_run("t")).await.unwrap();
    let mut ids = Vec::new();
    for step in 0..3 {
        for group in 0..2 {
            for sample in 0..3 {
                let gym = if group == 0 { "intention" } else { "turtle" };
                let reward = (step * 10 + group * 3 + sample) as f64 / 100.0;
                let id = store.add_transcript(run, step, group, sample, false, &record(gym, reward, "finished")).await;
                ids.push(id.unwrap());
            }
        }
    }
    let eval_id = store.add_transcript(run, 2, 0, 0, true, &record("intention", 1.0, "max_steps")).await.unwrap();

    let all = store.transcripts(run, &TranscriptFilter::default()).await.unwrap();
    assert_eq!(all.len(), 19);
    assert_eq!((all[0].step, all[0].group, all[0].sample), (2, 0, 0));
    assert!(all.windows(2).all(|w| w[0].step >= w[1].step));

    let turtle = TranscriptFilter { gym: Some("turtle".into()), step: Some(1), ..Default::default() };
    let turtle = store.transcripts(run, &turtle).await.unwrap();
    assert_eq!(turtle.len(), 3);
    assert!(turtle.iter().all(|t| t.gym == "turtle" && t.step == 1 && t.group == 1 && t.turns == 2));

    let rewards = TranscriptFilter { min_reward: Some(0.1), max_reward: Some(0.12), ..Default::default() };
    let rewards = store.transcripts(run, &rewards).await.unwrap();
    assert_eq!(rewards.iter().map(|t| t.reward).collect::<Vec<_>>(), [0.1, 0.11, 0.12]);

    let eval = TranscriptFilter { validate: Some(true), termination: Some("max_steps".into()), ..Default::default() };
    let eval = store.transcripts(run, &eval).await.unwrap();
    assert_eq!(eval.iter().map(|t| t.id).collect::<Vec<_>>(), [eval_id]);
    assert!(eval[0].validate && eval[0].success);

    let page = TranscriptFilter { limit: 4, offset: 16, ..Default::default() };
    assert_eq!(store.transcripts(run, &page).await.unwrap().len(), 3);
    for bad in
        [TranscriptFilter { limit: 0, ..Default::default() }, TranscriptFilter { offset: -1, ..Default::default() }]
    {
        assert!(matches!(store.transcripts(run, &bad).await, Err(StoreError::Invalid(_))));
    }

    let (summary, rec) = store.transcript(ids[4]).await.unwrap().unwrap();
    assert_eq!((summary.step, summary.group, summary.sample, summary.run_id), (0, 1, 1, run));
    assert_eq!(rec.messages[0].text, "<script>alert(1)</script>");
    assert_eq!(rec.messages[1].tokens, [("a".to_string(), 0.5), ("b".to_string(), -0.25)]);
    let expected: TranscriptRecord = serde_json::from_value(record("turtle", 0.04, "finished")).unwrap();
    assert_eq!(rec, expected);

    let group = store.group(run, 2, 0).await.unwrap();
    let keys: Vec<_> = group.iter().map(|(s, _)| (s.validate, s.sample)).collect();
    assert_eq!(keys, [(false, 0), (false, 1), (false, 2), (true, 0)]);
    assert!(store.group(run, 7, 0).await.unwrap().is_empty());
    assert!(matches!(
        store.add_transcript(9999, 0, 0, 0, false, &record("x", 0.0, "")).await,
        Err(StoreError::NotFound)
    ));
}

async fn odd_transcripts_are_kept(store: Store) {
    let run = store.create_run(&new_run("odd")).await.unwrap();
    let odd = json!({"gym": "turtle", "reward": "high", "messages": "not a list", "extra": [1, {"a": null}]});
    let id = store.add_transcript(run, 1, 0, 0, false, &odd).await.unwrap();
    let (summary, raw) = store.transcript_raw(id).await.unwrap().unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&raw).unwrap(), odd);
    assert_eq!(summary.gym, "turtle");
    assert!(summary.reward.is_nan());
    let (_, rec) = store.transcript(id).await.unwrap().unwrap();
    assert_eq!(rec.gym, "turtle");
    assert!(rec.messages[0].text.contains("not in the expected format"));
    // A NUL in a JSON string is escaped in the text, so Postgres stores it too.
    let nul = json!({"gym": "a\u{0}b", "messages": [{"speaker": "user", "text": "x\u{0}y"}]});
    let id = store.add_transcript(run, 1, 0, 1, false, &nul).await.unwrap();
    let (_, raw) = store.transcript_raw(id).await.unwrap().unwrap();
    assert_eq!(serde_json::from_str::<serde_json::Value>(&raw).unwrap(), nul);
    assert_eq!(store.transcripts(run, &TranscriptFilter::default()).await.unwrap().len(), 2);
}

async fn rollout_health_counts(store: Store) {
    let run = store.create_run(&new_run("h")).await.unwrap();
    assert_eq!(store.rollout_health(run).await.unwrap(), Default::default());
    // Group (0,0) all equal; group (0,1) varied; group (1,0) a single rollout.
    let rows = [
        (0, 0, 0, 0.5, "finished"),
        (0, 0, 1, 0.5, "no_tool_call"),
        (0, 1, 0, 0.0, "length"),
        (0, 1, 1, 1.0, "agent_error"),
        (1, 0, 0, 0.2, "finished"),
    ];
    for (step, group, sample, reward, termination) in rows {
        store.add_transcript(run, step, group, sample, false, &record("turtle", reward, termination)).await.unwrap();
    }
    store.add_transcript(run, 1, 5, 0, true, &record("turtle", 0.0, "agent_error")).await.unwrap();
    let health = store.rollout_health(run).await.unwrap();
    assert_eq!((health.groups, health.zero_variance_groups), (3, 2));
    assert_eq!((health.episodes, health.parse_failures), (6, 1));
    assert_eq!((health.length_truncations, health.stuck_episodes), (1, 2));
}

async fn checkpoints_and_evals(store: Store) {
    let run = store.create_run(&new_run("c")).await.unwrap();
    store.add_checkpoint(run, 20, "runs/c/step-20").await.unwrap();
    let first = store.add_checkpoint(run, 10, "runs/c/step-10").await.unwrap();
    let checkpoints = store.checkpoints(run).await.unwrap();
    assert_eq!(
        checkpoints.iter().map(|c| (c.step, c.path.as_str())).collect::<Vec<_>>(),
        [(10, "runs/c/step-10"), (20, "runs/c/step-20")]
    );
    assert_eq!(checkpoints[0].id, first);
    assert!(matches!(store.add_checkpoint(9999, 1, "x").await, Err(StoreError::NotFound)));

    let eval = |run_id, gym: &str, mean_turns| NewEval {
        run_id,
        model: "runs/c/step-20".into(),
        gym: gym.into(),
        user_kind: "scripted".into(),
        split: "test".into(),
        episodes: 40,
        mean_score: 0.75,
        normalized: 0.5,
        success_rate: 0.25,
        mean_turns,
    };
    store.add_eval(&eval(Some(run), "turtle", 3.5)).await.unwrap();
    store.add_eval(&eval(None, "intention", f64::NAN)).await.unwrap();
    let evals = store.evals().await.unwrap();
    assert_eq!(evals.len(), 2);
    assert_eq!((evals[0].gym.as_str(), evals[0].run_id), ("intention", None));
    assert!(evals[0].mean_turns.is_nan());
    assert_eq!(
        (evals[1].run_id, evals[1].episodes, evals[1].mean_score, evals[1].mean_turns),
        (Some(run), 40, 0.75, 3.5)
    );
    assert!(matches!(store.add_eval(&eval(Some(9999), "x", 1.0)).await, Err(StoreError::NotFound)));
}

async fn writes_are_announced(store: Store) {
    let mut events = store.subscribe();
    let run = store.create_run(&new_run("e")).await.unwrap();
    store.set_run_status(run, RunStatus::Running, "go").await.unwrap();
    store.append_metrics(run, 1, 7, &[("reward".into(), 0.5)]).await.unwrap();
    let id = store.add_transcript(run, 1, 0, 0, false, &record("turtle", 0.5, "finished")).await.unwrap();
    store.add_checkpoint(run, 1, "p").await.unwrap();
    let mut got = Vec::new();
    while let Ok(event) = events.try_recv() {
        got.push(event);
    }
    assert_eq!(
        got,
        [
            StoreEvent::Status { run_id: run, status: RunStatus::Queued, message: String::new() },
            StoreEvent::Status { run_id: run, status: RunStatus::Running, message: "go".into() },
            StoreEvent::Metrics { run_id: run, step: 1, wall_time: 7, values: vec![("reward".into(), 0.5)] },
            StoreEvent::Transcript { run_id: run, id, step: 1 },
            StoreEvent::Checkpoint { run_id: run, step: 1, path: "p".into() },
        ]
    );
    // Failed writes announce nothing.
    let _ = store.append_metrics(9999, 1, 0, &[("reward".into(), 1.0)]).await;
    assert!(events.try_recv().is_err());
}

#[tokio::test]
async fn connect_creates_folders_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/a/b/userrl.db", dir.path().display());
    let store = Store::connect(&url).await.unwrap();
    let run = store.create_run(&new_run("keep")).await.unwrap();
    store.close().await;
    let again = Store::connect(&url).await.unwrap();
    assert_eq!(again.run(run).await.unwrap().unwrap().name, "keep");
    assert!(dir.path().join("a/b/userrl.db").exists());
}

#[tokio::test]
async fn in_memory_sqlite_works() {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    let run = store.create_run(&new_run("mem")).await.unwrap();
    store.append_metrics(run, 1, 0, &[("reward".into(), 1.0)]).await.unwrap();
    assert_eq!(store.metric_keys(run).await.unwrap(), ["reward"]);
}

#[tokio::test]
async fn unknown_urls_are_refused() {
    let err = Store::connect("mysql://u:pw@h/db").await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(ref m) if !m.contains("pw")), "{err}");
}
