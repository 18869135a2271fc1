//! The human user: a person in the browser plays the user (and, where the original asks an LLM judge, the
//! judge) of a gym. Each typed query becomes a `HumanPrompt` (what the person sees and which controls they
//! answer with); the person's `HumanAnswer` is checked against the prompt and turned into the gym's typed
//! reply, so the gym's own reward rules score the episode exactly as with the scripted or LLM user.
//!
//! Transport is a `HumanChannel`: the episode's task waits (with a timeout) for an answer to the one open
//! prompt; the web side reads `pending()` and calls `answer()`. A bad answer is refused and the prompt stays
//! open; an answer to a prompt that is not the open one (stale, already answered) is refused, so nothing can
//! be replayed. A timeout or `quit()` abandons the episode: every later question fails at once and
//! `User::abandoned` tells the episode runner to stop with `Termination::Abandoned`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::gyms::GymKind;
use crate::gyms::{intention, persuade, search, tau, telepathy, travel, turtle};
use crate::user::{Protocol, User, UserError, UserKind, UserQuery, UserReply};

// One definition of the controls and answers for the rules here and the browser (userrl-types builds for wasm).
pub use userrl_types::human::{Control, HumanAnswer, Line, OpenPrompt, Pick, Shown, Value};

/// The longest text a person may type into one field.
pub const MAX_TEXT_CHARS: usize = 2000;
/// How long an episode waits for the person's answer by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// What the browser shows for one question of the gym to its user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HumanPrompt {
    /// Unique within its channel; an answer must name it.
    pub id: u64,
    pub gym: GymKind,
    pub task_id: String,
    /// What the person is asked to do.
    pub instruction: String,
    /// The agent's message (question, guess, story, argument…).
    pub message: String,
    pub context: Vec<Shown>,
    pub history: Vec<Line>,
    pub controls: Vec<Control>,
}

impl HumanPrompt {
    /// The prompt as the browser shows it inside its episode (the episode already names gym and task).
    pub fn open(&self) -> OpenPrompt {
        OpenPrompt {
            id: self.id,
            instruction: self.instruction.clone(),
            message: self.message.clone(),
            context: self.context.clone(),
            history: self.history.clone(),
            controls: self.controls.clone(),
        }
    }
}

/// The hidden task a person plays before the agent asks anything (the same details the prompts show): the
/// story, the entity, the claim, the request and its details, the trip and preferences, the customer's goal,
/// the question and its answer. FunctionGym has no user: the person only watches.
pub fn briefing(gym: &dyn crate::Gym, task_id: &str) -> Result<Vec<Shown>, crate::GymError> {
    let kind = gym.kind();
    let raw = gym
        .export_tasks()
        .into_iter()
        .find(|t| t.get("id").and_then(serde_json::Value::as_str) == Some(task_id))
        .ok_or_else(|| crate::GymError::UnknownTask { gym: kind, task: task_id.to_string() })?;
    fn typed<T: serde::de::DeserializeOwned>(kind: GymKind, raw: serde_json::Value) -> Result<T, crate::GymError> {
        serde_json::from_value(raw).map_err(|e| crate::GymError::Data {
            gym: kind,
            location: "exported task".into(),
            message: e.to_string(),
        })
    }
    Ok(match kind {
        GymKind::Turtle => {
            let task: turtle::TurtleTask = typed(kind, raw)?;
            vec![shown("Puzzle", &task.surface), shown("Hidden story", &task.bottom)]
        }
        GymKind::Telepathy => {
            let task: telepathy::TelepathyTask = typed(kind, raw)?;
            let mut context = vec![shown("The entity you have in mind", &task.title)];
            if !task.summary.trim().is_empty() {
                context.push(shown("About it", &task.summary));
            }
            context
        }
        GymKind::Persuade => {
            let task: persuade::PersuadeTask = typed(kind, raw)?;
            vec![shown("Your claim", &task.claim), shown("Your own argument for it", &task.argument)]
        }
        GymKind::Intention => intention_details(&typed(kind, raw)?),
        GymKind::Travel => travel_context(&typed(kind, raw)?),
        GymKind::Tau => {
            let task: tau::TauTask = typed(kind, raw)?;
            vec![shown("Your situation and goal", &task.instruction)]
        }
        GymKind::Search => {
            let task: search::SearchTask = typed(kind, raw)?;
            let mut reference = task.answer.clone();
            if !task.aliases.is_empty() {
                reference.push_str(&format!(" (also accepted: {})", task.aliases.join(", ")));
            }
            vec![shown("Question", &task.question), shown("Reference answer", reference)]
        }
        GymKind::Function => vec![shown(
            "No user in this gym",
            "FunctionGym has no user: the agent probes a hidden rule on its own. Watch it play.",
        )],
    })
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum HumanError {
    #[error("prompt {0} is not open (already answered, expired, or never asked)")]
    NotOpen(u64),
    #[error("the answer has no value for `{0}`")]
    Missing(String),
    #[error("the prompt has no control `{0}`")]
    Unexpected(String),
    #[error("`{name}`: {message}")]
    Invalid { name: String, message: String },
}

fn invalid(name: &str, message: impl Into<String>) -> HumanError {
    HumanError::Invalid { name: name.to_string(), message: message.into() }
}

/// Checks an answer against the prompt's controls: every value belongs to a control, buttons name an offered
/// option, checkboxes only offered options (each once, at most `max`), scales stay in range, texts are not
/// blank when required and not over-long.
pub fn validate(controls: &[Control], answer: &HumanAnswer) -> Result<(), HumanError> {
    if let Some(name) = answer.values.keys().find(|k| !controls.iter().any(|c| c.name() == k.as_str())) {
        return Err(HumanError::Unexpected(name.clone()));
    }
    for control in controls {
        let name = control.name();
        let value = answer.values.get(name);
        let offered = |options: &[Pick]| options.iter().map(|o| o.id.as_str()).collect::<Vec<_>>().join(", ");
        match (control, value) {
            (Control::Buttons { options, .. }, Some(Value::Text(id))) => {
                if !options.iter().any(|o| &o.id == id) {
                    return Err(invalid(name, format!("`{id}` is not one of the options ({})", offered(options))));
                }
            }
            (Control::Buttons { .. }, None) => return Err(HumanError::Missing(name.to_string())),
            (Control::Buttons { .. }, Some(_)) => return Err(invalid(name, "expects one option id")),
            (Control::Checkboxes { .. }, None) => {}
            (Control::Checkboxes { options, max, .. }, Some(Value::List(ids))) => {
                for (i, id) in ids.iter().enumerate() {
                    if !options.iter().any(|o| &o.id == id) {
                        return Err(invalid(name, format!("`{id}` was not offered ({})", offered(options))));
                    }
                    if ids[..i].contains(id) {
                        return Err(invalid(name, format!("`{id}` is ticked twice")));
                    }
                }
                if let Some(max) = max
                    && ids.len() > *max
                {
                    return Err(invalid(name, format!("at most {max} may be ticked, got {}", ids.len())));
                }
            }
            (Control::Checkboxes { .. }, Some(_)) => return Err(invalid(name, "expects a list of option ids")),
            (Control::Scale { min, max, .. }, Some(Value::Number(n))) => {
                if n < min || n > max {
                    return Err(invalid(name, format!("{n} is outside {min}..{max}")));
                }
            }
            (Control::Scale { .. }, None) => return Err(HumanError::Missing(name.to_string())),
            (Control::Scale { min, max, .. }, Some(_)) => {
                return Err(invalid(name, format!("expects a whole number in {min}..{max}")));
            }
            (Control::Text { required, .. }, None) => {
                if *required {
                    return Err(HumanError::Missing(name.to_string()));
                }
            }
            (Control::Text { required, max_chars, .. }, Some(Value::Text(text))) => {
                if *required && text.trim().is_empty() {
                    return Err(invalid(name, "must not be empty"));
                }
                let len = text.chars().count();
                if len > *max_chars {
                    return Err(invalid(name, format!("is {len} characters long; at most {max_chars} are allowed")));
                }
            }
            (Control::Text { .. }, Some(_)) => return Err(invalid(name, "expects text")),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Reading a validated answer

/// Typed access to an answer that `validate` accepted; the getters still return errors rather than panic,
/// because a converter may be called with a prompt built elsewhere.
struct Read<'a>(&'a HumanAnswer);

impl Read<'_> {
    fn choice(&self, name: &str) -> Result<&str, HumanError> {
        match self.0.values.get(name) {
            Some(Value::Text(id)) => Ok(id),
            _ => Err(HumanError::Missing(name.to_string())),
        }
    }
    fn ticked(&self, name: &str) -> Vec<String> {
        match self.0.values.get(name) {
            Some(Value::List(ids)) => ids.clone(),
            _ => Vec::new(),
        }
    }
    fn number(&self, name: &str) -> Result<i64, HumanError> {
        match self.0.values.get(name) {
            Some(Value::Number(n)) => Ok(*n),
            _ => Err(HumanError::Missing(name.to_string())),
        }
    }
    /// The trimmed text, `None` when absent or blank.
    fn text(&self, name: &str) -> Option<String> {
        match self.0.values.get(name) {
            Some(Value::Text(t)) if !t.trim().is_empty() => Some(t.trim().to_string()),
            _ => None,
        }
    }
    fn required_text(&self, name: &str) -> Result<String, HumanError> {
        self.text(name).ok_or_else(|| invalid(name, "must not be empty"))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Per-gym mapping

type Convert = Box<dyn Fn(&HumanAnswer) -> Result<UserReply, HumanError> + Send + Sync>;

/// A prompt before the channel numbers it, with the rule that turns an answer into the gym's reply.
/// Its parts are private so the controls and the rule that reads them cannot drift apart.
pub struct Draft {
    gym: GymKind,
    task_id: String,
    instruction: String,
    message: String,
    context: Vec<Shown>,
    history: Vec<Line>,
    controls: Vec<Control>,
    convert: Convert,
}

impl Draft {
    /// Checks the answer and turns it into the gym's reply.
    pub fn reply(&self, answer: &HumanAnswer) -> Result<UserReply, HumanError> {
        validate(&self.controls, answer)?;
        (self.convert)(answer)
    }

    /// The prompt as the browser will see it under `id`.
    pub fn prompt(&self, id: u64) -> HumanPrompt {
        HumanPrompt {
            id,
            gym: self.gym,
            task_id: self.task_id.clone(),
            instruction: self.instruction.clone(),
            message: self.message.clone(),
            context: self.context.clone(),
            history: self.history.clone(),
            controls: self.controls.clone(),
        }
    }
}

/// How a query is answered for a person.
pub enum Plan {
    /// The person answers this prompt.
    Ask(Draft),
    /// Not the person's role (TravelGym's search judge is the database's rule): answered by the rule.
    Auto(UserReply),
}

fn shown(label: &str, text: impl Into<String>) -> Shown {
    Shown { label: label.to_string(), text: text.into() }
}
fn line(speaker: &str, text: &str) -> Line {
    Line { speaker: speaker.to_string(), text: text.to_string() }
}
fn agent_line(text: &str) -> Line {
    line("agent", text)
}
fn you_line(text: &str) -> Line {
    line("you", text)
}

const YES: &str = "yes";
const NO: &str = "no";
const MAYBE: &str = "maybe";
const RIGHT: &str = "right";
const WRONG: &str = "wrong";

fn yes_no_maybe() -> Control {
    Control::Buttons {
        name: "answer".into(),
        label: "Your answer".into(),
        options: vec![Pick::new(YES, "Yes"), Pick::new(NO, "No"), Pick::new(MAYBE, "Maybe / does not matter")],
    }
}

fn verdict(what: &str) -> Control {
    Control::Buttons {
        name: "verdict".into(),
        label: format!("Is the agent's {what} right?"),
        options: vec![
            Pick::new(RIGHT, format!("The {what} is right")),
            Pick::new(WRONG, format!("The {what} is wrong")),
        ],
    }
}

fn free_text(name: &str, label: &str, required: bool) -> Control {
    Control::Text { name: name.into(), label: label.into(), max_chars: MAX_TEXT_CHARS, required }
}

fn draft(gym: GymKind, task_id: &str, instruction: &str, message: &str) -> Draft {
    Draft {
        gym,
        task_id: task_id.to_string(),
        instruction: instruction.to_string(),
        message: message.to_string(),
        context: Vec::new(),
        history: Vec::new(),
        controls: Vec::new(),
        convert: Box::new(|_| Err(HumanError::Missing("controls".into()))),
    }
}

impl Draft {
    fn context(mut self, context: Vec<Shown>) -> Draft {
        self.context = context;
        self
    }
    fn history(mut self, history: Vec<Line>) -> Draft {
        self.history = history;
        self
    }
    fn controls(
        mut self,
        controls: Vec<Control>,
        convert: impl Fn(Read<'_>) -> Result<UserReply, HumanError> + Send + Sync + 'static,
    ) -> Draft {
        self.controls = controls;
        self.convert = Box::new(move |answer| convert(Read(answer)));
        self
    }
}

/// Turns a gym's question into what the person answers (or answers it by rule where it is not their role).
pub fn plan(query: &UserQuery) -> Result<Plan, UserError> {
    Ok(Plan::Ask(match query {
        UserQuery::Turtle(q) => turtle_draft(q),
        UserQuery::Telepathy(q) => telepathy_draft(q),
        UserQuery::Persuade(q) => persuade_draft(q),
        UserQuery::Intention(q) => intention_draft(q),
        UserQuery::Search(q) => search_draft(q),
        UserQuery::Travel(q) => return travel_plan(q),
        UserQuery::Tau(q) => tau_draft(q),
    }))
}

fn turtle_draft(q: &turtle::Query) -> Draft {
    use turtle::{Query, Reply, Verdict};
    match q {
        Query::Question { puzzle, question } => {
            let task = puzzle.task();
            draft(GymKind::Turtle, &task.id, "Answer the player's yes/no question from the hidden story.", question)
                .context(vec![shown("Puzzle", &task.surface), shown("Hidden story", &task.bottom)])
                .controls(vec![yes_no_maybe()], |a| {
                    let verdict = match a.choice("answer")? {
                        YES => Verdict::Yes,
                        NO => Verdict::No,
                        _ => Verdict::Maybe,
                    };
                    Ok(UserReply::Turtle(Reply::Answer(verdict)))
                })
        }
        Query::Story { puzzle, story } => {
            let task = puzzle.task();
            let options: Vec<Pick> =
                task.criteria.iter().enumerate().map(|(i, c)| Pick::new(format!("c{}", i + 1), &c.statement)).collect();
            let count = options.len();
            let controls = vec![
                Control::Checkboxes {
                    name: "covered".into(),
                    label: "The story gets these points right (all ticked: the story is right)".into(),
                    options: options.clone(),
                    max: None,
                },
                Control::Checkboxes {
                    name: "partly".into(),
                    label: "The story gets these points partly right".into(),
                    options,
                    max: None,
                },
            ];
            draft(GymKind::Turtle, &task.id, "Judge the player's story point by point against the hidden story.", story)
                .context(vec![shown("Puzzle", &task.surface), shown("Hidden story", &task.bottom)])
                .controls(controls, move |a| {
                    let covered = a.ticked("covered");
                    let partly = a.ticked("partly");
                    if let Some(both) = covered.iter().find(|id| partly.contains(id)) {
                        return Err(invalid("partly", format!("`{both}` is also ticked as fully right")));
                    }
                    let scores = (1..=count)
                        .map(|i| {
                            let id = format!("c{i}");
                            if covered.contains(&id) {
                                1.0
                            } else if partly.contains(&id) {
                                0.5
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    Ok(UserReply::Turtle(Reply::Judgement { scores, feedback: String::new() }))
                })
        }
    }
}

fn telepathy_draft(q: &telepathy::Query) -> Draft {
    use telepathy::{Answer, Query, Reply};
    let entity = |task: &telepathy::TelepathyTask| {
        let mut context = vec![shown("The entity you have in mind", &task.title)];
        if !task.summary.trim().is_empty() {
            context.push(shown("About it", &task.summary));
        }
        context
    };
    match q {
        Query::Question { task, question } => draft(
            GymKind::Telepathy,
            &task.id,
            "Answer the player's yes/no question about the entity you have in mind.",
            question,
        )
        .context(entity(task))
        .controls(vec![yes_no_maybe()], |a| {
            let response = match a.choice("answer")? {
                YES => Answer::Yes,
                NO => Answer::No,
                _ => Answer::Maybe,
            };
            Ok(UserReply::Telepathy(Reply::Answer { response }))
        }),
        Query::Guess { task, guess } => {
            let judged = task.clone();
            draft(GymKind::Telepathy, &task.id, "The player guesses the entity. Is the guess right?", guess)
                .context(entity(task))
                .controls(
                    vec![
                        verdict("guess"),
                        free_text("feedback", "A word to the player (optional, do not give it away)", false),
                    ],
                    move |a| {
                        let correct = a.choice("verdict")? == RIGHT;
                        // As with the LLM host: a wrong guess is never told the answer, whatever was typed.
                        let feedback = match a.text("feedback") {
                            Some(text) if correct || !telepathy::reveals(&judged, &text) => text,
                            _ if correct => telepathy::correct_feedback(&judged),
                            _ => telepathy::WRONG_GUESS[0].to_string(),
                        };
                        Ok(UserReply::Telepathy(Reply::Judgment { correct, feedback }))
                    },
                )
        }
    }
}

/// The 7-point scale, 1 = Strongly Agree (the persuadee's starting side) … 7 = Strongly Disagree.
fn stance_scale() -> Control {
    Control::Scale {
        name: "stance".into(),
        label: "Where do you stand on the claim now?".into(),
        min: 1,
        max: 7,
        labels: persuade::Stance::ALL.iter().map(|s| s.label().to_string()).collect(),
    }
}

fn persuade_draft(q: &persuade::Query) -> Draft {
    let task = &q.task;
    let history = q.history.iter().flat_map(|e| [agent_line(&e.argument), you_line(&e.response)]).collect();
    draft(
        GymKind::Persuade,
        &task.id,
        "You hold the claim below. Reply to the agent's argument and say where you stand after it.",
        &q.argument,
    )
    .context(vec![
        shown("Your claim", &task.claim),
        shown("Your own argument for it", &task.argument),
        shown("Your stance before this argument", q.stance.label()),
    ])
    .history(history)
    .controls(vec![free_text("response", "Your reply to the agent", true), stance_scale()], |a| {
        let response = a.required_text("response")?;
        let n = a.number("stance")?;
        let index = usize::try_from(n - 1).map_err(|_| invalid("stance", format!("{n} is outside 1..7")))?;
        let stance = persuade::Stance::from_index(index);
        Ok(UserReply::Persuade(persuade::Reply { thought: String::new(), response, stance, points: Vec::new() }))
    })
}

fn intention_details(task: &intention::IntentionTask) -> Vec<Shown> {
    let mut context = vec![shown("Category", &task.category), shown("Your request", &task.task)];
    for detail in &task.missing_details {
        let text = match &detail.preference {
            Some(p) if !p.trim().is_empty() => format!("{} (what you want: {p})", detail.description),
            _ => detail.description.clone(),
        };
        context.push(shown("A detail you have in mind", text));
    }
    context
}

fn intention_draft(q: &intention::Query) -> Draft {
    use intention::{Query, Reply};
    match q {
        Query::Respond { task, question, history, .. } => {
            let history = history.iter().flat_map(|e| [agent_line(&e.question), you_line(&e.response)]).collect();
            draft(GymKind::Intention, &task.id, "Answer the agent's clarifying question about your request.", question)
                .context(intention_details(task))
                .history(history)
                .controls(vec![free_text("response", "Your answer", true)], |a| {
                    Ok(UserReply::Intention(Reply::Respond {
                        thought: String::new(),
                        response: a.required_text("response")?,
                    }))
                })
        }
        Query::Judge { task, question, history, remaining, .. } => {
            let options: Vec<Pick> = remaining
                .iter()
                .filter_map(|&i| task.missing_details.get(i).map(|d| Pick::new(format!("d{i}"), &d.description)))
                .collect();
            let history = history.iter().flat_map(|e| [agent_line(&e.question), you_line(&e.response)]).collect();
            let controls = vec![Control::Checkboxes {
                name: "about".into(),
                label: "This question asks about … (tick none if it asks about none of them)".into(),
                options,
                max: None,
            }];
            draft(
                GymKind::Intention,
                &task.id,
                "Which of the details you have not told yet does this question ask about?",
                question,
            )
            .context(intention_details(task))
            .history(history)
            .controls(controls, |a| {
                let covered: Vec<usize> = a
                    .ticked("about")
                    .iter()
                    .filter_map(|id| id.strip_prefix('d').and_then(|n| n.parse().ok()))
                    .collect();
                Ok(UserReply::Intention(Reply::Judge {
                    analysis: String::new(),
                    is_task_related: !covered.is_empty(),
                    covered,
                }))
            })
        }
    }
}

fn search_draft(q: &search::Query) -> Draft {
    let search::Query::Judge { task, answer } = q;
    let mut reference = task.answer.clone();
    if !task.aliases.is_empty() {
        reference.push_str(&format!(" (also accepted: {})", task.aliases.join(", ")));
    }
    draft(GymKind::Search, &task.id, "Is the player's answer to the question correct?", answer)
        .context(vec![shown("Question", &task.question), shown("Reference answer", reference)])
        .controls(vec![verdict("answer"), free_text("feedback", "A word to the player (optional)", false)], |a| {
            let correct = a.choice("verdict")? == RIGHT;
            let feedback = a.text("feedback").unwrap_or_else(|| {
                if correct { "Your answer is correct." } else { "Your answer is not correct." }.to_string()
            });
            Ok(UserReply::Search(search::Reply::Judgment {
                correct,
                reasoning: "Judged by a person.".into(),
                feedback,
            }))
        })
}

fn travel_context(task: &travel::TravelTask) -> Vec<Shown> {
    let mut context = vec![shown("Your trip", &task.scenario)];
    for (i, p) in task.preferences().enumerate() {
        context.push(shown(&format!("Your preference P{} ({})", i + 1, p.aspect.noun()), &p.text));
    }
    context
}

fn travel_history(log: &[travel::LogEntry]) -> Vec<Line> {
    log.iter()
        .map(|e| {
            let speaker = match e.role {
                travel::LogRole::Agent => "agent",
                travel::LogRole::User => "you",
                travel::LogRole::Database => "database",
            };
            line(speaker, &e.content)
        })
        .collect()
}

const KIND_PREFERENCE: &str = "preference";
const KIND_CONVERSATION: &str = "conversation";
const KIND_MISSING: &str = "missing";
const KIND_VAGUE: &str = "vague";

fn travel_plan(q: &travel::Query) -> Result<Plan, UserError> {
    use travel::{Query, Reply, UtteranceType};
    let say = |a: Read<'_>| {
        Ok(UserReply::Travel(Reply::Say { thought: String::new(), response: a.required_text("response")? }))
    };
    let draft = match q {
        // The search judge is the database's rule, not the person's role.
        Query::Search { .. } => {
            return travel::UserRole::scripted(q).map(|r| Plan::Auto(UserReply::Travel(r)));
        }
        Query::Classify { task, history, utterance, remaining } => {
            let options: Vec<Pick> =
                remaining.iter().filter_map(|r| task.preference(r.index).map(|p| Pick::new(&r.id, &p.text))).collect();
            let controls = vec![
                Control::Buttons {
                    name: "kind".into(),
                    label: "What does the agent's message do?".into(),
                    options: vec![
                        Pick::new(KIND_PREFERENCE, "It asks concretely about one of my preferences (tick it below)"),
                        Pick::new(KIND_CONVERSATION, "It is ordinary conversation"),
                        Pick::new(KIND_MISSING, "It asks about something I have no preference on"),
                        Pick::new(KIND_VAGUE, "It is too vague or asks about too many things"),
                    ],
                },
                Control::Checkboxes {
                    name: "about".into(),
                    label: "This question asks about …".into(),
                    options,
                    max: Some(1),
                },
            ];
            draft(GymKind::Travel, &task.id, "Judge the travel agent's message.", utterance)
                .context(travel_context(task))
                .history(travel_history(history))
                .controls(controls, |a| {
                    let about = a.ticked("about");
                    let kind = match a.choice("kind")? {
                        KIND_PREFERENCE => UtteranceType::Preference,
                        KIND_MISSING => UtteranceType::Missing,
                        KIND_VAGUE => UtteranceType::Vague,
                        _ => UtteranceType::Conversation,
                    };
                    match (kind, about.first()) {
                        (UtteranceType::Preference, None) => {
                            Err(invalid("about", "tick the preference the question asks about"))
                        }
                        (UtteranceType::Preference, Some(id)) => {
                            Ok(UserReply::Travel(Reply::Classify { kind, preference_id: Some(id.clone()) }))
                        }
                        (_, Some(_)) => Err(invalid(
                            "about",
                            "a preference is ticked, but the message is not marked as asking about one",
                        )),
                        (_, None) => Ok(UserReply::Travel(Reply::Classify { kind, preference_id: None })),
                    }
                })
        }
        Query::Reveal { task, history, utterance, preference, .. }
        | Query::Volunteer { task, history, utterance, preference, .. } => {
            let volunteer = matches!(q, Query::Volunteer { .. });
            let instruction = if volunteer {
                "Reply to the agent and bring up the preference below on your own, in your own words, without \
                 stating it outright."
            } else {
                "The agent asked about the preference below. Answer in your own words, hinting at it without stating \
                 it outright."
            };
            let mut context = travel_context(task);
            if let Some(p) = task.preference(preference.index) {
                context.push(shown(&format!("Reveal now: {}", preference.id), &p.text));
                context.push(shown("For example", &p.implicit));
            }
            draft(GymKind::Travel, &task.id, instruction, utterance)
                .context(context)
                .history(travel_history(history))
                .controls(vec![free_text("response", "Your reply", true)], say)
        }
        Query::Chat { task, history, utterance, .. } => draft(
            GymKind::Travel,
            &task.id,
            "Reply briefly to the agent; reveal none of your preferences in this reply.",
            utterance,
        )
        .context(travel_context(task))
        .history(travel_history(history))
        .controls(vec![free_text("response", "Your reply", true)], say),
    };
    Ok(Plan::Ask(draft))
}

fn tau_draft(q: &tau::Query) -> Draft {
    let tau::Query::Customer { task, history, message, .. } = q;
    let history = history.iter().flat_map(|t| [agent_line(&t.agent), you_line(&t.customer)]).collect();
    let controls = vec![
        free_text("response", "Your reply", true),
        Control::Checkboxes {
            name: "end".into(),
            label: "End the conversation with this reply".into(),
            options: vec![Pick::new("end", "I'm done: my request is handled (or cannot be)")],
            max: None,
        },
    ];
    draft(GymKind::Tau, &task.id, "You are the customer. Reply to the service agent.", message)
        .context(vec![shown("Your situation and goal", &task.instruction)])
        .history(history)
        .controls(controls, |a| {
            let mut text = a.required_text("response")?;
            if !a.ticked("end").is_empty() && !text.contains(tau::customer::STOP) {
                text.push(' ');
                text.push_str(tau::customer::STOP);
            }
            Ok(UserReply::Tau(tau::Reply::Customer { text }))
        })
}

// ---------------------------------------------------------------------------------------------------------
// The channel

struct Open {
    prompt: HumanPrompt,
    draft: Draft,
    reply: oneshot::Sender<UserReply>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    open: Option<Open>,
    /// Why the episode was abandoned (a timeout, the person quit); set once, never cleared.
    abandoned: Option<String>,
}

/// The meeting point of one episode's task and the browser.
pub struct HumanChannel {
    state: Mutex<State>,
    timeout: Duration,
    /// Bumped whenever a prompt opens or closes or the channel is abandoned, for `next_prompt`.
    version: watch::Sender<u64>,
}

impl HumanChannel {
    pub fn new(timeout: Duration) -> Arc<HumanChannel> {
        Arc::new(HumanChannel {
            state: Mutex::new(State { next_id: 1, ..State::default() }),
            timeout,
            version: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written (every update is one assignment).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Changes whenever a prompt opens or closes or the channel is abandoned (read `pending()` then).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The prompt waiting for the person, if any.
    pub fn pending(&self) -> Option<HumanPrompt> {
        self.lock().open.as_ref().map(|o| o.prompt.clone())
    }

    /// Waits for the next open prompt; `None` once the channel is abandoned.
    pub async fn next_prompt(&self) -> Option<HumanPrompt> {
        let mut seen = self.version.subscribe();
        loop {
            {
                let state = self.lock();
                if let Some(open) = &state.open {
                    return Some(open.prompt.clone());
                }
                if state.abandoned.is_some() {
                    return None;
                }
            }
            if seen.changed().await.is_err() {
                return None;
            }
        }
    }

    /// The person's answer to prompt `id`. Refused (and the prompt left open) when it does not fit the prompt;
    /// refused when `id` is not the open prompt.
    pub fn answer(&self, id: u64, answer: &HumanAnswer) -> Result<(), HumanError> {
        let mut state = self.lock();
        let reply = match &state.open {
            Some(open) if open.prompt.id == id => open.draft.reply(answer)?,
            _ => return Err(HumanError::NotOpen(id)),
        };
        let open = state.open.take().ok_or(HumanError::NotOpen(id))?;
        drop(state);
        self.bump();
        // The episode task stopped waiting (it was cancelled): the prompt is gone either way.
        open.reply.send(reply).map_err(|_| HumanError::NotOpen(id))
    }

    /// The person left: the open prompt is withdrawn and the episode ends as abandoned.
    pub fn quit(&self, why: &str) {
        let mut state = self.lock();
        state.open = None;
        state.abandoned.get_or_insert_with(|| why.to_string());
        drop(state);
        self.bump();
    }

    /// Why the episode was abandoned, once it was.
    pub fn abandoned(&self) -> Option<String> {
        self.lock().abandoned.clone()
    }

    /// Opens a prompt and waits for its answer (or the timeout, which abandons the channel).
    pub async fn ask(&self, draft: Draft) -> Result<UserReply, UserError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut state = self.lock();
            if let Some(why) = &state.abandoned {
                return Err(UserError::Gone(why.clone()));
            }
            let id = state.next_id;
            state.next_id += 1;
            state.open = Some(Open { prompt: draft.prompt(id), draft, reply: tx });
            id
        };
        self.bump();
        let _withdraw = Withdraw { channel: self, id };
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(UserError::Gone(self.abandoned().unwrap_or_else(|| "the prompt was withdrawn".into()))),
            Err(_) => {
                let why = format!("no answer within {:?}", self.timeout);
                let mut state = self.lock();
                if state.open.as_ref().is_some_and(|o| o.prompt.id == id) {
                    state.open = None;
                }
                let why = state.abandoned.get_or_insert(why).clone();
                drop(state);
                self.bump();
                Err(UserError::Gone(why))
            }
        }
    }
}

/// Withdraws the open prompt when the episode stops waiting for it for any reason, including being dropped (a
/// cancelled run), so the browser never sees a prompt nobody waits for.
struct Withdraw<'a> {
    channel: &'a HumanChannel,
    id: u64,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        let mut state = self.channel.lock();
        if state.open.as_ref().is_some_and(|o| o.prompt.id == self.id) {
            state.open = None;
            drop(state);
            self.channel.bump();
        }
    }
}

/// The third kind of user: a person answering through a `HumanChannel`.
#[derive(Clone)]
pub struct HumanUser {
    channel: Arc<HumanChannel>,
}

impl HumanUser {
    pub fn new(channel: Arc<HumanChannel>) -> HumanUser {
        HumanUser { channel }
    }
    pub fn channel(&self) -> &Arc<HumanChannel> {
        &self.channel
    }
}

#[async_trait::async_trait]
impl User for HumanUser {
    fn kind(&self) -> UserKind {
        UserKind::Human
    }

    async fn reply(&self, query: &UserQuery) -> Result<UserReply, UserError> {
        if let Some(why) = self.channel.abandoned() {
            return Err(UserError::Gone(why));
        }
        match plan(query)? {
            Plan::Auto(reply) => Ok(reply),
            Plan::Ask(draft) => self.channel.ask(draft).await,
        }
    }

    fn abandoned(&self) -> bool {
        self.channel.abandoned().is_some()
    }
}
