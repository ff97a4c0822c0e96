//! Control-plane requests and replies (JSON, NATS micro services).
//!
//! Neuron endpoints: `cortex.v1.neuron.<id>.{load,unload,drain,status}`.
//! Placement endpoints: `cortex.v1.placement.{ensure,status,pin,unpin,load,unload}`.
//! Every reply is a [`Reply`]: `{"ok": ...}` or `{"error": {...}}`.

use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::model::ModelProfile;
use crate::placement::Assignment;
use crate::status::NeuronStatus;

/// Reply envelope of every control endpoint, readable with `nats req`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    Ok(T),
    Error(WireError),
}

impl<T> Reply<T> {
    /// Into a `Result`, for callers that use `?`.
    pub fn into_result(self) -> Result<T, WireError> {
        match self {
            Self::Ok(value) => Ok(value),
            Self::Error(error) => Err(error),
        }
    }
}

impl<T> From<Result<T, WireError>> for Reply<T> {
    fn from(result: Result<T, WireError>) -> Self {
        match result {
            Ok(value) => Self::Ok(value),
            Err(error) => Self::Error(error),
        }
    }
}

/// Neuron `load`: bring a model up; replies when ready or failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct LoadRequest {
    pub profile: ModelProfile,
    /// Device index; absent lets the neuron choose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<u32>,
}

/// Neuron `load` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct LoadReply {
    pub model_id: String,
    pub device: u32,
    pub memory_bytes: u64,
    pub load_ms: u64,
}

/// Neuron `unload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UnloadRequest {
    pub model_id: String,
    /// Cancel in-flight requests instead of refusing.
    #[serde(default)]
    pub force: bool,
}

/// Neuron `unload` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UnloadReply {
    pub model_id: String,
    /// Requests cancelled because of `force`.
    pub cancelled: u32,
}

/// Neuron `drain`: stop taking requests (for one model or all), finish in-flight ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DrainRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
}

/// Neuron `drain` reply: sent once in-flight work has finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct DrainReply {
    /// Requests that were in flight when the drain began.
    pub finished: u32,
}

/// Neuron `status` reply.
pub type StatusReply = NeuronStatus;

/// Placement `ensure`: make sure a model has a ready replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct EnsureRequest {
    /// Model id or alias.
    pub model: String,
    /// How long the caller will wait for a cold load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Placement `ensure` reply: the model is ready on these neurons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct EnsureReply {
    /// Catalogue id the name resolved to.
    pub model_id: String,
    pub neurons: Vec<String>,
    /// Whether this call caused (or joined) a load.
    pub cold_start: bool,
    pub waited_ms: u64,
}

/// Placement `pin`: keep a model loaded (optionally on given neurons).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PinRequest {
    pub model: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub neurons: Vec<String>,
}

/// Placement `unpin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct UnpinRequest {
    pub model: String,
}

/// Placement `load` / `unload`: an operator's explicit order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PlaceRequest {
    pub model: String,
    /// A specific neuron; absent lets placement choose (load) or means all (unload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neuron: Option<String>,
}

/// Reply of `pin`, `unpin`, `load` and `unload`: the assignment afterwards.
pub type AssignmentReply = Assignment;

/// Placement `status` reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct PlacementStatus {
    /// Id of the replica that answered.
    pub replica: String,
    /// Current lease holder, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    pub neurons: Vec<NeuronStatus>,
    pub catalog: Vec<ModelProfile>,
    pub assignments: Vec<Assignment>,
}
