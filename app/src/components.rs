//! Pieces several pages share: error display, status badges, and the transcript message view (speakers
//! visibly distinct, per-turn rewards, policy tokens tinted by their advantage). All text goes through
//! Leptos text nodes, which escape it: model and user text never becomes markup.

use leptos::prelude::*;
use userrl_types::{RunStatus, Speaker, TranscriptMessage, TranscriptRecord};

use crate::model::format_value;

/// The errors inside an `ErrorBoundary`, one per line.
pub fn show_errors(errors: ArcRwSignal<Errors>) -> impl IntoView {
    view! {
        <div class="error" role="alert">
            {move || {
                errors.get().into_iter().map(|(_, e)| view! { <p>{clean_error(&e.to_string())}</p> }).collect_view()
            }}
        </div>
    }
}

/// Server-function errors arrive as "error running server function: ..."; people want the reason.
fn clean_error(text: &str) -> String {
    text.trim_start_matches("error running server function: ").to_string()
}

pub fn loading() -> impl IntoView {
    view! { <p class="loading">"Loading…"</p> }
}

#[component]
pub fn StatusBadge(status: RunStatus) -> impl IntoView {
    view! { <span class=format!("status status-{}", status.as_str())>{status.as_str()}</span> }
}

/// Background of a policy token: green for positive advantage, red for negative, stronger with magnitude
/// (relative to the largest magnitude in the transcript).
pub fn tint(advantage: f32, max_abs: f32) -> String {
    if advantage == 0.0 || !advantage.is_finite() || max_abs <= 0.0 {
        return String::new();
    }
    let alpha = 0.12 + 0.5 * (advantage.abs() / max_abs).min(1.0);
    if advantage > 0.0 {
        format!("background-color: rgba(46, 160, 67, {alpha:.2})")
    } else {
        format!("background-color: rgba(220, 50, 47, {alpha:.2})")
    }
}

fn speaker_name(s: Speaker) -> &'static str {
    match s {
        Speaker::System => "system",
        Speaker::User => "user",
        Speaker::Assistant => "agent",
        Speaker::Tool => "tool",
    }
}

/// A transcript's messages. `compact` hides the system prompt (used side by side in a group).
#[component]
pub fn Messages(record: TranscriptRecord, #[prop(optional)] compact: bool) -> impl IntoView {
    let max_abs = record
        .messages
        .iter()
        .flat_map(|m| m.tokens.iter().map(|(_, a)| a.abs()))
        .filter(|a| a.is_finite())
        .fold(0.0f32, f32::max);
    let mut turn = 0;
    let messages: Vec<_> = record
        .messages
        .into_iter()
        .filter(|m| !(compact && m.speaker == Speaker::System))
        .map(|m| {
            if m.speaker == Speaker::Assistant {
                turn += 1;
            }
            view! { <Message message=m turn max_abs /> }
        })
        .collect();
    view! { <div class="messages">{messages}</div> }
}

#[component]
fn Message(message: TranscriptMessage, turn: usize, max_abs: f32) -> impl IntoView {
    let who = speaker_name(message.speaker);
    let reward = message.reward.map(|r| {
        view! { <span class="turn-reward" title="reward of this turn">{format!("turn {turn} · reward {}", format_value(r))}</span> }
    });
    let body = if message.tokens.is_empty() {
        view! { <div class="text">{message.text}</div> }.into_any()
    } else {
        let tokens = message
            .tokens
            .into_iter()
            .map(|(piece, adv)| {
                view! { <span class="tok" style=tint(adv, max_abs) title=format!("advantage {adv:.3}")>{piece}</span> }
            })
            .collect_view();
        view! { <div class="text tokens">{tokens}</div> }.into_any()
    };
    view! {
        <div class=format!("msg msg-{who}")>
            <div class="who">
                <span class="speaker">{who}</span>
                {reward}
            </div>
            {body}
        </div>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tint_scales_with_advantage_sign_and_size() {
        assert_eq!(tint(0.0, 1.0), "");
        assert_eq!(tint(f32::NAN, 1.0), "");
        assert!(tint(1.0, 1.0).contains("46, 160, 67, 0.62"));
        assert!(tint(-0.5, 1.0).contains("220, 50, 47, 0.37"));
        assert!(tint(5.0, 1.0).ends_with("0.62)"));
    }
}
