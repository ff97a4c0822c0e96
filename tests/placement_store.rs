//! Model distribution through NATS: SmolLM2 pushed with `cortex models
//! push` into the object store loads on a neuron that never had the file
//! (its cache starts empty) and answers through the mesh.

mod support;

use std::process::Command;

use cortex_neuron::{EngineKind, Neuron, NeuronConfig};
use cortex_testkit::models::smollm_path;
use cortex_testkit::NatsServer;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_model_loads_on_a_neuron_that_never_had_it() {
    let server = NatsServer::start();
    let source = smollm_path();
    let pushed = json_output(
        Command::new(env!("CARGO_BIN_EXE_cortex"))
            .args(["models", "--nats-url", &server.url(), "push"])
            .arg(&source)
            .args(["--name", "smollm2.gguf"]),
    );
    assert_eq!(pushed["size"], std::fs::metadata(&source).unwrap().len());

    let dir = tempfile::tempdir().unwrap();
    let file = models_file(
        dir.path(),
        "[[model]]\nid = \"smollm2\"\nsource = \"store:smollm2.gguf\"\ncontext_length = 1024\n",
    );
    let p = placement(placement_config(&server, "p1", Some(&file))).await;
    let cache = tempfile::tempdir().unwrap();
    let mut config = NeuronConfig::for_tests(&server.url(), "fresh");
    config.engine = EngineKind::Candle;
    config.model_cache = Some(cache.path().to_path_buf());
    config.heartbeat_interval = std::time::Duration::from_millis(200);
    let neuron = Neuron::start(config, connect(&server.url()).await)
        .await
        .unwrap();
    let ingress = ingress(&server).await;
    let base = format!("http://{}", ingress.addr);
    until("neuron seen", std::time::Duration::from_secs(10), || {
        p.shared().fleet.live().len() == 1
    })
    .await;

    let answer = chat(
        &base,
        "smollm2",
        json!({"max_tokens": 12, "temperature": 0}),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let text = answer.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains("Paris"), "{text}");
    let cached = cache.path().join("smollm2.gguf");
    assert_eq!(
        std::fs::metadata(&cached).unwrap().len(),
        std::fs::metadata(&source).unwrap().len()
    );
    assert!(
        std::fs::read_to_string(cache.path().join("smollm2.gguf.digest"))
            .unwrap()
            .starts_with("SHA-256=")
    );
    ingress.shutdown().await;
    neuron.shutdown().await;
    p.shutdown().await;
}
