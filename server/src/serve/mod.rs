//! `userrl serve`: one process that serves the web app (Leptos SSR + hydration), the JSON API and the /v1
//! endpoint, and runs training and evaluation jobs on their own threads. Local-first: it binds 127.0.0.1 by
//! default and its mutating routes have no auth yet (the admin auth of issue 6 comes later).

pub mod evaljob;
pub mod paths;

/// The dotted key a TOML error points at, found from its span in `text`: the `[table]` header above the
/// offending line plus the line's own key (`grpo.clip`), or the header alone when the error is on it.
pub(crate) fn toml_error_key(text: &str, error: &toml::de::Error) -> Option<String> {
    // An unknown field names itself; prefer it to the span, which points at the table that holds it.
    let message = error.message();
    let named =
        message.strip_prefix("unknown field `").and_then(|rest| rest.split_once('`')).map(|(name, _)| name.to_string());
    let span = error.span()?;
    let before = text.get(..span.start.min(text.len()))?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[line_start..].find('\n').map_or(text.len(), |i| line_start + i);
    let line = text[line_start..line_end].trim();
    let header = text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let own = if line.starts_with('[') {
        None
    } else {
        line.split_once('=').map(|(k, _)| k.trim().trim_matches('"').to_string()).filter(|k| !k.is_empty())
    };
    let (table, key) = if line.starts_with('[') {
        (Some(line.trim_matches(|c| c == '[' || c == ']').trim().to_string()), named)
    } else {
        (header, named.or(own))
    };
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of<T: serde::de::DeserializeOwned + std::fmt::Debug>(text: &str) -> Option<String> {
        toml_error_key(text, &toml::from_str::<T>(text).unwrap_err())
    }

    #[test]
    fn toml_errors_name_their_dotted_key() {
        let text = "name = \"x\"\n[grpo]\nsteps = 10\nclip = \"wide\"\n";
        assert_eq!(key_of::<userrl_rl::config::RunConfig>(text).as_deref(), Some("grpo.clip"));
        let text = "name = \"x\"\n[model]\npath = \"m\"\n[data]\ngyms = [\"intention\"]\n[grpo]\nstepz = 1\n";
        assert_eq!(key_of::<userrl_rl::config::RunConfig>(text).as_deref(), Some("grpo.stepz"));
        let text = "seed = \"zero\"\n";
        assert_eq!(key_of::<userrl_rl::config::RunConfig>(text).as_deref(), Some("seed"));
    }
}
