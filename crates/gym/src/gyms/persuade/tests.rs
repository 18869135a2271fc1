//! Tests of PersuadeGym: the reward rules of reference §4.3, the scripted persuadee, the LLM protocol, the data
//! and the expert.

use super::*;

#[test]
fn data_points_are_understood() {
    let tasks = builtin_tasks().unwrap();
    let mut problems = Vec::new();
    for t in &tasks {
        let concepts: Vec<Vec<Vec<String>>> = t.points.iter().map(|p| p.concepts.clone()).collect();
        let lex = Lexicon::new(&t.claim, &t.argument, &concepts);
        for (i, p) in t.points.iter().enumerate() {
            let a = lex.analyze(&p.text);
            if a.made != vec![i] {
                problems.push(format!("{} point {i}: made {:?} denied {:?}: {}", t.id, a.made, a.denied, p.text));
            }
        }
        for (n, turn) in expert_plan(t).iter().enumerate() {
            let text: Vec<&str> = turn.iter().map(|&i| t.points[i].text.as_str()).collect();
            let text = format!("{} {}", OPENERS[0], text.join(" "));
            let a = lex.analyze(&text);
            let mut want = turn.clone();
            want.sort();
            if a.made != want {
                problems.push(format!("{} turn {n}: made {:?}, want {:?}", t.id, a.made, want));
            }
        }
        let a = lex.analyze(&t.argument);
        if !a.made.is_empty() {
            problems.push(format!("{} own argument makes {:?}", t.id, a.made));
        }
        if t.reachable_levels() < 6 {
            problems.push(format!("{} reaches only {} levels", t.id, t.reachable_levels()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
