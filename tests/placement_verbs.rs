//! The operator's verbs over NATS (status, load, unload, pin, unpin,
//! reload), the catalogue following its file, and the reconciler's idle
//! unload and scale-up, all against real sim neurons.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use cortex_bus::PlacementOp;
use cortex_schemas::{Assignment, PinRequest, PlaceRequest, ReplicaState, UnpinRequest};
use cortex_testkit::NatsServer;
use serde_json::json;
use support::*;

const CATALOG: &str = r#"
[[model]]
id = "m"
source = "sim"
vram_mb = 300
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_load_unload_pin_and_reload() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(dir.path(), CATALOG);
    let p = placement(placement_config(&server, "p1", Some(&file))).await;
    let n1 = sim_neuron(&server, "n1", |_| {}).await;
    let n2 = sim_neuron(&server, "n2", |_| {}).await;
    let client = connect(&server.url()).await;
    until("fleet seen", Duration::from_secs(10), || {
        p.shared().fleet.live().len() == 2
    })
    .await;

    let status = status(&client).await;
    assert_eq!(status.replica, "p1");
    assert_eq!(status.leader.as_deref(), Some("p1"));
    assert_eq!(status.neurons.len(), 2);
    assert_eq!(
        status
            .catalog
            .iter()
            .map(|p| p.id.as_str())
            .collect::<Vec<_>>(),
        vec!["m"]
    );

    // load on a chosen neuron, then on the other.
    let a: Assignment = load(&client, "m", Some("n2")).await;
    assert_eq!(
        a.replicas
            .iter()
            .map(|r| (r.neuron.as_str(), r.state))
            .collect::<Vec<_>>(),
        vec![("n2", ReplicaState::Ready)]
    );
    let _: Assignment = load(&client, "m", Some("n1")).await;
    let mut on = ready_on(&client, "m").await;
    on.sort();
    assert_eq!(on, vec!["n1", "n2"]);
    // unload from one.
    let a: Assignment = placement_call(
        &client,
        PlacementOp::Unload,
        &PlaceRequest {
            model: "m".into(),
            neuron: Some("n2".into()),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        a.replicas
            .iter()
            .map(|r| r.neuron.as_str())
            .collect::<Vec<_>>(),
        vec!["n1"]
    );
    assert!(n2.status().models.is_empty());
    // pin to n2: loaded there, and unload there is refused.
    let a: Assignment = placement_call(
        &client,
        PlacementOp::Pin,
        &PinRequest {
            model: "m".into(),
            neurons: vec!["n2".into()],
        },
    )
    .await
    .unwrap();
    assert!(a.pinned.is_pinned());
    assert!(n2.status().models.iter().any(|m| m.model_id == "m"));
    let refused = placement_call::<_, Assignment>(
        &client,
        PlacementOp::Unload,
        &PlaceRequest {
            model: "m".into(),
            neuron: Some("n2".into()),
        },
    )
    .await;
    assert!(refused.unwrap_err().to_string().contains("pinned"));
    let _: Assignment = placement_call(
        &client,
        PlacementOp::Unpin,
        &UnpinRequest { model: "m".into() },
    )
    .await
    .unwrap();
    let _: Assignment = placement_call(&client, PlacementOp::Unload, &json!({"model": "m"}))
        .await
        .unwrap();
    assert!(n1.status().models.is_empty() && n2.status().models.is_empty());
    // Bad input: unknown model, unknown neuron, malformed body.
    let e = placement_call::<_, Assignment>(&client, PlacementOp::Load, &json!({"model": "nope"}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not in the catalogue"), "{e}");
    let e = placement_call::<_, Assignment>(
        &client,
        PlacementOp::Load,
        &json!({"model": "m", "neuron": "ghost"}),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("not live"), "{e}");
    let e = placement_call::<_, Assignment>(&client, PlacementOp::Load, &json!({"modle": "m"}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("malformed"), "{e}");

    // The file changes: `cortex models reload` publishes it at once.
    std::fs::write(
        &file,
        format!("{CATALOG}\n[[model]]\nid = \"m2\"\nsource = \"sim\"\n"),
    )
    .unwrap();
    let reply = json_output(Command::new(env!("CARGO_BIN_EXE_cortex")).args([
        "models",
        "--nats-url",
        &server.url(),
        "reload",
    ]));
    assert_eq!(reply["written"], json!(["m2"]));
    // A broken file is refused with line and field; the catalogue stays.
    std::fs::write(
        &file,
        "[[model]]\nid = \"x\"\nsource = \"sim\"\nmax_replicas = 0\n",
    )
    .unwrap();
    let e = placement_call::<_, serde_json::Value>(&client, PlacementOp::Reload, &json!({}))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("models.toml:1: max_replicas"), "{e}");
    assert_eq!(status_ids(&client).await, vec!["m", "m2"]);
    // And it is followed without being asked: m2 removed.
    std::fs::write(&file, CATALOG).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while status_ids(&client).await != vec!["m"] {
        assert!(Instant::now() < deadline, "file change not followed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    n1.shutdown().await;
    n2.shutdown().await;
    p.shutdown().await;
}

async fn status_ids(client: &async_nats::Client) -> Vec<String> {
    status(client)
        .await
        .catalog
        .into_iter()
        .map(|p| p.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_copies_unload_and_deep_queues_spill_over_and_back() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(
        dir.path(),
        r#"
[[model]]
id = "idle"
source = "sim"
vram_mb = 100
idle_ttl = "1s"

[[model]]
id = "busy"
source = "sim"
vram_mb = 100
max_replicas = 2
max_concurrency = 1
spill_after = "400ms"
"#,
    );
    let mut config = placement_config(&server, "p1", Some(&file));
    // Spill-over after 400 ms of saturation (the catalogue's), not the
    // default cycles; the extra copy goes after 1 s idle.
    config.scale_up_after = 100;
    config.scale_down_after = Duration::from_secs(1);
    let p = placement(config).await;
    // One slot, a queue, slow tokens: a burst makes a deep queue.
    let slow = |c: &mut cortex_neuron::NeuronConfig| {
        c.max_concurrency = 1;
        c.sim_reply_tokens = 20;
        c.sim_tokens_per_second = 50.0;
    };
    let n1 = sim_neuron(&server, "n1", slow).await;
    let n2 = sim_neuron(&server, "n2", slow).await;
    let ingress = ingress(&server).await;
    let base = format!("http://{}", ingress.addr);
    let client = connect(&server.url()).await;
    until("fleet seen", Duration::from_secs(10), || {
        p.shared().fleet.live().len() == 2
    })
    .await;

    assert_eq!(chat(&base, "idle", json!({})).await.status, 200);
    assert_eq!(ready_on(&client, "idle").await.len(), 1);
    let used = Instant::now();
    let deadline = used + Duration::from_secs(10);
    while !ready_on(&client, "idle").await.is_empty() {
        assert!(Instant::now() < deadline, "idle model never unloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(used.elapsed() >= Duration::from_secs(1));

    assert_eq!(chat(&base, "busy", json!({})).await.status, 200);
    let burst: Vec<_> = (0..12)
        .map(|_| {
            let base = base.clone();
            tokio::spawn(async move { chat(&base, "busy", json!({"max_tokens": 20})).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    while ready_on(&client, "busy").await.len() < 2 {
        assert!(Instant::now() < deadline, "busy never scaled to 2 copies");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for call in burst {
        assert_eq!(call.await.unwrap().status, 200);
    }
    // Idle again: the spilled-over copy is unloaded, the first one stays.
    let deadline = Instant::now() + Duration::from_secs(15);
    while ready_on(&client, "busy").await.len() != 1 {
        assert!(
            Instant::now() < deadline,
            "the extra copy of busy never went"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ingress.shutdown().await;
    n1.shutdown().await;
    n2.shutdown().await;
    p.shutdown().await;
}
