//! FunctionGym (held-in, no user model): the agent infers a hidden arithmetic function of four numbers by
//! trying inputs, fetches the test case with `search test`, and answers the function's value on it
//! (reference §4.5). The task set is procedural: 500 random expressions over a, b, c, d with small constants,
//! reproducible from a seed.

use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::agent::{Agent, AgentTurn, Message};
use crate::env::{Env, EnvConfig, EnvStep};
use crate::gyms::{Gym, GymError, GymKind, Task, TaskInfo, TaskSet};
use crate::split::{self, Split};
use crate::tool::{Action, Choice};
use crate::user::User;

pub const TASK_COUNT: usize = 500;
pub const SEED: u64 = 0x0F0F_2025;
const TEST_FRACTION: f64 = 0.15;
/// An answer is right when it is this close to the expected value (the original's tolerance).
const TOLERANCE: f64 = 1e-6;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FunctionTask {
    pub id: String,
    pub split: Split,
    /// The hidden rule in Python syntax over `a`, `b`, `c`, `d` (`+ - * / **`, parentheses, constants).
    pub rule: String,
    pub test_case: [f64; 4],
    pub expected: f64,
}

impl Task for FunctionTask {
    fn id(&self) -> &str {
        &self.id
    }
    fn split(&self) -> Split {
        self.split
    }
}

// ---------------------------------------------------------------------------------------------------------
// Expressions

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Num(f64),
    Var(usize),
    Neg(Box<Expr>),
    Bin(Op, Box<Expr>, Box<Expr>),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

#[derive(Debug, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("division by zero")]
    DivisionByZero,
    #[error("the result is not a finite number")]
    NotFinite,
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("cannot parse rule at character {at}: {message}")]
pub struct ParseError {
    pub at: usize,
    pub message: String,
}

impl Expr {
    pub fn eval(&self, x: &[f64; 4]) -> Result<f64, EvalError> {
        let v = match self {
            Expr::Num(n) => *n,
            Expr::Var(i) => x[*i],
            Expr::Neg(e) => -e.eval(x)?,
            Expr::Bin(op, l, r) => {
                let (l, r) = (l.eval(x)?, r.eval(x)?);
                match op {
                    Op::Add => l + r,
                    Op::Sub => l - r,
                    Op::Mul => l * r,
                    Op::Div if r == 0.0 => return Err(EvalError::DivisionByZero),
                    Op::Div => l / r,
                    Op::Pow if l == 0.0 && r < 0.0 => return Err(EvalError::DivisionByZero),
                    Op::Pow => l.powf(r),
                }
            }
        };
        if v.is_finite() { Ok(v) } else { Err(EvalError::NotFinite) }
    }

    /// Python-syntax text, parenthesised so that it parses back to the same tree.
    pub fn to_python(&self) -> String {
        match self {
            Expr::Num(n) => format_number(*n),
            Expr::Var(i) => ["a", "b", "c", "d"][*i].to_string(),
            Expr::Neg(e) => format!("-({})", e.to_python()),
            Expr::Bin(op, l, r) => {
                let sym = match op {
                    Op::Add => "+",
                    Op::Sub => "-",
                    Op::Mul => "*",
                    Op::Div => "/",
                    Op::Pow => "**",
                };
                let wrap = |e: &Expr, tight: bool| match e {
                    Expr::Bin(inner, ..) if tight || precedence(*inner) < precedence(*op) => {
                        format!("({})", e.to_python())
                    }
                    Expr::Neg(_) => format!("({})", e.to_python()),
                    _ => e.to_python(),
                };
                // Left-associative ops need the right side wrapped at equal precedence; `**` the left side.
                let left_tight = *op == Op::Pow;
                let right_tight = matches!(op, Op::Sub | Op::Div)
                    || matches!(r.as_ref(), Expr::Bin(i, ..) if precedence(*i) == precedence(*op) && *op != Op::Pow);
                format!("{} {sym} {}", wrap(l, left_tight), wrap(r, right_tight))
            }
        }
    }
}

fn precedence(op: Op) -> u8 {
    match op {
        Op::Add | Op::Sub => 1,
        Op::Mul | Op::Div => 2,
        Op::Pow => 3,
    }
}

/// Parses a rule with Python's precedence: `**` binds tightest and to the right, and above unary minus
/// (`-a ** 2` is `-(a ** 2)`).
pub fn parse_rule(text: &str) -> Result<Expr, ParseError> {
    let mut p = Parser { s: text.as_bytes(), i: 0 };
    let e = p.sum()?;
    p.skip_ws();
    if p.i != p.s.len() {
        return Err(p.err("unexpected text"));
    }
    Ok(e)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn err(&self, message: &str) -> ParseError {
        ParseError { at: self.i, message: message.to_string() }
    }
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.i).copied()
    }
    fn sum(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.product()?;
        while let Some(c @ (b'+' | b'-')) = self.peek() {
            self.i += 1;
            let right = self.product()?;
            left = Expr::Bin(if c == b'+' { Op::Add } else { Op::Sub }, Box::new(left), Box::new(right));
        }
        Ok(left)
    }
    fn product(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        loop {
            match self.peek() {
                Some(b'*') if self.s.get(self.i + 1) != Some(&b'*') => {
                    self.i += 1;
                    left = Expr::Bin(Op::Mul, Box::new(left), Box::new(self.unary()?));
                }
                Some(b'/') => {
                    self.i += 1;
                    left = Expr::Bin(Op::Div, Box::new(left), Box::new(self.unary()?));
                }
                _ => return Ok(left),
            }
        }
    }
    fn unary(&mut self) -> Result<Expr, ParseError> {
        match self.peek() {
            Some(b'-') => {
                self.i += 1;
                Ok(Expr::Neg(Box::new(self.unary()?)))
            }
            Some(b'+') => {
                self.i += 1;
                self.unary()
            }
            _ => self.power(),
        }
    }
    fn power(&mut self) -> Result<Expr, ParseError> {
        let base = self.atom()?;
        if self.peek() == Some(b'*') && self.s.get(self.i + 1) == Some(&b'*') {
            self.i += 2;
            let exponent = self.unary()?;
            return Ok(Expr::Bin(Op::Pow, Box::new(base), Box::new(exponent)));
        }
        Ok(base)
    }
    fn atom(&mut self) -> Result<Expr, ParseError> {
        match self.peek() {
            Some(b'(') => {
                self.i += 1;
                let e = self.sum()?;
                if self.peek() != Some(b')') {
                    return Err(self.err("expected `)`"));
                }
                self.i += 1;
                Ok(e)
            }
            Some(c @ b'a'..=b'd') => {
                self.i += 1;
                if self.s.get(self.i).is_some_and(|n| n.is_ascii_alphanumeric() || *n == b'_') {
                    return Err(self.err("unknown name"));
                }
                Ok(Expr::Var((c - b'a') as usize))
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => {
                let start = self.i;
                while self.i < self.s.len() && (self.s[self.i].is_ascii_digit() || self.s[self.i] == b'.') {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|_| self.err("bad number"))?;
                text.parse::<f64>().map(Expr::Num).map_err(|_| self.err("bad number"))
            }
            _ => Err(self.err("expected a number, a variable or `(`")),
        }
    }
}

/// Formats a number as Python prints a float: `225.0`, `0.3333`, `-2.5`.
pub fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e16 { format!("{x:.1}") } else { format!("{x}") }
}

/// Rounds to 4 decimals, as the original's feedback does.
fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// Extracts numbers as the original does (regex `-?\d+\.?\d*`).
pub fn extract_numbers(text: &str) -> Vec<f64> {
    static NUMBER: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"-?\d+\.?\d*").expect("static regex"));
    NUMBER.find_iter(text).filter_map(|m| m.as_str().parse::<f64>().ok()).collect()
}

// ---------------------------------------------------------------------------------------------------------
// Task generation

fn random_expr(rng: &mut ChaCha8Rng) -> Expr {
    let mut vars: Vec<Expr> = (0..4).map(Expr::Var).collect();
    vars.shuffle(rng);
    // Occasionally scale or square a leaf, so rules are not only sums of products.
    for v in vars.iter_mut() {
        match rng.random_range(0..10) {
            0 => *v = Expr::Bin(Op::Pow, Box::new(v.clone()), Box::new(Expr::Num(2.0))),
            1 | 2 => *v = Expr::Bin(Op::Mul, Box::new(Expr::Num(rng.random_range(2..=5) as f64)), Box::new(v.clone())),
            _ => {}
        }
    }
    let pick_op = |rng: &mut ChaCha8Rng| match rng.random_range(0..20) {
        0..=6 => Op::Add,
        7..=11 => Op::Sub,
        12..=18 => Op::Mul,
        _ => Op::Div,
    };
    let mut items = vars;
    while items.len() > 1 {
        let i = rng.random_range(0..items.len() - 1);
        let l = items.remove(i);
        let r = items.remove(i);
        items.insert(i, Expr::Bin(pick_op(rng), Box::new(l), Box::new(r)));
    }
    let mut e = items.remove(0);
    if rng.random_range(0..5) == 0 {
        let k = rng.random_range(1..=9) as f64;
        e = Expr::Bin(if rng.random_bool(0.5) { Op::Add } else { Op::Sub }, Box::new(e), Box::new(Expr::Num(k)));
    }
    e
}

/// The embedded task set: `TASK_COUNT` rules from `SEED`, each with a test case whose value is finite, not
/// huge, and exact to four decimals (so an agent that infers the rule can state the answer).
pub fn generate(count: usize, seed: u64) -> Vec<FunctionTask> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let splits = split::assign(count, TEST_FRACTION, seed);
    let mut tasks = Vec::with_capacity(count);
    let mut seen = std::collections::HashSet::new();
    while tasks.len() < count {
        let expr = random_expr(&mut rng);
        let rule = expr.to_python();
        if !seen.insert(rule.clone()) {
            continue;
        }
        for _ in 0..20 {
            let case = [0; 4].map(|_| rng.random_range(0..=10) as f64);
            let Ok(value) = expr.eval(&case) else { continue };
            if value.abs() > 1e6 || (round4(value) - value).abs() > 1e-9 {
                continue;
            }
            let i = tasks.len();
            tasks.push(FunctionTask {
                id: format!("function-{i:03}"),
                split: splits[i],
                rule,
                test_case: case,
                expected: value,
            });
            break;
        }
    }
    tasks
}

// ---------------------------------------------------------------------------------------------------------
// Import of the original `functions.json`

/// Converts `tasks/FunctionGym/functions.json`; the split follows the original test parquet when present,
/// else the original's proportion (78 of 538) from a seeded shuffle.
pub fn import_original(root: &std::path::Path) -> Result<Vec<serde_json::Value>, GymError> {
    #[derive(Deserialize)]
    struct Original {
        id: String,
        rule: String,
        test_case: Vec<f64>,
        expected_result: f64,
    }
    let path = crate::import::tasks_dir(root, GymKind::Function).join("functions.json");
    let value = crate::import::read_json(&path)?;
    let originals: Vec<Original> = serde_json::from_value(value).map_err(|e| GymError::Data {
        gym: GymKind::Function,
        location: path.display().to_string(),
        message: e.to_string(),
    })?;
    let test_ids: std::collections::HashSet<String> =
        crate::import::parquet_ids(root, "function_multiturn", "test")?.into_iter().collect();
    let fallback = split::assign(originals.len(), 78.0 / 538.0, 42);
    let mut out = Vec::with_capacity(originals.len());
    for (i, o) in originals.into_iter().enumerate() {
        let bad = |message: String| GymError::Data {
            gym: GymKind::Function,
            location: format!("{}: {}", path.display(), o.id),
            message,
        };
        let test_case: [f64; 4] =
            o.test_case.as_slice().try_into().map_err(|_| bad("test_case must have four numbers".into()))?;
        parse_rule(&o.rule).map_err(|e| bad(e.to_string()))?;
        let split = if test_ids.is_empty() {
            fallback[i]
        } else if test_ids.contains(&o.id) {
            Split::Test
        } else {
            Split::Train
        };
        let task =
            FunctionTask { id: o.id.clone(), split, rule: o.rule.clone(), test_case, expected: o.expected_result };
        out.push(serde_json::to_value(task).map_err(|e| bad(e.to_string()))?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------
// The gym

pub struct FunctionGym {
    tasks: TaskSet<FunctionTask>,
}

impl FunctionGym {
    pub fn builtin() -> Result<FunctionGym, GymError> {
        FunctionGym::from_tasks(generate(TASK_COUNT, SEED))
    }

    pub fn from_tasks(tasks: Vec<FunctionTask>) -> Result<FunctionGym, GymError> {
        for t in &tasks {
            parse_rule(&t.rule).map_err(|e| GymError::Data {
                gym: GymKind::Function,
                location: t.id.clone(),
                message: e.to_string(),
            })?;
        }
        Ok(FunctionGym { tasks: TaskSet::new(GymKind::Function, tasks)? })
    }

    pub fn from_jsonl(text: &str, source: &str) -> Result<FunctionGym, GymError> {
        let set: TaskSet<FunctionTask> = TaskSet::from_jsonl(GymKind::Function, text, source)?;
        FunctionGym::from_tasks(set.all().iter().map(|t| t.as_ref().clone()).collect())
    }
}

pub const SYSTEM_PROMPT: &str = "You are an agent working inside an environment through one tool. Read the details \
below carefully.

- Environment: FunctionGym. A hidden function maps four numbers a, b, c, d to one output, using only \
addition, subtraction, multiplication, division and powers, possibly with small constants. You may try inputs and \
observe outputs, then you must compute the function's value on a hidden test case.

- Choices: call `interact_with_env` with `choice` set to `search`, `action` or `answer`.
  * `search`: the content must be exactly `test`; you receive the test case.
  * `action`: the content is four integers separated by spaces; you receive the function's output for them. \
The test case itself cannot be queried.
  * `answer`: the content is a single number, the function's value on the test case.

- Notes:
  * Think step by step before each call.
  * Vary one input at a time to see how each one affects the output; operands may appear in any order inside \
the function.
  * Turns are limited: be efficient, and answer once you are confident. A correct answer ends the game.";

impl Gym for FunctionGym {
    fn kind(&self) -> GymKind {
        GymKind::Function
    }
    fn tasks(&self) -> &[TaskInfo] {
        self.tasks.info()
    }
    fn system_prompt(&self) -> String {
        SYSTEM_PROMPT.to_string()
    }
    fn new_env(&self, task_id: &str, _config: &EnvConfig, _user: Arc<dyn User>) -> Result<Box<dyn Env>, GymError> {
        let task = self.tasks.get(task_id)?.clone();
        let rule = parse_rule(&task.rule).map_err(|e| GymError::Data {
            gym: GymKind::Function,
            location: task.id.clone(),
            message: e.to_string(),
        })?;
        Ok(Box::new(FunctionEnv { task, rule, solved: false }))
    }
    fn expert(&self, task_id: &str, _seed: u64) -> Result<Box<dyn Agent>, GymError> {
        let task = self.tasks.get(task_id)?.clone();
        Ok(Box::new(FunctionExpert { task, turn: 0 }))
    }
    fn export_tasks(&self) -> Vec<serde_json::Value> {
        self.tasks.export()
    }
}

pub struct FunctionEnv {
    task: Arc<FunctionTask>,
    rule: Expr,
    solved: bool,
}

fn list(xs: &[f64]) -> String {
    format!("[{}]", xs.iter().map(|x| format_number(*x)).collect::<Vec<_>>().join(", "))
}

#[async_trait::async_trait]
impl Env for FunctionEnv {
    fn kind(&self) -> GymKind {
        GymKind::Function
    }
    fn task_id(&self) -> &str {
        &self.task.id
    }
    fn opening(&self) -> String {
        "My mapping function is settled. Try inputs with `action`, fetch the test case with `search`, and \
         give me the function's value on the test case with `answer`."
            .to_string()
    }
    fn success(&self) -> bool {
        self.solved
    }

    async fn step(&mut self, action: &Action) -> EnvStep {
        match action {
            Action::Search(query) => {
                if query.trim().eq_ignore_ascii_case("test") {
                    EnvStep::reply(format!("Test case: {}", list(&self.task.test_case)))
                } else {
                    EnvStep::reply("Search only supports the content `test`, which returns the test case.")
                }
            }
            Action::Action(text) => {
                let numbers = extract_numbers(text);
                let Ok(input) = <[f64; 4]>::try_from(numbers.as_slice()) else {
                    return EnvStep::reply("Please provide exactly four numbers.");
                };
                if input == self.task.test_case {
                    return EnvStep::reply(
                        "This is the test case and I cannot provide you with the calculation feedback.",
                    );
                }
                match self.rule.eval(&input) {
                    Ok(v) => EnvStep::reply(format!(
                        "For numbers {}, the result is {}.",
                        list(&input),
                        format_number(round4(v))
                    )),
                    Err(e) => EnvStep::reply(format!("For numbers {}, the function is undefined ({e}).", list(&input))),
                }
            }
            Action::Answer(text) => {
                let value = match text.trim().parse::<f64>() {
                    Ok(v) => Some(v),
                    Err(_) => match extract_numbers(text).as_slice() {
                        [v] => Some(*v),
                        _ => None,
                    },
                };
                // Several numbers are refused rather than checked one by one, so listing guesses earns nothing.
                let Some(value) = value.filter(|v| v.is_finite()) else {
                    return EnvStep::reply("Your answer must be exactly one number.");
                };
                if (value - self.task.expected).abs() <= TOLERANCE {
                    self.solved = true;
                    EnvStep::rewarded("Your answer is correct!", 1.0).end()
                } else {
                    EnvStep::reply("Your answer is incorrect. Keep exploring the function and try again.")
                }
            }
            Action::Finish => EnvStep::reply(format!(
                "The game is over. The expected answer was {}.",
                format_number(self.task.expected)
            ))
            .end(),
        }
    }
}

/// Plays like a careful person would (test case first, then a few probes varying one input at a time), and
/// answers with the true value, which it knows.
struct FunctionExpert {
    task: Arc<FunctionTask>,
    turn: usize,
}

const PROBES: [[i64; 4]; 3] = [[1, 2, 3, 4], [2, 2, 3, 4], [1, 3, 3, 4]];

#[async_trait::async_trait]
impl Agent for FunctionExpert {
    async fn act(&mut self, _conversation: &[Message]) -> AgentTurn {
        self.turn += 1;
        match self.turn {
            1 => AgentTurn::call_with_thought("I need the test case first.", Choice::Search, "test"),
            n @ 2..=4 => {
                let p = PROBES[n - 2];
                AgentTurn::call_with_thought(
                    "Vary one input at a time to see its effect.",
                    Choice::Action,
                    format!("{} {} {} {}", p[0], p[1], p[2], p[3]),
                )
            }
            _ => AgentTurn::call_with_thought(
                format!("From the probes the rule is {}; applying it to the test case.", self.task.rule),
                Choice::Answer,
                format_number(self.task.expected),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{Episode, Termination};
    use crate::user::ScriptedUser;
    use futures::executor::block_on;

    fn env_for(rule: &str, case: [f64; 4]) -> Episode {
        let expr = parse_rule(rule).unwrap();
        let expected = expr.eval(&case).unwrap();
        let task = FunctionTask { id: "t".into(), split: Split::Test, rule: rule.into(), test_case: case, expected };
        let gym = FunctionGym::from_tasks(vec![task]).unwrap();
        let env = gym.new_env("t", &EnvConfig::default(), Arc::new(ScriptedUser)).unwrap();
        Episode::new(env, EnvConfig::default())
    }

    #[test]
    fn parser_follows_python_precedence() {
        let x = [2.0, 3.0, 4.0, 5.0];
        assert_eq!(parse_rule("c * (a * b) * d").unwrap().eval(&x).unwrap(), 120.0);
        assert_eq!(parse_rule("-a ** 2").unwrap().eval(&x).unwrap(), -4.0);
        assert_eq!(parse_rule("a ** b ** 2").unwrap().eval(&x).unwrap(), 512.0);
        assert_eq!(parse_rule("a - b - c").unwrap().eval(&x).unwrap(), -5.0);
        assert_eq!(parse_rule("d / a / 5").unwrap().eval(&x).unwrap(), 0.5);
        assert_eq!(parse_rule("a / (b - 3)").unwrap().eval(&x), Err(EvalError::DivisionByZero));
        assert!(parse_rule("a + os").is_err());
        assert!(parse_rule("(a + b").is_err());
    }

    #[test]
    fn generated_rules_print_and_parse_back() {
        let tasks = generate(200, 1);
        assert_eq!(tasks.len(), 200);
        for t in &tasks {
            let e = parse_rule(&t.rule).unwrap();
            assert_eq!(e.to_python(), t.rule);
            assert!((e.eval(&t.test_case).unwrap() - t.expected).abs() < 1e-9);
        }
        assert_eq!(generate(50, 3), generate(50, 3));
    }

    // Reference §4.5: `[action]` needs exactly four numbers, refuses the test case, else reports the value.
    #[test]
    fn action_reports_value_or_refuses() {
        let mut ep = env_for("a * b + c - d", [3.0, 5.0, 5.0, 3.0]);
        let out = block_on(ep.step(Ok(Action::Action("1 2 3 4".into()))));
        assert_eq!(out.feedback, "For numbers [1.0, 2.0, 3.0, 4.0], the result is 1.0.");
        assert_eq!(out.reward, 0.0);
        let out = block_on(ep.step(Ok(Action::Action("1 2 3".into()))));
        assert_eq!(out.feedback, "Please provide exactly four numbers.");
        let out = block_on(ep.step(Ok(Action::Action("3 5 5 3".into()))));
        assert!(out.feedback.contains("This is the test case"));
    }

    // Reference §4.5: `search test` returns the test case; a correct answer pays 1.0 and ends the episode.
    #[test]
    fn correct_answer_pays_once_and_ends() {
        let mut ep = env_for("c * (a * b) * d", [3.0, 5.0, 5.0, 3.0]);
        let out = block_on(ep.step(Ok(Action::Search("TEST".into()))));
        assert_eq!(out.feedback, "Test case: [3.0, 5.0, 5.0, 3.0]");
        let out = block_on(ep.step(Ok(Action::Answer("224".into()))));
        assert_eq!((out.reward, out.terminated), (0.0, false));
        let out = block_on(ep.step(Ok(Action::Answer("225.0".into()))));
        assert_eq!((out.reward, out.terminated), (1.0, true));
        let t = ep.into_transcript();
        assert_eq!((t.score, t.success, t.termination), (1.0, true, Termination::Terminated));
    }

    // Listing candidates in one answer earns nothing.
    #[test]
    fn several_numbers_in_one_answer_earn_nothing() {
        let mut ep = env_for("a + b + c + d", [1.0, 1.0, 1.0, 1.0]);
        let out = block_on(ep.step(Ok(Action::Answer("3 or 4 or 5".into()))));
        assert_eq!(out.reward, 0.0);
        assert_eq!(out.feedback, "Your answer must be exactly one number.");
    }

    // Reference §4.5: `[finish]` reveals the expected result with reward 0; the budget truncates at 16 steps.
    #[test]
    fn finish_reveals_and_budget_truncates() {
        let mut ep = env_for("a + b + c + d", [1.0, 1.0, 1.0, 1.0]);
        let out = block_on(ep.step(Ok(Action::Finish)));
        assert!(out.feedback.contains("4.0"));
        assert_eq!((out.reward, out.terminated), (0.0, true));
        let mut ep = env_for("a + b + c + d", [1.0, 1.0, 1.0, 1.0]);
        for i in 0..16 {
            let out = block_on(ep.step(Ok(Action::Action("1 2 3 4".into()))));
            assert_eq!(out.truncated, i == 15);
        }
        assert_eq!(ep.into_transcript().termination, Termination::MaxSteps);
    }
}
