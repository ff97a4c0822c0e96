//! A model's life on the neuron: [`load`] (single-flight, fit-checked;
//! [`load_error`] says why one failed),
//! [`unload`] (refused while busy unless forced), [`drain`] (stop taking
//! requests, finish those in flight). The memory estimate is the engine's
//! `footprint`.

pub mod drain;
pub mod load;
pub mod load_error;
pub mod unload;

use std::sync::Arc;
use std::time::Duration;

use crate::held::HeldModel;

/// Drops a model's engine on a blocking thread (stopping a chat engine
/// joins its worker thread), then frees its memory reservation. True when
/// there was an engine to release.
pub(crate) async fn release(held: &Arc<HeldModel>) -> bool {
    let backend = held.take_backend();
    let had = backend.is_some();
    if let Err(error) = tokio::task::spawn_blocking(move || drop(backend)).await {
        tracing::warn!(%error, "engine did not stop cleanly");
    }
    held.clear_reservation();
    had
}

/// Waits up to `timeout` for `held`'s requests; then cancels what is left
/// and gives it [`CANCEL_GRACE`] to leave. Returns how many were cancelled.
pub(crate) async fn settle(held: &HeldModel, timeout: Duration) -> u32 {
    if held.wait_idle(timeout).await {
        return 0;
    }
    let cancelled = held.in_flight();
    held.abort.cancel();
    held.wait_idle(CANCEL_GRACE).await;
    cancelled
}

/// How long cancelled requests get to leave their slots.
pub(crate) const CANCEL_GRACE: Duration = Duration::from_secs(5);
