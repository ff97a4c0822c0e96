//! The API documents are checked against the code:
//! - `docs/asyncapi.json`: its channels are exactly the subjects `bus::Subjects`
//!   builds, and every message example decodes into the wire type it names;
//! - `docs/openapi.json`: its paths are exactly the ingress router's routes,
//!   and every documented request example gets a 200 from a running mesh.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use cortex_bus::{ModelToken, NeuronOp, PlacementOp, Subjects};
use cortex_schemas as s;
use cortex_testkit::models::minilm_dir;
use cortex_testkit::NatsServer;
use serde_json::Value;
use support::*;

fn doc(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn asyncapi_channels_are_the_subjects_and_examples_decode() {
    let doc = doc("asyncapi.json");
    let documented: BTreeSet<String> = doc["channels"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| {
            c["address"]
                .as_str()
                .unwrap()
                .replace("{neuron}", "gpu-1")
                .replace("{model}", "smollm2")
                .replace("{kind}", "model.ready")
        })
        .collect();
    let subjects = Subjects::default();
    let mut built: BTreeSet<String> = BTreeSet::new();
    built.insert(subjects.heartbeat("gpu-1"));
    built.insert(subjects.prefix("gpu-1"));
    built.insert(subjects.infer(&ModelToken::new("smollm2").unwrap()));
    for op in [
        NeuronOp::Infer,
        NeuronOp::Cancel,
        NeuronOp::Load,
        NeuronOp::Unload,
        NeuronOp::Drain,
        NeuronOp::Status,
    ] {
        built.insert(subjects.neuron("gpu-1", op));
    }
    for op in PlacementOp::ALL {
        built.insert(subjects.placement(op));
    }
    built.insert(subjects.event("model.ready"));
    assert_eq!(documented, built);

    let mut decoded = 0;
    for (name, message) in doc["components"]["messages"].as_object().unwrap() {
        for example in message["examples"].as_array().unwrap() {
            let payload = example["payload"].clone();
            let result = match name.as_str() {
                "NeuronStatus" => serde_json::from_value::<s::NeuronStatus>(payload).map(drop),
                "PrefixSummary" => serde_json::from_value::<s::PrefixSummary>(payload).map(drop),
                "InferRequest" => serde_json::from_value::<s::InferRequest>(payload).map(drop),
                "Frame" => serde_json::from_value::<s::Frame>(payload).map(drop),
                "CancelRequest" => serde_json::from_value::<s::CancelRequest>(payload).map(drop),
                "LoadRequest" => serde_json::from_value::<s::LoadRequest>(payload).map(drop),
                "UnloadRequest" => serde_json::from_value::<s::UnloadRequest>(payload).map(drop),
                "DrainRequest" => serde_json::from_value::<s::DrainRequest>(payload).map(drop),
                "EnsureRequest" => serde_json::from_value::<s::EnsureRequest>(payload).map(drop),
                "PinRequest" => serde_json::from_value::<s::PinRequest>(payload).map(drop),
                "UnpinRequest" => serde_json::from_value::<s::UnpinRequest>(payload).map(drop),
                "PlaceRequest" => serde_json::from_value::<s::PlaceRequest>(payload).map(drop),
                "Event" => serde_json::from_value::<s::Event>(payload).map(drop),
                "Reply" => serde_json::from_value::<s::Reply<s::EnsureReply>>(payload).map(drop),
                other => panic!("message {other} has no wire type in this test"),
            };
            result.unwrap_or_else(|e| panic!("example of {name} does not decode: {e}"));
            decoded += 1;
        }
    }
    assert!(decoded >= 20, "{decoded}");
}

/// The routes the ingress router registers, read from its source.
fn routes() -> BTreeSet<String> {
    let read = |file: &str| {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap()
    };
    let source = read("ingress/src/server.rs") + &read("ingress/src/console/mod.rs");
    source
        .split(".route(")
        .skip(1)
        .filter_map(|rest| rest.trim_start().strip_prefix('"'))
        .filter_map(|rest| rest.split('"').next())
        .map(|path| path.replace("{*id}", "{id}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_paths_are_the_routes_and_examples_are_answered() {
    let doc = doc("openapi.json");
    let paths = doc["paths"].as_object().unwrap();
    let documented: BTreeSet<String> = paths.keys().cloned().collect();
    assert_eq!(documented, routes());

    let server = NatsServer::start();
    let mut chat = cortex_neuron::NeuronConfig::for_tests(&server.url(), "sim");
    chat.engine = cortex_neuron::EngineKind::Sim;
    chat.models = vec!["smollm2=sim".into()];
    let chat = cortex_neuron::Neuron::start(chat, connect(&server.url()).await)
        .await
        .unwrap();
    let mut embed = cortex_neuron::NeuronConfig::for_tests(&server.url(), "real");
    embed.models = vec![format!("minilm={}", minilm_dir().display())];
    let embed = cortex_neuron::Neuron::start(embed, connect(&server.url()).await)
        .await
        .unwrap();
    let ingress = ingress(&server).await;
    let base = format!("http://{}", ingress.addr);
    until("models ready", Duration::from_secs(60), || {
        let ready = |n: &cortex_neuron::Neuron| {
            n.status()
                .models
                .iter()
                .all(|m| m.state == s::ModelState::Ready)
                && !n.status().models.is_empty()
        };
        ready(&chat) && ready(&embed)
    })
    .await;
    let models = format!("{base}/v1/models");
    cortex_testkit::eventually(
        "the ingress lists both models",
        Duration::from_secs(10),
        || {
            let models = models.clone();
            async move {
                let listed = cortex_testkit::http::get(&models).await.body;
                (listed.contains("\"smollm2\"") && listed.contains("\"minilm\"")).then_some(())
            }
        },
    )
    .await;
    for (path, item) in paths {
        // The console's verbs need a placement service and a catalogue:
        // tests/console.rs answers them.
        let console_verb = path.starts_with("/ui/api/");
        if let Some(post) = item.get("post").filter(|_| !console_verb) {
            let example = post["requestBody"]["content"]["application/json"]["example"].clone();
            let answer = support::post(&format!("{base}{path}"), example).await;
            assert_eq!(answer.status, 200, "POST {path}: {}", answer.body);
        }
        if item.get("get").is_some() {
            let url = format!("{base}{}", path.replace("{id}", "smollm2"));
            let status = cortex_testkit::http::get(&url).await.status;
            assert_eq!(status, 200, "GET {path}");
        }
    }
    ingress.shutdown().await;
    chat.shutdown().await;
    embed.shutdown().await;
}
