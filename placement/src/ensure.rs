//! `ensure`: make sure a model has a ready copy, loading it when none has.
//!
//! 1. The name resolves through the catalogue (id or alias); unknown is
//!    `model_not_found`.
//! 2. A ready copy on a live neuron answers at once.
//! 3. Otherwise the replica's per-model lock makes concurrent ensures on
//!    this replica one; across replicas the compare-and-swap claim (at most
//!    one copy for a cold start, see [`crate::assignments::claim`]) lets
//!    exactly one record a load, and the others wait for it (woken by
//!    heartbeats and assignment changes).
//! 4. The winner places the copy ([`place`], evicting if needed), carries
//!    the plan out, and answers once the neuron says ready. A neuron that
//!    turns the load down (it does not fit after all, say) is left out and
//!    the next choice is tried, a few times, within the deadline. When the
//!    only room is held by models with requests in flight (never evicted
//!    mid-stream), it waits for them to finish, within the deadline.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cortex_schemas::{EnsureReply, EnsureRequest, ErrorClass, WireError};

use crate::actions::{carry_out, CarryError};
use crate::decide::{place, NoPlace};
use crate::fleet::Holders;
use crate::shared::Shared;

/// Neurons tried before giving up on a cold start.
const MAX_TRIES: usize = 3;
/// Longest wait between two looks while another replica loads.
const WAIT_STEP: Duration = Duration::from_millis(250);
/// Shortest wait between two looks.
const MIN_WAIT: Duration = Duration::from_millis(50);

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
    shared.refresh_need(&profile).await;
    let mut fleet_changes = shared.fleet.changes();
    let mut kv_changes = shared.assignments.changes();
    let mut excluded: BTreeSet<String> = BTreeSet::new();
    let mut last_error: Option<WireError> = None;
    loop {
        let ready = shared.fleet.ready_on(&model);
        if !ready.is_empty() {
            return Ok(answer(ready, true));
        }
        let give_up = |last: Option<WireError>| last.unwrap_or_else(|| deadline_passed(&model));
        if Instant::now() >= deadline || excluded.len() >= MAX_TRIES {
            return Err(give_up(last_error));
        }
        // A neuron is loading it already (for another caller or replica).
        if !shared.fleet.holders(&model).is_empty() {
            wait_for_change(&mut fleet_changes, &mut kv_changes, deadline).await;
            continue;
        }
        let snap = shared.snapshot();
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
                return Err(give_up(last_error))
            }
            // Every neuron holds it in some state (loading, draining): wait.
            Err(NoPlace::EverywhereAlready { .. }) => {
                wait_for_change(&mut fleet_changes, &mut kv_changes, deadline).await;
                continue;
            }
            // No neuron seen yet: wait while this replica may still be learning the fleet.
            Err(error @ NoPlace::NoNeuron { .. }) if shared.fleet_unknown() => {
                last_error = Some(WireError::new(ErrorClass::Unavailable, error.to_string()));
                wait_for_change(&mut fleet_changes, &mut kv_changes, deadline).await;
                continue;
            }
            // The room is held by requests in flight: wait for them to end.
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
            Err(error) => return Err(WireError::new(ErrorClass::Unavailable, error.to_string())),
        };
        tracing::info!(%model, neuron = %plan.neuron, evict = plan.evict.len(), "cold start");
        let remaining = deadline.saturating_duration_since(Instant::now());
        match carry_out(shared, &plan, 1, remaining).await {
            Ok(_) => return Ok(answer(vec![plan.neuron.clone()], true)),
            // Another replica recorded a load first: wait for it.
            Err(CarryError::Taken) => {
                wait_for_change(&mut fleet_changes, &mut kv_changes, deadline).await;
            }
            // What was to be evicted got a request meanwhile: look again shortly.
            Err(CarryError::Evict(error)) => {
                last_error = Some(error);
                wait_for_change(&mut fleet_changes, &mut kv_changes, deadline).await;
            }
            Err(CarryError::Load(error)) if error.class == ErrorClass::ModelNotFound => {
                return Err(error)
            }
            Err(CarryError::Load(error)) => {
                excluded.insert(plan.neuron.clone());
                last_error = Some(error);
            }
        }
    }
}

/// Waits for a heartbeat or an assignment change: at least [`MIN_WAIT`]
/// (with a thousand neurons heartbeating, a change comes every
/// millisecond), at most [`WAIT_STEP`], never past the deadline.
async fn wait_for_change(
    fleet: &mut tokio::sync::watch::Receiver<u64>,
    kv: &mut tokio::sync::watch::Receiver<u64>,
    deadline: Instant,
) {
    let left = deadline.saturating_duration_since(Instant::now());
    tokio::time::sleep(left.min(MIN_WAIT)).await;
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .min(WAIT_STEP);
    tokio::select! {
        _ = fleet.changed() => {}
        _ = kv.changed() => {}
        _ = tokio::time::sleep(wait) => {}
    }
}

fn deadline_passed(model: &str) -> WireError {
    WireError::new(
        ErrorClass::DeadlineExceeded,
        format!("model {model:?} was not ready before the deadline"),
    )
}
