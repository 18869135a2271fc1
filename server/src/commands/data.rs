//! `userrl data import <path>`: converts the original UserRL task files into this project's JSONL task
//! format, one `<gym>.jsonl` per gym, ready for `--tasks <dir>`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use userrl_gym::import::{IMPORTABLE, import_gym};
use userrl_gym::{GymKind, gyms};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Import the original task files found under PATH (the layout of `tasks/<Gym>/` and `parquet/`).
    Import {
        path: PathBuf,
        /// Where to write `<gym>.jsonl`.
        #[arg(long, default_value = "data/imported")]
        out: PathBuf,
        /// `all` (the six gyms whose original data is complete) or a comma-separated list.
        #[arg(long, default_value = "all")]
        gyms: String,
    },
}

pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Import { path, out, gyms: list } => {
            anyhow::ensure!(path.is_dir(), "{} is not a directory", path.display());
            let kinds: Vec<GymKind> =
                if list.trim().eq_ignore_ascii_case("all") { IMPORTABLE.to_vec() } else { super::parse_gyms(&list)? };
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            for kind in kinds {
                let tasks = import_gym(&path, kind).with_context(|| format!("importing {}", kind.title()))?;
                // Check the records load back as tasks before writing them.
                let text: String = tasks.iter().map(|t| format!("{t}\n")).collect();
                let target = out.join(format!("{}.jsonl", kind.name()));
                let gym = gyms::from_jsonl(kind, &text, &target.display().to_string())?;
                let tmp = target.with_extension("jsonl.tmp");
                let mut file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
                file.write_all(text.as_bytes())?;
                file.sync_all()?;
                std::fs::rename(&tmp, &target)?;
                let test = gym.task_ids(Some(userrl_gym::Split::Test)).len();
                println!(
                    "{:<10} {:>5} tasks ({} train, {} test) -> {}",
                    kind.name(),
                    tasks.len(),
                    tasks.len() - test,
                    test,
                    target.display()
                );
            }
            Ok(())
        }
    }
}
