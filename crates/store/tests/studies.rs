//! Crowd studies on both dialects: study definitions, one session per worker, consent, compare-and-set state
//! changes, the single completion code, episode results, answers (each prompt once), flags, exclusions and the
//! real-user eval rows.

mod common;

use userrl_store::{Assignment, NewSessionError, Store, StoreError, TOO_FAST_MEDIAN_MS};

const _: () = assert!(400 < TOO_FAST_MEDIAN_MS, "the fast answers below must count as too fast");
use userrl_types::TranscriptRecord;
use userrl_types::study::{
    EpisodeResult, EpisodeState, Platform, PlatformIds, SessionState, StudyAnswer, StudyFlag, StudySpec, StudyStatus,
    StudyTask,
};

both_dialects! {
    studies_round_trip_and_slugs_are_unique,
    one_session_per_worker_and_token_lookup,
    session_states_move_once,
    completion_code_is_issued_once,
    episodes_end_once_and_answers_once,
    flags_find_fast_duplicate_and_early,
    human_evals_skip_excluded_and_abandoned,
    lost_episodes_restart_without_their_answers,
}

fn spec(slug: &str) -> StudySpec {
    StudySpec {
        name: format!("Study {slug}"),
        slug: slug.into(),
        tasks: vec![
            StudyTask { gym: "telepathy".into(), task_id: "t1".into() },
            StudyTask { gym: "travel".into(), task_id: "v1".into() },
        ],
        split: "test".into(),
        models: vec!["expert".into()],
        episodes_per_worker: 2,
        time_limit_s: 1800,
        max_turns: 8,
        pay_note: "£2".into(),
        instructions: "Play the user.".into(),
        consent_text: "I agree <b>to</b> take part.".into(),
        consent_version: "v1".into(),
        platform: Platform::Prolific,
        completion_url: "https://app.prolific.com/submissions/complete".into(),
        completion_code: String::new(),
    }
}

fn ids(worker: &str) -> PlatformIds {
    PlatformIds {
        worker_id: worker.into(),
        study_ref: "S1".into(),
        session_ref: format!("sess-{worker}"),
        submit_to: String::new(),
    }
}

fn assignments() -> Vec<Assignment> {
    vec![
        Assignment { gym: "telepathy".into(), task_id: "t1".into(), model: "expert".into() },
        Assignment { gym: "travel".into(), task_id: "v1".into(), model: "expert".into() },
    ]
}

fn result(score: f64, success: bool, termination: &str) -> EpisodeResult {
    EpisodeResult {
        score,
        normalized: score,
        success,
        termination: termination.into(),
        turns: 3,
        record: TranscriptRecord { gym: "telepathy".into(), task_id: "t1".into(), ..Default::default() },
    }
}

async fn new_session(store: &Store, study: i64, worker: &str) -> i64 {
    store
        .create_worker_session(study, Platform::Prolific, &ids(worker), &format!("hash-{worker}"), &assignments())
        .await
        .unwrap()
}

async fn studies_round_trip_and_slugs_are_unique(store: Store) {
    let id = store.create_study(&spec("pilot-1"), StudyStatus::Open).await.unwrap();
    let row = store.study(id).await.unwrap().unwrap();
    assert_eq!(row.spec, spec("pilot-1"));
    assert_eq!(row.status, StudyStatus::Open);
    assert_eq!(store.study_by_slug("pilot-1").await.unwrap().unwrap().id, id);
    assert!(store.study_by_slug("nope").await.unwrap().is_none());

    match store.create_study(&spec("pilot-1"), StudyStatus::Draft).await {
        Err(StoreError::Invalid(m)) => assert!(m.starts_with("slug:"), "{m}"),
        other => panic!("a second study with the same slug: {other:?}"),
    }
    let mut bad = spec("Bad Slug");
    assert!(
        matches!(store.create_study(&bad, StudyStatus::Open).await, Err(StoreError::Invalid(m)) if m.starts_with("slug"))
    );
    bad = spec("ok");
    bad.tasks.clear();
    assert!(
        matches!(store.create_study(&bad, StudyStatus::Open).await, Err(StoreError::Invalid(m)) if m.starts_with("tasks"))
    );
    bad = spec("ok");
    bad.completion_url = "javascript:alert(1)".into();
    assert!(
        matches!(store.create_study(&bad, StudyStatus::Open).await, Err(StoreError::Invalid(m)) if m.starts_with("completion_url"))
    );

    // A fixed completion code is kept with the study; Prolific only, and a plain token.
    let mut fixed = spec("fixed-code");
    fixed.completion_code = "C1X2Y3Z4".into();
    let fixed_id = store.create_study(&fixed, StudyStatus::Open).await.unwrap();
    assert_eq!(store.study(fixed_id).await.unwrap().unwrap().spec.completion_code, "C1X2Y3Z4");
    for (platform, code) in
        [(Platform::Mturk, "C1X2Y3Z4"), (Platform::Prolific, "two words"), (Platform::Prolific, "<b>")]
    {
        bad = spec("ok");
        bad.platform = platform;
        bad.completion_code = code.into();
        assert!(
            matches!(store.create_study(&bad, StudyStatus::Open).await, Err(StoreError::Invalid(m)) if m.starts_with("completion_code")),
            "{platform:?} {code:?}"
        );
    }

    store.set_study_status(id, StudyStatus::Closed).await.unwrap();
    assert_eq!(store.study(id).await.unwrap().unwrap().status, StudyStatus::Closed);
    assert!(matches!(store.set_study_status(999, StudyStatus::Open).await, Err(StoreError::NotFound)));
    let second = store.create_study(&spec("pilot-2"), StudyStatus::Draft).await.unwrap();
    let all: Vec<i64> = store.studies().await.unwrap().iter().map(|s| s.id).collect();
    assert_eq!(all, [second, fixed_id, id]);
}

async fn one_session_per_worker_and_token_lookup(store: Store) {
    let study = store.create_study(&spec("s"), StudyStatus::Open).await.unwrap();
    let a = new_session(&store, study, "W1").await;
    let again = store.create_worker_session(study, Platform::Prolific, &ids("W1"), "other-hash", &assignments()).await;
    assert!(matches!(again, Err(NewSessionError::Exists)), "a second session for the same worker");
    // The same worker id on another platform is another person.
    store.create_worker_session(study, Platform::Mturk, &ids("W1"), "hash-mturk", &[]).await.unwrap();
    // A token hash is unique too: a collision never lets two sessions share a token.
    let clash = store.create_worker_session(study, Platform::Prolific, &ids("W2"), "hash-W1", &assignments()).await;
    assert!(matches!(clash, Err(NewSessionError::Exists)));
    assert!(store.worker_session_for(study, Platform::Prolific, "W2").await.unwrap().is_none(), "rolled back");

    let by_token = store.worker_session_by_token("hash-W1").await.unwrap().unwrap();
    assert_eq!(by_token.id, a);
    assert_eq!(by_token.ids, ids("W1"));
    assert_eq!(by_token.state, SessionState::Consent);
    assert!(!by_token.code_issued);
    assert!(store.worker_session_by_token("hash-nobody").await.unwrap().is_none());
    let by_worker = store.worker_session_for(study, Platform::Prolific, "W1").await.unwrap().unwrap();
    assert_eq!(by_worker.id, a);

    let episodes = store.session_episodes(a).await.unwrap();
    assert_eq!(episodes.len(), 2);
    assert_eq!((episodes[0].index, episodes[0].gym.as_str()), (0, "telepathy"));
    assert_eq!((episodes[1].index, episodes[1].gym.as_str()), (1, "travel"));
    assert!(episodes.iter().all(|e| e.state == EpisodeState::Assigned && e.score.is_nan()));
    let counts = store.assignment_counts(study).await.unwrap();
    assert_eq!(counts[&("travel".to_string(), "v1".to_string(), "expert".to_string())], 1);
    let missing = store.create_worker_session(999, Platform::Prolific, &ids("W9"), "h9", &assignments()).await;
    assert!(matches!(missing, Err(NewSessionError::Store(StoreError::NotFound))));
}

async fn session_states_move_once(store: Store) {
    let study = store.create_study(&spec("s"), StudyStatus::Open).await.unwrap();
    let s = new_session(&store, study, "W1").await;
    assert!(!store.set_worker_session_state(s, SessionState::Instructions, SessionState::Episodes).await.unwrap());
    assert!(store.record_consent(s, "v1").await.unwrap());
    assert!(!store.record_consent(s, "v2").await.unwrap(), "consent is recorded once");
    let row = store.worker_session(s).await.unwrap().unwrap();
    assert_eq!(row.state, SessionState::Instructions);
    assert_eq!(row.consent_version.as_deref(), Some("v1"));
    assert!(row.consent_at.unwrap() > 1_700_000_000_000);
    assert!(store.set_worker_session_state(s, SessionState::Instructions, SessionState::Episodes).await.unwrap());
    assert!(!store.set_worker_session_state(s, SessionState::Instructions, SessionState::Episodes).await.unwrap());
    assert!(store.set_worker_session_state(s, SessionState::Episodes, SessionState::Expired).await.unwrap());
    let row = store.worker_session(s).await.unwrap().unwrap();
    assert_eq!(row.state, SessionState::Expired);
    assert!(row.finished_at.is_some());
    assert!(!store.issue_completion_code(s, "CODE1").await.unwrap(), "an expired session gets no code");
}

async fn completion_code_is_issued_once(store: Store) {
    let study = store.create_study(&spec("s"), StudyStatus::Open).await.unwrap();
    let s = new_session(&store, study, "W1").await;
    assert!(!store.issue_completion_code(s, "EARLY").await.unwrap(), "no code before the episodes");
    store.record_consent(s, "v1").await.unwrap();
    store.set_worker_session_state(s, SessionState::Instructions, SessionState::Episodes).await.unwrap();
    assert!(store.issue_completion_code(s, "C0DE-ONE").await.unwrap());
    assert!(!store.issue_completion_code(s, "C0DE-TWO").await.unwrap(), "the code is never replaced");
    let row = store.worker_session(s).await.unwrap().unwrap();
    assert_eq!(row.state, SessionState::Completed);
    assert_eq!(row.completion_code.as_deref(), Some("C0DE-ONE"));
    assert!(row.code_issued && row.finished_at.is_some());
}

async fn episodes_end_once_and_answers_once(store: Store) {
    let study = store.create_study(&spec("s"), StudyStatus::Open).await.unwrap();
    let s = new_session(&store, study, "W1").await;
    let e = store.session_episodes(s).await.unwrap()[0].id;
    assert!(!store.end_study_episode(e, &result(1.0, true, "terminated")).await.unwrap(), "not started");
    assert!(store.start_study_episode(e).await.unwrap());
    assert!(!store.start_study_episode(e).await.unwrap());
    let answer = |prompt_id, ms, text: &str| StudyAnswer {
        episode_id: e,
        prompt_id,
        answer: format!("{{\"response\":\"{text}\"}}"),
        text: text.into(),
        elapsed_ms: ms,
        created_at: 0,
    };
    store.add_study_answer(&answer(1, 4_000, "a")).await.unwrap();
    store.add_study_answer(&answer(2, 6_000, "b\0c")).await.unwrap();
    assert!(matches!(store.add_study_answer(&answer(2, 10, "again")).await, Err(StoreError::Invalid(_))));
    assert!(matches!(
        store.add_study_answer(&StudyAnswer { episode_id: 999_999, ..answer(1, 1, "x") }).await,
        Err(StoreError::NotFound)
    ));
    assert!(store.end_study_episode(e, &result(0.75, true, "terminated")).await.unwrap());
    assert!(!store.end_study_episode(e, &result(0.0, false, "abandoned")).await.unwrap(), "the first result stays");
    let (row, record) = store.study_episode(e).await.unwrap().unwrap();
    assert_eq!(
        (row.state, row.score, row.success, row.termination.as_str()),
        (EpisodeState::Ended, 0.75, true, "terminated")
    );
    assert_eq!(row.answer_ms, [4_000, 6_000]);
    assert_eq!(record.unwrap().task_id, "t1");
    let answers = store.study_answers(study).await.unwrap();
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[1].0, s);
    assert_eq!(answers[1].1.text, "b\u{fffd}c");
    assert!(store.study_episode(999_999).await.unwrap().is_none());
}

async fn flags_find_fast_duplicate_and_early(store: Store) {
    let study = store.create_study(&spec("s"), StudyStatus::Open).await.unwrap();
    let (a, b, c) = (
        new_session(&store, study, "A").await,
        new_session(&store, study, "B").await,
        new_session(&store, study, "C").await,
    );
    let first = |s| {
        let store = store.clone();
        async move { store.session_episodes(s).await.unwrap()[0].id }
    };
    let (ea, eb, ec) = (first(a).await, first(b).await, first(c).await);
    let text = "I would like a quiet hotel near the beach";
    for (episode, prompt, ms, t) in [
        (ea, 1, 300, "yes"),
        (ea, 2, 400, "no"),
        (ea, 3, 9_000, text),
        (eb, 1, 5_000, "  I would like a QUIET hotel near the beach "),
        (eb, 2, 7_000, "ok"),
        (ec, 1, 3_000, "ok"),
        (ec, 2, 3_000, "ok"),
    ] {
        let answer = StudyAnswer {
            episode_id: episode,
            prompt_id: prompt,
            answer: "{}".into(),
            text: t.into(),
            elapsed_ms: ms,
            created_at: 0,
        };
        store.add_study_answer(&answer).await.unwrap();
    }
    store.start_study_episode(ec).await.unwrap();
    store.end_study_episode(ec, &result(0.0, false, "abandoned")).await.unwrap();
    store.record_consent(b, "v1").await.unwrap();
    store.set_worker_session_state(b, SessionState::Instructions, SessionState::Expired).await.unwrap();

    let flags = store.study_flags(study).await.unwrap();
    assert!(flags.contains(&StudyFlag::TooFast { session_id: a, episode_id: ea, median_ms: 400 }), "{flags:?}");
    let dup = |s, o| StudyFlag::DuplicateText { session_id: s, other_session_id: o, text: text.to_lowercase() };
    assert!(flags.contains(&dup(a, b)) && flags.contains(&dup(b, a)), "{flags:?}");
    assert!(flags.iter().any(|f| matches!(f, StudyFlag::LeftEarly { session_id, .. } if *session_id == c)));
    assert!(flags.iter().any(|f| matches!(f, StudyFlag::LeftEarly { session_id, .. } if *session_id == b)));
    assert!(!flags.iter().any(|f| matches!(f, StudyFlag::TooFast { session_id, .. } if *session_id != a)));
    assert!(
        !flags.iter().any(|f| matches!(f, StudyFlag::DuplicateText { session_id, .. } if *session_id == c)),
        "short texts are not duplicates"
    );

    let progress = store.study_progress(study).await.unwrap();
    assert_eq!((progress.sessions, progress.consented, progress.expired, progress.episodes_assigned), (3, 1, 1, 6));
    assert_eq!(progress.episodes_ended, 1);
    assert!(progress.mean_score.is_nan(), "an abandoned episode is not scored");
    assert_eq!(progress.median_answer_ms, Some(3_000));
}

async fn human_evals_skip_excluded_and_abandoned(store: Store) {
    let study = store.create_study(&spec("s"), StudyStatus::Open).await.unwrap();
    let mut ended = Vec::new();
    for (worker, score, success, termination) in [
        ("A", 1.0, true, "terminated"),
        ("B", 0.5, false, "max_steps"),
        ("C", 0.0, false, "abandoned"),
        ("D", 0.9, true, "terminated"),
    ] {
        let s = new_session(&store, study, worker).await;
        let e = store.session_episodes(s).await.unwrap()[0].id;
        store.start_study_episode(e).await.unwrap();
        store.end_study_episode(e, &result(score, success, termination)).await.unwrap();
        ended.push(s);
    }
    store.set_excluded(ended[3], true, "bot-like answers").await.unwrap();
    let excluded = store.worker_session(ended[3]).await.unwrap().unwrap();
    assert!(excluded.excluded);
    assert_eq!(excluded.exclusion_reason, "bot-like answers");
    assert!(matches!(store.set_excluded(999, true, "x").await, Err(StoreError::NotFound)));

    let rows = store.human_evals().await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(
        (r.model.as_str(), r.gym.as_str(), r.user_kind.as_str(), r.split.as_str()),
        ("expert", "telepathy", "human", "test")
    );
    assert_eq!(r.episodes, 2);
    assert!((r.mean_score - 0.75).abs() < 1e-12);
    assert!((r.success_rate - 0.5).abs() < 1e-12);
    assert!((r.mean_turns - 3.0).abs() < 1e-12);
    assert!(r.created_at > 0);

    store.set_excluded(ended[3], false, "").await.unwrap();
    let rows = store.human_evals().await.unwrap();
    assert_eq!(rows[0].episodes, 3, "taking an exclusion back counts the episode again");
    let progress = store.study_progress(study).await.unwrap();
    assert!((progress.mean_score - 0.8).abs() < 1e-12);
}

async fn lost_episodes_restart_without_their_answers(store: Store) {
    let study = store.create_study(&spec("s"), StudyStatus::Open).await.unwrap();
    let s = new_session(&store, study, "W1").await;
    let e = store.session_episodes(s).await.unwrap()[0].id;
    assert!(!store.restart_study_episode(e).await.unwrap(), "only a running episode restarts");
    store.start_study_episode(e).await.unwrap();
    let answer = StudyAnswer {
        episode_id: e,
        prompt_id: 1,
        answer: "{}".into(),
        text: "hi".into(),
        elapsed_ms: 5,
        created_at: 0,
    };
    store.add_study_answer(&answer).await.unwrap();
    assert!(store.restart_study_episode(e).await.unwrap());
    let (row, record) = store.study_episode(e).await.unwrap().unwrap();
    assert_eq!((row.state, row.started_at, row.answer_ms.len()), (EpisodeState::Assigned, None, 0));
    assert!(record.is_none());
    store.start_study_episode(e).await.unwrap();
    store.add_study_answer(&answer).await.unwrap();
}
