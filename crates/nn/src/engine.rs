//! Continuous batching: one engine thread owns the model and runs every live sequence together. Each
//! iteration prefills newly joined sequences (in chunks, so a long prompt cannot stall the others for long) in
//! one batched forward, then decodes one token for every decoding sequence in a second batched forward
//! (`batch::forward_last_batch`: one set of matmuls for all rows, attention per sequence over its own cache).
//! Sequences join at any time and leave when done or when their receiver is dropped (a client that went away).
//! A [`Session`] keeps its KV cache between generations, so a multi-turn episode appends the user's or tool's
//! turn and continues without recomputing the prefix.
//!
//! New prompts share prefixes too (a chat template's system turn, one task's prompt for a whole GRPO group): a
//! bounded prefix store ([`prefix`]) keeps the KV rows of finished prompt prefills, and a new prompt starts from
//! a copy of the longest stored prefix it shares (at least `prefix_min_tokens`), prefilling only the rest. A
//! prompt that joins while another with the same prefix is being prefilled waits for it one iteration instead
//! of computing the same rows beside it. A copied row is the row the forward would compute (rows do not depend
//! on the other rows of their forward); the rest of the prompt runs in whatever forward it lands in, as any
//! prefill chunk does.
//!
//! Sampling is `generate`'s (same seeded RNG, same log-probs), and a sequence's rows go through the same kernels
//! as `generate` would run them, so a greedy sequence gives the same tokens alone or in a batch.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;

use rayon::prelude::*;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

mod prefix;

use crate::batch::{SeqCache, forward_last_batch};
use crate::generate::{Generation, Rng, Sampling, log_softmax_at, sample};
use crate::model::{Llama, LlamaConfig, ModelError};
use crate::wgpu::{WgpuError, WgpuKvCache, WgpuLlama};
use prefix::{PrefixStore, common_prefix};

/// What the engine needs from a model: per-sequence caches and a batched forward that returns each sequence's
/// last logits. The CPU [`Llama`] and the GPU [`WgpuLlama`] implement it.
pub trait BatchModel: Send + Sync + 'static {
    /// A placeholder value (`Default`) lets the engine move caches in and out of the batch cheaply.
    type Cache: Default + Send + 'static;
    type Error: std::fmt::Display;
    fn config(&self) -> &LlamaConfig;
    fn new_cache(&self) -> Self::Cache;
    fn cache_len(cache: &Self::Cache) -> usize;
    /// A new cache with the first `len` positions of `cache`, for a sequence whose prompt starts with the
    /// same tokens (the rows must be exactly what running those tokens would have produced). On an error (a
    /// device out of memory, say) the engine goes on without the prefix.
    fn prefix_cache(&self, cache: &Self::Cache, len: usize) -> Result<Self::Cache, Self::Error>;
    /// Bytes a cache of `len` positions takes (what the prefix store's budget counts).
    fn cache_bytes(&self, len: usize) -> usize {
        let c = self.config();
        2 * c.layers * c.kv_dim() * std::mem::size_of::<f32>() * len
    }
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
    fn prefix_cache(&self, cache: &SeqCache, len: usize) -> Result<SeqCache, ModelError> {
        Ok(cache.prefix(len))
    }
    fn forward_last_batch(&self, tokens: &[&[u32]], caches: &mut [SeqCache]) -> Result<Vec<f32>, ModelError> {
        forward_last_batch(self, tokens, caches)
    }
}

impl BatchModel for WgpuLlama {
    type Cache = WgpuKvCache;
    type Error = WgpuError;
    fn config(&self) -> &LlamaConfig {
        &self.config
    }
    fn new_cache(&self) -> WgpuKvCache {
        WgpuLlama::new_cache(self)
    }
    fn cache_len(cache: &WgpuKvCache) -> usize {
        cache.len
    }
    fn prefix_cache(&self, cache: &WgpuKvCache, len: usize) -> Result<WgpuKvCache, WgpuError> {
        WgpuLlama::prefix_cache(self, cache, len)
    }
    fn forward_last_batch(&self, tokens: &[&[u32]], caches: &mut [WgpuKvCache]) -> Result<Vec<f32>, WgpuError> {
        WgpuLlama::forward_last_batch(self, tokens, caches)
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
    /// Decoding sequences per batched forward. Up to `skinny::MAX_ROWS` (128) rows the CPU matmuls take the few-row kernel, which
    /// beats the packing sgemm there (and keeps each row's arithmetic identical to a lone `generate`).
    pub decode_rows: usize,
    /// Bytes of prompt KV rows kept for later prompts that start the same way; 0 keeps none. The default,
    /// 256 MiB, holds ~5,800 prompt tokens of SmolLM2-135M (45 KiB a token over its 30 layers).
    pub prefix_cache_bytes: usize,
    /// The shortest stored prefix a prompt reuses (at least 1). Copying rows costs far less than computing
    /// them, so this is not about the copy: it keeps the chat template's few opening tokens, which every
    /// prompt shares, from counting as a match, and it is what a joining prompt must gain before it waits an
    /// iteration for another's prefill: the wait is about one decode step (SmolLM2 on 2 cores: ~35 ms at 8
    /// sequences), the time 5-12 prompt rows take to compute (150-300 prompt tokens/s), so 16 rows repay it.
    pub prefix_min_tokens: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_active: 64,
            prefill_chunk: 512,
            decode_rows: crate::skinny::MAX_ROWS,
            prefix_cache_bytes: 256 << 20,
            prefix_min_tokens: 16,
        }
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
    /// Prompt tokens sent (for a continued session, only the new ones), reused ones included.
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens whose KV rows came from the prefix store instead of a forward.
    pub cached_prompt_tokens: AtomicU64,
    /// Prompts in the prefix store and the bytes their caches take.
    pub prefix_entries: AtomicUsize,
    pub prefix_bytes: AtomicUsize,
    pub iterations: AtomicU64,
}

/// A sequence's output: events as they are sampled. Dropping it cancels the sequence.
pub struct Stream {
    rx: UnboundedReceiver<Event>,
    done: bool,
    cached: Arc<AtomicUsize>,
}

impl Stream {
    /// How many prompt tokens came from the prefix store instead of being computed: final once any event has
    /// arrived (the engine settles it before the first token).
    pub fn cached_tokens(&self) -> usize {
        self.cached.load(Ordering::Relaxed)
    }

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
    Start { session: Option<(u64, bool)>, request: Request, events: UnboundedSender<Event>, cached: Arc<AtomicUsize> },
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
                prefix_cache_bytes: config.prefix_cache_bytes,
                prefix_min_tokens: config.prefix_min_tokens.max(1),
            },
            inbox,
            stats: stats.clone(),
            store: PrefixStore::new(config.prefix_cache_bytes),
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

/// An engine whatever model it runs (`Engine<Llama>` on the CPU, `Engine<WgpuLlama>` on a GPU), for callers that
/// choose the device at run time (the /v1 server, live episodes, rollouts).
pub trait Generator: Send + Sync {
    fn config(&self) -> &LlamaConfig;
    fn stats(&self) -> &EngineStats;
    /// [`Engine::generate`].
    fn generate(&self, request: Request) -> Result<Stream, EngineError>;
    /// [`Engine::session`].
    fn session(&self) -> Session;
}

impl<M: BatchModel> Generator for Engine<M> {
    fn config(&self) -> &LlamaConfig {
        self.model.config()
    }
    fn stats(&self) -> &EngineStats {
        Engine::stats(self)
    }
    fn generate(&self, request: Request) -> Result<Stream, EngineError> {
        Engine::generate(self, request)
    }
    fn session(&self) -> Session {
        Engine::session(self)
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
    let cached = Arc::new(AtomicUsize::new(0));
    commands
        .send(Command::Start { session, request, events, cached: cached.clone() })
        .map_err(|_| EngineError::Stopped)?;
    Ok(Stream { rx, done: false, cached })
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
    /// The whole prompt of a sequence that started from an empty cache, until its prefill is complete: what it
    /// looks up in the prefix store and then stores.
    prompt: Option<Vec<u32>>,
    /// Prompt tokens taken from the prefix store (shared with its [`Stream`]).
    cached: Arc<AtomicUsize>,
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
    store: PrefixStore<M::Cache>,
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
        self.stats.prefix_entries.store(self.store.len(), Ordering::Relaxed);
        self.stats.prefix_bytes.store(self.store.bytes(), Ordering::Relaxed);
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
            Command::Start { session, request, events, cached } => {
                let fail = |e: EngineError| {
                    let _ = events.send(Event::Failed(e));
                };
                let (cache, feed, prompt) = match session {
                    None | Some((_, false)) => {
                        let prompt = self.store.enabled().then(|| request.tokens.clone());
                        (self.model.new_cache(), request.tokens, prompt)
                    }
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
                        (parked.cache, feed, None)
                    }
                };
                self.stats.prompt_tokens.fetch_add(feed.len() as u64, Ordering::Relaxed);
                self.waiting.push(Seq {
                    session: session.map(|(id, _)| id),
                    cache,
                    feed,
                    prompt,
                    cached,
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
    /// first served) in one forward; a sequence whose prompt is complete samples its first token. A new prompt
    /// first takes what the prefix store has of it, or waits for a prompt being prefilled that shares more.
    fn prefill(&mut self) {
        let mut budget = self.config.prefill_chunk;
        let mut chosen = Vec::new();
        // Prompts mid-prefill whose rows the store will get once they are complete.
        let mut leaders: Vec<usize> =
            (0..self.active.len()).filter(|&i| self.storable(i) && M::cache_len(&self.active[i].cache) > 0).collect();
        for i in 0..self.active.len() {
            if budget == 0 {
                break;
            }
            if self.active[i].feed.is_empty() || !self.reuse_prefix(i, &leaders) {
                continue;
            }
            let n = self.active[i].feed.len().min(budget);
            budget -= n;
            chosen.push((i, n));
            if self.storable(i) && !leaders.contains(&i) {
                leaders.push(i);
            }
        }
        if chosen.is_empty() {
            return;
        }
        let chunks: Vec<Vec<u32>> = chosen.iter().map(|&(i, n)| self.active[i].feed.drain(..n).collect()).collect();
        let logits = self.forward(&chosen.iter().map(|&(i, _)| i).collect::<Vec<_>>(), &chunks);
        let Some(logits) = logits else { return };
        for &(i, _) in &chosen {
            if self.active[i].feed.is_empty() {
                self.store_prompt(i);
            }
        }
        // Sequences still mid-prompt sample nothing yet.
        let complete: Vec<(usize, usize)> = chosen
            .iter()
            .enumerate()
            .filter(|(_, (i, _))| self.active[*i].feed.is_empty())
            .map(|(row, &(i, _))| (i, row))
            .collect();
        self.sample_rows(&complete, &logits);
    }

    /// Whether `active[i]` is a prompt whose rows will go to the prefix store when its prefill completes.
    fn storable(&self, i: usize) -> bool {
        self.active[i].prompt.as_ref().is_some_and(|p| {
            p.len() >= self.config.prefix_min_tokens && self.store.fits(self.model.cache_bytes(p.len()))
        })
    }

    /// Before a new prompt's prefill starts: takes the longest stored prefix it shares (leaving at least its
    /// last token to run, whose logits give the first sample). False when it should wait instead: a prompt in
    /// `leaders`, still being prefilled, shares at least `prefix_min_tokens` more than the store offers.
    fn reuse_prefix(&mut self, i: usize, leaders: &[usize]) -> bool {
        let seq = &self.active[i];
        let Some(prompt) = seq.prompt.as_deref() else { return true };
        if M::cache_len(&seq.cache) > 0 {
            return true;
        }
        let (min, limit) = (self.config.prefix_min_tokens, prompt.len() - 1);
        let hit = self.store.longest(prompt, limit).filter(|&(_, n)| n >= min);
        let offered = hit.map_or(0, |(_, n)| n);
        let ahead = leaders
            .iter()
            .filter_map(|&j| self.active[j].prompt.as_deref())
            .map(|other| common_prefix(prompt, other).min(limit))
            .max()
            .unwrap_or(0);
        if ahead >= offered + min {
            return false;
        }
        if let Some((entry, n)) = hit {
            let cache = match self.model.prefix_cache(self.store.hit(entry), n) {
                Ok(cache) => cache,
                Err(e) => {
                    tracing::warn!(error = %e, "copying a stored prompt prefix failed; prefilling the whole prompt");
                    return true;
                }
            };
            let seq = &mut self.active[i];
            seq.cache = cache;
            seq.feed.drain(..n);
            seq.cached.store(n, Ordering::Relaxed);
            self.stats.cached_prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
        }
        true
    }

    /// A prompt whose prefill just completed: its cache (which holds exactly the prompt's positions until the
    /// first sampled token runs) is copied into the prefix store.
    fn store_prompt(&mut self, i: usize) {
        let Some(prompt) = self.active[i].prompt.take() else { return };
        let bytes = self.model.cache_bytes(prompt.len());
        if prompt.len() < self.config.prefix_min_tokens || !self.store.wants(&prompt, bytes) {
            return;
        }
        match self.model.prefix_cache(&self.active[i].cache, prompt.len()) {
            Ok(cache) => self.store.insert(prompt, cache, bytes),
            Err(e) => tracing::warn!(error = %e, "copying a prompt's cache into the prefix store failed"),
        }
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

    fn with_store(model: &Arc<Llama>, prefix_cache_bytes: usize) -> Engine<Llama> {
        Engine::new(model.clone(), EngineConfig { prefix_cache_bytes, ..EngineConfig::default() }).unwrap()
    }

    /// The whole generation and how many prompt tokens came from the prefix store.
    fn run(engine: &Engine<Llama>, request: Request) -> (Generation, usize) {
        let mut stream = engine.generate(request).unwrap();
        let mut out = Generation { tokens: Vec::new(), logprobs: Vec::new(), stopped: false };
        while let Some(event) = stream.blocking_next() {
            if gather(&mut out, event).unwrap().is_some() {
                return (out, stream.cached_tokens());
            }
        }
        panic!("the stream ended without a final event");
    }

    fn cached_stat(engine: &Engine<Llama>) -> u64 {
        engine.stats().cached_prompt_tokens.load(Ordering::Relaxed)
    }

    /// `shared` then `tail`.
    fn joined(shared: &[u32], tail: &[u32]) -> Vec<u32> {
        shared.iter().chain(tail).copied().collect()
    }

    fn shared_prefix(n: usize) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 % 60 + 4).collect()
    }

    /// A prompt sharing a long prefix with a finished one starts from a copy of its rows, and gives exactly what
    /// an engine without a store gives (ids and log-probs, greedy and seeded-tempered): the copied rows are the
    /// ones the forward would have computed. The same prompt again reuses all but its last token.
    #[test]
    fn a_reused_prefix_gives_the_same_tokens_and_logprobs() {
        let model = tiny(128);
        let (with, without) = (with_store(&model, 1 << 20), with_store(&model, 0));
        let shared = shared_prefix(20);
        let (first, second) = (joined(&shared, &[5, 6, 7]), joined(&shared, &[8, 9, 10, 11]));
        for engine in [&with, &without] {
            assert_eq!(run(engine, request(&first, 8, 0.0, 0)).1, 0);
        }
        // 20 shared tokens from `first`, then all but the last of `second` (stored by the first round).
        for (temperature, reused) in [(0.0, 20), (0.9, second.len() - 1)] {
            let r = request(&second, 16, temperature, 5);
            let (got, cached) = run(&with, r.clone());
            assert_eq!(cached, reused, "temperature {temperature}");
            let (plain, none) = run(&without, r.clone());
            assert_eq!(none, 0);
            assert_eq!(got, plain, "temperature {temperature}");
            assert_eq!(got, generate(&model, &r.tokens, &r.stop, &r.sampling).unwrap());
        }
        assert_eq!(cached_stat(&with), 20 + second.len() as u64 - 1);
        assert_eq!(with.stats().prompt_tokens.load(Ordering::Relaxed), (first.len() + 2 * second.len()) as u64);
        assert_eq!(cached_stat(&without), 0);
        wait_until(|| with.stats().prefix_entries.load(Ordering::Relaxed) == 2);
        assert_eq!(with.stats().prefix_bytes.load(Ordering::Relaxed), model.cache_bytes(first.len() + second.len()));
        assert_eq!(without.stats().prefix_entries.load(Ordering::Relaxed), 0);

        // Shorter than `prefix_min_tokens` in common: computed, not reused.
        let (_, cached) = run(&with, request(&joined(&shared[..15], &[1, 2, 3]), 4, 0.0, 0));
        assert_eq!(cached, 0);
    }

    /// The store never holds more than its budget: the least recently used prompt goes, and misses afterwards.
    #[test]
    fn the_prefix_store_keeps_its_budget() {
        let model = tiny(128);
        // Room for two 20-token prompts, not three.
        let budget = model.cache_bytes(50);
        let engine = with_store(&model, budget);
        let prompts: Vec<Vec<u32>> = (0..3u32).map(|p| (0..20).map(|i| (i * 5 + p * 17) % 60 + 1).collect()).collect();
        for p in &prompts {
            run(&engine, request(p, 3, 0.0, 0));
            wait_until(|| engine.stats().prefix_bytes.load(Ordering::Relaxed) <= budget);
        }
        wait_until(|| engine.stats().iterations.load(Ordering::Relaxed) > 0);
        let stats = engine.stats();
        wait_until(|| stats.prefix_entries.load(Ordering::Relaxed) == 2);
        assert_eq!(stats.prefix_bytes.load(Ordering::Relaxed), model.cache_bytes(40));
        // The oldest was evicted; the newest is still there.
        assert_eq!(run(&engine, request(&joined(&prompts[2], &[1]), 3, 0.0, 0)).1, 20);
        assert_eq!(run(&engine, request(&joined(&prompts[0], &[1]), 3, 0.0, 0)).1, 0);
        wait_until(|| stats.prefix_entries.load(Ordering::Relaxed) == 2);
        assert!(stats.prefix_bytes.load(Ordering::Relaxed) <= budget);
    }

    /// Sequences that join together with a shared prefix compute it once: the others wait one iteration for the
    /// first's prefill and copy its rows. Every output is still exactly `generate`'s.
    #[test]
    fn concurrent_prompts_with_a_shared_prefix_compute_it_once() {
        let model = tiny(128);
        let engine = with_store(&model, 1 << 20);
        let shared = shared_prefix(24);
        let requests: Vec<Request> =
            (0..4u32).map(|i| request(&joined(&shared, &[i + 1, 40 + i]), 10, 0.8, u64::from(i))).collect();
        let streams: Vec<Stream> = requests.iter().map(|r| engine.generate(r.clone()).unwrap()).collect();
        for (stream, r) in streams.into_iter().zip(&requests) {
            assert_eq!(stream.wait().unwrap().0, generate(&model, &r.tokens, &r.stop, &r.sampling).unwrap());
        }
        assert_eq!(cached_stat(&engine), 3 * 24);
    }

    /// A worker driven by hand, one prefill at a time: what `run` does, without the thread's timing.
    fn worker(model: &Arc<Llama>, config: EngineConfig) -> Worker<Llama> {
        let (_, inbox) = mpsc::channel();
        Worker {
            model: model.clone(),
            inbox,
            stats: Arc::new(EngineStats::default()),
            active: Vec::new(),
            waiting: Vec::new(),
            parked: HashMap::new(),
            store: PrefixStore::new(config.prefix_cache_bytes),
            config,
            stopping: false,
        }
    }

    fn start(worker: &mut Worker<Llama>, request: Request) -> Stream {
        let (events, rx) = unbounded_channel();
        let cached = Arc::new(AtomicUsize::new(0));
        worker.handle(Command::Start { session: None, request, events, cached: cached.clone() });
        worker.active.append(&mut worker.waiting);
        Stream { rx, done: false, cached }
    }

    /// Logits of `next` after `cache` (bitwise equal logits mean the cached rows were the same).
    fn logits_after(model: &Llama, cache: &SeqCache, next: u32) -> Vec<f32> {
        forward_last_batch(model, &[&[next]], &mut [cache.clone()]).unwrap()
    }

    /// Every forward here stays within the few-row kernel's rows, as the other exactness tests do: past
    /// that a forward takes the sgemm, whose rounding differs, so a prompt's last rows differ in the last bits
    /// depending on what shares their forward, with or without the store (see `docs/ARCHITECTURE.md`).
    #[test]
    fn a_joining_prompt_waits_for_the_prefill_that_shares_its_prefix() {
        let model = tiny(128);
        let mut w = worker(&model, EngineConfig { prefill_chunk: 64, ..EngineConfig::default() });
        let shared = shared_prefix(20);
        let leader = joined(&shared, &[1, 2]);
        let follower = joined(&shared, &[3, 4, 5]);
        let other: Vec<u32> = (0..8).map(|i| 63 - i).collect();
        let _streams: Vec<Stream> =
            [&leader, &follower, &other, &follower].iter().map(|p| start(&mut w, request(p, 4, 0.0, 0))).collect();
        w.prefill();
        // The leader and the unrelated prompt ran; both followers wait with nothing computed. The unrelated
        // prompt is shorter than `prefix_min_tokens`: not stored.
        let lens: Vec<usize> = w.active.iter().map(|s| s.cache.len).collect();
        assert_eq!(lens, [leader.len(), 0, other.len(), 0]);
        assert_eq!((w.store.len(), w.stats.cached_prompt_tokens.load(Ordering::Relaxed)), (1, 0));
        w.prefill();
        // Now they copy the leader's 20 rows, prefill only their own tails, and the first of them is stored
        // (the second is the same prompt: covered).
        let lens: Vec<usize> = w.active.iter().map(|s| s.cache.len).collect();
        assert_eq!(lens[1], follower.len());
        assert_eq!(lens[3], follower.len());
        assert_eq!(w.stats.cached_prompt_tokens.load(Ordering::Relaxed), 40);
        assert_eq!(w.store.len(), 2);
        // Their rows are the ones a plain prefill computes.
        let mut fresh = SeqCache::new(&model);
        forward_last_batch(&model, &[&follower], std::slice::from_mut(&mut fresh)).unwrap();
        for s in [1, 3] {
            assert_eq!(logits_after(&model, &w.active[s].cache, 9), logits_after(&model, &fresh, 9));
        }
        // And a prefix copy is exactly the rows it covers: continuing from it equals the full prefill.
        let mut part = fresh.prefix(20);
        assert_eq!(part.len, 20);
        forward_last_batch(&model, &[&follower[20..]], std::slice::from_mut(&mut part)).unwrap();
        assert_eq!(logits_after(&model, &part, 9), logits_after(&model, &fresh, 9));
    }

    /// Past `skinny::MAX_ROWS` rows (the sgemm) a row's keys and values still do not depend on the other rows of
    /// its forward, so the rows a long prompt stores are the ones another prompt's own prefill would compute.
    #[test]
    fn sgemm_prefill_rows_do_not_depend_on_their_neighbours() {
        let max = crate::skinny::MAX_ROWS;
        let model = tiny(256);
        let long = shared_prefix(max + 12);
        let other: Vec<u32> = (0..25).map(|i| 60 - i).collect();
        let mut alone = SeqCache::new(&model);
        forward_last_batch(&model, &[&long], std::slice::from_mut(&mut alone)).unwrap();
        let mut beside = [SeqCache::new(&model), SeqCache::new(&model)];
        forward_last_batch(&model, &[&other, &long], &mut beside).unwrap();
        let mut half = SeqCache::new(&model);
        forward_last_batch(&model, &[&long[..max + 8]], std::slice::from_mut(&mut half)).unwrap();
        for len in [max + 1, max + 8] {
            let want = logits_after(&model, &half.prefix(len), 9);
            assert_eq!(logits_after(&model, &alone.prefix(len), 9), want, "{len}");
            assert_eq!(logits_after(&model, &beside[1].prefix(len), 9), want, "{len}");
        }
    }

    /// A session's first turn is a new prompt: it reuses and feeds the store; its later turns go on from its own
    /// cache exactly as before.
    #[test]
    fn sessions_start_from_the_store_and_continue_exactly() {
        let model = tiny(256);
        let engine = with_store(&model, 1 << 20);
        let shared = shared_prefix(16);
        run(&engine, request(&joined(&shared, &[1]), 2, 0.0, 0));
        let greedy = |n| Sampling { max_new_tokens: n, ..Sampling::default() };
        let prompt = joined(&shared, &[2, 3]);
        let mut session = engine.session();
        let r = Request { tokens: prompt.clone(), stop: vec![], sampling: greedy(5), constraint: None };
        let first = session.generate(r).unwrap();
        let (g1, _) = first.wait().unwrap();
        assert_eq!(cached_stat(&engine), 16);
        assert_eq!(g1, generate(&model, &prompt, &[], &greedy(5)).unwrap());
        let turn = [7u32, 8, 9];
        let mut second = session
            .generate(Request { tokens: turn.to_vec(), stop: vec![], sampling: greedy(6), constraint: None })
            .unwrap();
        let mut g2 = Generation { tokens: Vec::new(), logprobs: Vec::new(), stopped: false };
        while let Some(event) = second.blocking_next() {
            if gather(&mut g2, event).unwrap().is_some() {
                break;
            }
        }
        assert_eq!(second.cached_tokens(), 0);
        assert_eq!(cached_stat(&engine), 16);
        let full: Vec<u32> = prompt.iter().chain(&g1.tokens).chain(&turn).copied().collect();
        assert_eq!(g2, generate(&model, &full, &[], &greedy(6)).unwrap());
    }
}
