//! Carrying decisions out against neurons (their `cortex-neuron` micro
//! service) and recording each step in KV:
//! - [`carry_out`]: claim the load in KV (compare-and-swap, bounded copies),
//!   evict what the plan says (each victim marked `unloading` first so no
//!   other plan counts it; a neuron refuses an unload while requests are in
//!   flight, so nothing is cut mid-stream), load, then record the copy
//!   `ready`, or forget it when the load failed;
//! - [`unload_copy`]: one copy off one neuron (callers check pins).

use std::time::Duration;

use cortex_bus::control::call;
use cortex_bus::NeuronOp;
use cortex_schemas::{
    ErrorClass, EventDetail, LoadReply, LoadRequest, ReplicaState, UnloadReply, UnloadRequest,
    WireError,
};

use crate::assignments;
use crate::decide::Plan;
use crate::fleet::Holders;
use crate::shared::Shared;

/// How long a neuron gets to answer an unload; it refuses at once while
/// requests are in flight, so this only bounds a slow engine release.
/// Shorter than the claim's life, so a claim outlives its evictions.
pub const UNLOAD_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a plan was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CarryError {
    /// A model to evict would not go (requests in flight, most likely):
    /// nothing was loaded; the same plan may work a little later.
    #[error("{0}")]
    Evict(WireError),
    /// The load itself failed, or the state could not be recorded.
    #[error("{0}")]
    Load(WireError),
    /// Another load of the model was recorded first (or the copies are at
    /// the limit asked): nothing was done.
    #[error("another load of the model is in progress")]
    Taken,
}

impl From<CarryError> for WireError {
    fn from(error: CarryError) -> Self {
        match error {
            CarryError::Evict(wire) | CarryError::Load(wire) => wire,
            CarryError::Taken => WireError::new(ErrorClass::Unavailable, error.to_string()),
        }
    }
}

fn kv_error(error: impl std::fmt::Display) -> WireError {
    WireError::new(
        ErrorClass::Unavailable,
        format!("placement state not writable: {error}"),
    )
}

/// Claims, evicts, loads and records `plan`, refusing when the model has
/// `max_copies` copies already. Waits up to `timeout` in all.
pub async fn carry_out(
    shared: &Shared,
    plan: &Plan,
    max_copies: u32,
    timeout: Duration,
) -> Result<LoadReply, CarryError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let holders = shared.fleet.holders(&plan.model);
    let claimed = assignments::claim(
        &shared.placements,
        &shared.assignments,
        assignments::ClaimSpec {
            model: &plan.model,
            neuron: &plan.neuron,
            device: plan.device,
            max_copies,
            holders: &holders,
            now_ms: cortex_bus::headers::unix_ms(),
        },
    )
    .await
    .map_err(|e| CarryError::Load(kv_error(e)))?;
    if claimed == assignments::Claim::Taken {
        return Err(CarryError::Taken);
    }
    for evict in &plan.evict {
        let now = cortex_bus::headers::unix_ms();
        let marked = assignments::set_state(
            &shared.placements,
            &shared.assignments,
            &evict.model,
            &evict.neuron,
            Some(evict.device),
            ReplicaState::Unloading,
            now,
        )
        .await;
        let _ = assignments::touch(
            &shared.placements,
            &shared.assignments,
            &plan.model,
            &plan.neuron,
            now,
        )
        .await;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let evicted = match marked {
            Ok(_) => {
                unload_copy_within(
                    shared,
                    &evict.model,
                    &evict.neuron,
                    remaining.min(UNLOAD_TIMEOUT),
                )
                .await
            }
            Err(e) => Err(kv_error(e)),
        };
        if evicted.is_err() {
            // Still there: it is ready again, not leaving.
            let _ = assignments::set_state(
                &shared.placements,
                &shared.assignments,
                &evict.model,
                &evict.neuron,
                Some(evict.device),
                ReplicaState::Ready,
                cortex_bus::headers::unix_ms(),
            )
            .await;
        }
        if let Err(error) = evicted {
            forget(shared, &plan.model, &plan.neuron).await;
            return Err(CarryError::Evict(WireError::new(
                ErrorClass::Unavailable,
                format!(
                    "cannot make room for {:?} on {}: evicting {:?} failed: {}",
                    plan.model, plan.neuron, evict.model, error.message
                ),
            )));
        }
        shared.count_eviction();
        tracing::info!(model = %evict.model, neuron = %evict.neuron, for_model = %plan.model, "evicted");
        shared
            .event(EventDetail::ModelEvicted {
                model: evict.model.clone(),
                neuron: evict.neuron.clone(),
                reason: format!("room for {}", plan.model),
            })
            .await;
    }
    let Some(profile) = shared.catalog.resolve(&plan.model) else {
        forget(shared, &plan.model, &plan.neuron).await;
        return Err(CarryError::Load(WireError::new(
            ErrorClass::ModelNotFound,
            format!("model {:?} left the catalogue", plan.model),
        )));
    };
    let request = LoadRequest {
        profile,
        device: Some(plan.device),
    };
    let subject = shared.subjects.neuron(&plan.neuron, NeuronOp::Load);
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let loaded: Result<LoadReply, WireError> = call(&shared.client, subject, &request, remaining)
        .await
        .map_err(WireError::from);
    match loaded {
        Ok(reply) => {
            shared.metrics.load("ok");
            assignments::set_state(
                &shared.placements,
                &shared.assignments,
                &plan.model,
                &plan.neuron,
                Some(reply.device),
                ReplicaState::Ready,
                cortex_bus::headers::unix_ms(),
            )
            .await
            .map_err(|e| CarryError::Load(kv_error(e)))?;
            Ok(reply)
        }
        Err(error) => {
            shared.metrics.load("failed");
            tracing::warn!(model = %plan.model, neuron = %plan.neuron, %error, "load failed");
            forget(shared, &plan.model, &plan.neuron).await;
            Err(CarryError::Load(WireError {
                message: format!(
                    "loading {:?} on {} failed: {}",
                    plan.model, plan.neuron, error.message
                ),
                ..error
            }))
        }
    }
}

/// Unloads the copy of `model` on `neuron` and forgets it in KV.
pub async fn unload_copy(
    shared: &Shared,
    model: &str,
    neuron: &str,
) -> Result<UnloadReply, WireError> {
    unload_copy_within(shared, model, neuron, UNLOAD_TIMEOUT).await
}

async fn unload_copy_within(
    shared: &Shared,
    model: &str,
    neuron: &str,
    timeout: Duration,
) -> Result<UnloadReply, WireError> {
    let subject = shared.subjects.neuron(neuron, NeuronOp::Unload);
    let request = UnloadRequest {
        model_id: model.to_string(),
        force: false,
    };
    let reply = match call::<_, UnloadReply>(&shared.client, subject, &request, timeout)
        .await
        .map_err(WireError::from)
    {
        Ok(reply) => reply,
        // Already gone from that neuron: the goal is met.
        Err(error) if error.class == ErrorClass::ModelNotFound => UnloadReply {
            model_id: model.to_string(),
            cancelled: 0,
        },
        Err(error) => return Err(error),
    };
    forget(shared, model, neuron).await;
    Ok(reply)
}

async fn forget(shared: &Shared, model: &str, neuron: &str) {
    if let Err(error) =
        assignments::remove(&shared.placements, &shared.assignments, model, neuron).await
    {
        tracing::warn!(%error, model, neuron, "assignment not updated; the reconciler repairs it");
    }
}
