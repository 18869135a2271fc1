//! The retail tools the agent calls with `answer` (after tau-bench's retail domain, our own implementation):
//! look-ups (users, orders, products), the write actions on pending and delivered orders and on the user's
//! address, a calculator, and the hand-over to a human. Every tool validates its arguments and the order's
//! state before it changes anything, and answers an `Error: …` text on bad input; nothing here panics on
//! agent input.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::db::{Address, Db, OrderItem, PaymentMethod, Transaction, round2};
use crate::gyms::function::{format_number, parse_rule};

/// One tool as the agent reads it in the tool list.
pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub params: &'static [(&'static str, &'static str)],
}

const ADDRESS_PARAMS: [(&str, &str); 6] = [
    ("address1", "The first line of the address, such as '123 Main Street'."),
    ("address2", "The second line of the address, such as 'Apt 1' or 'Suite 200' (may be empty)."),
    ("city", "The city, such as 'Denver'."),
    ("state", "The state, such as 'CO'."),
    ("country", "The country, such as 'USA'."),
    ("zip", "The zip code, such as '80202'."),
];

macro_rules! with_order {
    ($($p:expr),*) => { &[("order_id", "The order id, such as '#W0000000'; include the '#'."), $($p),*] };
}

pub const TOOLS: &[ToolSpec] = &[
    ToolSpec {
        name: "find_user_id_by_email",
        description: "Find a user's id from their email address.",
        params: &[("email", "The user's email address, such as 'someone@example.com'.")],
    },
    ToolSpec {
        name: "find_user_id_by_name_zip",
        description: "Find a user's id from their first name, last name and zip code.",
        params: &[
            ("first_name", "The first name, such as 'Mia'."),
            ("last_name", "The last name, such as 'Garcia'."),
            ("zip", "The zip code, such as '80202'."),
        ],
    },
    ToolSpec {
        name: "get_user_details",
        description: "Get a user's profile: name, email, default address, payment methods and order ids.",
        params: &[("user_id", "The user id, such as 'mia_garcia_1234'.")],
    },
    ToolSpec {
        name: "get_order_details",
        description: "Get an order's status, items, shipping address and payment history.",
        params: with_order!(),
    },
    ToolSpec {
        name: "get_product_details",
        description: "Get a product's variants: item ids, options, prices and availability.",
        params: &[("product_id", "The product id (not an item id), such as '1234567890'.")],
    },
    ToolSpec {
        name: "list_all_product_types",
        description: "List every product type the store sells with its product id.",
        params: &[],
    },
    ToolSpec {
        name: "cancel_pending_order",
        description: "Cancel a pending order. The payment is refunded to the original payment method (at once for a \
            gift card). Ask the customer for explicit confirmation first.",
        params: with_order!((
            "reason",
            "Why the order is cancelled: either 'no longer needed' or 'ordered by mistake'."
        )),
    },
    ToolSpec {
        name: "modify_pending_order_address",
        description: "Change the shipping address of a pending order. Ask the customer for explicit confirmation first.",
        params: &[
            ("order_id", "The order id, such as '#W0000000'; include the '#'."),
            ADDRESS_PARAMS[0],
            ADDRESS_PARAMS[1],
            ADDRESS_PARAMS[2],
            ADDRESS_PARAMS[3],
            ADDRESS_PARAMS[4],
            ADDRESS_PARAMS[5],
        ],
    },
    ToolSpec {
        name: "modify_pending_order_items",
        description: "Swap items of a pending order for other variants of the same products. This can be done once \
            per order; the price difference is charged or refunded through the given payment method. Ask the \
            customer for explicit confirmation first.",
        params: with_order!(
            ("item_ids", "The item ids to replace, a list such as ['1008292230']."),
            ("new_item_ids", "The replacement item ids, in the same order as item_ids; each of the same product."),
            ("payment_method_id", "The payment method for the price difference, such as 'gift_card_0000000'.")
        ),
    },
    ToolSpec {
        name: "modify_pending_order_payment",
        description: "Pay a pending order with another of the user's payment methods; the old payment is refunded. \
            Ask the customer for explicit confirmation first.",
        params: with_order!(("payment_method_id", "The new payment method, such as 'paypal_0000000'.")),
    },
    ToolSpec {
        name: "modify_user_address",
        description: "Change the default address on a user's profile. Ask the customer for explicit confirmation first.",
        params: &[
            ("user_id", "The user id, such as 'mia_garcia_1234'."),
            ADDRESS_PARAMS[0],
            ADDRESS_PARAMS[1],
            ADDRESS_PARAMS[2],
            ADDRESS_PARAMS[3],
            ADDRESS_PARAMS[4],
            ADDRESS_PARAMS[5],
        ],
    },
    ToolSpec {
        name: "return_delivered_order_items",
        description: "Request the return of items of a delivered order. The refund goes to the original payment \
            method or to one of the user's gift cards. Ask the customer for explicit confirmation first.",
        params: with_order!(
            ("item_ids", "The item ids to return, a list such as ['1008292230']."),
            ("payment_method_id", "Where the refund goes: the original payment method or a gift card.")
        ),
    },
    ToolSpec {
        name: "exchange_delivered_order_items",
        description: "Request an exchange of items of a delivered order for other variants of the same products. \
            The price difference is charged or refunded through the given payment method. Ask the customer for \
            explicit confirmation first.",
        params: with_order!(
            ("item_ids", "The item ids to exchange, a list such as ['1008292230']."),
            ("new_item_ids", "The new item ids, in the same order as item_ids; each of the same product."),
            ("payment_method_id", "The payment method for the price difference, such as 'gift_card_0000000'.")
        ),
    },
    ToolSpec {
        name: "calculate",
        description: "Compute an arithmetic expression with numbers, + - * / and parentheses; the result is rounded \
            to two decimals.",
        params: &[("expression", "The expression, such as '(12.5 + 7.25) * 2'.")],
    },
    ToolSpec {
        name: "transfer_to_human_agents",
        description: "Hand the customer over to a human agent, with a summary of the issue. This ends the \
            conversation; use it only when the request cannot be handled with the other tools.",
        params: &[("summary", "A short summary of the customer's issue.")],
    },
];

pub fn spec(name: &str) -> Option<&'static ToolSpec> {
    TOOLS.iter().find(|t| t.name == name)
}

/// The tool list shown on the first `search tools`.
pub fn tool_list_text() -> String {
    let mut out = String::from("Available Tools:\n");
    for t in TOOLS {
        out.push_str(&format!("- {}: {}\n  Parameters:\n", t.name, t.description));
        if t.params.is_empty() {
            out.push_str("    (none)\n");
        }
        for (p, d) in t.params {
            out.push_str(&format!("    - {p}: {d}\n"));
        }
    }
    out.trim_end().to_string()
}

/// A parsed `answer`: a tool name and its arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub name: String,
    pub arguments: Map<String, Value>,
}

fn strip_fence(text: &str) -> &str {
    let t = text.trim();
    if let Some(rest) = t.strip_prefix("```") {
        let rest = rest.strip_prefix("json").unwrap_or(rest);
        return rest.strip_suffix("```").unwrap_or(rest).trim();
    }
    t
}

fn arguments_of(v: Option<&Value>) -> Option<Map<String, Value>> {
    match v {
        None | Some(Value::Null) => Some(Map::new()),
        Some(Value::Object(m)) => Some(m.clone()),
        // OpenAI-style calls carry the arguments as a JSON string.
        Some(Value::String(s)) if s.trim().is_empty() => Some(Map::new()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        },
        Some(_) => None,
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Reads `{"name": …, "arguments": {…}}` (also `kwargs`/`parameters`), `name: {…}`, `name({…})`, or a bare
/// tool name; `None` when the text is none of these.
pub fn parse_call(text: &str) -> Option<Call> {
    let t = strip_fence(text);
    if t.starts_with('{') {
        let v = serde_json::from_str::<Value>(t).ok().or_else(|| crate::llm::extract_json(t))?;
        let obj = v.as_object()?;
        let name = obj.get("name")?.as_str()?.trim().to_string();
        let args = obj.get("arguments").or_else(|| obj.get("kwargs")).or_else(|| obj.get("parameters"));
        if !is_identifier(&name) {
            return None;
        }
        return Some(Call { name, arguments: arguments_of(args)? });
    }
    if is_identifier(t) {
        return Some(Call { name: t.to_string(), arguments: Map::new() });
    }
    let split = t.find([':', '('])?;
    let name = t[..split].trim();
    if !is_identifier(name) {
        return None;
    }
    let mut rest = t[split + 1..].trim();
    if t[split..].starts_with('(') {
        rest = rest.strip_suffix(')')?.trim();
    }
    if rest.is_empty() {
        return Some(Call { name: name.to_string(), arguments: Map::new() });
    }
    match serde_json::from_str::<Value>(rest).ok().or_else(|| crate::llm::extract_json(rest))? {
        Value::Object(m) => Some(Call { name: name.to_string(), arguments: m }),
        _ => None,
    }
}

/// The outcome of a tool: its observation, and whether the episode ends (the hand-over).
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub observation: String,
    pub ok: bool,
    pub ends: bool,
}

type ToolResult = Result<String, String>;

/// Reads a tool's arguments, refusing unknown and missing ones.
struct Args<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Args<'a> {
    fn new(spec: &ToolSpec, map: &'a Map<String, Value>) -> Result<Args<'a>, String> {
        if let Some(extra) = map.keys().find(|k| !spec.params.iter().any(|(p, _)| p == k)) {
            let known: Vec<&str> = spec.params.iter().map(|(p, _)| *p).collect();
            return Err(format!(
                "unexpected argument `{}` for {} (its arguments: {})",
                clip(extra),
                spec.name,
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ));
        }
        if let Some((missing, _)) = spec.params.iter().find(|(p, _)| !map.contains_key(*p)) {
            return Err(format!("missing argument `{missing}` for {}", spec.name));
        }
        Ok(Args { map })
    }

    fn str(&self, key: &str) -> Result<String, String> {
        match self.map.get(key) {
            Some(Value::String(s)) => Ok(s.trim().to_string()),
            // Zip codes and item ids are often sent as numbers.
            Some(Value::Number(n)) => Ok(n.to_string()),
            _ => Err(format!("`{key}` must be a string")),
        }
    }

    fn list(&self, key: &str) -> Result<Vec<String>, String> {
        match self.map.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.trim().to_string()),
                    Value::Number(n) => Ok(n.to_string()),
                    _ => Err(format!("`{key}` must be a list of item id strings")),
                })
                .collect(),
            _ => Err(format!("`{key}` must be a list of item id strings")),
        }
    }

    fn order_id(&self) -> Result<String, String> {
        Ok(normalize_order_id(&self.str("order_id")?))
    }

    fn address(&self) -> Result<Address, String> {
        Ok(Address {
            address1: self.str("address1")?,
            address2: self.str("address2")?,
            city: self.str("city")?,
            state: self.str("state")?,
            country: self.str("country")?,
            zip: self.str("zip")?,
        })
    }
}

/// Shortens agent text quoted back in an error message.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if s.chars().count() > 60 {
        out.push('…');
    }
    out
}

/// `W1234567` and `#w1234567` both mean `#W1234567`.
pub fn normalize_order_id(id: &str) -> String {
    let t = id.trim().trim_start_matches('#');
    if t.len() > 1 && (t.starts_with('W') || t.starts_with('w')) {
        format!("#W{}", &t[1..])
    } else {
        id.trim().to_string()
    }
}

fn to_json<T: serde::Serialize>(record: &T) -> String {
    serde_json::to_string(record).unwrap_or_else(|e| format!("Error: {e}"))
}

/// Runs a tool call on the database. Nothing changes unless the call succeeds.
pub fn execute(db: &mut Db, call: &Call) -> Option<Outcome> {
    let spec = spec(&call.name)?;
    let result = Args::new(spec, &call.arguments).and_then(|args| run(db, spec.name, &args));
    Some(match result {
        Ok(observation) => Outcome { observation, ok: true, ends: spec.name == "transfer_to_human_agents" },
        Err(e) => Outcome { observation: format!("Error: {e}"), ok: false, ends: false },
    })
}

fn run(db: &mut Db, name: &str, a: &Args) -> ToolResult {
    match name {
        "find_user_id_by_email" => {
            let email = a.str("email")?.to_lowercase();
            db.users()
                .find(|u| u.email.to_lowercase() == email)
                .map(|u| u.user_id.clone())
                .ok_or_else(|| "user not found".into())
        }
        "find_user_id_by_name_zip" => {
            let (first, last, zip) =
                (a.str("first_name")?.to_lowercase(), a.str("last_name")?.to_lowercase(), a.str("zip")?);
            db.users()
                .find(|u| {
                    u.name.first_name.to_lowercase() == first
                        && u.name.last_name.to_lowercase() == last
                        && u.address.zip == zip
                })
                .map(|u| u.user_id.clone())
                .ok_or_else(|| "user not found".into())
        }
        "get_user_details" => db.user(&a.str("user_id")?).map(to_json).ok_or_else(|| "user not found".into()),
        "get_order_details" => db.order(&a.order_id()?).map(to_json).ok_or_else(|| "order not found".into()),
        "get_product_details" => {
            let id = a.str("product_id")?;
            match db.product(&id) {
                Some(p) => Ok(to_json(p)),
                None if db.variant(&id).is_some() => {
                    Err("product not found; this is an item id — product ids are listed by list_all_product_types"
                        .into())
                }
                None => Err("product not found".into()),
            }
        }
        "list_all_product_types" => {
            let map: BTreeMap<&str, &str> =
                db.products().iter().map(|p| (p.name.as_str(), p.product_id.as_str())).collect();
            Ok(to_json(&map))
        }
        "cancel_pending_order" => cancel(db, a),
        "modify_pending_order_address" => {
            let id = a.order_id()?;
            let address = a.address()?;
            let order = db.order(&id).ok_or("order not found")?;
            if !order.status.starts_with("pending") {
                return Err(format!("non-pending order cannot be modified (status: {})", order.status));
            }
            let order = db.order_mut(&id).ok_or("order not found")?;
            order.address = address;
            Ok(to_json(order))
        }
        "modify_pending_order_items" => swap_items(db, a, false),
        "exchange_delivered_order_items" => swap_items(db, a, true),
        "modify_pending_order_payment" => change_payment(db, a),
        "modify_user_address" => {
            let user_id = a.str("user_id")?;
            let address = a.address()?;
            let user = db.user_mut(&user_id).ok_or("user not found")?;
            user.address = address;
            Ok(to_json(user))
        }
        "return_delivered_order_items" => {
            let id = a.order_id()?;
            let item_ids = a.list("item_ids")?;
            let method = a.str("payment_method_id")?;
            let order = db.order(&id).ok_or("order not found")?;
            if order.status != "delivered" {
                return Err(format!("only a delivered order can have items returned (status: {})", order.status));
            }
            check_items(&order.items, &item_ids)?;
            let user = db.user(&order.user_id).ok_or("user not found")?;
            let original = order.payment_history.first().map(|t| t.payment_method_id.as_str()).unwrap_or("");
            let is_gift_card = matches!(user.payment_methods.get(&method), Some(PaymentMethod::GiftCard { .. }));
            if method != original && !is_gift_card {
                return Err(
                    "the refund must go to the original payment method or to one of the user's gift cards".into()
                );
            }
            let mut sorted = item_ids;
            sorted.sort();
            let order = db.order_mut(&id).ok_or("order not found")?;
            order.status = "return requested".into();
            order.return_items = Some(sorted);
            order.return_payment_method_id = Some(method);
            Ok(to_json(order))
        }
        "calculate" => calculate(&a.str("expression")?),
        "transfer_to_human_agents" => {
            a.str("summary")?;
            Ok("Transfer successful".into())
        }
        other => Err(format!("unknown tool {other}")),
    }
}

fn cancel(db: &mut Db, a: &Args) -> ToolResult {
    let id = a.order_id()?;
    let reason = a.str("reason")?;
    if reason != "no longer needed" && reason != "ordered by mistake" {
        return Err("the reason must be 'no longer needed' or 'ordered by mistake'".into());
    }
    let order = db.order(&id).ok_or("order not found")?;
    if order.status != "pending" {
        return Err(format!("only a pending order can be cancelled (status: {})", order.status));
    }
    let user_id = order.user_id.clone();
    let refunds: Vec<Transaction> = order
        .payment_history
        .iter()
        .filter(|t| t.transaction_type == "payment")
        .map(|t| Transaction {
            transaction_type: "refund".into(),
            amount: t.amount,
            payment_method_id: t.payment_method_id.clone(),
        })
        .collect();
    // Gift cards are refunded at once.
    if let Some(user) = db.user_mut(&user_id) {
        for r in &refunds {
            if let Some(PaymentMethod::GiftCard { balance, .. }) = user.payment_methods.get_mut(&r.payment_method_id) {
                *balance = round2(*balance + r.amount);
            }
        }
    }
    let order = db.order_mut(&id).ok_or("order not found")?;
    order.payment_history.extend(refunds);
    order.status = "cancelled".into();
    order.cancel_reason = Some(reason);
    Ok(to_json(order))
}

/// Every id must be in the order, counting repeats.
fn check_items(items: &[OrderItem], ids: &[String]) -> Result<(), String> {
    if ids.is_empty() {
        return Err("item_ids is empty".into());
    }
    for id in ids {
        let wanted = ids.iter().filter(|x| *x == id).count();
        let present = items.iter().filter(|i| &i.item_id == id).count();
        if present < wanted {
            return Err(format!("item {} not found in the order (or listed more often than it was ordered)", clip(id)));
        }
    }
    Ok(())
}

fn swap_items(db: &mut Db, a: &Args, delivered: bool) -> ToolResult {
    let id = a.order_id()?;
    let item_ids = a.list("item_ids")?;
    let new_ids = a.list("new_item_ids")?;
    let method = a.str("payment_method_id")?;
    let order = db.order(&id).ok_or("order not found")?;
    if delivered && order.status != "delivered" {
        return Err(format!("only a delivered order can be exchanged (status: {})", order.status));
    }
    if !delivered && order.status != "pending" {
        return Err(format!(
            "only a pending order whose items were not modified yet can be modified (status: {})",
            order.status
        ));
    }
    check_items(&order.items, &item_ids)?;
    if item_ids.len() != new_ids.len() {
        return Err("item_ids and new_item_ids must have the same length".into());
    }
    let mut diff = 0.0;
    let mut replacements = Vec::new();
    for (old, new) in item_ids.iter().zip(&new_ids) {
        let old_item = order.items.iter().find(|i| &i.item_id == old).ok_or("item not found")?;
        let (product, variant) = db.variant(new).ok_or_else(|| format!("new item {} not found", clip(new)))?;
        if product.product_id != old_item.product_id {
            return Err(format!("new item {} is not a variant of the same product as item {old}", clip(new)));
        }
        if new == old {
            return Err(format!("new item {new} is the same as the old one"));
        }
        if !variant.available {
            return Err(format!("new item {new} is not available"));
        }
        diff += variant.price - old_item.price;
        replacements.push((old.clone(), variant.clone()));
    }
    let diff = round2(diff);
    let user = db.user(&order.user_id).ok_or("user not found")?;
    let pm = user.payment_methods.get(&method).ok_or("payment method not found")?;
    if let PaymentMethod::GiftCard { balance, .. } = pm
        && diff > *balance
    {
        return Err("insufficient gift card balance to pay for the price difference".into());
    }
    let user_id = order.user_id.clone();
    if delivered {
        let (mut olds, mut news) = (item_ids, new_ids);
        olds.sort();
        news.sort();
        let order = db.order_mut(&id).ok_or("order not found")?;
        order.status = "exchange requested".into();
        order.exchange_items = Some(olds);
        order.exchange_new_items = Some(news);
        order.exchange_payment_method_id = Some(method);
        order.exchange_price_difference = Some(diff);
        return Ok(to_json(order));
    }
    if let Some(PaymentMethod::GiftCard { balance, .. }) =
        db.user_mut(&user_id).and_then(|u| u.payment_methods.get_mut(&method))
    {
        *balance = round2(*balance - diff);
    }
    let order = db.order_mut(&id).ok_or("order not found")?;
    order.payment_history.push(Transaction {
        transaction_type: if diff > 0.0 { "payment" } else { "refund" }.into(),
        amount: round2(diff.abs()),
        payment_method_id: method,
    });
    for (old, v) in replacements {
        // Repeated ids replace one ordered unit each.
        if let Some(item) = order.items.iter_mut().find(|i| i.item_id == old) {
            item.item_id = v.item_id.clone();
            item.price = v.price;
            item.options = v.options.clone();
        }
    }
    order.status = "pending (item modified)".into();
    Ok(to_json(order))
}

fn change_payment(db: &mut Db, a: &Args) -> ToolResult {
    let id = a.order_id()?;
    let method = a.str("payment_method_id")?;
    let order = db.order(&id).ok_or("order not found")?;
    if !order.status.starts_with("pending") {
        return Err(format!("non-pending order cannot be modified (status: {})", order.status));
    }
    let [payment] = order.payment_history.as_slice() else {
        return Err("a pending order must have exactly one payment to change".into());
    };
    if payment.transaction_type != "payment" {
        return Err("a pending order must have exactly one payment to change".into());
    }
    if payment.payment_method_id == method {
        return Err("the new payment method must differ from the current one".into());
    }
    let amount = payment.amount;
    let old = payment.payment_method_id.clone();
    let user_id = order.user_id.clone();
    let user = db.user(&user_id).ok_or("user not found")?;
    let pm = user.payment_methods.get(&method).ok_or("payment method not found")?;
    if let PaymentMethod::GiftCard { balance, .. } = pm
        && amount > *balance
    {
        return Err("insufficient gift card balance to pay for the order".into());
    }
    if let Some(user) = db.user_mut(&user_id) {
        if let Some(PaymentMethod::GiftCard { balance, .. }) = user.payment_methods.get_mut(&method) {
            *balance = round2(*balance - amount);
        }
        if let Some(PaymentMethod::GiftCard { balance, .. }) = user.payment_methods.get_mut(&old) {
            *balance = round2(*balance + amount);
        }
    }
    let order = db.order_mut(&id).ok_or("order not found")?;
    order.payment_history.push(Transaction { transaction_type: "payment".into(), amount, payment_method_id: method });
    order.payment_history.push(Transaction { transaction_type: "refund".into(), amount, payment_method_id: old });
    Ok(to_json(order))
}

/// Evaluates numbers with `+ - * / **` and parentheses; anything else is refused.
pub fn calculate(expression: &str) -> ToolResult {
    if expression.trim().is_empty() || !expression.chars().all(|c| "0123456789+-*/(). ".contains(c)) {
        return Err("invalid characters in expression (use numbers, + - * / and parentheses)".into());
    }
    let expr = parse_rule(expression).map_err(|e| e.to_string())?;
    let value = expr.eval(&[0.0; 4]).map_err(|e| e.to_string())?;
    Ok(format_number(round2(value)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gyms::tau::db::{BaseDb, DB_SEED};
    use serde_json::json;

    fn call(name: &str, args: Value) -> Call {
        Call { name: name.into(), arguments: args.as_object().unwrap().clone() }
    }

    #[test]
    fn calls_parse_in_every_accepted_shape() {
        let want =
            Call { name: "get_user_details".into(), arguments: json!({"user_id": "x"}).as_object().unwrap().clone() };
        assert_eq!(parse_call(r#"{"name": "get_user_details", "arguments": {"user_id": "x"}}"#), Some(want.clone()));
        assert_eq!(parse_call(r#"{"name": "get_user_details", "kwargs": {"user_id": "x"}}"#), Some(want.clone()));
        assert_eq!(
            parse_call(r#"{"name": "get_user_details", "arguments": "{\"user_id\": \"x\"}"}"#),
            Some(want.clone())
        );
        assert_eq!(parse_call(r#"get_user_details: {"user_id": "x"}"#), Some(want.clone()));
        assert_eq!(parse_call(r#"get_user_details({"user_id": "x"})"#), Some(want.clone()));
        assert_eq!(
            parse_call("```json\n{\"name\": \"get_user_details\", \"arguments\": {\"user_id\": \"x\"}}\n```"),
            Some(want)
        );
        assert_eq!(parse_call("list_all_product_types").unwrap().arguments.len(), 0);
        for bad in [
            "",
            "please look me up",
            "{\"arguments\": {}}",
            "{\"name\": 3}",
            "get_user_details: [1]",
            "{\"name\": \"a b\"}",
        ] {
            assert_eq!(parse_call(bad), None, "{bad}");
        }
    }

    #[test]
    fn calculator_is_safe() {
        assert_eq!(calculate("(12.5 + 7.25) * 2"), Ok("39.5".into()));
        assert_eq!(calculate("10 / 3"), Ok("3.33".into()));
        assert!(calculate("__import__('os')").is_err());
        assert!(calculate("1 / 0").is_err());
        assert!(calculate("((").is_err());
    }

    #[test]
    fn bad_arguments_are_errors_and_change_nothing() {
        let base = BaseDb::shared(DB_SEED).unwrap();
        let mut db = Db::new(base.clone());
        let h = db.hash();
        let pending = base.orders.iter().find(|o| o.status == "pending").unwrap().order_id.clone();
        let cases = [
            call("cancel_pending_order", json!({"order_id": pending, "reason": "changed my mind"})),
            call("cancel_pending_order", json!({"order_id": pending})),
            call("cancel_pending_order", json!({"order_id": pending, "reason": "no longer needed", "x": 1})),
            call("cancel_pending_order", json!({"order_id": 5, "reason": "no longer needed"})),
            call(
                "return_delivered_order_items",
                json!({"order_id": pending, "item_ids": ["1"], "payment_method_id": "p"}),
            ),
            call(
                "modify_pending_order_items",
                json!({"order_id": pending, "item_ids": "x", "new_item_ids": [], "payment_method_id": "p"}),
            ),
            call("get_user_details", json!({"user_id": "nobody"})),
        ];
        for c in &cases {
            let out = execute(&mut db, c).unwrap();
            assert!(!out.ok && out.observation.starts_with("Error: "), "{c:?} -> {}", out.observation);
        }
        assert_eq!(db.hash(), h);
        assert!(execute(&mut db, &call("drop_database", json!({}))).is_none());
    }

    #[test]
    fn cancel_refunds_and_is_order_independent() {
        let base = BaseDb::shared(DB_SEED).unwrap();
        let order = base.orders.iter().find(|o| o.status == "pending").unwrap();
        let mut db = Db::new(base.clone());
        let c = call(
            "cancel_pending_order",
            json!({"order_id": order.order_id.trim_start_matches('#'), "reason": "ordered by mistake"}),
        );
        let out = execute(&mut db, &c).unwrap();
        assert!(out.ok, "{}", out.observation);
        let after = db.order(&order.order_id).unwrap();
        assert_eq!(after.status, "cancelled");
        assert_eq!(after.payment_history.last().unwrap().transaction_type, "refund");
        // A second cancel fails and changes nothing.
        let h = db.hash();
        assert!(!execute(&mut db, &c).unwrap().ok);
        assert_eq!(db.hash(), h);
    }
}
