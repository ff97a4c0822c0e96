//! # Cortex wire types (v1)
//!
//! The vocabulary every Cortex component speaks on NATS. Plain serde types,
//! no I/O, no async: each round-trips unchanged through JSON (control plane)
//! and MessagePack with named fields (data plane).
//!
//! ## Layout
//! - [`infer`]: data-plane requests: [`InferRequest`] = [`GenerateRequest`] | [`EmbedRequest`], and [`CancelRequest`].
//! - [`chat`]: messages, content parts, tool definitions and calls.
//! - [`sampling`]: [`SamplingParams`] and [`ResponseFormat`].
//! - [`frame`]: the streamed reply: [`Frame`] = Accepted | Keepalive | Delta | Done | Embeddings | Error.
//! - [`error`]: [`ErrorClass`] and [`WireError`], the errors that cross the bus.
//! - [`status`]: heartbeats: [`NeuronStatus`] with devices and models.
//! - [`prefix`]: [`PrefixSummary`], the prompt prefixes a neuron's model holds (for routing).
//! - [`model`]: catalogue entries ([`ModelProfile`]).
//! - [`placement`]: KV state: [`Assignment`], [`Lease`].
//! - [`control`]: control-plane requests and the [`Reply`] envelope.
//! - [`event`]: lifecycle [`Event`]s.

pub mod chat;
pub mod control;
pub mod error;
pub mod event;
pub mod frame;
pub mod infer;
pub mod model;
pub mod placement;
pub mod prefix;
pub mod sampling;
pub mod status;

#[cfg(test)]
mod roundtrip_tests;
#[cfg(test)]
mod testing;

pub use chat::{
    merge_system, ChatMessage, ContentPart, Role, ToolCall, ToolChoice, ToolDefinition,
};
pub use control::{
    AssignmentReply, DrainReply, DrainRequest, EnsureReply, EnsureRequest, LoadReply, LoadRequest,
    PinRequest, PlaceRequest, PlacementStatus, Reply, StatusReply, UnloadReply, UnloadRequest,
    UnpinRequest,
};
pub use error::{ErrorClass, TooLong, WireError};
pub use event::{Event, EventDetail};
pub use frame::{
    Accepted, Delta, Done, EmbedResponse, FinishReason, Frame, Keepalive, Timings, TokenLogprob,
    ToolCallDelta, TopLogprob, Usage,
};
pub use infer::{CancelRequest, EmbedRequest, GenerateInput, GenerateRequest, InferRequest};
pub use model::{
    ModelFormat, ModelKind, ModelProfile, OverWindow, Pinned, DEFAULT_MAX_CONCURRENCY,
};
pub use placement::{Assignment, Lease, Replica, ReplicaState};
pub use prefix::PrefixSummary;
pub use sampling::{ResponseFormat, SamplingParams};
pub use status::{
    BatchKvStatus, DeviceKind, DeviceStatus, ModelState, ModelStatus, NeuronState, NeuronStatus,
    PrefixCacheStatus,
};

/// Version of this wire vocabulary; also the `v1` token of every subject.
pub const WIRE_VERSION: &str = "v1";
