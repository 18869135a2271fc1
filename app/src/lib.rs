//! The userrl web app: runs table, run page with live charts, transcripts, eval tables, admin sign-in. Built twice from the
//! same components: with `ssr` for the server (pages rendered in axum, server functions, SSE, exports) and
//! with `hydrate` for the browser's WASM bundle, which takes over the server-rendered HTML.
//! `scripts/build-site` builds the bundle; the server crate mounts `server::site_router`.

// Leptos view types nest deeply (the live episode view); the default limit of 128 is too low for them.
#![recursion_limit = "256"]

pub mod api;
pub mod app;
pub mod auth;
pub mod chart;
pub mod components;
pub mod crowd;
#[cfg(feature = "ssr")]
pub mod hosts;
pub mod live;
pub mod model;
pub mod pages;
pub mod people_api;
#[cfg(feature = "ssr")]
pub mod server;

#[cfg(feature = "ssr")]
pub use hosts::{ChatHost, EpisodeError, LiveEpisodes};
#[cfg(feature = "ssr")]
pub use server::{AppContext, LaunchError, RunLauncher, site_options, site_router};

/// The browser bundle's entry point (called by the hydration script in the page head).
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(app::App);
}
