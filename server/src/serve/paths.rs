//! Where the server finds things when it may be started from any folder: the project root (the folder that
//! holds `configs/`), the preset configs, the default database and runs directory, and the relative paths
//! inside a run config (models, task files), which are written relative to the project root.
//!
//! Order for the configs directory: `USERRL_CONFIGS`, then `./configs`, then the folders above the
//! executable (`target/release/userrl` -> the workspace root), then the source tree this binary was built from.

use std::path::{Path, PathBuf};

/// The folder holding the preset run configs, if any is found.
pub fn configs_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("USERRL_CONFIGS").map(PathBuf::from) {
        return Some(dir);
    }
    candidate_roots().into_iter().map(|root| root.join("configs")).find(|dir| dir.is_dir())
}

/// The project root: the folder above the configs directory (falls back to the working directory).
pub fn project_root() -> PathBuf {
    candidate_roots().into_iter().find(|root| root.join("configs").is_dir()).unwrap_or_else(|| PathBuf::from("."))
}

fn candidate_roots() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from(".")];
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    // The workspace this binary was compiled in: server/ -> its parent.
    if let Some(workspace) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        roots.push(workspace.to_path_buf());
    }
    roots
}

/// The preset configs: `(file stem, TOML text)` of every `*.toml` in the configs directory, sorted by name.
/// Unreadable files are skipped with a warning (a preset list is a convenience, not a source of truth).
pub fn presets(dir: Option<&Path>) -> Vec<(String, String)> {
    let Some(dir) = dir else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::warn!(dir = %dir.display(), "cannot list the configs directory");
        return Vec::new();
    };
    let mut presets: Vec<(String, String)> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .filter_map(|p| {
            let name = p.file_stem()?.to_string_lossy().into_owned();
            match std::fs::read_to_string(&p) {
                Ok(text) => Some((name, text)),
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "skipping an unreadable preset");
                    None
                }
            }
        })
        .collect();
    presets.sort();
    presets
}

/// A path from a run config: kept when it exists as given (relative to the working directory, or absolute),
/// else taken relative to `root` when it exists there. Missing either way, it is kept as given so that the
/// error names what the user wrote.
pub fn resolve(path: &str, root: &Path) -> String {
    let given = Path::new(path);
    if given.is_absolute() || given.exists() {
        return path.to_string();
    }
    let rooted = root.join(given);
    if rooted.exists() { rooted.to_string_lossy().into_owned() } else { path.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_list_toml_files_sorted_and_skip_others() {
        let dir = std::env::temp_dir().join(format!("userrl-presets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("b.toml"), "name = \"b\"").unwrap();
        std::fs::write(dir.join("a.toml"), "name = \"a\"").unwrap();
        std::fs::write(dir.join("notes.txt"), "x").unwrap();
        let found = presets(Some(&dir));
        assert_eq!(found, vec![("a".into(), "name = \"a\"".into()), ("b".into(), "name = \"b\"".into())]);
        assert!(presets(Some(&dir.join("missing"))).is_empty());
        assert!(presets(None).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn relative_paths_fall_back_to_the_root() {
        let root = std::env::temp_dir().join(format!("userrl-root-{}", std::process::id()));
        std::fs::create_dir_all(root.join("models")).unwrap();
        std::fs::write(root.join("models/m.gguf"), "x").unwrap();
        assert_eq!(resolve("models/m.gguf", &root), root.join("models/m.gguf").to_string_lossy());
        assert_eq!(resolve("models/none.gguf", &root), "models/none.gguf");
        assert_eq!(resolve("/abs/x", &root), "/abs/x");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_source_tree_has_the_quickstart_preset() {
        let dir = configs_dir().expect("the workspace's configs/ is found from the test binary");
        assert!(presets(Some(&dir)).iter().any(|(name, _)| name == "quickstart"));
    }
}
