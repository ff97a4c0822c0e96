//! `ensure`: make sure a model has a ready copy, loading it when none has.
//!
//! 1. The name resolves through the catalogue (id or alias); unknown is
//!    `model_not_found`.
//! 2. A ready copy on a live neuron answers at once.
//! 3. Otherwise the replica's per-model lock makes concurrent ensures on
//!    this replica one; across replicas the compare-and-swap [`claim`]
//!    lets exactly one record a load, and the others wait for it (on
//!    heartbeats and assignment changes, not by polling).
//! 4. The winner places the copy ([`place`], evicting if needed), carries
//!    the plan out, and answers once the neuron says ready. A neuron that
//!    turns the load down (it does not fit after all, say) is left out and
//!    the next choice is tried, a few times, within the deadline. When the
//!    only room is held by models with requests in flight (never evicted
//!    mid-stream), it waits for them to finish, within the deadline.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cortex_schemas::{EnsureReply, EnsureRequest, ErrorClass, ModelState, WireError};

use crate::actions::{carry_out, CarryError};
use crate::assignments::{claim, Claim};
use crate::decide::{place, NoPlace};
use crate::shared::Shared;

/// Neurons tried before giving up on a cold start.
const MAX_TRIES: usize = 3;
/// Longest wait between two looks while another replica loads.
const WAIT_STEP: Duration = Duration::from_millis(250);

/// Runs one `ensure`.
pub async fn ensure(shared: &Shared, request: EnsureRequest) -> Result<EnsureReply, WireError> {
    let started = Instant::now();
    let timeout = request
        .timeout_ms
        .map_or(shared.config.load_timeout, Duration::from_millis)
        .min(shared.config.load_timeout);
    let deadline = started + timeout;
    let result = run(shared, &request.model, started, deadline).await;
    shared.metrics.ensure(match &result {
        Ok(reply) if reply.cold_start => "cold_start",
        Ok(_) => "ready",
        Err(_) => "failed",
    });
    result
}

async fn run(
    shared: &Shared,
    name: &str,
    started: Instant,
    deadline: Instant,
) -> Result<EnsureReply, WireError> {
    let profile = shared.catalog.resolve(name).ok_or_else(|| {
        WireError::new(
            ErrorClass::ModelNotFound,
            format!("model {name:?} is not in the catalogue"),
        )
    })?;
    let model = profile.id.clone();
    let answer = |neurons: Vec<String>, cold_start: bool| EnsureReply {
        model_id: model.clone(),
        neurons,
        cold_start,
        waited_ms: started.elapsed().as_millis() as u64,
    };
    let ready = shared.fleet.ready_on(&model);
    if !ready.is_empty() {
        return Ok(answer(ready, false));
    }
    let flight = shared.flight(&model);
    let _one_at_a_time = tokio::time::timeout_at(deadline.into(), flight.lock())
        .await
        .map_err(|_| deadline_passed(&model))?;
    let mut fleet_changes = shared.fleet.changes();
    let mut kv_changes = shared.assignments.changes();
    let mut excluded: BTreeSet<String> = BTreeSet::new();
    let mut last_error: Option<WireError> = None;
    loop {
        let ready = shared.fleet.ready_on(&model);
        if !ready.is_empty() {
            return Ok(answer(ready, true));
        }
        if Instant::now() >= deadline {
            return Err(last_error.unwrap_or_else(|| deadline_passed(&model)));
        }
        if excluded.len() >= MAX_TRIES {
            return Err(last_error.unwrap_or_else(|| deadline_passed(&model)));
        }
        let snap = shared.snapshot();
        let stale_before = snap
            .now_ms
            .saturating_sub(shared.config.load_timeout.as_millis() as u64);
        let loading_elsewhere = snap.replicas(&model).iter().any(|r| {
            r.state == ModelState::Loading
                && (!r.pending || since(&snap, &model, &r.neuron) >= stale_before)
        });
        if !loading_elsewhere {
            let plan = match place(
                &snap,
                &model,
                shared.settings.strategy,
                None,
                &excluded,
                true,
            ) {
                Ok(plan) => plan,
                Err(NoPlace::EverywhereAlready { .. } | NoPlace::NoNeuron { .. })
                    if !excluded.is_empty() =>
                {
                    return Err(last_error.unwrap_or_else(|| deadline_passed(&model)))
                }
                Err(
                    error @ NoPlace::DoesNotFit {
                        after_requests: true,
                        ..
                    },
                ) => {
                    last_error = Some(WireError::new(ErrorClass::Unavailable, error.to_string()));
                    wait_for_change(&mut fleet_changes, &mut kv_changes, deadline).await;
                    continue;
                }
                Err(error) => {
                    return Err(WireError::new(ErrorClass::Unavailable, error.to_string()))
                }
            };
            let holders: BTreeSet<String> = snap
                .neurons
                .values()
                .filter(|n| {
                    n.holding(&model)
                        .is_some_and(|h| matches!(h.state, ModelState::Loading | ModelState::Ready))
                })
                .map(|n| n.id.clone())
                .collect();
            let live: BTreeSet<String> = snap.neurons.keys().cloned().collect();
            let claimed = claim(
                &shared.placements,
                &shared.assignments,
                &model,
                &plan.neuron,
                plan.device,
                true,
                &holders,
                &live,
                stale_before,
                snap.now_ms,
            )
            .await
            .map_err(|e| {
                WireError::new(ErrorClass::Unavailable, format!("placement state: {e}"))
            })?;
            if claimed == Claim::Won {
                tracing::info!(%model, neuron = %plan.neuron, evict = plan.evict.len(), "cold start");
                let remaining = deadline.saturating_duration_since(Instant::now());
                match carry_out(shared, &plan, true, remaining).await {
                    Ok(_) => return Ok(answer(vec![plan.neuron.clone()], true)),
                    // What was to be evicted got a request meanwhile: look again shortly.
                    Err(CarryError::Evict(error)) => {
                        last_error = Some(error);
                        wait_for_change(&mut fleet_changes, &mut kv_changes, deadline).await;
                        continue;
                    }
                    Err(CarryError::Load(error)) if error.class == ErrorClass::ModelNotFound => {
                        return Err(error)
                    }
                    Err(CarryError::Load(error)) => {
                        excluded.insert(plan.neuron.clone());
                        last_error = Some(error);
                        continue;
                    }
                }
            }
        }
        // Someone else is loading it.
        wait_for_change(&mut fleet_changes, &mut kv_changes, deadline).await;
    }
}

/// Waits for a heartbeat or an assignment change, at most [`WAIT_STEP`].
async fn wait_for_change(
    fleet: &mut tokio::sync::watch::Receiver<u64>,
    kv: &mut tokio::sync::watch::Receiver<u64>,
    deadline: Instant,
) {
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .min(WAIT_STEP);
    tokio::select! {
        _ = fleet.changed() => {}
        _ = kv.changed() => {}
        _ = tokio::time::sleep(wait) => {}
    }
}

/// When the copy of `model` on `neuron` was recorded.
fn since(snap: &crate::decide::Snapshot, model: &str, neuron: &str) -> u64 {
    snap.assignments
        .get(model)
        .and_then(|a| a.replicas.iter().find(|r| r.neuron == neuron))
        .map_or(0, |r| r.since_ms)
}

fn deadline_passed(model: &str) -> WireError {
    WireError::new(
        ErrorClass::DeadlineExceeded,
        format!("model {model:?} was not ready before the deadline"),
    )
}
