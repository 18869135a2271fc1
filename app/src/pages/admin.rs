//! The admin's pages: sign-in (`/admin/login`), first-run setup (`/admin/setup`, this machine only, while no
//! admin exists) and the admin home (`/admin`, with sign-out). The forms are plain HTML posts with a hidden
//! CSRF field, answered by redirects, so they work before the browser bundle has loaded (and without it).

use leptos::prelude::*;
use leptos_router::hooks::use_query_map;

use crate::auth::{AuthInfo, CSRF_FIELD, MIN_PASSWORD_CHARS, auth_status, csrf_token};
use crate::components::{loading, show_errors};

/// What a form error code (from the `error` query parameter the sign-in endpoints redirect with) says.
pub fn error_text(code: &str) -> String {
    match code {
        "wrong" => "Wrong password.".into(),
        "noadmin" => "No admin is set up yet.".into(),
        "exists" => "An admin exists already: sign in instead.".into(),
        "remote" => "The setup page only works from the machine running the server.".into(),
        "short" => format!("The password must have at least {MIN_PASSWORD_CHARS} characters."),
        "mismatch" => "The two passwords differ.".into(),
        _ => "That did not work; try again.".into(),
    }
}

/// The error named by the page's `?error=` parameter, if any.
fn query_error() -> impl IntoView {
    let query = use_query_map();
    move || query.read().get("error").map(|code| view! { <p class="error" role="alert">{error_text(&code)}</p> })
}

fn csrf_field() -> impl IntoView {
    view! { <input type="hidden" name=CSRF_FIELD value=csrf_token() /> }
}

fn sign_out_form() -> impl IntoView {
    view! {
        <form class="auth-form inline" method="post" action="/admin/logout">
            {csrf_field()}
            <button class="button" type="submit">"Sign out"</button>
        </form>
    }
}

fn no_admin_yet(status: &AuthInfo) -> impl IntoView {
    let setup = status.setup_allowed.then(|| {
        view! {
            <p>
                <a class="button primary" href="/admin/setup">"Create the admin password"</a>
            </p>
        }
    });
    view! {
        <p>"No admin is set up yet. Start the server with " <code>"USERRL_ADMIN_PASSWORD"</code>
            " set, or create the password on the setup page from the machine running the server."</p>
        {setup}
    }
}

#[component]
pub fn LoginPage() -> impl IntoView {
    let query = use_query_map();
    let next = move || query.read().get("next").unwrap_or_default();
    let status = Resource::new(|| (), |_| auth_status());
    view! {
        <section class="page admin-page">
            <h1>"Admin sign-in"</h1>
            {query_error()}
            <Transition fallback=loading>
                <ErrorBoundary fallback=show_errors>
                    {move || Suspend::new(async move {
                        let status = status.await?;
                        let body = if status.signed_in {
                            view! {
                                <p>"You are signed in. " <a href="/admin">"Go to the admin page"</a></p>
                                {sign_out_form()}
                            }
                                .into_any()
                        } else if !status.admin_exists {
                            no_admin_yet(&status).into_any()
                        } else {
                            view! {
                                <form class="auth-form" method="post" action="/admin/login">
                                    {csrf_field()}
                                    <input type="hidden" name="next" value=next() />
                                    <label>
                                        "Password"
                                        <input
                                            type="password"
                                            name="password"
                                            autocomplete="current-password"
                                            required
                                            autofocus
                                        />
                                    </label>
                                    <button class="button primary" type="submit">"Sign in"</button>
                                </form>
                            }
                                .into_any()
                        };
                        Ok::<_, ServerFnError>(body)
                    })}
                </ErrorBoundary>
            </Transition>
        </section>
    }
}

#[component]
pub fn SetupPage() -> impl IntoView {
    let status = Resource::new(|| (), |_| auth_status());
    view! {
        <section class="page admin-page">
            <h1>"First-run setup"</h1>
            {query_error()}
            <Transition fallback=loading>
                <ErrorBoundary fallback=show_errors>
                    {move || Suspend::new(async move {
                        let status = status.await?;
                        let body = if status.admin_exists {
                            view! {
                                <p class="refused">
                                    "An admin exists already, so setup is closed. "
                                    <a href="/admin/login">"Sign in"</a>
                                </p>
                            }
                                .into_any()
                        } else if !status.setup_allowed {
                            view! {
                                <p class="refused">
                                    "Setup only works from the machine running the server (open this page there), "
                                    "or start the server with " <code>"USERRL_ADMIN_PASSWORD"</code> " set."
                                </p>
                            }
                                .into_any()
                        } else {
                            view! {
                                <p>
                                    "Choose the admin password. It is stored as an argon2 hash in the database; "
                                    "the admin can launch, cancel and resume runs, load models and run studies."
                                </p>
                                <form class="auth-form" method="post" action="/admin/setup">
                                    {csrf_field()}
                                    <label>
                                        "Password"
                                        <input
                                            type="password"
                                            name="password"
                                            autocomplete="new-password"
                                            minlength=MIN_PASSWORD_CHARS.to_string()
                                            required
                                            autofocus
                                        />
                                    </label>
                                    <label>
                                        "Again"
                                        <input
                                            type="password"
                                            name="confirm"
                                            autocomplete="new-password"
                                            minlength=MIN_PASSWORD_CHARS.to_string()
                                            required
                                        />
                                    </label>
                                    <button class="button primary" type="submit">"Create the admin"</button>
                                </form>
                            }
                                .into_any()
                        };
                        Ok::<_, ServerFnError>(body)
                    })}
                </ErrorBoundary>
            </Transition>
        </section>
    }
}

#[component]
pub fn AdminPage() -> impl IntoView {
    let status = Resource::new(|| (), |_| auth_status());
    view! {
        <section class="page admin-page">
            <h1>"Admin"</h1>
            <Transition fallback=loading>
                <ErrorBoundary fallback=show_errors>
                    {move || Suspend::new(async move {
                        let status = status.await?;
                        let body = if status.signed_in {
                            view! {
                                <p class="signed-in">
                                    "Signed in as the admin: runs can be launched, cancelled and resumed from the "
                                    <a href="/">"runs page"</a> "."
                                </p>
                                {sign_out_form()}
                            }
                                .into_any()
                        } else if !status.admin_exists {
                            no_admin_yet(&status).into_any()
                        } else {
                            view! {
                                <p>
                                    "This page needs the admin. " <a href="/admin/login?next=/admin">"Sign in"</a>
                                </p>
                            }
                                .into_any()
                        };
                        Ok::<_, ServerFnError>(body)
                    })}
                </ErrorBoundary>
            </Transition>
        </section>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_the_endpoints_send_has_a_sentence() {
        for code in ["wrong", "noadmin", "exists", "remote", "short", "mismatch"] {
            assert_ne!(error_text(code), error_text("unknown"), "{code}");
        }
    }
}
