//! Continuous batching: one engine thread owns the model and runs every live sequence together. Each
//! iteration prefills newly joined sequences (in chunks, so a long prompt cannot stall the others for long) in
//! one batched forward, then decodes one token for every decoding sequence in a second batched forward
//! (`batch::forward_last_batch`: one set of matmuls for all rows, attention per sequence over its own cache).
//! Sequences join at any time and leave when done or when their receiver is dropped (a client that went away).
//! A [`Session`] keeps its KV cache between generations, so a multi-turn episode appends the user's or tool's
//! turn and continues without recomputing the prefix.
//!
//! Sampling is `generate`'s (same seeded RNG, same log-probs), and a sequence's rows go through the same kernels
//! as `generate` would run them, so a greedy sequence gives the same tokens alone or in a batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;

use rayon::prelude::*;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::batch::{SeqCache, forward_last_batch};
use crate::generate::{Generation, Rng, Sampling, log_softmax_at, sample};
use crate::model::{Llama, LlamaConfig, ModelError};

/// What the engine needs from a model: per-sequence caches and a batched forward that returns each sequence's
/// last logits. The CPU [`Llama`] implements it; a GPU model can plug in the same way.
pub trait BatchModel: Send + Sync + 'static {
    /// A placeholder value (`Default`) lets the engine move caches in and out of the batch cheaply.
    type Cache: Default + Send + 'static;
    type Error: std::fmt::Display;
    fn config(&self) -> &LlamaConfig;
    fn new_cache(&self) -> Self::Cache;
    fn cache_len(cache: &Self::Cache) -> usize;
    /// Runs `tokens[i]` after `caches[i]` for every `i`; returns `[sequences, vocab]` last-position logits.
    fn forward_last_batch(&self, tokens: &[&[u32]], caches: &mut [Self::Cache]) -> Result<Vec<f32>, Self::Error>;
}

impl BatchModel for Llama {
    type Cache = SeqCache;
    type Error = ModelError;
    fn config(&self) -> &LlamaConfig {
        &self.config
    }
    fn new_cache(&self) -> SeqCache {
        SeqCache::new(self)
    }
    fn cache_len(cache: &SeqCache) -> usize {
        cache.len
    }
    fn forward_last_batch(&self, tokens: &[&[u32]], caches: &mut [SeqCache]) -> Result<Vec<f32>, ModelError> {
        forward_last_batch(self, tokens, caches)
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("empty prompt: nothing to generate from")]
    EmptyPrompt,
    #[error("the sequence would reach {len} tokens, past the context of {context}")]
    ContextOverflow { len: usize, context: usize },
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
    #[error("this session is still generating: wait for its final event before continuing")]
    SessionBusy,
    #[error("this session has no cache to continue (its last generation failed or was cancelled)")]
    SessionGone,
    #[error("the generation engine has stopped")]
    Stopped,
    #[error("could not start the engine thread: {0}")]
    Spawn(String),
    #[error("the model failed: {0}")]
    Model(String),
}

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was sampled (it is the last token streamed).
    Stop,
    /// The token budget or the model's context was reached.
    Length,
    /// The engine shut down first.
    Cancelled,
}

/// One item of a sequence's output stream. `Finished` or `Failed` is always the last.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A sampled token and its log-probability under the untempered model.
    Token {
        id: u32,
        logprob: f32,
    },
    Finished(FinishReason),
    Failed(EngineError),
}

/// What to generate from: a prompt (or, for a session that already generated, the tokens to append), the
/// stop ids and the sampling settings (`max_new_tokens` included).
#[derive(Clone, Debug, Default)]
pub struct Request {
    pub tokens: Vec<u32>,
    pub stop: Vec<u32>,
    pub sampling: Sampling,
    /// Restricts which tokens may be sampled (e.g. to valid JSON); the sequence stops when it is satisfied.
    pub constraint: Option<Box<dyn Constraint>>,
}

/// A rule over the sampled tokens, applied before each sample (constrained decoding).
pub trait Constraint: Send + 'static {
    /// Sets the logits of tokens that may not come next to `-inf`; false when no token may come next.
    fn mask(&self, logits: &mut [f32]) -> bool;
    /// Takes the sampled token; true when the constrained text is complete (the sequence then stops).
    fn advance(&mut self, token: u32) -> bool;
    fn boxed_clone(&self) -> Box<dyn Constraint>;
}

impl Clone for Box<dyn Constraint> {
    fn clone(&self) -> Self {
        self.boxed_clone()
    }
}

impl std::fmt::Debug for dyn Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Constraint")
    }
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences decoding at once; later ones wait in arrival order.
    pub max_active: usize,
    /// Prompt tokens prefilled per iteration across all joining sequences (at least 1).
    pub prefill_chunk: usize,
    /// Decoding sequences per batched forward. Up to `skinny::MAX_ROWS` (32) rows the CPU matmuls take the few-row kernel, which
    /// beats the packing sgemm there (and keeps each row's arithmetic identical to a lone `generate`).
    pub decode_rows: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { max_active: 64, prefill_chunk: 512, decode_rows: crate::skinny::MAX_ROWS }
    }
}

/// Counters the engine keeps up to date (for tests, benchmarks and the server's status).
#[derive(Debug, Default)]
pub struct EngineStats {
    pub active: AtomicUsize,
    pub waiting: AtomicUsize,
    /// Sessions holding a cache between generations.
    pub parked: AtomicUsize,
    pub tokens_generated: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub iterations: AtomicU64,
}

/// A sequence's output: events as they are sampled. Dropping it cancels the sequence.
pub struct Stream {
    rx: UnboundedReceiver<Event>,
    done: bool,
}

impl Stream {
    fn close_event(&mut self, event: Option<Event>) -> Option<Event> {
        if self.done {
            return None;
        }
        let event = event.unwrap_or(Event::Failed(EngineError::Stopped));
        self.done = matches!(event, Event::Finished(_) | Event::Failed(_));
        Some(event)
    }

    /// The next event; `None` after the final one.
    pub async fn next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let event = self.rx.recv().await;
        self.close_event(event)
    }

    /// [`Stream::next`] for threads outside an async runtime.
    pub fn blocking_next(&mut self) -> Option<Event> {
        if self.done {
            return None;
        }
        let event = self.rx.blocking_recv();
        self.close_event(event)
    }

    /// Waits for the whole generation (outside an async runtime).
    pub fn wait(mut self) -> Result<(Generation, FinishReason), EngineError> {
        let mut out = Generation { tokens: Vec::new(), logprobs: Vec::new(), stopped: false };
        while let Some(event) = self.blocking_next() {
            if let Some(reason) = gather(&mut out, event)? {
                return Ok((out, reason));
            }
        }
        Err(EngineError::Stopped)
    }

    /// Waits for the whole generation (inside an async runtime).
    pub async fn collect(mut self) -> Result<(Generation, FinishReason), EngineError> {
        let mut out = Generation { tokens: Vec::new(), logprobs: Vec::new(), stopped: false };
        while let Some(event) = self.next().await {
            if let Some(reason) = gather(&mut out, event)? {
                return Ok((out, reason));
            }
        }
        Err(EngineError::Stopped)
    }
}

fn gather(out: &mut Generation, event: Event) -> Result<Option<FinishReason>, EngineError> {
    match event {
        Event::Token { id, logprob } => {
            out.tokens.push(id);
            out.logprobs.push(logprob);
            Ok(None)
        }
        Event::Finished(reason) => {
            out.stopped = reason == FinishReason::Stop;
            Ok(Some(reason))
        }
        Event::Failed(e) => Err(e),
    }
}

enum Command {
    Start { session: Option<(u64, bool)>, request: Request, events: UnboundedSender<Event> },
    DropSession(u64),
    Shutdown,
}

/// The handle to a running engine. Dropping it stops the engine thread (live sequences end `Cancelled`).
pub struct Engine<M: BatchModel> {
    model: Arc<M>,
    commands: mpsc::Sender<Command>,
    stats: Arc<EngineStats>,
    next_session: AtomicU64,
}

impl<M: BatchModel> Engine<M> {
    pub fn new(model: Arc<M>, config: EngineConfig) -> Result<Engine<M>, EngineError> {
        let (commands, inbox) = mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        let worker = Worker {
            model: model.clone(),
            config: EngineConfig {
                max_active: config.max_active.max(1),
                prefill_chunk: config.prefill_chunk.max(1),
                decode_rows: config.decode_rows.max(1),
            },
            inbox,
            stats: stats.clone(),
            active: Vec::new(),
            waiting: Vec::new(),
            parked: HashMap::new(),
            stopping: false,
        };
        std::thread::Builder::new()
            .name("userrl-engine".into())
            .spawn(move || worker.run())
            .map_err(|e| EngineError::Spawn(e.to_string()))?;
        Ok(Engine { model, commands, stats, next_session: AtomicU64::new(1) })
    }

    pub fn model(&self) -> &Arc<M> {
        &self.model
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Starts a sequence from a prompt; its tokens stream out of the returned [`Stream`].
    pub fn generate(&self, request: Request) -> Result<Stream, EngineError> {
        validate_prompt(self.model.config(), &request.tokens)?;
        send(&self.commands, None, request)
    }

    /// A sequence that keeps its KV cache between generations (a multi-turn conversation).
    pub fn session(&self) -> Session {
        Session {
            commands: self.commands.clone(),
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            started: false,
            config: self.model.config().clone(),
        }
    }
}

impl<M: BatchModel> Drop for Engine<M> {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}

fn send(
    commands: &mpsc::Sender<Command>,
    session: Option<(u64, bool)>,
    request: Request,
) -> Result<Stream, EngineError> {
    let (events, rx) = unbounded_channel();
    commands.send(Command::Start { session, request, events }).map_err(|_| EngineError::Stopped)?;
    Ok(Stream { rx, done: false })
}

fn validate_prompt(config: &LlamaConfig, tokens: &[u32]) -> Result<(), EngineError> {
    if tokens.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    if tokens.len() > config.context {
        return Err(EngineError::ContextOverflow { len: tokens.len(), context: config.context });
    }
    check_ids(config, tokens)
}

fn check_ids(config: &LlamaConfig, tokens: &[u32]) -> Result<(), EngineError> {
    match tokens.iter().find(|&&id| id as usize >= config.vocab) {
        Some(&id) => Err(EngineError::BadToken { id, vocab: config.vocab }),
        None => Ok(()),
    }
}

/// A conversation whose cache the engine keeps until the handle is dropped. The first [`Session::generate`]
/// takes the prompt; each later one takes only the tokens that follow what was generated (a user or tool
/// turn): the last sampled token and these are run on top of the kept cache.
pub struct Session {
    commands: mpsc::Sender<Command>,
    id: u64,
    started: bool,
    config: LlamaConfig,
}

impl Session {
    pub fn generate(&mut self, request: Request) -> Result<Stream, EngineError> {
        if self.started {
            check_ids(&self.config, &request.tokens)?;
        } else {
            validate_prompt(&self.config, &request.tokens)?;
        }
        let stream = send(&self.commands, Some((self.id, self.started)), request)?;
        self.started = true;
        Ok(stream)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::DropSession(self.id));
    }
}

/// A kept cache and the last sampled token, which it does not hold yet.
struct Parked<C> {
    cache: C,
    pending: Option<u32>,
}

struct Seq<C> {
    session: Option<u64>,
    cache: C,
    /// Tokens still to prefill.
    feed: Vec<u32>,
    /// The last sampled token, to run next.
    pending: Option<u32>,
    stop: Vec<u32>,
    sampling: Sampling,
    rng: Rng,
    constraint: Option<Box<dyn Constraint>>,
    generated: usize,
    events: UnboundedSender<Event>,
    done: Option<Result<FinishReason, EngineError>>,
    /// Its logits row in the forward just run, while it is being sampled.
    row: Option<usize>,
}

struct Worker<M: BatchModel> {
    model: Arc<M>,
    config: EngineConfig,
    inbox: mpsc::Receiver<Command>,
    stats: Arc<EngineStats>,
    active: Vec<Seq<M::Cache>>,
    waiting: Vec<Seq<M::Cache>>,
    parked: HashMap<u64, Parked<M::Cache>>,
    stopping: bool,
}

impl<M: BatchModel> Worker<M> {
    fn run(mut self) {
        loop {
            if self.active.is_empty() && self.waiting.is_empty() && !self.stopping {
                match self.inbox.recv() {
                    Ok(command) => self.handle(command),
                    Err(_) => break,
                }
            }
            while let Ok(command) = self.inbox.try_recv() {
                self.handle(command);
            }
            if self.stopping {
                for mut seq in self.active.drain(..).chain(self.waiting.drain(..)) {
                    seq.done = Some(Ok(FinishReason::Cancelled));
                    let _ = seq.events.send(Event::Finished(FinishReason::Cancelled));
                }
                break;
            }
            // Receivers that went away: their sequences leave now (a session's cache goes with them).
            self.active.retain(|s| !s.events.is_closed());
            self.waiting.retain(|s| !s.events.is_closed());
            let room = self.config.max_active.saturating_sub(self.active.len()).min(self.waiting.len());
            self.active.extend(self.waiting.drain(..room));
            // The iteration runs on a pool thread: the forward's serial parts then run where its parallel
            // regions start, and each region wakes one other thread instead of handing the whole step across
            // (the engine thread would sleep and wake around every one of a step's ~150 matrix products).
            rayon::scope(|_| {
                self.prefill();
                self.finish();
                self.decode();
                self.finish();
            });
            self.stats.iterations.fetch_add(1, Ordering::Relaxed);
            self.publish();
        }
        self.publish();
    }

    fn publish(&self) {
        self.stats.active.store(self.active.len(), Ordering::Relaxed);
        self.stats.waiting.store(self.waiting.len(), Ordering::Relaxed);
        self.stats.parked.store(self.parked.len(), Ordering::Relaxed);
    }

    fn busy(&self, session: u64) -> bool {
        self.active.iter().chain(&self.waiting).any(|s| s.session == Some(session))
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Shutdown => self.stopping = true,
            Command::DropSession(id) => {
                self.parked.remove(&id);
                // A generation still running for it finishes for its stream but keeps no cache.
                for seq in self.active.iter_mut().chain(self.waiting.iter_mut()) {
                    if seq.session == Some(id) {
                        seq.session = None;
                    }
                }
            }
            Command::Start { session, request, events } => {
                let fail = |e: EngineError| {
                    let _ = events.send(Event::Failed(e));
                };
                let (cache, feed) = match session {
                    None | Some((_, false)) => (self.model.new_cache(), request.tokens),
                    Some((id, true)) => {
                        if self.busy(id) {
                            return fail(EngineError::SessionBusy);
                        }
                        let Some(parked) = self.parked.remove(&id) else {
                            return fail(EngineError::SessionGone);
                        };
                        let feed: Vec<u32> = parked.pending.into_iter().chain(request.tokens).collect();
                        let len = M::cache_len(&parked.cache) + feed.len();
                        let context = self.model.config().context;
                        if feed.is_empty() || len > context {
                            // Refused before touching the cache: the session can still continue.
                            self.parked.insert(id, parked);
                            return fail(if feed.is_empty() {
                                EngineError::EmptyPrompt
                            } else {
                                EngineError::ContextOverflow { len, context }
                            });
                        }
                        (parked.cache, feed)
                    }
                };
                self.stats.prompt_tokens.fetch_add(feed.len() as u64, Ordering::Relaxed);
                self.waiting.push(Seq {
                    session: session.map(|(id, _)| id),
                    cache,
                    feed,
                    pending: None,
                    stop: request.stop,
                    rng: Rng::seeded(request.sampling.seed),
                    sampling: request.sampling,
                    constraint: request.constraint,
                    generated: 0,
                    events,
                    done: None,
                    row: None,
                });
            }
        }
    }

    /// Runs the next prompt chunk of every joining sequence (up to `prefill_chunk` tokens in all, first come
    /// first served) in one forward; a sequence whose prompt is complete samples its first token.
    fn prefill(&mut self) {
        let mut budget = self.config.prefill_chunk;
        let mut chosen = Vec::new();
        for (i, seq) in self.active.iter().enumerate() {
            if budget == 0 {
                break;
            }
            if !seq.feed.is_empty() {
                let n = seq.feed.len().min(budget);
                budget -= n;
                chosen.push((i, n));
            }
        }
        if chosen.is_empty() {
            return;
        }
        let chunks: Vec<Vec<u32>> = chosen.iter().map(|&(i, n)| self.active[i].feed.drain(..n).collect()).collect();
        let logits = self.forward(&chosen.iter().map(|&(i, _)| i).collect::<Vec<_>>(), &chunks);
        let Some(logits) = logits else { return };
        // Sequences still mid-prompt sample nothing yet.
        let complete: Vec<(usize, usize)> = chosen
            .iter()
            .enumerate()
            .filter(|(_, (i, _))| self.active[*i].feed.is_empty())
            .map(|(row, &(i, _))| (i, row))
            .collect();
        self.sample_rows(&complete, &logits);
    }

    /// Samples the next token of `active[i]` from logits row `row` for every `(i, row)`, sequences in parallel
    /// (at temperature > 0 sampling sorts the vocabulary, which would otherwise serialise a large batch).
    fn sample_rows(&mut self, rows: &[(usize, usize)], logits: &[f32]) {
        for &(i, row) in rows {
            self.active[i].row = Some(row);
        }
        let (vocab, context, stats) = (self.model.config().vocab, self.model.config().context, &*self.stats);
        self.active.par_iter_mut().for_each(|seq| {
            if let Some(row) = seq.row.take() {
                let len = M::cache_len(&seq.cache);
                accept(seq, &logits[row * vocab..(row + 1) * vocab], len, context, stats);
            }
        });
    }

    /// One token for every sequence that has a sampled token to run, `decode_rows` sequences per forward.
    fn decode(&mut self) {
        let rows: Vec<usize> = (0..self.active.len())
            .filter(|&i| self.active[i].feed.is_empty() && self.active[i].pending.is_some())
            .collect();
        for group in rows.chunks(self.config.decode_rows) {
            let tokens: Vec<Vec<u32>> =
                group.iter().map(|&i| self.active[i].pending.take().into_iter().collect()).collect();
            let Some(logits) = self.forward(group, &tokens) else { continue };
            let group: Vec<(usize, usize)> = group.iter().enumerate().map(|(row, &i)| (i, row)).collect();
            self.sample_rows(&group, &logits);
        }
    }

    /// The batched forward over `active[rows[k]]` with `tokens[k]`; on failure every sequence in it fails.
    fn forward(&mut self, rows: &[usize], tokens: &[Vec<u32>]) -> Option<Vec<f32>> {
        let mut caches: Vec<M::Cache> = rows.iter().map(|&i| std::mem::take(&mut self.active[i].cache)).collect();
        let slices: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
        let result = self.model.forward_last_batch(&slices, &mut caches);
        for (&i, cache) in rows.iter().zip(caches) {
            self.active[i].cache = cache;
        }
        match result {
            Ok(logits) => Some(logits),
            Err(e) => {
                let message = e.to_string();
                for &i in rows {
                    self.active[i].done = Some(Err(EngineError::Model(message.clone())));
                }
                None
            }
        }
    }

    /// Sends the final events of finished sequences, parks the caches of sessions that ended normally.
    fn finish(&mut self) {
        if self.active.iter().all(|s| s.done.is_none()) {
            return;
        }
        let mut kept = Vec::with_capacity(self.active.len());
        for seq in self.active.drain(..) {
            match seq.done {
                None => kept.push(seq),
                Some(Ok(reason)) => {
                    let delivered = seq.events.send(Event::Finished(reason)).is_ok();
                    if let (Some(id), true, FinishReason::Stop | FinishReason::Length) =
                        (seq.session, delivered, reason)
                    {
                        self.parked.insert(id, Parked { cache: seq.cache, pending: seq.pending });
                    }
                }
                Some(Err(e)) => {
                    let _ = seq.events.send(Event::Failed(e));
                }
            }
        }
        self.active = kept;
    }
}

/// Samples the next token of `seq` from its last logits (the cache now holds `len` positions) and decides
/// whether the sequence is done, as `generate_continue` does.
fn accept<C>(seq: &mut Seq<C>, logits: &[f32], len: usize, context: usize, stats: &EngineStats) {
    if seq.generated >= seq.sampling.max_new_tokens {
        seq.done = Some(Ok(FinishReason::Length));
        return;
    }
    let masked;
    let logits = match &seq.constraint {
        Some(constraint) => {
            let mut allowed = logits.to_vec();
            if !constraint.mask(&mut allowed) {
                seq.done = Some(Ok(FinishReason::Stop));
                return;
            }
            masked = allowed;
            &masked
        }
        None => logits,
    };
    // Under a constraint the log-prob is the masked distribution's (what was sampled from).
    let next = sample(logits, &seq.sampling, &mut seq.rng) as u32;
    let logprob = log_softmax_at(logits, next as usize);
    let satisfied = seq.constraint.as_mut().is_some_and(|c| c.advance(next));
    seq.generated += 1;
    seq.pending = Some(next);
    stats.tokens_generated.fetch_add(1, Ordering::Relaxed);
    if seq.events.send(Event::Token { id: next, logprob }).is_err() {
        // The receiver is gone: nobody reads the rest.
        seq.done = Some(Ok(FinishReason::Cancelled));
        return;
    }
    if seq.stop.contains(&next) || satisfied {
        seq.done = Some(Ok(FinishReason::Stop));
    } else if len + 1 > context || seq.generated >= seq.sampling.max_new_tokens {
        seq.done = Some(Ok(FinishReason::Length));
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::checkpoint::random_model;
    use crate::generate::generate;

    fn tiny(context: usize) -> Arc<Llama> {
        let config = LlamaConfig {
            vocab: 64,
            hidden: 16,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            ffn: 24,
            rope_theta: 10_000.0,
            eps: 1e-5,
            context,
        };
        Arc::new(random_model(config, false, 11))
    }

    fn request(tokens: &[u32], max_new_tokens: usize, temperature: f32, seed: u64) -> Request {
        let sampling = Sampling { temperature, seed, max_new_tokens, top_k: 20, top_p: 0.9 };
        Request { tokens: tokens.to_vec(), stop: vec![3], sampling, constraint: None }
    }

    /// Sequences that join while others decode give exactly what `generate` gives each alone: ids, log-probs,
    /// and the seeded samples of a tempered one.
    #[test]
    fn concurrent_sequences_equal_generate_one_at_a_time() {
        let model = tiny(128);
        let engine = Engine::new(model.clone(), EngineConfig::default()).unwrap();
        let requests = [
            request(&[1, 2, 3, 4], 24, 0.0, 0),
            request(&[5], 30, 0.0, 0),
            request(&[7, 8, 9], 20, 0.9, 42),
            request(&[10, 11], 16, 0.0, 0),
        ];
        let mut first = engine.generate(requests[0].clone()).unwrap();
        // The others join after the first has started decoding.
        let mut head = Vec::new();
        for _ in 0..3 {
            match first.blocking_next() {
                Some(Event::Token { id, logprob }) => head.push((id, logprob)),
                other => panic!("expected a token, got {other:?}"),
            }
        }
        let rest: Vec<Stream> = requests[1..].iter().map(|r| engine.generate(r.clone()).unwrap()).collect();
        let (mut tail, reason0) = first.wait().unwrap();
        let mut got = vec![Generation {
            tokens: head.iter().map(|h| h.0).chain(tail.tokens.drain(..)).collect(),
            logprobs: head.iter().map(|h| h.1).chain(tail.logprobs.drain(..)).collect(),
            stopped: tail.stopped,
        }];
        let mut reasons = vec![reason0];
        for stream in rest {
            let (g, reason) = stream.wait().unwrap();
            got.push(g);
            reasons.push(reason);
        }
        for (i, r) in requests.iter().enumerate() {
            let want = generate(&model, &r.tokens, &r.stop, &r.sampling).unwrap();
            assert_eq!(got[i], want, "sequence {i}");
            let reason = if want.stopped { FinishReason::Stop } else { FinishReason::Length };
            assert_eq!(reasons[i], reason, "sequence {i}");
        }
        assert!(engine.stats().tokens_generated.load(Ordering::Relaxed) >= 4);
    }

    /// More sequences than one decode forward takes: they go through in groups, each still exact.
    #[test]
    fn more_sequences_than_decode_rows_stay_exact() {
        let model = tiny(128);
        let config = EngineConfig { prefill_chunk: 16, decode_rows: 16, ..EngineConfig::default() };
        let engine = Engine::new(model.clone(), config).unwrap();
        let requests: Vec<Request> = (0..21u32).map(|i| request(&[i + 1, (i * 7) % 60 + 1], 9, 0.0, 0)).collect();
        let streams: Vec<Stream> = requests.iter().map(|r| engine.generate(r.clone()).unwrap()).collect();
        for (stream, r) in streams.into_iter().zip(&requests) {
            assert_eq!(stream.wait().unwrap().0, generate(&model, &r.tokens, &r.stop, &r.sampling).unwrap());
        }
    }

    /// A long prompt prefilled in small chunks, beside decoding sequences, gives the same tokens.
    #[test]
    fn chunked_prefill_gives_the_same_tokens() {
        let model = tiny(128);
        let engine =
            Engine::new(model.clone(), EngineConfig { max_active: 8, prefill_chunk: 3, ..EngineConfig::default() })
                .unwrap();
        let prompts: [&[u32]; 2] = [&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], &[20, 21, 22, 23, 24, 25, 26, 27]];
        let streams: Vec<Stream> = prompts.iter().map(|p| engine.generate(request(p, 12, 0.0, 0)).unwrap()).collect();
        for (stream, p) in streams.into_iter().zip(prompts) {
            let r = request(p, 12, 0.0, 0);
            assert_eq!(stream.wait().unwrap().0, generate(&model, &r.tokens, &r.stop, &r.sampling).unwrap());
        }
    }

    /// A session continued with appended tokens equals a fresh generation over the whole text, without the
    /// prefix being run again (the second call feeds only the last sampled token and the new ones).
    #[test]
    fn continued_session_equals_generation_from_scratch() {
        let model = tiny(128);
        let engine = Engine::new(model.clone(), EngineConfig::default()).unwrap();
        let mut session = engine.session();
        let prompt = [4u32, 5, 6];
        let greedy = |n| Sampling { max_new_tokens: n, ..Sampling::default() };
        let first = session
            .generate(Request { tokens: prompt.to_vec(), stop: vec![], sampling: greedy(4), constraint: None })
            .unwrap();
        let (g1, reason) = first.wait().unwrap();
        assert_eq!((g1.tokens.len(), reason), (4, FinishReason::Length));
        wait_until(|| engine.stats().parked.load(Ordering::Relaxed) == 1);
        let prompt_before = engine.stats().prompt_tokens.load(Ordering::Relaxed);
        let turn = [9u32, 10];
        let (g2, _) = session
            .generate(Request { tokens: turn.to_vec(), stop: vec![], sampling: greedy(5), constraint: None })
            .unwrap()
            .wait()
            .unwrap();
        // Only the pending sampled token and the two appended ones were fed.
        assert_eq!(engine.stats().prompt_tokens.load(Ordering::Relaxed) - prompt_before, 3);
        let full: Vec<u32> = prompt.iter().chain(&g1.tokens).chain(&turn).copied().collect();
        assert_eq!(g2, generate(&model, &full, &[], &greedy(5)).unwrap());

        // A third turn after the second.
        let (g3, _) = session
            .generate(Request { tokens: vec![11], stop: vec![], sampling: greedy(3), constraint: None })
            .unwrap()
            .wait()
            .unwrap();
        let full: Vec<u32> = full.iter().chain(&g2.tokens).chain(&[11]).copied().collect();
        assert_eq!(g3, generate(&model, &full, &[], &greedy(3)).unwrap());

        // Dropping the session frees its cache.
        drop(session);
        wait_until(|| engine.stats().parked.load(Ordering::Relaxed) == 0);
    }

    /// Polls a condition the engine thread makes true (bounded, so a bug fails instead of hanging).
    fn wait_until(mut ok: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ok() {
            assert!(start.elapsed() < Duration::from_secs(60), "the engine never got there");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A client that goes away frees its slot: with one slot, a second sequence runs once the first's
    /// receiver is dropped, long before the first could have finished.
    #[test]
    fn dropped_receiver_frees_its_slot() {
        let model = tiny(200_000);
        let engine =
            Engine::new(model, EngineConfig { max_active: 1, prefill_chunk: 64, ..EngineConfig::default() }).unwrap();
        let mut endless = engine.generate(request(&[1, 2], 150_000, 0.0, 0)).unwrap();
        assert!(matches!(endless.blocking_next(), Some(Event::Token { .. })));
        let queued = engine.generate(request(&[3, 4], 5, 0.0, 0)).unwrap();
        wait_until(|| engine.stats().waiting.load(Ordering::Relaxed) == 1);
        drop(endless);
        let (g, _) = queued.wait().unwrap();
        assert!(!g.tokens.is_empty());
        assert!(engine.stats().tokens_generated.load(Ordering::Relaxed) < 100_000);
        wait_until(|| engine.stats().active.load(Ordering::Relaxed) == 0);
    }

    /// Only these tokens, and done after `left` of them.
    #[derive(Clone)]
    struct OnlyFew {
        allowed: Vec<u32>,
        left: usize,
    }

    impl Constraint for OnlyFew {
        fn mask(&self, logits: &mut [f32]) -> bool {
            for (i, l) in logits.iter_mut().enumerate() {
                if !self.allowed.contains(&(i as u32)) {
                    *l = f32::NEG_INFINITY;
                }
            }
            true
        }
        fn advance(&mut self, _token: u32) -> bool {
            self.left -= 1;
            self.left == 0
        }
        fn boxed_clone(&self) -> Box<dyn Constraint> {
            Box::new(self.clone())
        }
    }

    #[test]
    fn constraints_limit_the_tokens_and_end_the_sequence() {
        let engine = Engine::new(tiny(128), EngineConfig::default()).unwrap();
        for temperature in [0.0, 1.0] {
            let mut r = request(&[1, 2, 3], 20, temperature, 7);
            r.constraint = Some(Box::new(OnlyFew { allowed: vec![5, 6], left: 4 }));
            let (g, reason) = engine.generate(r).unwrap().wait().unwrap();
            assert_eq!((g.tokens.len(), reason), (4, FinishReason::Stop));
            assert!(g.tokens.iter().all(|t| [5, 6].contains(t)), "{:?}", g.tokens);
            assert!(g.logprobs.iter().all(|l| l.is_finite()));
        }
    }

    #[test]
    fn bad_requests_are_clear_errors() {
        let model = tiny(16);
        let engine = Engine::new(model, EngineConfig::default()).unwrap();
        assert_eq!(engine.generate(request(&[], 4, 0.0, 0)).err(), Some(EngineError::EmptyPrompt));
        let long: Vec<u32> = (0..17).collect();
        assert_eq!(
            engine.generate(request(&long, 4, 0.0, 0)).err(),
            Some(EngineError::ContextOverflow { len: 17, context: 16 })
        );
        assert_eq!(engine.generate(request(&[64], 4, 0.0, 0)).err(), Some(EngineError::BadToken { id: 64, vocab: 64 }));

        // The context ends a generation with `Length`.
        let (g, reason) = engine.generate(request(&(0..14).collect::<Vec<_>>(), 50, 0.0, 0)).unwrap().wait().unwrap();
        assert_eq!(reason, FinishReason::Length);
        assert!(g.tokens.len() <= 3, "{}", g.tokens.len());

        // A session: continuing past the context is refused without losing the session; continuing while
        // busy or after the first turn failed is an error too.
        let mut session = engine.session();
        session.generate(request(&[1, 2, 3, 4, 5, 6], 2, 0.0, 0)).unwrap().wait().unwrap();
        let err = session.generate(request(&[7; 10], 2, 0.0, 0)).unwrap().wait().unwrap_err();
        assert!(matches!(err, EngineError::ContextOverflow { context: 16, .. }), "{err:?}");
        let (g, _) = session.generate(request(&[7], 2, 0.0, 0)).unwrap().wait().unwrap();
        assert!(!g.tokens.is_empty());
        let mut fresh = engine.session();
        assert_eq!(fresh.generate(request(&[], 2, 0.0, 0)).err(), Some(EngineError::EmptyPrompt));

        // Busy while generating; gone after a cancelled generation.
        let big = Engine::new(tiny(200_000), EngineConfig::default()).unwrap();
        let mut session = big.session();
        let mut running = session.generate(request(&[1, 2], 150_000, 0.0, 0)).unwrap();
        assert!(matches!(running.blocking_next(), Some(Event::Token { .. })));
        let again = session.generate(request(&[8], 4, 0.0, 0)).unwrap().wait().unwrap_err();
        assert_eq!(again, EngineError::SessionBusy);
        drop(running);
        wait_until(|| big.stats().active.load(Ordering::Relaxed) == 0);
        let gone = session.generate(request(&[8], 4, 0.0, 0)).unwrap().wait().unwrap_err();
        assert_eq!(gone, EngineError::SessionGone);
    }

    #[test]
    fn smollm2_two_concurrent_chats_equal_generate() {
        use crate::tokenizer::{ChatMessage, Tokenizer};
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(path.exists(), "{} is missing: run scripts/setup", path.display());
        let gguf = crate::gguf::Gguf::open(&path).unwrap();
        let tokenizer = Tokenizer::from_gguf(&gguf).unwrap();
        let model = Arc::new(Llama::from_gguf(&gguf).unwrap());
        let engine = Engine::new(model.clone(), EngineConfig::default()).unwrap();
        let requests: Vec<Request> = ["What is the capital of France?", "Name a color."]
            .iter()
            .map(|q| {
                let text = tokenizer.render_chat(&[ChatMessage::new("user", q)], true).unwrap();
                let sampling = Sampling { max_new_tokens: 10, ..Sampling::default() };
                Request { tokens: tokenizer.encode(&text).unwrap(), stop: vec![2], sampling, constraint: None }
            })
            .collect();
        let streams: Vec<Stream> = requests.iter().map(|r| engine.generate(r.clone()).unwrap()).collect();
        for (stream, r) in streams.into_iter().zip(&requests) {
            let (got, _) = stream.wait().unwrap();
            assert_eq!(got.tokens, generate(&model, &r.tokens, &r.stop, &r.sampling).unwrap().tokens);
        }
    }
}
