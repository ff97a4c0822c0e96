//! # Cortex neuron
//!
//! One daemon per GPU host: discovers devices, runs models in-process with
//! the inference engine (`cortex-engine`, which already exists), publishes
//! heartbeats and serves per-model queue groups.
//!
//! Not built yet: the daemon on the bus (issue 4) lands here. Until then
//! this crate holds nothing.
