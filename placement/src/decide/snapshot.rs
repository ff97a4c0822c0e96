//! What decisions look at: a snapshot of the fleet (from heartbeats), the
//! catalogue (with each model's memory need) and the assignments (from
//! KV), taken at one instant. Plain data, no I/O, so every rule can be
//! tested without NATS.

use std::collections::BTreeMap;

use cortex_schemas::{
    Assignment, ModelProfile, ModelState, NeuronState, NeuronStatus, Pinned, ReplicaState,
};

/// The world as placement sees it at `now_ms`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub now_ms: u64,
    /// Live neurons only: lost ones are left out.
    pub neurons: BTreeMap<String, NeuronView>,
    pub models: BTreeMap<String, ModelSpec>,
    pub assignments: BTreeMap<String, Assignment>,
}

/// A catalogue entry and the bytes it needs once loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub profile: ModelProfile,
    pub need: u64,
}

/// One live neuron.
#[derive(Debug, Clone, PartialEq)]
pub struct NeuronView {
    pub id: String,
    /// Ready (not starting, draining or stopping).
    pub accepting: bool,
    pub devices: Vec<DeviceView>,
    pub held: Vec<Held>,
}

/// A device's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceView {
    pub index: u32,
    pub total: u64,
    pub free: u64,
}

/// A model a neuron reports holding.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub model: String,
    pub device: u32,
    pub memory: u64,
    pub state: ModelState,
    /// Requests running or queued.
    pub busy: u32,
    pub last_used_ms: Option<u64>,
}

impl NeuronView {
    /// The view of a heartbeat.
    pub fn from_status(status: &NeuronStatus) -> Self {
        Self {
            id: status.neuron_id.clone(),
            accepting: status.state == NeuronState::Ready,
            devices: status
                .devices
                .iter()
                .map(|d| DeviceView {
                    index: d.index,
                    total: d.memory_total_bytes,
                    free: d.memory_free_bytes,
                })
                .collect(),
            held: status
                .models
                .iter()
                .map(|m| Held {
                    model: m.model_id.clone(),
                    device: m.device,
                    memory: m.memory_bytes,
                    state: m.state,
                    busy: m.slots_busy + m.queue_depth,
                    last_used_ms: m.last_used_ms,
                })
                .collect(),
        }
    }

    /// The entry for `model`, whatever its state (failed included).
    pub fn holding(&self, model: &str) -> Option<&Held> {
        self.held.iter().find(|h| h.model == model)
    }

    /// The copy of `model`, unless the last load of it here failed (a
    /// failed entry holds no memory and does not bar another attempt).
    pub fn holds(&self, model: &str) -> Option<&Held> {
        self.holding(model)
            .filter(|h| h.state != ModelState::Failed)
    }
}

/// One copy of a model as decisions count it: held (loading or ready) or
/// recorded as loading in KV but not yet in a heartbeat (pending).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaView {
    pub neuron: String,
    pub device: Option<u32>,
    pub state: ModelState,
    pub busy: u32,
    pub last_used_ms: Option<u64>,
    pub pending: bool,
}

impl Snapshot {
    /// The copies of `model` that count: loading or ready on live neurons,
    /// plus loads recorded in KV that no heartbeat shows yet.
    pub fn replicas(&self, model: &str) -> Vec<ReplicaView> {
        let mut out: Vec<ReplicaView> = Vec::new();
        for neuron in self.neurons.values() {
            if let Some(held) = neuron.holding(model) {
                if matches!(held.state, ModelState::Loading | ModelState::Ready) {
                    out.push(ReplicaView {
                        neuron: neuron.id.clone(),
                        device: Some(held.device),
                        state: held.state,
                        busy: held.busy,
                        last_used_ms: held.last_used_ms,
                        pending: false,
                    });
                }
            }
        }
        for (neuron, device) in self.pending(model) {
            out.push(ReplicaView {
                neuron,
                device,
                state: ModelState::Loading,
                busy: 0,
                last_used_ms: None,
                pending: true,
            });
        }
        out
    }

    /// Loads of `model` recorded in KV on live neurons that do not report it yet.
    fn pending(&self, model: &str) -> Vec<(String, Option<u32>)> {
        let Some(assignment) = self.assignments.get(model) else {
            return Vec::new();
        };
        assignment
            .replicas
            .iter()
            .filter(|r| r.state == ReplicaState::Loading)
            .filter(|r| {
                self.neurons
                    .get(&r.neuron)
                    .is_some_and(|n| n.holds(model).is_none())
            })
            .map(|r| (r.neuron.clone(), r.device))
            .collect()
    }

    /// Free bytes on a device once pending loads there have taken their share.
    pub fn free(&self, neuron: &str, device: u32) -> u64 {
        let Some(view) = self.neurons.get(neuron) else {
            return 0;
        };
        let Some(dev) = view.devices.iter().find(|d| d.index == device) else {
            return 0;
        };
        let best = view
            .devices
            .iter()
            .max_by_key(|d| (d.free, std::cmp::Reverse(d.index)))
            .map(|d| d.index);
        let mut reserved = 0u64;
        for (model, assignment) in &self.assignments {
            for replica in &assignment.replicas {
                let pending_here = replica.neuron == neuron
                    && replica.state == ReplicaState::Loading
                    && view.holds(model).is_none()
                    && replica.device.or(best) == Some(device);
                if pending_here {
                    reserved = reserved.saturating_add(self.need(model));
                }
            }
        }
        dev.free.saturating_sub(reserved)
    }

    /// Bytes `model` needs; what a neuron reports for it when the
    /// catalogue could not tell.
    pub fn need(&self, model: &str) -> u64 {
        let known = self.models.get(model).map_or(0, |m| m.need);
        if known > 0 {
            return known;
        }
        self.neurons
            .values()
            .filter_map(|n| n.holding(model))
            .map(|h| h.memory)
            .max()
            .unwrap_or(0)
    }

    /// When the copy of `model` on `neuron` was last used; for a copy never
    /// used, when it was recorded (so a fresh copy is not the oldest).
    pub fn last_used(&self, held: &Held, neuron: &str) -> u64 {
        held.last_used_ms.unwrap_or_else(|| {
            self.assignments
                .get(&held.model)
                .and_then(|a| a.replicas.iter().find(|r| r.neuron == neuron))
                .map_or(0, |r| r.since_ms)
        })
    }

    /// Whether placement is already taking the copy of `model` off `neuron`.
    pub fn leaving(&self, model: &str, neuron: &str) -> bool {
        self.assignments.get(model).is_some_and(|a| {
            a.replicas
                .iter()
                .any(|r| r.neuron == neuron && r.state == ReplicaState::Unloading)
        })
    }

    /// Copies `model` keeps: `min_replicas`, at least 1 when pinned.
    pub fn min_replicas(&self, model: &str) -> u32 {
        let min = self.models.get(model).map_or(0, |m| m.profile.min_replicas);
        min.max(u32::from(self.pinned_anywhere(model)))
    }

    pub fn priority(&self, model: &str) -> i32 {
        // Models outside the catalogue go first.
        self.models
            .get(model)
            .map_or(i32::MIN, |m| m.profile.priority)
    }

    /// Whether `model` is pinned on `neuron` (by the catalogue or an operator).
    pub fn pinned_on(&self, model: &str, neuron: &str) -> bool {
        let hit = |pinned: &Pinned| match pinned {
            Pinned::Flag(flag) => *flag,
            Pinned::Neurons(list) => list.iter().any(|n| n == neuron),
        };
        self.models
            .get(model)
            .is_some_and(|m| hit(&m.profile.pinned))
            || self.assignments.get(model).is_some_and(|a| hit(&a.pinned))
    }

    /// Neurons `model` must be on (pin lists), from catalogue and operator.
    pub fn pin_list(&self, model: &str) -> Vec<String> {
        let mut list = Vec::new();
        for pinned in [
            self.models.get(model).map(|m| &m.profile.pinned),
            self.assignments.get(model).map(|a| &a.pinned),
        ]
        .into_iter()
        .flatten()
        {
            if let Pinned::Neurons(neurons) = pinned {
                list.extend(neurons.iter().cloned());
            }
        }
        list.sort();
        list.dedup();
        list
    }

    /// Whether `model` is pinned at all (so at least one copy stays).
    pub fn pinned_anywhere(&self, model: &str) -> bool {
        self.models
            .get(model)
            .is_some_and(|m| m.profile.pinned.is_pinned())
            || self
                .assignments
                .get(model)
                .is_some_and(|a| a.pinned.is_pinned())
    }
}
