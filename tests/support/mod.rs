//! Shared by the end-to-end tests: a real nats-server, daemons in-process
//! or as child processes of the `cortex` binary; the HTTP client and the
//! waits are testkit's.

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::Client;
use cortex_bus::control::{call, CallError};
use cortex_bus::{NatsOptions, PlacementOp, Subjects};
use cortex_ingress::{Ingress, IngressConfig};
use cortex_neuron::{EngineKind, Neuron, NeuronConfig};
use cortex_placement::{Placement, PlacementConfig};
use cortex_schemas::{Assignment, Event, ModelState, NeuronStatus, PlaceRequest, PlacementStatus};
use cortex_testkit::{eventually, NatsServer};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

/// A child process killed when the test ends, however it ends.
#[derive(Debug)]
pub struct Daemon(pub Child);

impl Daemon {
    /// `cortex <args>` with its output discarded.
    pub fn spawn(args: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_cortex"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cortex starts");
        Self(child)
    }

    /// kill -9.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

pub async fn connect(url: &str) -> Client {
    let mut options = NatsOptions::new([url]);
    options.connect_timeout = Duration::from_secs(10);
    options.connect("cortex-test").await.expect("connect")
}

/// Writes `text` as `models.toml` in `dir`.
pub fn models_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("models.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A placement configuration with short timings for tests.
pub fn placement_config(server: &NatsServer, id: &str, models: Option<&Path>) -> PlacementConfig {
    let mut config = PlacementConfig::for_tests(&server.url(), id);
    config.models = models.map(Path::to_path_buf);
    config.lease_ttl = Duration::from_millis(1500);
    config.reconcile_interval = Duration::from_millis(200);
    config.load_timeout = Duration::from_secs(60);
    config
}

pub async fn placement(config: PlacementConfig) -> Placement {
    let client = connect(&config.nats.servers[0]).await;
    Placement::start(config, client)
        .await
        .expect("placement starts")
}

/// A sim neuron with no models, fast heartbeats, and `tune` applied.
pub async fn sim_neuron(
    server: &NatsServer,
    id: &str,
    tune: impl FnOnce(&mut NeuronConfig),
) -> Neuron {
    let mut config = NeuronConfig::for_tests(&server.url(), id);
    config.engine = EngineKind::Sim;
    config.heartbeat_interval = Duration::from_millis(200);
    config.sim_reply_tokens = 8;
    config.sim_ttft = Duration::from_millis(5);
    config.sim_tokens_per_second = 2000.0;
    tune(&mut config);
    let client = connect(&server.url()).await;
    Neuron::start(config, client).await.expect("neuron starts")
}

pub async fn ingress(server: &NatsServer) -> Ingress {
    let config = IngressConfig::for_tests(&server.url());
    Ingress::start(config, connect(&server.url()).await)
        .await
        .expect("ingress starts")
}

/// A control call to placement.
pub async fn placement_call<Req: Serialize, Rep: DeserializeOwned>(
    client: &Client,
    op: PlacementOp,
    request: &Req,
) -> Result<Rep, CallError> {
    call(
        client,
        Subjects::default().placement(op),
        request,
        Duration::from_secs(60),
    )
    .await
}

/// Asks placement to load `model` (on `neuron`, or where it chooses).
pub async fn load(client: &Client, model: &str, neuron: Option<&str>) -> Assignment {
    placement_call(
        client,
        PlacementOp::Load,
        &PlaceRequest {
            model: model.into(),
            neuron: neuron.map(Into::into),
        },
    )
    .await
    .expect("load")
}

pub async fn status(client: &Client) -> PlacementStatus {
    placement_call(client, PlacementOp::Status, &json!({}))
        .await
        .expect("status")
}

/// Neurons where the fleet reports `model` ready, from placement's status.
pub async fn ready_on(client: &Client, model: &str) -> Vec<String> {
    status(client)
        .await
        .neurons
        .iter()
        .filter(|n| {
            n.models
                .iter()
                .any(|m| m.model_id == model && m.state == ModelState::Ready)
        })
        .map(|n| n.neuron_id.clone())
        .collect()
}

/// Collects every event published from now on.
pub async fn record_events(client: &Client) -> tokio::sync::mpsc::UnboundedReceiver<Event> {
    let mut events = client
        .subscribe(Subjects::default().events())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = events.next().await {
            if let Ok(event) = serde_json::from_slice::<Event>(&message.payload) {
                if tx.send(event).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The events received so far.
pub fn drain(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(event) = rx.try_recv() {
        out.push(event);
    }
    out
}

/// The events received from now until `enough` holds of all of them
/// (panics with `what` after `timeout`).
pub async fn events_until(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    what: &str,
    timeout: Duration,
    enough: impl Fn(&[Event]) -> bool,
) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut seen = drain(rx);
    while !enough(&seen) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(event)) => seen.push(event),
            _ => panic!("timed out after {timeout:?} waiting for {what}: {seen:#?}"),
        }
    }
    seen
}

pub fn count_kind(events: &[Event], kind: &str, model: &str) -> usize {
    events
        .iter()
        .filter(|e| e.detail.kind() == kind)
        .filter(|e| serde_json::to_value(&e.detail).unwrap()["model"] == model)
        .count()
}

pub use cortex_testkit::http::Reply as Answer;
pub use cortex_testkit::{json_output, until};

/// POSTs a JSON body.
pub async fn post(url: &str, body: Value) -> Answer {
    cortex_testkit::http::post_json(url, &body).await
}

/// GETs `url` and returns the body (status 200 expected).
pub async fn get_text(url: &str) -> String {
    let reply = cortex_testkit::http::get(url).await;
    assert_eq!(reply.status, 200, "GET {url}: {}", reply.body);
    reply.body
}

/// A chat completion for `model` through the ingress at `base`.
pub async fn chat(base: &str, model: &str, extra: Value) -> Answer {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 8,
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            body.insert(k.clone(), v.clone());
        }
    }
    post(&format!("{base}/v1/chat/completions"), body).await
}
