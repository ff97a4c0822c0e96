//! Property tests: random fleets, catalogues and request sequences run
//! through [`place`] and [`reconcile`] against a small simulated world in
//! which loads land one step later (so pending loads must be counted).
//! Checked at every step: no device holds more than its memory (loaded plus
//! loading), no pinned copy and no copy with requests in flight is ever
//! evicted or unloaded, and every pinned model that fits stays loaded.

use std::collections::{BTreeMap, BTreeSet};

use cortex_schemas::{ModelProfile, ModelState, Pinned};
use proptest::prelude::*;

use super::place::Strategy as Evicting;
use super::{
    place, reconcile, update_pressure, Action, DeviceView, Held, ModelSpec, NeuronView, NoPlace,
    Plan, Reason, Settings, Snapshot,
};
use proptest::strategy::Strategy;

#[derive(Debug, Clone)]
struct World {
    now: u64,
    /// neuron → device totals
    devices: BTreeMap<String, Vec<u64>>,
    held: BTreeMap<String, Vec<Held>>,
    /// Loads started but not reported yet: (model, neuron, device).
    pending: Vec<(String, String, u32)>,
    models: BTreeMap<String, ModelSpec>,
}

impl World {
    fn used(&self, neuron: &str, device: u32) -> u64 {
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

    fn snapshot(&self) -> Snapshot {
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

    fn remove(&mut self, snap: &Snapshot, model: &str, neuron: &str) {
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

    fn execute(&mut self, snap: &Snapshot, plan: &Plan) {
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
    fn land(&mut self) {
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

#[derive(Debug, Clone)]
enum Step {
    Request { model: usize, hold: bool },
    Finish { model: usize },
    Tick { ms: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0usize..8, any::<bool>()).prop_map(|(model, hold)| Step::Request { model, hold }),
        2 => (0usize..8).prop_map(|model| Step::Finish { model }),
        2 => (1u64..200_000).prop_map(|ms| Step::Tick { ms }),
    ]
}

fn world() -> impl Strategy<Value = World> {
    let neurons = prop::collection::vec(prop::collection::vec(100u64..1000, 1..3), 1..5);
    let models = prop::collection::vec(
        (
            10u64..700,
            -2i32..3,
            0u8..10,
            0u32..3,
            0u32..3,
            prop::option::of(1_000u64..300_000),
        ),
        1..8,
    );
    (neurons, models).prop_map(|(neurons, models)| {
        let devices: BTreeMap<String, Vec<u64>> = neurons
            .into_iter()
            .enumerate()
            .map(|(i, d)| (format!("n{i}"), d))
            .collect();
        let ids: Vec<String> = devices.keys().cloned().collect();
        let models = models
            .into_iter()
            .enumerate()
            .map(|(i, (need, priority, pin, min, extra, idle))| {
                let pinned = match pin {
                    0 => Pinned::Flag(true),
                    1 => Pinned::Neurons(vec![ids[i % ids.len()].clone()]),
                    _ => Pinned::Flag(false),
                };
                let profile = ModelProfile {
                    id: format!("m{i}"),
                    aliases: vec![],
                    kind: Default::default(),
                    source: "x".into(),
                    format: None,
                    context_length: None,
                    vram_mb: None,
                    priority,
                    pinned,
                    min_replicas: min,
                    max_replicas: (min + extra).max(1),
                    idle_ttl_ms: idle,
                    max_concurrency: Some(1),
                    chat_template: None,
                    sampling: Default::default(),
                    default_max_tokens: None,
                };
                (profile.id.clone(), ModelSpec { profile, need })
            })
            .collect();
        let held = devices.keys().map(|k| (k.clone(), Vec::new())).collect();
        World {
            now: 1_000_000,
            devices,
            held,
            pending: vec![],
            models,
        }
    })
}

fn run_actions(world: &mut World, snap: &Snapshot, actions: &[Action]) {
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn never_over_commit_never_evict_pinned_or_busy(
        mut world in world(),
        steps in prop::collection::vec(step(), 1..60),
        strategy in prop_oneof![Just(Evicting::Lru), Just(Evicting::Priority)],
        defrag_after in 0u32..3,
    ) {
        let settings = Settings { strategy, defrag_after, scale_up_after: 1, ..Settings::default() };
        let mut pressure = BTreeMap::new();
        let mut evictions = 0u32;
        for step in steps {
            match step {
                Step::Request { model, hold } => {
                    let Some(id) = world.models.keys().nth(model % world.models.len()).cloned() else { continue };
                    let now = world.now;
                    let served = world.held.values_mut().flatten().find(|h| h.model == id);
                    if let Some(held) = served {
                        held.last_used_ms = Some(now);
                        if hold { held.busy += 1; }
                        continue;
                    }
                    if world.pending.iter().any(|(m, _, _)| *m == id) { continue; }
                    let snap = world.snapshot();
                    if let Ok(plan) = place(&snap, &id, strategy, None, &BTreeSet::new(), true) {
                        evictions += plan.evict.len() as u32;
                        world.execute(&snap, &plan);
                    }
                }
                Step::Finish { model } => {
                    let id = format!("m{}", model % world.models.len());
                    for held in world.held.values_mut().flatten().filter(|h| h.model == id) {
                        held.busy = held.busy.saturating_sub(1);
                    }
                }
                Step::Tick { ms } => {
                    world.now += ms;
                    world.land();
                    let snap = world.snapshot();
                    update_pressure(&snap, &mut pressure);
                    let actions = reconcile(&snap, &settings, &pressure, evictions);
                    if actions.iter().any(|a| matches!(a, Action::Move { .. })) { evictions = 0; }
                    evictions += actions.iter().map(|a| match a { Action::Load { plan, .. } => plan.evict.len() as u32, _ => 0 }).sum::<u32>();
                    run_actions(&mut world, &snap, &actions);
                }
            }
        }
        // Settle: a few cycles without requests load what the floors ask.
        for _ in 0..6 {
            world.land();
            let snap = world.snapshot();
            let actions = reconcile(&snap, &settings, &BTreeMap::new(), 0);
            run_actions(&mut world, &snap, &actions);
        }
        world.land();
        // Every pinned model that a device could hold is loaded somewhere.
        let snap = world.snapshot();
        for (id, spec) in &world.models {
            if spec.profile.pinned == Pinned::Flag(true) {
                let fits_somewhere = world.devices.values().flatten().any(|&t| t >= spec.need);
                let loaded = snap.replicas(id).iter().any(|r| r.state == ModelState::Ready);
                if fits_somewhere && !loaded {
                    // Only other pinned or busy models or higher priority ones may stand in the way.
                    let plan = place(&snap, id, strategy, None, &BTreeSet::new(), true);
                    let actions = reconcile(&snap, &settings, &BTreeMap::new(), 0);
                    prop_assert!(plan.is_err(), "pinned {id} fits ({plan:?}) but is not loaded; {actions:?} {:?} {:?}", world.held, world.models);
                }
            }
        }
    }
}

fn sample() -> World {
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

#[test]
fn fits_without_eviction_on_the_device_with_most_free_memory() {
    let world = sample();
    let plan = place(
        &world.snapshot(),
        "small",
        Evicting::Lru,
        None,
        &BTreeSet::new(),
        true,
    )
    .unwrap();
    assert_eq!((plan.neuron.as_str(), plan.evict.len()), ("a", 0));
}

#[test]
fn evicts_least_recently_used_and_never_busy_or_pinned() {
    let mut world = sample();
    world.held.get_mut("a").unwrap().extend([
        Held {
            model: "low".into(),
            device: 0,
            memory: 300,
            state: ModelState::Ready,
            busy: 0,
            last_used_ms: Some(5),
        },
        Held {
            model: "small".into(),
            device: 0,
            memory: 300,
            state: ModelState::Ready,
            busy: 0,
            last_used_ms: Some(1),
        },
        Held {
            model: "vip".into(),
            device: 0,
            memory: 300,
            state: ModelState::Ready,
            busy: 0,
            last_used_ms: Some(0),
        },
    ]);
    world.held.get_mut("b").unwrap().push(Held {
        model: "x-busy".into(),
        device: 0,
        memory: 500,
        state: ModelState::Ready,
        busy: 1,
        last_used_ms: Some(0),
    });
    let snap = world.snapshot();
    // lru: "small" (used at 1) before "low" (used at 5); "vip" is pinned.
    let plan = place(&snap, "big", Evicting::Lru, None, &BTreeSet::new(), true).unwrap();
    let evicted: Vec<_> = plan.evict.iter().map(|e| e.model.as_str()).collect();
    assert_eq!((plan.neuron.as_str(), evicted), ("a", vec!["small", "low"]));
    // priority: "low" (priority -1) goes first.
    let plan = place(
        &snap,
        "big",
        Evicting::Priority,
        None,
        &BTreeSet::new(),
        true,
    )
    .unwrap();
    let evicted: Vec<_> = plan.evict.iter().map(|e| e.model.as_str()).collect();
    assert_eq!(evicted, vec!["low", "small"]);
    // Without eviction nothing fits; the error says what the best offer is.
    let error = place(&snap, "big", Evicting::Lru, None, &BTreeSet::new(), false).unwrap_err();
    assert!(
        matches!(
            error,
            NoPlace::DoesNotFit {
                need: 800,
                best: 900,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn a_pending_load_holds_its_memory() {
    let mut world = sample();
    world.pending.push(("small".into(), "a".into(), 0));
    world.pending.push(("vip".into(), "a".into(), 0));
    let snap = world.snapshot();
    assert_eq!(snap.free("a", 0), 600);
    let plan = place(&snap, "big", Evicting::Lru, None, &BTreeSet::new(), true);
    assert!(plan.is_err(), "800 does not fit in 600 nor 600: {plan:?}");
}

#[test]
fn reconcile_loads_pinned_and_unloads_idle() {
    let mut world = sample();
    let snap = world.snapshot();
    let actions = reconcile(&snap, &Settings::default(), &BTreeMap::new(), 0);
    assert!(
        matches!(&actions[..], [Action::Load { plan, reason: Reason::Pinned }] if plan.model == "vip"),
        "{actions:?}"
    );
    run_actions(&mut world, &snap, &actions);
    world.land();
    world.held.get_mut("b").unwrap().push(Held {
        model: "small".into(),
        device: 0,
        memory: 300,
        state: ModelState::Ready,
        busy: 0,
        last_used_ms: Some(world.now),
    });
    world.now += 61_000;
    let actions = reconcile(&world.snapshot(), &Settings::default(), &BTreeMap::new(), 0);
    assert_eq!(
        actions,
        vec![Action::Unload {
            model: "small".into(),
            neuron: "b".into(),
            reason: Reason::Idle
        }]
    );
}

#[test]
fn a_deep_queue_scales_up_to_max_replicas() {
    let mut world = sample();
    let spec = world.models.get_mut("small").unwrap();
    spec.profile.max_replicas = 2;
    spec.profile.max_concurrency = Some(1);
    world.held.get_mut("a").unwrap().push(Held {
        model: "small".into(),
        device: 0,
        memory: 300,
        state: ModelState::Ready,
        busy: 5,
        last_used_ms: Some(world.now),
    });
    let snap = world.snapshot();
    let mut pressure = BTreeMap::new();
    let settings = Settings {
        scale_up_after: 2,
        ..Settings::default()
    };
    update_pressure(&snap, &mut pressure);
    assert!(!reconcile(&snap, &settings, &pressure, 0)
        .iter()
        .any(|a| matches!(
            a,
            Action::Load {
                reason: Reason::ScaleUp,
                ..
            }
        )));
    update_pressure(&snap, &mut pressure);
    let actions = reconcile(&snap, &settings, &pressure, 0);
    assert!(
        actions.iter().any(
            |a| matches!(a, Action::Load { plan, reason: Reason::ScaleUp } if plan.neuron == "b")
        ),
        "{actions:?}"
    );
}

#[test]
fn a_failed_load_does_not_bar_the_neuron_and_leaving_copies_are_not_counted_twice() {
    let mut world = sample();
    // A failed entry on the only big-enough device holds no memory.
    world.devices = BTreeMap::from([("a".into(), vec![1200])]);
    world.held = BTreeMap::from([(
        "a".into(),
        vec![
            Held {
                model: "big".into(),
                device: 0,
                memory: 0,
                state: ModelState::Failed,
                busy: 0,
                last_used_ms: None,
            },
            Held {
                model: "small".into(),
                device: 0,
                memory: 300,
                state: ModelState::Ready,
                busy: 0,
                last_used_ms: Some(1),
            },
        ],
    )]);
    let mut snap = world.snapshot();
    let plan = place(&snap, "big", Evicting::Lru, None, &BTreeSet::new(), true).unwrap();
    assert_eq!((plan.neuron.as_str(), plan.evict.len()), ("a", 0));
    // "small" already being evicted by another plan: not counted again.
    let assignment = snap
        .assignments
        .entry("small".into())
        .or_insert_with(|| crate::assignments::fresh("small"));
    assignment.replicas.push(cortex_schemas::Replica {
        neuron: "a".into(),
        device: Some(0),
        state: cortex_schemas::ReplicaState::Unloading,
        since_ms: 0,
    });
    snap.neurons.get_mut("a").unwrap().devices[0].free = 0;
    let error = place(&snap, "vip", Evicting::Lru, None, &BTreeSet::new(), true).unwrap_err();
    assert!(
        matches!(error, NoPlace::DoesNotFit { best: 0, .. }),
        "{error:?}"
    );
}

#[test]
fn a_fresh_copy_is_not_the_oldest_and_extra_idle_copies_scale_down() {
    let mut world = sample();
    world.now = 10_000_000;
    world.devices = BTreeMap::from([("a".into(), vec![700]), ("b".into(), vec![700])]);
    world.held = BTreeMap::from([
        (
            "a".into(),
            vec![Held {
                model: "low".into(),
                device: 0,
                memory: 300,
                state: ModelState::Ready,
                busy: 0,
                last_used_ms: Some(9_000_000),
            }],
        ),
        (
            "b".into(),
            vec![Held {
                model: "small".into(),
                device: 0,
                memory: 300,
                state: ModelState::Ready,
                busy: 0,
                last_used_ms: None,
            }],
        ),
    ]);
    let mut snap = world.snapshot();
    // "small" on b was loaded just now (never used): "low" goes first.
    snap.apply(&Plan {
        model: "small".into(),
        neuron: "b".into(),
        device: 0,
        need: 0,
        evict: vec![],
    });
    let small = snap.assignments.get_mut("small").unwrap();
    small.replicas[0].state = cortex_schemas::ReplicaState::Ready;
    small.replicas[0].since_ms = world.now;
    let mut mid = snap.models["small"].clone();
    mid.profile.id = "mid".into();
    mid.need = 600;
    snap.models.insert("mid".into(), mid);
    let plan = place(&snap, "mid", Evicting::Lru, None, &BTreeSet::new(), true).unwrap();
    let evicted: Vec<_> = plan.evict.iter().map(|e| e.model.as_str()).collect();
    assert_eq!((plan.neuron.as_str(), evicted), ("a", vec!["low"]));
    // Two idle copies of a model with max_replicas 2: the older goes after scale_down_after.
    let mut world = sample();
    world.models.get_mut("small").unwrap().profile.max_replicas = 2;
    world.models.get_mut("small").unwrap().profile.idle_ttl_ms = None;
    for (neuron, used) in [("a", 1_000_000), ("b", 1_050_000)] {
        world.held.get_mut(neuron).unwrap().push(Held {
            model: "small".into(),
            device: 0,
            memory: 300,
            state: ModelState::Ready,
            busy: 0,
            last_used_ms: Some(used),
        });
    }
    world.now = 1_000_000 + 121_000;
    let settings = Settings::default();
    let actions = reconcile(&world.snapshot(), &settings, &BTreeMap::new(), 0);
    assert!(
        actions.contains(&Action::Unload {
            model: "small".into(),
            neuron: "a".into(),
            reason: Reason::ScaleDown
        }),
        "{actions:?}"
    );
}
