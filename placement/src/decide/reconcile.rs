//! What the leader does each cycle: [`reconcile`] turns a snapshot into
//! actions, at most one per model and cycle except idle unloads:
//! - each neuron of a pin list holds the model (evicting if needed);
//! - at least `min_replicas` copies (1 for a pinned model), loaded where
//!   they fit, evicting if needed (this also repairs a lost neuron);
//! - no more than `max_replicas`;
//! - one more copy when the queue stayed deep for `scale_up_after` cycles,
//!   or for the model's `spill_after` (only where it fits without
//!   eviction): spill-over;
//! - a copy idle for the model's `idle_ttl` is unloaded, down to the floor;
//! - a copy beyond one (and the floor) idle for `scale_down_after` goes;
//! - after `defrag_after` evictions, the smallest scattered device is
//!   emptied onto others when that makes a larger free block.
//!
//! Every load is applied to a working copy of the snapshot before the
//! next is planned, so one cycle never counts the same bytes twice.

use std::collections::{BTreeMap, BTreeSet};

use cortex_schemas::ModelState;

use super::place::{place, Plan, Strategy};
use super::snapshot::Snapshot;

/// Knobs of the reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub strategy: Strategy,
    /// Cycles of a deep queue before one more copy is loaded (a model's
    /// `spill_after_ms` overrides it).
    pub scale_up_after: u32,
    /// The reconcile period, turning `spill_after_ms` into cycles.
    pub interval_ms: u64,
    /// Idle time after which a copy beyond the floor is unloaded.
    pub scale_down_after_ms: u64,
    /// Evictions between consolidation passes; 0 turns them off.
    pub defrag_after: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            strategy: Strategy::Lru,
            scale_up_after: 3,
            interval_ms: 1000,
            scale_down_after_ms: 120_000,
            defrag_after: 0,
        }
    }
}

/// Why an action was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Pinned,
    MinReplicas,
    ScaleUp,
    ScaleDown,
    OverMax,
    Idle,
    Defrag,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pinned => "pinned",
            Self::MinReplicas => "min_replicas",
            Self::ScaleUp => "scale_up",
            Self::ScaleDown => "scale_down",
            Self::OverMax => "over_max_replicas",
            Self::Idle => "idle",
            Self::Defrag => "defrag",
        }
    }
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Load {
        plan: Plan,
        reason: Reason,
    },
    Unload {
        model: String,
        neuron: String,
        reason: Reason,
    },
    /// Load on `plan`'s neuron, then unload from `from`.
    Move {
        plan: Plan,
        from: String,
    },
}

/// Queue pressure per model: cycles in a row its copies had a queue.
pub fn update_pressure(snap: &Snapshot, pressure: &mut BTreeMap<String, u32>) {
    let mut deep: BTreeSet<String> = BTreeSet::new();
    for neuron in snap.neurons.values() {
        for held in &neuron.held {
            if held.state == ModelState::Ready && held.busy > 0 {
                deep.insert(held.model.clone());
            }
        }
    }
    // A model is under pressure when every ready copy has more work than slots.
    pressure.retain(|model, _| deep.contains(model));
    for model in deep {
        let saturated = snap
            .neurons
            .values()
            .filter_map(|n| n.holding(&model))
            .all(|h| h.state != ModelState::Ready || h.busy >= queue_threshold(snap, &model));
        let counter = pressure.entry(model).or_insert(0);
        *counter = if saturated { *counter + 1 } else { 0 };
    }
}

/// Work (running + queued) per copy that counts as a deep queue: twice the slots.
fn queue_threshold(snap: &Snapshot, model: &str) -> u32 {
    let slots = snap
        .models
        .get(model)
        .and_then(|m| m.profile.max_concurrency)
        .unwrap_or(cortex_schemas::DEFAULT_MAX_CONCURRENCY);
    slots.saturating_mul(2).max(1)
}

/// The actions for this cycle.
pub fn reconcile(
    snap: &Snapshot,
    settings: &Settings,
    pressure: &BTreeMap<String, u32>,
    evictions_since_defrag: u32,
) -> Vec<Action> {
    let mut work = snap.clone();
    let mut actions = Vec::new();
    // Pinned first, then higher priority, so they get memory first.
    let mut models: Vec<_> = snap.models.values().collect();
    models.sort_by_key(|m| {
        (
            !snap.pinned_anywhere(&m.profile.id),
            std::cmp::Reverse(m.profile.priority),
            m.profile.id.clone(),
        )
    });
    for spec in models {
        let model = spec.profile.id.as_str();
        let replicas = work.replicas(model);
        let mut count = replicas.len() as u32;
        let floor = work.min_replicas(model);
        // Pin lists: a copy on each listed live neuron.
        let missing = work.pin_list(model).into_iter().find(|n| {
            work.neurons.get(n).is_some_and(|v| v.accepting)
                && !replicas.iter().any(|r| &r.neuron == n)
        });
        if let Some(neuron) = missing {
            let only = Some(neuron.as_str());
            if plan_load(
                &mut work,
                &mut actions,
                settings,
                model,
                only,
                true,
                Reason::Pinned,
            ) {
                continue;
            }
        }
        if count < floor {
            let reason = if spec.profile.min_replicas >= floor {
                Reason::MinReplicas
            } else {
                Reason::Pinned
            };
            plan_load(&mut work, &mut actions, settings, model, None, true, reason);
            continue;
        }
        let idle_for = |r: &super::snapshot::ReplicaView| {
            let since = r
                .last_used_ms
                .unwrap_or_else(|| replica_since(snap, model, &r.neuron));
            snap.now_ms.saturating_sub(since)
        };
        let mut removable: Vec<_> = replicas
            .iter()
            .filter(|r| !r.pending && r.state == ModelState::Ready && r.busy == 0)
            .filter(|r| !work.pinned_on(model, &r.neuron))
            .collect();
        // Least recently used first (a copy never used counts from its load).
        removable.sort_by_key(|r| {
            let since = replica_since(snap, model, &r.neuron);
            (r.last_used_ms.unwrap_or(since), r.neuron.clone())
        });
        if count > spec.profile.max_replicas {
            if let Some(r) = removable.first() {
                work.remove_copy(model, &r.neuron);
                actions.push(Action::Unload {
                    model: model.to_string(),
                    neuron: r.neuron.clone(),
                    reason: Reason::OverMax,
                });
            }
            continue;
        }
        let after = spec
            .profile
            .spill_after_ms
            .map_or(settings.scale_up_after, |ms| {
                ms.div_ceil(settings.interval_ms.max(1)).max(1) as u32
            });
        let pressured = pressure.get(model).copied().unwrap_or(0) >= after;
        if pressured && count < spec.profile.max_replicas {
            plan_load(
                &mut work,
                &mut actions,
                settings,
                model,
                None,
                false,
                Reason::ScaleUp,
            );
            continue;
        }
        if let Some(ttl) = spec.profile.idle_ttl_ms {
            let before = count;
            for r in &removable {
                if count > floor && idle_for(r) >= ttl {
                    work.remove_copy(model, &r.neuron);
                    actions.push(Action::Unload {
                        model: model.to_string(),
                        neuron: r.neuron.clone(),
                        reason: Reason::Idle,
                    });
                    count -= 1;
                }
            }
            if count < before {
                continue;
            }
        }
        if count > floor.max(1) && !pressured {
            if let Some(r) = removable
                .iter()
                .find(|r| idle_for(r) >= settings.scale_down_after_ms)
            {
                work.remove_copy(model, &r.neuron);
                actions.push(Action::Unload {
                    model: model.to_string(),
                    neuron: r.neuron.clone(),
                    reason: Reason::ScaleDown,
                });
            }
        }
    }
    if settings.defrag_after > 0
        && evictions_since_defrag >= settings.defrag_after
        && actions.is_empty()
    {
        actions.extend(defrag(&work, settings));
    }
    actions
}

/// Plans one more copy of `model` (on `only`, when given), applies it to
/// `work` and records the load; false when it fits nowhere.
fn plan_load(
    work: &mut Snapshot,
    actions: &mut Vec<Action>,
    settings: &Settings,
    model: &str,
    only: Option<&str>,
    allow_evict: bool,
    reason: Reason,
) -> bool {
    let planned = place(
        work,
        model,
        settings.strategy,
        only,
        &BTreeSet::new(),
        allow_evict,
    );
    match planned {
        Ok(plan) => {
            work.apply(&plan);
            actions.push(Action::Load { plan, reason });
            true
        }
        Err(_) => false,
    }
}

/// When the replica on `neuron` was recorded (its load time) for a model
/// never used yet.
fn replica_since(snap: &Snapshot, model: &str, neuron: &str) -> u64 {
    snap.assignments
        .get(model)
        .and_then(|a| a.replicas.iter().find(|r| r.neuron == neuron))
        .map_or(snap.now_ms, |r| r.since_ms)
}

/// Empties the least used device that holds something, when all it holds
/// can move elsewhere without eviction and the freed device then offers
/// more than any device does now.
fn defrag(snap: &Snapshot, settings: &Settings) -> Vec<Action> {
    let largest_free = snap
        .neurons
        .values()
        .flat_map(|n| n.devices.iter().map(|d| snap.free(&n.id, d.index)))
        .max()
        .unwrap_or(0);
    let mut devices: Vec<(u64, String, u32)> = snap
        .neurons
        .values()
        .filter(|n| n.accepting)
        .flat_map(|n| {
            n.devices.iter().filter_map(|d| {
                let held: Vec<_> = n.held.iter().filter(|h| h.device == d.index).collect();
                let used: u64 = held.iter().map(|h| h.memory).sum();
                let movable = !held.is_empty()
                    && held.iter().all(|h| {
                        h.state == ModelState::Ready
                            && h.busy == 0
                            && !snap.pinned_on(&h.model, &n.id)
                    });
                movable.then(|| (used, n.id.clone(), d.index))
            })
        })
        .collect();
    devices.sort();
    for (used, neuron, device) in devices {
        let after = snap.free(&neuron, device).saturating_add(used);
        if after <= largest_free {
            continue;
        }
        let mut work = snap.clone();
        let exclude = BTreeSet::from([neuron.clone()]);
        let models: Vec<String> = snap.neurons[&neuron]
            .held
            .iter()
            .filter(|h| h.device == device)
            .map(|h| h.model.clone())
            .collect();
        let mut moves = Vec::new();
        for model in &models {
            match place(&work, model, settings.strategy, None, &exclude, false) {
                Ok(plan) => {
                    work.apply(&plan);
                    moves.push(Action::Move {
                        plan,
                        from: neuron.clone(),
                    });
                }
                Err(_) => break,
            }
        }
        if moves.len() == models.len() {
            return moves;
        }
    }
    Vec::new()
}
