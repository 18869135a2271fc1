//! Tests of SearchGym: the world and its index, each rule of reference §4.6, the scripted judge and its
//! resistance to exploits, the LLM judge's parsing and fallback, the expert and the random baseline, import.

use std::sync::{Arc, LazyLock};

use futures::executor::block_on;
use proptest::prelude::*;

use super::*;
use crate::env::{Episode, Termination};
use crate::eval::{AgentSpec, EvalPlan, evaluate};
use crate::gyms::Catalog;
use crate::tool::ToolError;
use crate::user::ScriptedUser;

static GYM: LazyLock<SearchGym> = LazyLock::new(|| SearchGym::builtin().unwrap());

fn task_of(kind: AnswerKind, two_hop: bool) -> Arc<SearchTask> {
    GYM.tasks.all().iter().find(|t| t.answer_kind == Some(kind) && (t.hops.len() == 2) == two_hop).unwrap().clone()
}

fn episode_with(task: &SearchTask, user: Arc<dyn User>) -> Episode {
    let env = GYM.new_env(&task.id, &EnvConfig::default(), user).unwrap();
    Episode::new(env, EnvConfig::default())
}

fn episode(task: &SearchTask) -> Episode {
    episode_with(task, Arc::new(ScriptedUser))
}

fn answer(ep: &mut Episode, text: &str) -> crate::env::StepOutcome {
    block_on(ep.step(Ok(Action::Answer(text.into()))))
}

fn judged(task: &SearchTask, text: &str) -> bool {
    match UserRole::scripted(&Query::Judge { task: Arc::new(task.clone()), answer: text.into() }).unwrap() {
        Reply::Judgment { correct, .. } => correct,
    }
}

/// A stand-in for the LLM user: a fixed reply, or a failure.
struct StubUser(Option<Reply>);

#[async_trait::async_trait]
impl User for StubUser {
    fn kind(&self) -> crate::user::UserKind {
        crate::user::UserKind::Llm
    }
    async fn reply(&self, _query: &UserQuery) -> Result<UserReply, UserError> {
        self.0.clone().map(UserReply::Search).ok_or_else(|| UserError::Gone("endpoint down".into()))
    }
}

// ---------------------------------------------------------------------------------------------------------
// World, corpus, tasks

#[test]
fn world_is_large_unique_and_deterministic() {
    let w = &*WORLD;
    assert!(w.docs.len() >= 2000, "{} documents", w.docs.len());
    let titles: std::collections::HashSet<&str> = w.docs.iter().map(|d| d.title.as_str()).collect();
    assert_eq!(titles.len(), w.docs.len(), "titles are unique");
    assert_eq!(w.questions.len(), 200);
    let again = world::generate(world::WORLD_SEED, 200);
    assert_eq!(again.docs, w.docs);
    assert_eq!(again.questions, w.questions);
    assert!(w.docs.iter().all(|d| d.text.chars().count() <= corpus::SNIPPET_CHARS), "snippets show whole documents");
    let single = w.questions.iter().filter(|q| q.hops.len() == 1).count();
    let double = w.questions.iter().filter(|q| q.hops.len() == 2).count();
    assert_eq!((single, double), (100, 100));
}

#[test]
fn split_is_160_train_40_test_and_stable() {
    let tasks = builtin_tasks();
    assert_eq!(tasks.len(), 200);
    assert_eq!(GYM.task_ids(Some(Split::Test)).len(), 40);
    assert_eq!(GYM.task_ids(Some(Split::Train)).len(), 160);
    assert_eq!(builtin_tasks(), tasks);
}

// Every question is answerable: each hop's natural query finds the document holding the fact, and its snippet
// states the fact.
#[test]
fn every_hop_query_finds_its_fact() {
    for task in GYM.tasks.all() {
        assert!(!task.hops.is_empty());
        for hop in &task.hops {
            let results = GYM.search(&hop.query, corpus::MAX_RESULTS);
            let found = results.iter().find(|(title, _)| *title == hop.title);
            let (_, snippet) =
                found.unwrap_or_else(|| panic!("{}: `{}` not found by `{}`", task.id, hop.title, hop.query));
            assert!(judge::normalise(snippet).contains(&judge::normalise(&hop.finds)), "{}: {snippet}", task.id);
        }
        assert_eq!(task.hops.last().unwrap().finds, task.answer);
    }
}

#[test]
fn odd_queries_never_fail() {
    for q in [
        "",
        "   ",
        "title:",
        "\"unclosed",
        "AND OR NOT",
        "*",
        "[1 TO",
        "a~2^",
        "((((",
        "body:\"x\" -",
        "🦀 émigré",
        "\u{0}\u{7}",
        "+-&&||!(){}[]^\"~*?:\\/",
    ] {
        let r = GYM.search(q, 5);
        assert!(r.len() <= 5);
    }
    assert!(GYM.search("river", 0).is_empty());
    let long = "Korrin ".repeat(2000);
    assert!(GYM.search(&long, 5).len() <= 5);
}

// ---------------------------------------------------------------------------------------------------------
// Rules of §4.6

// Reference §4.6: `[search] q` returns up to 5 results as "i. title\n- Snippet: text" after
// "Search results for '<q>':", reward 0, not terminal.
#[test]
fn search_lists_up_to_five_results() {
    let task = task_of(AnswerKind::Year, false);
    let mut ep = episode(&task);
    let query = &task.hops[0].query;
    let out = block_on(ep.step(Ok(Action::Search(query.clone()))));
    assert!(out.feedback.starts_with(&format!("Search results for '{query}':\n1. ")), "{}", out.feedback);
    assert_eq!(out.feedback.matches("\n- Snippet: ").count(), 5);
    assert!(out.feedback.contains(&format!("{}\n- Snippet: ", task.hops[0].title)));
    assert_eq!((out.reward, out.terminated, out.truncated), (0.0, false, false));
}

// Reference §4.6: at most 5 searches; further searches get a message, reward 0, and still use the turn.
#[test]
fn sixth_search_is_refused_but_counts_as_a_turn() {
    let task = task_of(AnswerKind::City, true);
    let mut ep = episode(&task);
    for _ in 0..MAX_SEARCHES {
        let out = block_on(ep.step(Ok(Action::Search("capital city".into()))));
        assert!(out.feedback.starts_with("Search results for"));
    }
    let out = block_on(ep.step(Ok(Action::Search(task.hops[0].query.clone()))));
    assert!(out.feedback.contains("maximum number of searches"), "{}", out.feedback);
    assert!(!out.feedback.contains(&task.answer));
    assert_eq!((out.reward, out.terminated), (0.0, false));
    assert_eq!(ep.turns().len(), MAX_SEARCHES + 1);
    // Answering still works after the search budget is spent.
    let out = answer(&mut ep, &task.answer);
    assert_eq!((out.reward, out.terminated), (1.0, true));
}

// Reference §4.6: a normalised exact match with the gold answer pays 1.0, ends the episode, and says
// "Correct! Your answer '<a>' is correct."
#[test]
fn exact_answer_pays_once_and_ends() {
    let task = task_of(AnswerKind::Person, true);
    let mut ep = episode(&task);
    let shouted = format!("  {}!! ", task.answer.to_uppercase());
    let out = answer(&mut ep, &shouted);
    assert_eq!(out.feedback, format!("Correct! Your answer '{}!!' is correct.", task.answer.to_uppercase()));
    assert_eq!((out.reward, out.terminated), (1.0, true));
    let out = answer(&mut ep, &task.answer);
    assert_eq!(out.reward, 0.0, "nothing more after the end");
    let t = ep.into_transcript();
    assert_eq!((t.score, t.normalized, t.success, t.termination), (1.0, 1.0, true, Termination::Terminated));
}

// Reference §4.6 (our task format): an alias counts as an exact match too.
#[test]
fn alias_is_an_exact_match() {
    let task = task_of(AnswerKind::Sea, false);
    let mut ep = episode_with(&task, Arc::new(StubUser(None)));
    // The stub judge is down, so only the rule check can make this correct.
    let out = answer(&mut ep, &task.aliases[0]);
    assert_eq!((out.reward, out.terminated), (1.0, true));
}

// Reference §4.6: a wrong answer pays 0, says "Incorrect.", and the episode goes on.
#[test]
fn wrong_answer_pays_nothing_and_continues() {
    let task = task_of(AnswerKind::Year, true);
    let mut ep = episode(&task);
    let out = answer(&mut ep, "1234");
    assert!(out.feedback.starts_with("Incorrect."), "{}", out.feedback);
    assert_eq!((out.reward, out.terminated), (0.0, false));
    let t = ep.into_transcript();
    assert_eq!((t.score, t.success), (0.0, false));
}

// Reference §4.6: `[action]` is not a SearchGym choice.
#[test]
fn action_is_refused_by_the_episode() {
    let task = task_of(AnswerKind::Year, false);
    let mut ep = episode(&task);
    let out = block_on(ep.step(Ok(Action::Action("hello".into()))));
    assert_eq!(
        out.feedback,
        ToolError::ChoiceNotAllowed { choice: "action".into(), allowed: "`search`, `answer`".into() }.to_string()
    );
    assert_eq!((out.reward, out.terminated), (0.0, false));
}

// Reference §4.6: `[finish]` terminates with reward 0; 16 turns truncate.
#[test]
fn finish_ends_and_budget_truncates() {
    let task = task_of(AnswerKind::Year, false);
    let mut ep = episode(&task);
    let out = block_on(ep.step(Ok(Action::Finish)));
    assert_eq!((out.reward, out.terminated), (0.0, true));
    assert!(!out.feedback.contains(&task.answer));
    let mut ep = episode(&task);
    for i in 0..16 {
        let out = answer(&mut ep, "I do not know");
        assert_eq!(out.truncated, i == 15);
    }
    assert_eq!(ep.into_transcript().termination, Termination::MaxSteps);
}

// ---------------------------------------------------------------------------------------------------------
// The scripted judge

// Reference §4.6: the judge accepts exact, equivalent and synonymous forms in the question's context.
#[test]
fn scripted_judge_accepts_equivalent_forms() {
    let year = task_of(AnswerKind::Year, false);
    let y: u32 = year.answer.parse().unwrap();
    let words = |n: u32| {
        let tens = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];
        let units = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];
        let teens = [
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
        ];
        let two = |m: u32| match m {
            0..=9 => units[m as usize].to_string(),
            10..=19 => teens[(m - 10) as usize].to_string(),
            _ if m.is_multiple_of(10) => tens[(m / 10) as usize].to_string(),
            _ => format!("{}-{}", tens[(m / 10) as usize], units[(m % 10) as usize]),
        };
        let low = if n.is_multiple_of(100) { "hundred".to_string() } else { two(n % 100) };
        format!("{} {}", two(n / 100), low)
    };
    for text in [
        format!("It was founded in {y}."),
        format!("in the year {y}"),
        format!("Answer: {y}"),
        words(y),
        format!("It was {}.", words(y)),
    ] {
        assert!(judged(&year, &text), "{text}");
    }
    let person = task_of(AnswerKind::Person, false);
    let surname = &person.aliases[0];
    for text in [
        format!("It was {}.", person.answer),
        format!("The founder is {surname}."),
        format!("{} ({surname})", person.answer),
        // Word order: "surname, given name".
        format!("{surname}, {}", person.answer.split(' ').next().unwrap()),
    ] {
        assert!(judged(&person, &text), "{text}");
    }
    let city = task_of(AnswerKind::City, false);
    assert!(judged(&city, &format!("The city of {}", city.answer)));
    let sea = task_of(AnswerKind::Sea, false);
    assert!(judged(&sea, &format!("It flows into the {}.", sea.aliases[0])));
    assert!(judged(&sea, &format!("the {}", sea.answer)));
}

// Word order, other names and negation: "not X" and the wrong entity are refused.
#[test]
fn scripted_judge_refuses_wrong_negated_and_unsure_answers() {
    let city = task_of(AnswerKind::City, true);
    let other_city = WORLD.questions.iter().find(|q| q.kind == AnswerKind::City && q.answer != city.answer).unwrap();
    assert!(!judged(&city, &other_city.answer));
    assert!(!judged(&city, &format!("It is not {}.", city.answer)));
    assert!(!judged(&city, &format!("I'm not sure, {}", city.answer)));
    assert!(!judged(&city, "I do not know"));
    let person = task_of(AnswerKind::Person, true);
    let parts: Vec<&str> = person.answer.split(' ').collect();
    // A surname with somebody else's given name is a different person.
    let other_first = WORLD.first_names.iter().find(|f| **f != parts[0].to_lowercase()).unwrap();
    assert!(!judged(&person, &format!("{other_first} {}", parts[1])));
}

// Anti-exploit: listing candidates in one answer earns nothing, whatever the wording.
#[test]
fn listing_several_candidates_is_wrong() {
    let year = task_of(AnswerKind::Year, true);
    let y: u32 = year.answer.parse().unwrap();
    for text in [
        format!("{y} or {}", y + 8),
        format!("{} or {y}", y - 3),
        format!("either {y} or {}", y + 1),
        format!("{y}, {}", y + 1),
        format!("{y} {}", y + 1),
        format!("{}/{y}", y - 1),
        format!("between {} and {y}", y - 5),
    ] {
        assert!(!judged(&year, &text), "{text}");
        let mut ep = episode(&year);
        assert_eq!(answer(&mut ep, &text).reward, 0.0, "{text}");
    }
    let person = task_of(AnswerKind::Person, false);
    let rival = WORLD.questions.iter().find(|q| q.kind == AnswerKind::Person && q.answer != person.answer).unwrap();
    for text in [
        format!("{} or {}", person.answer, rival.answer),
        format!("{}, {}", rival.answer, person.answer),
        format!("{} and {}", person.answer, rival.answer),
        format!("Either {} or {}", rival.aliases[0], person.aliases[0]),
    ] {
        assert!(!judged(&person, &text), "{text}");
    }
    // Every city the world knows, in one answer.
    let city = task_of(AnswerKind::City, false);
    let all: Vec<&str> =
        WORLD.questions.iter().filter(|q| q.kind == AnswerKind::City).map(|q| q.answer.as_str()).collect();
    assert!(!judged(&city, &all.join(" ")));
    assert!(!judged(&city, &all.join(", ")));
}

// Anti-exploit: pasting search results, keyword stuffing or repeating the answer earns nothing.
#[test]
fn pasting_results_and_keyword_stuffing_are_wrong() {
    let task = task_of(AnswerKind::Company, false);
    let results = GYM.search(&task.hops[0].query, 5);
    let pasted: String = results.iter().map(|(t, s)| format!("{t} {s} ")).collect();
    assert!(judge::normalise(&pasted).contains(&judge::normalise(&task.answer)));
    assert!(!judged(&task, &pasted));
    let stuffed = format!("company builder founded works industries {} holdings bridge tower", task.answer);
    assert!(!judged(&task, &stuffed));
    // Repeating the answer is still one candidate: it pays what the plain answer pays, once.
    let year = task_of(AnswerKind::Year, false);
    let mut ep = episode(&year);
    let out = answer(&mut ep, &format!("{0} {0} {0}", year.answer));
    assert_eq!((out.reward, out.terminated), (1.0, true));
    assert_eq!(ep.into_transcript().score, 1.0);
    // Repeating a wrong answer stays wrong and pays nothing.
    let mut ep = episode(&year);
    for _ in 0..3 {
        assert_eq!(answer(&mut ep, "1111").reward, 0.0);
    }
}

// The judge's feedback never gives the gold answer away.
#[test]
fn judge_feedback_never_leaks_the_answer() {
    for task in GYM.tasks.all().iter().take(60) {
        for text in ["no idea", "1700", "Korrin Bridge", "the river", &format!("{} or something", task.answer)] {
            let Reply::Judgment { correct, feedback, .. } =
                UserRole::scripted(&Query::Judge { task: task.clone(), answer: text.into() }).unwrap();
            assert!(!correct, "{}: {text}", task.id);
            assert!(!judge::mentions(&feedback, &task.answer), "{feedback}");
        }
    }
    // An LLM judge that blurts out the gold answer is censored by the environment.
    let task = task_of(AnswerKind::City, false);
    let leaky = Reply::Judgment {
        correct: false,
        reasoning: String::new(),
        feedback: format!("The answer is {}.", task.answer),
    };
    let mut ep = episode_with(&task, Arc::new(StubUser(Some(leaky))));
    let out = answer(&mut ep, "somewhere");
    assert!(!out.feedback.contains(&task.answer), "{}", out.feedback);
}

// ---------------------------------------------------------------------------------------------------------
// The LLM judge

#[test]
fn llm_judge_prompt_carries_question_answer_and_gold() {
    let task = task_of(AnswerKind::Year, true);
    let p = UserRole::prompt(&Query::Judge { task: task.clone(), answer: "around 1800".into() });
    assert!(p.user.contains(&task.question) && p.user.contains("around 1800") && p.user.contains(&task.answer));
    assert!(p.user.contains("\"judgment\"") && p.user.contains("\"feedback\"") && p.user.contains("\"reasoning\""));
    assert!(p.system.contains("never reveal"));
    assert_eq!(p.max_tokens, Some(512));
}

#[test]
fn llm_judge_replies_are_parsed_tolerantly() {
    let task = task_of(AnswerKind::Year, false);
    let q = Query::Judge { task, answer: "x".into() };
    let verdict =
        |text: &str| UserRole::parse(&q, text).map(|Reply::Judgment { correct, feedback, .. }| (correct, feedback));
    assert_eq!(
        verdict("```json\n{\"reasoning\": \"same year\", \"judgment\": \"Yes\", \"feedback\": \"Well done.\"}\n```"),
        Some((true, "Well done.".into()))
    );
    assert_eq!(
        verdict(
            "Let me check. {\"reasoning\": \"different\", \"judgment\": \"No\", \"feedback\": \"Check the founding date.\"} Done."
        ),
        Some((false, "Check the founding date.".into()))
    );
    assert_eq!(verdict("{'reasoning': 'ok', 'judgment': 'yes.', 'feedback': 'Good'}"), Some((true, "Good".into())));
    assert_eq!(verdict("{\"judgment\": \"NO\"}"), Some((false, String::new())));
    assert_eq!(verdict("{\"reasoning\": \"hmm\", \"feedback\": \"?\"}"), None, "judgment missing");
    assert_eq!(verdict("{\"judgment\": \"maybe\"}"), None);
    assert_eq!(verdict("{\"judgment\": 3}"), None);
    assert_eq!(verdict("Yes, that is right."), None, "no JSON");
}

// Reference §4.6: a judge error counts as incorrect; a "Yes" from the judge pays 1.0 and ends the episode.
#[test]
fn llm_judge_decides_and_its_failure_is_incorrect() {
    let task = task_of(AnswerKind::Person, true);
    let Reply::Judgment { correct, .. } = UserRole::fallback(&Query::Judge { task: task.clone(), answer: "x".into() });
    assert!(!correct);
    let mut ep = episode_with(&task, Arc::new(StubUser(None)));
    let out = answer(&mut ep, &format!("It was {}.", task.answer));
    assert_eq!((out.reward, out.terminated), (0.0, false), "judge down: incorrect");
    let yes = Reply::Judgment { correct: true, reasoning: "same person".into(), feedback: String::new() };
    let mut ep = episode_with(&task, Arc::new(StubUser(Some(yes))));
    let out = answer(&mut ep, "the person I found");
    assert_eq!(out.feedback, "Correct! Your answer 'the person I found' is correct.");
    assert_eq!((out.reward, out.terminated), (1.0, true));
}

// ---------------------------------------------------------------------------------------------------------
// Expert and random agent

#[test]
fn expert_solves_the_test_split_and_random_does_not() {
    let catalog = Catalog::builtin(&[GymKind::Search]).unwrap();
    let user: Arc<dyn User> = Arc::new(ScriptedUser);
    let (expert, transcripts) =
        block_on(evaluate(&catalog, &EvalPlan::new(Split::Test, AgentSpec::Expert), user.clone(), |_| {})).unwrap();
    let (random, _) =
        block_on(evaluate(&catalog, &EvalPlan::new(Split::Test, AgentSpec::Random), user, |_| {})).unwrap();
    let (e, r) = (expert.rows[0].mean_normalized, random.rows[0].mean_normalized);
    eprintln!("search test split: expert {e:.3} random {r:.3} (turns {:.2})", expert.rows[0].mean_turns);
    assert_eq!(expert.rows[0].episodes, 40);
    assert!(e >= 0.8, "expert {e}");
    assert!(r <= 0.25 && e - r >= 0.6, "random {r}");
    // The expert searches once per hop and answers once.
    for t in &transcripts {
        let task = GYM.task(&t.task_id).unwrap();
        assert_eq!(t.turns.len(), task.hops.len() + 1);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Task files and import

#[test]
fn tasks_round_trip_through_jsonl() {
    let lines: Vec<String> = GYM.export_tasks().iter().map(|v| v.to_string()).collect();
    let gym = SearchGym::from_jsonl(&lines.join("\n"), "export").unwrap();
    assert_eq!(gym.tasks.all().len(), 200);
    assert_eq!(gym.task("search-007").unwrap().as_ref(), GYM.task("search-007").unwrap().as_ref());
    assert!(SearchGym::from_jsonl("{\"id\": \"x\"}", "bad").is_err());
}

#[test]
fn bamboogle_imports_as_test_tasks() {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/userrl-data"));
    let values = import_original(root).unwrap();
    assert_eq!(values.len(), 125);
    let tasks: Vec<SearchTask> = values.into_iter().map(|v| serde_json::from_value(v).unwrap()).collect();
    assert!(tasks.iter().all(|t| t.split == Split::Test && t.hops.is_empty() && t.answer_kind.is_none()));
    assert!(tasks.iter().any(|t| t.id == "Bamboogle-1"));
    let gym = SearchGym::from_tasks(tasks.clone()).unwrap();
    // The scripted judge still plays imported tasks by string match.
    let t = &tasks[0];
    let env = gym.new_env(&t.id, &EnvConfig::default(), Arc::new(ScriptedUser)).unwrap();
    let mut ep = Episode::new(env, EnvConfig::default());
    let out = answer(&mut ep, &format!("It was {}.", t.answer));
    assert_eq!(out.reward, 1.0);
    let env = gym.new_env(&t.id, &EnvConfig::default(), Arc::new(ScriptedUser)).unwrap();
    let mut ep = Episode::new(env, EnvConfig::default());
    assert_eq!(answer(&mut ep, &format!("{} and john adams", t.answer)).reward, 0.0);
}

// ---------------------------------------------------------------------------------------------------------
// Robustness

fn odd_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "\\PC{0,300}",
        proptest::collection::vec(any::<char>(), 0..9000).prop_map(|c| c.into_iter().collect()),
        "[a-z ]{0,40}( or | and |, )?[0-9]{0,4}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    // Any text as a search or an answer: no panic, a finite reward in [0, 1], a non-empty reply.
    #[test]
    fn random_text_never_breaks_the_env(text in odd_text(), choice in 0..3usize, which in 0..200usize) {
        let task = GYM.tasks.all()[which].clone();
        let mut ep = episode(&task);
        let call = crate::tool::action_from_content([Choice::Search, Choice::Answer, Choice::Action][choice], &text);
        let out = block_on(ep.step(call));
        prop_assert!(out.reward.is_finite() && (0.0..=1.0).contains(&out.reward));
        prop_assert!(!out.feedback.is_empty());
    }
}
