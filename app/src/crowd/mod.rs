//! Crowd studies in the web app: what the worker's browser and the admin pages exchange with the server, the
//! link formats of each platform, and the export encodings. Everything here builds for both sides; the
//! server's part (sessions, live episodes, the admin JSON API) is in `service` and `admin` (feature `ssr`).

#[cfg(feature = "ssr")]
pub mod admin;
pub mod api;
#[cfg(feature = "ssr")]
pub mod service;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use userrl_types::TranscriptRecord;
use userrl_types::study::{EpisodeState, SessionRow, StudyEpisodeRow};
use userrl_types::study::{Platform, SessionState, StudyFlag, StudyProgress, StudyRow, StudySpec};

/// MTurk's `assignmentId` while a worker previews a HIT (before accepting it).
pub const MTURK_PREVIEW: &str = "ASSIGNMENT_ID_NOT_AVAILABLE";
/// Where Prolific takes a finished worker; the code goes in `cc`.
pub const PROLIFIC_COMPLETE: &str = "https://app.prolific.com/submissions/complete";
/// The only hosts an MTurk completion form may post to (`turkSubmitTo`): production and the sandbox.
pub const MTURK_HOSTS: [&str; 2] = ["https://www.mturk.com", "https://workersandbox.mturk.com"];

/// What a worker sees of a study (never the task list or the models under test).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyPublic {
    pub name: String,
    pub slug: String,
    pub pay_note: String,
    pub instructions: String,
    pub consent_text: String,
    pub consent_version: String,
    pub platform: Platform,
    pub episodes_per_worker: i64,
    pub time_limit_s: i64,
}

impl StudyPublic {
    pub fn of(study: &StudyRow) -> StudyPublic {
        let s = &study.spec;
        StudyPublic {
            name: s.name.clone(),
            slug: s.slug.clone(),
            pay_note: s.pay_note.clone(),
            instructions: s.instructions.clone(),
            consent_text: s.consent_text.clone(),
            consent_version: s.consent_version.clone(),
            platform: s.platform,
            episodes_per_worker: s.episodes_per_worker,
            time_limit_s: s.time_limit_s,
        }
    }
}

/// One option of a button row or checkbox group (the gym's `human::Pick`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PickView {
    pub id: String,
    pub label: String,
}

/// One input of a prompt, the same JSON as the gym's `human::Control`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlView {
    Buttons { name: String, label: String, options: Vec<PickView> },
    Checkboxes { name: String, label: String, options: Vec<PickView>, max: Option<usize> },
    Scale { name: String, label: String, min: i64, max: i64, labels: Vec<String> },
    Text { name: String, label: String, max_chars: usize, required: bool },
}

/// A labelled piece of hidden task information (the gym's `human::Shown`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShownView {
    pub label: String,
    pub text: String,
}

/// One earlier line of the conversation (the gym's `human::Line`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LineView {
    pub speaker: String,
    pub text: String,
}

/// The open question to the person, the same JSON as the gym's `human::HumanPrompt`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptView {
    pub id: u64,
    pub gym: String,
    pub task_id: String,
    pub instruction: String,
    pub message: String,
    pub context: Vec<ShownView>,
    pub history: Vec<LineView>,
    pub controls: Vec<ControlView>,
}

/// One control's value, the same JSON as the gym's `human::Value`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AnswerValue {
    Number(i64),
    Text(String),
    List(Vec<String>),
}

/// The person's answer, the same JSON as the gym's `human::HumanAnswer`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AnswerView {
    pub values: BTreeMap<String, AnswerValue>,
}

/// One of the worker's assigned episodes, as the worker sees it (no scores: they would steer the answers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpisodeBrief {
    pub index: i64,
    pub gym: String,
    pub state: EpisodeState,
    pub turns: i64,
}

/// The episode the worker is on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurrentEpisode {
    pub index: i64,
    pub gym: String,
    /// The question waiting for the worker; `None` while the agent is thinking or once the episode ended.
    pub prompt: Option<PromptView>,
    pub ended: bool,
}

/// Everything the worker page shows, read fresh on each call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    pub study: StudyPublic,
    pub state: SessionState,
    /// Unix ms after which the session can no longer complete, and the server's clock.
    pub deadline_ms: i64,
    pub now_ms: i64,
    pub episodes: Vec<EpisodeBrief>,
    pub current: Option<CurrentEpisode>,
    /// Every episode ended as it should: the worker may ask for the completion code.
    pub can_complete: bool,
    /// Why the session ended without a code (time limit, an episode left unanswered).
    pub ended_because: Option<String>,
}

/// What opening the study link gives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Entry {
    /// MTurk preview (the HIT is not accepted yet): the study's description, no session.
    Preview { study: StudyPublic },
    /// The worker's session (new or resumed). `access` only when the session was just made.
    Session {
        view: Box<WorkerView>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        access: Option<WorkerAccess>,
    },
}

/// A new session's credentials for the cookie-less path (the study page inside MTurk's cross-site iframe,
/// where the session cookie is not sent): the page keeps them (`sessionStorage`) and the fetch wrapper
/// [`STUDY_FETCH_SCRIPT`] sends them as `x-study-token` and `x-csrf-token` with every worker call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerAccess {
    /// The session token (the same secret as the session cookie; the server keeps only its SHA-256).
    pub token: String,
    /// The CSRF token bound to it.
    pub csrf: String,
}

/// Where the study page keeps its [`WorkerAccess`], as JSON: `sessionStorage["userrl_study_access:<slug>"]`
/// (a reload in the same tab resumes), else (storage blocked) the `data-study-access` attribute of `<html>`
/// (for as long as the page is open).
pub const ACCESS_KEY_PREFIX: &str = "userrl_study_access:";

/// On a study page (`/study/<slug>`), adds the page's [`WorkerAccess`] to every same-origin worker call
/// (`/api/fn/study_*`) as `x-study-token` and `x-csrf-token`. Installed after `FETCH_CSRF_SCRIPT`, so it runs
/// first and its CSRF token wins. Written without `<` and `&` so it can sit in the HTML as it is.
pub const STUDY_FETCH_SCRIPT: &str = r#"(function () {
  if (!window.fetch) { return; }
  var original = window.fetch;
  window.fetch = function (input, init) {
    try {
      var m = /^[/]study[/]([a-z0-9-]+)[/]?$/.exec(window.location.pathname);
      var req = input instanceof Request ? input : null;
      var url = new URL(req ? req.url : String(input), window.location.href);
      var ours = m ? (url.origin === window.location.origin ? url.pathname.indexOf('/api/fn/study_') === 0 : false) : false;
      if (ours) {
        var text = null;
        try { text = window.sessionStorage.getItem('userrl_study_access:' + m[1]); } catch (e) {}
        var access = JSON.parse(text || document.documentElement.getAttribute('data-study-access') || 'null');
        if (access ? access.token : false) {
          var headers = new Headers((init ? init.headers : null) || (req ? req.headers : undefined));
          headers.set('x-study-token', access.token);
          headers.set('x-csrf-token', access.csrf);
          init = Object.assign({}, init || {}, { headers: headers });
        }
      }
    } catch (e) {}
    return original.call(window, input, init);
  };
})();"#;

/// The completion code and how it goes back to the platform. Given once per session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub code: String,
    /// Prolific: the completion URL with `?cc=<code>`.
    pub redirect: Option<String>,
    /// MTurk: post `assignmentId` (and the code) to this URL.
    pub mturk_submit: Option<MturkSubmit>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MturkSubmit {
    pub action: String,
    pub assignment_id: String,
}

/// The admin's list row of a study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudySummary {
    pub study: StudyRow,
    pub progress: StudyProgress,
}

/// The admin's page of one study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyDetail {
    pub study: StudyRow,
    pub progress: StudyProgress,
    /// The worker link with the platform's placeholders, relative to the site (`/study/<slug>?...`).
    pub link: String,
    pub sessions: Vec<SessionRow>,
    pub episodes: Vec<StudyEpisodeRow>,
    pub flags: Vec<StudyFlag>,
}

/// One episode with its transcript, for the admin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyEpisodeView {
    pub episode: StudyEpisodeRow,
    pub record: Option<TranscriptRecord>,
}

/// Creating a study: the new id, or the first field at fault with its message (shown beside the field).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum CreateOutcome {
    Created { id: i64, slug: String },
    Invalid { field: String, message: String },
}

/// The creation form's fields as typed (lists one per line), before parsing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StudyForm {
    pub name: String,
    pub slug: String,
    /// Gym names, comma or line separated.
    pub gyms: String,
    /// `gym/task_id` per line; empty = every task of the gyms in the split.
    pub tasks: String,
    pub split: String,
    /// One model per line.
    pub models: String,
    pub episodes_per_worker: String,
    pub time_limit_min: String,
    pub max_turns: String,
    pub pay_note: String,
    pub instructions: String,
    pub consent_text: String,
    pub consent_version: String,
    pub platform: String,
    pub completion_url: String,
    /// Prolific: one completion code for the whole study; empty = a random code per session.
    #[serde(default)]
    pub completion_code: String,
    /// Open the study at once (else it starts as a draft).
    pub open: bool,
}

/// The link to paste into the platform, with the platform's own placeholders (Prolific replaces
/// `{{%PROLIFIC_PID%}}`; MTurk appends its parameters to an external question's URL by itself).
pub fn worker_link(base: &str, spec: &StudySpec) -> String {
    let base = base.trim_end_matches('/');
    match spec.platform {
        Platform::Prolific => format!(
            "{base}/study/{}?PROLIFIC_PID={{{{%PROLIFIC_PID%}}}}&STUDY_ID={{{{%STUDY_ID%}}}}&SESSION_ID={{{{%SESSION_ID%}}}}",
            spec.slug
        ),
        Platform::Mturk => format!("{base}/study/{}", spec.slug),
        Platform::Direct => format!("{base}/study/{}?worker=WORKER_ID", spec.slug),
    }
}

/// One CSV field: quoted when it holds a comma, quote or line break (quotes doubled), and prefixed with `'`
/// when it starts with `=`, `+`, `-`, `@`, a tab or a carriage return, so a spreadsheet never runs it as a
/// formula (CSV injection).
pub fn csv_field(value: &str) -> String {
    let guarded =
        if value.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{value}") } else { value.to_string() };
    if guarded.contains([',', '"', '\n', '\r']) { format!("\"{}\"", guarded.replace('"', "\"\"")) } else { guarded }
}

/// One CSV line (with its `\n`).
pub fn csv_line<S: AsRef<str>>(fields: &[S]) -> String {
    let mut line = fields.iter().map(|f| csv_field(f.as_ref())).collect::<Vec<_>>().join(",");
    line.push('\n');
    line
}

/// The worker-facing text of a session state.
pub fn state_label(state: SessionState) -> &'static str {
    match state {
        SessionState::Consent => "consent",
        SessionState::Instructions => "instructions",
        SessionState::Episodes => "episodes",
        SessionState::Completed => "completed",
        SessionState::Expired => "ended without completion",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("+1"), "'+1");
        assert_eq!(csv_field("-2"), "'-2");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(csv_field("\tx"), "'\tx");
        assert_eq!(csv_line(&["a", "=1", "b,c"]), "a,'=1,\"b,c\"\n");
    }

    #[test]
    fn the_study_fetch_script_needs_no_escaping_in_html() {
        assert!(!STUDY_FETCH_SCRIPT.contains('<'));
        assert!(!STUDY_FETCH_SCRIPT.contains('&'));
        assert!(STUDY_FETCH_SCRIPT.contains(ACCESS_KEY_PREFIX));
    }

    #[test]
    fn worker_links_carry_each_platforms_placeholders() {
        let mut spec = StudySpec {
            name: "n".into(),
            slug: "pilot".into(),
            tasks: vec![],
            split: "test".into(),
            models: vec![],
            episodes_per_worker: 1,
            time_limit_s: 600,
            max_turns: 4,
            pay_note: String::new(),
            instructions: String::new(),
            consent_text: String::new(),
            consent_version: String::new(),
            platform: Platform::Prolific,
            completion_url: PROLIFIC_COMPLETE.into(),
            completion_code: String::new(),
        };
        assert_eq!(
            worker_link("https://x.org/", &spec),
            "https://x.org/study/pilot?PROLIFIC_PID={{%PROLIFIC_PID%}}&STUDY_ID={{%STUDY_ID%}}&SESSION_ID={{%SESSION_ID%}}"
        );
        spec.platform = Platform::Mturk;
        assert_eq!(worker_link("https://x.org", &spec), "https://x.org/study/pilot");
        spec.platform = Platform::Direct;
        assert_eq!(worker_link("", &spec), "/study/pilot?worker=WORKER_ID");
    }
}
