//! Catalogue entries: what `models.toml` declares and `cortex-catalog` stores.

use serde::{Deserialize, Serialize};

use crate::sampling::SamplingParams;

/// What a model does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    #[default]
    Chat,
    Embedding,
}

/// On-disk format of the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum ModelFormat {
    Gguf,
    Safetensors,
}

/// Pinning: `false`, `true` (kept loaded somewhere, never evicted), or a list
/// of neurons that must each hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(untagged)]
pub enum Pinned {
    Flag(bool),
    Neurons(Vec<String>),
}

impl Default for Pinned {
    fn default() -> Self {
        Self::Flag(false)
    }
}

impl Pinned {
    /// Whether the model is pinned at all.
    pub fn is_pinned(&self) -> bool {
        match self {
            Self::Flag(flag) => *flag,
            Self::Neurons(list) => !list.is_empty(),
        }
    }
}

/// What a request whose `max_tokens` does not fit in what the prompt leaves
/// of the context window gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum OverWindow {
    /// Generation is bounded by the window instead, and ends with
    /// `finish_reason: length` when it reaches it (as llama.cpp and Ollama).
    #[default]
    Clamp,
    /// The request is refused as too long.
    Refuse,
}

/// Slots per replica when neither the catalogue entry (`max_concurrency`)
/// nor the neuron (`--max-concurrency`) says: the one default the neuron,
/// the engine and placement share.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 4;

/// One catalogue entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ModelProfile {
    /// Unique id clients name (`model` in requests).
    pub id: String,
    /// Other names that resolve to this id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub kind: ModelKind,
    /// Local path, `hf:org/name[@rev]:file`, or `store:name`.
    pub source: String,
    /// Detected from the source when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ModelFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u32>,
    /// Memory need; estimated from file size plus KV cache when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_mb: Option<u64>,
    /// Higher survives eviction longer.
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub pinned: Pinned,
    #[serde(default)]
    pub min_replicas: u32,
    #[serde(default = "one")]
    pub max_replicas: u32,
    /// Unload after this long without requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ttl_ms: Option<u64>,
    /// Spill-over: once every replica has been saturated (twice its slots
    /// in work) this long, placement loads one more, up to `max_replicas`.
    /// Absent: placement's `--scale-up-after` cycles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spill_after_ms: Option<u64>,
    /// Concurrent sequences (slots) per replica: the batch one forward
    /// pass runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    /// KV memory kept for reuse by later prompts (the prefix cache), in
    /// MiB; 0 turns it off. Default: one full context window of KV, which
    /// the memory estimate counts beside the window the sequences use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_cache_mb: Option<u64>,
    /// Jinja chat template overriding the model's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// Defaults for requests that leave sampling fields out.
    #[serde(default)]
    pub sampling: SamplingParams,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_max_tokens: Option<u32>,
    /// A `max_tokens` beyond what the prompt leaves of the window.
    #[serde(default)]
    pub max_tokens_over_window: OverWindow,
}

impl ModelProfile {
    /// `vram_mb` in bytes: the one conversion placement, the neuron and
    /// the footprint estimate share.
    pub fn vram_bytes(&self) -> Option<u64> {
        self.vram_mb.map(|mb| mb.saturating_mul(1 << 20))
    }
}

fn one() -> u32 {
    1
}
