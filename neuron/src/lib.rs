//! # Cortex neuron
//!
//! One daemon per GPU host: discovers devices, runs models in-process with
//! candle, publishes heartbeats and serves per-model queue groups.
//!
//! Not built yet: the inference engine (issue 3) and the daemon on the bus
//! (issue 4) land here. Until then this crate holds nothing.
