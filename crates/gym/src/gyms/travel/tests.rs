//! TravelGym tests: the reward and termination rules of reference §4.7, the §9 score, the scripted user's
//! understanding and its resistance to exploits, LLM parsing, the expert against the random agent.

use std::sync::{Arc, LazyLock};

use futures::executor::block_on;

use super::*;
use crate::env::{Compat as EnvCompat, Episode, Termination};
use crate::eval::{AgentSpec, EvalPlan, evaluate};
use crate::gyms::Catalog;
use crate::user::{Protocol, ScriptedUser};

static GYM: LazyLock<TravelGym> = LazyLock::new(|| TravelGym::builtin().unwrap());

fn config(mode: Mode, compat: Compat) -> EnvConfig {
    EnvConfig { mode, compat: EnvCompat { travel: compat, ..EnvCompat::default() }, ..EnvConfig::default() }
}

/// The first task that satisfies `pred`.
fn task_where(pred: impl Fn(&TravelTask) -> bool) -> Arc<TravelTask> {
    GYM.tasks.all().iter().find(|t| pred(t)).cloned().unwrap()
}

fn episode(task: &TravelTask, cfg: EnvConfig) -> Episode {
    let env = GYM.new_env(&task.id, &cfg, Arc::new(ScriptedUser)).unwrap();
    Episode::new(env, cfg)
}

fn step(ep: &mut Episode, action: Action) -> crate::env::StepOutcome {
    block_on(ep.step(Ok(action)))
}

fn search(ep: &mut Episode, q: &str) -> crate::env::StepOutcome {
    step(ep, Action::Search(q.into()))
}
fn say(ep: &mut Episode, q: &str) -> crate::env::StepOutcome {
    step(ep, Action::Action(q.into()))
}
fn answer(ep: &mut Episode, q: &str) -> crate::env::StepOutcome {
    step(ep, Action::Answer(q.into()))
}

fn flight_task() -> Arc<TravelTask> {
    task_where(|t| t.aspect(Aspect::Flight).is_some() && t.aspects.len() == 2)
}

// ---------------------------------------------------------------------------------------------------------
// Task set

#[test]
fn builtin_task_set_has_the_original_structure() {
    let tasks = GYM.tasks.all();
    assert_eq!(tasks.len(), 1000);
    assert_eq!(GYM.task_ids(Some(Split::Test)).len(), 150);
    assert_eq!(GYM.task_ids(Some(Split::Train)).len(), 850);
    for (pattern, count) in generate::PATTERNS {
        let of: Vec<_> = tasks.iter().filter(|t| t.pattern == pattern).collect();
        assert_eq!(of.len(), count);
        for t in of {
            let counts: Vec<usize> = t.aspects.iter().map(|a| a.preferences.len()).collect();
            let mut sorted = counts.clone();
            sorted.sort();
            let mut want: Vec<usize> = pattern.chars().map(|c| c.to_digit(10).unwrap() as usize).collect();
            want.sort();
            assert_eq!(sorted, want, "{}", t.id);
        }
    }
    for t in tasks {
        t.validate().unwrap();
        assert!(!(t.aspect(Aspect::Hotel).is_some() && t.aspect(Aspect::Apartment).is_some()));
        for a in &t.aspects {
            // The best option is the unique cheapest correct option.
            let best = a.options.correct.iter().find(|o| o.id == a.best_id).unwrap().cost().unwrap();
            assert!(a.options.correct.iter().filter(|o| o.id != a.best_id).all(|o| o.cost().unwrap() > best));
            assert!(!a.options.wrong.is_empty() && !a.options.noise.is_empty());
            let subcats: std::collections::HashSet<_> = a.preferences.iter().map(|p| &p.subcategory).collect();
            assert_eq!(subcats.len(), a.preferences.len(), "one preference per subcategory");
        }
    }
    // Deterministic.
    assert_eq!(
        generate::generate_all(generate::SEED)[..20],
        tasks.iter().take(20).map(|t| (**t).clone()).collect::<Vec<_>>()[..]
    );
}

#[test]
fn every_subcategory_variant_separates_correct_from_wrong_options() {
    // Wrong options violate exactly one preference: a `Tag` preference's tag is missing or a `Value`
    // preference's field holds one of its bad values; correct options satisfy every preference.
    for t in GYM.tasks.all().iter().take(200) {
        for a in &t.aspects {
            let satisfied = |o: &TravelOption, p: &Preference| {
                let sub = catalog::spec(a.aspect).subcats.iter().find(|s| s.concept == p.subcategory).unwrap();
                let v = sub.variants.iter().find(|v| v.text == p.text).unwrap();
                match v.req {
                    catalog::Req::Tag { field, tag } => {
                        o.fields.iter().any(|(n, val)| n == field && val.as_array().unwrap().iter().any(|x| x == tag))
                    }
                    catalog::Req::Value { field, good, .. } => o.fields.iter().any(|(n, val)| {
                        n == field
                            && good.iter().any(|g| {
                                let g = g.replace("{origin}", "").replace("{destination}", "");
                                let g = g.trim_start_matches(" → ");
                                val.as_str().unwrap().ends_with(g)
                            })
                    }),
                }
            };
            for o in &a.options.correct {
                assert!(a.preferences.iter().all(|p| satisfied(o, p)), "{} {}", t.id, o.id);
            }
            for o in a.options.wrong.iter().chain(&a.options.noise) {
                assert!(a.preferences.iter().any(|p| !satisfied(o, p)), "{} {}", t.id, o.id);
            }
        }
    }
}

#[test]
fn expert_questions_reach_their_own_subcategory() {
    // Each catalog question is a concrete ask (type 2) for its own preference and for no other.
    for spec in &catalog::SPECS {
        for s in spec.subcats {
            let concepts = user_role_concepts(s.question);
            assert_eq!(concepts, vec![s.concept.to_string()], "{}", s.question);
        }
    }
}

fn user_role_concepts(text: &str) -> Vec<String> {
    // A task whose only remaining preference is in every subcategory is not needed: ask the judge which
    // preference of a synthetic task it picks.
    let mut found = Vec::new();
    for spec in &catalog::SPECS {
        for s in spec.subcats {
            let mut task = (*GYM.tasks.all()[0]).clone();
            task.aspects.truncate(1);
            task.aspects[0].aspect = spec.aspect;
            task.dimensions = vec![spec.aspect];
            task.aspects[0].preferences = vec![Preference {
                aspect: spec.aspect,
                subcategory: s.concept.into(),
                text: "x".into(),
                implicit: "y".into(),
                keywords: s.keywords.iter().map(|k| k.to_string()).collect(),
            }];
            let remaining = [PrefRef::new(0)];
            if let (UtteranceType::Preference, _) = user_role::classify(&task, text, &remaining)
                && !found.contains(&s.concept.to_string())
            {
                found.push(s.concept.to_string());
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------------------------------------
// Search rules

#[test]
fn correct_search_pays_mode_reward_once() {
    let t = flight_task();
    let f = t.aspect(Aspect::Flight).unwrap();
    // Reference §4.7: a query covering all arguments of one aspect returns the results and pays
    // search_correct_reward (eval 0.2, train 0.0); already searched pays 0.
    let mut ep = episode(&t, config(Mode::Eval, Compat::default()));
    let out = search(&mut ep, &search_query(f));
    assert_eq!(out.reward, 0.2);
    assert!(out.feedback.contains(&format!("\"id\": \"{}\"", f.best_id)));
    assert!(out.feedback.contains("path"), "schema and fields are shown");
    assert_eq!(out.feedback.lines().filter(|l| l.starts_with("{\"id\"")).count(), f.shown_options().len());
    let again = search(&mut ep, &search_query(f));
    assert_eq!(again.reward, 0.0);
    assert!(again.feedback.contains("already"));
    let mut ep = episode(&t, config(Mode::Train, Compat::default()));
    let out = search(&mut ep, &search_query(f));
    assert_eq!(out.reward, 0.0);
    assert!(out.feedback.starts_with("Search results"));
}

#[test]
fn search_understands_formats_and_rejects_wrong_arguments() {
    let t = flight_task();
    let f = t.aspect(Aspect::Flight).unwrap();
    let arg = |n: &str| f.arguments.iter().find(|a| a.name == n).unwrap().value.clone();
    let (origin, dest, date) = (arg("origin"), arg("destination"), arg("date"));
    let dates = user_role::extract_dates(&date);
    let (_, m, d) = dates[0];
    let month = &catalog::MONTHS[m as usize - 1];
    let ok = |q: &str| user_role::judge_search(&t, q);
    let yes = (Alignment::Aligned, Some(Aspect::Flight));
    assert_eq!(ok(&format!("plane tickets {origin} to {dest}, {m}/{d}")), yes);
    assert_eq!(ok(&format!("Find FLIGHTS to {dest} from {origin} on the {d}th of {month}")), yes);
    assert_eq!(ok(&format!("flight {origin} {dest} 2025-{m:02}-{d:02}")), yes);
    assert_eq!(ok(&format!("flying from {origin} to {dest} on {} {d}", &month[..3])), yes);
    // Wrong direction, missing date, extra dates, several aspects, no aspect.
    assert_eq!(ok(&format!("flight from {dest} to {origin} on {date}")).0, Alignment::Misaligned);
    assert_eq!(ok(&format!("flight from {origin} to {dest}")).0, Alignment::Misaligned);
    let other = if d < 28 { d + 1 } else { d - 1 };
    assert_eq!(
        ok(&format!("flight from {origin} to {dest} on {month} {d} or {month} {other}")).0,
        Alignment::Misaligned
    );
    assert_eq!(ok(&format!("flight and hotel from {origin} to {dest} on {date}")).0, Alignment::Misaligned);
    assert_eq!(ok(&format!("{origin} to {dest} on {date}")).0, Alignment::Unrelated);
    // Stuffing every city the agent can think of fails.
    let all: Vec<&str> = catalog::CITIES.iter().map(|c| c.0).collect();
    assert_eq!(ok(&format!("flight from {origin} to {dest} on {date} {}", all.join(" "))).0, Alignment::Misaligned);
}

#[test]
fn city_aliases_are_understood() {
    let t =
        task_where(|t| t.aspect(Aspect::Hotel).is_some_and(|h| h.arguments.iter().any(|a| a.value == "New York City")));
    let h = t.aspect(Aspect::Hotel).unwrap();
    let arg = |n: &str| h.arguments.iter().find(|a| a.name == n).unwrap().value.clone();
    let q = format!("hotel in NYC, check in {} and check out {}", arg("check_in"), arg("check_out"));
    assert_eq!(user_role::judge_search(&t, &q), (Alignment::Aligned, Some(Aspect::Hotel)));
    // Check-out before check-in is wrong.
    let q = format!("hotel in New York from {} to {}", arg("check_out"), arg("check_in"));
    assert_eq!(user_role::judge_search(&t, &q).0, Alignment::Misaligned);
}

#[test]
fn wrong_search_gets_refine_and_every_fifth_search_fails() {
    let t = flight_task();
    let f = t.aspect(Aspect::Flight).unwrap();
    let mut ep = episode(&t, config(Mode::Eval, Compat::default()));
    // Reference §4.7: False / N/A give the refine message with reward 0.
    for _ in 0..4 {
        let out = search(&mut ep, "cheap stuff please");
        assert_eq!(out.reward, 0.0);
        assert_eq!(out.feedback, SEARCH_REFINE);
    }
    // Reference §4.7: search_times % 5 == 0 fails with the backend message, even for a correct query.
    let out = search(&mut ep, &search_query(f));
    assert_eq!((out.reward, out.feedback.as_str()), (0.0, SEARCH_FAILED));
    let out = search(&mut ep, &search_query(f));
    assert_eq!(out.reward, 0.2);
}

// ---------------------------------------------------------------------------------------------------------
// Utterance rules

#[test]
fn concrete_question_reveals_one_preference_implicitly() {
    let t = flight_task();
    let p = t.preference(0).unwrap().clone();
    // Reference §4.7 type 2: the responder reveals the preference implicitly; reward preference_correct_reward.
    let mut ep = episode(&t, config(Mode::Eval, Compat::default()));
    let out = say(&mut ep, &question_for(&p));
    assert_eq!(out.reward, 0.6);
    assert!(out.feedback.contains(&p.implicit));
    assert!(!out.feedback.contains(&p.text), "the preference text itself stays hidden");
    // Asking again: the preference is no longer remaining (type 3), nothing more to earn.
    let out = say(&mut ep, &question_for(&p));
    assert_eq!(out.reward, 0.0);
    assert_eq!(out.feedback, NO_PREFERENCE_REPLY);
    let mut ep = episode(&t, config(Mode::Train, Compat::default()));
    assert_eq!(say(&mut ep, &question_for(&p)).reward, 0.8);
}

#[test]
fn judge_understands_synonyms_word_order_and_negation() {
    let t = task_where(|t| t.preferences().any(|p| p.subcategory == "wifi" && p.aspect == Aspect::Hotel));
    let remaining: Vec<PrefRef> = (0..t.preference_count()).map(PrefRef::new).collect();
    let wifi = remaining.iter().find(|r| t.preference(r.index).unwrap().subcategory == "wifi").unwrap();
    for q in [
        "Will you need internet access in your hotel room?",
        "At the hotel, is a good wifi connection something you need?",
        "You won't need wi-fi at the hotel, right?",
        "hotel: internet?",
    ] {
        let (kind, pref) = user_role::classify(&t, q, &remaining);
        assert_eq!((kind, pref.map(|p| p.id.as_str())), (UtteranceType::Preference, Some(wifi.id.as_str())), "{q}");
    }
    // The same topic for an aspect the user has no such preference on is type 3.
    let other = t.dimensions.iter().find(|a| **a != Aspect::Hotel && **a != Aspect::Flight).copied();
    if let Some(a) = other {
        let q = format!("For the {}, do you need internet?", a.noun());
        assert_eq!(user_role::classify(&t, &q, &remaining).0, UtteranceType::Missing, "{q}");
    }
}

#[test]
fn chit_chat_vague_and_missing_questions_earn_nothing_and_leak_nothing() {
    let t = flight_task();
    let mut ep = episode(&t, config(Mode::Eval, Compat::default()));
    let implicit: Vec<String> = t.preferences().map(|p| p.implicit.clone()).collect();
    // Type 1: a neutral half-hearted reply.
    let out = say(&mut ep, "Hello! Thanks for choosing our agency, I'm happy to help.");
    assert_eq!(out.reward, 0.0);
    assert!(implicit.iter().all(|i| !out.feedback.contains(i.as_str())));
    // Type 4: a catch-all question.
    let out = say(&mut ep, "Do you have any preferences for the trip?");
    assert_eq!((out.reward, out.feedback.as_str()), (0.0, TOO_VAGUE_REPLY));
    // Type 3: a topic the user has no preference on.
    let missing = catalog::spec(Aspect::Flight)
        .subcats
        .iter()
        .find(|s| !t.preferences().any(|p| p.aspect == Aspect::Flight && p.subcategory == s.concept))
        .unwrap();
    let out = say(&mut ep, missing.question);
    assert_eq!((out.reward, out.feedback.as_str()), (0.0, NO_PREFERENCE_REPLY));
}

#[test]
fn asking_about_everything_at_once_earns_nothing() {
    let t = task_where(|t| t.pattern == "444");
    let mut ep = episode(&t, config(Mode::Eval, Compat::default()));
    // Every question of the catalog in one message: three or more topics are too vague (type 4).
    let all: Vec<&str> = catalog::SPECS.iter().flat_map(|s| s.subcats.iter().map(|c| c.question)).collect();
    assert_eq!(say(&mut ep, &all.join(" ")).reward, 0.0);
    // A keyword list is too vague too.
    let words: Vec<&str> = t.preferences().flat_map(|p| p.keywords.iter().map(String::as_str).take(1)).collect();
    let out = say(&mut ep, &words.join(", "));
    assert_eq!((out.reward, out.feedback.as_str()), (0.0, TOO_VAGUE_REPLY));
    // Three of the user's own topics in one sentence: too vague.
    let a = &t.aspects[0];
    let q = format!(
        "For the {}, tell me about {}, {} and {}.",
        a.aspect.noun(),
        a.preferences[0].keywords[0],
        a.preferences[1].keywords[0],
        a.preferences[2].keywords[0]
    );
    assert_eq!(say(&mut ep, &q).reward, 0.0);
    // Two topics in one question reveal only one preference.
    let q = format!(
        "For the {}, what about {} or {}?",
        a.aspect.noun(),
        a.preferences[0].keywords[0],
        a.preferences[1].keywords[0]
    );
    let out = say(&mut ep, &q);
    assert_eq!(out.reward, 0.6);
    let revealed = a.preferences.iter().filter(|p| out.feedback.contains(&p.implicit)).count();
    assert_eq!(revealed, 1);
}

#[test]
fn repeating_a_question_earns_once() {
    let t = flight_task();
    let mut ep = episode(&t, config(Mode::Eval, Compat::default()));
    let q = question_for(t.preference(0).unwrap());
    let total: f64 = (0..6).map(|_| say(&mut ep, &q).reward).sum();
    assert!((total - 0.6).abs() < 1e-9, "{total}");
}

#[test]
fn proactive_elicitation_after_three_idle_turns() {
    let t = flight_task();
    // Reference §4.7: after elicitation_interval (3) non-preference turns, the next non-preference turn is the
    // proactive branch. Sane: one remaining preference is volunteered implicitly, no reward, counter reset.
    let mut ep = episode(&t, config(Mode::Eval, Compat::default()));
    for _ in 0..3 {
        assert_eq!(say(&mut ep, "Nice weather today.").reward, 0.0);
    }
    let out = say(&mut ep, "Nice weather today.");
    assert_eq!(out.reward, 0.0);
    let volunteered: Vec<&Preference> = t.preferences().filter(|p| out.feedback.contains(&p.implicit)).collect();
    assert_eq!(volunteered.len(), 1);
    // It counts as elicited: asking about it now earns nothing.
    let again = say(&mut ep, &question_for(volunteered[0]));
    assert_eq!(again.reward, 0.0);
    // Compat: the original always falls back and reveals nothing.
    let compat = Compat { proactive_elicitation_fallback: true, ..Compat::default() };
    let mut ep = episode(&t, config(Mode::Eval, compat));
    for _ in 0..3 {
        say(&mut ep, "Nice weather today.");
    }
    let out = say(&mut ep, "Nice weather today.");
    assert_eq!(out.feedback, FALLBACK_REPLY);
    assert_eq!(say(&mut ep, &question_for(t.preference(0).unwrap())).reward, 0.6);
}

// ---------------------------------------------------------------------------------------------------------
// Answer rules and termination

#[test]
fn answers_pay_best_correct_wrong_and_one_per_aspect() {
    let t = flight_task();
    let f = t.aspect(Aspect::Flight).unwrap();
    let other = t.aspects.iter().find(|a| a.aspect != Aspect::Flight).unwrap();
    let correct = f.correct_ids.iter().find(|id| **id != f.best_id).unwrap();
    // Reference §4.7: best 1.0, correct 0.8, wrong 0 (penalty 0), one choice per aspect.
    let mut ep = episode(&t, config(Mode::Eval, Compat::default()));
    let out = answer(&mut ep, correct);
    assert_eq!((out.reward, out.terminated), (0.8, false));
    let out = answer(&mut ep, &f.best_id);
    assert_eq!(out.reward, 0.0);
    assert!(out.feedback.contains("already"));
    let wrong = &other.options.wrong[0].id;
    let out = answer(&mut ep, wrong);
    assert_eq!(out.reward, 0.0);
    // Sane: every aspect answered ends the episode.
    assert!(out.terminated);
    let tr = ep.into_transcript();
    assert_eq!(tr.score, 0.4);
    assert!(!tr.success);

    let mut ep = episode(&t, config(Mode::Eval, Compat::default()));
    assert_eq!(answer(&mut ep, &f.best_id.to_lowercase()).reward, 1.0);
    let out = answer(&mut ep, &other.best_id);
    assert_eq!((out.reward, out.terminated), (1.0, true));
    let tr = ep.into_transcript();
    assert_eq!((tr.score, tr.normalized, tr.success), (1.0, 1.0, true));
}

#[test]
fn answer_format_and_multiple_ids() {
    let t = flight_task();
    let f = t.aspect(Aspect::Flight).unwrap();
    let correct = f.correct_ids.iter().find(|id| **id != f.best_id).unwrap();
    let mut ep = episode(&t, config(Mode::Eval, Compat::default()));
    // Reference §4.7: ids must match ^[ACFHR]\d+$.
    for bad in ["the cheap one", "X12", "F", "F1 F2"] {
        let out = answer(&mut ep, bad);
        assert_eq!(out.reward, 0.0);
        assert!(out.feedback.contains("could not be read"), "{bad}");
    }
    // Sane: listing candidates is refused.
    let all: Vec<String> = f.shown_options().iter().map(|o| o.id.clone()).collect();
    let out = answer(&mut ep, &all.join(","));
    assert_eq!(out.reward, 0.0);
    assert!(out.feedback.contains("exactly one option"));
    // Compat: the async path sums every id without a cap.
    let compat = Compat { uncapped_answer_reward: true, ..Compat::default() };
    let mut ep = episode(&t, config(Mode::Eval, compat));
    let out = answer(&mut ep, &format!("{}, {}", f.best_id, correct));
    assert!((out.reward - 1.8).abs() < 1e-9);
}

#[test]
fn answering_an_aspect_drops_its_remaining_preferences() {
    let t = flight_task();
    let p = t.preferences().find(|p| p.aspect == Aspect::Flight).unwrap().clone();
    let mut ep = episode(&t, config(Mode::Eval, Compat::default()));
    answer(&mut ep, "F1");
    let out = say(&mut ep, &question_for(&p));
    assert_eq!(out.reward, 0.0);
}

#[test]
fn all_answered_termination_is_a_switch() {
    let t = flight_task();
    let wrongs: Vec<String> = t.aspects.iter().map(|a| a.options.wrong[0].id.clone()).collect();
    let compat = Compat { no_all_answered_termination: true, ..Compat::default() };
    let mut ep = episode(&t, config(Mode::Eval, compat));
    for id in &wrongs {
        assert!(!answer(&mut ep, id).terminated);
    }
    assert!(!ep.is_done());
    // `[finish]` ends it with reward 0.
    let out = step(&mut ep, Action::Finish);
    assert_eq!((out.reward, out.terminated), (0.0, true));
    assert_eq!(ep.into_transcript().termination, Termination::Finished);
}

#[test]
fn aspect_score_keeps_the_best_per_letter() {
    // Reference §9: max reward per aspect letter over answer turns, summed, divided by the aspect count.
    let turn = |choice: &str, content: &str, reward: f64| TurnRecord {
        choice: choice.into(),
        content: content.into(),
        feedback: String::new(),
        reward,
        valid: true,
    };
    let turns = vec![
        turn("search", "flight", 0.2),
        turn("action", "F?", 0.6),
        turn("answer", "F3", 0.8),
        turn("answer", "F4", 0.0),
        turn("answer", "H2", 1.0),
    ];
    assert!((aspect_score(&turns, 3) - 0.6).abs() < 1e-9);
}

// ---------------------------------------------------------------------------------------------------------
// LLM side

#[test]
fn llm_parse_reads_realistic_outputs() {
    let t = flight_task();
    let q = Query::Search { task: t.clone(), query: "x".into() };
    let p = |text: &str| UserRole::parse(&q, text);
    assert_eq!(
        p("```json\n{\"alignment_judgement\": \"True\", \"alignment_aspect\": \"flight\"}\n```"),
        Some(Reply::Search { alignment: Alignment::Aligned, aspect: Some(Aspect::Flight) })
    );
    assert_eq!(
        p("Judgement: {\"alignment_judgement\": \"N/A\", \"alignment_aspect\": \"\"} done"),
        Some(Reply::Search { alignment: Alignment::Unrelated, aspect: None })
    );
    assert!(p("{\"alignment_aspect\": \"flight\"}").is_none(), "missing judgement");
    assert!(p("{\"alignment_judgement\": \"True\", \"alignment_aspect\": \"cruise\"}").is_none());
    let other = t.aspects.iter().find(|a| a.aspect != Aspect::Flight).unwrap().aspect;
    let car = format!("{{\"alignment_judgement\": \"True\", \"alignment_aspect\": \"{}\"}}", other.noun());
    assert_eq!(p(&car), Some(Reply::Search { alignment: Alignment::Aligned, aspect: Some(other) }));

    let remaining = vec![PrefRef::new(0), PrefRef::new(2)];
    let q = Query::Classify { task: t.clone(), history: vec![], utterance: "x".into(), remaining };
    let c = |text: &str| UserRole::parse(&q, text);
    assert_eq!(
        c("The agent asks about P3.\n{\"type\": 2, \"preference_id\": \"P3\"}"),
        Some(Reply::Classify { kind: UtteranceType::Preference, preference_id: Some("P3".into()) })
    );
    assert_eq!(
        c("{'type': '4', 'preference_id': None}"),
        Some(Reply::Classify { kind: UtteranceType::Vague, preference_id: None })
    );
    assert!(c("{\"type\": 2, \"preference_id\": \"P2\"}").is_none(), "P2 is not remaining");
    assert!(c("{\"type\": 7}").is_none());
    assert!(c("no idea").is_none());

    let q = Query::Chat { task: t.clone(), history: vec![], utterance: "hi".into(), seed: 0 };
    assert_eq!(
        UserRole::parse(&q, "{\"thought\": \"meh\", \"response\": \"Sure.\"}"),
        Some(Reply::Say { thought: "meh".into(), response: "Sure.".into() })
    );
    assert!(UserRole::parse(&q, "{\"thought\": \"meh\"}").is_none());
    assert!(UserRole::parse(&q, "{\"response\": \"  \"}").is_none());
}

#[test]
fn fallbacks_and_prompts() {
    let t = flight_task();
    let search = Query::Search { task: t.clone(), query: "flights".into() };
    assert_eq!(UserRole::fallback(&search), Reply::Search { alignment: Alignment::Failed, aspect: None });
    let classify =
        Query::Classify { task: t.clone(), history: vec![], utterance: "x".into(), remaining: vec![PrefRef::new(0)] };
    assert_eq!(
        UserRole::fallback(&classify),
        Reply::Classify { kind: UtteranceType::Conversation, preference_id: None }
    );
    let chat = Query::Chat { task: t.clone(), history: vec![], utterance: "x".into(), seed: 1 };
    assert_eq!(UserRole::fallback(&chat), Reply::Say { thought: String::new(), response: FALLBACK_REPLY.into() });
    let prompt = UserRole::prompt(&search);
    assert!(prompt.user.contains("alignment_judgement") && prompt.user.contains("alignment_aspect"));
    let prompt = UserRole::prompt(&classify);
    assert!(prompt.user.contains("preference_id") && prompt.user.contains("P1"));
    let reveal =
        Query::Reveal { task: t.clone(), history: vec![], utterance: "x".into(), preference: PrefRef::new(0), seed: 0 };
    let prompt = UserRole::prompt(&reveal);
    assert!(prompt.user.contains(&t.preference(0).unwrap().implicit) && prompt.user.contains("\"thought\""));
}

// ---------------------------------------------------------------------------------------------------------
// Misc

#[test]
fn scripted_user_needs_keywords_and_import_is_refused() {
    let mut task = (*flight_task()).clone();
    for a in &mut task.aspects {
        for p in &mut a.preferences {
            p.keywords.clear();
        }
    }
    let line = serde_json::to_string(&task).unwrap();
    let gym = TravelGym::from_jsonl(&line, "mem").unwrap();
    let err = gym.new_env(&task.id, &EnvConfig::default(), Arc::new(ScriptedUser)).err().unwrap();
    assert!(matches!(err, GymError::User(UserError::NoScriptedData { .. })));
    let err = import_original(std::path::Path::new("/nowhere")).unwrap_err();
    assert!(err.to_string().contains("not available"));
    // Broken data is refused at load.
    task.aspects[0].best_id = "Z9".into();
    assert!(TravelGym::from_jsonl(&serde_json::to_string(&task).unwrap(), "mem").is_err());
}

#[test]
fn export_round_trips() {
    let lines: Vec<String> = GYM.export_tasks().iter().take(30).map(|v| v.to_string()).collect();
    let gym = TravelGym::from_jsonl(&lines.join("\n"), "mem").unwrap();
    assert_eq!(gym.tasks().len(), 30);
    assert_eq!(**gym.task(&GYM.tasks.all()[3].id).unwrap(), *GYM.tasks.all()[3]);
}

#[test]
fn expert_beats_random_on_the_test_split() {
    let catalog = Catalog::builtin(&[GymKind::Travel]).unwrap();
    let user: Arc<dyn User> = Arc::new(ScriptedUser);
    let (expert, _) =
        block_on(evaluate(&catalog, &EvalPlan::new(Split::Test, AgentSpec::Expert), user.clone(), |_| {})).unwrap();
    let (random, _) =
        block_on(evaluate(&catalog, &EvalPlan::new(Split::Test, AgentSpec::Random), user, |_| {})).unwrap();
    let (e, r) = (expert.rows[0].mean_normalized, random.rows[0].mean_normalized);
    eprintln!("travel test split: expert {e:.3} (turns {:.2}), random {r:.3}", expert.rows[0].mean_turns);
    assert_eq!(expert.rows[0].episodes, 150);
    assert!(e >= 0.8, "expert {e}");
    assert!(r < 0.2, "random {r}");
    assert!(expert.rows[0].mean_turns <= 16.0);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        #[test]
        fn random_text_never_panics(choice in 0u8..4, text in ".{0,300}", long in proptest::bool::weighted(0.02)) {
            let t = GYM.tasks.all()[7].clone();
            let mut ep = episode(&t, config(Mode::Eval, Compat::default()));
            let content = if long { text.repeat(8192 / text.len().max(1) + 1) } else { text };
            let action = match choice {
                0 => Action::Search(content),
                1 => Action::Action(content),
                2 => Action::Answer(content),
                _ => Action::Finish,
            };
            let out = block_on(ep.step(Ok(action)));
            prop_assert!(out.reward.is_finite() && (0.0..=1.0).contains(&out.reward));
        }
    }
}
