//! The HTML shell around the app and the router: which page answers which path.

use leptos::prelude::*;
use leptos_meta::{MetaTags, Stylesheet, Title, provide_meta_context};
use leptos_router::components::{Route, Router, Routes};
use leptos_router::path;

use crate::pages::admin::{AdminPage, LoginPage, SetupPage};
use crate::pages::chat::ChatPage;
use crate::pages::eval::EvalPage;
use crate::pages::run::RunPage;
use crate::pages::runs::RunsPage;
use crate::pages::studies::{StudiesPage, StudyAdminPage, StudyEpisodePage};
use crate::pages::study::StudyPage;
use crate::pages::transcripts::{GroupPage, TranscriptPage, TranscriptsPage};

/// The document the server renders; `App` inside it is what the browser hydrates.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <link rel="icon" href="/favicon.svg" type="image/svg+xml" />
                // The CSRF token of this page; the script adds it to the bundle's same-origin fetches.
                <meta name="csrf-token" content=crate::auth::csrf_token() />
                <script inner_html=crate::auth::FETCH_CSRF_SCRIPT></script>
                // On study pages: the worker's session token for the cookie-less path (MTurk's iframe).
                <script inner_html=crate::crowd::STUDY_FETCH_SCRIPT></script>
                <HydrationScripts options />
                <MetaTags />
            </head>
            <body>
                <App />
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    // Effects never run during SSR: this marks the page as interactive (browser tests wait for it).
    let hydrated = RwSignal::new(false);
    Effect::new(move |_| hydrated.set(true));
    view! {
        <Stylesheet id="userrl" href="/pkg/userrl.css" />
        <Title text="userrl" />
        <Router>
            <nav class="top">
                <a class="brand" href="/">"userrl"</a>
                <a href="/">"Runs"</a>
                <a href="/eval">"Eval"</a>
                <a href="/admin/studies">"Studies"</a>
                <a href="/chat">"Chat"</a>
                <a class="admin-link" href="/admin">"Admin"</a>
            </nav>
            <main data-hydrated=move || hydrated.get().then_some("true")>
                <Routes fallback=|| view! { <p class="error">"Page not found."</p> }>
                    <Route path=path!("") view=RunsPage />
                    <Route path=path!("/runs/:id") view=RunPage />
                    <Route path=path!("/runs/:id/transcripts") view=TranscriptsPage />
                    <Route path=path!("/runs/:id/groups/:step/:group") view=GroupPage />
                    <Route path=path!("/transcripts/:id") view=TranscriptPage />
                    <Route path=path!("/eval") view=EvalPage />
                    <Route path=path!("/chat") view=ChatPage />
                    <Route path=path!("/admin") view=AdminPage />
                    <Route path=path!("/admin/login") view=LoginPage />
                    <Route path=path!("/admin/setup") view=SetupPage />
                    <Route path=path!("/study/:slug") view=StudyPage />
                    <Route path=path!("/admin/studies") view=StudiesPage />
                    <Route path=path!("/admin/studies/:id") view=StudyAdminPage />
                    <Route path=path!("/admin/studies/:id/episodes/:episode") view=StudyEpisodePage />
                </Routes>
            </main>
        </Router>
    }
}
