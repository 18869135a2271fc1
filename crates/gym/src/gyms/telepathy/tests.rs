//! Tests of TelepathyGym: data checks, the scripted host's understanding, the reward rules, exploits, the
//! LLM prompt/parse/fallback, the expert against the random agent, and the import of the original data.

use super::*;
use crate::env::{Episode, StepOutcome, Termination};
use crate::eval::{AgentSpec, EvalPlan, evaluate};
use crate::gyms::Catalog;
use crate::user::ScriptedUser;
use futures::executor::block_on;

static GYM: std::sync::LazyLock<TelepathyGym> = std::sync::LazyLock::new(|| TelepathyGym::builtin().unwrap());

fn gym() -> &'static TelepathyGym {
    &GYM
}

fn task(title: &str) -> Arc<TelepathyTask> {
    GYM.tasks.all().iter().find(|t| t.title == title).unwrap_or_else(|| panic!("no entity {title}")).clone()
}

fn ask(title: &str, question: &str) -> Answer {
    let t = task(title);
    let ontology = host::ONTOLOGY.as_ref().unwrap();
    host::answer_question(ontology, &t.entity().unwrap(), question).answer
}

fn episode(title: &str) -> Episode {
    let gym = gym();
    let id = gym.tasks.all().iter().find(|t| t.title == title).unwrap().id.clone();
    let env = gym.new_env(&id, &EnvConfig::default(), Arc::new(ScriptedUser)).unwrap();
    Episode::new(env, EnvConfig::default())
}

fn step(ep: &mut Episode, action: Action) -> StepOutcome {
    block_on(ep.step(Ok(action)))
}

fn question(text: &str) -> Action {
    Action::Action(text.to_string())
}

fn guess(text: &str) -> Action {
    Action::Answer(text.to_string())
}

use Answer::{Maybe, No, Yes};

// ---------------------------------------------------------------------------------------------------------
// Data

#[test]
fn builtin_set_has_150_entities_split_120_30_deterministically() {
    let tasks = builtin_tasks().unwrap();
    assert_eq!(tasks.len(), 150);
    assert_eq!(tasks.iter().filter(|t| t.split == Split::Test).count(), 30);
    assert_eq!(tasks, builtin_tasks().unwrap());
    let ids: std::collections::HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids.len(), 150);
    let gym = gym();
    assert_eq!(gym.task_ids(Some(Split::Train)).len(), 120);
}

#[test]
fn names_are_unambiguous_and_clues_do_not_give_the_entity_away() {
    let tasks = builtin_tasks().unwrap();
    let shared = host::shared_names(tasks.iter().map(|t| (t.title.as_str(), t.aliases.as_slice())));
    assert!(shared.is_empty(), "names shared by several entities: {shared:?}");
    for t in &tasks {
        assert_ne!(host::judge_guess(&t.title, &t.aliases, &t.description), host::Verdict::Correct, "{}", t.title);
        assert!(!reveals(t, &t.description), "{}", t.title);
        let kind = t.kind.as_deref().unwrap();
        // Every entity answers the question about its own kind with Yes and about the others with No.
        for (k, q) in [("person", "Is it a person?"), ("animal", "Is it an animal?"), ("place", "Is it a place?")] {
            assert_eq!(ask(&t.title, q), if kind == k { Yes } else { No }, "{}: {q}", t.title);
        }
        if kind == "person" && t.attributes.as_ref().unwrap().get("fictional").is_none() {
            let a = t.attributes.as_ref().unwrap();
            assert!(a.contains_key("born") && a.contains_key("gender") && a.contains_key("alive"), "{}", t.title);
        }
    }
}

#[test]
fn bad_task_data_is_refused() {
    let mut t = task("Lion").as_ref().clone();
    t.attributes.as_mut().unwrap().insert("wingspan".into(), Some(Attr::Number(3.0)));
    assert!(TelepathyGym::from_tasks(vec![t]).is_err());
    let mut t = task("Lion").as_ref().clone();
    t.attributes.as_mut().unwrap().insert("continent".into(), Some(Attr::List(vec!["atlantis".into()])));
    assert!(TelepathyGym::from_tasks(vec![t]).is_err());
    let mut t = task("Lion").as_ref().clone();
    t.description = "I am thinking of a lion.".into();
    assert!(TelepathyGym::from_tasks(vec![t]).is_err());
    let mut t = task("Lion").as_ref().clone();
    t.kind = None;
    assert!(TelepathyGym::from_tasks(vec![t]).is_err());
}

#[test]
fn tasks_round_trip_through_jsonl() {
    let gym = gym();
    let text: String = gym.export_tasks().iter().map(|v| format!("{v}\n")).collect();
    let again = TelepathyGym::from_jsonl(&text, "mem").unwrap();
    assert_eq!(again.tasks(), gym.tasks());
    assert_eq!(again.task("telepathy-001").unwrap(), gym.task("telepathy-001").unwrap());
}

// ---------------------------------------------------------------------------------------------------------
// The scripted host understands questions

#[test]
fn host_understands_synonyms() {
    assert_eq!(ask("Albert Einstein", "Is this person a physicist?"), Yes);
    assert_eq!(ask("Albert Einstein", "Was he known for science?"), Yes);
    assert_eq!(ask("Albert Einstein", "Did he win the Nobel Prize?"), Yes);
    assert_eq!(ask("Albert Einstein", "Is he a painter?"), No);
    assert_eq!(ask("Pablo Picasso", "Was he an artist?"), Yes);
    assert_eq!(ask("Lion", "Is it a predator?"), Yes);
    assert_eq!(ask("Lion", "Does it eat meat?"), Yes);
    assert_eq!(ask("Lion", "Is it a herbivore?"), No);
    assert_eq!(ask("Dog", "Do people keep it as a pet?"), Yes);
    assert_eq!(ask("Pizza", "Can you eat it?"), Yes);
    assert_eq!(ask("Smartphone", "Does it need electricity?"), Yes);
    assert_eq!(ask("Smartphone", "Does it have a touchscreen?"), Yes);
    assert_eq!(ask("Eiffel Tower", "Is it made of steel?"), Yes);
    assert_eq!(ask("Eiffel Tower", "Is it man-made?"), Yes);
    assert_eq!(ask("Mount Everest", "Is it a mountain?"), Yes);
}

#[test]
fn host_handles_negation_and_opposites() {
    // Negation flips.
    assert_eq!(ask("Lion", "Is it not an animal?"), No);
    assert_eq!(ask("Eiffel Tower", "Is it something that isn't alive?"), Yes);
    assert_eq!(ask("Penguin", "Is it a bird that cannot fly?"), Yes);
    assert_eq!(ask("Bald Eagle", "Is it a bird that cannot fly?"), No);
    // A rhetorical opening negation does not.
    assert_eq!(ask("Lion", "Isn't it an animal?"), Yes);
    // Opposite phrases flip too.
    assert_eq!(ask("Sherlock Holmes", "Is he a real person?"), No);
    assert_eq!(ask("Sherlock Holmes", "Is he fictional?"), Yes);
    assert_eq!(ask("Grand Canyon", "Is it natural?"), Yes);
    assert_eq!(ask("Eiffel Tower", "Is it natural?"), No);
    assert_eq!(ask("Albert Einstein", "Is he dead?"), Yes);
    assert_eq!(ask("Taylor Swift", "Is she still alive?"), Yes);
    assert_eq!(ask("Ice Cream", "Is it served cold?"), Yes);
}

#[test]
fn host_ignores_word_order_and_phrasing() {
    assert_eq!(ask("Giant Panda", "From China, is it?"), Yes);
    assert_eq!(ask("Giant Panda", "Asia - is that where it lives?"), Yes);
    assert_eq!(ask("Giant Panda", "Does it come from Europe?"), No);
    assert_eq!(ask("Abraham Lincoln", "Was he American?"), Yes);
    assert_eq!(ask("Abraham Lincoln", "was he a president of some country"), Yes);
    assert_eq!(ask("Zebra", "Is it black and white?"), Yes);
    assert_eq!(ask("Lion", "Is it black and white?"), No);
    assert_eq!(ask("Marie Curie", "Is it a woman?"), Yes);
    assert_eq!(ask("Albert Einstein", "Is it a woman?"), No);
    assert_eq!(ask("Lion", "Is it a man?"), No);
    assert_eq!(ask("Beyonce", "Is the singer Beyoncé?"), Yes);
    assert_eq!(ask("Beyonce", "Is it Beyoncé?"), Yes);
    assert_eq!(ask("Cat", "Is it a cat?"), Yes);
    assert_eq!(ask("Dog", "Is it a cat?"), No);
    assert_eq!(ask("Dog", "It's not a cat, is it?"), Yes);
}

#[test]
fn host_answers_numeric_questions() {
    assert_eq!(ask("Albert Einstein", "Was he born before 1900?"), Yes);
    assert_eq!(ask("Albert Einstein", "Was he born after 1900?"), No);
    assert_eq!(ask("Albert Einstein", "Was he born in the 1870s?"), Yes);
    assert_eq!(ask("Albert Einstein", "Was he born in the 19th century?"), Yes);
    assert_eq!(ask("Albert Einstein", "Did he die after 1950?"), Yes);
    assert_eq!(ask("Albert Einstein", "Was he alive in 1920?"), Yes);
    assert_eq!(ask("Taylor Swift", "Did she die before 2020?"), No);
    assert_eq!(ask("Julius Caesar", "Was he born before 50 BC?"), Yes);
    assert_eq!(ask("Eiffel Tower", "Is it older than 100 years?"), Yes);
    assert_eq!(ask("Eiffel Tower", "Was it built after the 1950s?"), No);
    assert_eq!(ask("Smartphone", "Was it invented after the 1950s?"), Yes);
    assert_eq!(ask("Smartphone", "Is it more than 100 years old?"), No);
    assert_eq!(ask("Great Pyramid of Giza", "Was it built before 2000 BC?"), Yes);
    assert_eq!(ask("Great Pyramid of Giza", "Is it ancient?"), Yes);
    assert_eq!(ask("Eiffel Tower", "Does it date from ancient times?"), No);
    // Animals as species have no date.
    assert_eq!(ask("Lion", "Did it appear after 1900?"), Maybe);
    // Sizes and legs.
    assert_eq!(ask("Elephant", "Is it bigger than a breadbox?"), Yes);
    assert_eq!(ask("Honeybee", "Is it bigger than a breadbox?"), No);
    assert_eq!(ask("Cat", "Is it smaller than a car?"), Yes);
    assert_eq!(ask("Dog", "Is it bigger than a person?"), Maybe);
    assert_eq!(ask("Lion", "Does it have four legs?"), Yes);
    assert_eq!(ask("Chicken", "Does it have four legs?"), No);
    assert_eq!(ask("Honeybee", "Does it have more than four legs?"), Yes);
    assert_eq!(ask("Pizza", "Does it have legs?"), No);
    assert_eq!(ask("Blue Whale", "Does it have no legs?"), Yes);
    assert_eq!(ask("Eiffel Tower", "Is it more than 100 meters tall?"), Yes);
    assert_eq!(ask("Smartphone", "Was it invented in the last 100 years?"), Yes);
    assert_eq!(ask("Eiffel Tower", "Was it built in the last 100 years?"), No);
    assert_eq!(ask("Smartphone", "Is it from the twenty-first century?"), Yes);
}

#[test]
fn host_says_maybe_when_unsure_or_not_understood() {
    // Nothing recognised.
    assert_eq!(ask("Lion", "Blorp zingle wibble?"), Maybe);
    assert_eq!(ask("Lion", ""), Maybe);
    assert_eq!(ask("Lion", "???"), Maybe);
    // The attribute is unknown for this entity.
    assert_eq!(ask("Mahatma Gandhi", "Was he religious?"), Maybe);
    assert_eq!(ask("Octopus", "Is it red?"), Maybe);
    // Borderline size.
    assert_eq!(ask("Dog", "Is it big?"), Maybe);
    // Only the subject was understood, not the property asked about.
    assert_eq!(ask("Albert Einstein", "Is the person an entertainer?"), Maybe);
    assert_eq!(ask("Eiffel Tower", "Is the person an entertainer?"), No);
    assert_eq!(ask("Eiffel Tower", "Is it a wild animal?"), No);
}

// ---------------------------------------------------------------------------------------------------------
// Exploits earn nothing

#[test]
fn asking_about_everything_at_once_gets_maybe() {
    // Alternatives joined by "or" and lists answer nothing.
    assert_eq!(ask("Lion", "Is it a man or a woman?"), Maybe);
    assert_eq!(ask("Lion", "Is it an animal or a person?"), Maybe);
    assert_eq!(ask("Lion", "Is it from Africa, Asia, Europe or America?"), Maybe);
    assert_eq!(ask("Lion", "animal, person, place, food, object, plant"), Maybe);
    assert_eq!(ask("Albert Einstein", "Is it Albert Einstein or Isaac Newton?"), Maybe);
    assert_eq!(ask("Albert Einstein", "Is it Einstein, Newton, Curie?"), Maybe);
    // Keyword stuffing: more than three targets.
    assert_eq!(ask("Lion", "Is it a furry striped carnivorous African mammal with a tail?"), Maybe);
    assert_eq!(ask("Lion", "mammal bird fish reptile insect amphibian africa asia europe"), Maybe);
    // A single property with "or not" is still a fair question.
    assert_eq!(ask("Lion", "Is it a mammal or not?"), Yes);
}

#[test]
fn listing_candidates_in_one_guess_is_wrong() {
    let all_titles: Vec<String> = builtin_tasks().unwrap().iter().map(|t| t.title.clone()).collect();
    for g in [
        "Albert Einstein or Isaac Newton".to_string(),
        "Einstein, Newton, Curie".to_string(),
        "Albert Einstein and Isaac Newton".to_string(),
        "Einstein / Bohr".to_string(),
        "Einstein or Bohr".to_string(),
        all_titles.join(" "),
        all_titles.join(", "),
    ] {
        let mut ep = episode("Albert Einstein");
        let out = step(&mut ep, guess(&g));
        assert_eq!((out.reward, out.terminated), (0.0, false), "{g}");
    }
    assert_eq!(host::judge_guess("Albert Einstein", &[], "Einstein or Newton"), host::Verdict::Several);
}

#[test]
fn stuffed_or_negated_guesses_are_wrong() {
    let einstein = task("Albert Einstein");
    let judge = |g: &str| host::judge_guess(&einstein.title, &einstein.aliases, g);
    let essay = "The entity you are thinking of is surely a brilliant scientist from Germany with wild hair who \
                 developed relativity won prizes played violin while living in Princeton namely Albert Einstein";
    assert_eq!(judge(essay), host::Verdict::NotAName);
    assert_eq!(judge("It is not Albert Einstein"), host::Verdict::Wrong);
    assert_eq!(judge("Albert"), host::Verdict::Wrong);
    assert_eq!(judge("a scientist"), host::Verdict::Wrong);
}

#[test]
fn repeating_questions_and_guessing_blindly_earn_nothing() {
    let mut ep = episode("Lion");
    for _ in 0..8 {
        let out = step(&mut ep, question("Is it an animal?"));
        assert_eq!((out.feedback.as_str(), out.reward), ("Yes", 0.0));
    }
    for g in ["animal", "cat", "Tiger", "big cat", "the answer", "Yes", "Lion?"] {
        let out = step(&mut ep, guess(g));
        if g == "Lion?" {
            assert_eq!(out.reward, 1.0);
        } else {
            assert_eq!(out.reward, 0.0, "{g}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reward and termination rules

#[test]
fn correct_guess_pays_one_and_ends() {
    // Reference §4.2: a correct guess scores 1, pays max(0, score − best), and terminates the episode.
    for g in
        ["Albert Einstein", "It is Albert Einstein.", "Einstein?", "i think it's albert einstein!", "ALBERT EINSTEIN"]
    {
        let mut ep = episode("Albert Einstein");
        let out = step(&mut ep, guess(g));
        assert_eq!((out.reward, out.terminated), (1.0, true), "{g}");
        let t = ep.into_transcript();
        assert_eq!((t.score, t.normalized, t.success, t.termination), (1.0, 1.0, true, Termination::Terminated));
    }
    let mut ep = episode("Beyonce");
    assert_eq!(step(&mut ep, guess("Beyoncé")).reward, 1.0);
}

#[test]
fn reward_is_the_improvement_over_the_best_guess() {
    // Reference §4.2: answer reward = max(0, score − best); a second correct guess is worth nothing.
    let gym = gym();
    let id = gym.tasks.all().iter().find(|t| t.title == "Lion").unwrap().id.clone();
    let mut env = gym.new_env(&id, &EnvConfig::default(), Arc::new(ScriptedUser)).unwrap();
    let wrong = block_on(env.step(&guess("Tiger")));
    assert_eq!((wrong.reward, wrong.terminated), (0.0, false));
    let right = block_on(env.step(&guess("Lion")));
    assert_eq!((right.reward, right.terminated), (1.0, true));
    let again = block_on(env.step(&guess("Lion")));
    assert_eq!(again.reward, 0.0);
    assert!(env.success());
}

#[test]
fn questions_pay_nothing_and_answer_yes_no_maybe() {
    // Reference §4.2: questions pay 0 and the feedback is the Yes/No/Maybe string.
    let mut ep = episode("Lion");
    for (q, expected) in [("Is it a mammal?", "Yes"), ("Can it fly?", "No"), ("Hmm?", "Maybe")] {
        let out = step(&mut ep, question(q));
        assert_eq!((out.feedback.as_str(), out.reward, out.terminated), (expected, 0.0, false));
    }
    // Reference §4.2 (as in TurtleGym): a non-answer prefix is read as a question.
    let gym = gym();
    let id = gym.tasks.all().iter().find(|t| t.title == "Lion").unwrap().id.clone();
    let mut env = gym.new_env(&id, &EnvConfig::default(), Arc::new(ScriptedUser)).unwrap();
    assert_eq!(block_on(env.step(&Action::Search("Is it a mammal?".into()))).feedback, "Yes");
}

#[test]
fn wrong_guess_feedback_never_reveals_the_entity() {
    let tasks = builtin_tasks().unwrap();
    for t in tasks.iter().step_by(7) {
        for g in ["nothing", "Zebra", "Eiffel Tower", "Einstein or Newton", "x".repeat(500).as_str()] {
            if host::judge_guess(&t.title, &t.aliases, g) == host::Verdict::Correct {
                continue;
            }
            let reply = UserRole::scripted(&Query::Guess { task: Arc::new(t.clone()), guess: g.into() }).unwrap();
            let Reply::Judgment { correct, feedback } = reply else { panic!("not a judgment") };
            assert!(!correct);
            assert!(!reveals(t, &feedback), "{}: {feedback}", t.title);
        }
    }
}

#[test]
fn finish_reveals_and_budget_truncates() {
    // `[finish]` ends the episode with reward 0.
    let mut ep = episode("Lion");
    let out = step(&mut ep, Action::Finish);
    assert_eq!((out.reward, out.terminated), (0.0, true));
    assert!(out.feedback.contains("Lion"));
    assert_eq!(ep.into_transcript().termination, Termination::Finished);
    // Reference §4.2: truncation at 16 steps.
    let mut ep = episode("Lion");
    for i in 0..16 {
        let out = step(&mut ep, question("Is it a mammal?"));
        assert_eq!(out.truncated, i == 15);
    }
    let t = ep.into_transcript();
    assert_eq!((t.termination, t.score, t.success), (Termination::MaxSteps, 0.0, false));
}

// ---------------------------------------------------------------------------------------------------------
// The LLM host

fn question_query(title: &str) -> Query {
    Query::Question { task: task(title), question: "Is it a mammal?".into() }
}

fn guess_query(title: &str) -> Query {
    Query::Guess { task: task(title), guess: "Tiger".into() }
}

#[test]
fn prompts_carry_the_entity_and_the_player_text() {
    let p = UserRole::prompt(&question_query("Lion"));
    assert!(p.user.contains("Lion") && p.user.contains("Is it a mammal?"));
    assert!(p.system.contains("\"response\"") && p.system.contains("Maybe"));
    let p = UserRole::prompt(&guess_query("Lion"));
    assert!(p.user.contains("Lion") && p.user.contains("Tiger"));
    assert!(p.system.contains("\"judgment\"") && p.system.contains("\"feedback\"") && p.system.contains("partial"));
}

#[test]
fn llm_replies_are_parsed_tolerantly() {
    let q = question_query("Lion");
    let answer = |text: &str| match UserRole::parse(&q, text) {
        Some(Reply::Answer { response }) => Some(response),
        _ => None,
    };
    assert_eq!(answer("```json\n{\"thought\": \"lions are mammals\", \"response\": \"Yes\"}\n```"), Some(Yes));
    assert_eq!(answer("Sure! {\"thought\": \"t\", \"response\": \"no.\"} Hope it helps."), Some(No));
    assert_eq!(answer("{'thought': 'unclear', 'response': 'Maybe'}"), Some(Maybe));
    assert_eq!(answer("{\"thought\": \"t\"}"), None);
    assert_eq!(answer("{\"thought\": \"t\", \"response\": \"Probably\"}"), None);
    assert_eq!(answer("Yes"), None);

    let g = guess_query("Lion");
    let judgment = |text: &str| match UserRole::parse(&g, text) {
        Some(Reply::Judgment { correct, feedback }) => Some((correct, feedback)),
        _ => None,
    };
    assert_eq!(
        judgment(
            "```json\n{\"thought\": \"a tiger is not a lion\", \"judgment\": \"No\", \
             \"feedback\": \"Not quite, you can do it!\"}\n```"
        ),
        Some((false, "Not quite, you can do it!".to_string()))
    );
    assert_eq!(judgment("{\"judgment\": \"Yes\", \"feedback\": \"You got it!\"}").map(|j| j.0), Some(true));
    assert_eq!(judgment("{\"judgment\": \"Yes\"}"), None);
    assert_eq!(judgment("{\"judgment\": \"Partly\", \"feedback\": \"close\"}"), None);
    assert_eq!(judgment("{\"feedback\": \"close\"}"), None);
    // A judge that blurts out the answer on a wrong guess is overruled.
    let (_, feedback) = judgment("{\"judgment\": \"No\", \"feedback\": \"No, it was a Lion!\"}").unwrap();
    assert!(!feedback.contains("Lion"));
}

#[test]
fn fallbacks_match_the_original() {
    match UserRole::fallback(&question_query("Lion")) {
        Reply::Unavailable { feedback } => assert_eq!(feedback, "Unable to respond to your question right now."),
        other => panic!("{other:?}"),
    }
    match UserRole::fallback(&guess_query("Lion")) {
        Reply::Judgment { correct, feedback } => {
            assert!(!correct);
            assert_eq!(feedback, "Unable to evaluate your guess right now.");
        }
        other => panic!("{other:?}"),
    }
}

/// A stand-in for an LLM host: replies with fixed model text, read through `parse` like the real one.
struct CannedLlm(&'static str);

#[async_trait::async_trait]
impl User for CannedLlm {
    fn kind(&self) -> UserKind {
        UserKind::Llm
    }
    async fn reply(&self, query: &UserQuery) -> Result<UserReply, UserError> {
        Ok(query.parse_llm(self.0).unwrap_or_else(|| query.fallback()))
    }
}

#[test]
fn llm_host_drives_the_env_and_garbage_falls_back() {
    let gym = gym();
    let id = gym.task_ids(None)[0].clone();
    let judge = Arc::new(CannedLlm("{\"thought\": \"t\", \"judgment\": \"Yes\", \"feedback\": \"Well done!\"}"));
    let mut ep = Episode::new(gym.new_env(&id, &EnvConfig::default(), judge).unwrap(), EnvConfig::default());
    let out = step(&mut ep, guess("whatever"));
    assert_eq!((out.reward, out.terminated, out.feedback.as_str()), (1.0, true, "Well done!"));
    let garbage = Arc::new(CannedLlm("I refuse."));
    let mut ep = Episode::new(gym.new_env(&id, &EnvConfig::default(), garbage).unwrap(), EnvConfig::default());
    assert_eq!(step(&mut ep, question("Is it alive?")).feedback, QUESTION_UNAVAILABLE);
    let out = step(&mut ep, guess("whatever"));
    assert_eq!((out.reward, out.terminated, out.feedback.as_str()), (0.0, false, GUESS_UNAVAILABLE));
}

// ---------------------------------------------------------------------------------------------------------
// Expert and random agent

#[test]
fn expert_asks_answerable_questions_then_guesses() {
    // Every other entity, to keep the debug test run short; the test split is covered in full below.
    for t in builtin_tasks().unwrap().into_iter().step_by(2) {
        let plan = TelepathyExpert::plan(&t, 3);
        assert_eq!(plan.len(), EXPERT_QUESTIONS, "{}", t.title);
        for q in &plan {
            assert_ne!(ask(&t.title, q), Maybe, "{}: {q}", t.title);
            assert!(!reveals(&t, q), "{}: {q}", t.title);
        }
    }
}

#[test]
fn expert_beats_random_on_the_test_split() {
    let catalog = Catalog::builtin(&[GymKind::Telepathy]).unwrap();
    let run = |agent| {
        block_on(evaluate(&catalog, &EvalPlan::new(Split::Test, agent), Arc::new(ScriptedUser), |_| {})).unwrap()
    };
    let (expert, transcripts) = run(AgentSpec::Expert);
    let (random, _) = run(AgentSpec::Random);
    println!("test split: expert {:.3}, random {:.3}", expert.rows[0].mean_normalized, random.rows[0].mean_normalized);
    assert_eq!(expert.rows[0].episodes, 30);
    assert!(expert.rows[0].mean_normalized >= 0.8, "expert {}", expert.rows[0].mean_normalized);
    assert!(random.rows[0].mean_normalized <= 0.1, "random {}", random.rows[0].mean_normalized);
    for t in &transcripts {
        assert!(t.turns.len() <= EXPERT_QUESTIONS + 1);
        for turn in &t.turns[..t.turns.len() - 1] {
            assert!(turn.feedback == "Yes" || turn.feedback == "No", "{}: {}", turn.content, turn.feedback);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Import of the original data

const ORIGINAL_DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/userrl-data");

#[test]
fn import_reproduces_the_original_split_and_refuses_the_scripted_host() {
    let root = Path::new(ORIGINAL_DATA);
    if !root.join("tasks/TelepathyGym/all_entities_refined.json").exists() {
        // The data is only present in the development checkout; the import path is still exercised below.
        assert!(import_original(Path::new("/nonexistent")).is_err());
        return;
    }
    let rows = import_original(root).unwrap();
    assert_eq!(rows.len(), 401);
    let text: String = rows.iter().map(|v| format!("{v}\n")).collect();
    let gym = TelepathyGym::from_jsonl(&text, "import").unwrap();
    assert_eq!(gym.task_ids(Some(Split::Test)).len(), 41);
    assert_eq!(gym.task_ids(Some(Split::Train)).len(), 360);
    let id = gym.task_ids(Some(Split::Test))[0].clone();
    match gym.new_env(&id, &EnvConfig::default(), Arc::new(ScriptedUser)) {
        Err(GymError::User(UserError::NoScriptedData { gym: "telepathy", .. })) => {}
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("the scripted host cannot play imported entities"),
    }
    let t = gym.task(&id).unwrap();
    assert!(t.attributes.is_none() && !t.summary.is_empty());
    assert!(UserRole::scripted(&Query::Guess { task: t.clone(), guess: t.title.clone() }).is_err());
    // An LLM host can play them.
    let llm = Arc::new(CannedLlm("{\"thought\": \"t\", \"response\": \"Yes\"}"));
    assert!(gym.new_env(&id, &EnvConfig::default(), llm).is_ok());
}

// ---------------------------------------------------------------------------------------------------------
// Robustness and speed

#[test]
fn odd_input_never_panics() {
    let mut ep = episode("Albert Einstein");
    for text in [
        "",
        "\u{0}\u{7}\u{1b}[31m",
        "ǘ́́́",
        "日本の人ですか？",
        "is it ".repeat(1500).as_str(),
        "1999s 0th century 99999 bc",
        "4 4 4 legs legs",
    ] {
        let q = step(&mut ep, question(text));
        assert!(["Yes", "No", "Maybe"].contains(&q.feedback.as_str()));
        let a = step(&mut ep, guess(text));
        assert_eq!(a.reward, 0.0);
    }
}

#[test]
fn scripted_replies_are_fast() {
    let t = task("Albert Einstein");
    let ontology = host::ONTOLOGY.as_ref().unwrap();
    let entity = t.entity().unwrap();
    let questions = ["Is he a scientist?", "Was he born before 1900 in Europe?", "Is it bigger than a breadbox?"];
    let start = std::time::Instant::now();
    for i in 0..3000 {
        host::answer_question(ontology, &entity, questions[i % 3]);
    }
    // Debug builds are ~10x slower than release; this still leaves a wide margin for 20k steps/s in release.
    let per = start.elapsed().as_secs_f64() / 3000.0;
    println!("scripted host (debug build): {:.1} µs per question", per * 1e6);
    assert!(per < 1e-3, "{per} s per question");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]
    #[test]
    fn random_actions_keep_rewards_in_bounds(choice in 0u8..4, content in "\\PC{0,200}") {
        let mut ep = episode("Lion");
        let action = match choice {
            0 => Action::Action(content.clone()),
            1 => Action::Answer(content.clone()),
            2 => Action::Search(content.clone()),
            _ => Action::Finish,
        };
        let out = block_on(ep.step(Ok(action)));
        proptest::prop_assert!(out.reward.is_finite() && (0.0..=1.0).contains(&out.reward));
        if choice == 0 {
            proptest::prop_assert!(["Yes", "No", "Maybe"].contains(&out.feedback.as_str()));
        }
    }
}
