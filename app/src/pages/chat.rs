//! `/chat`: talk to a model (one served on /v1, or a run's checkpoint, loaded on demand) with its reply
//! streaming in, its tool calls as cards, the gym tool on or off, sampling settings, stop, regenerate and
//! reset; or play a gym as the user against the selected model (a live episode, `HumanEpisodeView`).
//! `/chat?run=<id>&checkpoint=<checkpoint id>` preselects a run's checkpoint (`?run=<id>` alone: its latest). Replies are started by the
//! `chat_start` server function and read from `/api/chat/{id}/stream` (SSE): the browser never holds an API key.

use leptos::prelude::*;
use leptos_router::hooks::use_query_map;
use userrl_types::chat::{ChatEvent, ChatRequest, ChatTurn, MAX_CHAT_CHARS, ModelChoice};
use userrl_types::human::{EpisodeSpec, EpisodeState, ToolCallView};

use crate::components::{loading, show_errors};
use crate::pages::episode::{HumanEpisodeView, ToolCallCard};
use crate::people_api::{chat_models, chat_start, episode_briefing, gym_catalog, load_checkpoint, start_episode};

fn error_text(e: ServerFnError) -> String {
    e.to_string().trim_start_matches("error running server function: ").to_string()
}

/// The model the page starts with: the one `?run=&checkpoint=` names (a checkpoint id, its model name or
/// `step<N>`; `?run=` alone: the run's latest checkpoint), else the first served one.
fn preselect(models: &[ModelChoice], run: Option<i64>, checkpoint: Option<&str>) -> Option<String> {
    if let (Some(run), Some(checkpoint)) = (run, checkpoint) {
        let hit = models.iter().find(|m| {
            m.run_id == Some(run)
                && (checkpoint.parse::<i64>().ok() == m.checkpoint_id
                    || m.name == checkpoint
                    || checkpoint.trim_start_matches("step").parse::<i64>().ok() == m.step)
        });
        if let Some(m) = hit {
            return Some(m.name.clone());
        }
    }
    if let (Some(run), None) = (run, checkpoint) {
        // The run's latest checkpoint.
        if let Some(m) = models.iter().filter(|m| m.run_id == Some(run)).max_by_key(|m| m.step) {
            return Some(m.name.clone());
        }
    }
    models.iter().find(|m| m.loaded).or(models.first()).map(|m| m.name.clone())
}

/// Sampling settings shared by the chat and the gym episode.
#[derive(Clone, Copy)]
struct Settings {
    temperature: RwSignal<f32>,
    top_p: RwSignal<f32>,
    max_tokens: RwSignal<usize>,
    tools: RwSignal<bool>,
}

#[component]
pub fn ChatPage() -> impl IntoView {
    let query = use_query_map();
    let run = move || query.with(|q| q.get("run").and_then(|r| r.parse::<i64>().ok()));
    let checkpoint = move || query.with(|q| q.get("checkpoint"));
    let refresh = RwSignal::new(0u32);
    let models = Resource::new(move || refresh.get(), |_| chat_models());
    let selected = RwSignal::new(None::<String>);
    let tab = RwSignal::new("chat");
    let settings = Settings {
        temperature: RwSignal::new(0.7),
        top_p: RwSignal::new(0.95),
        max_tokens: RwSignal::new(256),
        tools: RwSignal::new(false),
    };
    let load_error = RwSignal::new(None::<String>);
    let loading_model = RwSignal::new(false);

    let model_picker = move || {
        Suspend::new(async move {
            let list = models.await?;
            if selected.get_untracked().is_none_or(|s| !list.iter().any(|m| m.name == s)) {
                selected.set(preselect(&list, run(), checkpoint().as_deref()));
            }
            let current = {
                let list = list.clone();
                move || selected.get().and_then(|name| list.iter().find(|m| m.name == name).cloned())
            };
            let options = list
                .iter()
                .map(|m| {
                    let label = match (m.loaded, m.step) {
                        (true, _) => format!("{} (loaded)", m.name),
                        (false, Some(step)) => format!("{} (run {} step {step}, not loaded)", m.name, m.run_id.unwrap_or(0)),
                        (false, None) => m.name.clone(),
                    };
                    let name = m.name.clone();
                    let is = name.clone();
                    view! { <option value=name selected=move || selected.get().as_deref() == Some(is.as_str())>{label}</option> }
                })
                .collect_view();
            let empty = list.is_empty();
            let load = {
                let current = current.clone();
                move |_| {
                    let Some(m) = current() else { return };
                    let (Some(run_id), Some(checkpoint_id)) = (m.run_id, m.checkpoint_id) else { return };
                    loading_model.set(true);
                    load_error.set(None);
                    leptos::task::spawn_local(async move {
                        match load_checkpoint(run_id, checkpoint_id).await {
                            Ok(name) => {
                                selected.set(Some(name));
                                refresh.update(|n| *n += 1);
                            }
                            Err(e) => load_error.set(Some(error_text(e))),
                        }
                        loading_model.set(false);
                    });
                }
            };
            let needs_load = {
                let current = current.clone();
                move || current().is_some_and(|m| !m.loaded)
            };
            Ok::<_, ServerFnError>(view! {
                <div class="model-picker">
                    <label>
                        "Model "
                        <select
                            name="model"
                            on:change=move |e| selected.set(Some(event_target_value(&e)))
                        >
                            {options}
                        </select>
                    </label>
                    {move || needs_load().then(|| view! {
                        <button type="button" class="button" disabled=move || loading_model.get() on:click=load.clone()>
                            {move || if loading_model.get() { "Loading…" } else { "Load checkpoint" }}
                        </button>
                    })}
                    {empty.then(|| view! {
                        <p class="muted">"No model is served. Start the server with --model <gguf|checkpoint>, or train a run."</p>
                    })}
                    {move || load_error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
                </div>
            })
        })
    };

    let loaded_model = move || {
        let name = selected.get()?;
        let ok = models.get().and_then(|r| r.ok()).is_some_and(|list| list.iter().any(|m| m.name == name && m.loaded));
        ok.then_some(name)
    };

    view! {
        <section class="page chat-page">
            <div class="toolbar">
                <h1>"Chat"</h1>
                <Transition fallback=loading>
                    <ErrorBoundary fallback=show_errors>{model_picker}</ErrorBoundary>
                </Transition>
            </div>
            <div class="settings">
                <label>
                    "Temperature "
                    <input type="number" name="temperature" min="0" max="2" step="0.1"
                        prop:value=move || settings.temperature.get().to_string()
                        on:change=move |e| if let Ok(v) = event_target_value(&e).parse() { settings.temperature.set(v) } />
                </label>
                <label>
                    "Top-p "
                    <input type="number" name="top_p" min="0.05" max="1" step="0.05"
                        prop:value=move || settings.top_p.get().to_string()
                        on:change=move |e| if let Ok(v) = event_target_value(&e).parse() { settings.top_p.set(v) } />
                </label>
                <label>
                    "Max tokens "
                    <input type="number" name="max_tokens" min="1" max="1024" step="1"
                        prop:value=move || settings.max_tokens.get().to_string()
                        on:change=move |e| if let Ok(v) = event_target_value(&e).parse() { settings.max_tokens.set(v) } />
                </label>
                <label class="check">
                    <input type="checkbox" name="tools" prop:checked=move || settings.tools.get()
                        on:change=move |e| settings.tools.set(event_target_checked(&e)) />
                    " Gym tool (interact_with_env)"
                </label>
            </div>
            <div class="tabs" role="tablist">
                <button type="button" role="tab" class:active=move || tab.get() == "chat" on:click=move |_| tab.set("chat")>
                    "Chat"
                </button>
                <button type="button" role="tab" class:active=move || tab.get() == "play" on:click=move |_| tab.set("play")>
                    "Play a gym as the user"
                </button>
            </div>
            <div class:hidden=move || tab.get() != "chat">
                <ChatPanel model=Signal::derive(loaded_model) settings />
            </div>
            <div class:hidden=move || tab.get() != "play">
                <PlayPanel model=Signal::derive(loaded_model) settings />
            </div>
        </section>
    }
}

/// The assistant reply being streamed.
#[derive(Clone, Default, PartialEq)]
struct Pending {
    text: String,
    calls: Vec<ToolCallView>,
    error: Option<String>,
}

#[component]
fn ChatPanel(model: Signal<Option<String>>, settings: Settings) -> impl IntoView {
    let turns = RwSignal::new(Vec::<ChatTurn>::new());
    let draft = RwSignal::new(String::new());
    let pending = RwSignal::new(None::<Pending>);
    let finish = RwSignal::new(None::<String>);
    let error = RwSignal::new(None::<String>);
    // The open stream of the reply in progress (closing it stops the generation on the server). Browser-side it
    // holds JS objects (thread-local storage); on the server it stays empty, in thread-safe storage, because a
    // server render may end on another thread than it began and thread-local storage panics when dropped there.
    let stream: StoredValue<Option<Source>, SourceStorage> = StoredValue::new_with_storage(None);

    let stop = move || {
        if let Some(source) = stream.try_update_value(|s| s.take()).flatten() {
            source.close();
        }
        if let Some(p) = pending.get_untracked() {
            pending.set(None);
            if !p.text.is_empty() || !p.calls.is_empty() {
                turns.update(|t| t.push(ChatTurn { role: "assistant".into(), content: p.text, tool_calls: p.calls }));
            }
            finish.set(Some("stopped".into()));
        }
    };

    let ask = move || {
        let Some(model) = model.get_untracked() else {
            error.set(Some("Choose a loaded model first.".into()));
            return;
        };
        let request = ChatRequest {
            model,
            messages: turns.get_untracked(),
            tools: settings.tools.get_untracked(),
            temperature: settings.temperature.get_untracked(),
            top_p: settings.top_p.get_untracked(),
            max_tokens: settings.max_tokens.get_untracked(),
        };
        pending.set(Some(Pending::default()));
        finish.set(None);
        error.set(None);
        leptos::task::spawn_local(async move {
            match chat_start(request).await {
                Ok(id) => {
                    let source = open_stream(&id, move |event| match event {
                        ChatEvent::Delta { text } => pending.update(|p| {
                            if let Some(p) = p {
                                p.text.push_str(&text);
                            }
                        }),
                        ChatEvent::ToolCalls { calls } => pending.update(|p| {
                            if let Some(p) = p {
                                p.calls = calls;
                            }
                        }),
                        ChatEvent::Done { finish_reason, completion_tokens } => {
                            if let Some(p) = pending.get_untracked() {
                                turns.update(|t| {
                                    t.push(ChatTurn { role: "assistant".into(), content: p.text, tool_calls: p.calls })
                                });
                            }
                            pending.set(None);
                            finish.set(Some(format!("{finish_reason} · {completion_tokens} tokens")));
                            if let Some(source) = stream.try_update_value(|s| s.take()).flatten() {
                                source.close();
                            }
                        }
                        ChatEvent::Error { message } => {
                            pending.set(None);
                            error.set(Some(message));
                            if let Some(source) = stream.try_update_value(|s| s.take()).flatten() {
                                source.close();
                            }
                        }
                    });
                    stream.set_value(source);
                }
                Err(e) => {
                    pending.set(None);
                    error.set(Some(error_text(e)));
                }
            }
        });
    };

    let send = move || {
        let text = draft.get_untracked();
        if text.trim().is_empty() || pending.get_untracked().is_some() {
            return;
        }
        turns.update(|t| t.push(ChatTurn { role: "user".into(), content: text, tool_calls: Vec::new() }));
        draft.set(String::new());
        ask();
    };
    let regenerate = move || {
        if pending.get_untracked().is_some() {
            return;
        }
        let mut t = turns.get_untracked();
        while t.last().is_some_and(|m| m.role == "assistant") {
            t.pop();
        }
        if t.is_empty() {
            return;
        }
        turns.set(t);
        ask();
    };
    let reset = move || {
        stop();
        turns.set(Vec::new());
        finish.set(None);
        error.set(None);
    };

    let messages = move || {
        turns
            .get()
            .into_iter()
            .map(|t| {
                let class = format!("msg msg-{}", if t.role == "user" { "human" } else { "agent" });
                let who = if t.role == "user" { "You" } else { "Model" };
                view! {
                    <div class=class>
                        <div class="who">{who}</div>
                        {(!t.content.is_empty()).then(|| view! { <div class="text">{t.content}</div> })}
                        {t.tool_calls.into_iter().map(|call| view! { <ToolCallCard call /> }).collect_view()}
                    </div>
                }
            })
            .collect_view()
    };
    let writing = move || {
        pending.get().map(|p| {
            view! {
                <div class="msg msg-agent streaming" aria-live="polite">
                    <div class="who">"Model (writing…)"</div>
                    <div class="text">{p.text}</div>
                    {p.calls.into_iter().map(|call| view! { <ToolCallCard call /> }).collect_view()}
                </div>
            }
        })
    };
    let busy = move || pending.get().is_some();

    view! {
        <div class="chat">
            <div class="conversation chat-log">{messages} {writing}</div>
            {move || finish.get().map(|f| view! { <p class="muted finish">{f}</p> })}
            {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
            <form class="chat-input" on:submit=move |e| {
                e.prevent_default();
                send();
            }>
                <textarea
                    name="message"
                    rows="3"
                    maxlength=MAX_CHAT_CHARS
                    placeholder="Message the model"
                    prop:value=move || draft.get()
                    on:input=move |e| draft.set(event_target_value(&e))
                ></textarea>
                <div class="buttons">
                    <button type="submit" class="button primary" disabled=busy>"Send"</button>
                    <button type="button" class="button" disabled=move || !busy() on:click=move |_| stop()>"Stop"</button>
                    <button type="button" class="button" disabled=busy on:click=move |_| regenerate()>"Regenerate"</button>
                    <button type="button" class="button" on:click=move |_| reset()>"Reset"</button>
                </div>
            </form>
        </div>
    }
}

#[component]
fn PlayPanel(model: Signal<Option<String>>, settings: Settings) -> impl IntoView {
    let catalog = Resource::new(|| (), |_| gym_catalog());
    let gym = RwSignal::new(String::from("telepathy"));
    let split = RwSignal::new(String::from("test"));
    let task = RwSignal::new(None::<String>);
    let episode = RwSignal::new(None::<EpisodeState>);
    let error = RwSignal::new(None::<String>);
    let starting = RwSignal::new(false);
    let briefing = Resource::new(
        move || (gym.get(), task.get()),
        |(gym, task)| async move {
            match task {
                Some(task) => episode_briefing(gym, task).await.map(Some),
                None => Ok(None),
            }
        },
    );

    let pickers = move || {
        Suspend::new(async move {
            let gyms = catalog.await?;
            let gym_options = gyms
                .iter()
                .map(|g| {
                    let (value, is) = (g.gym.clone(), g.gym.clone());
                    view! { <option value=value selected=move || gym.get() == is>{g.title.clone()}</option> }
                })
                .collect_view();
            let tasks = move || {
                let g = gym.get();
                let s = split.get();
                gyms.iter()
                    .find(|x| x.gym == g)
                    .map(|x| {
                        x.tasks.iter().filter(|(_, sp)| s == "all" || *sp == s).map(|(id, _)| id.clone()).collect()
                    })
                    .unwrap_or_else(Vec::<String>::new)
            };
            let tasks_for_effect = tasks.clone();
            Effect::new(move |_| {
                let list = tasks_for_effect();
                if task.get().is_none_or(|t| !list.contains(&t)) {
                    task.set(list.first().cloned());
                }
            });
            Ok::<_, ServerFnError>(view! {
                <div class="play-pickers">
                    <label>"Gym " <select name="gym" on:change=move |e| gym.set(event_target_value(&e))>{gym_options}</select></label>
                    <label>
                        "Split "
                        <select name="split" on:change=move |e| split.set(event_target_value(&e))>
                            <option value="test" selected=move || split.get() == "test">"test"</option>
                            <option value="train" selected=move || split.get() == "train">"train"</option>
                            <option value="all" selected=move || split.get() == "all">"all"</option>
                        </select>
                    </label>
                    <label>
                        "Task "
                        <select name="task" on:change=move |e| task.set(Some(event_target_value(&e)))>
                            {move || tasks().into_iter().map(|id| {
                                let (is, value) = (id.clone(), id.clone());
                                view! { <option value=value selected=move || task.get().as_deref() == Some(is.as_str())>{id}</option> }
                            }).collect_view()}
                        </select>
                    </label>
                </div>
            })
        })
    };

    let start = move |_| {
        let (Some(model), Some(task_id)) = (model.get_untracked(), task.get_untracked()) else {
            error.set(Some("Choose a loaded model and a task first.".into()));
            return;
        };
        let spec = EpisodeSpec {
            gym: gym.get_untracked(),
            task_id,
            model,
            temperature: settings.temperature.get_untracked(),
            top_p: settings.top_p.get_untracked(),
            max_new_tokens: settings.max_tokens.get_untracked(),
            seed: None,
            origin: "chat".into(),
        };
        starting.set(true);
        error.set(None);
        leptos::task::spawn_local(async move {
            match start_episode(spec).await {
                Ok(state) => episode.set(Some(state)),
                Err(e) => error.set(Some(error_text(e))),
            }
            starting.set(false);
        });
    };

    view! {
        <div class="play">
            {move || match episode.get() {
                Some(state) => view! {
                    <div>
                        <HumanEpisodeView initial=state />
                        <button type="button" class="button" on:click=move |_| episode.set(None)>"New episode"</button>
                    </div>
                }
                .into_any(),
                None => view! {
                    <div class="play-setup">
                        <Transition fallback=loading>
                            <ErrorBoundary fallback=show_errors>{pickers}</ErrorBoundary>
                        </Transition>
                        <h3>"Your hidden task"</h3>
                        <Transition fallback=loading>
                            <ErrorBoundary fallback=show_errors>
                                {move || Suspend::new(async move {
                                    let shown = briefing.await?.unwrap_or_default();
                                    Ok::<_, ServerFnError>(view! {
                                        <dl class="briefing">
                                            {shown.into_iter().map(|s| view! { <dt>{s.label}</dt><dd>{s.text}</dd> }).collect_view()}
                                        </dl>
                                    })
                                })}
                            </ErrorBoundary>
                        </Transition>
                        <p class="muted">"The selected model plays the agent (the chat settings above apply); you play the user."</p>
                        <button type="button" class="button primary" disabled=move || starting.get() on:click=start>
                            {move || if starting.get() { "Starting…" } else { "Start the episode" }}
                        </button>
                        {move || error.get().map(|e| view! { <p class="error" role="alert">{e}</p> })}
                    </div>
                }
                .into_any(),
            }}
        </div>
    }
}

/// An open reply stream (the browser's `EventSource`); nothing during SSR.
#[cfg(feature = "hydrate")]
type SourceStorage = LocalStorage;
#[cfg(not(feature = "hydrate"))]
type SourceStorage = leptos::reactive::owner::SyncStorage;

struct Source {
    #[cfg(feature = "hydrate")]
    inner: web_sys::EventSource,
    #[cfg(feature = "hydrate")]
    _on_message: wasm_bindgen::closure::Closure<dyn FnMut(web_sys::MessageEvent)>,
    #[cfg(feature = "hydrate")]
    _on_error: wasm_bindgen::closure::Closure<dyn FnMut()>,
}

impl Source {
    fn close(&self) {
        #[cfg(feature = "hydrate")]
        self.inner.close();
    }
}

#[cfg(feature = "hydrate")]
fn open_stream(id: &str, on_event: impl FnMut(ChatEvent) + 'static) -> Option<Source> {
    use std::cell::RefCell;
    use std::rc::Rc;
    use wasm_bindgen::JsCast;
    use wasm_bindgen::closure::Closure;
    let source = web_sys::EventSource::new(&format!("/api/chat/{id}/stream")).ok()?;
    let on_event = Rc::new(RefCell::new(on_event));
    let closer = source.clone();
    let handler = on_event.clone();
    let on_message = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
        let Some(text) = e.data().as_string() else { return };
        match serde_json::from_str::<ChatEvent>(&text) {
            Ok(event) => {
                let last = matches!(event, ChatEvent::Done { .. } | ChatEvent::Error { .. });
                if last {
                    closer.close();
                }
                (handler.borrow_mut())(event);
            }
            Err(err) => leptos::logging::warn!("unreadable chat event: {err}"),
        }
    });
    // A stream the server refused or cut (it expired, the server stopped) ends the reply with an error; an open
    // stream's hiccup is retried by the browser.
    let watcher = source.clone();
    let on_error = Closure::<dyn FnMut()>::new(move || {
        if watcher.ready_state() == web_sys::EventSource::CLOSED {
            (on_event.borrow_mut())(ChatEvent::Error { message: "the reply stream was closed by the server".into() });
        }
    });
    source.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    Some(Source { inner: source, _on_message: on_message, _on_error: on_error })
}

#[cfg(not(feature = "hydrate"))]
fn open_stream(_id: &str, _on_event: impl FnMut(ChatEvent) + 'static) -> Option<Source> {
    None
}
