//! SFT cold-start data: play an agent (the gyms' scripted experts) over a split, keep each task's best
//! trajectory when it scores well enough, and write it as one chat record with tool calls (the OpenAI
//! messages format, tools included), in training mode so tool responses carry the reward line the policy
//! will see during RL.

use std::sync::Arc;

use serde_json::{Value, json};
use userrl_gym::agent::{Message, Role};
use userrl_gym::env::{EnvConfig, Mode};
use userrl_gym::eval::{AgentSpec, episode_seed, make_agent, play_episode};
use userrl_gym::tool::{self, ToolCall};
use userrl_gym::{Catalog, Gym, GymError, Split, Transcript, User};

#[derive(Clone, Debug)]
pub struct SftOptions {
    pub split: Split,
    pub agent: AgentSpec,
    /// Episodes per task (different seeds); the best is kept.
    pub samples_per_task: usize,
    /// The lowest normalised score a kept trajectory may have.
    pub min_normalized: f64,
    pub seed: u64,
    pub max_steps: usize,
}

impl Default for SftOptions {
    fn default() -> Self {
        SftOptions {
            split: Split::Train,
            agent: AgentSpec::Expert,
            samples_per_task: 1,
            min_normalized: 1.0,
            seed: 0,
            max_steps: 16,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct SftStats {
    pub tasks: usize,
    pub kept: usize,
    pub episodes: usize,
    pub mean_turns_kept: f64,
}

/// One kept trajectory as a chat record.
pub fn chat_record(gym: &dyn Gym, played: &[Message], transcript: &Transcript) -> Value {
    let messages: Vec<Value> = played
        .iter()
        .map(|m| match (m.role, &m.call) {
            (Role::Assistant, Some((choice, content))) => {
                let call = ToolCall::interact(*choice, content);
                json!({
                    "role": "assistant",
                    "content": m.content,
                    "tool_calls": [{"type": "function", "function": {"name": call.name, "arguments": call.arguments.to_string()}}],
                })
            }
            (role, _) => json!({"role": role_name(role), "content": m.content}),
        })
        .collect();
    json!({
        "gym": gym.kind().name(),
        "task_id": transcript.task_id,
        "score": transcript.score,
        "normalized": transcript.normalized,
        "turns": transcript.turns.len(),
        "tools": [tool::schema()],
        "messages": messages,
    })
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

/// Plays the agent over every task of the split in the catalog's gyms; `on_record` receives each kept record.
pub async fn generate(
    catalog: &Catalog,
    options: &SftOptions,
    user: Arc<dyn User>,
    mut on_record: impl FnMut(Value) -> std::io::Result<()>,
) -> Result<SftStats, SftError> {
    let config = EnvConfig { mode: Mode::Train, max_steps: options.max_steps, ..EnvConfig::default() };
    let mut stats = SftStats::default();
    let mut kept_turns = 0usize;
    for gym in catalog.gyms() {
        for (index, id) in gym.task_ids(Some(options.split)).iter().enumerate() {
            stats.tasks += 1;
            let mut best: Option<(Transcript, Vec<Message>)> = None;
            for sample in 0..options.samples_per_task.max(1) {
                let seed = episode_seed(options.seed.wrapping_add(sample as u64), gym.kind(), index);
                let config = EnvConfig { seed, ..config.clone() };
                let mut agent = make_agent(&options.agent, gym.as_ref(), id, seed)?;
                let played = play_episode(gym.as_ref(), id, agent.as_mut(), user.clone(), &config).await?;
                stats.episodes += 1;
                // Higher score first, then fewer turns: shorter successful dialogues teach efficiency.
                let better = best.as_ref().is_none_or(|(b, _)| {
                    (played.transcript.normalized, -(played.transcript.turns.len() as f64))
                        > (b.normalized, -(b.turns.len() as f64))
                });
                if better {
                    best = Some((played.transcript, played.conversation));
                }
            }
            if let Some((transcript, conversation)) = best
                && transcript.normalized >= options.min_normalized
            {
                kept_turns += transcript.turns.len();
                stats.kept += 1;
                on_record(chat_record(gym.as_ref(), &conversation, &transcript))?;
            }
        }
    }
    stats.mean_turns_kept = if stats.kept == 0 { 0.0 } else { kept_turns as f64 / stats.kept as f64 };
    Ok(stats)
}

#[derive(Debug, thiserror::Error)]
pub enum SftError {
    #[error(transparent)]
    Gym(#[from] GymError),
    #[error("writing the SFT data: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use userrl_gym::GymKind;
    use userrl_gym::user::ScriptedUser;

    #[test]
    fn expert_trajectories_become_chat_records_with_tool_calls() {
        let catalog = Catalog::builtin(&[GymKind::Function, GymKind::Turtle]).unwrap();
        let mut records = Vec::new();
        let options = SftOptions { split: Split::Test, ..SftOptions::default() };
        let stats = block_on(generate(&catalog, &options, Arc::new(ScriptedUser), |r| {
            records.push(r);
            Ok(())
        }))
        .unwrap();
        assert_eq!(stats.tasks, 75 + 12);
        assert_eq!(stats.kept, records.len());
        assert!(stats.kept >= 80, "{stats:?}");
        let r = &records[0];
        assert_eq!(r["gym"], "function");
        let messages = r["messages"].as_array().unwrap();
        assert_eq!(messages[0]["role"], "system");
        assert_eq!(messages[1]["role"], "user");
        assert_eq!(messages[2]["role"], "assistant");
        let call = &messages[2]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "interact_with_env");
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args["choice"], "search");
        // Training mode: tool responses carry the reward line.
        assert!(messages[3]["content"].as_str().unwrap().ends_with("Reward: 0.0"), "{}", messages[3]);
        assert!(messages.last().unwrap()["content"].as_str().unwrap().contains("Reward: 1.0"));
        assert_eq!(r["tools"][0]["function"]["name"], "interact_with_env");
    }

    #[test]
    fn random_agent_trajectories_are_filtered_out() {
        let catalog = Catalog::builtin(&[GymKind::Function]).unwrap();
        let options = SftOptions { split: Split::Test, agent: AgentSpec::Random, ..SftOptions::default() };
        let mut scores = Vec::new();
        let stats = block_on(generate(&catalog, &options, Arc::new(ScriptedUser), |r| {
            scores.push(r["normalized"].as_f64().unwrap_or_default());
            Ok(())
        }))
        .unwrap();
        // A random agent sometimes stumbles on the answer (e.g. `0.0` read from a reward line); only those
        // successes are kept.
        assert_eq!(stats.tasks, 75);
        assert!(stats.kept < 15, "{stats:?}");
        assert!(scores.iter().all(|s| *s >= 1.0));
    }
}
