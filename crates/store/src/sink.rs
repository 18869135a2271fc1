//! The training event sink backed by the store. `emit` runs on the training thread and only enqueues (an
//! unbounded channel, no I/O, no lock held across a write); a writer task on the given runtime collects
//! events for up to [`BATCH_WINDOW`] or [`MAX_BATCH`] events, writes them in one transaction and publishes
//! the store events after the commit. `flush` (async) or `flush_blocking` (from a plain thread) returns once
//! everything emitted before it is committed, and reports events that could not be stored.
//!
//! A batch that fails because the database is busy is retried with backoff for up to [`crate::RETRY_FOR`];
//! a batch the database refuses is written again one entry at a time, so a single bad entry cannot take its
//! neighbours with it. Dropping the sink lets the writer drain what is queued (as long as the runtime lives).

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use userrl_rl::events::{Event, EventSink};

use crate::transcripts::Summary;
use crate::write::{Entry, transient_db};
use crate::{RunStatus, Store, StoreError, now_ms};

/// How long the writer waits for more events before writing a batch.
pub const BATCH_WINDOW: Duration = Duration::from_millis(200);
/// Most events in one transaction.
pub const MAX_BATCH: usize = 500;

enum Msg {
    Event(Event, i64),
    Flush(oneshot::Sender<Result<(), StoreError>>),
}

/// Failures since the last flush.
#[derive(Default)]
struct Failures {
    first: Option<String>,
    lost: u64,
}

/// Writes one run's training events to the store (see the module docs).
pub struct StoreSink {
    run_id: i64,
    tx: mpsc::UnboundedSender<Msg>,
}

impl StoreSink {
    /// Starts the writer for run `run_id` on `handle`.
    pub fn new(store: Store, run_id: i64, handle: tokio::runtime::Handle) -> StoreSink {
        let (tx, rx) = mpsc::unbounded_channel();
        handle.spawn(writer(store, run_id, rx));
        StoreSink { run_id, tx }
    }

    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    /// Waits until every event emitted before this call is committed. Errors if some could not be stored
    /// since the previous flush (they are counted in the message) or the writer is gone.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Flush(tx)).map_err(|_| StoreError::Sink("the writer has stopped".into()))?;
        rx.await.map_err(|_| StoreError::Sink("the writer stopped before flushing".into()))?
    }

    /// `flush` for a thread outside the async runtime (the training thread). Inside the runtime it refuses
    /// (blocking there could deadlock the writer) with an error.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(StoreError::Sink("flush_blocking called inside the async runtime: use flush().await".into()));
        }
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Flush(tx)).map_err(|_| StoreError::Sink("the writer has stopped".into()))?;
        rx.blocking_recv().map_err(|_| StoreError::Sink("the writer stopped before flushing".into()))?
    }
}

impl EventSink for StoreSink {
    fn emit(&self, event: &Event) -> std::io::Result<()> {
        self.tx
            .send(Msg::Event(event.clone(), now_ms()))
            .map_err(|_| std::io::Error::other("the store sink's writer has stopped"))
    }
}

/// The trainer's status names, and a few common spellings, as run statuses.
pub fn status_from_name(name: &str) -> Option<RunStatus> {
    let name = name.trim().to_ascii_lowercase();
    RunStatus::parse(&name).or(match name.as_str() {
        "started" | "resumed" => Some(RunStatus::Running),
        "done" | "complete" | "completed" | "success" | "succeeded" => Some(RunStatus::Finished),
        "error" | "errored" | "failure" => Some(RunStatus::Failed),
        "canceled" | "stopped" => Some(RunStatus::Cancelled),
        _ => None,
    })
}

fn step_of(step: u64) -> i64 {
    i64::try_from(step).unwrap_or(i64::MAX)
}

fn entry_of(run_id: i64, event: Event, wall_time: i64) -> Option<Entry> {
    Some(match event {
        Event::Metrics { step, values } => Entry::Metrics { run_id, step: step_of(step), wall_time, values },
        Event::Transcript { step, group, sample, validate, record } => {
            let summary = Summary::of(&record);
            Entry::Transcript {
                run_id,
                step: step_of(step),
                group: i64::from(group),
                sample: i64::from(sample),
                validate,
                record: record.to_string(),
                summary,
            }
        }
        Event::Checkpoint { step, path } => Entry::Checkpoint { run_id, step: step_of(step), path },
        Event::Progress { phase, step, total } => {
            Entry::Progress { run_id, phase, step: step_of(step), total: step_of(total) }
        }
        Event::Status { status, message } => match status_from_name(&status) {
            Some(status) => Entry::Status { run_id, status, message },
            None => {
                tracing::warn!(run_id, status, "store sink: unknown run status name, ignored");
                return None;
            }
        },
    })
}

/// Files one message; true when it asks for a flush.
fn take(
    run_id: i64,
    msg: Msg,
    entries: &mut Vec<Entry>,
    flushes: &mut Vec<oneshot::Sender<Result<(), StoreError>>>,
) -> bool {
    match msg {
        Msg::Event(event, wall_time) => {
            entries.extend(entry_of(run_id, event, wall_time));
            false
        }
        Msg::Flush(reply) => {
            flushes.push(reply);
            true
        }
    }
}

async fn writer(store: Store, run_id: i64, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut failures = Failures::default();
    let mut open = true;
    while open {
        let Some(first) = rx.recv().await else { break };
        let mut entries = Vec::new();
        let mut flushes = Vec::new();
        let mut flush_now = take(run_id, first, &mut entries, &mut flushes);
        let deadline = Instant::now() + BATCH_WINDOW;
        // Collect until the window closes, the batch is full, or someone waits for a flush.
        while !flush_now && entries.len() < MAX_BATCH {
            let msg = match rx.try_recv() {
                Ok(msg) => Some(msg),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) => tokio::select! {
                    msg = rx.recv() => msg,
                    _ = tokio::time::sleep_until(deadline) => break,
                },
            };
            match msg {
                Some(msg) => flush_now = take(run_id, msg, &mut entries, &mut flushes),
                None => {
                    open = false;
                    break;
                }
            }
        }
        write(&store, &entries, &mut failures).await;
        if !flushes.is_empty() {
            // Everything before these flush requests is now written (or counted as lost).
            let failure = failures.first.take().map(|first| {
                let lost = std::mem::take(&mut failures.lost);
                format!("{lost} event(s) of run {run_id} could not be stored; first error: {first}")
            });
            for reply in flushes {
                let _ = reply.send(failure.clone().map_or(Ok(()), |m| Err(StoreError::Sink(m))));
            }
        }
    }
}

async fn write(store: &Store, entries: &[Entry], failures: &mut Failures) {
    if entries.is_empty() {
        return;
    }
    let err = match store.write(entries).await {
        Ok(_) => return,
        Err(err) => err,
    };
    // Only a statement the database refused can be one entry's fault; anything else (unreachable server, pool
    // timeout) would fail the same way entry by entry.
    let refused = matches!(&err, StoreError::Db(sqlx::Error::Database(db)) if !transient_db(db.as_ref()));
    if entries.len() == 1 || !refused {
        failures.record(&err, entries.len() as u64);
        return;
    }
    tracing::warn!(error = %err, entries = entries.len(), "store sink: batch failed, writing its entries one by one");
    for entry in entries {
        if let Err(err) = store.write(std::slice::from_ref(entry)).await {
            failures.record(&err, 1);
        }
    }
}

impl Failures {
    fn record(&mut self, err: &StoreError, lost: u64) {
        tracing::error!(error = %err, lost, "store sink: events could not be stored");
        self.first.get_or_insert_with(|| err.to_string());
        self.lost += lost;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainer_status_names_map_to_run_statuses() {
        assert_eq!(status_from_name("running"), Some(RunStatus::Running));
        assert_eq!(status_from_name("finished"), Some(RunStatus::Finished));
        assert_eq!(status_from_name("Done"), Some(RunStatus::Finished));
        assert_eq!(status_from_name("failed"), Some(RunStatus::Failed));
        assert_eq!(status_from_name("canceled"), Some(RunStatus::Cancelled));
        assert_eq!(status_from_name("what"), None);
    }
}
