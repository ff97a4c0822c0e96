//! Draining: stop taking requests (one model, or the whole neuron for a
//! rolling restart) and let those in flight finish. New requests go to the
//! other replicas of the queue group; directed ones are refused as
//! `unavailable`, which tells ingress to retry elsewhere.

use std::sync::Arc;
use std::time::Duration;

use cortex_schemas::{DrainReply, DrainRequest, ErrorClass, ModelState, NeuronState, WireError};

use crate::held::HeldModel;
use crate::shared::Shared;

pub async fn drain(shared: &Arc<Shared>, request: DrainRequest) -> Result<DrainReply, WireError> {
    let models = match &request.model_id {
        Some(id) => {
            let held = shared.model(id).ok_or_else(|| {
                WireError::new(
                    ErrorClass::ModelNotFound,
                    format!("neuron {} does not hold model {id:?}", shared.id),
                )
            })?;
            if held.state() == ModelState::Loading {
                return Err(WireError::new(
                    ErrorClass::Unavailable,
                    format!("model {id:?} is still loading; drain it once loaded"),
                ));
            }
            vec![held]
        }
        None => {
            if shared.state() != NeuronState::Stopped {
                shared.set_state(NeuronState::Draining);
            }
            shared.all_models()
        }
    };
    let at_start: u32 = models.iter().map(|m| m.in_flight()).sum();
    let left = drain_models(shared, &models, shared.config.drain_timeout).await;
    if left > 0 {
        return Err(WireError::new(
            ErrorClass::Unavailable,
            format!(
                "{left} request(s) still in flight after {:?}",
                shared.config.drain_timeout
            ),
        ));
    }
    Ok(DrainReply { finished: at_start })
}

/// Stops the intake of every ready model in `models` and waits up to
/// `timeout` for their requests; returns how many are still in flight.
pub(crate) async fn drain_models(
    shared: &Shared,
    models: &[Arc<HeldModel>],
    timeout: Duration,
) -> u32 {
    // All at once: each stop may wait for the server (up to its deadline).
    futures::future::join_all(models.iter().map(|held| async move {
        let _op = held.ops.lock().await;
        held.transition(&[ModelState::Ready], ModelState::Draining);
        crate::serve::stop_intake(held).await;
    }))
    .await;
    shared.heartbeat_soon();
    let deadline = tokio::time::Instant::now() + timeout;
    for held in models {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        held.wait_idle(left).await;
    }
    models.iter().map(|m| m.in_flight()).sum()
}
