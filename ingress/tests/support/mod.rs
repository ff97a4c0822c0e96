//! Shared by the ingress tests: a real nats-server, sim (or real) neurons
//! in-process, an ingress pod in-process; the HTTP client is testkit's.

#![allow(dead_code, unused_imports)]

use std::time::Duration;

use cortex_ingress::{Ingress, IngressConfig};
use cortex_neuron::{EngineKind, Neuron, NeuronConfig};
use cortex_testkit::{eventually, NatsServer};
use serde_json::{json, Value};

pub use cortex_testkit::models::{minilm_dir, smollm_path};

pub async fn connect(url: &str) -> async_nats::Client {
    cortex_bus::NatsOptions::new([url])
        .connect("cortex-test")
        .await
        .unwrap()
}

/// A sim neuron serving `models` (`id=sim` entries).
pub async fn sim_neuron(
    server: &NatsServer,
    id: &str,
    models: &[&str],
    tune: impl FnOnce(&mut NeuronConfig),
) -> Neuron {
    let mut config = NeuronConfig::for_tests(&server.url(), id);
    config.engine = EngineKind::Sim;
    config.heartbeat_interval = Duration::from_millis(200);
    config.models = models.iter().map(|m| format!("{m}=sim")).collect();
    tune(&mut config);
    start_neuron(config, models).await
}

/// A neuron with the candle engine and `models` (`ID=PATH`).
pub async fn real_neuron(server: &NatsServer, id: &str, specs: &[String]) -> Neuron {
    let mut config = NeuronConfig::for_tests(&server.url(), id);
    config.heartbeat_interval = Duration::from_millis(200);
    config.models = specs.to_vec();
    let ids: Vec<String> = specs
        .iter()
        .map(|s| s.split('=').next().unwrap().to_string())
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    start_neuron(config, &ids).await
}

/// A neuron with the candle engine preloading `profiles` (catalogue
/// entries as JSON: context window, sampling defaults, ...).
pub async fn profiled_neuron(server: &NatsServer, id: &str, profiles: &[Value]) -> Neuron {
    profiled(server, id, EngineKind::Candle, profiles).await
}

/// A sim neuron preloading `profiles` (a context window of its own, ...).
pub async fn profiled_sim_neuron(server: &NatsServer, id: &str, profiles: &[Value]) -> Neuron {
    profiled(server, id, EngineKind::Sim, profiles).await
}

async fn profiled(server: &NatsServer, id: &str, engine: EngineKind, profiles: &[Value]) -> Neuron {
    let mut config = NeuronConfig::for_tests(&server.url(), id);
    config.engine = engine;
    config.heartbeat_interval = Duration::from_millis(200);
    config.profiles = profiles
        .iter()
        .map(|p| serde_json::from_value(p.clone()).expect("a valid profile"))
        .collect();
    let ids: Vec<String> = config.profiles.iter().map(|p| p.id.clone()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    start_neuron(config, &ids).await
}

async fn start_neuron(config: NeuronConfig, models: &[&str]) -> Neuron {
    let client = config.nats.connect("cortex-neuron-test").await.unwrap();
    let neuron = Neuron::start(config, client).await.unwrap();
    for model in models {
        eventually(
            &format!("{model} ready"),
            Duration::from_secs(120),
            || async {
                neuron
                    .status()
                    .models
                    .iter()
                    .any(|m| m.model_id == *model && m.state == cortex_schemas::ModelState::Ready)
                    .then_some(())
            },
        )
        .await;
    }
    neuron
}

/// An ingress pod on a free loopback port, once it sees `models` in heartbeats.
pub async fn ingress(
    server: &NatsServer,
    models: &[&str],
    tune: impl FnOnce(&mut IngressConfig),
) -> Ingress {
    let mut config = IngressConfig::for_tests(&server.url());
    tune(&mut config);
    let ingress = Ingress::start(config, connect(&server.url()).await)
        .await
        .unwrap();
    let base = format!("http://{}", ingress.addr);
    for model in models {
        let url = format!("{base}/v1/models/{model}");
        eventually(&format!("{model} listed"), Duration::from_secs(10), || {
            let url = url.clone();
            async move { (get(&url).await.0 == 200).then_some(()) }
        })
        .await;
    }
    ingress
}

/// Waits until `pod`'s fleet view shows a replica of `model` with every
/// slot busy and `queued` requests waiting.
pub async fn until_queue_full(pod: &Ingress, model: &str, queued: u32) {
    eventually("the queue fills", Duration::from_secs(20), || async {
        pod.state()
            .fleet
            .replicas(model)
            .iter()
            .any(|r| r.load >= r.capacity + queued)
            .then_some(())
    })
    .await;
}

pub use cortex_testkit::http::{
    parse_sse, post, post_and_give_up, post_and_hang_up, Reply, SseEvent,
};
pub use cortex_testkit::until;

/// GETs `url`: (status, body).
pub async fn get(url: &str) -> (u16, String) {
    let reply = cortex_testkit::http::get(url).await;
    (reply.status, reply.body)
}

/// An OpenAI chat body (system and user message, 6 tokens) with `extra` fields.
pub fn chat_body(model: &str, stream: bool, extra: Value) -> String {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
        "max_tokens": 6,
        "stream": stream,
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body.to_string()
}

/// An Anthropic Messages body (system blocks, one user message, 6 tokens).
pub fn messages_body(model: &str, stream: bool) -> String {
    json!({
        "model": model,
        "max_tokens": 6,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}],
        "stream": stream,
    })
    .to_string()
}
