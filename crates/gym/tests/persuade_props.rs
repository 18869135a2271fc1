//! Property tests of PersuadeGym: whatever an agent sends (empty, huge, control characters, unicode, fragments of
//! the hidden concepts), the episode never panics, every reward is finite and within one turn's bound (at most 2
//! stance levels, 2/6), and an episode never sums above 1 with the default rules.

use std::sync::{Arc, LazyLock};

use futures::executor::block_on;
use proptest::prelude::*;
use userrl_gym::gyms::persuade::PersuadeGym;
use userrl_gym::tool::{self, Choice};
use userrl_gym::user::ScriptedUser;
use userrl_gym::{EnvConfig, Episode, Gym};

static GYM: LazyLock<PersuadeGym> = LazyLock::new(|| PersuadeGym::builtin().unwrap());

/// Words the persuadee listens for in two tasks, so random text sometimes makes real points.
static VOCAB: LazyLock<Vec<String>> = LazyLock::new(|| {
    let mut words: Vec<String> = ["policy-01", "science-01"]
        .iter()
        .flat_map(|id| GYM.task(id).unwrap().points.clone())
        .flat_map(|p| p.concepts.into_iter().flatten().chain(std::iter::once(p.text)))
        .flat_map(|phrase| phrase.split_whitespace().map(|w| w.trim_end_matches('*').to_string()).collect::<Vec<_>>())
        .collect();
    words.extend(
        ["not", "no", "never", "I", "agree", "you", "are", "wrong", "the", "a", ".", ",", "\n"].map(String::from),
    );
    words
});

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,300}",
        "[a-z ,.;!?\n]{0,1500}",
        prop::collection::vec(prop::sample::select(VOCAB.clone()), 0..60).prop_map(|w| w.join(" ")),
        Just(String::new()),
        Just("\u{0}\u{1b}[31m\u{7f}".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_arguments_never_break_the_episode(texts in prop::collection::vec(text(), 1..5), repay in any::<bool>(), task in prop::sample::select(vec!["policy-01", "science-01", "economy-07"])) {
        let mut config = EnvConfig::default();
        config.compat.persuade.repay_levels = repay;
        let env = GYM.new_env(task, &config, Arc::new(ScriptedUser)).unwrap();
        let mut episode = Episode::new(env, config);
        for t in &texts {
            let out = block_on(episode.step(tool::action_from_content(Choice::Answer, t)));
            prop_assert!(out.reward.is_finite());
            prop_assert!((0.0..=0.333334).contains(&out.reward), "reward {}", out.reward);
            prop_assert!(!out.feedback.is_empty());
            if episode.is_done() {
                break;
            }
        }
        let transcript = episode.into_transcript();
        if !repay {
            prop_assert!(transcript.score <= 1.0 + 1e-9);
        }
        prop_assert!((0.0..=1.0).contains(&transcript.normalized));
    }
}
