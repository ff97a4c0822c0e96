//! Operating the ingress: API keys and per-key limits, the catalogue and
//! aliases, metrics and health, against a real nats-server and sim neurons.

mod support;

use std::time::Duration;

use cortex_testkit::{eventually, NatsServer};
use serde_json::{json, Value};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_and_per_key_limits() {
    use cortex_ingress::config::ApiKey;
    let server = NatsServer::start();
    let _neuron = sim_neuron(&server, "n1", &["m"], |_| {}).await;
    // "other" given as its SHA-256, as a config file would hold it.
    let other = "sha256:d9298a10d1b0735837dc4bd85dac641b0f3cef27a47e5d53a54f2f3f5b2fcffa";
    let pod = ingress(&server, &[], |c| {
        c.api_keys = vec![ApiKey("secret".into()), ApiKey(other.into())];
        c.rate_limit_rpm = 3;
    })
    .await;
    let chat = format!("http://{}/v1/chat/completions", pod.addr);
    let messages = format!("http://{}/v1/messages", pod.addr);
    let body = chat_body("m", false, json!({}));

    let none = post(&chat, &body, &[]).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["error"]["type"], "authentication_error");
    let wrong = post(
        &messages,
        &messages_body("m", false),
        &[("x-api-key", "guess")],
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.json()["error"]["type"], "authentication_error");
    assert_eq!(wrong.json()["type"], "error");
    assert!(!format!("{:?}", IngressConfigProbe::new()).contains("secret"));

    for _ in 0..3 {
        let ok = post(&chat, &body, &[("authorization", "Bearer secret")]).await;
        assert_eq!(ok.status, 200, "{}", ok.body);
    }
    let limited = post(&chat, &body, &[("authorization", "Bearer secret")]).await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(limited.header("retry-after").is_some());
    // Another key has its own budget.
    let other_key = post(
        &messages,
        &messages_body("m", false),
        &[("x-api-key", "other")],
    )
    .await;
    assert_eq!(other_key.status, 200, "{}", other_key.body);
    let (health, _) = get(&format!("http://{}/healthz", pod.addr)).await;
    assert_eq!(health, 200, "health needs no key");

    let tokens = ingress(&server, &[], |c| c.rate_limit_tpm = 10).await;
    let url = format!("http://{}/v1/chat/completions", tokens.addr);
    assert_eq!(post(&url, &body, &[]).await.status, 200);
    let over = post(&url, &body, &[]).await;
    assert_eq!(
        over.status, 429,
        "the first request spent more than 10 tokens: {}",
        over.body
    );
    tokio::join!(pod.shutdown(), tokens.shutdown());
}

/// A configuration holding a key, to check `Debug` hides it.
struct IngressConfigProbe(cortex_ingress::IngressConfig);

impl IngressConfigProbe {
    fn new() -> Self {
        let mut config = cortex_ingress::IngressConfig::for_tests("nats://127.0.0.1:4222");
        config.api_keys = vec![cortex_ingress::config::ApiKey("secret".into())];
        Self(config)
    }
}

impl std::fmt::Debug for IngressConfigProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalogue_adds_models_not_loaded_and_resolves_aliases() {
    use cortex_bus::kv::{open_or_create, BucketSpec};
    let server = NatsServer::start();
    let _neuron = sim_neuron(&server, "n1", &["m"], |_| {}).await;
    let pod = ingress(&server, &["m"], |_| {}).await;
    let client = connect(&server.url()).await;
    let js = async_nats::jetstream::new(client);
    let store = open_or_create(&js, &BucketSpec::new(cortex_bus::buckets::CATALOG))
        .await
        .unwrap();
    for profile in [
        json!({"id": "m", "source": "sim", "aliases": ["mini"], "context_length": 8192}),
        json!({"id": "cold", "source": "/models/cold.gguf", "kind": "embedding"}),
    ] {
        let key = profile["id"].as_str().unwrap().to_string();
        store
            .put(key, serde_json::to_vec(&profile).unwrap().into())
            .await
            .unwrap();
    }
    let base = format!("http://{}", pod.addr);
    let models = eventually("the catalogue merged", Duration::from_secs(10), || {
        let url = format!("{base}/v1/models");
        async move {
            let (_, body) = get(&url).await;
            let body: Value = serde_json::from_str(&body).ok()?;
            (body["data"].as_array()?.len() == 2).then_some(body)
        }
    })
    .await;
    let data = models["data"].as_array().unwrap();
    assert_eq!(data[0]["id"], "cold");
    assert_eq!(data[0]["loaded"], false);
    assert_eq!(data[0]["kind"], "embedding");
    assert_eq!(data[1]["id"], "m");
    assert_eq!(data[1]["loaded"], true);
    assert_eq!(data[1]["neurons"], json!(["n1"]));
    assert_eq!(data[1]["context_length"], 8192);
    assert_eq!(data[1]["aliases"], json!(["mini"]));

    let (status, body) = get(&format!("{base}/v1/models/mini")).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["id"], "m");
    let reply = post(
        &format!("{base}/v1/chat/completions"),
        &chat_body("mini", false, json!({})),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.json()["model"],
        "m",
        "the alias resolves to the catalogue id"
    );
    pod.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_answer() {
    let server = NatsServer::start();
    let _neuron = sim_neuron(&server, "n1", &["m"], |_| {}).await;
    let pod = ingress(&server, &["m"], |_| {}).await;
    let base = format!("http://{}", pod.addr);
    let chat = format!("{base}/v1/chat/completions");
    assert_eq!(
        post(&chat, &chat_body("m", false, json!({})), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        post(&chat, &chat_body("m", true, json!({})), &[])
            .await
            .status,
        200
    );
    assert_eq!(post(&chat, "{}", &[]).await.status, 400);
    let (status, text) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    for line in [
        "cortex_requests_total{model=\"m\",dialect=\"openai\",status=\"200\"} 2",
        "cortex_requests_total{model=\"\",dialect=\"openai\",status=\"400\"} 1",
        "cortex_completion_tokens_total{model=\"m\"} 12",
        "cortex_time_to_first_token_seconds_count{model=\"m\"} 2",
        "cortex_request_duration_seconds_count{model=\"m\"} 2",
        "cortex_in_flight_requests 0",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    assert!(text.contains("cortex_inter_token_latency_seconds_count{model=\"m\"}"));
    assert!(text.contains("cortex_queue_time_seconds_count{model=\"m\"} 2"));
    let (status, _) = get(&format!("{base}/healthz")).await;
    assert_eq!(status, 200);
    let (status, body) = get(&format!("{base}/readyz")).await;
    assert_eq!(status, 200);
    assert!(body.contains("connected"));
    pod.shutdown().await;
}
