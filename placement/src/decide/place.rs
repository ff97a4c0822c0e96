//! Where a model goes: [`place`] picks a neuron and device for one more
//! copy of a model, and what to evict there when nothing fits as it is.
//!
//! Rules, in order:
//! - Only live, accepting neurons that hold no copy of the model (and none
//!   being loaded) are candidates; a pin list is preferred.
//! - A device where the model fits without eviction wins; among those the
//!   one with the most free memory (then the lowest neuron id, for
//!   determinism).
//! - Otherwise a device where evicting fits it. Only ready models with no
//!   request in flight, not pinned there, not already being evicted by
//!   another plan, and of lower or equal priority
//!   can go, and never a copy its model needs to stay at `min_replicas`
//!   (that would only make the reconciler load it again elsewhere). `lru` evicts the least recently used first; `priority` the
//!   lowest priority first, then the least recently used (a copy never used
//!   counts from its load). The device whose
//!   evictions cost least wins.
//! - Free memory counts loads recorded but not yet reported, so plans made
//!   from one snapshot never count the same bytes twice. Plans made at the
//!   same instant by two replicas can still both count one device's free
//!   bytes; the neuron's own fit check then refuses the second load (it
//!   never over-commits) and that plan moves on to another neuron.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use cortex_schemas::{Assignment, ModelState, Replica, ReplicaState};

use super::snapshot::Snapshot;

/// Which models are evicted first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// Least recently used first (among lower or equal priority).
    #[default]
    Lru,
    /// Lowest priority first, then least recently used.
    Priority,
}

/// One more copy of `model` on `neuron`'s `device`, after `evict`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub model: String,
    pub neuron: String,
    pub device: u32,
    pub need: u64,
    pub evict: Vec<Evict>,
}

/// A model to unload to make room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evict {
    pub model: String,
    pub neuron: String,
    pub device: u32,
    pub memory: u64,
}

/// Why no plan exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoPlace {
    #[error("no neuron is up to take model {model:?}")]
    NoNeuron { model: String },
    #[error("every live neuron already holds model {model:?}")]
    EverywhereAlready { model: String },
    #[error(
        "model {model:?} needs {need} bytes; the most any device can offer is {best} bytes \
         (free plus what may be evicted: ready, idle, unpinned models of priority <= {priority})"
    )]
    DoesNotFit {
        model: String,
        need: u64,
        best: u64,
        priority: i32,
        /// Whether it would fit once requests in flight finish.
        after_requests: bool,
    },
}

/// Where one more copy of `model` goes. `only` limits the choice to one
/// neuron; `exclude` leaves neurons out; `allow_evict` false asks for a
/// place that fits as it is.
pub fn place(
    snap: &Snapshot,
    model: &str,
    strategy: Strategy,
    only: Option<&str>,
    exclude: &BTreeSet<String>,
    allow_evict: bool,
) -> Result<Plan, NoPlace> {
    let need = snap.need(model);
    let priority = snap.priority(model);
    let holders: BTreeSet<String> = snap.replicas(model).into_iter().map(|r| r.neuron).collect();
    let pins = snap.pin_list(model);
    let candidates: Vec<_> = snap
        .neurons
        .values()
        .filter(|n| n.accepting && !exclude.contains(&n.id))
        .filter(|n| only.is_none_or(|o| o == n.id))
        .collect();
    if candidates.is_empty() {
        return Err(NoPlace::NoNeuron {
            model: model.to_string(),
        });
    }
    let candidates: Vec<_> = candidates
        .into_iter()
        .filter(|n| !holders.contains(&n.id) && n.holds(model).is_none())
        .collect();
    if candidates.is_empty() {
        return Err(NoPlace::EverywhereAlready {
            model: model.to_string(),
        });
    }
    // Fits as it is: pinned-here first, then most free, then lowest id.
    let fits = candidates
        .iter()
        .flat_map(|n| {
            n.devices
                .iter()
                .map(move |d| (n, d.index, snap.free(&n.id, d.index)))
        })
        .filter(|(_, _, free)| *free >= need)
        .min_by_key(|(n, index, free)| {
            (!pins.contains(&n.id), Reverse(*free), n.id.clone(), *index)
        });
    if let Some((neuron, device, _)) = fits {
        return Ok(Plan {
            model: model.to_string(),
            neuron: neuron.id.clone(),
            device,
            need,
            evict: Vec::new(),
        });
    }
    let mut best_offer = 0u64;
    let mut offer_when_idle = 0u64;
    let mut best: Option<(Cost, Plan)> = None;
    for neuron in &candidates {
        for device in &neuron.devices {
            let free = snap.free(&neuron.id, device.index);
            let evictable: Vec<_> = neuron
                .held
                .iter()
                .filter(|h| h.device == device.index && h.model != model)
                .filter(|h| h.state == ModelState::Ready)
                .filter(|h| !snap.leaving(&h.model, &neuron.id))
                .filter(|h| !snap.pinned_on(&h.model, &neuron.id))
                .filter(|h| snap.priority(&h.model) <= priority)
                .filter(|h| {
                    let floor = snap.min_replicas(&h.model);
                    floor == 0 || snap.replicas(&h.model).len() as u32 > floor
                })
                .collect();
            offer_when_idle = offer_when_idle.max(
                evictable
                    .iter()
                    .fold(free, |sum, h| sum.saturating_add(h.memory)),
            );
            let mut victims: Vec<_> = evictable.into_iter().filter(|h| h.busy == 0).collect();
            victims.sort_by_key(|h| {
                let first = match strategy {
                    Strategy::Lru => 0,
                    Strategy::Priority => i64::from(snap.priority(&h.model)),
                };
                (first, snap.last_used(h, &neuron.id), h.model.clone())
            });
            let offer = victims
                .iter()
                .fold(free, |sum, h| sum.saturating_add(h.memory));
            best_offer = best_offer.max(offer);
            if !allow_evict {
                continue;
            }
            let mut freed = free;
            let mut evict = Vec::new();
            for victim in victims {
                if freed >= need {
                    break;
                }
                freed = freed.saturating_add(victim.memory);
                evict.push(victim);
            }
            if freed < need {
                continue;
            }
            let cost = Cost {
                top_priority: match strategy {
                    Strategy::Lru => 0,
                    Strategy::Priority => evict
                        .iter()
                        .map(|h| snap.priority(&h.model))
                        .max()
                        .unwrap_or(i32::MIN),
                },
                newest_use: evict
                    .iter()
                    .map(|h| snap.last_used(h, &neuron.id))
                    .max()
                    .unwrap_or(0),
                count: evict.len(),
                neuron: neuron.id.clone(),
                device: device.index,
            };
            let plan = Plan {
                model: model.to_string(),
                neuron: neuron.id.clone(),
                device: device.index,
                need,
                evict: evict
                    .iter()
                    .map(|h| Evict {
                        model: h.model.clone(),
                        neuron: neuron.id.clone(),
                        device: h.device,
                        memory: h.memory,
                    })
                    .collect(),
            };
            if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                best = Some((cost, plan));
            }
        }
    }
    best.map(|(_, plan)| plan).ok_or(NoPlace::DoesNotFit {
        model: model.to_string(),
        need,
        best: best_offer,
        priority,
        after_requests: allow_evict && offer_when_idle >= need,
    })
}

/// How much an eviction plan costs; lower is better.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Cost {
    top_priority: i32,
    newest_use: u64,
    count: usize,
    neuron: String,
    device: u32,
}

impl Snapshot {
    /// Applies `plan` to this snapshot as if done: the evicted models are
    /// gone (their memory free again) and the load is pending in KV.
    pub fn apply(&mut self, plan: &Plan) {
        for evict in &plan.evict {
            self.remove_copy(&evict.model, &evict.neuron);
        }
        let assignment = self
            .assignments
            .entry(plan.model.clone())
            .or_insert_with(|| Assignment {
                model_id: plan.model.clone(),
                replicas: Vec::new(),
                desired_replicas: 1,
                pinned: Default::default(),
                last_used_ms: None,
            });
        assignment.replicas.retain(|r| r.neuron != plan.neuron);
        assignment.replicas.push(Replica {
            neuron: plan.neuron.clone(),
            device: Some(plan.device),
            state: ReplicaState::Loading,
            since_ms: self.now_ms,
        });
    }

    /// Forgets the copy of `model` on `neuron`, giving its memory back.
    pub fn remove_copy(&mut self, model: &str, neuron: &str) {
        if let Some(view) = self.neurons.get_mut(neuron) {
            if let Some(pos) = view.held.iter().position(|h| h.model == model) {
                let held = view.held.remove(pos);
                if let Some(device) = view.devices.iter_mut().find(|d| d.index == held.device) {
                    device.free = device.free.saturating_add(held.memory).min(device.total);
                }
            }
        }
        if let Some(assignment) = self.assignments.get_mut(model) {
            assignment.replicas.retain(|r| r.neuron != neuron);
        }
    }
}
