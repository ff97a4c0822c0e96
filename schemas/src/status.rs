//! Heartbeats: what a neuron publishes on `cortex.v1.heartbeat.<neuron>`.

use serde::{Deserialize, Serialize};

/// A neuron's view of itself, published every heartbeat interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct NeuronStatus {
    /// Stable id (defaults to the host name); the `<neuron>` subject token.
    pub neuron_id: String,
    /// Cortex version the neuron runs.
    pub version: String,
    pub state: NeuronState,
    /// Engine kind (`candle`, `sim`).
    pub engine: String,
    /// Unix ms when this status was taken.
    pub at_ms: u64,
    /// Heartbeat period; a neuron silent for 3 periods is lost.
    pub interval_ms: u64,
    pub devices: Vec<DeviceStatus>,
    #[serde(default)]
    pub models: Vec<ModelStatus>,
}

/// Lifecycle of the neuron process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum NeuronState {
    Starting,
    Ready,
    /// Finishing in-flight work, taking none.
    Draining,
    /// Final heartbeat before exit.
    Stopped,
}

/// Kind of compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Cpu,
    Cuda,
    Metal,
}

/// One device and its memory, as discovered at this heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DeviceStatus {
    /// Index within its kind (`cuda:0` is index 0).
    pub index: u32,
    pub kind: DeviceKind,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Memory budget: VRAM for GPUs, the configured RAM share for CPUs.
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    pub memory_free_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization_pct: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

/// State of a model on one neuron.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    Loading,
    Ready,
    /// Taking no new requests, finishing in-flight ones before unload.
    Draining,
    Unloading,
    Failed,
}

/// One model held (or being loaded) by a neuron.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ModelStatus {
    pub model_id: String,
    pub state: ModelState,
    /// While loading: fraction of bytes read, 0..=1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, proptest(strategy = "crate::testing::opt_f64()"))]
    pub load_progress: Option<f64>,
    /// When failed: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Index of the device holding it.
    pub device: u32,
    /// Memory the model occupies (weights and KV caches).
    pub memory_bytes: u64,
    pub slots_busy: u32,
    pub slots_total: u32,
    pub queue_depth: u32,
    /// Generated tokens per second over the last interval.
    #[cfg_attr(test, proptest(strategy = "crate::testing::finite_f64()"))]
    pub tokens_per_second: f64,
    /// Unix ms of the last request, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ms: Option<u64>,
    /// The model's prefix cache (chat models that keep one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_cache: Option<PrefixCacheStatus>,
    /// The KV the running sequences hold against their budget (chat
    /// models whose KV the engine can count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_kv: Option<BatchKvStatus>,
}

/// The running batch's KV cache: what it holds, the most it held, its
/// budget (all in tokens), and how often a sequence gave its KV up to stay
/// within it (it waits, keeping its slot, and is computed again).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct BatchKvStatus {
    pub tokens: u64,
    pub peak_tokens: u64,
    pub budget_tokens: u64,
    pub suspensions: u64,
}

/// What a model's prefix cache holds and has served since it loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PrefixCacheStatus {
    /// Requests that started from a cached prefix.
    pub hits: u64,
    /// Requests that found none.
    pub misses: u64,
    /// Prompt tokens served from the cache.
    pub hit_tokens: u64,
    /// KV bytes kept, and the most it may keep.
    pub bytes: u64,
    pub budget_bytes: u64,
}
