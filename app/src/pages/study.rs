//! The worker's page of a crowd study, `/study/<slug>?<platform parameters>`: consent, instructions, the
//! assigned episodes (the agent's message, the hidden goal, and the prompt's controls), then the completion
//! code with the way back to the platform. The session lives in an `HttpOnly` cookie set by `study_enter`,
//! which runs in the browser after hydration (a page render never creates a session), and, for MTurk's
//! cross-site iframe where that cookie is not sent, in the page (`remember_access`; the shell's
//! `STUDY_FETCH_SCRIPT` sends it with every worker call). Everything the agent,
//! the task or the admin wrote is shown through text nodes, never as markup.

use std::collections::BTreeMap;
use std::time::Duration;

use leptos::prelude::*;
use leptos_router::hooks::{use_params_map, use_query_map};
use userrl_types::study::{EpisodeState, SessionState};

use crate::crowd::api::{
    study_answer, study_begin, study_complete, study_consent, study_enter, study_next, study_view,
};
use crate::crowd::{
    AnswerValue, AnswerView, Completion, ControlView, CurrentEpisode, Entry, PromptView, StudyPublic, WorkerAccess,
    WorkerView,
};

/// How often the page asks for news while the agent is thinking.
const POLL: Duration = Duration::from_millis(700);

fn clean_error(e: &ServerFnError) -> String {
    e.to_string().trim_start_matches("error running server function: ").to_string()
}

#[component]
pub fn StudyPage() -> impl IntoView {
    let params = use_params_map();
    let query = use_query_map();
    let slug = move || params.read().get("slug").unwrap_or_default();
    let entry = RwSignal::new(None::<Entry>);
    let error = RwSignal::new(None::<String>);
    let completion = RwSignal::new(None::<Completion>);
    let busy = RwSignal::new(false);

    // After hydration only: entering creates the session and sets its cookie.
    Effect::new(move |_| {
        let slug = slug();
        let link: BTreeMap<String, String> =
            query.get_untracked().into_iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        leptos::task::spawn_local(async move {
            match study_enter(slug.clone(), link).await {
                Ok(Entry::Session { view, access }) => {
                    if let Some(access) = access {
                        remember_access(&slug, &access);
                    }
                    entry.set(Some(Entry::Session { view, access: None }));
                }
                Ok(e) => entry.set(Some(e)),
                Err(e) => error.set(Some(clean_error(&e))),
            }
        });
    });

    let apply = move |result: Result<WorkerView, ServerFnError>| {
        busy.set(false);
        match result {
            Ok(view) => {
                error.set(None);
                entry.set(Some(Entry::Session { view: Box::new(view), access: None }));
            }
            Err(e) => error.set(Some(clean_error(&e))),
        }
    };

    // While the agent is thinking (or an episode is being stored), ask again shortly.
    Effect::new(move |_| {
        let waiting = entry.with(|e| match e {
            Some(Entry::Session { view, .. }) => view
                .current
                .as_ref()
                .is_some_and(|c| c.prompt.is_none() && view.episodes.iter().any(|e| e.state == EpisodeState::Running)),
            _ => false,
        });
        if waiting {
            let slug = slug();
            set_timeout(
                move || {
                    leptos::task::spawn_local(async move {
                        // A failed poll is retried by the next one; a lasting error shows through the actions.
                        if let Ok(view) = study_view(slug).await {
                            entry.set(Some(Entry::Session { view: Box::new(view), access: None }));
                        }
                    })
                },
                POLL,
            );
        }
    });

    let act = move |what: &'static str| {
        let slug = slug();
        busy.set(true);
        leptos::task::spawn_local(async move {
            let result = match what {
                "begin" => study_begin(slug).await,
                "next" => study_next(slug).await,
                _ => study_view(slug).await,
            };
            apply(result);
        });
    };

    let finish = move |_| {
        let slug = slug();
        busy.set(true);
        leptos::task::spawn_local(async move {
            match study_complete(slug.clone()).await {
                Ok(c) => {
                    completion.set(Some(c));
                    error.set(None);
                }
                Err(e) => error.set(Some(clean_error(&e))),
            }
            busy.set(false);
        });
    };

    let body = move || {
        if let Some(c) = completion.get() {
            return view! { <CompletionView completion=c /> }.into_any();
        }
        match entry.get() {
            None => view! { <p class="loading">"Opening the study…"</p> }.into_any(),
            Some(Entry::Preview { study }) => view! { <Preview study /> }.into_any(),
            Some(Entry::Session { view, .. }) => {
                let study = view.study.clone();
                match view.state {
                    SessionState::Consent => view! { <Consent study slug=slug() apply busy /> }.into_any(),
                    SessionState::Instructions => view! {
                        <section class="study-instructions">
                            <h2>"Instructions"</h2>
                            <p class="prewrap">{study.instructions.clone()}</p>
                            <p class="hint">
                                {format!(
                                    "You will play {} short conversation(s) as the user; you have {} minutes in all.",
                                    study.episodes_per_worker,
                                    study.time_limit_s / 60,
                                )}
                            </p>
                            <button class="primary" disabled=busy on:click=move |_| act("begin")>"Begin"</button>
                        </section>
                    }
                    .into_any(),
                    SessionState::Episodes => {
                        let n = view.episodes.len();
                        let can_complete = view.can_complete;
                        let current = view.current.clone();
                        let more = view.episodes.iter().any(|e| e.state == EpisodeState::Assigned);
                        view! {
                            <section class="study-episodes">
                                <p class="progress">
                                    {view
                                        .episodes
                                        .iter()
                                        .map(|e| {
                                            let class = format!("episode-dot {}", e.state.as_str());
                                            view! { <span class=class title=e.gym.clone()>{(e.index + 1).to_string()}</span> }
                                        })
                                        .collect_view()}
                                    <span class="deadline">{deadline_text(view.deadline_ms, view.now_ms)}</span>
                                </p>
                                {current.map(|c| view! { <Current current=c total=n slug=slug() apply busy /> })}
                                {(more && !can_complete && view.current.as_ref().is_none_or(|c| c.ended)).then(|| view! {
                                    <button class="primary next-episode" disabled=busy on:click=move |_| act("next")>
                                        "Next conversation"
                                    </button>
                                })}
                                {can_complete.then(|| view! {
                                    <button class="primary finish" disabled=busy on:click=finish>
                                        "Finish and get your completion code"
                                    </button>
                                })}
                            </section>
                        }
                        .into_any()
                    }
                    SessionState::Completed => view! {
                        <section class="study-done">
                            <h2>"You have completed this study"</h2>
                            <p>"Your completion code was shown once when you finished; it is not shown again."</p>
                        </section>
                    }
                    .into_any(),
                    SessionState::Expired => view! {
                        <section class="study-done">
                            <h2>"This session has ended"</h2>
                            <p>{view.ended_because.clone().unwrap_or_else(|| "It was not completed.".into())}</p>
                        </section>
                    }
                    .into_any(),
                }
            }
        }
    };

    view! {
        <section class="page study-page">
            <h1>{move || match entry.get() {
                Some(Entry::Preview { study }) => study.name,
                Some(Entry::Session { view, .. }) => view.study.name,
                None => "Study".to_string(),
            }}</h1>
            {move || error.get().map(|e| view! { <div class="error" role="alert"><p>{e}</p></div> })}
            {body}
        </section>
    }
}

/// Keeps a new session's credentials where the fetch wrapper finds them (see `crowd::ACCESS_KEY_PREFIX`).
fn remember_access(slug: &str, access: &WorkerAccess) {
    #[cfg(feature = "hydrate")]
    {
        let Ok(json) = serde_json::to_string(access) else { return };
        let Some(window) = web_sys::window() else { return };
        let key = format!("{}{slug}", crate::crowd::ACCESS_KEY_PREFIX);
        let stored =
            window.session_storage().ok().flatten().is_some_and(|storage| storage.set_item(&key, &json).is_ok());
        if !stored && let Some(root) = window.document().and_then(|d| d.document_element()) {
            let _ = root.set_attribute("data-study-access", &json);
        }
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = (slug, access);
}

fn deadline_text(deadline_ms: i64, now_ms: i64) -> String {
    let left = (deadline_ms - now_ms).max(0) / 1000;
    format!("{} min left", (left + 59) / 60)
}

#[component]
fn Preview(study: StudyPublic) -> impl IntoView {
    view! {
        <section class="study-preview">
            <p class="notice">"Preview: accept the HIT to take part."</p>
            <p class="prewrap">{study.instructions}</p>
            <p class="pay">{study.pay_note}</p>
        </section>
    }
}

#[component]
fn Consent(
    study: StudyPublic,
    slug: String,
    apply: impl Fn(Result<WorkerView, ServerFnError>) + Copy + Send + Sync + 'static,
    busy: RwSignal<bool>,
) -> impl IntoView {
    let agreed = RwSignal::new(false);
    let version = study.consent_version.clone();
    let consent = move |_| {
        let (slug, version) = (slug.clone(), version.clone());
        busy.set(true);
        leptos::task::spawn_local(async move { apply(study_consent(slug, version).await) });
    };
    view! {
        <section class="study-consent">
            <h2>"Consent"</h2>
            <p class="prewrap consent-text">{study.consent_text}</p>
            {(!study.pay_note.is_empty()).then(|| view! { <p class="pay">{study.pay_note.clone()}</p> })}
            <label class="agree">
                <input type="checkbox" prop:checked=agreed on:change=move |e| agreed.set(event_target_checked(&e)) />
                " I have read the text above and agree to take part."
            </label>
            <button class="primary" disabled=move || !agreed.get() || busy.get() on:click=consent>
                "I consent"
            </button>
        </section>
    }
}

#[component]
fn Current(
    current: CurrentEpisode,
    total: usize,
    slug: String,
    apply: impl Fn(Result<WorkerView, ServerFnError>) + Copy + Send + Sync + 'static,
    busy: RwSignal<bool>,
) -> impl IntoView {
    let heading = format!("Conversation {} of {total} · {}", current.index + 1, current.gym);
    let inner = match (current.prompt, current.ended) {
        (Some(prompt), _) => view! { <PromptForm prompt slug apply busy /> }.into_any(),
        (None, true) => view! { <p class="episode-ended">"This conversation has ended. Thank you!"</p> }.into_any(),
        (None, false) => view! { <p class="thinking">"The agent is writing…"</p> }.into_any(),
    };
    view! {
        <div class="episode">
            <h2>{heading}</h2>
            {inner}
        </div>
    }
}

/// The open prompt: what the person knows (hidden goal), the conversation so far, the agent's message, and
/// one input per control.
#[component]
pub fn PromptForm(
    prompt: PromptView,
    slug: String,
    apply: impl Fn(Result<WorkerView, ServerFnError>) + Copy + Send + Sync + 'static,
    busy: RwSignal<bool>,
) -> impl IntoView {
    let values = RwSignal::new(BTreeMap::<String, AnswerValue>::new());
    let id = prompt.id;
    let context = prompt
        .context
        .into_iter()
        .map(|s| view! { <div class="shown"><span class="label">{s.label}</span><span class="text prewrap">{s.text}</span></div> })
        .collect_view();
    let history = prompt
        .history
        .into_iter()
        .map(|l| {
            let class = format!("line line-{}", if l.speaker == "you" { "you" } else { "other" });
            view! { <div class=class><span class="speaker">{l.speaker}</span><span class="text prewrap">{l.text}</span></div> }
        })
        .collect_view();
    let controls = prompt.controls.into_iter().map(|c| control_view(c, values)).collect_view();
    let submit = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let slug = slug.clone();
        let answer = AnswerView { values: values.get_untracked() };
        busy.set(true);
        leptos::task::spawn_local(async move { apply(study_answer(slug, id, answer).await) });
    };
    view! {
        <form class="prompt" data-prompt=id.to_string() on:submit=submit>
            <div class="context">{context}</div>
            <div class="history">{history}</div>
            <div class="agent-message">
                <span class="speaker">"agent"</span>
                <span class="text prewrap">{prompt.message}</span>
            </div>
            <p class="instruction">{prompt.instruction}</p>
            {controls}
            <button class="primary" type="submit" disabled=busy>"Send"</button>
        </form>
    }
}

fn control_view(control: ControlView, values: RwSignal<BTreeMap<String, AnswerValue>>) -> AnyView {
    match control {
        ControlView::Buttons { name, label, options } => {
            let buttons = options
                .into_iter()
                .map(|o| {
                    let (n1, n2, id1, id2) = (name.clone(), name.clone(), o.id.clone(), o.id.clone());
                    let chosen =
                        Signal::derive(move || values.with(|v| v.get(&n1) == Some(&AnswerValue::Text(id1.clone()))));
                    view! {
                        <button
                            type="button"
                            class="choice"
                            class:chosen=chosen
                            aria-pressed=move || chosen.get().to_string()
                            on:click=move |_| values.update(|v| {
                                v.insert(n2.clone(), AnswerValue::Text(id2.clone()));
                            })
                        >
                            {o.label}
                        </button>
                    }
                })
                .collect_view();
            view! { <fieldset class="control buttons"><legend>{label}</legend>{buttons}</fieldset> }.into_any()
        }
        ControlView::Checkboxes { name, label, options, max } => {
            let boxes = options
                .into_iter()
                .map(|o| {
                    let (n, id) = (name.clone(), o.id.clone());
                    let toggle = move |e: leptos::ev::Event| {
                        let on = event_target_checked(&e);
                        values.update(|v| {
                            let entry = v.entry(n.clone()).or_insert_with(|| AnswerValue::List(Vec::new()));
                            if let AnswerValue::List(ids) = entry {
                                ids.retain(|x| *x != id);
                                if on {
                                    ids.push(id.clone());
                                }
                            }
                        });
                    };
                    view! { <label class="check"><input type="checkbox" on:change=toggle />{o.label}</label> }
                })
                .collect_view();
            let hint = max.map(|m| format!(" (at most {m})")).unwrap_or_default();
            view! { <fieldset class="control checkboxes"><legend>{label}{hint}</legend>{boxes}</fieldset> }.into_any()
        }
        ControlView::Scale { name, label, min, max, labels } => {
            let steps = (min..=max)
                .map(|n| {
                    let (n1, n2) = (name.clone(), name.clone());
                    let text = labels.get((n - min) as usize).cloned().unwrap_or_else(|| n.to_string());
                    let chosen = Signal::derive(move || values.with(|v| v.get(&n1) == Some(&AnswerValue::Number(n))));
                    view! {
                        <button
                            type="button"
                            class="choice scale-step"
                            class:chosen=chosen
                            on:click=move |_| values.update(|v| {
                                v.insert(n2.clone(), AnswerValue::Number(n));
                            })
                        >
                            {text}
                        </button>
                    }
                })
                .collect_view();
            view! { <fieldset class="control scale"><legend>{label}</legend>{steps}</fieldset> }.into_any()
        }
        ControlView::Text { name, label, max_chars, required } => {
            let n = name.clone();
            let count = move || {
                values.with(|v| match v.get(&name) {
                    Some(AnswerValue::Text(t)) => t.chars().count(),
                    _ => 0,
                })
            };
            view! {
                <label class="control text">
                    <span>{label}</span>
                    <textarea
                        name=n.clone()
                        maxlength=max_chars.to_string()
                        required=required
                        rows="3"
                        on:input=move |e| {
                            let text = event_target_value(&e);
                            values.update(|v| {
                                v.insert(n.clone(), AnswerValue::Text(text));
                            })
                        }
                    ></textarea>
                    <span class="count">{move || format!("{} / {max_chars}", count())}</span>
                </label>
            }
            .into_any()
        }
    }
}

#[component]
fn CompletionView(completion: Completion) -> impl IntoView {
    let back = match (&completion.redirect, &completion.mturk_submit) {
        (Some(url), _) => view! {
            <p><a class="button primary return" href=url.clone()>"Return to Prolific (the code is sent with you)"</a></p>
        }
        .into_any(),
        (None, Some(m)) => view! {
            <form class="mturk-submit" method="post" action=m.action.clone()>
                <input type="hidden" name="assignmentId" value=m.assignment_id.clone() />
                <input type="hidden" name="completion_code" value=completion.code.clone() />
                <button class="primary" type="submit">"Submit the HIT"</button>
            </form>
        }
        .into_any(),
        (None, None) => ().into_any(),
    };
    view! {
        <section class="study-complete">
            <h2>"Thank you! Your completion code"</h2>
            <p class="completion-code">{completion.code.clone()}</p>
            <p class="hint">"Copy it now: it is shown only once."</p>
            {back}
        </section>
    }
}
