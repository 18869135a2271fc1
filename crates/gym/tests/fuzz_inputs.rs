//! Property tests over untrusted input: arbitrary bytes and strings as tool calls, Hermes text, and whole
//! episodes of random calls on every gym. Nothing may panic, every reward must be finite and bounded, and the
//! step budget must hold.

use std::sync::Arc;

use futures::executor::block_on;
use proptest::prelude::*;
use serde_json::json;
use userrl_gym::env::{EnvConfig, Episode};
use userrl_gym::tool::{self, MAX_CONTENT_CHARS};
use userrl_gym::user::ScriptedUser;
use userrl_gym::{Catalog, GymKind};

fn content_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "\\PC{0,80}",
        2 => "[a-zA-Z0-9 ,.?!'-]{0,120}",
        1 => "[\\x00-\\x1f\\u{7f}\\u{202e}\\u{feff}]{0,20}",
        1 => Just("x".repeat(MAX_CONTENT_CHARS + 1)),
        1 => Just("[answer] ".to_string()),
        1 => "(test|TEST|1 2 3 4|-5 0 3.5 7|F1|H2, R3|yes|no|\\{\"name\": 1\\})",
    ]
}

fn choice_strategy() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        4 => prop::sample::select(vec!["action", "answer", "search"]).prop_map(|c| json!(c)),
        1 => Just(json!("finish")),
        1 => "\\PC{0,12}".prop_map(|c| json!(c)),
        1 => Just(json!(7)),
        1 => Just(json!(null)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn tool_arguments_from_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(action) = tool::action_from_bytes(&bytes) {
            let content = action.content();
            prop_assert!(content.chars().count() <= MAX_CONTENT_CHARS);
            prop_assert!(!content.chars().any(|c| c.is_control() && c != '\n' && c != '\t'));
        }
    }

    #[test]
    fn hermes_parsing_of_any_text(text in "\\PC{0,200}", wrap in any::<bool>()) {
        let text = if wrap { format!("<tool_call>{text}</tool_call>") } else { text };
        let parsed = tool::parse_hermes(&text);
        for call in parsed.calls {
            prop_assert!(call.arguments.is_object());
            let _ = call.to_action();
        }
    }
}

/// Random episodes on every gym: each run plays one task with up to 20 random calls.
fn fuzz_gym(kind: GymKind, cases: u32) {
    let catalog = Catalog::builtin(&[kind]).unwrap();
    let gym = catalog.get(kind).unwrap().clone();
    let ids = gym.task_ids(None);
    assert!(!ids.is_empty(), "{kind} has no tasks");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases));
    let calls = prop::collection::vec((choice_strategy(), content_strategy()), 1..20);
    runner
        .run(&(0..ids.len(), calls), |(index, calls)| {
            let config = EnvConfig { seed: index as u64, ..EnvConfig::default() };
            let env = gym.new_env(&ids[index], &config, Arc::new(ScriptedUser)).unwrap();
            let mut episode = Episode::new(env, config.clone());
            for (choice, content) in calls {
                let outcome =
                    block_on(episode.step(tool::action_from_arguments(&json!({"choice": choice, "content": content}))));
                prop_assert!(
                    outcome.reward.is_finite() && (0.0..=1.0 + 1e-9).contains(&outcome.reward),
                    "reward {}",
                    outcome.reward
                );
                prop_assert!(episode.turns().len() <= config.max_steps);
                if episode.is_done() {
                    break;
                }
            }
            let transcript = episode.into_transcript();
            prop_assert!((0.0..=1.0).contains(&transcript.normalized));
            Ok(())
        })
        .unwrap();
}

#[test]
fn random_calls_on_every_gym() {
    for kind in GymKind::ALL {
        fuzz_gym(kind, 300);
    }
}
