//! Cold start on demand: a request for a model no neuron holds is served
//! after placement loads it, and 20 concurrent first requests through two
//! placement replicas cause exactly one load.

mod support;

use std::time::Duration;

use cortex_bus::PlacementOp;
use cortex_schemas::{EnsureReply, EnsureRequest, ErrorClass};
use cortex_testkit::NatsServer;
use serde_json::json;
use support::*;

const CATALOG: &str = r#"
[[model]]
id = "m"
aliases = ["m-alias"]
source = "sim"
vram_mb = 300
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_first_requests_through_two_replicas_cause_one_load() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(dir.path(), CATALOG);
    let p1 = placement(placement_config(&server, "p1", Some(&file))).await;
    let p2 = placement(placement_config(&server, "p2", Some(&file))).await;
    let n1 = sim_neuron(&server, "n1", |c| {
        c.sim_load_time = Duration::from_millis(500)
    })
    .await;
    let n2 = sim_neuron(&server, "n2", |c| {
        c.sim_load_time = Duration::from_millis(500)
    })
    .await;
    let ingress = ingress(&server).await;
    let base = format!("http://{}", ingress.addr);
    let client = connect(&server.url()).await;
    let mut events = record_events(&client).await;
    // Both replicas see both neurons before the burst.
    until("fleet seen", Duration::from_secs(10), || {
        p1.shared().fleet.live().len() == 2 && p2.shared().fleet.live().len() == 2
    })
    .await;

    let mut calls = Vec::new();
    for _ in 0..20 {
        let base = base.clone();
        calls.push(tokio::spawn(
            async move { chat(&base, "m", json!({})).await },
        ));
    }
    for call in calls {
        let answer = call.await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(!answer.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = drain(&mut events);
    assert_eq!(count_kind(&seen, "model.loading", "m"), 1, "{seen:#?}");
    assert_eq!(count_kind(&seen, "model.ready", "m"), 1);
    let on = ready_on(&client, "m").await;
    assert_eq!(on.len(), 1, "one copy: {on:?}");
    // The assignment in KV says where, and that it is ready.
    let status = status(&client).await;
    let assignment = status
        .assignments
        .iter()
        .find(|a| a.model_id == "m")
        .unwrap();
    assert_eq!(assignment.replicas.len(), 1);
    assert_eq!(assignment.replicas[0].neuron, on[0]);

    // ensure on a loaded model (by alias) answers at once, without a cold start.
    let reply: EnsureReply = placement_call(
        &client,
        PlacementOp::Ensure,
        &EnsureRequest {
            model: "m-alias".into(),
            timeout_ms: None,
        },
    )
    .await
    .unwrap();
    assert_eq!((reply.model_id.as_str(), reply.cold_start), ("m", false));

    // The ingress counted the cold start.
    let text = get_text(&format!("{base}/metrics")).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("cortex_cold_starts_total{") && !l.ends_with(" 0")),
        "{text}"
    );

    ingress.shutdown().await;
    n1.shutdown().await;
    n2.shutdown().await;
    p1.shutdown().await;
    p2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_and_no_room_are_clear_errors() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(
        dir.path(),
        "[[model]]\nid = \"huge\"\nsource = \"sim\"\nvram_mb = 100000\n",
    );
    let p = placement(placement_config(&server, "p1", Some(&file))).await;
    let n = sim_neuron(&server, "n1", |c| c.sim_gpus = vec![1 << 30]).await;
    let ingress = ingress(&server).await;
    let base = format!("http://{}", ingress.addr);
    let client = connect(&server.url()).await;
    until("neuron seen", Duration::from_secs(10), || {
        p.shared().fleet.live().len() == 1
    })
    .await;

    let answer = chat(&base, "nope", json!({})).await;
    assert_eq!(answer.status, 404, "{}", answer.body);
    assert_eq!(
        answer.json()["error"]["code"],
        "model_not_found",
        "{}",
        answer.body
    );

    let answer = chat(&base, "huge", json!({})).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.body.contains("needs"), "{}", answer.body);

    let error = placement_call::<_, EnsureReply>(
        &client,
        PlacementOp::Ensure,
        &EnsureRequest {
            model: "nope".into(),
            timeout_ms: Some(1000),
        },
    )
    .await
    .unwrap_err();
    let wire: cortex_schemas::WireError = error.into();
    assert_eq!(wire.class, ErrorClass::ModelNotFound);

    ingress.shutdown().await;
    n.shutdown().await;
    p.shutdown().await;
}
