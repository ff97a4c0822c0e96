//! # Cortex ingress
//!
//! Stateless OpenAI- and Anthropic-compatible HTTP front over the bus: each
//! request becomes one streamed NATS request/reply to a neuron. Any number
//! of pods can run behind a load balancer; none keeps state beyond its
//! view of the fleet (from heartbeats).
//!
//! ## Layout
//! - [`config`]: flags and environment; [`server`]: routes, health,
//!   metrics, [`run`]; [`accept`]: connections with limits against slow
//!   and greedy clients (header timeout and size, connection cap);
//!   [`stall`]: writes that make no progress fail after a deadline.
//! - [`openai`], [`anthropic`]: one module per dialect: request types,
//!   translation to the wire `GenerateRequest`, answers whole or streamed.
//! - [`pipeline`]: the one path every text-generating API takes (an
//!   [`pipeline::Api`] per endpoint: request type, translation, answer).
//! - [`call`]: one bus call with retries before the first output, cancel
//!   on client disconnect, and [`call::Opened::next`], the one frame loop;
//!   [`resume`]: a stream whose neuron fails mid-way goes on on another
//!   replica; [`cold`]: placement's `ensure` when no neuron holds the model;
//!   [`generation`]: reading it whole; [`sse`]: streaming it through an
//!   API's encoder.
//! - [`error`]: every failure and its one mapping to status and dialect
//!   body; [`body`]: JSON bodies with errors that name the field;
//!   [`validate`]: checks both dialects share.
//! - [`auth`]: API keys (constant-time check) and per-key request and
//!   token limits.
//! - [`cors`]: cross-origin access for browsers, off unless origins are named.
//! - [`fleet`]: live neurons and their models, from heartbeats;
//!   [`route`]: which replica a request goes to (prefix held, load);
//!   [`catalog`]: what placement can load, from the `cortex-catalog` bucket;
//!   [`state`]: what handlers share (in-flight limit included);
//!   [`metrics`]: Prometheus; [`ids`]: request ids; [`trace`]: a log
//!   line per request.
//! - [`console`]: the fleet console at `/ui` (one page built in, its
//!   status and control calls); [`recent`]: the pod's last finished
//!   requests it shows.

pub(crate) mod accept;
pub mod anthropic;
pub(crate) mod auth;
pub mod body;
pub(crate) mod call;
pub(crate) mod catalog;
pub(crate) mod cold;
pub mod config;
pub(crate) mod console;
pub(crate) mod cors;
pub mod error;
pub mod fleet;
pub(crate) mod generation;
pub(crate) mod ids;
pub(crate) mod metrics;
pub mod openai;
pub(crate) mod pipeline;
pub(crate) mod recent;
pub(crate) mod resume;
pub mod route;
pub mod server;
pub(crate) mod sse;
pub(crate) mod stall;
pub mod state;
pub(crate) mod trace;
pub(crate) mod validate;

#[cfg(test)]
mod encoder_tests;

pub use config::IngressConfig;

/// The serde name of a unit enum value (`chat`, `embedding`).
pub(crate) fn metrics_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
pub use server::{run, Ingress, IngressError};
