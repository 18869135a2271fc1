//! Tests of TelepathyGym: data checks, the scripted host's understanding, the reward rules, exploits, the
//! LLM prompt/parse/fallback, the expert against the random agent, and the import of the original data.

use super::*;

#[test]
fn builtin_loads() {
    let gym = TelepathyGym::builtin().unwrap();
    assert_eq!(gym.tasks().len(), 150);
}
