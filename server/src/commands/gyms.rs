//! `userrl gyms`: what each gym offers and how many tasks it has.

use anyhow::Result;
use serde_json::json;
use userrl_gym::{GymKind, Split};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    tasks: super::TaskArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let catalog = args.tasks.catalog(&GymKind::ALL)?;
    let mut rows = Vec::new();
    for gym in catalog.gyms() {
        let kind = gym.kind();
        let count = |s| gym.tasks().iter().filter(|t| t.split == s).count();
        rows.push(json!({
            "gym": kind.name(),
            "title": kind.title(),
            "choices": kind.allowed_choices().iter().map(|c| c.name()).collect::<Vec<_>>(),
            "train": count(Split::Train),
            "test": count(Split::Test),
            "role": if kind.held_in() { "held-in" } else { "held-out" },
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<10} {:<14} {:<22} {:>6} {:>6}  role", "gym", "title", "choices", "train", "test");
    for r in &rows {
        let choices = r["choices"]
            .as_array()
            .map(|c| c.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        println!(
            "{:<10} {:<14} {:<22} {:>6} {:>6}  {}",
            r["gym"].as_str().unwrap_or_default(),
            r["title"].as_str().unwrap_or_default(),
            choices,
            r["train"].as_u64().unwrap_or_default(),
            r["test"].as_u64().unwrap_or_default(),
            r["role"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}
