//! The browser side of a run's live stream: one `EventSource` on `/api/runs/{id}/live?compare=...` (the run
//! and the runs compared with it) appending each `LiveEvent` to a log signal that the charts and the page
//! read. During SSR the log stays empty.

use leptos::prelude::*;

use crate::model::LiveEvent;

/// The live events received so far, in order, and whether the stream is open. Consumers remember how many
/// they have handled (several events can arrive between two renders).
#[derive(Clone, Copy)]
pub struct LiveLog {
    pub events: RwSignal<Vec<LiveEvent>>,
    pub open: RwSignal<bool>,
}

/// The stream's URL for `run_id` and the runs compared with it.
pub fn live_url(run_id: i64, compare: &[i64]) -> String {
    if compare.is_empty() {
        format!("/api/runs/{run_id}/live")
    } else {
        let ids: Vec<String> = compare.iter().map(i64::to_string).collect();
        format!("/api/runs/{run_id}/live?compare={}", ids.join(","))
    }
}

/// Opens the stream for `run_id` and the compared runs once the page is hydrated, reopens it when the
/// comparison changes, and closes it when the page goes away.
pub fn use_live(run_id: i64, compare: Signal<Vec<i64>>) -> LiveLog {
    let log = LiveLog { events: RwSignal::new(Vec::new()), open: RwSignal::new(false) };
    #[cfg(feature = "hydrate")]
    Effect::new(move |_| connect(&live_url(run_id, &compare.get()), log));
    #[cfg(not(feature = "hydrate"))]
    let _ = (run_id, compare);
    log
}

#[cfg(feature = "hydrate")]
fn connect(url: &str, log: LiveLog) {
    use wasm_bindgen::JsCast;
    use wasm_bindgen::closure::Closure;

    let Ok(source) = web_sys::EventSource::new(url) else {
        leptos::logging::warn!("live updates unavailable: EventSource failed");
        return;
    };
    let on_message = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |e: web_sys::MessageEvent| {
        let Some(text) = e.data().as_string() else { return };
        match serde_json::from_str::<LiveEvent>(&text) {
            Ok(event) => log.events.update(|v| v.push(event)),
            Err(err) => leptos::logging::warn!("unreadable live event: {err}"),
        }
    });
    let on_open = Closure::<dyn FnMut()>::new(move || log.open.set(true));
    // The browser reconnects by itself after an error; show the gap meanwhile.
    let on_error = Closure::<dyn FnMut()>::new(move || log.open.set(false));
    source.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    source.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    source.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    let held = send_wrapper::SendWrapper::new((source, on_message, on_open, on_error));
    // Runs when the effect reruns (the comparison changed) as well as when the page goes away.
    on_cleanup(move || {
        held.0.close();
        let _ = log.open.try_set(false);
    });
}
