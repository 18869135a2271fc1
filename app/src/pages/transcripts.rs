//! Transcripts of a run: a filter form (gym, step, reward range, termination, train/eval) over the list,
//! one transcript with its turns, and a GRPO group's rollouts side by side.

use leptos::prelude::*;
use leptos_router::hooks::{use_params_map, use_query_map};
use leptos_router::params::ParamsMap;
use userrl_types::TranscriptSummary;

use crate::api::{get_group, get_transcript, list_transcripts};
use crate::components::{Messages, loading, show_errors};
use crate::model::{TRANSCRIPT_PAGE, TranscriptQuery, TranscriptView, format_value};

/// The filters from the page's query string; malformed numbers are ignored, not errors.
pub fn query_from(params: &ParamsMap) -> TranscriptQuery {
    let text = |k: &str| params.get(k).map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    TranscriptQuery {
        gym: text("gym"),
        step: text("step").and_then(|s| s.parse().ok()),
        min_reward: text("min_reward").and_then(|s| s.parse().ok()),
        max_reward: text("max_reward").and_then(|s| s.parse().ok()),
        termination: text("termination"),
        validate: match text("kind").as_deref() {
            Some("train") => Some(false),
            Some("eval") => Some(true),
            _ => None,
        },
        offset: text("offset").and_then(|s| s.parse().ok()).unwrap_or(0).max(0),
    }
}

fn page_href(run_id: i64, params: &ParamsMap, offset: i64) -> String {
    let mut parts = Vec::new();
    for key in ["gym", "step", "min_reward", "max_reward", "termination", "kind"] {
        if let Some(v) = params.get(key).filter(|v| !v.is_empty()) {
            parts.push(format!("{key}={}", crate::pages::run::encode(&v)));
        }
    }
    parts.push(format!("offset={offset}"));
    format!("/runs/{run_id}/transcripts?{}", parts.join("&"))
}

#[component]
pub fn TranscriptsPage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let run_id = move || params.read().get("id").and_then(|s| s.parse::<i64>().ok()).unwrap_or(-1);
    let list = Resource::new(move || (run_id(), query_from(&query.read())), |(id, q)| list_transcripts(id, q));
    let value = move |k: &str| query.read().get(k).unwrap_or_default();
    view! {
        <section class="page transcripts-page">
            <div class="toolbar">
                <h1>"Transcripts"</h1>
                <a href=move || format!("/runs/{}", run_id())>{move || format!("← run #{}", run_id())}</a>
            </div>
            <form class="filters" method="get" action=move || format!("/runs/{}/transcripts", run_id())>
                <label>"gym " <input name="gym" type="text" size="10" value=value("gym") /></label>
                <label>"step " <input name="step" type="number" min="0" value=value("step") /></label>
                <label>"reward ≥ " <input name="min_reward" type="number" step="any" value=value("min_reward") /></label>
                <label>"reward ≤ " <input name="max_reward" type="number" step="any" value=value("max_reward") /></label>
                <label>
                    "termination " <input name="termination" type="text" size="12" value=value("termination") />
                </label>
                <label>
                    "kind "
                    <select name="kind">
                        <option value="" selected=value("kind").is_empty()>"all"</option>
                        <option value="train" selected=value("kind") == "train">"train"</option>
                        <option value="eval" selected=value("kind") == "eval">"eval"</option>
                    </select>
                </label>
                <button class="button" type="submit">"Filter"</button>
            </form>
            <Transition fallback=loading>
                <ErrorBoundary fallback=show_errors>
                    {move || Suspend::new(async move {
                        let rows = list.await?;
                        let id = run_id();
                        let q = query_from(&query.read_untracked());
                        let p = query.get_untracked();
                        let prev = (q.offset > 0).then(|| page_href(id, &p, (q.offset - TRANSCRIPT_PAGE).max(0)));
                        let next = (rows.len() as i64 == TRANSCRIPT_PAGE).then(|| page_href(id, &p, q.offset + TRANSCRIPT_PAGE));
                        let empty = rows.is_empty();
                        Ok::<_, ServerFnError>(view! {
                            {empty.then(|| view! { <p class="empty">"No transcripts match."</p> })}
                            <table class="transcripts">
                                <thead>
                                    <tr>
                                        <th>"step"</th>
                                        <th>"group"</th>
                                        <th>"sample"</th>
                                        <th>"kind"</th>
                                        <th>"gym"</th>
                                        <th>"task"</th>
                                        <th>"reward"</th>
                                        <th title="the paper's score, normalised to [0, 1]">"normalized"</th>
                                        <th>"turns"</th>
                                        <th>"termination"</th>
                                    </tr>
                                </thead>
                                <tbody>{rows.into_iter().map(|t| view! { <SummaryLine t /> }).collect_view()}</tbody>
                            </table>
                            <nav class="pager">
                                {prev.map(|h| view! { <a href=h>"← newer"</a> })}
                                {next.map(|h| view! { <a href=h>"older →"</a> })}
                            </nav>
                        })
                    })}
                </ErrorBoundary>
            </Transition>
        </section>
    }
}

#[component]
fn SummaryLine(t: TranscriptSummary) -> impl IntoView {
    let group = format!("/runs/{}/groups/{}/{}", t.run_id, t.step, t.group);
    view! {
        <tr class=if t.success { "transcript success" } else { "transcript" }>
            <td class="num">{t.step}</td>
            <td class="num">
                <a href=group title="the group's rollouts side by side">{t.group}</a>
            </td>
            <td class="num">
                <a class="open" href=format!("/transcripts/{}", t.id)>{format!("#{}", t.sample)}</a>
            </td>
            <td>{if t.validate { "eval" } else { "train" }}</td>
            <td>{t.gym}</td>
            <td class="task">{t.task_id}</td>
            <td class="num">{format_value(t.reward)}</td>
            <td class="num">{format_value(t.normalized)}</td>
            <td class="num">{t.turns}</td>
            <td>{t.termination}</td>
        </tr>
    }
}

fn facts(v: &TranscriptView) -> impl IntoView + use<> {
    let s = &v.summary;
    let r = &v.record;
    let rewards: Vec<String> = r.turn_rewards.iter().map(|x| format_value(*x)).collect();
    view! {
        <dl class="facts">
            <dt>"gym"</dt>
            <dd>{s.gym.clone()}</dd>
            <dt>"task"</dt>
            <dd>{s.task_id.clone()}</dd>
            <dt>"reward"</dt>
            <dd class="num">{format_value(s.reward)}</dd>
            <dt>"advantage"</dt>
            <dd class="num">{format_value(r.advantage)}</dd>
            <dt>"score"</dt>
            <dd class="num">{format!("{} ({})", format_value(r.score), format_value(s.normalized))}</dd>
            <dt>"success"</dt>
            <dd>{if s.success { "yes" } else { "no" }}</dd>
            <dt>"termination"</dt>
            <dd>{s.termination.clone()}</dd>
            <dt>"turn rewards"</dt>
            <dd class="num turn-rewards">{rewards.join(" · ")}</dd>
        </dl>
    }
}

#[component]
pub fn TranscriptPage() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.read().get("id").and_then(|s| s.parse::<i64>().ok()).unwrap_or(-1);
    let transcript = Resource::new(id, get_transcript);
    view! {
        <section class="page transcript-page">
            <Transition fallback=loading>
                <ErrorBoundary fallback=show_errors>
                    {move || Suspend::new(async move {
                        let v = transcript.await?;
                        let s = v.summary.clone();
                        let kind = if s.validate { "eval" } else { "train" };
                        let group = format!("/runs/{}/groups/{}/{}", s.run_id, s.step, s.group);
                        Ok::<_, ServerFnError>(view! {
                            <div class="toolbar">
                                <h1>{format!("Transcript #{} ({kind}, step {}, group {}, sample {})", s.id, s.step, s.group, s.sample)}</h1>
                                <a href=format!("/runs/{}/transcripts", s.run_id)>{format!("← run #{}", s.run_id)}</a>
                                <a href=group>"its group side by side"</a>
                            </div>
                            {facts(&v)}
                            <Messages record=v.record />
                        })
                    })}
                </ErrorBoundary>
            </Transition>
        </section>
    }
}

#[component]
pub fn GroupPage() -> impl IntoView {
    let params = use_params_map();
    let num = move |k: &str| params.read().get(k).and_then(|s| s.parse::<i64>().ok()).unwrap_or(-1);
    let group = Resource::new(move || (num("id"), num("step"), num("group")), |(r, s, g)| get_group(r, s, g));
    view! {
        <section class="page group-page">
            <div class="toolbar">
                <h1>{move || format!("Run #{} · step {} · group {}", num("id"), num("step"), num("group"))}</h1>
                <a href=move || format!("/runs/{}/transcripts", num("id"))>"← transcripts"</a>
            </div>
            <Transition fallback=loading>
                <ErrorBoundary fallback=show_errors>
                    {move || Suspend::new(async move {
                        let rollouts = group.await?;
                        Ok::<_, ServerFnError>(view! {
                            <div class="group">
                                {rollouts
                                    .into_iter()
                                    .map(|v| {
                                        let s = v.summary.clone();
                                        view! {
                                            <article class="rollout">
                                                <h2>
                                                    <a href=format!("/transcripts/{}", s.id)>{format!("sample {}", s.sample)}</a>
                                                </h2>
                                                {facts(&v)}
                                                <Messages record=v.record compact=true />
                                            </article>
                                        }
                                    })
                                    .collect_view()}
                            </div>
                        })
                    })}
                </ErrorBoundary>
            </Transition>
        </section>
    }
}
