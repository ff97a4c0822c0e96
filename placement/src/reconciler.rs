//! The reconciler, run by the lease holder every `--reconcile-interval`,
//! once it has led for 3 heartbeat intervals (so it has heard the whole
//! fleet before it repairs anything):
//! 1. neurons gone silent are dropped (every replica does this) and the
//!    leader announces them (`neuron.lost`);
//! 2. assignments are made to match what neurons report ([`sync`]): copies
//!    on lost neurons are forgotten (that is the repair: the floors below
//!    then reload them elsewhere), copies neurons report are recorded,
//!    recorded loads no heartbeat confirms within a grace period go;
//! 3. [`reconcile`] decides; each action runs in its own task, at most one
//!    per model at a time and [`MAX_OPERATIONS`] in all (the rest wait for
//!    the next cycle).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use cortex_schemas::{Assignment, EventDetail, ModelState, NeuronStatus, Replica, ReplicaState};
use tokio_util::sync::CancellationToken;

use crate::actions::{carry_out, unload_copy};
use crate::assignments;
use crate::decide::{reconcile, update_pressure, Action, Reason};
use crate::shared::Shared;

/// Operations (loads, unloads, moves) running at once.
pub const MAX_OPERATIONS: usize = 16;
/// A recorded load no heartbeat shows after this long is forgotten.
const UNCONFIRMED_GRACE_MS: u64 = assignments::CLAIM_TTL_MS;
/// `last_used_ms` in KV is refreshed only when it moved by this much, so a
/// busy model does not cost a KV write every cycle.
const LAST_USED_GRANULARITY_MS: u64 = 30_000;

/// Runs until `stop` fires.
pub async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let busy: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut pressure = BTreeMap::new();
    let mut leading_since: Option<std::time::Instant> = None;
    let mut tick = tokio::time::interval(shared.config.reconcile_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let leader = shared.leadership.is_leader();
        for (neuron, last_seen_ms, lost) in shared.fleet.sweep() {
            if lost && leader {
                tracing::warn!(%neuron, "neuron lost");
                shared
                    .event(EventDetail::NeuronLost {
                        neuron,
                        last_seen_ms,
                    })
                    .await;
            }
        }
        if !leader {
            pressure.clear();
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(std::time::Instant::now);
        let interval = shared
            .fleet
            .longest_interval()
            .unwrap_or(std::time::Duration::from_secs(2));
        if since.elapsed() < interval * crate::fleet::LOST_AFTER_INTERVALS {
            continue;
        }
        sync(&shared).await;
        let snap = shared.snapshot();
        update_pressure(&snap, &mut pressure);
        let evictions = shared.evictions_since_defrag.load(Ordering::Relaxed);
        let actions = reconcile(&snap, &shared.settings, &pressure, evictions);
        let defrag_due =
            shared.settings.defrag_after > 0 && evictions >= shared.settings.defrag_after;
        if defrag_due && actions.iter().all(|a| matches!(a, Action::Move { .. })) {
            // The pass ran (moves found or not): count evictions afresh.
            shared.evictions_since_defrag.store(0, Ordering::Relaxed);
        }
        for action in actions {
            let max_copies = match &action {
                Action::Load {
                    plan,
                    reason: Reason::MinReplicas | Reason::Pinned,
                } => snap
                    .min_replicas(&plan.model)
                    .max(snap.pin_list(&plan.model).len() as u32),
                Action::Load {
                    plan,
                    reason: Reason::ScaleUp,
                } => snap
                    .models
                    .get(&plan.model)
                    .map_or(1, |m| m.profile.max_replicas),
                _ => u32::MAX,
            };
            let model = match &action {
                Action::Load { plan, .. } | Action::Move { plan, .. } => plan.model.clone(),
                Action::Unload { model, .. } => model.clone(),
            };
            {
                let mut running = busy.lock().unwrap_or_else(|e| e.into_inner());
                if running.len() >= MAX_OPERATIONS || !running.insert(model.clone()) {
                    continue;
                }
            }
            let (shared, busy) = (shared.clone(), busy.clone());
            tokio::spawn(async move {
                // The lease may have moved since the cycle began.
                if shared.leadership.is_leader() {
                    execute(&shared, action, max_copies).await;
                }
                busy.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&model);
            });
        }
    }
}

async fn execute(shared: &Shared, action: Action, max_copies: u32) {
    let timeout = shared.config.load_timeout;
    match action {
        Action::Load { plan, reason } => {
            tracing::info!(model = %plan.model, neuron = %plan.neuron, reason = reason.as_str(), "loading");
            if let Err(error) = carry_out(shared, &plan, max_copies, timeout).await {
                tracing::warn!(model = %plan.model, %error, reason = reason.as_str(), "reconciler load failed");
            }
        }
        Action::Unload {
            model,
            neuron,
            reason,
        } => {
            tracing::info!(%model, %neuron, reason = reason.as_str(), "unloading");
            if let Err(error) = unload_copy(shared, &model, &neuron).await {
                tracing::info!(%model, %neuron, %error, "unload refused; retried next cycle");
            }
        }
        Action::Move { plan, from } => {
            tracing::info!(model = %plan.model, %from, to = %plan.neuron, "consolidating");
            match carry_out(shared, &plan, max_copies, timeout).await {
                Ok(_) => {
                    if let Err(error) = unload_copy(shared, &plan.model, &from).await {
                        tracing::info!(model = %plan.model, %from, %error, "old copy stays");
                    }
                }
                Err(error) => tracing::warn!(model = %plan.model, %error, "move failed"),
            }
        }
    }
}

/// Makes every assignment match the heartbeats.
pub async fn sync(shared: &Shared) {
    let live = shared.fleet.live();
    let now = cortex_bus::headers::unix_ms();
    let catalog = shared.catalog.all();
    let current = shared.assignments.all();
    let mut models: BTreeSet<String> = catalog.keys().cloned().collect();
    models.extend(current.keys().cloned());
    for neuron in &live {
        models.extend(neuron.models.iter().map(|m| m.model_id.clone()));
    }
    for model in models {
        if !shared.leadership.is_leader() {
            return;
        }
        let existing = current.get(&model);
        let desired = catalog.get(&model).map_or(0, |p| p.min_replicas);
        let wanted = matching(existing, &model, &live, now, desired);
        if existing.is_some_and(|e| same(e, &wanted)) {
            continue;
        }
        if existing.is_none() && wanted.replicas.is_empty() && desired == 0 {
            continue;
        }
        let written = assignments::modify(&shared.placements, &shared.assignments, &model, |a| {
            // Re-derived from the freshest value, keeping operator pins.
            let fresh = matching(Some(a), &model, &live, now, desired);
            if same(a, &fresh) {
                return false;
            }
            *a = fresh;
            true
        })
        .await;
        if let Err(error) = written {
            tracing::warn!(%model, %error, "assignment not synced");
        }
    }
}

/// The assignment of `model` that matches `live` heartbeats.
fn matching(
    existing: Option<&Assignment>,
    model: &str,
    live: &[NeuronStatus],
    now: u64,
    desired: u32,
) -> Assignment {
    let mut next = existing
        .cloned()
        .unwrap_or_else(|| assignments::fresh(model));
    let previous = next.replicas.clone();
    let mut replicas = Vec::new();
    for neuron in live {
        let Some(held) = neuron.models.iter().find(|m| m.model_id == model) else {
            // A recorded load this neuron does not show yet stays for a while.
            if let Some(r) = previous.iter().find(|r| r.neuron == neuron.neuron_id) {
                if r.state == ReplicaState::Loading
                    && now.saturating_sub(r.since_ms) < UNCONFIRMED_GRACE_MS
                {
                    replicas.push(r.clone());
                }
            }
            continue;
        };
        let state = match held.state {
            ModelState::Loading => ReplicaState::Loading,
            ModelState::Ready => ReplicaState::Ready,
            ModelState::Draining | ModelState::Unloading => ReplicaState::Unloading,
            ModelState::Failed => continue,
        };
        let since_ms = previous
            .iter()
            .find(|r| r.neuron == neuron.neuron_id && r.state == state)
            .map_or(now, |r| r.since_ms);
        replicas.push(Replica {
            neuron: neuron.neuron_id.clone(),
            device: Some(held.device),
            state,
            since_ms,
        });
        if let Some(used) = held.last_used_ms {
            next.last_used_ms = Some(next.last_used_ms.map_or(used, |l| l.max(used)));
        }
    }
    replicas.sort_by(|a, b| a.neuron.cmp(&b.neuron));
    next.replicas = replicas;
    next.desired_replicas = desired;
    next
}

fn same(a: &Assignment, b: &Assignment) -> bool {
    let mut left = a.replicas.clone();
    left.sort_by(|x, y| x.neuron.cmp(&y.neuron));
    let used_close = match (a.last_used_ms, b.last_used_ms) {
        (Some(x), Some(y)) => x.abs_diff(y) < LAST_USED_GRANULARITY_MS,
        (x, y) => x == y,
    };
    left == b.replicas
        && a.desired_replicas == b.desired_replicas
        && a.pinned == b.pinned
        && used_close
}
