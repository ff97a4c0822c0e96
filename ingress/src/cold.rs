//! Cold starts: when no neuron listens on a model's subject, ingress asks
//! placement's `ensure` (any replica; it loads the model once however many
//! pods ask) and waits for it within the request's deadline. Without a
//! placement service the answer stays "not loaded" (503).

use std::time::Duration;

use cortex_bus::control::{call, CallError};
use cortex_bus::PlacementOp;
use cortex_schemas::{EnsureReply, EnsureRequest};

use crate::error::{ApiError, Kind};
use crate::state::AppState;

/// Asks placement to make `model` ready before `deadline_ms` (unix ms).
pub async fn ensure(state: &AppState, model: &str, deadline_ms: u64) -> Result<(), ApiError> {
    let remaining = deadline_ms.saturating_sub(cortex_bus::headers::unix_ms());
    if remaining == 0 {
        return Err(ApiError::new(
            Kind::Timeout,
            "the request's deadline passed",
        ));
    }
    let request = EnsureRequest {
        model: model.to_string(),
        timeout_ms: Some(remaining),
    };
    let subject = state.subjects.placement(PlacementOp::Ensure);
    let reply: Result<EnsureReply, _> = call(
        &state.client,
        subject,
        &request,
        Duration::from_millis(remaining),
    )
    .await;
    match reply {
        Ok(reply) => {
            if reply.cold_start {
                state.metrics.cold_start(&reply.model_id);
                tracing::info!(model, waited_ms = reply.waited_ms, "cold start");
            }
            Ok(())
        }
        Err(CallError::NoResponders { .. }) => {
            Err(ApiError::new(
                Kind::Unavailable,
                format!("model {model:?} is not loaded on any neuron, and no placement service answers to load it"),
            ))
        }
        Err(CallError::TimedOut { .. }) => Err(ApiError::new(
            Kind::Timeout,
            format!("model {model:?} was not loaded before the request's deadline"),
        )),
        Err(error) => Err(ApiError::from_wire(&error.into())),
    }
}
