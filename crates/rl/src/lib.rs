//! userrl-rl: what turns gym episodes into training signal: multi-turn rollouts of a policy model
//! (token-in/token-out), UserRL's reward shaping (trajectory scores, turn credits, group-normalised advantages
//! spread over policy tokens) and SFT cold-start data. The GRPO update, the run config and the training loop
//! follow (issue #4).

pub mod config;
pub mod events;
pub mod kl;
pub mod learner;
pub mod resume;
pub mod rollout;
pub mod sft_data;
pub mod shaping;
pub mod train;
pub mod transcript;
