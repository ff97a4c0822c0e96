//! One model held by this neuron: its lifecycle state, its engine once
//! loaded, and the counters heartbeats and drains read (requests in
//! flight, last use, recent tokens per second).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cortex_bus::ModelToken;
use cortex_engine::embed::EmbedEngine;
use cortex_engine::{ChatEngine, LoadProgress};
use cortex_schemas::{ModelKind, ModelProfile, ModelState, ModelStatus};

use crate::lifecycle::load_error::LoadError;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The engine serving a loaded model.
#[derive(Debug, Clone)]
pub enum Backend {
    Chat(Arc<ChatEngine>),
    Embed(Arc<EmbedEngine>),
}

impl Backend {
    pub fn kind(&self) -> ModelKind {
        match self {
            Self::Chat(_) => ModelKind::Chat,
            Self::Embed(_) => ModelKind::Embedding,
        }
    }

    /// (busy slots, total slots, queued requests, tokens generated so far).
    pub fn load_figures(&self) -> (u32, u32, u32, u64) {
        match self {
            Self::Chat(engine) => {
                let stats = engine.stats();
                (
                    stats.busy as u32,
                    stats.slots as u32,
                    stats.queued as u32,
                    stats.tokens_generated,
                )
            }
            Self::Embed(engine) => (engine.busy() as u32, engine.slots() as u32, 0, 0),
        }
    }
}

impl Backend {
    /// The chat engine's running KV against its budget, where it counts one.
    pub fn batch_kv(&self) -> Option<cortex_schemas::BatchKvStatus> {
        let Self::Chat(engine) = self else {
            return None;
        };
        let s = engine.stats();
        Some(cortex_schemas::BatchKvStatus {
            tokens: s.batch_kv_tokens as u64,
            peak_tokens: s.batch_kv_peak as u64,
            budget_tokens: s.batch_kv_budget? as u64,
            suspensions: s.suspensions,
        })
    }

    /// The chat engine's prefix cache, where it keeps one.
    pub fn prefix_cache(&self) -> Option<cortex_schemas::PrefixCacheStatus> {
        let Self::Chat(engine) = self else {
            return None;
        };
        let c = engine.stats().prefix_cache;
        (c.budget > 0).then_some(cortex_schemas::PrefixCacheStatus {
            hits: c.hits,
            misses: c.misses,
            hit_tokens: c.hit_tokens,
            bytes: c.bytes,
            budget_bytes: c.budget,
        })
    }
}

/// How a load ended, for everyone waiting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    Pending,
    Ready,
    Failed(LoadError),
}

#[derive(Debug)]
struct Phase {
    state: ModelState,
    error: Option<String>,
    backend: Option<Backend>,
    device: u32,
    memory_bytes: u64,
}

/// The task taking requests from the model's queue subject.
#[derive(Debug)]
pub struct Intake {
    pub stop: CancellationToken,
    pub task: JoinHandle<()>,
}

/// A model on this neuron, from the moment a load is asked for until it is unloaded.
#[derive(Debug)]
pub struct HeldModel {
    pub profile: ModelProfile,
    pub token: ModelToken,
    pub progress: LoadProgress,
    phase: Mutex<Phase>,
    outcome: watch::Sender<LoadOutcome>,
    in_flight: AtomicU32,
    idle: Notify,
    last_used_ms: AtomicU64,
    /// f64 bits of the tokens-per-second figure of the last heartbeat interval.
    tokens_per_second: AtomicU64,
    /// Cancels every request in flight (forced unload, shutdown timeout).
    pub abort: CancellationToken,
    /// Serialises the lifecycle steps that change the model's subscription
    /// (resume, drain, unload, the end of a load), so none undoes another.
    pub ops: tokio::sync::Mutex<()>,
    pub intake: Mutex<Option<Intake>>,
    /// Prompt prefixes computed recently (chat models with a prefix cache).
    pub prefixes: crate::prefixes::PrefixIndex,
}

impl HeldModel {
    pub fn new(profile: ModelProfile, token: ModelToken) -> Self {
        Self {
            profile,
            token,
            progress: LoadProgress::new(),
            phase: Mutex::new(Phase {
                state: ModelState::Loading,
                error: None,
                backend: None,
                device: 0,
                memory_bytes: 0,
            }),
            outcome: watch::channel(LoadOutcome::Pending).0,
            in_flight: AtomicU32::new(0),
            idle: Notify::new(),
            last_used_ms: AtomicU64::new(0),
            tokens_per_second: AtomicU64::new(0f64.to_bits()),
            abort: CancellationToken::new(),
            ops: tokio::sync::Mutex::new(()),
            intake: Mutex::new(None),
            prefixes: crate::prefixes::PrefixIndex::default(),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn id(&self) -> &str {
        &self.profile.id
    }

    pub fn state(&self) -> ModelState {
        self.phase().state
    }

    pub fn set_state(&self, state: ModelState) {
        self.phase().state = state;
    }

    /// Moves to `to` only from one of `from`; false (and no change) otherwise.
    pub fn transition(&self, from: &[ModelState], to: ModelState) -> bool {
        let mut phase = self.phase();
        if from.contains(&phase.state) {
            phase.state = to;
            true
        } else {
            false
        }
    }

    pub fn backend(&self) -> Option<Backend> {
        self.phase().backend.clone()
    }

    pub fn device(&self) -> u32 {
        self.phase().device
    }

    pub fn memory_bytes(&self) -> u64 {
        self.phase().memory_bytes
    }

    /// Reserves memory on a device while the model loads.
    pub fn reserve(&self, device: u32, memory_bytes: u64) {
        let mut phase = self.phase();
        phase.device = device;
        phase.memory_bytes = memory_bytes;
    }

    /// The load succeeded: requests find the engine from now on.
    pub fn install(&self, backend: Backend) {
        let mut phase = self.phase();
        phase.backend = Some(backend);
        phase.state = ModelState::Ready;
        phase.error = None;
    }

    /// Tells everyone waiting on the load that the model serves (call once
    /// its intake is subscribed, so a reply never precedes the subscription).
    pub fn announce_ready(&self) {
        self.outcome.send_replace(LoadOutcome::Ready);
    }

    /// Raises the reservation to what the loaded model turned out to take.
    pub fn grow_reservation(&self, bytes: u64) {
        let mut phase = self.phase();
        phase.memory_bytes = phase.memory_bytes.max(bytes);
    }

    /// The load failed; the entry stays (state `failed`) so operators see why.
    pub fn set_failed(&self, error: LoadError) {
        {
            let mut phase = self.phase();
            phase.state = ModelState::Failed;
            phase.error = Some(error.to_string());
            phase.backend = None;
            phase.memory_bytes = 0;
        }
        self.outcome.send_replace(LoadOutcome::Failed(error));
    }

    /// Takes the engine out (for unloading); the model then serves nothing.
    /// Its memory stays reserved until [`Self::clear_reservation`], once the
    /// engine is really gone.
    pub fn take_backend(&self) -> Option<Backend> {
        self.phase().backend.take()
    }

    pub fn clear_reservation(&self) {
        self.phase().memory_bytes = 0;
    }

    /// Waits for the load to end: ready, or failed with why.
    pub async fn loaded(&self) -> Result<(), LoadError> {
        let mut rx = self.outcome.subscribe();
        let outcome = match rx.wait_for(|o| *o != LoadOutcome::Pending).await {
            Ok(outcome) => match &*outcome {
                LoadOutcome::Failed(why) => Err(why.clone()),
                _ => Ok(()),
            },
            Err(_) => Err(LoadError::Abandoned),
        };
        outcome
    }

    /// Marks a request as started; the guard ends it.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.touch();
        InFlight(Arc::clone(self))
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    fn touch(&self) {
        self.last_used_ms
            .store(cortex_bus::headers::unix_ms(), Ordering::Relaxed);
    }

    /// Waits until no request is in flight, at most `timeout`; true when idle.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a wake between the two is not lost.
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }

    /// Records the tokens-per-second figure over the last interval.
    pub fn set_tokens_per_second(&self, rate: f64) {
        self.tokens_per_second
            .store(rate.to_bits(), Ordering::Relaxed);
    }

    /// What heartbeats say about this model.
    pub fn status(&self) -> ModelStatus {
        let phase = self.phase();
        let (slots_busy, slots_total, queue_depth, _) = phase
            .backend
            .as_ref()
            .map_or((0, 0, 0, 0), Backend::load_figures);
        let last_used = self.last_used_ms.load(Ordering::Relaxed);
        ModelStatus {
            model_id: self.profile.id.clone(),
            state: phase.state,
            load_progress: (phase.state == ModelState::Loading).then(|| self.progress.fraction()),
            error: phase.error.clone(),
            device: phase.device,
            memory_bytes: phase.memory_bytes,
            slots_busy,
            slots_total,
            queue_depth,
            tokens_per_second: f64::from_bits(self.tokens_per_second.load(Ordering::Relaxed)),
            last_used_ms: (last_used > 0).then_some(last_used),
            prefix_cache: phase.backend.as_ref().and_then(Backend::prefix_cache),
            batch_kv: phase.backend.as_ref().and_then(Backend::batch_kv),
        }
    }
}

/// One request in flight on a model; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight(Arc<HeldModel>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
