//! Transcript records of rollouts for the event sink: the messages of an episode, and on each assistant turn the
//! exact sampled tokens, each with its decoded piece and the advantage it was trained with. Pieces are decoded
//! from the sampled ids (never from re-tokenised text), so the UI shows what the update actually saw.

use userrl_nn::tokenizer::Tokenizer;
use userrl_types::{Speaker, TranscriptMessage, TranscriptRecord};

use crate::rollout::{RolloutError, Trajectory};

/// The decoded text of each id, such that the pieces concatenate to `tokenizer.decode(ids)`. A character split
/// over several byte-level tokens goes to the token that completes it; the tokens before it get "".
pub fn token_pieces(tokenizer: &Tokenizer, ids: &[u32]) -> Result<Vec<String>, RolloutError> {
    let mut pieces = Vec::with_capacity(ids.len());
    // First id not yet part of an emitted piece: an unfinished UTF-8 sequence decodes to U+FFFD, so wait for the
    // token that completes it (pending runs are a few tokens long, so the re-decoding stays cheap).
    let mut start = 0;
    for i in 0..ids.len() {
        let text = tokenizer.decode(&ids[start..=i])?;
        if text.ends_with('\u{FFFD}') && i + 1 < ids.len() && i + 1 - start < 8 {
            pieces.push(String::new());
            continue;
        }
        pieces.push(text);
        start = i + 1;
    }
    Ok(pieces)
}

/// The numbers a transcript carries besides its messages.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RecordScores {
    /// The trajectory score used for the group advantage.
    pub reward: f64,
    /// The group-normalised advantage (0 for evaluation).
    pub advantage: f64,
}

/// The record of one rollout. `token_advantages` has one entry per token of `t.tokens` (the shaping's per-token
/// advantages; zeros for evaluation); the assistant messages take the entries of their sampled tokens.
pub fn record(
    t: &Trajectory,
    tokenizer: &Tokenizer,
    scores: RecordScores,
    token_advantages: &[f32],
) -> Result<TranscriptRecord, RolloutError> {
    let mut messages = vec![
        TranscriptMessage { speaker: Speaker::System, text: t.system.clone(), tokens: Vec::new(), reward: None },
        TranscriptMessage {
            speaker: Speaker::User,
            text: t.transcript.opening.clone(),
            tokens: Vec::new(),
            reward: None,
        },
    ];
    for (turn, &start) in t.turn_starts.iter().enumerate() {
        // A turn's sampled tokens are the masked run from its start (the tool response after them is unmasked).
        let len = t.response_mask[start..].iter().take_while(|m| **m == 1).count();
        let ids = &t.tokens[start..start + len];
        let pieces = token_pieces(tokenizer, ids)?;
        let advantages = token_advantages.get(start..start + len).unwrap_or_default();
        let tokens: Vec<(String, f32)> = pieces
            .into_iter()
            .enumerate()
            .map(|(i, piece)| (piece, advantages.get(i).copied().unwrap_or(0.0)))
            .collect();
        let text = tokens.iter().map(|(p, _)| p.as_str()).collect();
        messages.push(TranscriptMessage {
            speaker: Speaker::Assistant,
            text,
            tokens,
            reward: Some(t.turn_rewards.get(turn).copied().unwrap_or(0.0)),
        });
        if let Some(Some(response)) = t.tool_responses.get(turn) {
            messages.push(TranscriptMessage {
                speaker: Speaker::Tool,
                text: response.clone(),
                tokens: Vec::new(),
                reward: None,
            });
        }
    }
    Ok(TranscriptRecord {
        gym: t.gym.name().to_string(),
        task_id: t.task_id.clone(),
        reward: scores.reward,
        score: t.transcript.score,
        normalized: t.transcript.normalized,
        success: t.transcript.success,
        termination: t.termination.name().to_string(),
        advantage: scores.advantage,
        turn_rewards: t.turn_rewards.clone(),
        messages,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::executor::block_on;
    use userrl_gym::user::ScriptedUser;
    use userrl_gym::{Catalog, GymKind};

    use super::*;
    use crate::rollout::rollout;
    use crate::rollout::tests::{Scripted, config, tokenizer, turn};
    use crate::shaping::{Shaping, ShapingInput, TrajectoryScore, TurnCredit};

    #[test]
    fn pieces_concatenate_to_the_decoded_text_even_across_split_characters() {
        let tok = tokenizer();
        // Emoji and CJK are several byte-level tokens each.
        let ids = tok.encode("héllo 🎉🎉 世界 <tool_call>").unwrap();
        let pieces = token_pieces(&tok, &ids).unwrap();
        assert_eq!(pieces.len(), ids.len());
        assert_eq!(pieces.concat(), tok.decode(&ids).unwrap());
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    }

    #[test]
    fn record_carries_the_sampled_pieces_and_the_shaped_advantages() {
        let tok = tokenizer();
        let catalog = Catalog::builtin(&[GymKind::Function]).unwrap();
        let gym = catalog.get(GymKind::Function).unwrap();
        let task = gym.task_ids(None)[0].clone();
        let expected = gym.export_tasks()[0]["expected"].as_f64().unwrap();
        let call = |choice: &str, content: &str| {
            format!(
                "ok 🎉<tool_call>\n{{\"name\": \"interact_with_env\", \"arguments\": {{\"choice\": \"{choice}\", \"content\": \"{content}\"}}}}\n</tool_call>"
            )
        };
        let mut train = config();
        train.env.mode = userrl_gym::env::Mode::Train;
        let play = |turns: Vec<Vec<u32>>| {
            let mut policy = Scripted { turns, next: 0, sampled: Vec::new() };
            let t = block_on(rollout(gym.as_ref(), &task, &mut policy, &tok, Arc::new(ScriptedUser), &train)).unwrap();
            (t, policy.sampled)
        };
        let (good, good_ids) =
            play(vec![turn(&tok, &call("action", "1 2 3 4")), turn(&tok, &call("answer", &format!("{expected}")))]);
        let (bad, _) = play(vec![turn(&tok, "no idea")]);
        assert_eq!(good.turn_rewards, vec![0.0, 1.0]);
        let shaping = Shaping { score: TrajectoryScore::R2g, credit: TurnCredit::R2g, gamma: 0.8 };
        let inputs: Vec<ShapingInput> = [&good, &bad]
            .iter()
            .map(|t| ShapingInput {
                rewards: t.turn_rewards.clone(),
                policy_tokens_per_turn: t.policy_tokens_per_turn(),
            })
            .collect();
        let shaped = shaping.group(&inputs);
        let advantages = good.token_advantages(&shaped[0].turn_advantages);
        let scores = RecordScores { reward: shaped[0].score, advantage: shaped[0].advantage };
        let r = record(&good, &tok, scores, &advantages).unwrap();

        let speakers: Vec<Speaker> = r.messages.iter().map(|m| m.speaker).collect();
        use Speaker::*;
        assert_eq!(speakers, vec![System, User, Assistant, Tool, Assistant, Tool]);
        assert!(r.messages[0].text.contains("<tools>"));
        assert!(r.messages[3].text.contains("Reward:"), "training tool responses carry the reward line");
        let assistant: Vec<&TranscriptMessage> = r.messages.iter().filter(|m| m.speaker == Assistant).collect();
        let mut all_ids = Vec::new();
        let mut all_adv = Vec::new();
        for (turn, m) in assistant.iter().enumerate() {
            let pieces: String = m.tokens.iter().map(|(p, _)| p.as_str()).collect();
            assert_eq!(pieces, m.text);
            let start = good.turn_starts[turn];
            let n = good.policy_tokens_per_turn()[turn];
            assert_eq!(m.text, tok.decode(&good.tokens[start..start + n]).unwrap());
            assert!(m.text.contains("🎉"));
            assert_eq!(m.reward, Some(good.turn_rewards[turn]));
            all_ids.extend_from_slice(&good.tokens[start..start + n]);
            // Every token of turn t carries the shaping's advantage for turn t.
            for (_, a) in &m.tokens {
                assert_eq!(*a, shaped[0].turn_advantages[turn] as f32);
            }
            all_adv.extend(m.tokens.iter().map(|(_, a)| *a));
        }
        assert_eq!(all_ids, good_ids, "the pieces come from the sampled ids");
        let trained: Vec<f32> =
            advantages.iter().zip(&good.response_mask).filter(|(_, m)| **m == 1).map(|(a, _)| *a).collect();
        assert_eq!(all_adv, trained);
        // R2G credits [0.8, 1.0]: the later turn gets more.
        assert!(shaped[0].turn_advantages[1] > shaped[0].turn_advantages[0]);
        assert_eq!(r.reward, 0.8);
        assert!(r.advantage > 0.0);
        assert_eq!(r.turn_rewards, vec![0.0, 1.0]);
        assert_eq!(r.termination, "terminated");

        // The failed rollout: one assistant turn without a tool call, no tool message.
        let r = record(&bad, &tok, RecordScores::default(), &vec![0.0; bad.tokens.len()]).unwrap();
        assert_eq!(r.messages.len(), 3);
        assert_eq!(r.messages[2].text, "no idea<|im_end|>");
        assert_eq!(r.termination, "no_tool_call");
    }
}
