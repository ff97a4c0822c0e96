//! Lifecycle events on `cortex.v1.events.<kind>`.

use serde::{Deserialize, Serialize};

/// Something that happened on the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Event {
    /// Unix ms.
    pub at_ms: u64,
    /// Component that published it (neuron or placement replica id).
    pub source: String,
    pub detail: EventDetail,
}

/// What happened; `kind` is also the subject suffix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(tag = "kind")]
pub enum EventDetail {
    #[serde(rename = "neuron.joined")]
    NeuronJoined { neuron: String },
    #[serde(rename = "neuron.lost")]
    NeuronLost { neuron: String, last_seen_ms: u64 },
    #[serde(rename = "model.loading")]
    ModelLoading { model: String, neuron: String },
    #[serde(rename = "model.ready")]
    ModelReady {
        model: String,
        neuron: String,
        load_ms: u64,
    },
    #[serde(rename = "model.failed")]
    ModelFailed {
        model: String,
        neuron: String,
        error: String,
    },
    #[serde(rename = "model.evicted")]
    ModelEvicted {
        model: String,
        neuron: String,
        reason: String,
    },
    #[serde(rename = "model.unloaded")]
    ModelUnloaded { model: String, neuron: String },
}

impl EventDetail {
    /// The kind as it appears in the subject (`neuron.joined`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NeuronJoined { .. } => "neuron.joined",
            Self::NeuronLost { .. } => "neuron.lost",
            Self::ModelLoading { .. } => "model.loading",
            Self::ModelReady { .. } => "model.ready",
            Self::ModelFailed { .. } => "model.failed",
            Self::ModelEvicted { .. } => "model.evicted",
            Self::ModelUnloaded { .. } => "model.unloaded",
        }
    }
}
