//! Tests of the decisions against a small simulated world in which loads
//! land one step later (so pending loads must be counted): [`property`]
//! drives random fleets, catalogues and request sequences; [`rules`] checks
//! each rule on a fixed example.

mod property;
mod rules;

use std::collections::BTreeMap;

use cortex_schemas::{ModelProfile, ModelState};

use super::{Action, DeviceView, Held, ModelSpec, NeuronView, Plan, Snapshot};

#[derive(Debug, Clone)]
pub(super) struct World {
    pub(super) now: u64,
    /// neuron → device totals
    pub(super) devices: BTreeMap<String, Vec<u64>>,
    pub(super) held: BTreeMap<String, Vec<Held>>,
    /// Loads started but not reported yet: (model, neuron, device).
    pub(super) pending: Vec<(String, String, u32)>,
    pub(super) models: BTreeMap<String, ModelSpec>,
}

impl World {
    pub(super) fn used(&self, neuron: &str, device: u32) -> u64 {
        let held: u64 = self.held[neuron]
            .iter()
            .filter(|h| h.device == device)
            .map(|h| h.memory)
            .sum();
        let pending: u64 = self
            .pending
            .iter()
            .filter(|(_, n, d)| n == neuron && *d == device)
            .map(|(m, _, _)| self.models[m].need)
            .sum();
        held + pending
    }

    pub(super) fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot {
            now_ms: self.now,
            models: self.models.clone(),
            ..Default::default()
        };
        for (id, totals) in &self.devices {
            let devices = totals
                .iter()
                .enumerate()
                .map(|(i, &total)| {
                    let held: u64 = self.held[id]
                        .iter()
                        .filter(|h| h.device == i as u32)
                        .map(|h| h.memory)
                        .sum();
                    DeviceView {
                        index: i as u32,
                        total,
                        free: total - held,
                    }
                })
                .collect();
            snap.neurons.insert(
                id.clone(),
                NeuronView {
                    id: id.clone(),
                    accepting: true,
                    devices,
                    held: self.held[id].clone(),
                },
            );
        }
        for (model, neuron, device) in &self.pending {
            let plan = Plan {
                model: model.clone(),
                neuron: neuron.clone(),
                device: *device,
                need: 0,
                evict: vec![],
            };
            snap.apply(&plan);
        }
        snap
    }

    pub(super) fn remove(&mut self, snap: &Snapshot, model: &str, neuron: &str) {
        assert!(
            !snap.pinned_on(model, neuron),
            "pinned {model} removed from {neuron}"
        );
        let list = self.held.get_mut(neuron).unwrap();
        let pos = list
            .iter()
            .position(|h| h.model == model)
            .expect("removing what is not held");
        assert_eq!(
            list[pos].busy, 0,
            "{model} removed from {neuron} with requests in flight"
        );
        list.remove(pos);
    }

    pub(super) fn execute(&mut self, snap: &Snapshot, plan: &Plan) {
        for evict in &plan.evict {
            self.remove(snap, &evict.model, &evict.neuron);
        }
        self.pending
            .push((plan.model.clone(), plan.neuron.clone(), plan.device));
        let total = self.devices[&plan.neuron][plan.device as usize];
        assert!(
            self.used(&plan.neuron, plan.device) <= total,
            "device {}:{} over-committed: {} > {total}",
            plan.neuron,
            plan.device,
            self.used(&plan.neuron, plan.device)
        );
    }

    /// Pending loads are reported (ready).
    pub(super) fn land(&mut self) {
        for (model, neuron, device) in std::mem::take(&mut self.pending) {
            let memory = self.models[&model].need;
            self.held.get_mut(&neuron).unwrap().push(Held {
                model,
                device,
                memory,
                state: ModelState::Ready,
                busy: 0,
                last_used_ms: Some(self.now),
            });
        }
    }
}

pub(super) fn run_actions(world: &mut World, snap: &Snapshot, actions: &[Action]) {
    for action in actions {
        match action {
            Action::Load { plan, .. } => world.execute(snap, plan),
            Action::Unload { model, neuron, .. } => world.remove(snap, model, neuron),
            Action::Move { plan, from } => {
                world.execute(snap, plan);
                world.remove(snap, &plan.model, from);
            }
        }
    }
}

pub(super) fn sample() -> World {
    let mut world = World {
        now: 1_000_000,
        devices: BTreeMap::from([("a".into(), vec![1200]), ("b".into(), vec![600])]),
        held: BTreeMap::from([("a".into(), vec![]), ("b".into(), vec![])]),
        pending: vec![],
        models: BTreeMap::new(),
    };
    for (id, need, priority, pinned) in [
        ("big", 800, 0, false),
        ("small", 300, 0, false),
        ("vip", 300, 5, true),
        ("low", 300, -1, false),
    ] {
        let profile: ModelProfile = serde_json::from_value(serde_json::json!({
            "id": id, "source": "x", "priority": priority, "pinned": pinned, "idle_ttl_ms": 60000
        }))
        .unwrap();
        world.models.insert(id.into(), ModelSpec { profile, need });
    }
    world
}
