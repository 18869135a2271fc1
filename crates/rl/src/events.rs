//! Where a run's numbers go: an event sink receives metrics (TRL's names, plus multi-turn ones), transcripts
//! (keyed by run, step, group, sample and whether it was validation) and checkpoint notices. The JSONL sink
//! writes one event per line and flushes per call, so a killed process loses at most the line being written;
//! the database sink comes with the web app.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

/// One event of a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Metrics {
        step: u64,
        values: Vec<(String, f64)>,
    },
    Transcript {
        step: u64,
        group: u32,
        sample: u32,
        validate: bool,
        record: serde_json::Value,
    },
    Checkpoint {
        step: u64,
        path: String,
    },
    Status {
        status: String,
        message: String,
    },
    /// Where the run stands within its current phase (`sft`, `grpo` or `eval`): `step` of that phase's own
    /// `total` steps done (0 when unknown). Phases count their steps separately, so a metric's step alone
    /// cannot say this.
    Progress {
        phase: String,
        step: u64,
        total: u64,
    },
}

pub trait EventSink: Send + Sync {
    fn emit(&self, event: &Event) -> std::io::Result<()>;
}

/// Appends events as JSON lines to a file.
pub struct JsonlSink {
    file: Mutex<std::io::BufWriter<std::fs::File>>,
}

impl JsonlSink {
    pub fn append(path: &Path) -> std::io::Result<JsonlSink> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(JsonlSink { file: Mutex::new(std::io::BufWriter::new(file)) })
    }
}

impl EventSink for JsonlSink {
    fn emit(&self, event: &Event) -> std::io::Result<()> {
        let line = serde_json::to_string(event).map_err(std::io::Error::other)?;
        let mut file = self.file.lock().map_err(|_| std::io::Error::other("event sink lock poisoned"))?;
        writeln!(file, "{line}")?;
        file.flush()
    }
}

/// Keeps events in memory (for tests and for callers that forward them elsewhere).
#[derive(Default)]
pub struct MemorySink {
    pub events: Mutex<Vec<Event>>,
}

impl EventSink for MemorySink {
    fn emit(&self, event: &Event) -> std::io::Result<()> {
        self.events.lock().map_err(|_| std::io::Error::other("event sink lock poisoned"))?.push(event.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_sink_appends_one_line_per_event() {
        let dir = std::env::temp_dir().join(format!("userrl-events-{}", std::process::id()));
        let path = dir.join("events.jsonl");
        let _ = std::fs::remove_file(&path);
        let sink = JsonlSink::append(&path).unwrap();
        sink.emit(&Event::Metrics { step: 1, values: vec![("reward".into(), 0.5)] }).unwrap();
        sink.emit(&Event::Checkpoint { step: 1, path: "runs/x/step-1".into() }).unwrap();
        drop(sink);
        let again = JsonlSink::append(&path).unwrap();
        again.emit(&Event::Status { status: "done".into(), message: String::new() }).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["event"], "metrics");
        assert_eq!(lines[0]["values"][0][0], "reward");
        assert_eq!(lines[2]["status"], "done");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
