//! Why a load failed: each way has its own variant, so callers (the
//! control reply, heartbeats, events) match on the kind and the words are
//! written in one place.

use cortex_schemas::{ErrorClass, WireError};

/// A failed load of one model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The model's `source` is malformed or names nothing that exists.
    #[error("{0}")]
    Source(String),
    /// `store:<name>` could not be fetched from the object store.
    #[error("source store:{name}: {reason}")]
    Store { name: String, reason: String },
    #[error("device {index} does not exist on neuron {neuron} ({count} devices)")]
    NoSuchDevice {
        index: u32,
        neuron: String,
        count: usize,
    },
    #[error("neuron {0} has no device")]
    NoDevice(String),
    /// Not enough free memory on the best device.
    #[error("model {model:?} needs {need} but device {index} ({device}) has {free} free")]
    NoRoom {
        model: String,
        need: String,
        index: u32,
        device: String,
        free: String,
    },
    #[error("the sim engine serves chat models only")]
    SimServesChatOnly,
    /// The engine refused or failed to load the files.
    #[error("{0}")]
    Engine(String),
    #[error("the load panicked: {0}")]
    Panicked(String),
    #[error("cannot subscribe to the model's subject: {0}")]
    Subscribe(String),
    #[error("neuron {0} began draining during the load")]
    Draining(String),
    /// The load's task ended without a result (it was dropped).
    #[error("the load ended unexpectedly")]
    Ended,
    /// Every waiter's view of the load was dropped.
    #[error("the load was abandoned")]
    Abandoned,
}

impl LoadError {
    /// As the `load` control reply sends it: every failed load is
    /// `unavailable` (the model cannot serve here now; placement tries
    /// elsewhere).
    pub fn to_wire(&self) -> WireError {
        WireError::new(ErrorClass::Unavailable, self.to_string())
    }
}
