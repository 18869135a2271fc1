//! TauGym's customer: the scripted customer, a rule-based player of a task's `Scenario`, and the prompt for an
//! LLM customer in the tau-bench style.
//!
//! The scripted customer reads the agent's message for what it asks (identity, order, items, replacements,
//! reason, address, payment; synonyms, any word order), answers only that, from the scenario only, confirms a
//! proposed change only when the proposal matches the goal (right action, order, items, payment, address; a
//! negated or contradicting proposal is refused with a correction), and ends the chat with `###STOP###` once
//! the agent reports the goal done (or answers the question). Anything else gets a neutral line. The reward
//! never comes from the customer, so flattering or pushing the customer earns nothing; the database decides.

use std::sync::LazyLock;

use regex::Regex;

use super::tasks::{Goal, Identity, ItemRef, Scenario, describe_items, reason_words};
use super::{TauTask, Turn};
use crate::llm::Prompt;
use crate::text::{Parsed, Phrase, is_keyword_list, mix, pick};

pub const STOP: &str = "###STOP###";

/// At most this many things asked in one message are answered; the rest wait for a later message.
const MAX_TOPICS: usize = 3;

fn phrases(list: &[&str]) -> Vec<Phrase> {
    list.iter().map(|p| Phrase::new(p)).collect()
}

struct Lexicon {
    email: Vec<Phrase>,
    zip: Vec<Phrase>,
    identity: Vec<Phrase>,
    order: Vec<Phrase>,
    items: Vec<Phrase>,
    new_items: Vec<Phrase>,
    reason: Vec<Phrase>,
    address: Vec<Phrase>,
    payment: Vec<Phrase>,
    help: Vec<Phrase>,
    confirm: Vec<Phrase>,
    /// Phrases that ask permission for an action, whatever follows.
    proposal: Vec<Phrase>,
    /// Phrases that ask permission when an action verb follows them.
    soft_proposal: Vec<Phrase>,
    cancel: Vec<Phrase>,
    return_: Vec<Phrase>,
    exchange: Vec<Phrase>,
    change: Vec<Phrase>,
    pay: Vec<Phrase>,
    place: Vec<Phrase>,
}

static LEX: LazyLock<Lexicon> = LazyLock::new(|| Lexicon {
    email: phrases(&["email", "e-mail", "e mail", "mail address"]),
    zip: phrases(&["zip", "zip code", "zipcode", "postal code", "postcode", "post code"]),
    identity: phrases(&[
        "verify",
        "verification",
        "identity",
        "authenticate",
        "identify you",
        "locate your account",
        "find your account",
        "look up your account",
        "look you up",
        "pull up your account",
        "user id",
        "account details",
    ]),
    order: phrases(&[
        "order id",
        "order number",
        "order no",
        "which order",
        "what order",
        "which of your orders",
        "which one of your orders",
        "order identifier",
        "order reference",
        "order are you",
        "order you",
        "order would you",
        "order do you",
        "order is it",
    ]),
    items: phrases(&[
        "which item",
        "what item",
        "which product",
        "what product",
        "which thing",
        "which piece",
        "item you",
        "item would you",
        "item do you",
        "product you",
        "what would you like to return",
        "what do you want to return",
        "what are you returning",
        "which one",
        "which of the items",
        "what did you order",
        "what was in the order",
        "what is in the order",
    ]),
    new_items: phrases(&[
        "instead",
        "replace it with",
        "replace them with",
        "exchange it for",
        "exchange them for",
        "exchange for",
        "swap it for",
        "change it to",
        "change them to",
        "which color",
        "what color",
        "which colour",
        "what colour",
        "which size",
        "what size",
        "which option",
        "what option",
        "which variant",
        "what variant",
        "which version",
        "new item",
        "replacement",
        "would you like to get",
        "do you want to get",
    ]),
    reason: phrases(&["reason", "why", "what caused", "what made you"]),
    address: phrases(&[
        "address",
        "where should",
        "ship it to",
        "ship to",
        "deliver to",
        "delivered to",
        "street",
        "where do you live",
        "moved to",
    ]),
    payment: phrases(&[
        "payment",
        "pay",
        "paid",
        "card",
        "paypal",
        "refund to",
        "refund go",
        "refunded to",
        "refund method",
        "charge",
        "price difference",
        "which method",
        "what method",
    ]),
    help: phrases(&[
        "how can i help",
        "how may i help",
        "how can i assist",
        "how may i assist",
        "what can i do for you",
        "what can i help",
        "help you with",
        "assist you with",
        "what would you like to know",
        "your question",
        "what do you need",
        "what brings you",
        "what seems to be",
        "what is the issue",
        "what is your request",
        "tell me more",
    ]),
    confirm: phrases(&[
        "confirm",
        "proceed",
        "go ahead",
        "shall i",
        "should i",
        "do you want me to",
        "would you like me to",
        "is that correct",
        "is this correct",
        "is that right",
        "is this right",
        "yes or no",
        "yes no",
        "ok to",
        "okay to",
        "sound good",
        "look good",
        "is that ok",
        "is that okay",
        "do you agree",
        "can i go ahead",
    ]),
    proposal: phrases(&[
        "shall i",
        "should i",
        "would you like me to",
        "do you want me to",
        "want me to",
        "are you sure",
        "yes or no",
        "yes no",
        "may i proceed",
        "can i proceed",
        "shall we",
    ]),
    soft_proposal: phrases(&["would you like to", "do you want to", "confirm", "proceed", "go ahead"]),
    cancel: phrases(&["cancel", "cancelled", "canceled", "cancellation", "cancelling", "canceling"]),
    return_: phrases(&["return", "returned", "returning"]),
    exchange: phrases(&["exchange", "exchanged", "exchanging", "swap", "swapped", "replace", "replaced", "replacing"]),
    change: phrases(&[
        "modify",
        "modified",
        "change",
        "changed",
        "changing",
        "update",
        "updated",
        "updating",
        "switch",
        "switched",
        "replace",
        "replaced",
        "swap",
        "swapped",
        "exchange",
        "exchanged",
    ]),
    pay: phrases(&["payment", "pay", "paid", "paying", "charged"]),
    place: phrases(&["address", "ship", "shipped", "shipping", "deliver", "delivery"]),
});

static ORDER_ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)#?\bw(\d{7})\b").expect("static regex"));

fn has_answer_number(text: &str) -> bool {
    !super::number_tokens(text).is_empty()
}

/// Whether a verb of the list occurs and is not negated.
fn affirmed(p: &Parsed, list: &[Phrase]) -> bool {
    p.find_any(list) == Some(false)
}

fn mentions(p: &Parsed, list: &[Phrase]) -> bool {
    p.find_any(list).is_some()
}

/// The action verbs that a proposal for `goal` must use, and those that contradict it.
fn verbs(goal: Goal) -> (&'static [Phrase], Vec<&'static [Phrase]>) {
    let l = &*LEX;
    match goal {
        Goal::Cancel => (&l.cancel, vec![&l.return_, &l.exchange]),
        Goal::Return => (&l.return_, vec![&l.cancel, &l.exchange]),
        Goal::Exchange => (&l.exchange, vec![&l.cancel]),
        Goal::ModifyItems => (&l.change, vec![&l.cancel, &l.return_]),
        Goal::ModifyPayment => (&l.pay, vec![&l.cancel, &l.return_, &l.exchange]),
        Goal::ModifyOrderAddress | Goal::ModifyUserAddress => (&l.place, vec![&l.cancel, &l.return_, &l.exchange]),
        Goal::ProductCount | Goal::OrderTotal => (&[], vec![&l.cancel, &l.return_, &l.exchange]),
    }
}

/// Whether the message proposes or reports some change to an order or account (any action verb).
fn mentions_any_action(p: &Parsed) -> bool {
    let l = &*LEX;
    [&l.cancel, &l.return_, &l.exchange, &l.change, &l.pay, &l.place].iter().any(|v| mentions(p, v))
}

/// Words after which a participle reports a change as made ("has been cancelled", "I've updated", "all set").
const COMPLETION_LEAD: &[&str] =
    &["been", "was", "were", "is", "are", "now", "successfully", "have", "has", "i", "we", "just", "all"];
const PARTICIPLES: &[&str] = &[
    "cancelled",
    "canceled",
    "returned",
    "exchanged",
    "requested",
    "submitted",
    "processed",
    "updated",
    "changed",
    "modified",
    "replaced",
    "swapped",
    "switched",
    "completed",
    "complete",
    "placed",
    "initiated",
    "issued",
    "refunded",
    "done",
    "set",
    "filed",
    "scheduled",
    "arranged",
    "applied",
];

/// Whether the message reports something as done (not negated: "has not been cancelled" is no report).
fn reports_completion(p: &Parsed) -> bool {
    p.words.iter().enumerate().any(|(i, w)| {
        PARTICIPLES.contains(&w.as_str())
            && !p.negated_at(i)
            // "Before it is cancelled", "once it has been returned": a condition, not a report.
            && !p.words[i.saturating_sub(4)..i]
                .iter()
                .any(|x| matches!(x.as_str(), "before" | "if" | "once" | "when" | "until" | "after" | "unless"))
            && (p.words[i.saturating_sub(2)..i].iter().any(|x| COMPLETION_LEAD.contains(&x.as_str()))
                || p.words.get(i + 1).is_some_and(|x| x == "successfully"))
    })
}

/// Whether the message asks permission for an action ("Shall I…", "Would you like to cancel it?"). "I can
/// confirm that…" reports rather than asks.
fn proposes(p: &Parsed) -> bool {
    let l = &*LEX;
    if mentions(p, &l.proposal) {
        return true;
    }
    let verbs: Vec<usize> = [&l.cancel, &l.return_, &l.exchange, &l.change, &l.pay, &l.place]
        .iter()
        .flat_map(|list| list.iter().flat_map(|ph| ph.positions(&p.stems)))
        .collect();
    l.soft_proposal.iter().flat_map(|ph| ph.positions(&p.stems)).any(|pos| {
        let reporting = pos > 0 && matches!(p.words[pos - 1].as_str(), "can" | "i" | "to");
        !reporting && verbs.iter().any(|&v| v > pos)
    })
}

/// What the customer would say the request is, without its details.
pub fn goal_line(s: &Scenario) -> String {
    match s.goal {
        Goal::Cancel => "I'd like to cancel an order.".into(),
        Goal::Return => "I want to return some items I received.".into(),
        Goal::Exchange => "I want to exchange an item I received for a different version of it.".into(),
        Goal::ModifyItems => "I want to change an item in an order that hasn't shipped yet.".into(),
        Goal::ModifyPayment => "I want to change the payment method of an order.".into(),
        Goal::ModifyOrderAddress => "I need an order shipped to a different address.".into(),
        Goal::ModifyUserAddress => "I want to update the default address on my account.".into(),
        Goal::ProductCount | Goal::OrderTotal => s.question.clone().unwrap_or_else(|| "I have a question.".into()),
    }
}

fn item_words(item: &ItemRef) -> String {
    format!("the {}", item.describe())
}

fn items_line(items: &[ItemRef]) -> String {
    describe_items(items)
}

/// The conversation state the customer derives from the turns so far.
struct Memory {
    question_asked: bool,
}

impl Memory {
    fn of(s: &Scenario, history: &[Turn]) -> Memory {
        let question_asked = s.question.as_ref().is_some_and(|q| {
            let q = q.to_lowercase();
            history.iter().any(|t| t.customer.to_lowercase().contains(&q))
        });
        Memory { question_asked }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topic {
    Email,
    Name,
    Zip,
    Identity,
    Order,
    Items,
    NewItems,
    Reason,
    Address,
    Payment,
}

/// What the message asks for. "email address" is about the email, not a postal address.
fn topics(p: &Parsed) -> Vec<Topic> {
    let l = &*LEX;
    let mut out = Vec::new();
    let email = mentions(p, &l.email);
    if email {
        out.push(Topic::Email);
    }
    // `name` alone is too common ("in the name of"), so it counts beside "your" or "first/last/full".
    let name = p.words.windows(2).any(|w| {
        matches!(w[1].as_str(), "name" | "names" | "surname")
            && matches!(w[0].as_str(), "your" | "full" | "first" | "last" | "the" | "and")
    });
    if name {
        out.push(Topic::Name);
    }
    if mentions(p, &l.zip) {
        out.push(Topic::Zip);
    }
    if !email && !name && mentions(p, &l.identity) {
        out.push(Topic::Identity);
    }
    if mentions(p, &l.order) {
        out.push(Topic::Order);
    }
    if mentions(p, &l.items) {
        out.push(Topic::Items);
    }
    if mentions(p, &l.new_items) {
        out.push(Topic::NewItems);
    }
    if mentions(p, &l.reason) {
        out.push(Topic::Reason);
    }
    let address = l.address.iter().any(|phrase| {
        phrase
            .positions(&p.stems)
            .into_iter()
            .any(|pos| !(pos > 0 && matches!(p.words[pos - 1].as_str(), "email" | "mail" | "e")))
    });
    if address {
        out.push(Topic::Address);
    }
    if mentions(p, &l.payment) {
        out.push(Topic::Payment);
    }
    out
}

fn answer_topic(s: &Scenario, topic: Topic, asked: &[Topic]) -> Option<String> {
    let name_zip = format!("My name is {} and my zip code is {}.", s.full_name(), s.zip);
    Some(match topic {
        Topic::Email => match s.identity {
            Identity::Email => format!("My email is {}.", s.email),
            // The name-and-zip answer follows from the Name/Zip topics when those were asked too.
            Identity::NameZip if asked.contains(&Topic::Name) || asked.contains(&Topic::Zip) => return None,
            Identity::NameZip => format!("I don't remember which email I used, but {}", lower_first(&name_zip)),
        },
        Topic::Name => match (s.identity, asked.contains(&Topic::Zip)) {
            (Identity::Email, _) if asked.contains(&Topic::Email) => return None,
            (Identity::NameZip, true) => name_zip,
            _ => format!("My name is {}.", s.full_name()),
        },
        Topic::Zip => match s.identity {
            Identity::NameZip if asked.contains(&Topic::Name) => return None,
            Identity::NameZip => format!("My zip code is {}.", s.zip),
            Identity::Email if asked.contains(&Topic::Email) => return None,
            Identity::Email => format!("I'd rather not give my zip code; you can find me by my email, {}.", s.email),
        },
        Topic::Identity => match s.identity {
            Identity::Email => format!("Sure, my email is {}.", s.email),
            Identity::NameZip => format!("Sure. {name_zip}"),
        },
        Topic::Order => match (&s.order_id, s.knows_order_id) {
            (Some(id), true) => format!("It's order {id}."),
            (Some(_), false) => {
                let all: Vec<ItemRef> = s.items.iter().chain(&s.other_items).cloned().collect();
                format!("I don't have the order number at hand, but it's the order with {}.", items_line(&all))
            }
            (None, _) => "It's not about a specific order.".into(),
        },
        Topic::Items => match s.goal {
            Goal::Return | Goal::Exchange | Goal::ModifyItems => {
                let verb = match s.goal {
                    Goal::Return => "return",
                    Goal::Exchange => "exchange",
                    _ => "change",
                };
                format!("I want to {verb} {}.", items_line(&s.items))
            }
            Goal::Cancel => "The whole order, please.".into(),
            _ => return None,
        },
        Topic::NewItems => {
            if s.new_items.is_empty() {
                return None;
            }
            let wanted: Vec<String> = s
                .items
                .iter()
                .zip(&s.new_items)
                .map(|(old, new)| format!("instead of {} I'd like {}", item_words(old), item_words(new)))
                .collect();
            format!("{}.", capitalize(&wanted.join("; and ")))
        }
        Topic::Reason => match &s.reason {
            Some(r) => format!("{}.", reason_words(r)),
            None => return None,
        },
        Topic::Address => match &s.address {
            Some(a) if s.goal == Goal::ModifyUserAddress => format!("My new address is {}.", a.one_line()),
            Some(a) => format!("Please ship it to {}.", a.one_line()),
            None => return None,
        },
        Topic::Payment => match &s.payment {
            Some(p) => format!("Please use my {}.", p.description),
            None => return None,
        },
    })
}

fn group(t: Topic) -> u8 {
    match t {
        Topic::Email | Topic::Name | Topic::Zip | Topic::Identity => 0,
        Topic::Order => 1,
        Topic::Items => 2,
        Topic::NewItems => 3,
        Topic::Reason => 4,
        Topic::Address => 5,
        Topic::Payment => 6,
    }
}

/// Answers the first `MAX_TOPICS` things asked (identity details count as one); the flag says more were asked.
fn answer_topics(s: &Scenario, asked: &[Topic]) -> (Vec<String>, bool) {
    let mut groups: Vec<u8> = Vec::new();
    let mut answers = Vec::new();
    let mut overflow = false;
    for &t in asked {
        let g = group(t);
        if !groups.contains(&g) {
            if groups.len() >= MAX_TOPICS {
                overflow = true;
                continue;
            }
            groups.push(g);
        }
        answers.extend(answer_topic(s, t, asked));
    }
    (answers, overflow)
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_lowercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

/// Whether the text names the item (by id or by product name).
fn names_item(p: &Parsed, item: &ItemRef) -> bool {
    p.words.contains(&item.item_id) || p.contains(&Phrase::new(&item.name))
}

/// Whether the text identifies a replacement: its id, or every one of its option values.
fn names_variant(p: &Parsed, item: &ItemRef) -> bool {
    p.words.contains(&item.item_id) || item.options.values().all(|v| p.contains(&Phrase::new(v)))
}

/// Checks a proposal against the goal; `Err` carries the customer's correction.
fn check_proposal(s: &Scenario, text: &str, p: &Parsed) -> Result<(), String> {
    let (accept, forbid) = verbs(s.goal);
    if !affirmed(p, accept) || forbid.iter().any(|f| affirmed(p, f)) {
        return Err(format!("No, that's not what I want. {}", goal_line(s)));
    }
    if let Some(id) = &s.order_id {
        let digits = id.trim_start_matches("#W");
        let ids: Vec<&str> = ORDER_ID.captures_iter(text).filter_map(|c| c.get(1)).map(|m| m.as_str()).collect();
        if !ids.contains(&digits) || ids.iter().any(|d| *d != digits) {
            let which = if s.knows_order_id {
                format!("order {id}")
            } else {
                let all: Vec<ItemRef> = s.items.iter().chain(&s.other_items).cloned().collect();
                format!("the order with {}", items_line(&all))
            };
            return Err(format!("No, that's not the right order. I mean {which}."));
        }
    }
    if matches!(s.goal, Goal::Return | Goal::Exchange | Goal::ModifyItems) {
        let all_named = s.items.iter().all(|i| names_item(p, i));
        // Another item of the same order named too means the proposal touches something I want to keep, unless
        // it is the same product as one I do want changed.
        let extra = s.other_items.iter().any(|o| names_item(p, o) && !s.items.iter().any(|i| i.name == o.name));
        if !all_named || extra {
            return Err(format!("No, that's not quite it. I only mean {}.", items_line(&s.items)));
        }
    }
    if !s.new_items.is_empty() && !s.new_items.iter().all(|n| names_variant(p, n)) {
        let wanted: Vec<String> = s.new_items.iter().map(item_words).collect();
        return Err(format!("Not quite: what I want instead is {}.", wanted.join(" and ")));
    }
    if let Some(pay) = &s.payment {
        let digits = pay.id.rsplit('_').next().unwrap_or("");
        let by_id = p.words.iter().any(|w| w == digits);
        let by_name = match pay.id.split('_').next() {
            Some("paypal") => p.contains(&Phrase::new("paypal")),
            Some("gift") => p.contains(&Phrase::new("gift card")),
            _ => pay.description.rsplit(' ').next().is_some_and(|last4| p.words.iter().any(|w| w == last4)),
        };
        if !by_id && !by_name {
            return Err(format!("Hold on, I'd like to use my {} for that.", pay.description));
        }
    }
    if let Some(a) = &s.address {
        let zip = p.words.iter().any(|w| *w == a.zip.to_lowercase());
        let number = a.address1.split(' ').next().unwrap_or("");
        let street = p.words.iter().any(|w| w == number);
        if !zip || !street {
            return Err(format!("That's not the address I gave. It should be {}.", a.one_line()));
        }
    }
    Ok(())
}

const NEUTRAL: [&str; 4] = [
    "Sorry, I'm not sure what you mean.",
    "Hmm, could you say that another way?",
    "I'm not sure I follow. What do you need from me?",
    "Sorry, I don't understand.",
];

/// The scripted customer's next message.
pub fn scripted_reply(s: &Scenario, history: &[Turn], message: &str, seed: u64) -> String {
    let salt = mix(seed, history.len() as u64);
    let p = Parsed::new(message);
    if p.words.is_empty() {
        return pick(&NEUTRAL, salt).to_string();
    }
    let memory = Memory::of(s, history);
    let l = &*LEX;
    let asked = topics(&p);
    // "Would you like to cancel it?" asks permission; "Which items would you like to return?" asks a question.
    let asks_confirmation = mentions(&p, &l.confirm) || (asked.is_empty() && proposes(&p));

    // An information goal ends once the agent answers the question.
    if s.goal.is_question() {
        if memory.question_asked && has_answer_number(message) && !proposes(&p) {
            return format!("{} {STOP}", pick(&["Great, thanks for checking!", "Got it, thank you!"], salt));
        }
        let (answers, _) = answer_topics(s, &asked);
        if !(answers.is_empty() || asked.len() > 1 && is_keyword_list(message)) {
            return answers.join(" ");
        }
        return match &s.question {
            Some(q) if memory.question_asked => format!("I was asking: {q}"),
            Some(q) => q.clone(),
            None => pick(&NEUTRAL, salt).to_string(),
        };
    }

    let (accept, forbid) = verbs(s.goal);
    let done_report = reports_completion(&p) && !proposes(&p);
    if done_report && affirmed(&p, accept) && !forbid.iter().any(|f| affirmed(&p, f)) {
        if let Some(q) = &s.question
            && !has_answer_number(message)
        {
            return format!("Thanks! One more thing: {q}");
        }
        return format!(
            "{} {STOP}",
            pick(&["Great, thank you! That's all I needed.", "Perfect, thanks for your help!"], salt)
        );
    }
    if done_report && forbid.iter().any(|f| affirmed(&p, f)) {
        return format!("Wait, that's not what I asked for. {}", goal_line(s));
    }
    if asks_confirmation && mentions_any_action(&p) {
        return match check_proposal(s, message, &p) {
            Ok(()) => {
                let yes = pick(&["Yes, please go ahead.", "Yes, that's right. Please do it.", "Yes, I confirm."], salt);
                match &s.question {
                    Some(q) if !memory.question_asked && !has_answer_number(message) => {
                        format!("{yes} Also, {}", lower_first(q))
                    }
                    _ => yes.to_string(),
                }
            }
            Err(correction) => correction,
        };
    }
    if asked.len() > 1 && is_keyword_list(message) {
        return "Sorry, I don't follow. Could you ask me in a full sentence?".into();
    }
    let (answers, overflow) = answer_topics(s, &asked);
    if !answers.is_empty() {
        let mut reply = answers.join(" ");
        if overflow {
            reply.push_str(" Let's take the rest one step at a time.");
        }
        return reply;
    }
    if !asked.is_empty() {
        // Asked for something the customer has no part in: say so rather than invent it.
        return pick(&["I don't think that matters for my request.", "I don't have anything to add about that."], salt)
            .into();
    }
    if mentions(&p, &l.help) {
        return goal_line(s);
    }
    pick(&NEUTRAL, salt).to_string()
}

/// The customer's words when the LLM fails: a neutral line, as the original falls back to.
pub const FALLBACK: &str = "Sorry, could you repeat that?";

/// The tau-bench-style customer prompt (our wording): play the instruction, one short message at a time.
pub fn prompt(task: &TauTask, history: &[Turn], message: &str) -> Prompt {
    let system = format!(
        "You are role-playing a customer who is chatting with the customer-service agent of an online store. \
Your situation and goal:\n\n{}\n\nHow to play:\n\
- Write one short message per turn, as a real customer would in a chat. Plain text only.\n\
- Share a piece of information only when the agent needs it; do not volunteer everything at once.\n\
- Never make up facts that your situation does not give (order ids, items, addresses, payment methods, \
reasons). If you are asked for something you do not know, say that you do not know it.\n\
- Say things in your own words instead of copying the situation text.\n\
- Stay in character the whole time; you are the customer, not an assistant.\n\
- When the agent has done what you wanted (or clearly cannot), end the chat with a message that contains \
{STOP}.",
        task.instruction
    );
    let mut user = format!("The chat so far:\nAgent: Hi! How can I help you today?\nCustomer: {}\n", task.opening);
    for t in history {
        user.push_str(&format!("Agent: {}\nCustomer: {}\n", t.agent, t.customer));
    }
    user.push_str(&format!("Agent: {message}\n\nWrite the customer's next message."));
    Prompt::new(system, user)
}

/// Reads the LLM customer's message: any non-empty text once reasoning is removed.
pub fn parse(text: &str) -> Option<String> {
    let t = crate::llm::strip_think(text);
    let t = t.trim().trim_start_matches("Customer:").trim();
    (!t.is_empty()).then(|| t.to_string())
}
