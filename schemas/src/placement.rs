//! Placement state kept in JetStream KV: assignments and the leader lease.

use serde::{Deserialize, Serialize};

use crate::model::Pinned;

/// Where one model is (to be) loaded: the value of `cortex-placements/<token>`.
/// Changed only by compare-and-swap on the KV revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Assignment {
    pub model_id: String,
    #[serde(default)]
    pub replicas: Vec<Replica>,
    pub desired_replicas: u32,
    #[serde(default)]
    pub pinned: Pinned,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_ms: Option<u64>,
}

/// One neuron's copy of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Replica {
    pub neuron: String,
    /// Device index on that neuron, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<u32>,
    pub state: ReplicaState,
    /// Unix ms of the last state change.
    pub since_ms: u64,
}

/// Placement's view of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    Loading,
    Ready,
    Unloading,
    Failed,
}

/// The reconciler lease: `cortex-leases/placement-leader`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Lease {
    /// Id of the placement replica holding it.
    pub holder: String,
    /// Unix ms after which another replica may take it.
    pub expires_ms: u64,
    /// Increases each time the lease changes hands.
    pub term: u64,
}
