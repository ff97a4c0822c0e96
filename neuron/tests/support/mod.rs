//! Shared by the neuron tests: a real nats-server, neurons in-process,
//! requests streamed through the bus as ingress will send them.

#![allow(dead_code, unused_imports)]

use std::time::Duration;

use async_nats::Client;
use cortex_bus::{
    stream_request, FrameStream, ModelToken, NatsOptions, StreamError, StreamOptions, Subjects,
};
use cortex_neuron::{EngineKind, Neuron, NeuronConfig};
use cortex_schemas::{
    Accepted, ChatMessage, Done, EmbedResponse, Frame, GenerateInput, GenerateRequest,
    InferRequest, ModelProfile, ModelState, NeuronStatus, Role, SamplingParams, WireError,
};
use cortex_testkit::{eventually, NatsServer};
use futures::StreamExt;

pub use cortex_testkit::models::{minilm_dir, smollm_path};

pub async fn connect(url: &str) -> Client {
    let mut options = NatsOptions::new([url]);
    options.connect_timeout = Duration::from_secs(10);
    options
        .connect("cortex-test")
        .await
        .expect("connect to the test server")
}

/// A neuron configuration for `server` with every default, metrics off.
pub fn config(server: &NatsServer, id: &str) -> NeuronConfig {
    NeuronConfig::for_tests(&server.url(), id)
}

/// A sim-engine configuration: fast heartbeats, no load time.
pub fn sim_config(server: &NatsServer, id: &str) -> NeuronConfig {
    let mut config = config(server, id);
    config.engine = EngineKind::Sim;
    config.heartbeat_interval = Duration::from_millis(200);
    config
}

/// Starts a neuron in-process on its own connection.
pub async fn start(config: NeuronConfig) -> Neuron {
    let valid = config.validate().expect("valid test configuration");
    let client = config
        .nats
        .connect(&format!("cortex-neuron-{}", valid.id))
        .await
        .expect("neuron connects");
    Neuron::start(config, client).await.expect("neuron starts")
}

pub fn profile(id: &str, source: &str) -> ModelProfile {
    serde_json::from_value(serde_json::json!({ "id": id, "source": source })).unwrap()
}

/// Waits until `neuron` reports `model` ready.
pub async fn wait_ready(neuron: &Neuron, model: &str) {
    eventually(
        &format!("{model} ready on {}", neuron.id()),
        Duration::from_secs(120),
        || async {
            let status = neuron.status();
            let state = status
                .models
                .iter()
                .find(|m| m.model_id == model)
                .map(|m| m.state);
            assert_ne!(
                state,
                Some(ModelState::Failed),
                "{model} failed: {status:?}"
            );
            (state == Some(ModelState::Ready)).then_some(())
        },
    )
    .await
}

/// A greedy chat request with one user message.
pub fn chat(id: &str, model: &str, user: &str, max_tokens: u32) -> InferRequest {
    InferRequest::Generate(Box::new(GenerateRequest {
        sampling: SamplingParams {
            temperature: Some(0.0),
            ..SamplingParams::default()
        },
        max_tokens: Some(max_tokens),
        ..GenerateRequest::new(
            id,
            model,
            GenerateInput::Chat {
                messages: vec![ChatMessage::text(Role::User, user)],
            },
        )
    }))
}

pub fn infer_subject(model: &str) -> String {
    Subjects::default().infer(&ModelToken::new(model).unwrap())
}

/// Sends `request` on `subject` as ingress does.
pub async fn send(client: &Client, subject: &str, request: &InferRequest) -> FrameStream {
    let options = StreamOptions {
        request_id: Some(request.request_id().to_string()),
        ..StreamOptions::default()
    };
    stream_request(client, subject, request, &options)
        .await
        .expect("request published")
}

/// Everything a stream delivered.
#[derive(Debug, Default)]
pub struct Answer {
    pub accepted: Option<Accepted>,
    pub text: String,
    pub deltas: usize,
    pub keepalives: usize,
    pub done: Option<Done>,
    pub embeddings: Option<EmbedResponse>,
    pub error: Option<WireError>,
    pub failure: Option<String>,
}

impl Answer {
    pub fn neuron(&self) -> &str {
        self.accepted.as_ref().map_or("", |a| a.neuron.as_str())
    }
}

/// Reads `stream` to its end.
pub async fn collect(mut stream: FrameStream) -> Answer {
    let mut answer = Answer::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(Frame::Accepted(accepted)) => answer.accepted = Some(accepted),
            Ok(Frame::Keepalive(_)) => answer.keepalives += 1,
            Ok(Frame::Delta(delta)) => {
                answer.text.push_str(&delta.text);
                answer.deltas += 1;
            }
            Ok(Frame::Done(done)) => answer.done = Some(done),
            Ok(Frame::Embeddings(embeddings)) => answer.embeddings = Some(embeddings),
            Ok(Frame::Error(error)) => answer.error = Some(error),
            Err(error) => answer.failure = Some(describe(&error)),
        }
    }
    answer
}

fn describe(error: &StreamError) -> String {
    format!("{error:?}")
}

/// A JSON control request to `<prefix>.v1.neuron.<id>.<op>`; the decoded reply.
pub async fn control(
    client: &Client,
    neuron: &str,
    op: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let subject = format!("cortex.v1.neuron.{neuron}.{op}");
    let reply = tokio::time::timeout(
        Duration::from_secs(120),
        client.request(subject, serde_json::to_vec(&body).unwrap().into()),
    )
    .await
    .expect("control reply in time")
    .expect("control request answered");
    serde_json::from_slice(&reply.payload).expect("control reply is JSON")
}

/// The next heartbeat of `neuron`, read off the bus.
pub async fn heartbeat(client: &Client, neuron: &str) -> (serde_json::Value, NeuronStatus) {
    let mut sub = client
        .subscribe(Subjects::default().heartbeat(neuron))
        .await
        .unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a heartbeat in time")
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&message.payload).expect("heartbeat is JSON");
    let status: NeuronStatus = serde_json::from_value(json.clone()).unwrap();
    (json, status)
}

/// A GET on loopback: (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let reply = cortex_testkit::http::get(&format!("http://{addr}{path}")).await;
    (reply.status, reply.body)
}

/// Every reply to a request sent to many responders (micro `$SRV` verbs), within `window`.
pub async fn gather(client: &Client, subject: &str, window: Duration) -> Vec<serde_json::Value> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.unwrap();
    client
        .publish_with_reply(subject.to_string(), inbox, "".into())
        .await
        .unwrap();
    let mut replies = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, sub.next()).await {
        replies.push(serde_json::from_slice(&message.payload).expect("JSON reply"));
    }
    replies
}
