//! # Cortex placement
//!
//! Decides which neuron holds which model (cold load, eviction, pinning, idle
//! unload, replicas), with its state in JetStream KV.
//!
//! Not built yet (issue 6). Until then this crate holds nothing.
