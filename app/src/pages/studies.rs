//! The admin's study pages: `/admin/studies` (the list and the creation form, each error beside its field),
//! `/admin/studies/<id>` (the worker link, live progress, flags, sessions with exclude/include, episodes
//! with score and time per answer, CSV/JSONL export) and `/admin/studies/<id>/episodes/<episode>` (the
//! transcript, in the same view as training transcripts). Every server function behind them requires an admin
//! session. Worker-typed text reaches the page only through text nodes.

use leptos::prelude::*;
use leptos_router::hooks::{use_navigate, use_params_map};
use userrl_types::study::{StudyFlag, StudyStatus};

use crate::components::{Messages, loading, show_errors};
use crate::crowd::api::{
    admin_create_study, admin_exclude, admin_studies, admin_study, admin_study_episode, admin_study_status,
};
use crate::crowd::{CreateOutcome, StudyForm, state_label};
use crate::model::{format_time, format_value};

fn median(values: &[i64]) -> Option<i64> {
    let mut v = values.to_vec();
    v.sort_unstable();
    (!v.is_empty()).then(|| v[v.len() / 2])
}

fn seconds(ms: Option<i64>) -> String {
    ms.map(|ms| format!("{:.1} s", ms as f64 / 1000.0)).unwrap_or_else(|| "–".into())
}

#[component]
pub fn StudiesPage() -> impl IntoView {
    let studies = Resource::new(|| (), |_| admin_studies());
    view! {
        <section class="page studies-page">
            <h1>"Studies"</h1>
            <p class="hint">"Crowd studies: people play the user while a model plays the agent."</p>
            <Transition fallback=loading>
                <ErrorBoundary fallback=show_errors>
                    {move || Suspend::new(async move {
                        let rows = studies.await?;
                        let empty = rows.is_empty();
                        let body = rows
                            .into_iter()
                            .map(|s| {
                                let href = format!("/admin/studies/{}", s.study.id);
                                view! {
                                    <tr>
                                        <td><a href=href>{s.study.spec.name.clone()}</a></td>
                                        <td><code>{s.study.spec.slug.clone()}</code></td>
                                        <td>{s.study.status.as_str()}</td>
                                        <td>{s.study.spec.platform.as_str()}</td>
                                        <td class="num">{s.progress.sessions}</td>
                                        <td class="num">{s.progress.completed}</td>
                                        <td class="num">{format!("{} / {}", s.progress.episodes_ended, s.progress.episodes_assigned)}</td>
                                        <td class="num">{format_value(s.progress.mean_score)}</td>
                                    </tr>
                                }
                            })
                            .collect_view();
                        Ok::<_, ServerFnError>(view! {
                            {empty.then(|| view! { <p class="empty">"No studies yet."</p> })}
                            <table class="studies">
                                <thead>
                                    <tr>
                                        <th>"name"</th><th>"slug"</th><th>"status"</th><th>"platform"</th>
                                        <th>"sessions"</th><th>"completed"</th><th>"episodes"</th><th>"mean score"</th>
                                    </tr>
                                </thead>
                                <tbody>{body}</tbody>
                            </table>
                        })
                    })}
                </ErrorBoundary>
            </Transition>
            <NewStudy />
        </section>
    }
}

/// The creation form; a refusal puts its message beside the field it names.
#[component]
fn NewStudy() -> impl IntoView {
    let form = RwSignal::new(StudyForm {
        split: "test".into(),
        models: "expert".into(),
        episodes_per_worker: "2".into(),
        time_limit_min: "30".into(),
        max_turns: "8".into(),
        consent_version: "v1".into(),
        platform: "prolific".into(),
        ..StudyForm::default()
    });
    let create = Action::new(|form: &StudyForm| {
        let form = form.clone();
        async move { admin_create_study(form).await }
    });
    let navigate = use_navigate();
    Effect::new(move |_| {
        if let Some(Ok(CreateOutcome::Created { id, .. })) = create.value().get() {
            navigate(&format!("/admin/studies/{id}"), Default::default());
        }
    });
    let error_for = move |field: &'static str| {
        move || match create.value().get() {
            Some(Ok(CreateOutcome::Invalid { field: f, message })) if f == field => {
                Some(view! { <span class="field-error" role="alert">{message}</span> })
            }
            _ => None,
        }
    };
    let other_error = move || match create.value().get() {
        Some(Err(e)) => Some(view! { <div class="error" role="alert"><p>{e.to_string()}</p></div> }),
        _ => None,
    };
    macro_rules! input {
        ($field:ident, $label:expr, $kind:expr) => {
            view! {
                <label class=concat!("field field-", stringify!($field))>
                    <span>{$label}</span>
                    <input
                        type=$kind
                        name=stringify!($field)
                        prop:value=move || form.with(|f| f.$field.clone())
                        on:input=move |e| form.update(|f| f.$field = event_target_value(&e))
                    />
                    {error_for(stringify!($field))}
                </label>
            }
        };
    }
    macro_rules! area {
        ($field:ident, $label:expr) => {
            view! {
                <label class=concat!("field field-", stringify!($field))>
                    <span>{$label}</span>
                    <textarea
                        name=stringify!($field)
                        rows="3"
                        prop:value=move || form.with(|f| f.$field.clone())
                        on:input=move |e| form.update(|f| f.$field = event_target_value(&e))
                    ></textarea>
                    {error_for(stringify!($field))}
                </label>
            }
        };
    }
    view! {
        <form class="new-study" on:submit=move |ev: leptos::ev::SubmitEvent| {
            ev.prevent_default();
            create.dispatch(form.get_untracked());
        }>
            <h2>"New study"</h2>
            {input!(name, "Name", "text")}
            {input!(slug, "Link name (slug: a-z, 0-9, -)", "text")}
            {input!(gyms, "Gyms (comma separated; all their tasks of the split)", "text")}
            {area!(tasks, "Or tasks, one gym/task_id per line")}
            {input!(split, "Split (test or train)", "text")}
            {area!(models, "Models under test, one per line (checkpoint folder, GGUF file, expert, random)")}
            {input!(episodes_per_worker, "Episodes per worker", "number")}
            {input!(time_limit_min, "Time limit (minutes)", "number")}
            {input!(max_turns, "Most agent turns per episode", "number")}
            {input!(pay_note, "Pay note", "text")}
            {area!(instructions, "Instructions")}
            {area!(consent_text, "Consent text")}
            {input!(consent_version, "Consent version", "text")}
            <label class="field field-platform">
                <span>"Platform"</span>
                <select
                    name="platform"
                    prop:value=move || form.with(|f| f.platform.clone())
                    on:change=move |e| form.update(|f| f.platform = event_target_value(&e))
                >
                    <option value="prolific">"Prolific"</option>
                    <option value="mturk">"MTurk"</option>
                    <option value="direct">"Direct link"</option>
                </select>
                {error_for("platform")}
            </label>
            {input!(completion_url, "Prolific completion URL (empty: the standard one)", "text")}
            {input!(completion_code, "Prolific: one completion code for the whole study (empty: a code per worker)", "text")}
            <label class="check">
                <input
                    type="checkbox"
                    name="open"
                    prop:checked=move || form.with(|f| f.open)
                    on:change=move |e| form.update(|f| f.open = event_target_checked(&e))
                />
                " Open for workers now"
            </label>
            {other_error}
            <button class="primary" type="submit" disabled=move || create.pending().get()>"Create study"</button>
        </form>
    }
}

fn flag_text(f: &StudyFlag) -> String {
    match f {
        StudyFlag::TooFast { episode_id, median_ms, .. } => {
            format!("too fast: episode {episode_id} median answer {:.1} s", *median_ms as f64 / 1000.0)
        }
        StudyFlag::DuplicateText { other_session_id, text, .. } => {
            format!("same text as session {other_session_id}: \u{201c}{text}\u{201d}")
        }
        StudyFlag::LeftEarly { detail, .. } => format!("left early: {detail}"),
    }
}

#[component]
pub fn StudyAdminPage() -> impl IntoView {
    let params = use_params_map();
    let id = move || params.read().get("id").and_then(|s| s.parse::<i64>().ok()).unwrap_or(-1);
    let version = RwSignal::new(0u32);
    let detail = Resource::new(move || (id(), version.get()), |(id, _)| admin_study(id));
    let reload = move || version.update(|v| *v += 1);
    let failure = RwSignal::new(None::<String>);
    let done = move |r: Result<(), ServerFnError>| match r {
        Ok(()) => {
            failure.set(None);
            reload();
        }
        Err(e) => failure.set(Some(e.to_string())),
    };
    view! {
        <section class="page study-admin-page">
            {move || failure.get().map(|e| view! { <div class="error" role="alert"><p>{e}</p></div> })}
            <Transition fallback=loading>
                <ErrorBoundary fallback=show_errors>
                    {move || Suspend::new(async move {
                        let d = detail.await?;
                        let study_id = d.study.id;
                        let p = d.progress.clone();
                        let status = d.study.status;
                        let set_status = move |s: StudyStatus| {
                            leptos::task::spawn_local(async move {
                                done(admin_study_status(study_id, s.as_str().to_string()).await)
                            })
                        };
                        let flags = d
                            .flags
                            .iter()
                            .map(|f| view! { <li class=format!("flag flag-{}", f.name())>{format!("session {}: {}", f.session_id(), flag_text(f))}</li> })
                            .collect_view();
                        let sessions = d
                            .sessions
                            .iter()
                            .map(|s| {
                                let (sid, excluded) = (s.id, s.excluded);
                                let reason = RwSignal::new(String::new());
                                let toggle = move |_| {
                                    let why = reason.get_untracked();
                                    leptos::task::spawn_local(async move {
                                        done(admin_exclude(study_id, sid, !excluded, why).await)
                                    })
                                };
                                view! {
                                    <tr class:excluded=excluded>
                                        <td class="num">{s.id}</td>
                                        <td>{s.platform.as_str()}</td>
                                        <td><code>{s.ids.worker_id.clone()}</code></td>
                                        <td>{state_label(s.state)}</td>
                                        <td>{s.consent_at.map(format_time).unwrap_or_else(|| "–".into())}</td>
                                        <td>{if s.code_issued { "issued" } else { "–" }}</td>
                                        <td>
                                            {excluded.then(|| view! { <span class="reason">{s.exclusion_reason.clone()}</span> })}
                                            {(!excluded).then(|| view! {
                                                <input
                                                    type="text"
                                                    class="reason"
                                                    placeholder="reason"
                                                    on:input=move |e| reason.set(event_target_value(&e))
                                                />
                                            })}
                                            <button class="exclude" on:click=toggle>
                                                {if excluded { "Include" } else { "Exclude" }}
                                            </button>
                                        </td>
                                    </tr>
                                }
                            })
                            .collect_view();
                        let episodes = d
                            .episodes
                            .iter()
                            .map(|e| {
                                let href = format!("/admin/studies/{study_id}/episodes/{}", e.id);
                                view! {
                                    <tr>
                                        <td class="num"><a href=href>{e.id}</a></td>
                                        <td class="num">{e.session_id}</td>
                                        <td class="num">{e.index + 1}</td>
                                        <td>{e.gym.clone()}</td>
                                        <td>{e.task_id.clone()}</td>
                                        <td class="model" title=e.model.clone()>{e.model.clone()}</td>
                                        <td>{e.state.as_str()}</td>
                                        <td class="num score">{format_value(e.score)}</td>
                                        <td>{if e.success { "yes" } else { "no" }}</td>
                                        <td>{e.termination.clone()}</td>
                                        <td class="num">{e.turns}</td>
                                        <td class="num">{seconds(median(&e.answer_ms))}</td>
                                    </tr>
                                }
                            })
                            .collect_view();
                        Ok::<_, ServerFnError>(view! {
                            <h1>{d.study.spec.name.clone()}</h1>
                            <p class="status-line">
                                {format!("{} · {} · {} tasks · models: {}", status.as_str(), d.study.spec.platform.as_str(), d.study.spec.tasks.len(), d.study.spec.models.join(", "))}
                                {(status != StudyStatus::Open).then(|| view! { <button on:click=move |_| set_status(StudyStatus::Open)>"Open"</button> })}
                                {(status == StudyStatus::Open).then(|| view! { <button on:click=move |_| set_status(StudyStatus::Closed)>"Close"</button> })}
                            </p>
                            {(!d.study.spec.completion_code.is_empty()).then(|| view! {
                                <p class="fixed-code">
                                    "Completion code (the same for every worker, shown once each): "
                                    <code>{d.study.spec.completion_code.clone()}</code>
                                </p>
                            })}
                            <label class="field worker-link">
                                <span>"Worker link (paste into the platform)"</span>
                                <input type="text" readonly value=d.link.clone() />
                            </label>
                            <div class="progress-numbers">
                                <span>{format!("{} sessions", p.sessions)}</span>
                                <span>{format!("{} consented", p.consented)}</span>
                                <span>{format!("{} completed", p.completed)}</span>
                                <span>{format!("{} ended early", p.expired)}</span>
                                <span>{format!("{} excluded", p.excluded)}</span>
                                <span>{format!("episodes {} / {}", p.episodes_ended, p.episodes_assigned)}</span>
                                <span>{format!("mean score {}", format_value(p.mean_score))}</span>
                                <span>{format!("success {}", if p.success_rate.is_nan() { "–".to_string() } else { format!("{:.0}%", 100.0 * p.success_rate) })}</span>
                                <span>{format!("median answer {}", seconds(p.median_answer_ms))}</span>
                                <button on:click=move |_| reload()>"Refresh"</button>
                            </div>
                            <p class="exports">
                                <a href=format!("/api/admin/studies/{study_id}/export.csv") download="">"Export CSV"</a>
                                " · "
                                <a href=format!("/api/admin/studies/{study_id}/export.jsonl") download="">"Export JSONL"</a>
                            </p>
                            <h2>"Flags"</h2>
                            {d.flags.is_empty().then(|| view! { <p class="empty">"No flags."</p> })}
                            <ul class="flags">{flags}</ul>
                            <h2>"Sessions"</h2>
                            <table class="sessions">
                                <thead><tr><th>"id"</th><th>"platform"</th><th>"worker"</th><th>"state"</th><th>"consent"</th><th>"code"</th><th>"exclusion"</th></tr></thead>
                                <tbody>{sessions}</tbody>
                            </table>
                            <h2>"Episodes"</h2>
                            <table class="study-episodes">
                                <thead><tr><th>"id"</th><th>"session"</th><th>"#"</th><th>"gym"</th><th>"task"</th><th>"model"</th><th>"state"</th><th>"score"</th><th>"success"</th><th>"termination"</th><th>"turns"</th><th>"answer (median)"</th></tr></thead>
                                <tbody>{episodes}</tbody>
                            </table>
                        })
                    })}
                </ErrorBoundary>
            </Transition>
        </section>
    }
}

#[component]
pub fn StudyEpisodePage() -> impl IntoView {
    let params = use_params_map();
    let ids = move || {
        let p = params.read();
        let get = |k: &str| p.get(k).and_then(|s| s.parse::<i64>().ok()).unwrap_or(-1);
        (get("id"), get("episode"))
    };
    let episode = Resource::new(ids, |(study, episode)| admin_study_episode(study, episode));
    view! {
        <section class="page study-episode-page">
            <Transition fallback=loading>
                <ErrorBoundary fallback=show_errors>
                    {move || Suspend::new(async move {
                        let v = episode.await?;
                        let e = v.episode;
                        let back = format!("/admin/studies/{}", e.study_id);
                        let times = e.answer_ms.iter().map(|ms| format!("{:.1} s", *ms as f64 / 1000.0)).collect::<Vec<_>>().join(", ");
                        Ok::<_, ServerFnError>(view! {
                            <p><a href=back>"← study"</a></p>
                            <h1>{format!("Episode {} · {} {}", e.id, e.gym, e.task_id)}</h1>
                            <p class="status-line">
                                {format!("model {} · {} · score {} · {} · {} turns", e.model, e.state.as_str(), format_value(e.score), e.termination, e.turns)}
                            </p>
                            <p class="hint">{format!("answer times: {}", if times.is_empty() { "–".to_string() } else { times })}</p>
                            {match v.record {
                                Some(record) => view! { <Messages record /> }.into_any(),
                                None => view! { <p class="empty">"No transcript yet (the episode has not ended)."</p> }.into_any(),
                            }}
                        })
                    })}
                </ErrorBoundary>
            </Transition>
        </section>
    }
}
