//! The human channel's rules, seen from the browser's side: what a prompt looks like (as JSON), which answers
//! are refused (an option that was not offered, a stance outside 1..7, empty or over-long text, an unknown
//! field), that a refused answer leaves the same prompt open, and that an answered or unknown prompt id is
//! refused (no replay).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use userrl_gym::eval::run_episode;
use userrl_gym::gyms::{Catalog, GymKind};
use userrl_gym::human::{Control, HumanAnswer, HumanChannel, HumanError, HumanPrompt, HumanUser, MAX_TEXT_CHARS};
use userrl_gym::{EnvConfig, Transcript};

/// Starts an expert episode of the gym's first task against a person behind a fresh channel.
fn start(kind: GymKind) -> (Arc<HumanChannel>, tokio::task::JoinHandle<Transcript>) {
    let catalog = Catalog::builtin(&[kind]).unwrap();
    let gym = catalog.get(kind).unwrap().clone();
    let channel = HumanChannel::new(Duration::from_secs(30));
    let user = Arc::new(HumanUser::new(channel.clone()));
    let episode = tokio::spawn(async move {
        let task = gym.task_ids(None)[0].clone();
        let mut agent = gym.expert(&task, 0).unwrap();
        run_episode(gym.as_ref(), &task, agent.as_mut(), user, &EnvConfig::default()).await.unwrap()
    });
    (channel, episode)
}

fn has_control(prompt: &HumanPrompt, name: &str) -> bool {
    prompt.controls.iter().any(|c| c.name() == name)
}

/// Refuses `answer` and checks the prompt is still the open one.
fn refused(channel: &HumanChannel, prompt: &HumanPrompt, answer: HumanAnswer) -> HumanError {
    let error = channel.answer(prompt.id, &answer).expect_err("the answer should be refused");
    assert_eq!(channel.pending().as_ref(), Some(prompt), "a refused answer must leave the prompt open");
    error
}

fn invalid_field(error: &HumanError) -> &str {
    match error {
        HumanError::Invalid { name, .. } => name,
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

#[tokio::test]
async fn persuade_refuses_bad_stances_and_texts_and_keeps_the_prompt() {
    let (channel, episode) = start(GymKind::Persuade);
    let prompt = channel.next_prompt().await.unwrap();
    assert_eq!(prompt.gym, GymKind::Persuade);
    assert!(!prompt.message.is_empty(), "the agent's argument is shown");
    assert!(prompt.context.iter().any(|s| s.label == "Your claim"));
    let Some(Control::Scale { min: 1, max: 7, labels, .. }) = prompt.controls.iter().find(|c| c.name() == "stance")
    else {
        panic!("a 1..7 stance scale: {prompt:?}");
    };
    assert_eq!(labels.len(), 7);
    assert_eq!(labels[0], "Strongly Agree");

    let good = || HumanAnswer::new().text("response", "You have a point, but not enough.");
    for stance in [0, 8, -1, 1000] {
        let e = refused(&channel, &prompt, good().number("stance", stance));
        assert_eq!(invalid_field(&e), "stance", "{stance}");
        assert!(e.to_string().contains("outside 1..7"), "{e}");
    }
    let e = refused(&channel, &prompt, good().text("stance", "Agree"));
    assert_eq!(invalid_field(&e), "stance");
    assert_eq!(refused(&channel, &prompt, good()), HumanError::Missing("stance".into()));
    let e = refused(&channel, &prompt, HumanAnswer::new().text("response", "   ").number("stance", 3));
    assert_eq!(invalid_field(&e), "response");
    assert!(e.to_string().contains("empty"), "{e}");
    let long = "a".repeat(MAX_TEXT_CHARS + 1);
    let e = refused(&channel, &prompt, HumanAnswer::new().text("response", long).number("stance", 3));
    assert!(e.to_string().contains(&MAX_TEXT_CHARS.to_string()), "{e}");
    assert_eq!(
        refused(&channel, &prompt, good().number("stance", 2).text("thought", "secret")),
        HumanError::Unexpected("thought".into())
    );
    // Exactly the limit is fine (multi-byte characters count as one).
    let at_limit = "é".repeat(MAX_TEXT_CHARS);
    channel.answer(prompt.id, &HumanAnswer::new().text("response", at_limit).number("stance", 2)).unwrap();

    // The answered prompt cannot be answered again, and an id never issued is refused too.
    let again = channel.answer(prompt.id, &good().number("stance", 7));
    assert_eq!(again, Err(HumanError::NotOpen(prompt.id)));
    let next = channel.next_prompt().await.unwrap();
    assert!(next.id > prompt.id);
    assert_eq!(channel.answer(prompt.id, &good().number("stance", 7)), Err(HumanError::NotOpen(prompt.id)));
    assert_eq!(channel.answer(next.id + 1, &good().number("stance", 7)), Err(HumanError::NotOpen(next.id + 1)));
    assert_eq!(channel.pending(), Some(next.clone()));
    // The history shows the first exchange.
    assert_eq!(next.history.len(), 2);
    assert_eq!(next.history[1].speaker, "you");

    channel.quit("test over");
    let t = episode.await.unwrap();
    assert_eq!(t.termination, userrl_gym::Termination::Abandoned);
    // The stance moved from Strongly Agree to Agree on the first turn: the gym's reward for one level.
    assert!(t.turns[0].reward > 0.0);
}

#[tokio::test]
async fn telepathy_buttons_accept_only_offered_options() {
    let (channel, episode) = start(GymKind::Telepathy);
    let prompt = channel.next_prompt().await.unwrap();
    assert!(has_control(&prompt, "answer"), "{prompt:?}");
    // The person sees the hidden entity.
    assert!(prompt.context.iter().any(|s| s.label.contains("entity")));
    let e = refused(&channel, &prompt, HumanAnswer::new().text("answer", "perhaps"));
    assert!(e.to_string().contains("yes, no, maybe"), "{e}");
    let e = refused(&channel, &prompt, HumanAnswer::new().list("answer", ["yes"]));
    assert_eq!(invalid_field(&e), "answer");
    assert_eq!(refused(&channel, &prompt, HumanAnswer::new()), HumanError::Missing("answer".into()));
    channel.answer(prompt.id, &HumanAnswer::new().text("answer", "no")).unwrap();
    channel.quit("test over");
    let t = episode.await.unwrap();
    assert_eq!(t.turns[0].feedback, "No");
}

#[tokio::test]
async fn travel_preference_checkboxes_are_checked() {
    let (channel, episode) = start(GymKind::Travel);
    // Searches are judged by rule; the first prompt is the judgement of the agent's first message.
    let prompt = channel.next_prompt().await.unwrap();
    let Some(Control::Checkboxes { options, max: Some(1), .. }) = prompt.controls.iter().find(|c| c.name() == "about")
    else {
        panic!("preference checkboxes: {prompt:?}");
    };
    let offered = options[0].id.clone();
    let kind = |k: &str| HumanAnswer::new().text("kind", k);
    let e = refused(&channel, &prompt, kind("preference").list("about", ["P99"]));
    assert!(e.to_string().contains("was not offered"), "{e}");
    if options.len() > 1 {
        let e = refused(&channel, &prompt, kind("preference").list("about", [offered.clone(), options[1].id.clone()]));
        assert!(e.to_string().contains("at most 1"), "{e}");
    }
    let e = refused(&channel, &prompt, kind("preference").list("about", [offered.clone(), offered.clone()]));
    assert!(e.to_string().contains("twice"), "{e}");
    let e = refused(&channel, &prompt, kind("preference"));
    assert_eq!(invalid_field(&e), "about");
    let e = refused(&channel, &prompt, kind("vague").list("about", [offered.clone()]));
    assert_eq!(invalid_field(&e), "about");
    let e = refused(&channel, &prompt, kind("chit-chat"));
    assert_eq!(invalid_field(&e), "kind");

    // Marking the preference as asked about leads to the reveal prompt for that very preference.
    channel.answer(prompt.id, &kind("preference").list("about", [offered.clone()])).unwrap();
    let reveal = channel.next_prompt().await.unwrap();
    assert!(has_control(&reveal, "response"));
    assert!(reveal.context.iter().any(|s| s.label == format!("Reveal now: {offered}")), "{reveal:?}");
    channel.answer(reveal.id, &HumanAnswer::new().text("response", "I really can't stand long layovers.")).unwrap();
    channel.quit("test over");
    let t = episode.await.unwrap();
    let revealed = t.turns.iter().find(|turn| turn.feedback == "I really can't stand long layovers.").unwrap();
    assert!(revealed.reward > 0.0, "eliciting a preference is rewarded: {revealed:?}");
}

#[tokio::test]
async fn turtle_criteria_cannot_be_both_covered_and_partly() {
    let (channel, episode) = start(GymKind::Turtle);
    // Questions first ("Maybe" to each), then the story to judge point by point.
    let story = loop {
        let prompt = channel.next_prompt().await.unwrap();
        if has_control(&prompt, "covered") {
            break prompt;
        }
        channel.answer(prompt.id, &HumanAnswer::new().text("answer", "maybe")).unwrap();
    };
    let Some(Control::Checkboxes { options, .. }) = story.controls.iter().find(|c| c.name() == "covered") else {
        panic!("criteria checkboxes: {story:?}");
    };
    let ids: Vec<String> = options.iter().map(|o| o.id.clone()).collect();
    let e = refused(
        &channel,
        &story,
        HumanAnswer::new().list("covered", [ids[0].clone()]).list("partly", [ids[0].clone()]),
    );
    assert_eq!(invalid_field(&e), "partly");
    let e = refused(&channel, &story, HumanAnswer::new().list("covered", ["c99"]));
    assert_eq!(invalid_field(&e), "covered");
    // Every point ticked: the story is right, the puzzle is solved with the full score.
    channel.answer(story.id, &HumanAnswer::new().list("covered", ids)).unwrap();
    let t = episode.await.unwrap();
    assert!(t.success);
    assert!((t.score - 1.0).abs() < 1e-9, "{}", t.score);
    assert_eq!(t.termination, userrl_gym::Termination::Terminated);
}

#[tokio::test]
async fn intention_judge_offers_only_open_details() {
    let (channel, episode) = start(GymKind::Intention);
    let respond = channel.next_prompt().await.unwrap();
    assert!(has_control(&respond, "response"));
    channel.answer(respond.id, &HumanAnswer::new().text("response", "Around 50 euros.")).unwrap();
    let judge = channel.next_prompt().await.unwrap();
    let Some(Control::Checkboxes { options, .. }) = judge.controls.iter().find(|c| c.name() == "about") else {
        panic!("detail checkboxes: {judge:?}");
    };
    let first = options[0].id.clone();
    let e = refused(&channel, &judge, HumanAnswer::new().list("about", ["d99"]));
    assert_eq!(invalid_field(&e), "about");
    channel.answer(judge.id, &HumanAnswer::new().list("about", [first.clone()])).unwrap();
    // The covered detail is no longer offered in the next judgement.
    let respond = channel.next_prompt().await.unwrap();
    channel.answer(respond.id, &HumanAnswer::new().text("response", "Blue.")).unwrap();
    let judge = channel.next_prompt().await.unwrap();
    let Some(Control::Checkboxes { options, .. }) = judge.controls.iter().find(|c| c.name() == "about") else {
        panic!("detail checkboxes: {judge:?}");
    };
    assert!(options.iter().all(|o| o.id != first));
    channel.quit("test over");
    let t = episode.await.unwrap();
    assert!(t.turns[0].reward > 0.0, "a covered detail is rewarded by the gym's rule");
    assert_eq!(t.turns[0].feedback, "Around 50 euros.");
}

#[tokio::test]
async fn prompts_and_answers_travel_as_json() {
    let (channel, episode) = start(GymKind::Persuade);
    let prompt = channel.next_prompt().await.unwrap();
    let value = serde_json::to_value(&prompt).unwrap();
    assert_eq!(value["gym"], "persuade");
    assert_eq!(value["id"], prompt.id);
    let types: Vec<&str> = value["controls"].as_array().unwrap().iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["text", "scale"]);
    let back: HumanPrompt = serde_json::from_value(value).unwrap();
    assert_eq!(back, prompt);
    // What the browser posts.
    let answer: HumanAnswer =
        serde_json::from_value(json!({"values": {"response": "Fair enough.", "stance": 4}})).unwrap();
    channel.answer(prompt.id, &answer).unwrap();
    channel.quit("test over");
    let t = episode.await.unwrap();
    assert_eq!(t.turns[0].feedback, "Fair enough.");
    // Strongly Agree (1) → Neutral (4): three levels, the gym's reward for them.
    assert!((t.turns[0].reward - 0.5).abs() < 1e-9, "{}", t.turns[0].reward);
}

#[tokio::test]
async fn a_cancelled_episode_withdraws_its_prompt() {
    let (channel, episode) = start(GymKind::Telepathy);
    let prompt = channel.next_prompt().await.unwrap();
    episode.abort();
    assert!(episode.await.unwrap_err().is_cancelled());
    assert_eq!(channel.pending(), None);
    assert_eq!(
        channel.answer(prompt.id, &HumanAnswer::new().text("answer", "yes")),
        Err(HumanError::NotOpen(prompt.id))
    );
}
