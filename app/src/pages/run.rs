//! A run: header with status, progress and cancel/resume, pinned charts of the DESIGN.md metrics (live,
//! smoothed, comparable with other runs — the compared runs live too — exportable), the config, checkpoints
//! with downloads and a chat link, and the rollout-health panel.

use leptos::prelude::*;
use leptos_router::hooks::{use_params_map, use_query_map};
use userrl_types::{MetricBucket, RolloutHealth, RunStatus};

use crate::api::{MAX_COMPARE, cancel_run, chart_series, resume_run, run_overview};
use crate::chart::{self, Line};
use crate::components::{StatusBadge, loading, show_errors};
use crate::live::{LiveLog, use_live};
use crate::model::{
    CheckpointFiles, LiveEvent, RunInfo, checkpoint_name, format_bytes, format_duration, format_time, format_value,
    phase_progress, run_duration, run_progress,
};

/// Parses `?compare=2,3` (bad entries are skipped; at most `MAX_COMPARE - 1` others, none equal to `id`).
pub fn parse_compare(text: &str, id: i64) -> Vec<i64> {
    let mut out = Vec::new();
    for part in text.split([',', ' ']) {
        if let Ok(n) = part.trim().trim_start_matches('#').parse::<i64>()
            && n != id
            && !out.contains(&n)
            && out.len() + 1 < MAX_COMPARE
        {
            out.push(n);
        }
    }
    out
}

#[component]
pub fn RunPage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let id = move || params.read().get("id").and_then(|s| s.parse::<i64>().ok());
    move || match id() {
        Some(id) => {
            let compare = Signal::derive(move || parse_compare(&query.read().get("compare").unwrap_or_default(), id));
            view! { <RunView id compare /> }.into_any()
        }
        None => view! { <p class="error">"Not a run id."</p> }.into_any(),
    }
}

#[component]
fn RunView(id: i64, compare: Signal<Vec<i64>>) -> impl IntoView {
    let overview = Resource::new(|| (), move |_| run_overview(id));
    let live = use_live(id, compare);
    let smoothing = RwSignal::new(0.6);
    // Status, checkpoints and new metric names change what the page shows around the charts: reload that.
    let handled = StoredValue::new(0usize);
    Effect::new(move |_| {
        let events = live.events.get();
        let start = handled.get_value();
        handled.set_value(events.len());
        let known = overview.get_untracked().and_then(Result::ok).map(|o| o.keys).unwrap_or_default();
        let reload = events[start.min(events.len())..].iter().any(|e| match e {
            LiveEvent::Status { .. } | LiveEvent::Checkpoint { .. } => true,
            LiveEvent::Metrics { values, .. } => values.iter().any(|(k, _)| !known.contains(k)),
            LiveEvent::Transcript { .. } | LiveEvent::Progress { .. } | LiveEvent::Compared { .. } => false,
        });
        if reload {
            overview.refetch();
        }
    });
    view! {
        <section class="page run-page" data-live=move || if live.open.get() { "open" } else { "closed" }>
            <Transition fallback=loading>
                <ErrorBoundary fallback=show_errors>
                    {move || Suspend::new(async move {
                        let o = overview.await?;
                        Ok::<_, ServerFnError>(view! { <RunHeader o=o.clone() overview live /> })
                    })}
                </ErrorBoundary>
            </Transition>
            <div class="chart-controls">
                <label>
                    "Smoothing "
                    <input
                        type="range"
                        min="0"
                        max="0.99"
                        step="0.01"
                        prop:value=move || smoothing.get().to_string()
                        on:input=move |e| smoothing.set(event_target_value(&e).parse().unwrap_or(0.0))
                    />
                    <span class="num">{move || format!("{:.2}", smoothing.get())}</span>
                </label>
                <CompareForm id compare />
                <a class="button" href=format!("/runs/{id}/transcripts")>"Transcripts"</a>
                <span class="live-dot" title="live updates">
                    {move || if live.open.get() { "● live" } else { "○ offline" }}
                </span>
            </div>
            <Transition fallback=loading>
                {move || Suspend::new(async move {
                    let keys = overview.await.map(|o| o.keys).unwrap_or_default();
                    let (pinned, rest) = chart::pinned_keys(&keys);
                    let empty = keys.is_empty();
                    view! {
                        {empty.then(|| view! { <p class="empty">"No metrics logged yet."</p> })}
                        <div class="charts">
                            <For each=move || pinned.clone() key=|k| k.clone() let:key>
                                <Chart id key compare smoothing live />
                            </For>
                        </div>
                        {(!rest.is_empty())
                            .then(|| {
                                view! {
                                    <details class="more-charts">
                                        <summary>{format!("{} more metrics", rest.len())}</summary>
                                        <div class="charts">
                                            <For each=move || rest.clone() key=|k| k.clone() let:key>
                                                <Chart id key compare smoothing live />
                                            </For>
                                        </div>
                                    </details>
                                }
                            })}
                    }
                })}
            </Transition>
            <Transition fallback=loading>
                {move || Suspend::new(async move {
                    overview.await.ok().map(|o| view! { <RunDetails o /> })
                })}
            </Transition>
        </section>
    }
}

#[component]
fn RunHeader(o: RunInfo, overview: Resource<Result<RunInfo, ServerFnError>>, live: LiveLog) -> impl IntoView {
    let run = o.run;
    // Progress moves every step: follow it from the live stream rather than reloading the page's data.
    let progress = RwSignal::new(run_progress(&run));
    let handled = StoredValue::new(0usize);
    Effect::new(move |_| {
        live.events.with(|events| {
            let start = handled.get_value().min(events.len());
            handled.set_value(events.len());
            let latest = events[start..].iter().rev().find_map(|e| match e {
                LiveEvent::Progress { phase, step, total } => Some(phase_progress(phase, *step, *total)),
                _ => None,
            });
            if let Some(latest) = latest {
                progress.set(latest);
            }
        })
    });
    let id = run.id;
    let cancel = Action::new(move |_: &()| cancel_run(id));
    let resume = Action::new(move |_: &()| resume_run(id));
    Effect::new(move |_| {
        if cancel.value().get().is_some() || resume.value().get().is_some() {
            overview.refetch();
        }
    });
    let failure = move || {
        [cancel.value().get(), resume.value().get()]
            .into_iter()
            .flatten()
            .find_map(Result::err)
            .map(|e| view! { <p class="error" role="alert">{e.to_string()}</p> })
    };
    let can_cancel = run.status.is_live();
    // What the job manager resumes (a failed run's error would only happen again).
    let can_resume = matches!(run.status, RunStatus::Interrupted | RunStatus::Cancelled);
    view! {
        <header class="run-header">
            <h1>
                <span class="run-name">{run.name.clone()}</span>
                <span class="run-id">{format!(" #{id} ")}</span>
                <StatusBadge status=run.status />
            </h1>
            <dl class="facts">
                <dt>"progress"</dt>
                <dd class="num progress">{progress}</dd>
                <dt>"reward"</dt>
                <dd class="num">{run.latest_reward.map(format_value).unwrap_or_else(|| "–".into())}</dd>
                <dt>"gyms"</dt>
                <dd>{run.gyms.join(", ")}</dd>
                <dt>"model"</dt>
                <dd>{run.model.clone()}</dd>
                <dt>"device"</dt>
                <dd>{run.device.clone()}</dd>
                <dt>"started"</dt>
                <dd>{run.started_at.map(format_time).unwrap_or_else(|| "–".into())}</dd>
                <dt>"duration"</dt>
                <dd>{run_duration(&run, o.now).map(format_duration).unwrap_or_else(|| "–".into())}</dd>
            </dl>
            {(!run.message.is_empty()).then(|| view! { <p class="run-message">{run.message.clone()}</p> })}
            <div class="actions">
                {can_cancel
                    .then(|| {
                        view! {
                            <button class="button danger" on:click=move |_| { cancel.dispatch(()); }>
                                "Cancel run"
                            </button>
                        }
                    })}
                {can_resume
                    .then(|| {
                        view! {
                            <button class="button" on:click=move |_| { resume.dispatch(()); }>
                                "Resume run"
                            </button>
                        }
                    })}
            </div>
            {failure}
        </header>
    }
}

#[component]
fn CompareForm(id: i64, compare: Signal<Vec<i64>>) -> impl IntoView {
    let text = move || compare.get().iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    // A plain GET form: it works before hydration too, and the URL keeps the comparison shareable.
    view! {
        <form class="compare" method="get" action=format!("/runs/{id}")>
            <label>
                "Compare with runs "
                <input name="compare" type="text" size="10" placeholder="e.g. 2,3" value=text />
            </label>
            <button class="button" type="submit">"Compare"</button>
        </form>
    }
}

/// One metric of this run (and the compared ones): server buckets, then live points for each of them.
#[component]
fn Chart(id: i64, key: String, compare: Signal<Vec<i64>>, smoothing: RwSignal<f64>, live: LiveLog) -> impl IntoView {
    let ids = move || {
        let mut ids = vec![id];
        ids.extend(compare.get());
        ids
    };
    let k = key.clone();
    let series = Resource::new(ids, move |ids| chart_series(ids, k.clone(), chart::WIDTH as usize));
    let export = |format: &str| format!("/api/runs/{id}/export?key={}&format={format}", encode(&key));
    let (csv, json) = (export("csv"), export("json"));
    let title = key.clone();
    let data_key = key.clone();
    view! {
        <figure class="chart" data-key=data_key>
            <figcaption>
                <span class="chart-title">{title}</span>
                <a class="export" href=csv download>"CSV"</a>
                <a class="export" href=json download>"JSON"</a>
            </figcaption>
            <Transition fallback=|| view! { <div class="plot-placeholder"></div> }>
                <ErrorBoundary fallback=show_errors>
                    {
                        let key = key.clone();
                        move || {
                            let key = key.clone();
                            Suspend::new(async move {
                                let series = series.await?;
                                let lines: Vec<Line> =
                                    series.into_iter().map(|s| Line { run_id: s.run_id, buckets: s.buckets }).collect();
                                Ok::<_, ServerFnError>(view! { <Plot key lines smoothing live /> })
                            })
                        }
                    }
                </ErrorBoundary>
            </Transition>
        </figure>
    }
}

/// The points of `key` among live events: (`None` for the page's run or `Some(run)` for a compared one, step,
/// value), in arrival order.
pub fn live_points(events: &[LiveEvent], key: &str) -> Vec<(Option<i64>, i64, f64)> {
    let mut out = Vec::new();
    for e in events {
        let (run, step, values) = match e {
            LiveEvent::Metrics { step, values } => (None, step, values),
            LiveEvent::Compared { run_id, step, values } => (Some(*run_id), step, values),
            _ => continue,
        };
        out.extend(values.iter().filter(|(k, _)| k == key).map(|(_, v)| (run, *step, *v)));
    }
    out
}

/// Percent-encodes a metric key for a query string (`reward/x` → `reward%2Fx`).
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[component]
fn Plot(key: String, lines: Vec<Line>, smoothing: RwSignal<f64>, live: LiveLog) -> impl IntoView {
    let multi = lines.len() > 1;
    let legend: Vec<(usize, i64)> = lines.iter().enumerate().map(|(i, l)| (i, l.run_id)).collect();
    let lines = RwSignal::new(lines);
    // Live points extend their run's line: this run's (the first) and the compared runs'.
    let handled = StoredValue::new(0usize);
    Effect::new(move |_| {
        let fresh = live.events.with(|events| {
            let start = handled.get_value().min(events.len());
            handled.set_value(events.len());
            live_points(&events[start..], &key)
        });
        if !fresh.is_empty() {
            lines.update(|ls| {
                for (run, step, v) in fresh {
                    let line = match run {
                        None => ls.first_mut(),
                        Some(run) => ls.iter_mut().skip(1).find(|l| l.run_id == run),
                    };
                    if let Some(line) = line {
                        chart::push_point(&mut line.buckets, step, v, 2 * chart::WIDTH as usize);
                    }
                }
            });
        }
    });
    let drawn = Memo::new(move |_| lines.with(|ls| chart::draw(ls, smoothing.get())));
    let last_step =
        move || lines.with(|ls| ls.first().and_then(|l| l.buckets.last()).map(|b: &MetricBucket| b.last_step));
    let last_value = move || lines.with(|ls| ls.first().and_then(|l| l.buckets.last()).map(|b| b.last));
    view! {
        <div
            class="plot-wrap"
            data-points=move || drawn.with(|d| d.points)
            data-last-step=move || last_step().map(|s| s.to_string()).unwrap_or_default()
        >
            <div class="y-labels">
                {move || {
                    drawn.with(|d| chart::ticks(d.y)).into_iter().map(|t| view! { <span>{format_value(t)}</span> }).collect_view()
                }}
            </div>
            <div class="plot" inner_html=move || drawn.with(|d| d.svg.clone())></div>
            <div class="x-labels">
                <span>{move || drawn.with(|d| format!("step {}", d.x.0.max(0.0).round()))}</span>
                <span class="last">
                    {move || last_value().map(|v| format!("last {}", format_value(v))).unwrap_or_default()}
                </span>
                <span>{move || drawn.with(|d| format!("{}", d.x.1.round()))}</span>
            </div>
            {multi
                .then(|| {
                    view! {
                        <div class="legend">
                            {legend
                                .into_iter()
                                .map(|(i, run)| {
                                    let last = move || {
                                        lines
                                            .with(|ls| ls.get(i).and_then(|l| l.buckets.last()).map(|b| b.last_step))
                                            .map(|s| s.to_string())
                                            .unwrap_or_default()
                                    };
                                    view! {
                                        <span
                                            class="swatch"
                                            data-run=run
                                            data-last-step=last
                                            style=format!("color: {}", chart::css_color(i))
                                        >
                                            {format!("■ #{run}")}
                                        </span>
                                    }
                                })
                                .collect_view()}
                        </div>
                    }
                })}
        </div>
    }
}

#[component]
fn RunDetails(o: RunInfo) -> impl IntoView {
    let run_id = o.run.id;
    view! {
        <div class="details">
            <HealthPanel h=o.health />
            <section class="checkpoints">
                <h2>"Checkpoints"</h2>
                {if o.checkpoints.is_empty() {
                    view! { <p class="empty">"None yet."</p> }.into_any()
                } else {
                    view! {
                        <table>
                            <thead>
                                <tr>
                                    <th>"step"</th>
                                    <th>"name"</th>
                                    <th>"saved"</th>
                                    <th>"files"</th>
                                    <th></th>
                                </tr>
                            </thead>
                            <tbody>
                                {o
                                    .checkpoints
                                    .into_iter()
                                    .map(|c| view! { <CheckpointLine run_id c /> })
                                    .collect_view()}
                            </tbody>
                        </table>
                    }
                        .into_any()
                }}
            </section>
            <section class="config-view">
                <h2>"Config"</h2>
                <pre>{o.run.config}</pre>
            </section>
        </div>
    }
}

#[component]
fn CheckpointLine(run_id: i64, c: CheckpointFiles) -> impl IntoView {
    let cid = c.checkpoint.id;
    let files = if c.files.is_empty() {
        view! { <span class="empty" title=c.checkpoint.path.clone()>"(files gone)"</span> }.into_any()
    } else {
        c.files
            .into_iter()
            .map(|(name, size)| {
                let href = format!("/api/runs/{run_id}/checkpoints/{cid}/{}", encode(&name));
                view! {
                    <a class="download" href=href download>
                        {format!("{name} ({})", format_bytes(size))}
                    </a>
                }
            })
            .collect_view()
            .into_any()
    };
    let name = checkpoint_name(&c.checkpoint.path).to_string();
    let chat = format!("/chat?run={run_id}&checkpoint={}", c.checkpoint.id);
    view! {
        <tr class="checkpoint">
            <td class="num">{c.checkpoint.step}</td>
            <td class="name" title=c.checkpoint.path.clone()>{name}</td>
            <td>{format_time(c.checkpoint.created_at)}</td>
            <td class="files">{files}</td>
            <td>
                <a class="chat" href=chat title="talk to this checkpoint">"Chat"</a>
            </td>
        </tr>
    }
}

#[component]
fn HealthPanel(h: RolloutHealth) -> impl IntoView {
    let frac =
        |n: i64, d: i64| if d > 0 { format!("{n} / {d} ({:.0}%)", 100.0 * n as f64 / d as f64) } else { n.to_string() };
    let warn = |n: i64| if n > 0 { "warn" } else { "" };
    view! {
        <section class="health">
            <h2>"Rollout health"</h2>
            <dl>
                <dt>"zero-variance groups"</dt>
                <dd class=warn(h.zero_variance_groups)>{frac(h.zero_variance_groups, h.groups)}</dd>
                <dt>"parse failures (turns)"</dt>
                <dd class=warn(h.parse_failures)>{h.parse_failures}</dd>
                <dt>"length truncations"</dt>
                <dd class=warn(h.length_truncations)>{frac(h.length_truncations, h.episodes)}</dd>
                <dt>"stuck episodes"</dt>
                <dd class=warn(h.stuck_episodes)>{frac(h.stuck_episodes, h.episodes)}</dd>
            </dl>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_ids_parse_leniently() {
        assert_eq!(parse_compare("2,3, #4 x 3 1", 1), vec![2, 3, 4]);
        assert_eq!(parse_compare("", 1), Vec::<i64>::new());
        let many: Vec<String> = (2..30).map(|i| i.to_string()).collect();
        assert_eq!(parse_compare(&many.join(","), 1).len(), MAX_COMPARE - 1);
    }

    #[test]
    fn live_points_of_the_run_and_of_compared_runs() {
        let events = [
            LiveEvent::Metrics { step: 4, values: vec![("reward".into(), 0.5), ("loss".into(), 1.0)] },
            LiveEvent::Progress { phase: "grpo".into(), step: 5, total: 9 },
            LiveEvent::Compared { run_id: 7, step: 2, values: vec![("reward".into(), 0.25)] },
            LiveEvent::Compared { run_id: 8, step: 3, values: vec![("loss".into(), 2.0)] },
        ];
        assert_eq!(live_points(&events, "reward"), [(None, 4, 0.5), (Some(7), 2, 0.25)]);
        assert_eq!(live_points(&events, "loss"), [(None, 4, 1.0), (Some(8), 3, 2.0)]);
    }

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(encode("reward/intention"), "reward%2Fintention");
        assert_eq!(encode("a b&c"), "a%20b%26c");
    }
}
