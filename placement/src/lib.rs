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

pub mod catalog;
pub mod decide;

pub use catalog::CatalogView;
