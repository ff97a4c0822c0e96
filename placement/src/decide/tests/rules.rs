//! Each decision rule on a fixed example.

use std::collections::{BTreeMap, BTreeSet};

use cortex_schemas::ModelState;

use super::{run_actions, sample};
use crate::decide::place::Strategy as Evicting;
use crate::decide::{
    place, reconcile, update_pressure, Action, Held, NoPlace, Plan, Reason, Settings,
};

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
    // The catalogue's `spill_after` overrides the cycles: 2.5 s at 1 s a
    // cycle is 3 cycles of saturation.
    world
        .models
        .get_mut("small")
        .unwrap()
        .profile
        .spill_after_ms = Some(2500);
    let snap = world.snapshot();
    let scaled = |pressure: &BTreeMap<String, u32>| {
        reconcile(&snap, &settings, pressure, 0).iter().any(|a| {
            matches!(
                a,
                Action::Load {
                    reason: Reason::ScaleUp,
                    ..
                }
            )
        })
    };
    assert!(!scaled(&pressure));
    update_pressure(&snap, &mut pressure);
    assert!(scaled(&pressure));
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
