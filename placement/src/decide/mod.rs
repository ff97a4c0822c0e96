//! Decisions as pure functions over a [`Snapshot`]: [`place`] (where one
//! more copy goes, and what to evict for it) and [`reconcile`] (what the
//! leader does each cycle). No I/O here: the property tests in `tests`
//! drive them over random fleets, catalogues and request sequences.

pub mod place;
pub mod reconcile;
pub mod snapshot;
#[cfg(test)]
mod tests;

pub use place::{place, Evict, NoPlace, Plan, Strategy};
pub use reconcile::{reconcile, update_pressure, Action, Reason, Settings};
pub use snapshot::{DeviceView, Held, ModelSpec, NeuronView, ReplicaView, Snapshot};
