//! # Cortex neuron
//!
//! One daemon per GPU host: finds its devices, runs models in-process with
//! `cortex-engine`, publishes heartbeats, and serves each model's queue
//! group on NATS, streaming frames back to each request's inbox.
//!
//! ## Layout
//! - [`config`]: flags with environment variables; [`config_file`]: the
//!   optional TOML file; [`size`]: `24GiB` / `75%` memory sizes.
//! - [`discovery`]: GPUs through NVML, else the CPU with a memory budget,
//!   or simulated GPUs for the sim engine.
//! - [`held`]: one model on this neuron (state, engine, in-flight count);
//!   [`shared`]: the state all tasks of one neuron share.
//! - [`lifecycle`]: load (single-flight, fit-checked), unload, drain, and
//!   the memory estimate.
//! - [`serve`]: queue-group and directed intake, one request from decode
//!   to terminal frame, generation and embedding.
//! - [`control`]: the `cortex-neuron` NATS micro service (load, unload,
//!   drain, status).
//! - [`heartbeat`]: `NeuronStatus` on `<prefix>.v1.heartbeat.<id>`;
//!   [`prefixes`]: the prompt prefixes each model holds, on `<prefix>.v1.prefix.<id>`;
//!   [`pace`]: their loops' interval-or-now pace;
//!   [`metrics`] and [`http`]: `/metrics` and `/healthz`.
//! - [`neuron`]: [`Neuron::start`], graceful [`Neuron::shutdown`], and
//!   [`run`], the daemon.

pub mod config;
pub mod config_file;
pub(crate) mod control;
pub mod discovery;
pub(crate) mod heartbeat;
pub(crate) mod held;
pub(crate) mod http;
pub(crate) mod lifecycle;
pub(crate) mod metrics;
pub mod neuron;
pub(crate) mod pace;
pub(crate) mod prefixes;
pub(crate) mod serve;
pub mod shared;
pub(crate) mod size;

pub use config::{EngineKind, NeuronConfig};
pub use neuron::{run, Neuron, NeuronError};
