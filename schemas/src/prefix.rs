//! Prefix summaries: what a neuron publishes on
//! `cortex.v1.prefix.<neuron>` so that ingress can send a request to the
//! replica that already holds the start of its prompt in its KV cache.

use serde::{Deserialize, Serialize};

/// The prompt prefixes one model on one neuron computed recently, as
/// chained block hashes (see `cortex_bus::prefix`). Each message replaces
/// the previous one for the same neuron and model; an empty `blocks` says
/// the neuron holds nothing for it any more (the model was unloaded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PrefixSummary {
    pub neuron_id: String,
    pub model_id: String,
    /// Unix ms when the summary was taken.
    pub at_ms: u64,
    /// Bytes of canonical request text per block; a reader that hashes
    /// with another size ignores the summary.
    pub block_bytes: u32,
    /// Chained hashes of whole blocks (each below 2^53, so that JSON
    /// readers using doubles, `jq` included, keep them exact). A request
    /// whose first `n` block hashes are all here shares its first
    /// `n * block_bytes` bytes with a prompt this neuron computed.
    #[serde(default)]
    pub blocks: Vec<u64>,
}
