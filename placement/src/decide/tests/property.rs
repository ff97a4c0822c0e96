//! Property tests: random fleets, catalogues and request sequences run
//! through [`place`] and [`reconcile`]. Checked at every step: no device
//! holds more than its memory (loaded plus loading), no pinned copy and no
//! copy with requests in flight is ever evicted or unloaded, and every
//! pinned model that fits stays loaded.

use std::collections::{BTreeMap, BTreeSet};

use cortex_schemas::{ModelProfile, ModelState, Pinned};
use proptest::prelude::*;
use proptest::strategy::Strategy;

use super::{run_actions, World};
use crate::decide::place::Strategy as Evicting;
use crate::decide::{place, reconcile, update_pressure, Action, ModelSpec, Settings};

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
                    spill_after_ms: None,
                    max_concurrency: Some(1),
                    prefix_cache_mb: None,
                    chat_template: None,
                    sampling: Default::default(),
                    default_max_tokens: None,
                    max_tokens_over_window: Default::default(),
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
