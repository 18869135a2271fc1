//! Whole episodes played by the expert (and the random) agent against a person answering through the `HumanChannel`, for every
//! gym: a test "person" who answers each prompt with the controls that say what the scripted user would say
//! gets the same turns, rewards and score as the scripted user's episode, so the gyms' own reward rules score
//! human play. Also: a person who never answers (timeout) or who quits ends the episode as abandoned.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use userrl_gym::eval::run_episode;
use userrl_gym::gyms::{Catalog, Gym, GymKind, intention, search, tau, telepathy, travel, turtle};
use userrl_gym::human::{HumanAnswer, HumanChannel, HumanPrompt, HumanUser, Plan, plan};
use userrl_gym::user::ScriptedUser;
use userrl_gym::{
    Agent, EnvConfig, RandomAgent, Termination, Transcript, User, UserError, UserKind, UserQuery, UserReply,
};

/// How many tasks of each gym are played.
const TASKS_PER_GYM: usize = 4;

/// Sits between the gym and the `HumanUser`: before each question that goes to the person, it hands the
/// person the scripted user's answer (the "script" the person follows).
struct Prompter {
    human: HumanUser,
    script: mpsc::UnboundedSender<UserReply>,
}

#[async_trait::async_trait]
impl User for Prompter {
    fn kind(&self) -> UserKind {
        self.human.kind()
    }
    async fn reply(&self, query: &UserQuery) -> Result<UserReply, UserError> {
        if matches!(plan(query)?, Plan::Ask(_)) {
            let expected = query.scripted_reply()?;
            self.script.send(expected).map_err(|e| UserError::Gone(e.to_string()))?;
        }
        self.human.reply(query).await
    }
    fn abandoned(&self) -> bool {
        self.human.abandoned()
    }
}

fn word(yes: bool, no: bool) -> &'static str {
    if yes {
        "yes"
    } else if no {
        "no"
    } else {
        "maybe"
    }
}

/// The controls a person uses to say what the scripted reply says.
fn answer_like(prompt: &HumanPrompt, reply: &UserReply) -> HumanAnswer {
    let a = HumanAnswer::new();
    match reply {
        UserReply::Turtle(turtle::Reply::Answer(v)) => {
            a.text("answer", word(*v == turtle::Verdict::Yes, *v == turtle::Verdict::No))
        }
        UserReply::Turtle(turtle::Reply::Judgement { scores, .. }) => {
            let ids = |want: f64| {
                scores.iter().enumerate().filter(move |(_, s)| **s == want).map(|(i, _)| format!("c{}", i + 1))
            };
            a.list("covered", ids(1.0)).list("partly", ids(0.5))
        }
        UserReply::Turtle(turtle::Reply::Unavailable) => panic!("the scripted turtle user never fails"),
        UserReply::Telepathy(telepathy::Reply::Answer { response }) => {
            a.text("answer", word(*response == telepathy::Answer::Yes, *response == telepathy::Answer::No))
        }
        UserReply::Telepathy(telepathy::Reply::Judgment { correct, feedback }) => {
            a.text("verdict", if *correct { "right" } else { "wrong" }).text("feedback", feedback)
        }
        UserReply::Telepathy(telepathy::Reply::Unavailable { .. }) => panic!("the scripted host never fails"),
        UserReply::Persuade(r) => a.text("response", &r.response).number("stance", r.stance.index() as i64 + 1),
        UserReply::Intention(intention::Reply::Respond { response, .. }) => a.text("response", response),
        UserReply::Intention(intention::Reply::Judge { is_task_related, covered, .. }) => {
            let ids: Vec<String> =
                if *is_task_related { covered.iter().map(|i| format!("d{i}")).collect() } else { Vec::new() };
            a.list("about", ids)
        }
        UserReply::Search(search::Reply::Judgment { correct, feedback, .. }) => {
            a.text("verdict", if *correct { "right" } else { "wrong" }).text("feedback", feedback)
        }
        UserReply::Travel(travel::Reply::Classify { kind, preference_id }) => {
            let kind_id = match kind {
                travel::UtteranceType::Preference => "preference",
                travel::UtteranceType::Conversation => "conversation",
                travel::UtteranceType::Missing => "missing",
                travel::UtteranceType::Vague => "vague",
            };
            let about: Vec<String> = match kind {
                travel::UtteranceType::Preference => preference_id.iter().cloned().collect(),
                _ => Vec::new(),
            };
            a.text("kind", kind_id).list("about", about)
        }
        UserReply::Travel(travel::Reply::Say { response, .. }) => a.text("response", response),
        UserReply::Travel(travel::Reply::Search { .. }) => {
            panic!("searches are judged by rule, never asked (prompt: {prompt:?})")
        }
        UserReply::Tau(tau::Reply::Customer { text }) => a.text("response", text),
    }
}

struct HumanRun {
    transcript: Transcript,
    prompts: usize,
}

/// The gym's expert, or the random agent (which also sends wrong answers, so judges get asked).
fn agent(gym: &dyn Gym, task: &str, seed: u64, expert: bool) -> Box<dyn Agent> {
    if expert { gym.expert(task, seed).unwrap() } else { Box::new(RandomAgent::new(gym.kind(), seed)) }
}

/// Plays one task against a person who follows the script.
async fn human_episode(gym: &dyn Gym, task: &str, config: &EnvConfig, expert: bool) -> HumanRun {
    let kind = gym.kind();
    let channel = HumanChannel::new(Duration::from_secs(30));
    let (script, mut sheet) = mpsc::unbounded_channel();
    let user = Arc::new(Prompter { human: HumanUser::new(channel.clone()), script });
    let prompts = Arc::new(Mutex::new(0usize));
    let person = {
        let channel = channel.clone();
        let prompts = prompts.clone();
        tokio::spawn(async move {
            while let Some(prompt) = channel.next_prompt().await {
                let expected = sheet.recv().await.expect("a script line for every prompt");
                assert_eq!(prompt.gym, kind);
                assert!(!prompt.controls.is_empty(), "{prompt:?}");
                let answer = answer_like(&prompt, &expected);
                channel.answer(prompt.id, &answer).unwrap_or_else(|e| panic!("{e}: {prompt:?} {answer:?}"));
                // The answered prompt is closed at once: the same id cannot be answered again.
                assert!(channel.answer(prompt.id, &answer).is_err());
                *prompts.lock().await += 1;
            }
        })
    };
    let mut agent = agent(gym, task, config.seed, expert);
    let transcript = run_episode(gym, task, agent.as_mut(), user, config).await.unwrap();
    person.abort();
    let prompts = *prompts.lock().await;
    HumanRun { transcript, prompts }
}

async fn scripted_episode(gym: &dyn Gym, task: &str, config: &EnvConfig, expert: bool) -> Transcript {
    let mut agent = agent(gym, task, config.seed, expert);
    run_episode(gym, task, agent.as_mut(), Arc::new(ScriptedUser), config).await.unwrap()
}

/// The person's episode has the scripted episode's turns, rewards, score, success and ending.
async fn same_as_scripted(kind: GymKind) {
    let catalog = Catalog::builtin(&[kind]).unwrap();
    let gym = catalog.get(kind).unwrap().as_ref();
    let tasks = gym.task_ids(None);
    assert!(!tasks.is_empty());
    let mut prompts = 0;
    for (n, task) in tasks.iter().take(TASKS_PER_GYM).enumerate() {
        for expert in [true, false] {
            let config = EnvConfig { seed: 7 + n as u64, ..EnvConfig::default() };
            let scripted = scripted_episode(gym, task, &config, expert).await;
            let human = human_episode(gym, task, &config, expert).await;
            let t = &human.transcript;
            let who = if expert { "expert" } else { "random" };
            assert_eq!(t.turns, scripted.turns, "{kind} {task} {who}");
            assert_eq!(t.score, scripted.score, "{kind} {task} {who}");
            assert_eq!(t.success, scripted.success, "{kind} {task} {who}");
            assert_eq!(t.termination, scripted.termination, "{kind} {task} {who}");
            prompts += human.prompts;
        }
    }
    if kind == GymKind::Function {
        assert_eq!(prompts, 0, "FunctionGym has no user");
    } else {
        assert!(prompts > 0, "{kind}: the person was never asked");
    }
}

#[tokio::test]
async fn telepathy_person_scores_like_the_script() {
    same_as_scripted(GymKind::Telepathy).await;
}

#[tokio::test]
async fn travel_person_scores_like_the_script() {
    same_as_scripted(GymKind::Travel).await;
}

#[tokio::test]
async fn turtle_person_scores_like_the_script() {
    same_as_scripted(GymKind::Turtle).await;
}

#[tokio::test]
async fn persuade_person_scores_like_the_script() {
    same_as_scripted(GymKind::Persuade).await;
}

#[tokio::test]
async fn intention_person_scores_like_the_script() {
    same_as_scripted(GymKind::Intention).await;
}

#[tokio::test]
async fn search_person_scores_like_the_script() {
    same_as_scripted(GymKind::Search).await;
}

#[tokio::test]
async fn tau_person_scores_like_the_script() {
    same_as_scripted(GymKind::Tau).await;
}

#[tokio::test]
async fn function_needs_no_person() {
    same_as_scripted(GymKind::Function).await;
}

#[tokio::test]
async fn a_person_who_never_answers_abandons_the_episode() {
    let catalog = Catalog::builtin(&[GymKind::Telepathy]).unwrap();
    let gym = catalog.get(GymKind::Telepathy).unwrap();
    let task = gym.task_ids(None)[0].clone();
    let channel = HumanChannel::new(Duration::from_millis(50));
    let user = Arc::new(HumanUser::new(channel.clone()));
    let mut agent = gym.expert(&task, 0).unwrap();
    let t = run_episode(gym.as_ref(), &task, agent.as_mut(), user, &EnvConfig::default()).await.unwrap();
    assert_eq!(t.termination, Termination::Abandoned);
    // The first question timed out; the episode stopped right there instead of playing on.
    assert_eq!(t.turns.len(), 1);
    assert_eq!(t.score, 0.0);
    assert!(!t.success);
    assert!(channel.pending().is_none());
    assert!(channel.abandoned().unwrap().contains("no answer"));
    // Nothing more can be asked or answered.
    assert!(channel.next_prompt().await.is_none());
    assert!(channel.answer(1, &HumanAnswer::new().text("answer", "yes")).is_err());
}

#[tokio::test]
async fn a_person_who_quits_abandons_the_episode() {
    let catalog = Catalog::builtin(&[GymKind::Persuade]).unwrap();
    let gym = catalog.get(GymKind::Persuade).unwrap();
    let task = gym.task_ids(None)[0].clone();
    let channel = HumanChannel::new(Duration::from_secs(30));
    let user = Arc::new(HumanUser::new(channel.clone()));
    let person = {
        let channel = channel.clone();
        tokio::spawn(async move {
            // One argument answered, then the person leaves while the second is open.
            let first = channel.next_prompt().await.unwrap();
            channel
                .answer(first.id, &HumanAnswer::new().text("response", "Not convinced.").number("stance", 2))
                .unwrap();
            let second = channel.next_prompt().await.unwrap();
            assert!(second.id > first.id);
            assert_eq!(second.history.len(), 2, "the first exchange is shown");
            channel.quit("closed the tab");
        })
    };
    let mut agent = gym.expert(&task, 0).unwrap();
    let t = run_episode(gym.as_ref(), &task, agent.as_mut(), user, &EnvConfig::default()).await.unwrap();
    person.await.unwrap();
    assert_eq!(t.termination, Termination::Abandoned);
    assert_eq!(t.turns.len(), 2);
    // Strongly Agree → Agree moved the persuadee one level: 1/6, the gym's own rule.
    assert!((t.turns[0].reward - 1.0 / 6.0).abs() < 1e-5, "{:?}", t.turns[0]);
    assert_eq!(t.turns[0].feedback, "Not convinced.");
    assert_eq!(t.turns[1].reward, 0.0);
    assert_eq!(channel.abandoned().as_deref(), Some("closed the tab"));
}
