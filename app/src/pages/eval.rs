//! Evaluation results: one row per (model, split), per gym a scripted-user, an LLM-user and a real-user score
//! (crowd-study episodes, excluded sessions left out), and an overall score per user kind weighted by episodes.

use std::collections::BTreeMap;

use leptos::prelude::*;
use userrl_types::EvalRow;

use crate::api::list_evals;
use crate::components::{loading, show_errors};
use crate::model::format_value;

/// User kinds with a column, in order (`human`: people in crowd studies).
pub const USER_KINDS: [&str; 3] = ["scripted", "llm", "human"];

/// A user kind's column heading.
pub fn kind_label(kind: &str) -> &str {
    if kind == "human" { "real user" } else { kind }
}

/// A row's cells: per (gym, user kind) the newest result.
pub type EvalCells = BTreeMap<(String, String), EvalRow>;

/// The eval table: rows (model, split), gym columns, cells per user kind.
#[derive(Debug, Default, PartialEq)]
pub struct EvalTable {
    pub gyms: Vec<String>,
    /// ((model, split), per (gym, user kind) the newest row).
    pub rows: Vec<((String, String), EvalCells)>,
}

impl EvalTable {
    pub fn build(evals: Vec<EvalRow>) -> EvalTable {
        let mut gyms: Vec<String> = Vec::new();
        let mut rows: BTreeMap<(String, String), EvalCells> = BTreeMap::new();
        for e in evals {
            if !gyms.contains(&e.gym) {
                gyms.push(e.gym.clone());
            }
            let cells = rows.entry((e.model.clone(), e.split.clone())).or_default();
            let cell = (e.gym.clone(), e.user_kind.clone());
            let newer = cells.get(&cell).is_none_or(|old| (e.created_at, e.id) > (old.created_at, old.id));
            if newer {
                cells.insert(cell, e);
            }
        }
        gyms.sort();
        EvalTable { gyms, rows: rows.into_iter().collect() }
    }

    /// Episode-weighted mean score over a row's gyms for one user kind, with the episode count.
    pub fn overall(cells: &EvalCells, user_kind: &str) -> Option<(f64, i64)> {
        let (sum, n) = cells
            .values()
            .filter(|e| e.user_kind == user_kind && e.episodes > 0)
            .fold((0.0, 0), |(s, n), e| (s + e.mean_score * e.episodes as f64, n + e.episodes));
        (n > 0).then(|| (sum / n as f64, n))
    }
}

#[component]
pub fn EvalPage() -> impl IntoView {
    let evals = Resource::new(|| (), |_| list_evals());
    view! {
        <section class="page eval-page">
            <h1>"Evaluations"</h1>
            <p class="hint">"Mean score per gym (hover for success rate, turns and episodes); overall is weighted by episodes."</p>
            <Transition fallback=loading>
                <ErrorBoundary fallback=show_errors>
                    {move || Suspend::new(async move {
                        let table = EvalTable::build(evals.await?);
                        let empty = table.rows.is_empty();
                        let gyms = table.gyms.clone();
                        let head = gyms
                            .iter()
                            .map(|g| view! { <th colspan=USER_KINDS.len().to_string()>{g.clone()}</th> })
                            .collect_view();
                        let sub = (0..=gyms.len())
                            .map(|_| USER_KINDS.map(|k| view! { <th class="kind">{kind_label(k)}</th> }))
                            .collect_view();
                        let body = table
                            .rows
                            .into_iter()
                            .map(|((model, split), cells)| {
                                let overall = USER_KINDS.map(|k| {
                                    let v = EvalTable::overall(&cells, k);
                                    view! {
                                        <td class="num overall" title=v.map(|(_, n)| format!("{n} episodes")).unwrap_or_default()>
                                            {v.map(|(s, _)| format_value(s)).unwrap_or_else(|| "–".into())}
                                        </td>
                                    }
                                });
                                let per_gym = gyms
                                    .iter()
                                    .map(|g| {
                                        USER_KINDS.map(|k| {
                                            let e = cells.get(&(g.clone(), k.to_string()));
                                            let title = e
                                                .map(|e| format!(
                                                    "success {:.0}% · {:.1} turns · {} episodes · normalised {}",
                                                    100.0 * e.success_rate,
                                                    e.mean_turns,
                                                    e.episodes,
                                                    format_value(e.normalized)
                                                ))
                                                .unwrap_or_default();
                                            view! {
                                                <td class="num" title=title>
                                                    {e.map(|e| format_value(e.mean_score)).unwrap_or_else(|| "–".into())}
                                                </td>
                                            }
                                        })
                                    })
                                    .collect_view();
                                view! {
                                    <tr>
                                        <td class="model" title=model.clone()>{model.clone()}</td>
                                        <td>{split}</td>
                                        {overall}
                                        {per_gym}
                                    </tr>
                                }
                            })
                            .collect_view();
                        Ok::<_, ServerFnError>(view! {
                            {empty.then(|| view! { <p class="empty">"No evaluations yet."</p> })}
                            <table class="evals">
                                <thead>
                                    <tr>
                                        <th rowspan="2">"model"</th>
                                        <th rowspan="2">"split"</th>
                                        <th colspan=USER_KINDS.len().to_string()>"overall"</th>
                                        {head}
                                    </tr>
                                    <tr>{sub}</tr>
                                </thead>
                                <tbody>{body}</tbody>
                            </table>
                        })
                    })}
                </ErrorBoundary>
            </Transition>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, model: &str, gym: &str, kind: &str, episodes: i64, score: f64, at: i64) -> EvalRow {
        EvalRow {
            id,
            run_id: None,
            model: model.into(),
            gym: gym.into(),
            user_kind: kind.into(),
            split: "test".into(),
            episodes,
            mean_score: score,
            normalized: score,
            success_rate: 0.0,
            mean_turns: 1.0,
            created_at: at,
        }
    }

    #[test]
    fn table_keeps_the_newest_cell_and_weights_overall_by_episodes() {
        let t = EvalTable::build(vec![
            row(1, "m", "b", "scripted", 10, 0.0, 1),
            row(2, "m", "b", "scripted", 10, 1.0, 2),
            row(3, "m", "a", "scripted", 30, 0.5, 1),
            row(4, "m", "a", "llm", 5, 0.2, 1),
            row(5, "n", "a", "scripted", 1, 0.9, 1),
        ]);
        assert_eq!(t.gyms, ["a", "b"]);
        assert_eq!(t.rows.len(), 2);
        let cells = &t.rows[0].1;
        assert_eq!(cells[&("b".to_string(), "scripted".to_string())].mean_score, 1.0);
        let (score, n) = EvalTable::overall(cells, "scripted").unwrap();
        assert_eq!(n, 40);
        assert!((score - (0.5 * 30.0 + 1.0 * 10.0) / 40.0).abs() < 1e-12);
        assert_eq!(EvalTable::overall(cells, "llm"), Some((0.2, 5)));
        assert_eq!(EvalTable::overall(&t.rows[1].1, "llm"), None);
    }
}
