//! Types the pages and the server exchange beyond the store's rows (server-function payloads and the live
//! event stream), and the small formatting helpers both sides use, so SSR and hydration print the same text.

use serde::{Deserialize, Serialize};
use userrl_types::{CheckpointRow, RolloutHealth, RunRow, RunStatus, TranscriptRecord, TranscriptSummary};

/// What the run page loads in one round trip.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub run: RunRow,
    /// Metric keys the run has logged, sorted.
    pub keys: Vec<String>,
    pub checkpoints: Vec<CheckpointFiles>,
    pub health: RolloutHealth,
    /// Server clock (Unix ms) when this was read, so a running run's duration renders the same on both sides.
    pub now: i64,
}

/// A checkpoint and the files one can download from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointFiles {
    pub checkpoint: CheckpointRow,
    /// (file name, size in bytes); empty when the checkpoint's path no longer exists.
    pub files: Vec<(String, u64)>,
}

/// The runs table with the server's clock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunList {
    pub runs: Vec<RunRow>,
    pub now: i64,
}

/// Transcript list filters (the page's query string).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TranscriptQuery {
    pub gym: Option<String>,
    pub step: Option<i64>,
    pub min_reward: Option<f64>,
    pub max_reward: Option<f64>,
    pub termination: Option<String>,
    pub validate: Option<bool>,
    pub offset: i64,
}

/// Rows per transcript page.
pub const TRANSCRIPT_PAGE: i64 = 50;

/// One transcript with its list row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TranscriptView {
    pub summary: TranscriptSummary,
    pub record: TranscriptRecord,
}

/// What launching a run from the "New run" form gives: the new run, or the config's first error with the
/// TOML key it is about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LaunchOutcome {
    Launched(i64),
    Invalid { field: Option<String>, message: String },
}

/// One message of `/api/runs/{id}/live[?compare=2,3]` (Server-Sent Events, JSON in `data`). All but
/// `Compared` are about the page's own run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LiveEvent {
    Metrics {
        step: i64,
        values: Vec<(String, f64)>,
    },
    Status {
        status: RunStatus,
        message: String,
    },
    Transcript {
        step: i64,
    },
    Checkpoint {
        step: i64,
    },
    /// `step` of the `total` steps of the run's current `phase` are done.
    Progress {
        phase: String,
        step: i64,
        total: i64,
    },
    /// New points of a run the page compares with its own.
    Compared {
        run_id: i64,
        step: i64,
        values: Vec<(String, f64)>,
    },
}

/// Progress within a phase, as the run header and the runs table show it: `SFT 140 / 150`, `GRPO 3 / 24`,
/// `eval 2 / 8` (`eval` when the total is unknown).
pub fn phase_progress(phase: &str, step: i64, total: i64) -> String {
    let name = match phase {
        "sft" => "SFT",
        "grpo" => "GRPO",
        other => other,
    };
    if total > 0 {
        format!("{name} {step} / {total}")
    } else if step > 0 {
        format!("{name} {step}")
    } else {
        name.to_string()
    }
}

/// A run's progress: its phase's own count when the run reports phases, else its last logged step against
/// the planned total (older runs, and runs written by other tools).
pub fn run_progress(run: &RunRow) -> String {
    if !run.phase.is_empty() {
        phase_progress(&run.phase, run.phase_step, run.phase_total)
    } else if run.total_steps > 0 {
        format!("{} / {}", run.step, run.total_steps)
    } else {
        run.step.to_string()
    }
}

/// The name a checkpoint goes by (its folder or file name: `step-00012`, `final`), as `/chat?checkpoint=`
/// takes it.
pub fn checkpoint_name(path: &str) -> &str {
    path.trim_end_matches(['/', '\\']).rsplit(['/', '\\']).next().unwrap_or(path)
}

/// `2026-11-25 22:03` (UTC) from Unix milliseconds.
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}", of_day / 3600, (of_day % 3600) / 60)
}

/// Proleptic Gregorian date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `1h 02m`, `3m 07s`, `12s` from milliseconds.
pub fn format_duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// How long a run has been going (or went): start to finish, or start to `now` while it runs.
pub fn run_duration(run: &RunRow, now: i64) -> Option<i64> {
    let start = run.started_at?;
    Some(run.finished_at.unwrap_or(now) - start)
}

/// A number for a table cell: 4 significant digits, no trailing noise.
pub fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e6).contains(&a) {
        format!("{v:.3e}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.4}")
    }
}

/// Human file size.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_format() {
        assert_eq!(format_time(0), "1970-01-01 00:00");
        // 2026-11-25 22:03:44 UTC
        assert_eq!(format_time(1_795_644_224_000), "2026-11-25 22:03");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00");
        assert_eq!(format_duration(12_500), "12s");
        assert_eq!(format_duration(187_000), "3m 07s");
        assert_eq!(format_duration(3_720_000), "1h 02m");
        assert_eq!(format_duration(-5), "0s");
    }

    #[test]
    fn values_and_sizes_format() {
        assert_eq!(format_value(0.5), "0.5000");
        assert_eq!(format_value(1234.5), "1234.5");
        assert_eq!(format_value(0.00001), "1.000e-5");
        assert_eq!(format_value(0.0), "0.0000");
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
    }

    fn run(phase: &str, phase_step: i64, phase_total: i64, step: i64, total_steps: i64) -> RunRow {
        RunRow {
            id: 1,
            name: "r".into(),
            kind: userrl_types::RunKind::Train,
            status: RunStatus::Running,
            config: String::new(),
            gyms: vec![],
            model: String::new(),
            device: String::new(),
            step,
            total_steps,
            latest_reward: None,
            created_at: 0,
            started_at: None,
            finished_at: None,
            message: String::new(),
            phase: phase.into(),
            phase_step,
            phase_total,
        }
    }

    #[test]
    fn progress_counts_each_phase_against_its_own_total() {
        // During SFT the largest logged step is an SFT step: never shown against the GRPO total.
        assert_eq!(run_progress(&run("sft", 140, 150, 139, 24)), "SFT 140 / 150");
        assert_eq!(run_progress(&run("grpo", 3, 24, 149, 24)), "GRPO 3 / 24");
        assert_eq!(run_progress(&run("eval", 2, 8, 149, 24)), "eval 2 / 8");
        assert_eq!(run_progress(&run("eval", 0, 0, 149, 24)), "eval");
        assert_eq!(run_progress(&run("", 0, 0, 7, 10)), "7 / 10");
        assert_eq!(run_progress(&run("", 0, 0, 7, 0)), "7");
    }

    #[test]
    fn checkpoint_names_are_their_last_path_part() {
        assert_eq!(checkpoint_name("runs/3/step-00012"), "step-00012");
        assert_eq!(checkpoint_name("runs/3/final/"), "final");
        assert_eq!(checkpoint_name("model.gguf"), "model.gguf");
    }

    #[test]
    fn live_events_are_tagged_json() {
        let e = LiveEvent::Metrics { step: 3, values: vec![("reward".into(), 0.25)] };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, r#"{"type":"metrics","step":3,"values":[["reward",0.25]]}"#);
        assert_eq!(serde_json::from_str::<LiveEvent>(&json).unwrap(), e);
    }
}
