//! Unloading: refused while requests are in flight unless forced. The
//! model first stops taking requests (its queue subscription drains, so a
//! request routed here just before is still served), then a forced unload
//! cancels what runs, and the engine is released once nothing is in flight.

use std::sync::Arc;
use std::time::Duration;

use cortex_schemas::{ErrorClass, EventDetail, ModelState, UnloadReply, UnloadRequest, WireError};

use crate::shared::Shared;

pub async fn unload(
    shared: &Arc<Shared>,
    request: UnloadRequest,
) -> Result<UnloadReply, WireError> {
    let held = shared.model(&request.model_id).ok_or_else(|| {
        WireError::new(
            ErrorClass::ModelNotFound,
            format!(
                "neuron {} does not hold model {:?}",
                shared.id, request.model_id
            ),
        )
    })?;
    let _op = held.ops.lock().await;
    match held.state() {
        ModelState::Loading => {
            return Err(WireError::new(
                ErrorClass::Unavailable,
                format!(
                    "model {:?} is still loading; unload it once loaded",
                    held.id()
                ),
            ))
        }
        ModelState::Unloading => {
            return Err(WireError::new(
                ErrorClass::Unavailable,
                format!("model {:?} is already being unloaded", held.id()),
            ))
        }
        ModelState::Ready | ModelState::Draining | ModelState::Failed => {}
    }
    let busy = held.in_flight();
    if busy > 0 && !request.force {
        return Err(WireError::new(
            ErrorClass::Unavailable,
            format!(
                "model {:?} has {busy} request(s) in flight; drain it first or unload with force to cancel them",
                held.id()
            ),
        ));
    }
    held.set_state(ModelState::Unloading);
    shared.heartbeat_soon();
    crate::serve::stop_intake(&held).await;
    let timeout = if request.force {
        Duration::ZERO
    } else {
        shared.config.drain_timeout
    };
    let cancelled = super::settle(&held, timeout).await;
    super::release(&held).await;
    {
        let mut models = shared.models();
        if models.get(held.id()).is_some_and(|m| Arc::ptr_eq(m, &held)) {
            models.remove(held.id());
        }
    }
    tracing::info!(model = held.id(), cancelled, "model unloaded");
    shared
        .event(EventDetail::ModelUnloaded {
            model: held.id().to_string(),
            neuron: shared.id.clone(),
        })
        .await;
    shared.heartbeat_soon();
    Ok(UnloadReply {
        model_id: held.id().to_string(),
        cancelled,
    })
}
