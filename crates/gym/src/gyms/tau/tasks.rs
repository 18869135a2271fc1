//! TauGym's task generator: customer scenarios drawn from the generated database with a fixed seed. Each task
//! has the structured goal the scripted customer plays (`Scenario`), the tau-bench-style instruction text an
//! LLM customer plays, the gold tool calls whose replay on a fresh database defines success, and the outputs
//! the agent must tell the customer.

use std::collections::{BTreeMap, HashSet};

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::db::{Address, BaseDb, Catalog, Db, Order, OrderItem, PaymentMethod, User, Variant, money, round2};
use super::tools::{Call, execute};
use super::{Database, GoldAction, TauTask};
use crate::split::{self, Split};

pub const TASK_COUNT: usize = 300;
pub const TASK_SEED: u64 = 0x7A0_7A5C;
const TEST_FRACTION: f64 = 0.2;

/// What the customer wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    Cancel,
    Return,
    Exchange,
    ModifyItems,
    ModifyPayment,
    ModifyOrderAddress,
    ModifyUserAddress,
    /// How many variants of a product can be bought now (an information question).
    ProductCount,
    /// What an order cost (an information question).
    OrderTotal,
}

impl Goal {
    /// Whether the goal is a question only (no change to the database).
    pub fn is_question(self) -> bool {
        matches!(self, Goal::ProductCount | Goal::OrderTotal)
    }
}

/// How the customer identifies themself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Identity {
    Email,
    NameZip,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemRef {
    pub name: String,
    pub product_id: String,
    pub item_id: String,
    pub options: BTreeMap<String, String>,
}

impl ItemRef {
    fn of_order(i: &OrderItem) -> ItemRef {
        ItemRef {
            name: i.name.clone(),
            product_id: i.product_id.clone(),
            item_id: i.item_id.clone(),
            options: i.options.clone(),
        }
    }
    fn of_variant(name: &str, product_id: &str, v: &Variant) -> ItemRef {
        ItemRef {
            name: name.into(),
            product_id: product_id.into(),
            item_id: v.item_id.clone(),
            options: v.options.clone(),
        }
    }
    pub fn describe(&self) -> String {
        super::db::describe_item(&self.name, &self.options)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PaymentRef {
    pub id: String,
    /// How the customer names it ("PayPal account", "visa credit card ending in 1234").
    pub description: String,
}

/// The structure the scripted customer plays: who they are, what they know and what they want.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub goal: Goal,
    pub first_name: String,
    pub last_name: String,
    pub zip: String,
    pub email: String,
    pub identity: Identity,
    pub traits: Vec<String>,
    /// The order concerned, if any.
    #[serde(default)]
    pub order_id: Option<String>,
    /// Whether the customer can quote the order id (else they describe its items).
    #[serde(default)]
    pub knows_order_id: bool,
    /// The items the request is about (for a cancel or an unknown order id: what the order contains).
    #[serde(default)]
    pub items: Vec<ItemRef>,
    /// Items of the order that must stay as they are.
    #[serde(default)]
    pub other_items: Vec<ItemRef>,
    /// Replacements, aligned with `items` (exchange, item modification).
    #[serde(default)]
    pub new_items: Vec<ItemRef>,
    /// The cancellation reason as the tool spells it.
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub address: Option<Address>,
    #[serde(default)]
    pub payment: Option<PaymentRef>,
    /// What the customer asks (an information goal, or the amount of a refund).
    #[serde(default)]
    pub question: Option<String>,
}

impl Scenario {
    pub fn full_name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
    }
}

/// The customer's words for a cancellation reason.
pub fn reason_words(reason: &str) -> &'static str {
    match reason {
        "ordered by mistake" => "I ordered it by mistake",
        _ => "I no longer need it",
    }
}

fn list_items(items: &[ItemRef]) -> String {
    let d: Vec<String> = items.iter().map(|i| format!("the {}", i.describe())).collect();
    match d.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join("; ")),
    }
}

pub fn describe_items(items: &[ItemRef]) -> String {
    list_items(items)
}

/// The tau-bench-style instruction an LLM customer plays (our wording).
pub fn instruction(s: &Scenario) -> String {
    let who = match s.identity {
        Identity::NameZip => format!("Your name is {} and your zip code is {}.", s.full_name(), s.zip),
        Identity::Email => format!("Your name is {} and your email is {}.", s.full_name(), s.email),
    };
    let traits = format!("You are {}.", s.traits.join(", "));
    let order = match (&s.order_id, s.knows_order_id) {
        (Some(id), true) => format!("order {id}"),
        (Some(_), false) => {
            let all: Vec<ItemRef> = s.items.iter().chain(&s.other_items).cloned().collect();
            format!("the order that contains {} (you do not remember its order id)", list_items(&all))
        }
        (None, _) => String::new(),
    };
    let mut want = match s.goal {
        Goal::Cancel => format!(
            "You want to cancel {order} because {}.",
            reason_words(s.reason.as_deref().unwrap_or("")).replacen("I ", "you ", 1)
        ),
        Goal::Return => format!("You want to return {} from {order}.", list_items(&s.items)),
        Goal::Exchange => format!(
            "You received {order} and want to exchange {} for {}.",
            list_items(&s.items),
            list_items(&s.new_items)
        ),
        Goal::ModifyItems => format!(
            "{order} has not shipped yet; you want to change {} to {}.",
            list_items(&s.items),
            list_items(&s.new_items)
        ),
        Goal::ModifyPayment => format!("You want to pay for {order} with a different payment method."),
        Goal::ModifyOrderAddress => format!(
            "You want {order} shipped to {} instead.",
            s.address.as_ref().map(|a| a.one_line()).unwrap_or_default()
        ),
        Goal::ModifyUserAddress => format!(
            "You moved: you want the default address of your account changed to {}.",
            s.address.as_ref().map(|a| a.one_line()).unwrap_or_default()
        ),
        Goal::ProductCount | Goal::OrderTotal => String::new(),
    };
    if let Some(p) = &s.payment {
        want.push_str(&format!(" If a payment method is needed, you want to use your {}.", p.description));
    }
    if let Some(q) = &s.question {
        if s.goal.is_question() {
            want = format!("You want to ask: \"{q}\"");
        } else {
            want.push_str(&format!(" You also want to know: \"{q}\""));
        }
    }
    // A goal sentence may start with the order's words ("the order that contains …"): capitalise it.
    let mut chars = want.chars();
    let want = chars.next().map(|c| c.to_uppercase().collect::<String>() + chars.as_str()).unwrap_or_default();
    format!("{who} {traits} {want}")
}

/// The customer's first message (it names the kind of request, not its details).
pub fn opening(goal: Goal, rng: &mut ChaCha8Rng) -> String {
    let options: &[&str] = match goal {
        Goal::Cancel => &["Hi, I need to cancel an order I placed.", "Hello! I'd like to cancel one of my orders."],
        Goal::Return => {
            &["Hi, I'd like to return some things I received.", "Hello, I want to send back items from an order."]
        }
        Goal::Exchange => &[
            "Hi, I'd like to exchange something from an order I got.",
            "Hello, can I swap an item I received for a different one?",
        ],
        Goal::ModifyItems => &["Hi, I want to change an item in an order that hasn't shipped yet."],
        Goal::ModifyPayment => &["Hi, I'd like to change how I'm paying for one of my orders."],
        Goal::ModifyOrderAddress => &["Hi, I need an order shipped to a different address."],
        Goal::ModifyUserAddress => &["Hello, I moved recently and need to update the address on my account."],
        Goal::ProductCount => &["Hi, I have a quick question about one of your products."],
        Goal::OrderTotal => &["Hi, I have a question about one of my orders."],
    };
    options.choose(rng).copied().unwrap_or("Hi, I need some help.").to_string()
}

// ---------------------------------------------------------------------------------------------------------
// Generation

struct Draft {
    scenario: Scenario,
    actions: Vec<GoldAction>,
    outputs: Vec<String>,
    key: String,
}

fn order_items_of(order: &Order) -> Vec<ItemRef> {
    order.items.iter().map(ItemRef::of_order).collect()
}

fn payment_ref(pm: &PaymentMethod) -> PaymentRef {
    PaymentRef { id: pm.id().to_string(), description: pm.describe() }
}

fn balance_ok(pm: &PaymentMethod, amount: f64) -> bool {
    match pm {
        PaymentMethod::GiftCard { balance, .. } => amount <= *balance,
        _ => true,
    }
}

fn new_address(rng: &mut ChaCha8Rng, c: &Catalog) -> Address {
    let place = c.places.choose(rng);
    Address {
        address1: format!("{} {}", rng.random_range(10..=9999), c.streets.choose(rng).cloned().unwrap_or_default()),
        address2: if rng.random_bool(0.5) { format!("Apt {}", rng.random_range(1..=60)) } else { String::new() },
        city: place.map(|p| p.city.clone()).unwrap_or_default(),
        state: place.map(|p| p.state.clone()).unwrap_or_default(),
        country: "USA".into(),
        zip: format!("{}{:02}", place.map(|p| p.zip.as_str()).unwrap_or("100"), rng.random_range(0..100)),
    }
}

fn address_kwargs(a: &Address) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for (k, v) in [
        ("address1", &a.address1),
        ("address2", &a.address2),
        ("city", &a.city),
        ("state", &a.state),
        ("country", &a.country),
        ("zip", &a.zip),
    ] {
        m.insert(k.into(), json!(v));
    }
    m
}

fn gold(name: &str, kwargs: Value) -> GoldAction {
    GoldAction { name: name.into(), kwargs }
}

/// A replacement for each picked item: another available variant of the same product.
fn replacements(db: &BaseDb, items: &[ItemRef], rng: &mut ChaCha8Rng) -> Option<Vec<ItemRef>> {
    items
        .iter()
        .map(|it| {
            let product = db.product(&it.product_id)?;
            let choices: Vec<&Variant> =
                product.variants.values().filter(|v| v.available && v.item_id != it.item_id).collect();
            choices.choose(rng).map(|v| ItemRef::of_variant(&product.name, &product.product_id, v))
        })
        .collect()
}

fn draft(goal: Goal, db: &BaseDb, c: &Catalog, rng: &mut ChaCha8Rng) -> Option<Draft> {
    let user: &User = db.users.choose(rng)?;
    let mut traits = c.traits.clone();
    traits.shuffle(rng);
    traits.truncate(2);
    let mut s = Scenario {
        goal,
        first_name: user.name.first_name.clone(),
        last_name: user.name.last_name.clone(),
        zip: user.address.zip.clone(),
        email: user.email.clone(),
        identity: if rng.random_bool(0.5) { Identity::Email } else { Identity::NameZip },
        traits,
        order_id: None,
        knows_order_id: rng.random_bool(0.7),
        items: Vec::new(),
        other_items: Vec::new(),
        new_items: Vec::new(),
        reason: None,
        address: None,
        payment: None,
        question: None,
    };
    let orders: Vec<&Order> = user.orders.iter().filter_map(|id| db.order(id)).collect();
    let with_status = |status: &str| orders.iter().copied().filter(|o| o.status == status).collect::<Vec<_>>();
    let methods: Vec<&PaymentMethod> = user.payment_methods.values().collect();
    let mut outputs = Vec::new();
    let (actions, key) = match goal {
        Goal::Cancel => {
            let order = *with_status("pending").choose(rng)?;
            let reason = if rng.random_bool(0.5) { "no longer needed" } else { "ordered by mistake" };
            s.order_id = Some(order.order_id.clone());
            s.items = order_items_of(order);
            s.reason = Some(reason.into());
            if rng.random_bool(0.3) {
                s.question = Some("How much money will I get back?".into());
                outputs.push(money(order.total()));
            }
            (
                vec![gold("cancel_pending_order", json!({"order_id": order.order_id, "reason": reason}))],
                order.order_id.clone(),
            )
        }
        Goal::Return | Goal::Exchange | Goal::ModifyItems => {
            let status = if goal == Goal::ModifyItems { "pending" } else { "delivered" };
            let order = *with_status(status).choose(rng)?;
            let mut all = order_items_of(order);
            all.shuffle(rng);
            let max = if goal == Goal::Return { 3 } else { 2 };
            let n = rng.random_range(1..=all.len().min(max));
            let picked: Vec<ItemRef> = all[..n].to_vec();
            s.order_id = Some(order.order_id.clone());
            s.other_items = all[n..].to_vec();
            s.items = picked.clone();
            let item_ids: Vec<&str> = picked.iter().map(|i| i.item_id.as_str()).collect();
            if goal == Goal::Return {
                let original = order.payment_history.first()?.payment_method_id.clone();
                let gift = methods.iter().find(|m| matches!(m, PaymentMethod::GiftCard { .. }) && m.id() != original);
                let pm = match gift {
                    Some(g) if rng.random_bool(0.3) => *g,
                    _ => user.payment_methods.get(&original)?,
                };
                s.payment = Some(payment_ref(pm));
                if rng.random_bool(0.5) {
                    s.question = Some("How much will the refund be in total?".into());
                    let total: f64 = picked.iter().filter_map(|i| db.variant(&i.item_id)).map(|(_, v)| v.price).sum();
                    outputs.push(money(round2(total)));
                }
                let a = gold(
                    "return_delivered_order_items",
                    json!({"order_id": order.order_id, "item_ids": item_ids, "payment_method_id": pm.id()}),
                );
                (vec![a], order.order_id.clone())
            } else {
                let new = replacements(db, &picked, rng)?;
                let price = |i: &ItemRef| db.variant(&i.item_id).map(|(_, v)| v.price).unwrap_or(0.0);
                let diff = round2(new.iter().map(price).sum::<f64>() - picked.iter().map(price).sum::<f64>());
                let usable: Vec<&&PaymentMethod> = methods.iter().filter(|m| balance_ok(m, diff)).collect();
                let pm = **usable.choose(rng)?;
                s.payment = Some(payment_ref(pm));
                let new_ids: Vec<String> = new.iter().map(|i| i.item_id.clone()).collect();
                s.new_items = new;
                let name = if goal == Goal::Exchange {
                    "exchange_delivered_order_items"
                } else {
                    "modify_pending_order_items"
                };
                let a = gold(
                    name,
                    json!({"order_id": order.order_id, "item_ids": item_ids, "new_item_ids": new_ids, "payment_method_id": pm.id()}),
                );
                (vec![a], order.order_id.clone())
            }
        }
        Goal::ModifyPayment => {
            let order = *with_status("pending").choose(rng)?;
            let current = order.payment_history.first()?.payment_method_id.clone();
            let total = order.total();
            let usable: Vec<&&PaymentMethod> =
                methods.iter().filter(|m| m.id() != current && balance_ok(m, total)).collect();
            let pm = **usable.choose(rng)?;
            s.order_id = Some(order.order_id.clone());
            s.items = order_items_of(order);
            s.payment = Some(payment_ref(pm));
            let a =
                gold("modify_pending_order_payment", json!({"order_id": order.order_id, "payment_method_id": pm.id()}));
            (vec![a], order.order_id.clone())
        }
        Goal::ModifyOrderAddress => {
            let order = *with_status("pending").choose(rng)?;
            let address = new_address(rng, c);
            let mut kwargs = address_kwargs(&address);
            kwargs.insert("order_id".into(), json!(order.order_id));
            s.order_id = Some(order.order_id.clone());
            s.items = order_items_of(order);
            s.address = Some(address);
            (vec![gold("modify_pending_order_address", Value::Object(kwargs))], order.order_id.clone())
        }
        Goal::ModifyUserAddress => {
            let address = new_address(rng, c);
            let mut kwargs = address_kwargs(&address);
            kwargs.insert("user_id".into(), json!(user.user_id));
            s.address = Some(address);
            (vec![gold("modify_user_address", Value::Object(kwargs))], user.user_id.clone())
        }
        Goal::ProductCount => {
            let product = db.products.choose(rng)?;
            let count = product.variants.values().filter(|v| v.available).count();
            s.question = Some(format!("How many different {} options are available to buy right now?", product.name));
            outputs.push(count.to_string());
            (Vec::new(), product.product_id.clone())
        }
        Goal::OrderTotal => {
            let order = *orders.iter().filter(|o| o.status != "cancelled").copied().collect::<Vec<_>>().choose(rng)?;
            s.order_id = Some(order.order_id.clone());
            s.knows_order_id = true;
            s.items = order_items_of(order);
            s.question = Some(format!("What was the total price of my order {}?", order.order_id));
            outputs.push(money(order.total()));
            (Vec::new(), order.order_id.clone())
        }
    };
    // An amount like "54.30" could be written "54.3"; such drafts are skipped so that an output has one spelling.
    if outputs.iter().any(|o| o.contains('.') && o.ends_with('0')) {
        return None;
    }
    Some(Draft { scenario: s, actions, outputs, key: format!("{goal:?}:{key}") })
}

/// Whether the gold calls all succeed on a fresh database (a task whose gold fails would be unsolvable).
fn gold_applies(db: &std::sync::Arc<BaseDb>, actions: &[GoldAction]) -> bool {
    let mut fresh = Db::new(db.clone());
    actions.iter().all(|a| {
        let Some(arguments) = a.kwargs.as_object().cloned() else { return false };
        execute(&mut fresh, &Call { name: a.name.clone(), arguments }).is_some_and(|o| o.ok)
    })
}

/// The goal of each of `count` tasks, in fixed proportions, shuffled.
fn goal_plan(count: usize, rng: &mut ChaCha8Rng) -> Vec<Goal> {
    const WEIGHTS: [(Goal, usize); 9] = [
        (Goal::Cancel, 45),
        (Goal::Return, 45),
        (Goal::Exchange, 45),
        (Goal::ModifyItems, 36),
        (Goal::ModifyPayment, 30),
        (Goal::ModifyOrderAddress, 30),
        (Goal::ModifyUserAddress, 24),
        (Goal::ProductCount, 24),
        (Goal::OrderTotal, 21),
    ];
    let total: usize = WEIGHTS.iter().map(|(_, w)| w).sum();
    let mut plan: Vec<Goal> =
        WEIGHTS.iter().flat_map(|&(g, w)| std::iter::repeat_n(g, (w * count).div_ceil(total))).collect();
    plan.truncate(count);
    plan.shuffle(rng);
    plan
}

/// The built-in task set: `count` tasks over the database of `db_seed`, from `seed`.
pub fn generate(count: usize, seed: u64, db_seed: u64) -> Result<Vec<TauTask>, crate::gyms::GymError> {
    let c = super::db::catalog()?;
    let db = BaseDb::shared(db_seed)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let splits = split::assign(count, TEST_FRACTION, seed);
    let mut seen = HashSet::new();
    let mut tasks = Vec::with_capacity(count);
    for (i, goal) in goal_plan(count, &mut rng).into_iter().enumerate() {
        let mut chosen = None;
        for attempt in 0..600 {
            let Some(d) = draft(goal, &db, c, &mut rng) else { continue };
            // Distinct requests first; a repeat is accepted only when the database has no fresh one left.
            if (attempt < 500 && seen.contains(&d.key)) || !gold_applies(&db, &d.actions) {
                continue;
            }
            chosen = Some(d);
            break;
        }
        let Some(d) = chosen else {
            return Err(crate::gyms::GymError::Data {
                gym: crate::gyms::GymKind::Tau,
                location: format!("generated task {i}"),
                message: format!("no scenario found for the goal {goal:?}"),
            });
        };
        seen.insert(d.key.clone());
        let user_id =
            db.users.iter().find(|u| u.email == d.scenario.email).map(|u| u.user_id.clone()).unwrap_or_default();
        tasks.push(TauTask {
            id: format!("tau-{i:03}"),
            split: splits.get(i).copied().unwrap_or(Split::Train),
            database: Database::Generated { seed: db_seed },
            user_id,
            instruction: instruction(&d.scenario),
            opening: opening(goal, &mut rng),
            actions: d.actions,
            outputs: d.outputs,
            scenario: Some(d.scenario),
        });
    }
    Ok(tasks)
}
