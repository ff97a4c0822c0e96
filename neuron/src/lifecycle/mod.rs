//! A model's life on the neuron: [`load`] (single-flight, fit-checked),
//! [`unload`] (refused while busy unless forced), [`drain`] (stop taking
//! requests, finish those in flight), and the memory [`memory`] estimate.

pub mod drain;
pub mod load;
pub mod memory;
pub mod unload;

use std::sync::Arc;

use crate::held::HeldModel;

/// Drops a model's engine on a blocking thread (stopping a chat engine
/// joins its worker thread).
pub(crate) async fn release(held: &Arc<HeldModel>) {
    let backend = held.take_backend();
    if let Err(error) = tokio::task::spawn_blocking(move || drop(backend)).await {
        tracing::warn!(%error, "engine did not stop cleanly");
    }
}
