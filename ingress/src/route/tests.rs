//! The routing view against heartbeats that lag: what this pod sent since
//! the last one counts, so it does not pile onto the replica that looked
//! idle then.

use cortex_schemas::chat::{ChatMessage, Role};
use cortex_schemas::infer::GenerateInput;
use cortex_schemas::{
    GenerateRequest, InferRequest, ModelState, ModelStatus, NeuronState, NeuronStatus,
};

use super::{RouteView, Routing};
use crate::fleet::Fleet;

fn heartbeat(neuron: &str, at_ms: u64, load: u32) -> NeuronStatus {
    NeuronStatus {
        neuron_id: neuron.to_string(),
        version: "test".to_string(),
        state: NeuronState::Ready,
        engine: "sim".to_string(),
        at_ms,
        interval_ms: 2_000,
        devices: Vec::new(),
        models: vec![ModelStatus {
            model_id: "m".to_string(),
            state: ModelState::Ready,
            load_progress: None,
            error: None,
            device: 0,
            memory_bytes: 0,
            slots_busy: load,
            slots_total: 1_000,
            queue_depth: 0,
            tokens_per_second: 0.0,
            last_used_ms: None,
            prefix_cache: None,
            batch_kv: None,
        }],
    }
}

fn request(i: usize) -> InferRequest {
    let text = ChatMessage::text(Role::User, format!("question {i}"));
    InferRequest::Generate(Box::new(GenerateRequest::new(
        format!("r{i}"),
        "m",
        GenerateInput::Chat {
            messages: vec![text],
        },
    )))
}

/// Sends `n` requests, keeping them in flight; returns how many went to `a`.
fn send(view: &RouteView, fleet: &Fleet, n: usize, held: &mut Vec<super::InFlight>) -> usize {
    let mut to_a = 0;
    for i in 0..n {
        let decision = view.choose(fleet, &request(i));
        to_a += usize::from(decision.neuron.as_deref() == Some("a"));
        held.extend(decision.call);
    }
    to_a
}

#[test]
fn calls_since_the_last_heartbeat_count_against_their_replica() {
    let fleet = Fleet::default();
    let view = RouteView::new(Routing::Cache);
    let mut held = Vec::new();
    // Other pods' work: a runs 100, b 300.
    fleet.record(heartbeat("a", 1, 100));
    fleet.record(heartbeat("b", 1, 300));
    // 400 more before the next heartbeat: 200 even a and b up, the rest
    // split; a replica that looked idle does not take them all.
    let to_a = send(&view, &fleet, 400, &mut held);
    assert!((280..=320).contains(&to_a), "a got {to_a} of 400");

    // The next heartbeats count this pod's calls; nothing is counted twice.
    fleet.record(heartbeat("a", 2, 100 + to_a as u32));
    fleet.record(heartbeat("b", 2, 300 + (400 - to_a) as u32));
    let more = send(&view, &fleet, 200, &mut held);
    assert!((80..=120).contains(&more), "a got {more} of the next 200");
}

/// Two pods behind one balancer, each with half the load the heartbeats
/// count: each takes the other to send as it does, so together they fill
/// the idler replica up to the busier one and then split, instead of both
/// sending it everything until the next heartbeat.
#[test]
fn pods_between_heartbeats_do_not_all_pile_onto_the_idler_replica() {
    let fleet = Fleet::default();
    let pods = [
        RouteView::new(Routing::Cache),
        RouteView::new(Routing::Cache),
    ];
    let mut held = Vec::new();
    for pod in &pods {
        held.extend((0..50).map(|_| pod.count("a")));
        held.extend((0..150).map(|_| pod.count("b")));
    }
    fleet.record(heartbeat("a", 1, 100));
    fleet.record(heartbeat("b", 1, 300));
    let mut to_a = 0;
    for i in 0..400 {
        to_a += send(&pods[i % 2], &fleet, 1, &mut held);
    }
    // 300 more on a (to 400) and 100 on b (to 400); each pod alone, not
    // counting the other's, would have sent a all 400 (a at 500, b 300).
    assert!((270..=330).contains(&to_a), "a got {to_a} of 400");

    // When calls end, the others' end too: with every call of both pods
    // done before the heartbeats tell, a and b look alike again.
    held.clear();
    let after = send(&pods[0], &fleet, 100, &mut held);
    assert!(
        (30..=70).contains(&after),
        "a got {after} of 100 after the rest ended"
    );
}

/// One ready replica takes every call, chosen on load and counted while
/// it lasts; a second replica then sees that count.
#[test]
fn a_lone_replica_takes_every_call_and_counts_it() {
    let fleet = Fleet::default();
    let view = RouteView::new(Routing::Cache);
    let mut held = Vec::new();
    fleet.record(heartbeat("a", 1, 0));
    assert_eq!(send(&view, &fleet, 50, &mut held), 50);
    let decision = view.choose(&fleet, &request(50));
    assert_eq!(decision.reason, super::Reason::Load);
    assert_eq!(decision.matched_blocks, 0);
    held.extend(decision.call);
    // b joins, idle: this pod's 51 calls to a (not yet in a heartbeat)
    // count, so b takes the next ones until the two are even.
    fleet.record(heartbeat("b", 1, 0));
    let to_a = send(&view, &fleet, 40, &mut held);
    assert!(to_a <= 2, "a got {to_a} of 40");
}
