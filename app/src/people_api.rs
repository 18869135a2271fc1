//! Server functions of the chat page and of live episodes (a person plays the user): models, loading a
//! checkpoint, starting a chat reply (streamed from `/api/chat/{id}/stream`), gyms and tasks, starting,
//! answering and abandoning an episode (its state is pushed from `/api/episodes/{id}/events`).

use leptos::prelude::*;
use leptos::server_fn::codec::Json;
use userrl_types::chat::{ChatRequest, ModelChoice};
use userrl_types::human::{EpisodeSpec, EpisodeState, GymTasks, HumanAnswer, Shown};

#[cfg(feature = "ssr")]
mod backend {
    use leptos::prelude::*;

    use crate::hosts::EpisodeError;
    use crate::server::AppContext;

    pub fn ctx() -> Result<AppContext, ServerFnError> {
        use_context::<AppContext>().ok_or_else(|| ServerFnError::new("the app context is missing (server bug)"))
    }

    pub fn status(code: axum::http::StatusCode, message: impl Into<String>) -> ServerFnError {
        if let Some(res) = use_context::<leptos_axum::ResponseOptions>() {
            res.set_status(code);
        }
        ServerFnError::new(message.into())
    }

    pub fn episode_err(e: EpisodeError) -> ServerFnError {
        use axum::http::StatusCode;
        let code = match &e {
            EpisodeError::NotFound(_) => StatusCode::NOT_FOUND,
            EpisodeError::Invalid(_) => StatusCode::BAD_REQUEST,
            EpisodeError::NotOpen(_) => StatusCode::CONFLICT,
            EpisodeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        status(code, e.to_string())
    }
}

#[server(input = Json, prefix = "/api/fn", endpoint = "chat_models")]
pub async fn chat_models() -> Result<Vec<ModelChoice>, ServerFnError> {
    Ok(backend::ctx()?.chat.models().await)
}

/// Loads a run's checkpoint into /v1; returns the model name it is served under. Needs an operator.
#[server(input = Json, prefix = "/api/fn", endpoint = "load_checkpoint")]
pub async fn load_checkpoint(run_id: i64, checkpoint_id: i64) -> Result<String, ServerFnError> {
    // Loading a model takes memory and time: an operator's action (an admin, or this machine while none exists).
    crate::auth::require_operator().await?;
    let ctx = backend::ctx()?;
    ctx.chat
        .load_checkpoint(run_id, checkpoint_id)
        .await
        .map_err(|e| backend::status(axum::http::StatusCode::BAD_REQUEST, e))
}

/// Starts a reply; the browser reads it from `/api/chat/{id}/stream` within 30 s.
#[server(input = Json, prefix = "/api/fn", endpoint = "chat_start")]
pub async fn chat_start(request: ChatRequest) -> Result<String, ServerFnError> {
    let ctx = backend::ctx()?;
    let stream = ctx.chat.chat(request).map_err(|e| backend::status(axum::http::StatusCode::BAD_REQUEST, e))?;
    Ok(crate::hosts::park_chat(stream))
}

#[server(input = Json, prefix = "/api/fn", endpoint = "gym_catalog")]
pub async fn gym_catalog() -> Result<Vec<GymTasks>, ServerFnError> {
    Ok(backend::ctx()?.episodes.gyms())
}

#[server(input = Json, prefix = "/api/fn", endpoint = "episode_briefing")]
pub async fn episode_briefing(gym: String, task_id: String) -> Result<Vec<Shown>, ServerFnError> {
    backend::ctx()?.episodes.briefing(&gym, &task_id).map_err(backend::episode_err)
}

/// Starts an episode from the chat page (its origin is always `chat`).
#[server(input = Json, prefix = "/api/fn", endpoint = "start_episode")]
pub async fn start_episode(spec: EpisodeSpec) -> Result<EpisodeState, ServerFnError> {
    let spec = EpisodeSpec { origin: "chat".into(), ..spec };
    backend::ctx()?.episodes.start(spec).await.map_err(backend::episode_err)
}

#[server(input = Json, prefix = "/api/fn", endpoint = "get_episode")]
pub async fn get_episode(id: String) -> Result<EpisodeState, ServerFnError> {
    let ctx = backend::ctx()?;
    ctx.episodes.state(&id).ok_or_else(|| backend::episode_err(crate::hosts::EpisodeError::NotFound(id)))
}

#[server(input = Json, prefix = "/api/fn", endpoint = "answer_episode")]
pub async fn answer_episode(id: String, prompt_id: u64, answer: HumanAnswer) -> Result<EpisodeState, ServerFnError> {
    backend::ctx()?.episodes.answer(&id, prompt_id, &answer).map_err(backend::episode_err)
}

#[server(input = Json, prefix = "/api/fn", endpoint = "abandon_episode")]
pub async fn abandon_episode(id: String) -> Result<(), ServerFnError> {
    backend::ctx()?.episodes.abandon(&id).map_err(backend::episode_err)
}
