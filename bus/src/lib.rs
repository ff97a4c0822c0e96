//! # Cortex bus: NATS for every Cortex component
//!
//! Hides NATS behind a few verbs: connect, build subjects, encode, stream a
//! request, serve requests, and keep state in JetStream KV. Each module has
//! its own error enum whose variants are the kinds callers match on.
//!
//! ## Layout
//! - [`connect`]: [`NatsOptions`] (servers, auth, TLS; clap flags with the
//!   `cli` feature) and `connect()` with first-connect retry.
//! - [`subject`]: [`Subjects`] builder and the [`ModelToken`] rule.
//! - [`codec`]: [`Encoding`] JSON / MessagePack chosen by `Content-Type`.
//! - [`headers`]: header names (`Cortex-Seq`, `Cortex-Request-Id`, ...).
//! - [`stream`]: streamed request/reply: [`stream_request`] → [`FrameStream`] on the
//!   requester side; [`serve`] → [`Incoming`] → [`Responder`] on the responder side; cancels.
//! - `flags` (feature `cli`): a daemon's flags parsed from a list of
//!   arguments (`cortex up`, tests).
//! - [`control`]: [`control::call`], a JSON request to a micro-service endpoint with a deadline.
//! - [`events`]: lifecycle events published as JSON.
//! - [`heartbeat`]: heartbeats as followers take them (only for the neuron their subject names);
//!   [`fleet`]: [`fleet::FleetView`], the latest heartbeat of every neuron with a per-model index.
//! - [`prefix`]: prompt prefixes as chained block hashes (what neurons publish, what ingress routes by).
//! - [`kv`]: bucket open-or-create, compare-and-swap updates, a self-healing watch.
//! - [`objects`]: the `cortex-models` object store: push files and folders, fetch them into a cache.
//! - `ops` (feature `http`): a daemon's `/metrics` and `/healthz`.
//! - [`sync`]: [`sync_with_server`], a barrier: the server has processed all this connection sent.

pub mod codec;
pub mod connect;
pub mod control;
pub mod events;
#[cfg(feature = "cli")]
pub mod flags;
pub mod fleet;
pub mod headers;
pub mod heartbeat;
pub mod kv;
pub mod objects;
#[cfg(feature = "http")]
pub mod ops;
pub mod prefix;
pub mod stream;
pub mod subject;
pub mod sync;

pub use codec::{CodecError, Encoding};
pub use connect::{ConnectError, NatsOptions};
pub use stream::{
    send_cancel, serve, serve_cancels, stream_request, CancelRegistry, FrameStream, Incoming,
    Responder, StreamError, StreamOptions,
};
pub use subject::{ModelToken, NeuronOp, PlacementOp, SubjectError, Subjects};
pub use sync::{sync_with_server, SyncError};

/// Queue group every neuron joins on `infer` subjects.
pub const QUEUE_GROUP: &str = "neurons";

/// The KV buckets and object store (ARCHITECTURE.md, "Control plane and
/// state").
pub mod buckets {
    /// Catalogue: model token → `ModelProfile`.
    pub const CATALOG: &str = "cortex-catalog";
    /// Assignments: model token → `Assignment`.
    pub const PLACEMENTS: &str = "cortex-placements";
    /// Leases: `placement-leader` → `Lease`.
    pub const LEASES: &str = "cortex-leases";
    /// Object store of model files.
    pub const MODELS: &str = "cortex-models";
}
