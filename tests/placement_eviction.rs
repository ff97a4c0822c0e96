//! Eviction under a memory budget that holds one of two models: alternating
//! requests evict and reload so both are answered; a pinned model is never
//! evicted; a model with a request in flight is not evicted mid-stream (a
//! request for the other model waits for the stream to end, then evicts).

mod support;

use std::time::Duration;

use cortex_bus::PlacementOp;
use cortex_schemas::{Assignment, Event, PinRequest, UnpinRequest};
use cortex_testkit::NatsServer;
use serde_json::json;
use support::*;

const CATALOG: &str = r#"
[[model]]
id = "a"
source = "sim"
vram_mb = 700

[[model]]
id = "b"
source = "sim"
vram_mb = 700
"#;

/// One placement, one neuron with a simulated 1 GiB GPU: one model fits.
async fn mesh(
    server: &NatsServer,
    dir: &std::path::Path,
    tune: impl FnOnce(&mut cortex_neuron::NeuronConfig),
) -> (
    cortex_placement::Placement,
    cortex_neuron::Neuron,
    cortex_ingress::Ingress,
) {
    let file = models_file(dir, CATALOG);
    let p = placement(placement_config(server, "p1", Some(&file))).await;
    let n = sim_neuron(server, "n1", |c| {
        c.sim_gpus = vec![1 << 30];
        tune(c);
    })
    .await;
    until("neuron seen", Duration::from_secs(10), || {
        p.shared().fleet.live().len() == 1
    })
    .await;
    let i = ingress(server).await;
    (p, n, i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_requests_evict_and_reload() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (p, n, i) = mesh(&server, dir.path(), |_| {}).await;
    let base = format!("http://{}", i.addr);
    let client = connect(&server.url()).await;
    let mut events = record_events(&client).await;
    for model in ["a", "b", "a", "b"] {
        let answer = chat(&base, model, json!({})).await;
        assert_eq!(answer.status, 200, "{model}: {}", answer.body);
        let held: Vec<_> = n
            .status()
            .models
            .iter()
            .map(|m| m.model_id.clone())
            .collect();
        assert_eq!(held, vec![model.to_string()], "only the last one is held");
    }
    let evicted = |seen: &[Event]| {
        count_kind(seen, "model.evicted", "a") + count_kind(seen, "model.evicted", "b")
    };
    let seen = events_until(&mut events, "3 evictions", Duration::from_secs(5), |seen| {
        evicted(seen) >= 3
    })
    .await;
    assert_eq!(evicted(&seen), 3, "{seen:#?}");
    let device = &n.status().devices[0];
    assert!(device.memory_used_bytes <= device.memory_total_bytes);
    i.shutdown().await;
    n.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_model_is_never_evicted() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (p, n, i) = mesh(&server, dir.path(), |_| {}).await;
    let base = format!("http://{}", i.addr);
    let client = connect(&server.url()).await;
    // Pinning loads it and keeps it.
    let pinned: Assignment = placement_call(
        &client,
        PlacementOp::Pin,
        &PinRequest {
            model: "a".into(),
            neurons: vec![],
        },
    )
    .await
    .unwrap();
    assert!(pinned.pinned.is_pinned());
    assert_eq!(ready_on(&client, "a").await, vec!["n1".to_string()]);
    let answer = chat(&base, "b", json!({})).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.body.contains("needs"), "{}", answer.body);
    assert_eq!(ready_on(&client, "a").await, vec!["n1".to_string()]);
    // An operator unload of a pinned model is refused too.
    let refused =
        placement_call::<_, Assignment>(&client, PlacementOp::Unload, &json!({"model": "a"})).await;
    assert!(refused.unwrap_err().to_string().contains("pinned"));
    // Unpinned, it can go.
    let _: Assignment = placement_call(
        &client,
        PlacementOp::Unpin,
        &UnpinRequest { model: "a".into() },
    )
    .await
    .unwrap();
    let answer = chat(&base, "b", json!({})).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    i.shutdown().await;
    n.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_streaming_is_not_evicted_mid_stream() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    // Slow replies: 40 tokens at 20 tokens/s, two seconds of streaming.
    let (p, n, i) = mesh(&server, dir.path(), |c| {
        c.sim_reply_tokens = 40;
        c.sim_tokens_per_second = 20.0;
    })
    .await;
    let base = format!("http://{}", i.addr);
    let long = {
        let base = base.clone();
        tokio::spawn(
            async move { chat(&base, "a", json!({"max_tokens": 40, "stream": true})).await },
        )
    };
    until("a streaming", Duration::from_secs(10), || {
        n.status()
            .models
            .iter()
            .any(|m| m.model_id == "a" && m.slots_busy > 0)
    })
    .await;
    // b cannot evict a while a streams: it waits for the stream to end.
    let answer = chat(&base, "b", json!({})).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(long.is_finished(), "b was served before a's stream ended");
    let streamed = long.await.unwrap();
    assert_eq!(streamed.status, 200);
    assert!(
        streamed.body.contains("\"finish_reason\":\"length\""),
        "{}",
        streamed.body
    );
    assert!(
        streamed.body.trim_end().ends_with("data: [DONE]"),
        "{}",
        streamed.body
    );
    assert_eq!(
        n.status()
            .models
            .iter()
            .map(|m| m.model_id.as_str())
            .collect::<Vec<_>>(),
        vec!["b"]
    );
    i.shutdown().await;
    n.shutdown().await;
    p.shutdown().await;
}
