//! `HumanEpisodeView`: a live episode where a person plays the user. It shows the hidden task (what the person
//! knows and the agent does not), the conversation as it happens (the agent's turns with their tool calls as
//! cards and its reply streaming in, the person's answers, the environment's feedback, per-turn rewards), the
//! open question's controls (buttons, checkboxes, a 7-point scale, free text with length limits) and the
//! outcome. The state is pushed by `/api/episodes/{id}/events`; answers go through `answer_episode`, bound to
//! the prompt's id. Everything the model or a person wrote is rendered as text nodes (escaped), never as HTML.

use std::collections::BTreeMap;

use leptos::prelude::*;
use userrl_types::human::{
    Control, EpisodeItem, EpisodeState, EpisodeStatus, HumanAnswer, OpenPrompt, Shown, ToolCallView, Value,
};

use crate::people_api::{abandon_episode, answer_episode};

/// A tool call as a card: the function, the gym choice and content when it is the gym tool, else the arguments.
#[component]
pub fn ToolCallCard(call: ToolCallView) -> impl IntoView {
    let body = match (call.choice, call.content) {
        (Some(choice), Some(content)) => view! {
            <div class="call-choice">
                <span class="badge">{choice}</span>
                <span class="call-content">{content}</span>
            </div>
        }
        .into_any(),
        _ => view! { <pre class="call-args">{call.arguments}</pre> }.into_any(),
    };
    view! {
        <div class="tool-call">
            <div class="call-name">"tool call: " <code>{call.name}</code></div>
            {body}
        </div>
    }
}

fn reward_badge(reward: Option<f64>) -> impl IntoView {
    reward.map(|r| view! { <span class="reward">{format!("reward {r:.3}")}</span> })
}

fn briefing_view(briefing: Vec<Shown>) -> impl IntoView {
    view! {
        <dl class="briefing">
            {briefing
                .into_iter()
                .map(|s| view! {
                    <dt>{s.label}</dt>
                    <dd>{s.text}</dd>
                })
                .collect_view()}
        </dl>
    }
}

fn item_view(item: EpisodeItem) -> AnyView {
    match item {
        EpisodeItem::Opening { text } => view! {
            <div class="msg msg-opening">
                <div class="who">"Task as the agent reads it"</div>
                <div class="text">{text}</div>
            </div>
        }
        .into_any(),
        EpisodeItem::Agent { turn, text, call, reward } => view! {
            <div class="msg msg-agent">
                <div class="who">{format!("Agent · turn {}", turn + 1)} {reward_badge(reward)}</div>
                {(!text.is_empty()).then(|| view! { <div class="text">{text}</div> })}
                {call.map(|call| view! { <ToolCallCard call /> })}
            </div>
        }
        .into_any(),
        EpisodeItem::Human { text, .. } => view! {
            <div class="msg msg-human">
                <div class="who">"You"</div>
                <div class="text">{text}</div>
            </div>
        }
        .into_any(),
        EpisodeItem::Feedback { text, .. } => view! {
            <div class="msg msg-feedback">
                <div class="who">"Environment → agent"</div>
                <div class="text">{text}</div>
            </div>
        }
        .into_any(),
    }
}

/// The values of the form, by control name.
type Values = RwSignal<BTreeMap<String, Value>>;

fn control_view(control: Control, values: Values, submit_now: Callback<()>, single_buttons: bool) -> AnyView {
    match control {
        Control::Buttons { name, label, options } => {
            let buttons = options
                .into_iter()
                .map(|o| {
                    let (name, id) = (name.clone(), o.id.clone());
                    let chosen = {
                        let (name, id) = (name.clone(), id.clone());
                        move || values.with(|v| v.get(&name) == Some(&Value::Text(id.clone())))
                    };
                    view! {
                        <button
                            type="button"
                            class="choice"
                            class:chosen=chosen
                            data-option=o.id.clone()
                            on:click=move |_| {
                                values.update(|v| {
                                    v.insert(name.clone(), Value::Text(id.clone()));
                                });
                                if single_buttons {
                                    submit_now.run(());
                                }
                            }
                        >
                            {o.label}
                        </button>
                    }
                })
                .collect_view();
            view! {
                <fieldset class="control control-buttons">
                    <legend>{label}</legend>
                    <div class="choices">{buttons}</div>
                </fieldset>
            }
            .into_any()
        }
        Control::Checkboxes { name, label, options, max } => {
            let boxes = options
                .into_iter()
                .map(|o| {
                    let (name, id) = (name.clone(), o.id.clone());
                    let ticked = {
                        let (name, id) = (name.clone(), id.clone());
                        move || values.with(|v| matches!(v.get(&name), Some(Value::List(l)) if l.contains(&id)))
                    };
                    let full = {
                        let name = name.clone();
                        move || {
                            max.is_some_and(|m| {
                                values.with(|v| matches!(v.get(&name), Some(Value::List(l)) if l.len() >= m))
                            })
                        }
                    };
                    let disabled = {
                        let ticked = ticked.clone();
                        move || full() && !ticked()
                    };
                    view! {
                        <label class="check">
                            <input
                                type="checkbox"
                                data-option=o.id.clone()
                                prop:checked=ticked
                                disabled=disabled
                                on:change=move |e| {
                                    let on = event_target_checked(&e);
                                    values.update(|v| {
                                        let entry = v.entry(name.clone()).or_insert_with(|| Value::List(Vec::new()));
                                        if let Value::List(list) = entry {
                                            list.retain(|x| *x != id);
                                            if on {
                                                list.push(id.clone());
                                            }
                                        }
                                    });
                                }
                            />
                            <span>{o.label}</span>
                        </label>
                    }
                })
                .collect_view();
            let hint = max.map(|m| format!(" (at most {m})"));
            view! {
                <fieldset class="control control-checkboxes">
                    <legend>{label} {hint}</legend>
                    {boxes}
                </fieldset>
            }
            .into_any()
        }
        Control::Scale { name, label, min, max, labels } => {
            let points = (min..=max)
                .map(|n| {
                    let name = name.clone();
                    let caption =
                        usize::try_from(n - min).ok().and_then(|i| labels.get(i).cloned()).unwrap_or_default();
                    let title = caption.clone();
                    let chosen = {
                        let name = name.clone();
                        move || values.with(|v| v.get(&name) == Some(&Value::Number(n)))
                    };
                    view! {
                        <button
                            type="button"
                            class="scale-point"
                            class:chosen=chosen
                            data-value=n
                            title=title
                            on:click=move |_| {
                                values.update(|v| {
                                    v.insert(name.clone(), Value::Number(n));
                                });
                            }
                        >
                            <span class="n">{n}</span>
                            <span class="caption">{caption}</span>
                        </button>
                    }
                })
                .collect_view();
            view! {
                <fieldset class="control control-scale">
                    <legend>{label}</legend>
                    <div class="scale">{points}</div>
                </fieldset>
            }
            .into_any()
        }
        Control::Text { name, label, max_chars, required } => {
            let count = {
                let name = name.clone();
                move || {
                    values.with(|v| match v.get(&name) {
                        Some(Value::Text(t)) => t.chars().count(),
                        _ => 0,
                    })
                }
            };
            let value = {
                let name = name.clone();
                move || {
                    values.with(|v| match v.get(&name) {
                        Some(Value::Text(t)) => t.clone(),
                        _ => String::new(),
                    })
                }
            };
            view! {
                <label class="control control-text">
                    <span class="label">{label} {(!required).then_some(" (optional)")}</span>
                    <textarea
                        name=name.clone()
                        maxlength=max_chars
                        rows="3"
                        prop:value=value
                        on:input=move |e| {
                            let text = event_target_value(&e);
                            values.update(|v| {
                                v.insert(name.clone(), Value::Text(text));
                            });
                        }
                    ></textarea>
                    <span class="counter">{move || format!("{} / {max_chars}", count())}</span>
                </label>
            }
            .into_any()
        }
    }
}

/// The answer to send: every control's value (checkboxes default to none ticked, blank optional text left out).
fn answer_of(prompt: &OpenPrompt, values: &BTreeMap<String, Value>) -> HumanAnswer {
    let mut answer = HumanAnswer::new();
    for control in &prompt.controls {
        let name = control.name();
        match (control, values.get(name)) {
            (Control::Checkboxes { .. }, None) => answer = answer.list::<String>(name, []),
            (Control::Text { required: false, .. }, Some(Value::Text(t))) if t.trim().is_empty() => {}
            (_, Some(v)) => answer = answer.with(name, v.clone()),
            (_, None) => {}
        }
    }
    answer
}

#[component]
fn PromptForm(episode_id: String, prompt: OpenPrompt, state: RwSignal<EpisodeState>) -> impl IntoView {
    let values: Values = RwSignal::new(BTreeMap::new());
    let error = RwSignal::new(None::<String>);
    let sending = RwSignal::new(false);
    let single_buttons = prompt.controls.len() == 1 && matches!(prompt.controls[0], Control::Buttons { .. });
    let prompt_id = prompt.id;
    let submit = {
        let prompt = prompt.clone();
        Callback::new(move |_: ()| {
            if sending.get_untracked() {
                return;
            }
            let answer = answer_of(&prompt, &values.get_untracked());
            let id = episode_id.clone();
            sending.set(true);
            error.set(None);
            leptos::task::spawn_local(async move {
                match answer_episode(id, prompt_id, answer).await {
                    Ok(next) => {
                        if next.version >= state.get_untracked().version {
                            state.set(next);
                        }
                    }
                    Err(e) => {
                        error.set(Some(e.to_string().trim_start_matches("error running server function: ").into()))
                    }
                }
                sending.set(false);
            });
        })
    };
    let controls =
        prompt.controls.clone().into_iter().map(|c| control_view(c, values, submit, single_buttons)).collect_view();
    view! {
        <form class="prompt" data-prompt=prompt_id on:submit=move |e| {
            e.prevent_default();
            submit.run(());
        }>
            <p class="instruction">{prompt.instruction}</p>
            <div class="msg msg-agent quoted">
                <div class="who">"The agent says"</div>
                <div class="text">{prompt.message}</div>
            </div>
            {(!prompt.history.is_empty()).then(|| {
                let lines = prompt.history.clone();
                view! {
                    <details class="history">
                        <summary>"Earlier in this conversation"</summary>
                        {lines.into_iter().map(|l| view! { <p><b>{l.speaker}": "</b>{l.text}</p> }).collect_view()}
                    </details>
                }
            })}
            {controls}
            {move || error.get().map(|e| view! { <p class="field-error" role="alert">{e}</p> })}
            {(!single_buttons).then(|| view! {
                <button type="submit" class="button primary" disabled=move || sending.get()>
                    {move || if sending.get() { "Sending…" } else { "Send answer" }}
                </button>
            })}
        </form>
    }
}

/// A live episode. `initial` is the state `start_episode` (or `get_episode`) returned; `on_done` runs once
/// with the final state (stored, with its `stored_id`).
#[component]
pub fn HumanEpisodeView(
    initial: EpisodeState,
    #[prop(optional, into)] on_done: Option<Callback<EpisodeState>>,
) -> impl IntoView {
    let id = initial.id.clone();
    let state = RwSignal::new(initial);
    #[cfg(feature = "hydrate")]
    {
        let id = id.clone();
        Effect::new(move |_| connect(&id, state));
    }
    let reported = RwSignal::new(false);
    Effect::new(move |_| {
        let s = state.get();
        if s.status == EpisodeStatus::Done && !reported.get_untracked() {
            reported.set(true);
            if let Some(done) = on_done {
                done.run(s);
            }
        }
    });
    let abandon = {
        let id = id.clone();
        move |_| {
            let id = id.clone();
            leptos::task::spawn_local(async move {
                if let Err(e) = abandon_episode(id).await {
                    leptos::logging::warn!("abandon: {e}");
                }
            });
        }
    };
    let header = move || {
        let s = state.get();
        let status = match s.status {
            EpisodeStatus::Agent => "the agent is thinking",
            EpisodeStatus::Waiting => "your turn",
            EpisodeStatus::Done => "ended",
        };
        view! {
            <div class="episode-head">
                <h2>{s.gym_title.clone()} " · " <code>{s.spec.task_id.clone()}</code></h2>
                <span class=format!("status episode-{:?}", s.status).to_lowercase()>{status}</span>
                <span class="muted">{format!("agent: {}", s.spec.model)}</span>
            </div>
        }
    };
    let conversation = move || state.with(|s| s.items.clone()).into_iter().map(item_view).collect_view();
    let streaming = move || {
        let text = state.with(|s| s.streaming.clone());
        (!text.is_empty()).then(|| {
            view! {
                <div class="msg msg-agent streaming" aria-live="polite">
                    <div class="who">"Agent (writing…)"</div>
                    <div class="text">{text}</div>
                </div>
            }
        })
    };
    let prompt = {
        let id = id.clone();
        move || {
            let prompt = state.with(|s| s.prompt.clone())?;
            let key = prompt.id;
            Some(
                view! { <div class="prompt-slot" data-key=key><PromptForm episode_id=id.clone() prompt state /></div> },
            )
        }
    };
    let outcome = move || {
        let o = state.with(|s| s.outcome.clone())?;
        let rewards: Vec<String> = o.turn_rewards.iter().map(|r| format!("{r:.3}")).collect();
        Some(view! {
            <div class="outcome" data-termination=o.termination.clone()>
                <h3>"Episode over"</h3>
                <dl>
                    <dt>"Termination"</dt>
                    <dd class="termination">{o.termination.clone()}</dd>
                    <dt>"Score"</dt>
                    <dd class="score">{format!("{:.3} (normalised {:.3})", o.score, o.normalized)}</dd>
                    <dt>"Solved"</dt>
                    <dd>{if o.success { "yes" } else { "no" }}</dd>
                    <dt>"Turn rewards"</dt>
                    <dd class="turn-rewards">{if rewards.is_empty() { "none".to_string() } else { rewards.join(", ") }}</dd>
                </dl>
                {o.error.map(|e| view! { <p class="error">{e}</p> })}
                {o.stored_id.map(|id| view! { <p class="muted">{format!("Stored as episode {id}.")}</p> })}
            </div>
        })
    };
    let idle = move || state.with(|s| s.idle_timeout_s);
    view! {
        <section class="human-episode" data-episode=id.clone()>
            {header}
            <div class="episode-body">
                <aside class="episode-brief">
                    <h3>"Your hidden task"</h3>
                    <p class="muted">"You play the user. The agent does not see this."</p>
                    {move || briefing_view(state.with(|s| s.briefing.clone()))}
                </aside>
                <div class="episode-main">
                    <div class="conversation">{conversation} {streaming}</div>
                    {prompt}
                    {outcome}
                    {move || (state.with(|s| s.status != EpisodeStatus::Done)).then(|| view! {
                        <p class="muted">{format!("An unanswered question ends the episode after {} s.", idle())}</p>
                        <button type="button" class="button danger" on:click=abandon.clone()>"Leave the episode"</button>
                    })}
                </div>
            </div>
        </section>
    }
}

/// Follows the episode's pushed state; keeps only newer versions (an answer's own reply may arrive first).
#[cfg(feature = "hydrate")]
fn connect(id: &str, state: RwSignal<EpisodeState>) {
    use wasm_bindgen::JsCast;
    use wasm_bindgen::closure::Closure;

    let Ok(source) = web_sys::EventSource::new(&format!("/api/episodes/{id}/events")) else {
        leptos::logging::warn!("live episode updates unavailable: EventSource failed");
        return;
    };
    let closer = source.clone();
    let on_message = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
        let Some(text) = e.data().as_string() else { return };
        match serde_json::from_str::<EpisodeState>(&text) {
            Ok(next) => {
                let done = next.status == EpisodeStatus::Done;
                if next.version >= state.get_untracked().version {
                    state.set(next);
                }
                if done {
                    // The final state came: do not let the browser reconnect to a finished stream.
                    closer.close();
                }
            }
            Err(err) => leptos::logging::warn!("unreadable episode state: {err}"),
        }
    });
    source.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    let held = send_wrapper::SendWrapper::new((source, on_message));
    on_cleanup(move || held.0.close());
}
