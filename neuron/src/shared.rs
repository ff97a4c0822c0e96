//! State every task of one neuron shares: identity, connection, the models
//! it holds, and its own lifecycle state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_nats::Client;
use cortex_bus::{CancelRegistry, Subjects};
use cortex_schemas::{EventDetail, NeuronState, NeuronStatus};

use crate::config::{NeuronConfig, Validated};
use crate::discovery::Discovery;
use crate::held::HeldModel;
use crate::metrics::Metrics;

/// One neuron's shared state.
#[derive(Debug)]
pub struct Shared {
    pub id: String,
    pub subjects: Subjects,
    pub client: Client,
    pub config: NeuronConfig,
    pub valid: Validated,
    pub discovery: Discovery,
    pub cancels: CancelRegistry,
    pub metrics: Metrics,
    /// Serialises fit checks, so two loads cannot both take the same free memory.
    pub fit_lock: Mutex<()>,
    /// Wakes the heartbeat task to publish at once (state changes).
    pub heartbeat_now: tokio::sync::Notify,
    /// Wakes the prefix publisher (a model's prefix index changed).
    pub prefixes_changed: tokio::sync::Notify,
    /// Prompts rendered and tokenised at once on blocking threads (one per
    /// core); more wait their turn, without holding a thread.
    pub renders: tokio::sync::Semaphore,
    models: Mutex<BTreeMap<String, Arc<HeldModel>>>,
    state: Mutex<NeuronState>,
}

impl Shared {
    pub fn new(
        config: NeuronConfig,
        valid: Validated,
        client: Client,
        discovery: Discovery,
    ) -> Arc<Self> {
        let metrics = Metrics::new(&valid.id);
        Arc::new(Self {
            id: valid.id.clone(),
            subjects: valid.subjects.clone(),
            client,
            config,
            valid,
            discovery,
            cancels: CancelRegistry::new(),
            metrics,
            fit_lock: Mutex::new(()),
            heartbeat_now: tokio::sync::Notify::new(),
            prefixes_changed: tokio::sync::Notify::new(),
            renders: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            models: Mutex::new(BTreeMap::new()),
            state: Mutex::new(NeuronState::Starting),
        })
    }

    /// The model table; held only for short, non-awaiting sections.
    pub fn models(&self) -> MutexGuard<'_, BTreeMap<String, Arc<HeldModel>>> {
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A model by id, or by subject token (`a.b` and `a_b` name the same model).
    pub fn model(&self, id: &str) -> Option<Arc<HeldModel>> {
        let models = self.models();
        if let Some(held) = models.get(id) {
            return Some(held.clone());
        }
        let token = cortex_bus::ModelToken::new(id).ok()?;
        models.values().find(|m| m.token == token).cloned()
    }

    pub fn all_models(&self) -> Vec<Arc<HeldModel>> {
        self.models().values().cloned().collect()
    }

    pub fn state(&self) -> NeuronState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_state(&self, state: NeuronState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    /// Moves to `to` only from `from`; false (and no change) otherwise.
    pub fn transition_state(&self, from: NeuronState, to: NeuronState) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if *state == from {
            *state = to;
            true
        } else {
            false
        }
    }

    /// Asks for a heartbeat now rather than at the next tick.
    pub fn heartbeat_soon(&self) {
        self.heartbeat_now.notify_one();
    }

    /// Whether new work (requests, loads) is taken.
    pub fn accepting(&self) -> bool {
        matches!(self.state(), NeuronState::Starting | NeuronState::Ready)
    }

    /// Memory our models take (or have reserved) on device `index`.
    pub fn memory_on(&self, index: u32) -> u64 {
        self.models()
            .values()
            .filter(|m| m.device() == index)
            .map(|m| m.memory_bytes())
            .sum()
    }

    /// What a device can still take. Where the measure comes from the
    /// device (NVML), it shows neither loads in progress nor the KV caches
    /// loaded models reserved but have not filled: both are taken off, so
    /// the fit check and the heartbeats placement plans with agree.
    pub fn free_on(&self, device: &cortex_schemas::DeviceStatus) -> u64 {
        if self.discovery.tracks_our_memory() {
            return device.memory_free_bytes;
        }
        let models = self.all_models();
        let ours = |only_loading: bool| -> u64 {
            models
                .iter()
                .filter(|m| m.device() == device.index)
                .filter(|m| !only_loading || m.state() == cortex_schemas::ModelState::Loading)
                .map(|m| m.memory_bytes())
                .sum()
        };
        let measured = device.memory_free_bytes.saturating_sub(ours(true));
        let reserved = device.memory_total_bytes.saturating_sub(ours(false));
        measured.min(reserved)
    }

    /// The status heartbeats carry, taken now; device free memory as [`Self::free_on`] counts it.
    pub fn status(&self) -> NeuronStatus {
        let mut devices = self.discovery.devices(|index| self.memory_on(index));
        for device in &mut devices {
            device.memory_free_bytes = self.free_on(device);
        }
        NeuronStatus {
            neuron_id: self.id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            state: self.state(),
            engine: self.config.engine.as_str().to_string(),
            at_ms: cortex_bus::headers::unix_ms(),
            interval_ms: self.config.heartbeat_interval.as_millis() as u64,
            devices,
            models: self.all_models().iter().map(|m| m.status()).collect(),
        }
    }

    /// Publishes a lifecycle event on `<prefix>.v1.events.<kind>` (JSON).
    pub async fn event(&self, detail: EventDetail) {
        cortex_bus::events::publish(&self.client, &self.subjects, &self.id, detail).await;
    }

    /// Publishes `value` as JSON on `subject` (control-plane messages a
    /// `nats sub` reads); a failure is logged as `what` and dropped.
    pub async fn publish_json(&self, subject: String, value: &impl serde::Serialize, what: &str) {
        let encoding = cortex_bus::Encoding::Json;
        match encoding.encode(value) {
            Ok(payload) => {
                let published = self
                    .client
                    .publish_with_headers(subject, encoding.headers(), payload)
                    .await;
                if let Err(error) = published {
                    tracing::warn!(%error, "{what} not published");
                }
            }
            Err(error) => tracing::error!(%error, "{what} not encodable"),
        }
    }
}
