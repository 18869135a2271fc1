//! The runs table (status, gyms, model, progress in the current phase, latest reward, started, duration) with sorting, filtering and
//! select-to-compare, and the "New run" form (a preset, an uploaded file or pasted TOML; the launcher's
//! error is shown under the config with the key and line it is about).

use leptos::prelude::*;
use leptos_router::hooks::use_navigate;
use userrl_types::RunRow;

use crate::api::{MAX_COMPARE, launch_run, list_runs, presets};
use crate::components::{StatusBadge, loading, show_errors};
use crate::model::{LaunchOutcome, format_duration, format_time, format_value, run_duration, run_progress};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SortBy {
    Id,
    Name,
    Status,
    Step,
    Reward,
    Started,
    Duration,
}

fn sort_runs(runs: &mut [RunRow], by: SortBy, descending: bool, now: i64) {
    let f = |a: Option<f64>| a.unwrap_or(f64::NEG_INFINITY);
    runs.sort_by(|a, b| {
        let o = match by {
            SortBy::Id => a.id.cmp(&b.id),
            SortBy::Name => a.name.cmp(&b.name),
            SortBy::Status => a.status.as_str().cmp(b.status.as_str()),
            SortBy::Step => progress_key(a).cmp(&progress_key(b)),
            SortBy::Reward => f(a.latest_reward).total_cmp(&f(b.latest_reward)),
            SortBy::Started => a.started_at.cmp(&b.started_at),
            SortBy::Duration => run_duration(a, now).cmp(&run_duration(b, now)),
        };
        if descending { o.reverse() } else { o }
    });
}

/// Runs further along sort later: by phase (SFT, GRPO, eval), then the phase's step, then the logged step.
fn progress_key(run: &RunRow) -> (u8, i64, i64) {
    let phase = match run.phase.as_str() {
        "sft" => 1,
        "grpo" => 2,
        "eval" => 3,
        _ => 0,
    };
    (phase, run.phase_step, run.step)
}

/// Whether a run matches the filter text (every word must appear in its name, status, model or gyms).
fn matches(run: &RunRow, filter: &str) -> bool {
    let hay =
        format!("{} {} {} {} #{}", run.name, run.status.as_str(), run.model, run.gyms.join(" "), run.id).to_lowercase();
    filter.to_lowercase().split_whitespace().all(|w| hay.contains(w))
}

#[component]
pub fn RunsPage() -> impl IntoView {
    let runs = Resource::new(|| (), |_| list_runs());
    // The table follows its runs: while one is queued or running, reload it every few seconds.
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| {
        let reload = move || {
            let live =
                runs.get_untracked().and_then(Result::ok).is_some_and(|l| l.runs.iter().any(|r| r.status.is_live()));
            if live {
                runs.refetch();
            }
        };
        if let Ok(handle) = set_interval_with_handle(reload, std::time::Duration::from_secs(5)) {
            on_cleanup(move || handle.clear());
        }
    });
    let sort = RwSignal::new((SortBy::Id, true));
    let filter = RwSignal::new(String::new());
    let selected = RwSignal::new(Vec::<i64>::new());

    let header = move |label: &'static str, by: SortBy| {
        let arrow = move || match sort.get() {
            (b, true) if b == by => " ▾",
            (b, false) if b == by => " ▴",
            _ => "",
        };
        view! {
            <th>
                <button
                    class="sort"
                    on:click=move |_| sort.update(|(b, d)| if *b == by { *d = !*d } else { *b = by; *d = true })
                >
                    {label}
                    {arrow}
                </button>
            </th>
        }
    };

    let compare_href = move || {
        let ids = selected.get();
        ids.split_first().map(|(first, rest)| {
            let rest: Vec<String> = rest.iter().map(|i| i.to_string()).collect();
            if rest.is_empty() { format!("/runs/{first}") } else { format!("/runs/{first}?compare={}", rest.join(",")) }
        })
    };

    view! {
        <section class="page runs-page">
            <div class="toolbar">
                <h1>"Runs"</h1>
                <input
                    class="filter"
                    type="search"
                    placeholder="Filter: name, status, gym, model"
                    prop:value=filter
                    on:input=move |e| filter.set(event_target_value(&e))
                />
                {move || {
                    let n = selected.get().len();
                    compare_href()
                        .map(|href| {
                            view! {
                                <a class="button" href=href>
                                    {if n > 1 { format!("Compare {n} runs") } else { "Open selected run".into() }}
                                </a>
                            }
                        })
                }}
            </div>
            <Transition fallback=loading>
                <ErrorBoundary fallback=show_errors>
                    {move || Suspend::new(async move {
                        let list = runs.await?;
                        let now = list.now;
                        let empty = list.runs.is_empty();
                        let rows = move || {
                            let mut rows: Vec<RunRow> =
                                list.runs.iter().filter(|r| matches(r, &filter.get())).cloned().collect();
                            let (by, desc) = sort.get();
                            sort_runs(&mut rows, by, desc, now);
                            rows
                        };
                        Ok::<_, ServerFnError>(view! {
                            <table class="runs">
                                <thead>
                                    <tr>
                                        <th title="select to compare">"⇆"</th>
                                        {header("#", SortBy::Id)}
                                        {header("Name", SortBy::Name)}
                                        {header("Status", SortBy::Status)}
                                        <th>"Gyms"</th>
                                        <th>"Model"</th>
                                        {header("Progress", SortBy::Step)}
                                        {header("Reward", SortBy::Reward)}
                                        {header("Started", SortBy::Started)}
                                        {header("Duration", SortBy::Duration)}
                                    </tr>
                                </thead>
                                <tbody>
                                    <For each=rows key=|r| (r.id, r.step, r.status) let:run>
                                        <RunLine run now selected />
                                    </For>
                                </tbody>
                            </table>
                            {empty.then(|| view! { <p class="empty">"No runs yet: start one below."</p> })}
                        })
                    })}
                </ErrorBoundary>
            </Transition>
            <NewRun />
        </section>
    }
}

#[component]
fn RunLine(run: RunRow, now: i64, selected: RwSignal<Vec<i64>>) -> impl IntoView {
    let id = run.id;
    let checked = move || selected.with(|s| s.contains(&id));
    let toggle = move |_| {
        selected.update(|s| {
            if let Some(i) = s.iter().position(|x| *x == id) {
                s.remove(i);
            } else if s.len() < MAX_COMPARE {
                s.push(id);
            }
        })
    };
    let step = run_progress(&run);
    view! {
        <tr class="run" data-run-id=id>
            <td>
                <input type="checkbox" aria-label=format!("select run {id}") prop:checked=checked on:change=toggle />
            </td>
            <td>{id}</td>
            <td>
                <a href=format!("/runs/{id}")>{run.name.clone()}</a>
            </td>
            <td>
                <StatusBadge status=run.status />
            </td>
            <td>{run.gyms.join(", ")}</td>
            <td class="model" title=run.model.clone()>{run.model.clone()}</td>
            <td class="num">{step}</td>
            <td class="num">{run.latest_reward.map(format_value).unwrap_or_else(|| "–".into())}</td>
            <td>{run.started_at.map(format_time).unwrap_or_else(|| "–".into())}</td>
            <td>{run_duration(&run, now).map(format_duration).unwrap_or_else(|| "–".into())}</td>
        </tr>
    }
}

/// The 1-based line of `config` where the TOML key `field` (`grpo.lr` → `lr` under `[grpo]`) is set.
pub fn field_line(config: &str, field: &str) -> Option<usize> {
    let mut parts: Vec<&str> = field.split('.').collect();
    let key = parts.pop()?;
    let table = parts.join(".");
    let mut current = String::new();
    for (i, line) in config.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            current = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            continue;
        }
        let Some((k, _)) = t.split_once('=') else { continue };
        let k = k.trim();
        if (current == table && k == key) || (current.is_empty() && k == field) {
            return Some(i + 1);
        }
    }
    None
}

#[component]
fn NewRun() -> impl IntoView {
    let presets = Resource::new(|| (), |_| presets());
    let config = RwSignal::new(String::new());
    let launch = Action::new(|config: &String| {
        let config = config.clone();
        async move { launch_run(config).await }
    });
    let navigate = use_navigate();
    Effect::new(move |_| {
        if let Some(Ok(LaunchOutcome::Launched(id))) = launch.value().get() {
            navigate(&format!("/runs/{id}"), Default::default());
        }
    });
    let problem = move || match launch.value().get() {
        Some(Ok(LaunchOutcome::Invalid { field, message })) => {
            let text = config.get();
            let line = field.as_deref().and_then(|f| field_line(&text, f));
            Some(
                view! {
                    <div class="field-error" role="alert">
                        {field.map(|f| view! { <code class="field">{f}</code> })}
                        {line.map(|l| view! { <span class="line">{format!("line {l}")}</span> })}
                        <span>{message}</span>
                    </div>
                }
                .into_any(),
            )
        }
        Some(Err(e)) => Some(
            view! {
                <div class="field-error" role="alert">
                    <span>{e.to_string()}</span>
                </div>
            }
            .into_any(),
        ),
        _ => None,
    };
    let upload = move |e: leptos::ev::Event| {
        #[cfg(feature = "hydrate")]
        {
            use wasm_bindgen::JsCast;
            let file = e
                .target()
                .and_then(|t| t.dyn_into::<web_sys::HtmlInputElement>().ok())
                .and_then(|input| input.files())
                .and_then(|files| files.get(0));
            if let Some(file) = file {
                leptos::task::spawn_local(async move {
                    if let Ok(text) = wasm_bindgen_futures::JsFuture::from(file.text()).await {
                        config.set(text.as_string().unwrap_or_default());
                    }
                });
            }
        }
        #[cfg(not(feature = "hydrate"))]
        let _ = e;
    };
    view! {
        <section class="new-run">
            <h2>"New run"</h2>
            <div class="row">
                <Transition fallback=|| view! { <span class="loading">"presets…"</span> }>
                    {move || Suspend::new(async move {
                        let list = presets.await.unwrap_or_default();
                        let names: Vec<String> = list.iter().map(|(n, _)| n.clone()).collect();
                        view! {
                            <label>
                                "Preset "
                                <select on:change=move |e| {
                                    let name = event_target_value(&e);
                                    if let Some((_, text)) = list.iter().find(|(n, _)| *n == name) {
                                        config.set(text.clone());
                                    }
                                }>
                                    <option value="">"choose…"</option>
                                    {names
                                        .into_iter()
                                        .map(|name| view! { <option value=name.clone()>{name.clone()}</option> })
                                        .collect_view()}
                                </select>
                            </label>
                        }
                    })}
                </Transition>
                <label>"or upload " <input type="file" accept=".toml,text/plain" on:change=upload /></label>
            </div>
            <textarea
                class="config"
                rows="14"
                spellcheck="false"
                placeholder="or paste a run config (TOML)"
                prop:value=config
                on:input=move |e| config.set(event_target_value(&e))
            ></textarea>
            {problem}
            <button
                class="button primary"
                disabled=move || launch.pending().get()
                on:click=move |_| {
                    launch.dispatch(config.get_untracked());
                }
            >
                {move || if launch.pending().get() { "Launching…" } else { "Launch" }}
            </button>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_line_finds_keys_in_tables() {
        let toml = "name = \"x\"\n\n[grpo]\nsteps = 2\nlr = 1e-4\n[sft]\nlr = 3e-3\n";
        assert_eq!(field_line(toml, "name"), Some(1));
        assert_eq!(field_line(toml, "grpo.lr"), Some(5));
        assert_eq!(field_line(toml, "sft.lr"), Some(7));
        assert_eq!(field_line(toml, "eval.every"), None);
    }
}
