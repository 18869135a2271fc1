//! SearchGym through the crate's public surface, as other crates (the CLI, the bench) use it: the built-in
//! gym from the catalog, its task file, and the corpus search.

use std::sync::Arc;

use userrl_gym::gyms::search::SearchGym;
use userrl_gym::gyms::{self, GymKind};
use userrl_gym::user::ScriptedUser;
use userrl_gym::{Action, EnvConfig, Episode, Split};

#[test]
fn builtin_search_gym_plays_and_searches() {
    let gym = gyms::builtin(GymKind::Search).unwrap();
    assert_eq!(gym.task_ids(Some(Split::Test)).len(), 40);
    assert_eq!(gym.task_ids(Some(Split::Train)).len(), 160);
    let id = gym.task_ids(Some(Split::Test)).remove(0);
    let env = gym.new_env(&id, &EnvConfig::default(), Arc::new(ScriptedUser)).unwrap();
    let mut episode = Episode::new(env, EnvConfig::default());
    let out = futures::executor::block_on(episode.step(Ok(Action::Search("who founded the company".into()))));
    assert!(out.feedback.starts_with("Search results for 'who founded the company':"));

    let lines: Vec<String> = gym.export_tasks().iter().map(|v| v.to_string()).collect();
    let search = SearchGym::from_jsonl(&lines.join("\n"), "export").unwrap();
    let results = search.search("founded company", 3);
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|(title, snippet)| !title.is_empty() && !snippet.is_empty()));
    assert!(search.search("", 5).is_empty());
}
