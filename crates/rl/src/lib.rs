//! userrl-rl: what turns gym episodes into training signal. Today: UserRL's reward shaping (trajectory
//! scores, turn credits, group-normalised advantages spread over policy tokens). The rollout engine, GRPO
//! update, SFT and the run config follow (issue #4).

pub mod sft_data;
pub mod shaping;
