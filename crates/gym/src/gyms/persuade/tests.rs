//! Tests of PersuadeGym: the reward rules of reference §4.3, the scripted persuadee, the LLM protocol, the data
//! and the expert.

use super::*;

#[test]
fn data_points_are_understood() {
    let tasks = builtin_tasks().unwrap();
    let mut problems = Vec::new();
    for t in &tasks {
        let concepts: Vec<Vec<Vec<String>>> = t.points.iter().map(|p| p.concepts.clone()).collect();
        let lex = Lexicon::new(&t.claim, &t.argument, &concepts);
        for (i, p) in t.points.iter().enumerate() {
            let a = lex.analyze(&p.text);
            if a.made != vec![i] {
                problems.push(format!("{} point {i}: made {:?} denied {:?}: {}", t.id, a.made, a.denied, p.text));
            }
        }
        for (n, turn) in expert_plan(t).iter().enumerate() {
            let text: Vec<&str> = turn.iter().map(|&i| t.points[i].text.as_str()).collect();
            let text = format!("{} {}", OPENERS[0], text.join(" "));
            let a = lex.analyze(&text);
            let mut want = turn.clone();
            want.sort();
            if a.made != want {
                problems.push(format!("{} turn {n}: made {:?}, want {:?}", t.id, a.made, want));
            }
        }
        let a = lex.analyze(&t.argument);
        if !a.made.is_empty() {
            problems.push(format!("{} own argument makes {:?}", t.id, a.made));
        }
        if t.reachable_levels() < 6 {
            problems.push(format!("{} reaches only {} levels", t.id, t.reachable_levels()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

use std::collections::VecDeque;
use std::sync::Mutex;

use futures::executor::block_on;

use crate::env::{Episode, StepOutcome, Termination};
use crate::eval::{self, AgentSpec, EvalPlan};
use crate::gyms::Catalog;
use crate::user::ScriptedUser;

fn gym() -> &'static PersuadeGym {
    static GYM: std::sync::LazyLock<PersuadeGym> = std::sync::LazyLock::new(|| PersuadeGym::builtin().unwrap());
    &GYM
}

fn config(repay_levels: bool) -> EnvConfig {
    let mut config = EnvConfig::default();
    config.compat.persuade.repay_levels = repay_levels;
    config
}

fn episode_with(task: &str, user: Arc<dyn User>, repay_levels: bool) -> Episode {
    let config = config(repay_levels);
    Episode::new(gym().new_env(task, &config, user).unwrap(), config)
}

fn scripted(task: &str) -> Episode {
    episode_with(task, Arc::new(ScriptedUser), false)
}

fn say(ep: &mut Episode, text: &str) -> StepOutcome {
    block_on(ep.step(Ok(Action::Answer(text.into()))))
}

const THIRD: f64 = 0.333333;
const SIXTH: f64 = 0.166667;

/// An LLM-like user that answers with a fixed sequence of stances.
struct FixedUser(Mutex<VecDeque<Stance>>);

impl FixedUser {
    fn new(stances: &[Stance]) -> Arc<FixedUser> {
        Arc::new(FixedUser(Mutex::new(stances.iter().copied().collect())))
    }
}

#[async_trait::async_trait]
impl User for FixedUser {
    fn kind(&self) -> UserKind {
        UserKind::Llm
    }
    async fn reply(&self, _query: &UserQuery) -> Result<UserReply, UserError> {
        let stance = self.0.lock().unwrap().pop_front().unwrap_or(Stance::StronglyAgree);
        Ok(UserReply::Persuade(Reply {
            thought: String::new(),
            response: format!("Now I am at {}.", stance.label()),
            stance,
            points: Vec::new(),
        }))
    }
}

/// A user whose endpoint is down.
struct GoneUser;

#[async_trait::async_trait]
impl User for GoneUser {
    fn kind(&self) -> UserKind {
        UserKind::Llm
    }
    async fn reply(&self, _query: &UserQuery) -> Result<UserReply, UserError> {
        Err(UserError::Gone("connection refused".into()))
    }
}

#[test]
fn builtin_split_is_80_20_and_stable() {
    let a = builtin_tasks().unwrap();
    assert_eq!(a.len(), 100);
    assert_eq!(a.iter().filter(|t| t.split == Split::Test).count(), 20);
    assert_eq!(a, builtin_tasks().unwrap());
    assert_eq!(gym().task_ids(Some(Split::Train)).len(), 80);
    for t in &a {
        assert!((4..=6).contains(&t.points.len()), "{}", t.id);
        assert!(t.rebuttals.len() >= 2, "{}", t.id);
    }
}

#[test]
fn stance_labels_parse_and_reject_unknown() {
    for s in Stance::ALL {
        assert_eq!(Stance::parse(s.label()), Some(s));
        assert_eq!(Stance::from_index(s.index()), s);
    }
    assert_eq!(Stance::parse("  strongly disagree. "), Some(Stance::StronglyDisagree));
    assert_eq!(Stance::parse("Partly_Agree"), Some(Stance::PartlyAgree));
    assert_eq!(Stance::parse("Somewhat Agree"), None);
    assert_eq!(Stance::parse("Disagree strongly"), None);
    assert_eq!(Stance::parse(""), None);
    // Reference §4.3: the tracked score is the index over 6.
    assert_eq!(Stance::Neutral.score(), 0.5);
    assert_eq!(Stance::Agree.score(), SIXTH);
}

// Reference §4.3: Δ = idx(new) − idx(prev); 0 when Δ ≤ 0, else round(Δ/6, 6) (Δ = 6 gives 1.0).
#[test]
fn reward_is_levels_gained_over_six() {
    let repay = Compat { repay_levels: true };
    assert_eq!(stance_reward(Stance::StronglyAgree, Stance::Neutral, Stance::StronglyAgree, &repay), 0.5);
    assert_eq!(stance_reward(Stance::Agree, Stance::PartlyAgree, Stance::Agree, &repay), SIXTH);
    assert_eq!(stance_reward(Stance::StronglyAgree, Stance::StronglyDisagree, Stance::StronglyAgree, &repay), 1.0);
    assert_eq!(stance_reward(Stance::Neutral, Stance::Agree, Stance::Neutral, &repay), 0.0);
    assert_eq!(stance_reward(Stance::Neutral, Stance::Neutral, Stance::Neutral, &repay), 0.0);
    // The default pays only beyond the furthest stance reached.
    let sane = Compat::default();
    assert_eq!(stance_reward(Stance::Agree, Stance::Disagree, Stance::Neutral, &sane), THIRD);
    assert_eq!(stance_reward(Stance::Agree, Stance::Neutral, Stance::Neutral, &sane), 0.0);
    assert_eq!(stance_reward(Stance::Agree, Stance::Neutral, Stance::Neutral, &repay), THIRD);
}

// Reference §4.3 (bug kept behind `repay_levels`): the stance may move back and the original pays the same levels
// again; by default an episode sums to at most 1.
#[test]
fn moving_back_is_repaid_only_with_the_compat_switch() {
    let path = [Stance::Neutral, Stance::Agree, Stance::Neutral, Stance::StronglyDisagree];
    let play = |repay: bool| {
        let mut ep = episode_with("policy-01", FixedUser::new(&path), repay);
        let rewards: Vec<f64> = (0..4).map(|i| say(&mut ep, &format!("argument {i}")).reward).collect();
        (rewards, ep.into_transcript())
    };
    let (rewards, t) = play(false);
    assert_eq!(rewards, vec![0.5, 0.0, 0.0, 0.5]);
    assert_eq!(t.score, 1.0);
    assert!(t.success);
    assert_eq!(t.termination, Termination::Terminated);
    let (rewards, t) = play(true);
    assert_eq!(rewards, vec![0.5, 0.0, THIRD, 0.5]);
    assert!(t.score > 1.0);
    assert_eq!(t.normalized, 1.0);
}

// Reference §4.3: the episode ends when the stance reaches Strongly Disagree; `[finish]` ends it with reward 0;
// the budget truncates at 16 turns.
#[test]
fn termination_finish_and_budget() {
    let mut ep = episode_with("policy-01", FixedUser::new(&[Stance::StronglyDisagree]), false);
    let out = say(&mut ep, "Here is my argument.");
    assert_eq!((out.reward, out.terminated), (1.0, true));
    assert_eq!(out.feedback, "Now I am at Strongly Disagree.");

    let mut ep = scripted("policy-01");
    let out = block_on(ep.step(Ok(Action::Finish)));
    assert_eq!((out.reward, out.terminated), (0.0, true));
    assert!(out.feedback.contains("Strongly Agree"));
    assert_eq!(ep.into_transcript().termination, Termination::Finished);

    let mut ep = scripted("policy-01");
    for i in 0..16 {
        let out = say(&mut ep, &format!("Consider the weather on day {i}."));
        assert_eq!(out.truncated, i == 15);
        assert_eq!(out.reward, 0.0);
    }
    assert_eq!(ep.into_transcript().termination, Termination::MaxSteps);
}

// Reference §4.3: when the persuadee fails, the feedback is the fixed fallback, the stance is unchanged and the
// reward is 0.
#[test]
fn fallback_keeps_the_stance() {
    let mut ep = episode_with("policy-01", Arc::new(GoneUser), false);
    let out = say(&mut ep, "Think of the shops that would lose customers.");
    assert_eq!(out.feedback, FALLBACK_RESPONSE);
    assert_eq!((out.reward, out.terminated), (0.0, false));
    let task = gym().task("policy-01").unwrap().clone();
    let query = Query {
        task,
        lexicon: Arc::new(Lexicon::default()),
        stance: Stance::Neutral,
        history: Vec::new(),
        argument: "x".into(),
        made: Vec::new(),
        seed: 0,
    };
    let reply = UserRole::fallback(&query);
    assert_eq!((reply.response.as_str(), reply.stance), (FALLBACK_RESPONSE, Stance::Neutral));
}

#[test]
fn scripted_user_needs_points() {
    let mut task = gym().task("policy-01").unwrap().as_ref().clone();
    task.points.clear();
    let bare = PersuadeGym::from_tasks(vec![task]).unwrap();
    let err = bare.new_env("policy-01", &EnvConfig::default(), Arc::new(ScriptedUser)).err().unwrap();
    assert!(matches!(err, GymError::User(UserError::NoScriptedData { .. })));
    assert!(bare.new_env("policy-01", &EnvConfig::default(), FixedUser::new(&[])).is_ok());
    assert!(bare.expert("policy-01", 0).is_err());
}

#[test]
fn jsonl_round_trip() {
    let lines: Vec<String> = gym().export_tasks().iter().map(|v| v.to_string()).collect();
    let again = PersuadeGym::from_jsonl(&lines.join("\n"), "test").unwrap();
    assert_eq!(again.tasks(), gym().tasks());
    assert_eq!(again.task("science-01").unwrap(), gym().task("science-01").unwrap());
    assert!(PersuadeGym::from_jsonl("{\"id\": 3}", "bad").is_err());
}

#[test]
fn import_explains_that_the_statements_are_missing() {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/userrl-data"));
    match import_original(root) {
        Err(GymError::Data { message, .. }) => assert!(message.contains("not available")),
        other => panic!("expected a data error, got {other:?}"),
    }
}

// --- The scripted persuadee -----------------------------------------------------------------------------------

// policy-01 (ban cars from city centres): points 0 and 1 are worth 2 levels, 2..4 are worth 1.

#[test]
fn a_new_point_moves_the_stance_by_its_strength() {
    let mut ep = scripted("policy-01");
    let out = say(&mut ep, "Think about elderly residents who rely on their car to get to the doctor.");
    assert_eq!(out.reward, THIRD);
    assert!(out.feedback.contains("elderly"), "{}", out.feedback);
    let out = say(&mut ep, "Also, the buses in most cities are already overcrowded at rush hour.");
    assert_eq!(out.reward, SIXTH);
}

#[test]
fn synonyms_and_word_order_are_understood() {
    for text in [
        "A wheelchair user who depends on driving would be cut off from the centre.",
        "Stranded at home: that is where a ban would leave frail pensioners.",
        "People with limited mobility need a car. Without it they would be isolated.",
    ] {
        let mut ep = scripted("policy-01");
        assert_eq!(say(&mut ep, text).reward, THIRD, "{text}");
    }
}

#[test]
fn a_negated_point_counts_for_the_claim() {
    let mut ep = scripted("policy-01");
    assert_eq!(say(&mut ep, "Local shops would lose customers to the malls.").reward, THIRD);
    let out = say(&mut ep, "Of course, disabled people do not rely on cars at all.");
    assert_eq!(out.reward, 0.0);
    assert!(
        out.feedback.contains("supports my view")
            || out.feedback.contains("for the claim")
            || out.feedback.contains("my case"),
        "{}",
        out.feedback
    );
    // The moved-back level is not paid again by default.
    let out = say(&mut ep, "The traffic would just be displaced into the surrounding suburbs.");
    assert_eq!(out.reward, 0.0);
}

#[test]
fn agreeing_with_the_claim_moves_back_one_level() {
    for (repay, regained) in [(false, SIXTH), (true, THIRD)] {
        let mut ep = episode_with("policy-01", Arc::new(ScriptedUser), repay);
        // Strongly Agree -> Partly Agree.
        assert_eq!(say(&mut ep, "Shops in the centre would lose sales to out-of-town malls.").reward, THIRD);
        // Back to Agree.
        let out = say(&mut ep, "Honestly, I agree with you that cars make streets dangerous.");
        assert_eq!(out.reward, 0.0);
        // Agree -> Neutral: by default only the level beyond Partly Agree is paid; with `repay_levels` (the
        // original) the regained level is paid again.
        let out = say(&mut ep, "Elderly residents rely on a car, and a ban would leave them stranded.");
        assert_eq!(out.reward, regained, "repay_levels = {repay}");
    }
}

#[test]
fn repetition_earns_nothing() {
    let mut ep = scripted("policy-01");
    let text = "Shops and restaurants in the centre would lose customers and sales.";
    assert_eq!(say(&mut ep, text).reward, THIRD);
    let out = say(&mut ep, text);
    assert_eq!(out.reward, 0.0);
    assert!(out.feedback.contains("already") || out.feedback.contains("over this"), "{}", out.feedback);
    // A paraphrase of a point already made earns nothing either.
    let out = say(&mut ep, "Retailers would see their revenue collapse, believe me.");
    assert_eq!(out.reward, 0.0);
}

#[test]
fn keyword_stuffing_earns_nothing() {
    let task = gym().task("policy-01").unwrap().clone();
    let all: Vec<String> = task.points.iter().flat_map(|p| p.concepts.iter().flatten().cloned()).collect();
    let stuffed = [
        all.join(", "),
        all.join(" ").replace('*', ""),
        all.join("\n"),
        format!("Here is my argument. {}", all.join(" ").replace('*', "")),
    ];
    for text in stuffed {
        let mut ep = scripted("policy-01");
        let out = say(&mut ep, &text);
        assert_eq!(out.reward, 0.0, "{text}");
    }
}

#[test]
fn every_point_at_once_earns_at_most_two_levels() {
    for id in ["policy-01", "science-01", "economy-20"] {
        let task = gym().task(id).unwrap().clone();
        let everything: Vec<&str> = task.points.iter().map(|p| p.text.as_str()).collect();
        let mut ep = scripted(id);
        let out = say(&mut ep, &everything.join(" "));
        assert_eq!(out.reward, THIRD, "{id}");
        // Every point is spent: saying them again, together or one by one, earns nothing more.
        for text in &everything {
            assert_eq!(say(&mut ep, text).reward, 0.0);
        }
        assert!(ep.into_transcript().score <= THIRD);
    }
}

#[test]
fn off_topic_and_bare_assertions_move_nothing() {
    let mut ep = scripted("policy-01");
    let out = say(&mut ep, "My favourite colour is blue and I enjoy jazz on Sundays.");
    assert_eq!(out.reward, 0.0);
    assert!(out.feedback.contains("beside the point") || out.feedback.contains("has to do with"), "{}", out.feedback);
    let out = say(&mut ep, "You are wrong. The claim is false and banning cars is a bad idea.");
    assert_eq!(out.reward, 0.0);
    assert!(out.feedback.contains("wrong") || out.feedback.contains("false"), "{}", out.feedback);
    let out = say(&mut ep, "Cities should think harder about private cars in their centres.");
    assert_eq!(out.reward, 0.0);
    assert!(MISSING.iter().any(|m| out.feedback.contains(m)), "{}", out.feedback);
}

#[test]
fn replies_never_reveal_unmade_points() {
    for task in builtin_tasks().unwrap() {
        let mut ep = scripted(&task.id);
        for (i, text) in
            ["I think you should reconsider this.", "There are serious downsides you ignore.", "Trust me, it is wrong."]
                .iter()
                .enumerate()
        {
            let out = say(&mut ep, text);
            assert_eq!(out.reward, 0.0);
            for p in &task.points {
                assert!(!out.feedback.contains(p.gist.as_str()), "{} turn {i} leaks `{}`", task.id, p.gist);
            }
        }
    }
}

#[test]
fn empty_and_odd_text_is_handled() {
    let mut ep = scripted("policy-01");
    for text in ["...", "🙂🙂🙂", "\u{0}\u{7}", &"x".repeat(8000)] {
        let out = say(&mut ep, text);
        assert_eq!(out.reward, 0.0);
        assert!(!out.feedback.is_empty());
    }
}

// --- The LLM persuadee ----------------------------------------------------------------------------------------

fn llm_query() -> Query {
    Query {
        task: gym().task("policy-01").unwrap().clone(),
        lexicon: Arc::new(Lexicon::default()),
        stance: Stance::PartlyAgree,
        history: vec![Exchange { argument: "Shops suffer.".into(), response: "Maybe a little.".into() }],
        argument: "Buses are already overcrowded.".into(),
        made: Vec::new(),
        seed: 0,
    }
}

#[test]
fn prompt_carries_claim_argument_stance_and_history() {
    let q = llm_query();
    let p = UserRole::prompt(&q);
    assert!(p.user.contains(&q.task.claim));
    assert!(p.user.contains(&q.task.argument));
    assert!(p.user.contains("Your stance before this turn: Partly Agree"));
    assert!(p.user.contains("Turn 1:\nPersuader: Shops suffer.\nYou: Maybe a little."));
    assert!(p.user.contains("Buses are already overcrowded."));
    for field in ["\"thought\"", "\"response\"", "\"stance\""] {
        assert!(p.system.contains(field));
    }
    for s in Stance::ALL {
        assert!(p.system.contains(s.label()));
    }
    // The hidden points are never part of the LLM's prompt.
    assert!(!p.user.contains(&q.task.points[0].text));
}

#[test]
fn parse_reads_realistic_model_output() {
    let q = llm_query();
    let fenced = "```json\n{\"thought\": \"fair\", \"response\": \"You have a point.\", \"stance\": \"Neutral\"}\n```";
    let r = UserRole::parse(&q, fenced).unwrap();
    assert_eq!((r.stance, r.response.as_str(), r.thought.as_str()), (Stance::Neutral, "You have a point.", "fair"));
    let prose = "Sure, here is my answer: {\"response\": \"Not convinced.\", \"stance\": \"agree\"} Hope it helps.";
    assert_eq!(UserRole::parse(&q, prose).unwrap().stance, Stance::Agree);
    let python = "{'thought': 'ok', 'response': 'Fine, I see it.', 'stance': 'Partly Disagree'}";
    assert_eq!(UserRole::parse(&q, python).unwrap().stance, Stance::PartlyDisagree);
    for bad in [
        "{\"thought\": \"x\", \"response\": \"y\", \"stance\": \"Somewhat Agree\"}",
        "{\"thought\": \"x\", \"response\": \"y\"}",
        "{\"thought\": \"x\", \"stance\": \"Agree\"}",
        "{\"response\": \"  \", \"stance\": \"Agree\"}",
        "{\"response\": \"y\", \"stance\": 3}",
        "I strongly disagree now.",
    ] {
        assert!(UserRole::parse(&q, bad).is_none(), "{bad}");
    }
}

// --- The expert -------------------------------------------------------------------------------------------

#[test]
fn expert_persuades_and_random_does_not() {
    let catalog = Catalog::builtin(&[GymKind::Persuade]).unwrap();
    let user: Arc<dyn User> = Arc::new(ScriptedUser);
    let run =
        |agent| block_on(eval::evaluate(&catalog, &EvalPlan::new(Split::Test, agent), user.clone(), |_| {})).unwrap().0;
    let expert = run(AgentSpec::Expert);
    let random = run(AgentSpec::Random);
    let (e, r) = (&expert.rows[0], &random.rows[0]);
    assert_eq!(e.episodes, 20);
    assert!(e.mean_normalized >= 0.8, "expert {}", e.mean_normalized);
    assert!(e.mean_turns <= 3.0, "expert turns {}", e.mean_turns);
    assert!(r.mean_normalized <= 0.2, "random {}", r.mean_normalized);
    println!("expert {:.3} ({:.2} turns), random {:.3}", e.mean_normalized, e.mean_turns, r.mean_normalized);
}

#[test]
fn expert_messages_are_fluent_sentences() {
    let task = gym().task("lifestyle-01").unwrap().clone();
    let mut expert = PersuadeExpert::new(task, 7);
    let turn = block_on(expert.act(&[]));
    let AgentTurn::Call { arguments, .. } = turn else { panic!("expected a call") };
    let content = arguments["content"].as_str().unwrap();
    assert!(!text::is_keyword_list(content));
    assert!(content.ends_with('.'));
    assert_eq!(arguments["choice"], "answer");
}
