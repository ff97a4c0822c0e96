//! # Cortex placement
//!
//! Decides which neuron holds which model (cold load on demand, eviction,
//! pinning, idle unload, replicas) and keeps that state in JetStream KV, so
//! any replica can restart and carry on.
//!
//! ## Layout
//! - [`catalog`]: `models.toml` ([`catalog::file`]), its publication to
//!   `cortex-catalog` ([`catalog::publish`]), every replica's [`CatalogView`].
//! - [`decide`]: pure decisions over a [`decide::Snapshot`]: where a copy
//!   goes and what it evicts ([`decide::place`]), what each cycle does
//!   ([`decide::reconcile`]); property-tested.
//! - [`fleet`]: live neurons from heartbeats, lost after 3 silent intervals.
//! - [`assignments`]: `cortex-placements` followed, changed only by compare-and-swap.
//! - [`lease`]: the reconciler lease in `cortex-leases`.
//! - [`ensure`]: cold start on demand, single-flight across replicas.
//! - [`actions`]: evict, load, unload against neurons, recorded in KV.
//! - [`reconciler`]: the leader's loop (lost neurons, KV sync, floors,
//!   scaling, idle unload, consolidation).
//! - [`verbs`]: the operator's status, load, unload, pin, unpin, reload.
//! - [`service`]: the `cortex-placement` micro service.
//! - [`metrics`]: Prometheus metrics and `/healthz`.
//! - [`config`], [`shared`], [`placement`]: settings, shared state, start and shutdown.

pub(crate) mod actions;
pub(crate) mod assignments;
pub mod catalog;
pub mod config;
pub mod decide;
pub(crate) mod ensure;
pub mod fleet;
pub(crate) mod lease;
pub(crate) mod metrics;
pub mod placement;
pub(crate) mod reconciler;
pub(crate) mod service;
pub mod shared;
pub(crate) mod verbs;

pub use catalog::CatalogView;
pub use config::PlacementConfig;
pub use placement::{run, Placement, PlacementError};
