//! Faults of the control plane: the placement leader killed (the other
//! replica takes the lease within its TTL, loaded models keep serving,
//! state is read back from KV), a neuron killed (its models are reloaded
//! elsewhere when min_replicas asks). nats-server restarts are in
//! `faults/nats.rs`.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_bus::buckets;
use cortex_bus::kv::get;
use cortex_bus::PlacementOp;
use cortex_schemas::{Lease, ReplicaState};
use cortex_testkit::NatsServer;
use serde_json::json;
use support::*;

const CATALOG: &str = r#"
[[model]]
id = "m"
source = "sim"
vram_mb = 300
min_replicas = 1
"#;

fn placement_process(server: &NatsServer, id: &str, file: &std::path::Path) -> Daemon {
    Daemon::spawn(&[
        "placement",
        "--nats-url",
        &server.url(),
        "--id",
        id,
        "--models",
        file.to_str().unwrap(),
        "--lease-ttl",
        "2s",
        "--reconcile-interval",
        "200ms",
        "--metrics-listen",
        "off",
    ])
}

async fn lease(client: &async_nats::Client) -> Option<Lease> {
    let js = async_nats::jetstream::new(client.clone());
    let store = js.get_key_value(buckets::LEASES).await.ok()?;
    let lease: Option<Lease> = get(&store, "placement-leader").await.ok()?.map(|v| v.value);
    lease.filter(|l| l.expires_ms > cortex_bus::headers::unix_ms())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_hands_the_lease_over_and_serving_goes_on() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(dir.path(), CATALOG);
    let mut pa = placement_process(&server, "pa", &file);
    let mut pb = placement_process(&server, "pb", &file);
    let n1 = sim_neuron(&server, "n1", |_| {}).await;
    let ingress = ingress(&server).await;
    let base = format!("http://{}", ingress.addr);
    let client = connect(&server.url()).await;
    // min_replicas = 1: the leader loads it without any request.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // The placement processes may not answer yet.
        let recorded = placement_call::<_, cortex_schemas::PlacementStatus>(
            &client,
            PlacementOp::Status,
            &json!({}),
        )
        .await
        .is_ok_and(|s| {
            s.assignments.iter().any(|a| {
                a.model_id == "m" && a.replicas.iter().any(|r| r.state == ReplicaState::Ready)
            })
        });
        if recorded && ready_on(&client, "m").await == vec!["n1".to_string()] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "m never loaded by the reconciler"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = status(&client).await;
    let leader = lease(&client).await.expect("a leader").holder;
    let (victim, survivor) = if leader == "pa" {
        (&mut pa, "pb")
    } else {
        (&mut pb, "pa")
    };

    // Requests keep flowing while the leader dies.
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let (failures, served, stop, base) =
            (failures.clone(), served.clone(), stop.clone(), base.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let answer = chat(&base, "m", json!({})).await;
                if answer.status == 200 {
                    served.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let killed = Instant::now();
    victim.kill();
    let deadline = killed + Duration::from_secs(10);
    let took = loop {
        if lease(&client).await.is_some_and(|l| l.holder == survivor) {
            break killed.elapsed();
        }
        assert!(Instant::now() < deadline, "{survivor} never took the lease");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // TTL 2 s, tried each third of it.
    assert!(
        took <= Duration::from_millis(2000 + 700 + 300),
        "took {took:?}"
    );
    // Traffic goes on under the new leader.
    let served_before = served.load(Ordering::Relaxed);
    until(
        "5 answers under the new leader",
        Duration::from_secs(10),
        || served.load(Ordering::Relaxed) >= served_before + 5,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(served.load(Ordering::Relaxed) > 5);
    // The survivor answers from the state in KV.
    let after = status(&client).await;
    assert_eq!(after.replica, survivor);
    assert_eq!(after.leader.as_deref(), Some(survivor));
    let find = |s: &cortex_schemas::PlacementStatus| {
        s.assignments.iter().find(|a| a.model_id == "m").map(|a| {
            a.replicas
                .iter()
                .map(|r| (r.neuron.clone(), r.state))
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(find(&before), find(&after));
    assert_eq!(
        find(&after),
        Some(vec![("n1".to_string(), ReplicaState::Ready)])
    );
    println!("lease taken over {took:?} after kill -9");
    ingress.shutdown().await;
    n1.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_neurons_models_are_reloaded_elsewhere() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(dir.path(), CATALOG);
    let p = placement(placement_config(&server, "p1", Some(&file))).await;
    let client = connect(&server.url()).await;
    let mut events = record_events(&client).await;
    let mut victim = Daemon::spawn(&[
        "neuron",
        "--engine",
        "sim",
        "--id",
        "victim",
        "--nats-url",
        &server.url(),
        "--heartbeat-interval",
        "300ms",
        "--metrics-listen",
        "off",
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready_on(&client, "m").await != vec!["victim".to_string()] {
        assert!(Instant::now() < deadline, "m never loaded on the victim");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let survivor = sim_neuron(&server, "survivor", |_| {}).await;
    until("survivor seen", Duration::from_secs(10), || {
        p.shared().fleet.live().len() == 2
    })
    .await;
    assert!(
        survivor.status().models.is_empty(),
        "min_replicas 1 is met by the victim"
    );

    let killed = Instant::now();
    victim.kill();
    let deadline = killed + Duration::from_secs(15);
    while ready_on(&client, "m").await != vec!["survivor".to_string()] {
        assert!(
            Instant::now() < deadline,
            "m never reloaded on the survivor"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed.elapsed();
    println!("model ready elsewhere {took:?} after kill -9 of its neuron");
    assert!(took < Duration::from_secs(5), "{took:?}");
    events_until(&mut events, "victim lost", Duration::from_secs(5), |seen| {
        seen.iter().any(|e| matches!(&e.detail, cortex_schemas::EventDetail::NeuronLost { neuron, .. } if neuron == "victim"))
    })
    .await;
    // KV matches the neurons: only the survivor's copy is recorded.
    let assignment = status(&client)
        .await
        .assignments
        .into_iter()
        .find(|a| a.model_id == "m")
        .unwrap();
    let neurons: Vec<_> = assignment
        .replicas
        .iter()
        .map(|r| r.neuron.as_str())
        .collect();
    assert_eq!(neurons, vec!["survivor"]);
    survivor.shutdown().await;
    p.shutdown().await;
}
