//! Tests of TauGym: the task set, each reward and termination rule of reference §4.8, the scripted customer's
//! understanding, the exploits an RL agent would try, the LLM customer's prompt and parsing, the expert, and
//! the import of the original task files.

use std::sync::{Arc, LazyLock};

use futures::executor::block_on;
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::agent::RandomAgent;
use crate::env::{Episode, Termination};
use crate::eval::{AgentSpec, EvalPlan, evaluate, run_episode};
use crate::gyms::Catalog;
use crate::user::ScriptedUser;

static GYM: LazyLock<TauGym> = LazyLock::new(|| TauGym::builtin().unwrap());

fn task_where(f: impl Fn(&TauTask) -> bool) -> Arc<TauTask> {
    GYM.tasks.all().iter().find(|t| f(t)).cloned().expect("a task of that kind")
}

fn goal_task(goal: Goal) -> Arc<TauTask> {
    task_where(|t| t.scenario.as_ref().is_some_and(|s| s.goal == goal))
}

fn episode(id: &str) -> Episode {
    let cfg = EnvConfig::default();
    Episode::new(GYM.new_env(id, &cfg, Arc::new(ScriptedUser)).unwrap(), cfg)
}

fn say(ep: &mut Episode, text: &str) -> crate::env::StepOutcome {
    block_on(ep.step(Ok(Action::Action(text.into()))))
}

fn call(ep: &mut Episode, text: &str) -> crate::env::StepOutcome {
    block_on(ep.step(Ok(Action::Answer(text.into()))))
}

fn gold_calls(t: &TauTask) -> Vec<String> {
    t.actions.iter().map(|a| json!({"name": a.name, "arguments": a.kwargs}).to_string()).collect()
}

fn scripted(t: &Arc<TauTask>, history: &[Turn], message: &str) -> String {
    let q = Query::Customer { task: t.clone(), history: history.to_vec(), message: message.into(), seed: 7 };
    UserRole::scripted(&q).unwrap().text().to_string()
}

/// The report that makes the scripted customer end the chat for a task.
fn done_line(t: &TauTask) -> String {
    let order = t.scenario.as_ref().and_then(|s| s.order_id.clone()).unwrap_or_default();
    let outputs = t.outputs.iter().map(|o| format!("${o}")).collect::<Vec<_>>().join(" ");
    match t.scenario.as_ref().map(|s| s.goal) {
        Some(Goal::Cancel) => format!("Your order {order} has been cancelled. Refund: {outputs}."),
        Some(Goal::Return) => format!("Your return for order {order} has been requested. Refund: {outputs}."),
        _ => "done".into(),
    }
}

// ---------------------------------------------------------------------------------------------------------
// Task set

#[test]
fn builtin_task_set_is_sized_split_and_deterministic() {
    assert_eq!(GYM.tasks().len(), 300);
    assert_eq!(GYM.task_ids(Some(Split::Test)).len(), 60);
    assert_eq!(GYM.task_ids(Some(Split::Train)).len(), 240);
    let again = tasks::generate(tasks::TASK_COUNT, tasks::TASK_SEED, db::DB_SEED).unwrap();
    for (a, b) in GYM.tasks.all().iter().zip(&again) {
        assert_eq!(
            (&a.id, &a.instruction, &a.actions, &a.outputs, a.split),
            (&b.id, &b.instruction, &b.actions, &b.outputs, b.split)
        );
    }
    // Every goal occurs, and the question goals carry outputs but no database change.
    for goal in [
        Goal::Cancel,
        Goal::Return,
        Goal::Exchange,
        Goal::ModifyItems,
        Goal::ModifyPayment,
        Goal::ModifyOrderAddress,
        Goal::ModifyUserAddress,
        Goal::ProductCount,
        Goal::OrderTotal,
    ] {
        let t = goal_task(goal);
        assert_eq!(t.actions.is_empty(), goal.is_question(), "{goal:?}");
    }
    assert!(GYM.tasks.all().iter().filter(|t| !t.outputs.is_empty() && !t.actions.is_empty()).count() >= 10);
    // The exported tasks load back.
    let jsonl: String = GYM.export_tasks().iter().map(|v| v.to_string() + "\n").collect();
    let back = TauGym::from_jsonl(&jsonl, "export").unwrap();
    assert_eq!(back.tasks(), GYM.tasks());
}

// ---------------------------------------------------------------------------------------------------------
// Reward and termination rules

// Reference §4.8: `search tools` gives the tool list the first time and "already provided" later; `search
// help` the help text; anything else is not supported. Every search pays 0.
#[test]
fn search_rules() {
    let t = goal_task(Goal::Cancel);
    let mut ep = episode(&t.id);
    let out = block_on(ep.step(Ok(Action::Search("tools".into()))));
    assert!(out.feedback.starts_with("Available Tools:\n- find_user_id_by_email: "));
    assert!(out.feedback.contains("  Parameters:\n    - email: "));
    let out = block_on(ep.step(Ok(Action::Search("Tools".into()))));
    assert_eq!(out.feedback, TOOLS_AGAIN);
    let out = block_on(ep.step(Ok(Action::Search("help".into()))));
    assert_eq!(out.feedback, HELP_TEXT);
    let out = block_on(ep.step(Ok(Action::Search("order #W1234567".into()))));
    assert_eq!((out.feedback.as_str(), out.reward, out.terminated), (SEARCH_UNSUPPORTED, 0.0, false));
}

// Reference §4.8: an unparsable call gets the invalid-format message with reward 0 and no database step; an
// unknown tool gets "Unknown action".
#[test]
fn invalid_and_unknown_calls() {
    let t = goal_task(Goal::Cancel);
    let mut ep = episode(&t.id);
    for bad in ["cancel my order please", "{\"name\": }", "{\"arguments\": {}}"] {
        let out = call(&mut ep, bad);
        assert_eq!((out.feedback.as_str(), out.reward, out.terminated), (INVALID_CALL, 0.0, false));
    }
    let out = call(&mut ep, "{\"name\": \"refund_everything\", \"arguments\": {}}");
    assert!(out.feedback.starts_with("Unknown action `refund_everything`"));
    let out = call(&mut ep, "get_order_details: {\"order_id\": \"#W0000000\"}");
    assert_eq!(out.feedback, "Error: order not found");
}

// Reference §4.8: the reward is paid only at the end: 1.0 when the database matches the gold replay (and the
// outputs were told); the customer's ###STOP### ends the episode.
#[test]
fn gold_actions_then_stop_pay_one() {
    let t = task_where(|t| t.scenario.as_ref().is_some_and(|s| s.goal == Goal::Return) && !t.outputs.is_empty());
    let mut ep = episode(&t.id);
    for c in gold_calls(&t) {
        let out = call(&mut ep, &c);
        assert_eq!((out.reward, out.terminated), (0.0, false), "{}", out.feedback);
        assert!(!out.feedback.starts_with("Error"), "{}", out.feedback);
    }
    let out = say(&mut ep, &done_line(&t));
    assert!(out.feedback.contains(customer::STOP), "{}", out.feedback);
    assert_eq!((out.reward, out.terminated), (1.0, true));
    let tr = ep.into_transcript();
    assert_eq!((tr.score, tr.normalized, tr.success, tr.termination), (1.0, 1.0, true, Termination::Terminated));
}

// Reference §4.8: with `outputs`, every output must appear in some agent message; the database alone is not
// enough.
#[test]
fn outputs_are_required() {
    let t = task_where(|t| t.scenario.as_ref().is_some_and(|s| s.goal == Goal::Cancel) && !t.outputs.is_empty());
    let mut ep = episode(&t.id);
    for c in gold_calls(&t) {
        call(&mut ep, &c);
    }
    let order = t.scenario.as_ref().unwrap().order_id.clone().unwrap();
    let out = say(&mut ep, &format!("Your order {order} has been cancelled. The refund is 1.11 dollars."));
    assert!(out.terminated, "{}", out.feedback);
    assert_eq!(out.reward, 0.0);
}

// Reference §4.8: a database that differs from the gold replay (here: nothing done) scores 0 at STOP.
#[test]
fn claiming_success_without_acting_scores_zero() {
    let t = goal_task(Goal::Cancel);
    let mut ep = episode(&t.id);
    let out = say(&mut ep, &done_line(&t));
    assert!(out.terminated);
    assert_eq!(out.reward, 0.0);
    assert!(!ep.into_transcript().success);
}

// Deviation (documented in the module): `[finish]` pays the reward of the state at that moment.
#[test]
fn finish_pays_the_current_state() {
    let t = task_where(|t| t.outputs.is_empty() && !t.actions.is_empty());
    let mut ep = episode(&t.id);
    for c in gold_calls(&t) {
        call(&mut ep, &c);
    }
    let out = block_on(ep.step(Ok(Action::Finish)));
    assert_eq!((out.reward, out.terminated), (1.0, true));
    assert_eq!(ep.into_transcript().termination, Termination::Finished);
    let mut ep = episode(&t.id);
    let out = block_on(ep.step(Ok(Action::Finish)));
    assert_eq!((out.reward, out.terminated), (0.0, true));
}

// Reference §4.8: `transfer_to_human_agents` ends the episode (reward from the state then: 0 here).
#[test]
fn transfer_ends_the_episode() {
    let t = goal_task(Goal::Exchange);
    let mut ep = episode(&t.id);
    let out = call(&mut ep, r#"{"name": "transfer_to_human_agents", "arguments": {"summary": "wants an exchange"}}"#);
    assert_eq!((out.feedback.as_str(), out.reward, out.terminated), ("Transfer successful", 0.0, true));
}

// Reference §3.3/§4.8: the step budget (16) truncates an episode that never ends.
#[test]
fn budget_truncates() {
    let t = goal_task(Goal::ModifyPayment);
    let mut ep = episode(&t.id);
    for i in 0..16 {
        let out = say(&mut ep, "Could you tell me a bit more?");
        assert_eq!(out.truncated, i == 15);
        assert_eq!(out.reward, 0.0);
    }
    assert_eq!(ep.into_transcript().termination, Termination::MaxSteps);
}

// ---------------------------------------------------------------------------------------------------------
// Exploits

// Calling every tool (each with plausible arguments for the customer's own data) changes the database away
// from the gold state: 0.
#[test]
fn calling_every_tool_scores_zero() {
    let t = goal_task(Goal::Return);
    let s = t.scenario.as_ref().unwrap();
    let order = s.order_id.clone().unwrap();
    let user = GYM.dbs[&db::DB_SEED].user(&t.user_id).unwrap().clone();
    let pay = user.payment_methods.keys().next().unwrap().clone();
    let item = s.items[0].item_id.clone();
    let new = s.items[0].item_id.clone();
    let addr =
        json!({"address1": "1 A St", "address2": "", "city": "X", "state": "CO", "country": "USA", "zip": "80000"});
    let mut ep = episode(&t.id);
    let mut calls = vec![
        json!({"name": "find_user_id_by_email", "arguments": {"email": s.email}}),
        json!({"name": "get_user_details", "arguments": {"user_id": t.user_id}}),
        json!({"name": "list_all_product_types", "arguments": {}}),
        json!({"name": "exchange_delivered_order_items", "arguments": {"order_id": order, "item_ids": [item], "new_item_ids": [new], "payment_method_id": pay}}),
        json!({"name": "return_delivered_order_items", "arguments": {"order_id": order, "item_ids": s.items.iter().chain(&s.other_items).map(|i| i.item_id.clone()).collect::<Vec<_>>(), "payment_method_id": pay}}),
        json!({"name": "calculate", "arguments": {"expression": "1 + 1"}}),
    ];
    let mut m = addr.as_object().unwrap().clone();
    m.insert("user_id".into(), json!(t.user_id));
    calls.push(json!({"name": "modify_user_address", "arguments": m}));
    for o in &user.orders {
        calls.push(json!({"name": "cancel_pending_order", "arguments": {"order_id": o, "reason": "no longer needed"}}));
    }
    for c in &calls {
        let out = call(&mut ep, &c.to_string());
        assert!(!out.terminated);
    }
    for c in gold_calls(&t) {
        call(&mut ep, &c);
    }
    let out = say(&mut ep, &done_line(&t));
    assert!(out.terminated);
    assert_eq!(out.reward, 0.0);
}

// Spamming confirmations and success claims does nothing to the database and earns 0; the customer never
// says yes to a message that proposes nothing.
#[test]
fn spamming_confirmations_scores_zero() {
    let t = goal_task(Goal::ModifyOrderAddress);
    let mut ep = episode(&t.id);
    for _ in 0..5 {
        let out = say(&mut ep, "Yes, confirmed. Please proceed, go ahead, confirm!");
        assert!(!out.feedback.to_lowercase().starts_with("yes"), "{}", out.feedback);
        assert_eq!(out.reward, 0.0);
    }
    let out =
        say(&mut ep, "Everything has been updated successfully: cancelled, returned, exchanged, address changed.");
    assert_eq!(out.reward, 0.0);
    let out = block_on(ep.step(Ok(Action::Finish)));
    assert_eq!(out.reward, 0.0);
}

// Doing the gold change plus one more write is not the gold state: 0.
#[test]
fn an_extra_change_scores_zero() {
    let t = goal_task(Goal::ModifyUserAddress);
    let mut ep = episode(&t.id);
    for c in gold_calls(&t) {
        call(&mut ep, &c);
    }
    let user = GYM.dbs[&db::DB_SEED].user(&t.user_id).unwrap().clone();
    if let Some(o) = user.orders.iter().find(|o| GYM.dbs[&db::DB_SEED].order(o).unwrap().status == "pending") {
        call(
            &mut ep,
            &json!({"name": "cancel_pending_order", "arguments": {"order_id": o, "reason": "ordered by mistake"}})
                .to_string(),
        );
        let out = block_on(ep.step(Ok(Action::Finish)));
        assert_eq!(out.reward, 0.0);
    } else {
        let mut args = t.actions[0].kwargs.as_object().unwrap().clone();
        args.insert("zip".into(), json!("00001"));
        call(&mut ep, &json!({"name": "modify_user_address", "arguments": args}).to_string());
        let out = block_on(ep.step(Ok(Action::Finish)));
        assert_eq!(out.reward, 0.0);
    }
}

// Reciting every candidate number in one message does not count as telling the answer; neither does a
// number hidden inside a longer one.
#[test]
fn reciting_candidates_earns_nothing() {
    let t = task_where(|t| t.scenario.as_ref().is_some_and(|s| s.goal == Goal::ProductCount));
    let answer = &t.outputs[0];
    let all: Vec<String> = (0..=20).map(|n| n.to_string()).collect();
    let mut ep = episode(&t.id);
    let out = say(&mut ep, "Hello, what would you like to know?");
    assert!(out.feedback.contains("How many"), "{}", out.feedback);
    let out = say(&mut ep, &format!("It is one of {}.", all.join(", ")));
    assert!(out.terminated, "{}", out.feedback);
    assert_eq!(out.reward, 0.0);
    assert!(output_told(answer, &format!("There are {answer} options.")));
    assert!(!output_told("7", "order #W1234567 and 17 items"));
    assert!(!output_told("7", "about 7.5 dollars"));
    assert!(output_told("1093.34", "That comes to $1,093.34."));
    assert!(!output_told("3", &format!("maybe {}", all.join(" or "))));
    // Prices listed beside a count do not make the count a recital.
    assert!(output_told("7", "There are 7: 10.11, 12.13, 14.15, 16.17, 18.19, 20.21 and 22.23 dollars."));
}

// A repeated message gets the same kind of answer and earns nothing; a keyword list gets a neutral reply.
#[test]
fn repeats_and_keyword_stuffing_earn_nothing() {
    let t = goal_task(Goal::Exchange);
    let mut ep = episode(&t.id);
    for _ in 0..3 {
        let out = say(&mut ep, "Which order is it?");
        assert_eq!(out.reward, 0.0);
    }
    let s = t.scenario.as_ref().unwrap();
    let reply = scripted(&t, &[], "email, name, zip, order id, items, instead, reason, address, payment, card");
    assert!(!reply.contains(&s.email) && !reply.contains(&s.zip), "{reply}");
    // Asking everything in one sentence gets at most three things answered.
    let reply = scripted(
        &t,
        &[],
        "Please tell me your email, your order id, which items you want to exchange, what you want instead, and which payment method to use.",
    );
    assert!(reply.contains("one step at a time"), "{reply}");
    assert!(!reply.contains(&s.payment.as_ref().unwrap().description), "{reply}");
}

// ---------------------------------------------------------------------------------------------------------
// The scripted customer

#[test]
fn customer_reveals_identity_only_when_asked_with_synonyms() {
    let t =
        task_where(|t| t.scenario.as_ref().is_some_and(|s| s.identity == Identity::NameZip && s.goal == Goal::Cancel));
    let s = t.scenario.as_ref().unwrap();
    let hello = scripted(&t, &[], "Hello! How can I help you today?");
    assert!(!hello.contains(&s.zip) && !hello.contains(&s.last_name), "{hello}");
    assert!(hello.to_lowercase().contains("cancel"), "{hello}");
    for ask in ["What is your postal code?", "Could you share the zip code on your account?", "May I have your ZIP?"] {
        let r = scripted(&t, &[], ask);
        assert!(r.contains(&s.zip), "{ask} -> {r}");
    }
    let r = scripted(&t, &[], "Could you give me your full name and postal code?");
    assert!(r.contains(&s.full_name()) && r.contains(&s.zip), "{r}");
    let r = scripted(&t, &[], "To verify your identity, I need a few details.");
    assert!(r.contains(&s.zip), "{r}");
    // An email user asked for the email under another spelling.
    let t = task_where(|t| t.scenario.as_ref().is_some_and(|s| s.identity == Identity::Email));
    let s = t.scenario.as_ref().unwrap();
    let r = scripted(&t, &[], "What's the e-mail address on the account?");
    assert!(r.contains(&s.email) && !r.contains(&s.zip), "{r}");
}

#[test]
fn customer_answers_order_reason_payment_in_any_order() {
    let t = task_where(|t| t.scenario.as_ref().is_some_and(|s| s.goal == Goal::Cancel && s.knows_order_id));
    let s = t.scenario.as_ref().unwrap();
    let order = s.order_id.clone().unwrap();
    let r = scripted(&t, &[], "Why do you want to cancel, and which order is it?");
    assert!(r.contains(&order), "{r}");
    assert!(r.contains(tasks::reason_words(s.reason.as_deref().unwrap())), "{r}");
    // A customer who does not know the order id describes it instead of inventing one.
    let t = task_where(|t| t.scenario.as_ref().is_some_and(|s| s.goal == Goal::Return && !s.knows_order_id));
    let s = t.scenario.as_ref().unwrap();
    let r = scripted(&t, &[], "Can you give me the order number?");
    assert!(!r.contains("#W") && r.contains(&s.items[0].name), "{r}");
    let r = scripted(&t, &[], "How would you like to receive the refund: to which payment method?");
    assert!(r.contains(&s.payment.as_ref().unwrap().description), "{r}");
    // Something the scenario does not cover: no invented fact.
    let r = scripted(&t, &[], "What is the reason for the return?");
    assert!(r.starts_with("I don't"), "{r}");
}

#[test]
fn customer_confirms_only_the_intended_change() {
    let t = task_where(|t| t.scenario.as_ref().is_some_and(|s| s.goal == Goal::Cancel && s.knows_order_id));
    let s = t.scenario.as_ref().unwrap();
    let order = s.order_id.clone().unwrap();
    let yes = scripted(&t, &[], &format!("Shall I cancel order {order} now (yes/no)?"));
    assert!(yes.starts_with("Yes"), "{yes}");
    let yes = scripted(&t, &[], &format!("Order {order}: do you want me to go ahead with the cancellation?"));
    assert!(yes.starts_with("Yes"), "{yes}");
    // Negated, wrong action, wrong order: refused with a correction.
    let no = scripted(&t, &[], &format!("I will not cancel order {order}; shall I proceed?"));
    assert!(no.starts_with("No"), "{no}");
    let no = scripted(&t, &[], &format!("Shall I return the items of order {order}?"));
    assert!(no.starts_with("No"), "{no}");
    let no = scripted(&t, &[], "Shall I cancel order #W0000001 now?");
    assert!(no.starts_with("No") && no.contains(&order), "{no}");
    // Listing every action at once is not a proposal of the goal.
    let no = scripted(&t, &[], &format!("Shall I cancel, return and exchange order {order}?"));
    assert!(no.starts_with("No"), "{no}");
}

#[test]
fn customer_is_neutral_when_lost_and_stops_when_done() {
    let t = goal_task(Goal::ModifyPayment);
    for odd in ["", "???", "asdf qwer zxcv", "The weather is lovely today."] {
        let r = scripted(&t, &[], odd);
        assert!(NEUTRAL_REPLIES.contains(&r.as_str()), "{odd:?} -> {r}");
    }
    let order = t.scenario.as_ref().unwrap().order_id.clone().unwrap();
    let r = scripted(&t, &[], &format!("The payment method for order {order} has been updated successfully."));
    assert!(r.contains(customer::STOP), "{r}");
    let r = scripted(&t, &[], &format!("The payment method for order {order} has not been updated yet."));
    assert!(!r.contains(customer::STOP), "{r}");
}

#[test]
fn customer_tells_reports_from_proposals() {
    let t = task_where(|t| {
        t.scenario.as_ref().is_some_and(|s| s.goal == Goal::Cancel && s.knows_order_id) && t.outputs.is_empty()
    });
    let order = t.scenario.as_ref().unwrap().order_id.clone().unwrap();
    for done in [
        format!("Your order {order} has been successfully cancelled. Is there anything else I can help you with?"),
        format!("I've cancelled order {order} for you; the refund will reach your card in 5-7 business days."),
        format!("I can confirm that order {order} was cancelled."),
        format!("All done: order {order} is now cancelled."),
    ] {
        let r = scripted(&t, &[], &done);
        assert!(r.contains(customer::STOP), "{done} -> {r}");
    }
    for not_done in [
        format!("I found order {order}. Would you like to cancel it?"),
        format!("Order {order} has been located. Would you like me to cancel it?"),
        format!("Order {order} has not been cancelled yet."),
        format!("Before anything is cancelled: is order {order} the right one?"),
    ] {
        let r = scripted(&t, &[], &not_done);
        assert!(!r.contains(customer::STOP), "{not_done} -> {r}");
    }
    let r = scripted(&t, &[], &format!("I found order {order}. Would you like to cancel it?"));
    assert!(r.starts_with("Yes"), "{r}");
    // A report of the wrong change is challenged.
    let r = scripted(&t, &[], &format!("The items of order {order} have been returned."));
    assert!(r.starts_with("Wait"), "{r}");
}

const NEUTRAL_REPLIES: [&str; 4] = [
    "Sorry, I'm not sure what you mean.",
    "Hmm, could you say that another way?",
    "I'm not sure I follow. What do you need from me?",
    "Sorry, I don't understand.",
];

// ---------------------------------------------------------------------------------------------------------
// LLM customer

#[test]
fn llm_prompt_parse_and_fallback() {
    let t = goal_task(Goal::Exchange);
    let history = vec![Turn { agent: "Hi, may I have your email?".into(), customer: "Sure, it's a@b.c".into() }];
    let q = Query::Customer { task: t.clone(), history, message: "Which order is it?".into(), seed: 0 };
    let p = UserRole::prompt(&q);
    assert!(p.system.contains(&t.instruction) && p.system.contains(customer::STOP));
    assert!(
        p.user.contains(&t.opening)
            && p.user.contains("Customer: Sure, it's a@b.c")
            && p.user.ends_with("next message.")
    );
    let parse = |s: &str| UserRole::parse(&q, s).map(|r| r.text().to_string());
    assert_eq!(
        parse("<think>they want the order</think>\nIt's order #W1234567."),
        Some("It's order #W1234567.".into())
    );
    assert_eq!(parse("Customer: Thanks, that's all! ###STOP###"), Some("Thanks, that's all! ###STOP###".into()));
    assert_eq!(parse("reasoning only</think>  "), None);
    assert_eq!(parse("   "), None);
    let fb = UserRole::fallback(&q);
    assert_eq!(fb.text(), customer::FALLBACK);
    assert!(!fb.text().contains(customer::STOP));
}

// ---------------------------------------------------------------------------------------------------------
// Expert and random agent

#[test]
fn expert_solves_the_test_split_and_random_does_not() {
    let catalog = Catalog::builtin(&[GymKind::Tau]).unwrap();
    let user: Arc<dyn User> = Arc::new(ScriptedUser);
    let (expert, transcripts) =
        block_on(evaluate(&catalog, &EvalPlan::new(Split::Test, AgentSpec::Expert), user.clone(), |_| {})).unwrap();
    let failed: Vec<String> = transcripts
        .iter()
        .filter(|t| !t.success)
        .map(|t| format!("{}: {:?}", t.task_id, t.turns.iter().map(|r| (&r.content, &r.feedback)).collect::<Vec<_>>()))
        .collect();
    let row = &expert.rows[0];
    assert_eq!(row.episodes, 60);
    assert!(row.mean_normalized >= 0.8, "expert {}: {failed:#?}", row.mean_normalized);
    assert!(row.mean_turns <= 14.0, "{}", row.mean_turns);
    let (random, _) =
        block_on(evaluate(&catalog, &EvalPlan::new(Split::Test, AgentSpec::Random), user, |_| {})).unwrap();
    assert!(random.rows[0].mean_normalized <= 0.05, "random {}", random.rows[0].mean_normalized);
    eprintln!(
        "tau test split: expert {:.3} ({:.1} turns), random {:.3}",
        row.mean_normalized, row.mean_turns, random.rows[0].mean_normalized
    );
}

#[test]
fn random_agent_runs_without_panics_on_train_tasks() {
    let user: Arc<dyn User> = Arc::new(ScriptedUser);
    let cfg = EnvConfig::default();
    for (i, id) in GYM.task_ids(Some(Split::Train)).iter().take(40).enumerate() {
        let mut agent = RandomAgent::new(GymKind::Tau, i as u64);
        let t = block_on(run_episode(&*GYM, id, &mut agent, user.clone(), &cfg)).unwrap();
        assert!(t.score == 0.0 || t.score == 1.0);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Import

/// A stand-in for an LLM customer (only its kind matters here).
struct FakeLlm;

#[async_trait::async_trait]
impl User for FakeLlm {
    fn kind(&self) -> UserKind {
        UserKind::Llm
    }
    async fn reply(&self, query: &UserQuery) -> Result<UserReply, UserError> {
        Ok(query.fallback())
    }
}

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/userrl-data");

#[test]
fn import_reads_the_original_files_and_refuses_to_play_them() {
    let root = std::path::Path::new(SHARED);
    if !root.join("tasks/TauGym/tau_test.json").exists() {
        // The shared data is not part of the repository; elsewhere this test checks only the error path.
        assert!(import_original(std::path::Path::new("/nonexistent")).is_err());
        return;
    }
    let values = import_original(root).unwrap();
    assert_eq!(values.len(), 665);
    let jsonl: String = values.iter().map(|v| v.to_string() + "\n").collect();
    let gym = TauGym::from_jsonl(&jsonl, "import").unwrap();
    assert_eq!(gym.task_ids(Some(Split::Test)).len(), 165);
    assert_eq!(gym.task_ids(Some(Split::Train)).len(), 500);
    let t = gym.task("retail-train-000").unwrap();
    assert_eq!(t.database, Database::TauBench { category: "retail".into() });
    assert!(!t.actions.is_empty() && !t.instruction.is_empty() && !t.opening.is_empty() && t.scenario.is_none());
    assert!(
        matches!(gym.task("airline-000").unwrap().database, Database::TauBench { ref category } if category == "airline")
    );
    let cfg = EnvConfig::default();
    match gym.new_env("retail-train-000", &cfg, Arc::new(ScriptedUser)) {
        Err(GymError::User(UserError::NoScriptedData { gym: "tau", .. })) => {}
        other => panic!("expected NoScriptedData, got {:?}", other.err()),
    }
    match gym.new_env("retail-000", &cfg, Arc::new(FakeLlm)) {
        Err(GymError::Data { message, .. }) => assert!(message.contains("tau-bench's retail database"), "{message}"),
        other => panic!("expected a data error, got {:?}", other.err()),
    }
    assert!(gym.expert("retail-000", 0).is_err());
}

#[test]
fn generated_tasks_need_a_scenario_for_the_scripted_customer_only() {
    let mut t = (*goal_task(Goal::Cancel)).clone();
    t.scenario = None;
    let gym = TauGym::from_tasks(vec![t.clone()]).unwrap();
    let cfg = EnvConfig::default();
    assert!(matches!(
        gym.new_env(&t.id, &cfg, Arc::new(ScriptedUser)),
        Err(GymError::User(UserError::NoScriptedData { .. }))
    ));
    // An LLM customer plays from the instruction alone.
    let mut ep = Episode::new(gym.new_env(&t.id, &cfg, Arc::new(FakeLlm)).unwrap(), cfg);
    let out = say(&mut ep, "Hello!");
    assert_eq!(out.feedback, customer::FALLBACK);
}

// ---------------------------------------------------------------------------------------------------------
// Robustness and speed

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    #[test]
    fn random_input_never_panics(choice in 0u8..4, content in "(?s).{0,300}", task in 0usize..300) {
        let id = GYM.tasks.all()[task].id.clone();
        let mut ep = episode(&id);
        let action = match choice {
            0 => Action::Action(content.clone()),
            1 => Action::Answer(content.clone()),
            2 => Action::Search(content.clone()),
            _ => Action::Answer(format!("{{\"name\": \"cancel_pending_order\", \"arguments\": {{\"order_id\": {:?}, \"reason\": {:?}}}}}", content, content)),
        };
        let out = block_on(ep.step(Ok(action)));
        prop_assert!(out.reward.is_finite() && (0.0..=1.0).contains(&out.reward));
    }
}

#[test]
fn huge_and_odd_messages_are_handled() {
    let t = goal_task(Goal::Exchange);
    let mut ep = episode(&t.id);
    let huge = "order ".repeat(1365);
    for text in [huge.as_str(), "\u{0}\u{7}\u{1b}[31m", "注文をキャンセルしたい 🙏", "#W#W#W ### STOP"] {
        let out = say(&mut ep, text);
        assert_eq!(out.reward, 0.0);
        let out = call(&mut ep, text);
        assert_eq!(out.reward, 0.0);
    }
}

#[test]
fn scripted_steps_are_fast() {
    let t = goal_task(Goal::Exchange);
    let start = std::time::Instant::now();
    let mut ep = episode(&t.id);
    let mut n = 0;
    while start.elapsed().as_millis() < 300 {
        if ep.is_done() {
            ep = episode(&t.id);
        }
        say(&mut ep, "Which order is it, and which items would you like to exchange?");
        n += 1;
    }
    // Debug builds are far slower than release; this only guards against pathological costs.
    eprintln!("tau scripted steps (debug build): {} per second", n * 1000 / 300);
    assert!(n >= 300, "{n} steps in 300 ms");
}
