//! The data that crosses crate and process boundaries: what the trainer writes (transcript records), what
//! the store keeps (run, metric, transcript, checkpoint and eval rows) and what the web app shows. Serde
//! only, so the same types compile into the server and into the browser's WASM bundle.

use serde::{Deserialize, Serialize};

pub mod chat;
pub mod human;
pub mod study;

/// JSON has no NaN: serde_json writes NaN (and infinities) as `null`. Number fields that can be NaN (a diverged
/// loss, an unknown reward) read `null` back as NaN, so one such value cannot make a whole response unreadable.
pub(crate) fn nan_if_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// Lifecycle of a training or evaluation run. Stored as its `as_str` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Running,
    Finished,
    Failed,
    Cancelled,
    /// The process died (or was restarted) while the run was going; it can be resumed.
    Interrupted,
}

impl RunStatus {
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Finished,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Finished => "finished",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(name: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the run can still change on its own.
    pub fn is_live(self) -> bool {
        matches!(self, RunStatus::Queued | RunStatus::Running)
    }
}

/// What kind of job a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    Train,
    Eval,
}

/// One row of the runs table. Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRow {
    pub id: i64,
    pub name: String,
    pub kind: RunKind,
    pub status: RunStatus,
    /// The run config as submitted (TOML).
    pub config: String,
    pub gyms: Vec<String>,
    pub model: String,
    pub device: String,
    /// Last step with a logged metric, and the planned total (0 when unknown).
    pub step: i64,
    pub total_steps: i64,
    /// Latest value of the `reward` metric.
    pub latest_reward: Option<f64>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Error or status detail (empty when none).
    pub message: String,
    /// The phase the run is in (or ended in): `sft`, `grpo`, `eval`, or empty when the run never said; with
    /// the steps of that phase done and its own total (0 when unknown). `step`/`total_steps` above mix the
    /// phases (SFT steps against the GRPO total), so progress is shown from these.
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub phase_step: i64,
    #[serde(default)]
    pub phase_total: i64,
}

/// One logged value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub step: i64,
    /// Unix milliseconds when it was logged.
    pub wall_time: i64,
    #[serde(deserialize_with = "nan_if_null")]
    pub value: f64,
}

/// A run of consecutive points summarised for drawing: a chart asks for as many buckets as it has pixels,
/// so a million points cost no more to draw than a hundred.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricBucket {
    pub first_step: i64,
    pub last_step: i64,
    #[serde(deserialize_with = "nan_if_null")]
    pub min: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub max: f64,
    /// The value at `last_step`.
    #[serde(deserialize_with = "nan_if_null")]
    pub last: f64,
    pub count: i64,
}

/// A metric of one run, bucketed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSeries {
    pub run_id: i64,
    pub key: String,
    pub buckets: Vec<MetricBucket>,
}

/// A saved checkpoint of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointRow {
    pub id: i64,
    pub run_id: i64,
    pub step: i64,
    pub path: String,
    pub created_at: i64,
}

/// One score of an evaluation: a model on one gym with one kind of user over one split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    pub id: i64,
    /// The run that produced it, if any (a training run's final eval, or an eval run).
    pub run_id: Option<i64>,
    /// What was evaluated: a checkpoint path, a GGUF, `openai:URL#model`, `expert`, `random`.
    pub model: String,
    pub gym: String,
    /// `scripted`, `llm` or `human`.
    pub user_kind: String,
    pub split: String,
    pub episodes: i64,
    /// Mean paper score (reference §9) and mean normalised score in [0, 1].
    #[serde(deserialize_with = "nan_if_null")]
    pub mean_score: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub normalized: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub success_rate: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub mean_turns: f64,
    pub created_at: i64,
}

/// The list view of a transcript (no messages).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TranscriptSummary {
    pub id: i64,
    pub run_id: i64,
    pub step: i64,
    /// GRPO group within the step, and the sample within the group.
    pub group: i64,
    pub sample: i64,
    /// True for evaluation episodes, false for training rollouts.
    pub validate: bool,
    pub gym: String,
    pub task_id: String,
    /// Trajectory score as the run scored it (the GRPO reward) and the paper's normalised score.
    #[serde(deserialize_with = "nan_if_null")]
    pub reward: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub normalized: f64,
    pub success: bool,
    pub termination: String,
    pub turns: i64,
}

/// A transcript as the trainer writes it: an episode's messages with per-turn rewards and, on the policy's
/// own tokens, the advantage each token was trained with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TranscriptRecord {
    pub gym: String,
    pub task_id: String,
    /// The trajectory score used for the group advantage (Sum or R2G, as configured).
    #[serde(deserialize_with = "nan_if_null")]
    pub reward: f64,
    /// The paper's score, normalised score and whether the task was solved.
    #[serde(deserialize_with = "nan_if_null")]
    pub score: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub normalized: f64,
    pub success: bool,
    pub termination: String,
    /// The group-normalised trajectory advantage (0 for evaluation episodes).
    #[serde(deserialize_with = "nan_if_null")]
    pub advantage: f64,
    pub turn_rewards: Vec<f64>,
    pub messages: Vec<TranscriptMessage>,
}

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    System,
    /// The user's opening message and the user's replies.
    User,
    Assistant,
    /// The tool response (the gym's feedback, with the reward line in training).
    Tool,
}

/// One message. Assistant messages carry their sampled tokens as `tokens` (decoded text piece, advantage),
/// so the UI can tint each token; `text` always holds the whole message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TranscriptMessage {
    pub speaker: Speaker,
    pub text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<(String, f32)>,
    /// The reward of the turn this assistant message made (absent on other messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<f64>,
}

/// Episodes a run's rollout-health panel counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutHealth {
    /// Groups whose rewards were all equal (no gradient), over all groups.
    pub zero_variance_groups: i64,
    pub groups: i64,
    /// Turns without a parseable tool call, and episodes that hit a token limit.
    pub parse_failures: i64,
    pub length_truncations: i64,
    /// Episodes that ended because the agent or its user failed (timeouts, dead endpoints).
    pub stuck_episodes: i64,
    pub episodes: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_round_trip() {
        for status in RunStatus::ALL {
            assert_eq!(RunStatus::parse(status.as_str()), Some(status));
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert_eq!(RunStatus::parse("nope"), None);
    }

    #[test]
    fn nan_numbers_survive_json() {
        let bucket = MetricBucket { first_step: 1, last_step: 2, min: f64::NAN, max: 1.0, last: f64::NAN, count: 2 };
        let json = serde_json::to_string(&bucket).unwrap();
        assert!(json.contains("\"min\":null"), "{json}");
        let back: MetricBucket = serde_json::from_str(&json).unwrap();
        assert!(back.min.is_nan() && back.last.is_nan());
        assert_eq!((back.max, back.count), (1.0, 2));
        let record: TranscriptRecord = serde_json::from_str(
            r#"{"gym":"g","task_id":"t","reward":null,"score":1,"normalized":0.5,"success":false,"termination":"",
                "advantage":null,"turn_rewards":[],"messages":[]}"#,
        )
        .unwrap();
        assert!(record.reward.is_nan() && record.advantage.is_nan());
    }

    #[test]
    fn transcript_record_round_trips_and_omits_empty_fields() {
        let record = TranscriptRecord {
            gym: "intention".into(),
            task_id: "t1".into(),
            reward: 0.5,
            messages: vec![
                TranscriptMessage { speaker: Speaker::User, text: "hi".into(), tokens: vec![], reward: None },
                TranscriptMessage {
                    speaker: Speaker::Assistant,
                    text: "ab".into(),
                    tokens: vec![("a".into(), 0.5), ("b".into(), -0.25)],
                    reward: Some(0.1),
                },
            ],
            ..Default::default()
        };
        let json = serde_json::to_value(&record).unwrap();
        assert!(json["messages"][0].get("tokens").is_none());
        assert_eq!(json["messages"][1]["tokens"][1][1], -0.25);
        let back: TranscriptRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }
}
