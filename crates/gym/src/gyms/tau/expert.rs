//! TauGym's scripted expert: a privileged agent (it reads the task's scenario and gold calls) that still plays
//! a proper service conversation: it lists the tools, asks the customer for their identity and request, looks
//! up the account, order and products, asks for the payment method, confirms the change with the customer,
//! makes the gold calls, and reports the result with the requested outputs.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::json;

use super::db::BaseDb;
use super::tasks::{Goal, Identity, ItemRef, Scenario};
use super::{GoldAction, TauTask};
use crate::agent::{Agent, AgentTurn, Message};
use crate::tool::Choice;
use crate::user::UserError;

pub struct TauExpert {
    plan: Vec<(Choice, String)>,
    step: usize,
}

fn call(name: &str, arguments: serde_json::Value) -> String {
    json!({"name": name, "arguments": arguments}).to_string()
}

fn gold_call(a: &GoldAction) -> String {
    json!({"name": a.name, "arguments": a.kwargs}).to_string()
}

fn item_line(i: &ItemRef) -> String {
    format!("the {} (item {})", i.name, i.item_id)
}

fn options_line(i: &ItemRef) -> String {
    i.options.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(" and ")
}

fn join_and(parts: &[String]) -> String {
    match parts {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(" and ")),
    }
}

impl TauExpert {
    pub fn new(task: Arc<TauTask>, base: Arc<BaseDb>) -> Result<TauExpert, UserError> {
        let s = task.scenario.as_ref().ok_or(UserError::NoScriptedData {
            gym: "tau",
            task: task.id.clone(),
            missing: "the customer scenario the expert plays",
        })?;
        Ok(TauExpert { plan: plan(&task, s, &base), step: 0 })
    }
}

fn plan(task: &TauTask, s: &Scenario, base: &BaseDb) -> Vec<(Choice, String)> {
    use Choice::{Action, Answer, Search};
    let mut p = vec![(Search, "tools".to_string())];
    let order = s.order_id.clone().unwrap_or_default();
    let output = task.outputs.first().cloned().unwrap_or_default();
    match s.goal {
        Goal::ProductCount => {
            p.push((Action, "Hello! I'm happy to help. What would you like to know?".into()));
            p.push((Answer, call("list_all_product_types", json!({}))));
            let name = s.question.as_deref().unwrap_or("");
            let product = base.products.iter().find(|pr| name.contains(&format!(" {} ", pr.name)));
            let (pid, pname) = product.map(|pr| (pr.product_id.clone(), pr.name.clone())).unwrap_or_default();
            p.push((Answer, call("get_product_details", json!({"product_id": pid}))));
            p.push((Action, format!("I checked: there are {output} {pname} options available to buy right now.")));
            return p;
        }
        Goal::OrderTotal => {
            p.push((Action, "Hello! I'm happy to help. What would you like to know?".into()));
            p.push((Answer, call("get_order_details", json!({"order_id": order}))));
            p.push((Action, format!("The total price of your order {order} was ${output}.")));
            return p;
        }
        _ => {}
    }
    p.push((
        Action,
        "Hello! I can help with that. First, could you please tell me your email address, or your name and zip code, \
         so I can find your account?"
            .into(),
    ));
    p.push((
        Answer,
        match s.identity {
            Identity::Email => call("find_user_id_by_email", json!({"email": s.email})),
            Identity::NameZip => call(
                "find_user_id_by_name_zip",
                json!({"first_name": s.first_name, "last_name": s.last_name, "zip": s.zip}),
            ),
        },
    ));
    let ask = match s.goal {
        Goal::Cancel => "Which order would you like to cancel, and what is the reason for cancelling it?",
        Goal::Return => "Which order are the items from, and which items would you like to return?",
        Goal::Exchange => "Which order is it, which items would you like to exchange, and what would you like instead?",
        Goal::ModifyItems => {
            "Which order is it, which items would you like to change, and what would you like instead?"
        }
        Goal::ModifyPayment => "Which order is it, and which payment method would you like to use for it now?",
        Goal::ModifyOrderAddress => "Which order should go to a new address, and what is that address?",
        _ => "What new address would you like on your account?",
    };
    p.push((Action, format!("Thank you, I found your account. {ask}")));
    if s.order_id.is_some() {
        if !s.knows_order_id {
            p.push((Answer, call("get_user_details", json!({"user_id": task.user_id}))));
        }
        p.push((Answer, call("get_order_details", json!({"order_id": order}))));
    }
    let products: BTreeSet<&str> = s.new_items.iter().map(|i| i.product_id.as_str()).collect();
    for pid in products {
        p.push((Answer, call("get_product_details", json!({"product_id": pid}))));
    }
    let pay = s.payment.as_ref().map(|m| format!("your {} ({})", m.description, m.id)).unwrap_or_default();
    match s.goal {
        Goal::Return => p.push((
            Action,
            "Where would you like the refund to go: the original payment method or a gift card?".into(),
        )),
        Goal::Exchange | Goal::ModifyItems => {
            p.push((Action, "Which payment method would you like to use for any price difference?".into()))
        }
        _ => {}
    }
    let items: Vec<String> = s.items.iter().map(item_line).collect();
    let swaps: Vec<String> = s
        .items
        .iter()
        .zip(&s.new_items)
        .map(|(old, new)| format!("{} for the one with {} (item {})", item_line(old), options_line(new), new.item_id))
        .collect();
    let amount = if output.is_empty() { String::new() } else { format!(" The refund comes to ${output}.") };
    let address = s.address.as_ref().map(|a| a.one_line()).unwrap_or_default();
    let (proposal, report) = match s.goal {
        Goal::Cancel => (
            format!(
                "I will cancel order {order} (reason: {}), and the payment will be refunded to the original payment \
                 method.{amount}",
                s.reason.as_deref().unwrap_or("")
            ),
            format!("Your order {order} has been cancelled, and the refund is on its way.{amount}"),
        ),
        Goal::Return => (
            format!("I will return {} from order {order}, with the refund going to {pay}.{amount}", join_and(&items)),
            format!("The return of {} from order {order} has been requested.{amount}", join_and(&items)),
        ),
        Goal::Exchange => (
            format!("I will exchange {} in order {order}, settling any price difference with {pay}.", join_and(&swaps)),
            format!(
                "The exchange for order {order} has been requested; you will get instructions for sending the old items back."
            ),
        ),
        Goal::ModifyItems => (
            format!("I will change {} in order {order}, settling any price difference with {pay}.", join_and(&swaps)),
            format!("The items of order {order} have been changed."),
        ),
        Goal::ModifyPayment => (
            format!(
                "I will change the payment method of order {order} to {pay}; the original payment will be refunded."
            ),
            format!("The payment method of order {order} has been updated to {pay}."),
        ),
        Goal::ModifyOrderAddress => (
            format!("I will change the shipping address of order {order} to {address}."),
            format!("The shipping address of order {order} has been updated to {address}."),
        ),
        _ => (
            format!("I will update the default address on your account to {address}."),
            format!("The default address on your account has been updated to {address}."),
        ),
    };
    p.push((Action, format!("To confirm: {proposal} Shall I go ahead (yes/no)?")));
    for a in &task.actions {
        p.push((Answer, gold_call(a)));
    }
    p.push((Action, format!("{report} Is there anything else I can help you with?")));
    p
}

#[async_trait::async_trait]
impl Agent for TauExpert {
    async fn act(&mut self, _conversation: &[Message]) -> AgentTurn {
        let Some((choice, content)) = self.plan.get(self.step).cloned() else {
            return AgentTurn::Text("Thank you for contacting us. Goodbye!".into());
        };
        self.step += 1;
        AgentTurn::call(choice, content)
    }
}
