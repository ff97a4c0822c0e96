//! The chat engine: one worker thread per loaded model serving up to
//! `max_concurrency` sequences at once (each with its own KV cache, the
//! weights shared), a bounded wait queue in front, and per-request event
//! channels behind.
//!
//! Policies: the queue shares slots fairly between tenants and orders by
//! priority ([`crate::fair_queue`]); a request that finds every slot busy
//! and the queue full is refused at once with [`EngineError::Overloaded`]
//! (or pushes out the newest place of a tenant holding more than its
//! share); a request whose caller
//! cancels (or drops its receiver) leaves its slot before the next decode
//! step; the worker never blocks on a slow reader (output is batched into
//! the next delta instead).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[cfg(any(test, feature = "test-support"))]
use cortex_schemas::frame::{Done, ToolCallDelta};
use cortex_schemas::infer::{GenerateInput, GenerateRequest};
use tokio::sync::mpsc;

use crate::chat_model::{active_tools, ChatModel};
use crate::error::{EngineError, Result};
use crate::fair_queue::FairQueue;
use crate::generate::run::{Job, Progress, Run};
use crate::generate::sampler::{Sampler, SamplingConfig};
use crate::generate::think::ThinkParser;
use crate::generate::Event;
use crate::kv_budget;
use crate::prefix_cache::{CacheStats, PrefixCache};
use crate::step::step;

/// Sizing of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Sequences decoded concurrently.
    pub max_concurrency: usize,
    /// Requests allowed to wait for a slot.
    pub max_queue: usize,
    /// Events buffered per request before output is batched.
    pub event_buffer: usize,
    /// Bytes of KV the prefix cache may keep (`Some(0)` turns it off;
    /// `None`: one full context window).
    pub prefix_cache_bytes: Option<u64>,
    /// Bytes of KV the running sequences may hold together (`None`: one
    /// full context window, what `footprint/src/estimate.rs` counts for
    /// the batch). When growing sequences would pass it, the newest gives
    /// its KV up and waits, keeping its slot, until the older ones end
    /// ([`crate::generate::run::Run::suspend`]); new requests wait for room
    /// too. A sequence alone always runs, up to the window.
    pub kv_budget_bytes: Option<u64>,
    /// Prompt tokens one step reads at most (`None`: the model's
    /// [`crate::models::CausalLm::prompt_tokens_per_step`]).
    pub prompt_tokens_per_step: Option<usize>,
    /// Refuse a `max_tokens` beyond what the prompt leaves of the window
    /// (`false`: generate up to the window's end instead).
    pub refuse_over_window: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_concurrency: cortex_schemas::DEFAULT_MAX_CONCURRENCY as usize,
            max_queue: 16,
            event_buffer: 64,
            prefix_cache_bytes: None,
            kv_budget_bytes: None,
            prompt_tokens_per_step: None,
            refuse_over_window: false,
        }
    }
}

/// Most alternatives a request may ask for per token.
pub const MAX_TOP_LOGPROBS: u8 = 20;

/// Counters an operator sees in heartbeats and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub busy: usize,
    pub slots: usize,
    pub queued: usize,
    pub tokens_generated: u64,
    pub prefix_cache: CacheStats,
    /// Tokens of KV the running sequences hold, the most they held
    /// together, and how often one was held out of the batch for the
    /// budget (gave its KV up mid-way, or waited in its slot from the
    /// start).
    pub batch_kv_tokens: usize,
    pub batch_kv_peak: usize,
    pub suspensions: u64,
    /// The budget in tokens (`None`: the model's KV cannot be counted).
    pub batch_kv_budget: Option<usize>,
}

#[derive(Debug, Default)]
struct State {
    waiting: FairQueue,
    busy: usize,
    draining: bool,
    stopped: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    tokens: AtomicU64,
    cache: Mutex<CacheStats>,
    kv: Mutex<BatchKv>,
}

/// The running batch's KV, for [`EngineStats`].
#[derive(Debug, Default, Clone, Copy)]
struct BatchKv {
    tokens: usize,
    peak: usize,
    suspensions: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A running engine for one chat model.
#[derive(Debug)]
pub struct ChatEngine {
    model: Arc<ChatModel>,
    cfg: EngineConfig,
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// A submitted request: its events and a way to cancel it.
#[derive(Debug)]
pub struct Generation {
    pub request_id: String,
    /// Tokens of the rendered prompt.
    pub prompt_tokens: u32,
    pub events: mpsc::Receiver<Event>,
    cancel: Arc<AtomicBool>,
}

/// A whole generation gathered, for tests and benches (feature
/// `test-support`); the neuron streams every generation.
#[cfg(any(test, feature = "test-support"))]
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    pub text: String,
    pub reasoning: String,
    pub tool_calls: Vec<ToolCallDelta>,
    pub deltas: usize,
    pub done: Done,
}

impl Generation {
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Blocks until the terminal event (not from inside an async runtime).
    #[cfg(any(test, feature = "test-support"))]
    pub fn collect_blocking(mut self) -> Result<Collected> {
        let mut text = String::new();
        let mut reasoning = String::new();
        let mut tool_calls = Vec::new();
        let mut deltas = 0;
        while let Some(event) = self.events.blocking_recv() {
            match event {
                Event::Delta(d) => {
                    text.push_str(&d.text);
                    reasoning.push_str(&d.reasoning);
                    tool_calls.extend(d.tool_calls);
                    deltas += 1;
                }
                Event::Done(done) => {
                    return Ok(Collected {
                        text,
                        reasoning,
                        tool_calls,
                        deltas,
                        done,
                    })
                }
                Event::Error(e) => return Err(e),
                Event::Queued { .. } | Event::Started { .. } | Event::Prefill { .. } => {}
            }
        }
        Err(EngineError::Stopped)
    }
}

impl ChatEngine {
    /// Starts the worker thread.
    pub fn start(model: Arc<ChatModel>, cfg: EngineConfig) -> Self {
        let cfg = EngineConfig {
            max_concurrency: cfg.max_concurrency.max(1),
            event_buffer: cfg.event_buffer.max(2),
            ..cfg
        };
        let shared = Arc::new(Shared::default());
        let worker = {
            let (model, shared) = (model.clone(), shared.clone());
            std::thread::Builder::new()
                .name(format!("engine-{}", model.architecture))
                .spawn(move || work(&model, &shared, cfg))
                .expect("spawning a thread")
        };
        Self {
            model,
            cfg,
            shared,
            worker: Mutex::new(Some(worker)),
        }
    }

    pub fn model(&self) -> &Arc<ChatModel> {
        &self.model
    }

    pub fn config(&self) -> EngineConfig {
        self.cfg
    }

    /// Tokens of KV the prefix cache may keep (its byte budget over the
    /// model's KV bytes per token); 0 when it is off.
    pub fn prefix_cache_tokens(&self) -> usize {
        kv_budget::prefix_cache_bytes(&self.model, self.cfg)
            / self.model.lm.kv_bytes_per_token().max(1)
    }

    pub fn stats(&self) -> EngineStats {
        let kv = *self.shared.kv.lock().unwrap_or_else(|p| p.into_inner());
        let state = self.shared.lock();
        EngineStats {
            busy: state.busy,
            slots: self.cfg.max_concurrency,
            queued: state.waiting.len(),
            tokens_generated: self.shared.tokens.load(Ordering::Relaxed),
            prefix_cache: *self.shared.cache.lock().unwrap_or_else(|p| p.into_inner()),
            batch_kv_tokens: kv.tokens,
            batch_kv_peak: kv.peak,
            suspensions: kv.suspensions,
            batch_kv_budget: Some(kv_budget::tokens(&self.model, self.cfg))
                .filter(|&b| b != usize::MAX),
        }
    }

    /// Validates, renders and tokenises the request, then queues it.
    /// Everything that can be refused is refused here, before any compute.
    pub fn submit(&self, req: &GenerateRequest) -> Result<Generation> {
        let (tx, rx) = mpsc::channel(self.cfg.event_buffer);
        let cancel = Arc::new(AtomicBool::new(false));
        let job = self.prepare(req, tx, cancel.clone())?;
        let prompt_tokens = (job.prompt.len() - job.replay) as u32;
        let mut state = self.shared.lock();
        if state.draining || state.stopped {
            return Err(EngineError::Stopped);
        }
        // Jobs the worker has not admitted yet count against the slots
        // first, then against the queue.
        let taken = state.busy + state.waiting.len();
        if taken >= self.cfg.max_concurrency + self.cfg.max_queue {
            let overloaded = EngineError::Overloaded {
                busy: state.busy,
                queued: taken.saturating_sub(self.cfg.max_concurrency),
            };
            // A full queue: a tenant holding more than its share yields
            // its newest place (fair_queue.rs), or the newcomer is refused.
            let Some(pushed_out) = state.waiting.displace_for(&job) else {
                return Err(overloaded);
            };
            let _ = pushed_out.events.try_send(Event::Error(overloaded));
        }
        let waits = taken >= self.cfg.max_concurrency;
        let events = job.events.clone();
        let id = job.request_id.clone();
        state.waiting.push(job);
        if waits {
            // Its place in the fair order, not in arrival order; jobs the
            // worker has not admitted yet take the free slots first.
            let order = state.waiting.in_order();
            let ahead = order
                .iter()
                .position(|j| j.request_id == id)
                .unwrap_or(order.len());
            let free = self.cfg.max_concurrency.saturating_sub(state.busy);
            let position = (ahead + 1).saturating_sub(free).max(1);
            let _ = events.try_send(Event::Queued {
                position: position as u32,
            });
        }
        drop(state);
        self.shared.wake.notify_one();
        Ok(Generation {
            request_id: req.request_id.clone(),
            prompt_tokens,
            events: rx,
            cancel,
        })
    }

    fn prepare(
        &self,
        req: &GenerateRequest,
        events: mpsc::Sender<Event>,
        cancel: Arc<AtomicBool>,
    ) -> Result<Job> {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        let sampling = SamplingConfig::from_params(&req.sampling, seed)
            .map_err(EngineError::InvalidRequest)?;
        if req.logprobs.is_some_and(|n| n > MAX_TOP_LOGPROBS) {
            return Err(EngineError::InvalidRequest(format!(
                "logprobs may ask for at most {MAX_TOP_LOGPROBS} alternatives"
            )));
        }
        if req.max_tokens == Some(0) {
            return Err(EngineError::InvalidRequest(
                "max_tokens must be at least 1".into(),
            ));
        }
        let (text, prompt) = self.model.prompt(req)?;
        if prompt.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        let window = self.model.context_length();
        let asked = req.max_tokens.map_or(1, |n| n as usize);
        // At least one token must fit; past that, a `max_tokens` the window
        // cannot hold is bounded by it unless the catalogue says refuse.
        let reserve = if self.cfg.refuse_over_window {
            asked
        } else {
            1
        };
        if prompt.len() + reserve > window {
            return Err(EngineError::ContextTooLong {
                prompt: prompt.len(),
                reserve,
                window,
            });
        }
        // A resume runs its earlier tokens after the prompt; they count
        // toward max_tokens, and the window must still have room for one more.
        let replay = req.resume.len();
        let sampler = Sampler::new(sampling, &prompt);
        let mut prompt = prompt;
        prompt.extend_from_slice(&req.resume);
        if prompt.len() >= window {
            return Err(EngineError::ContextTooLong {
                prompt: prompt.len() - replay,
                reserve: replay + 1,
                window,
            });
        }
        let room = replay + (window - prompt.len());
        let deadline = req.deadline_ms.map(|ms| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or_default();
            Instant::now() + Duration::from_millis(ms.saturating_sub(now))
        });
        Ok(Job {
            request_id: req.request_id.clone(),
            max_tokens: req.max_tokens.map_or(room, |n| (n as usize).min(room)),
            sampler,
            prompt,
            replay,
            stops: req.stop.clone(),
            tools: !active_tools(req).is_empty(),
            // Completions have nowhere to put reasoning: all is text there.
            think: (self.model.reasons() && matches!(req.input, GenerateInput::Chat { .. }))
                .then(|| ThinkParser::opened_by(&text)),
            logprobs: req.logprobs.map(usize::from),
            constraint: self.model.constraint(req)?,
            deadline,
            events,
            cancel,
            queued_at: Instant::now(),
            tenant: req.tenant.clone().unwrap_or_default(),
            priority: req.priority,
        })
    }

    /// Stops taking requests, lets queued and running ones finish, and
    /// waits for the worker (at most `timeout`; what is left is cancelled).
    pub fn drain(&self, timeout: Duration) {
        self.shared.lock().draining = true;
        self.shared.wake.notify_all();
        let deadline = Instant::now() + timeout;
        loop {
            let idle = {
                let s = self.shared.lock();
                s.busy == 0 && s.waiting.is_empty()
            };
            if idle || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.stop();
    }

    /// Cancels everything and stops the worker.
    pub fn stop(&self) {
        self.shared.lock().stopped = true;
        self.shared.wake.notify_all();
        if let Some(worker) = self.worker.lock().ok().and_then(|mut w| w.take()) {
            let _ = worker.join();
        }
    }
}

impl Drop for ChatEngine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs still holding a slot.
fn computing(runs: &[Run]) -> usize {
    runs.iter().filter(|run| !run.released()).count()
}

/// The worker: admit from the queue into free slots (starting from the
/// longest cached prefix), run one batched forward pass over every running
/// sequence, deliver, repeat; sleep when idle.
fn work(model: &ChatModel, shared: &Shared, cfg: EngineConfig) {
    let mut runs: Vec<Run> = Vec::new();
    let mut cache = PrefixCache::new(kv_budget::prefix_cache_bytes(model, cfg));
    *shared.cache.lock().unwrap_or_else(|p| p.into_inner()) = cache.stats();
    let kv_budget = kv_budget::tokens(model, cfg);
    let prompt_budget = cfg
        .prompt_tokens_per_step
        .unwrap_or_else(|| model.lm.prompt_tokens_per_step())
        .max(1);
    let mut suspensions = 0u64;
    loop {
        {
            let mut state = shared.lock();
            if state.stopped {
                for job in state.waiting.drain() {
                    let _ = job.events.try_send(Event::Error(EngineError::Stopped));
                }
                break;
            }
            // Cancelled jobs leave the queue at once, not when a slot frees.
            let queued = state.waiting.len();
            state.waiting.retain(|job| {
                let gone = job.cancel.load(Ordering::Relaxed) || job.events.is_closed();
                if gone {
                    let _ = job.events.try_send(Event::Error(EngineError::Cancelled));
                }
                !gone
            });
            let mut admitted = state.waiting.len() != queued;
            // Suspended runs come back first, oldest first, as the KV
            // budget allows; new requests wait behind them.
            let room = kv_budget::resume(model, &mut runs, &mut cache, kv_budget);
            // Runs that gave their slot back only deliver their last events.
            while room && computing(&runs) < cfg.max_concurrency {
                let free = cfg.max_concurrency - computing(&runs);
                let running = runs.iter().filter(|r| !r.released()).map(Run::tenant);
                let Some(job) = state.waiting.pop_for(free, cfg.max_concurrency, running) else {
                    break;
                };
                if job.cancel.load(Ordering::Relaxed) || job.events.is_closed() {
                    let _ = job.events.try_send(Event::Error(EngineError::Cancelled));
                    continue;
                }
                if !kv_budget::fits(&runs, job.prompt.len() + 1, kv_budget) {
                    // Admitted into its slot, but waits there for KV room.
                    let mut run = Run::new(model, job, model.lm.start(), 0);
                    let _ = run.suspend(model.lm.start());
                    runs.push(run);
                    suspensions += 1;
                    admitted = true;
                    break;
                }
                let (seq, cached) = cache
                    .lookup(&job.prompt)
                    .unwrap_or_else(|| (model.lm.start(), 0));
                runs.push(Run::new(model, job, seq, cached));
                admitted = true;
            }
            if admitted {
                for (i, job) in state.waiting.in_order().into_iter().enumerate() {
                    let _ = job.events.try_send(Event::Queued {
                        position: i as u32 + 1,
                    });
                }
            }
            state.busy = computing(&runs);
            if runs.is_empty() {
                let _unused = shared.wake.wait_timeout(state, Duration::from_millis(100));
                continue;
            }
        }
        suspensions += kv_budget::fit(model, &mut runs, &mut cache, kv_budget);
        let computed = step(model, &mut runs, prompt_budget);
        {
            let held = kv_budget::held(&runs);
            let mut kv = shared.kv.lock().unwrap_or_else(|p| p.into_inner());
            kv.tokens = held;
            kv.peak = kv.peak.max(held);
            kv.suspensions = suspensions;
        }
        let mut only_delivering = true;
        let mut i = 0;
        while i < runs.len() {
            let run = &mut runs[i];
            if let Some((tokens, seq)) = run.prompt_kv(|t| cache.covers(t)) {
                cache.insert(tokens, seq);
            }
            only_delivering &= run.finishing();
            let progress = run.deliver(&mut || {
                let mut state = shared.lock();
                state.busy = state.busy.saturating_sub(1);
            });
            if progress == Progress::Finished {
                let run = runs.swap_remove(i);
                shared.lock().waiting.touch(run.tenant());
                tracing::debug!(request_id = run.request_id(), "generation finished");
                if let Some((tokens, seq)) = run.into_kv() {
                    cache.insert(tokens, seq);
                }
            } else {
                i += 1;
            }
        }
        shared.tokens.fetch_add(computed, Ordering::Relaxed);
        *shared.cache.lock().unwrap_or_else(|p| p.into_inner()) = cache.stats();
        shared.lock().busy = computing(&runs);
        if only_delivering && !runs.is_empty() {
            // Every remaining run waits on a full channel: do not spin.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for mut run in runs {
        run.abort();
    }
    shared.lock().busy = 0;
}
