//! Shared pieces of the bus integration tests: connecting, and an echo
//! responder that plays a neuron (Accepted, N deltas, Done) over the real server.

#![allow(dead_code)]

use std::time::Duration;

use async_nats::Client;
use cortex_bus::{serve, CancelRegistry, NatsOptions};
use cortex_schemas::{
    Accepted, Delta, Done, EmbedResponse, ErrorClass, FinishReason, Frame, GenerateInput,
    GenerateRequest, InferRequest, Timings, Usage,
};
use futures::StreamExt;
use tokio::task::JoinHandle;

/// Connects through the bus's own options, as every component does.
pub async fn connect(urls: &[String]) -> Client {
    let mut options = NatsOptions::new(urls.iter().cloned());
    options.connect_timeout = Duration::from_secs(10);
    options
        .connect("cortex-test")
        .await
        .expect("connect to test server")
}

/// How the echo responder behaves.
#[derive(Debug, Clone)]
pub struct Echo {
    /// Neuron name put in `Accepted`.
    pub name: String,
    /// Pause after `Accepted`, before the first delta (a long prefill).
    pub initial_delay: Duration,
    /// Pause between deltas.
    pub per_token_delay: Duration,
}

impl Echo {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            initial_delay: Duration::ZERO,
            per_token_delay: Duration::ZERO,
        }
    }
}

/// Serves `subject` (in `queue` when given): each generate request gets
/// `max_tokens` deltas `t0 `, `t1 `, ...; each embed request one vector per input.
pub async fn spawn_echo(
    client: Client,
    subject: &str,
    queue: Option<&str>,
    echo: Echo,
    cancels: CancelRegistry,
) -> JoinHandle<()> {
    let mut requests = serve(&client, subject, queue).await.expect("serve");
    tokio::spawn(async move {
        while let Some(incoming) = requests.next().await {
            let client = client.clone();
            let echo = echo.clone();
            let cancels = cancels.clone();
            tokio::spawn(async move {
                let request: InferRequest = incoming.decode().expect("decodable request");
                let id = request.request_id().to_string();
                let responder = incoming
                    .responder(&client, Some((&cancels, &id)))
                    .expect("reply subject");
                responder
                    .send(&accepted(&echo.name, &id))
                    .await
                    .expect("send accepted");
                match request {
                    InferRequest::Generate(generate) => {
                        // sleep(0) would still wait for the next 1 ms timer tick.
                        if !echo.initial_delay.is_zero() {
                            tokio::time::sleep(echo.initial_delay).await;
                        }
                        let n = generate.max_tokens.unwrap_or(3);
                        for i in 0..n {
                            if responder.is_cancelled() {
                                let _ = responder.fail(ErrorClass::Cancelled, "cancelled").await;
                                return;
                            }
                            if !echo.per_token_delay.is_zero() {
                                tokio::time::sleep(echo.per_token_delay).await;
                            }
                            let delta = Delta {
                                text: format!("t{i} "),
                                tokens: 1,
                                ..Delta::default()
                            };
                            if responder.send(&Frame::Delta(delta)).await.is_err() {
                                return;
                            }
                        }
                        let done = Done {
                            finish_reason: FinishReason::Length,
                            stop_sequence: None,
                            usage: Usage {
                                prompt_tokens: 1,
                                completion_tokens: n,
                                cached_tokens: 0,
                            },
                            timings: Timings::default(),
                        };
                        let _ = responder.send(&Frame::Done(done)).await;
                    }
                    InferRequest::CountTokens(_) => {
                        let _ = responder
                            .fail(
                                ErrorClass::InvalidRequest,
                                "the echo responder does not count",
                            )
                            .await;
                    }
                    InferRequest::Embed(embed) => {
                        let embeddings =
                            embed.inputs.iter().map(|s| vec![s.len() as f32]).collect();
                        let _ = responder
                            .send(&Frame::Embeddings(EmbedResponse {
                                model: embed.model,
                                embeddings,
                                usage: Usage::default(),
                            }))
                            .await;
                    }
                }
            });
        }
    })
}

/// The `Accepted` frame a test responder opens with.
pub fn accepted(neuron: &str, request_id: &str) -> Frame {
    Frame::Accepted(Accepted {
        neuron: neuron.to_string(),
        request_id: request_id.to_string(),
        queue_position: 0,
        prompt_tokens: None,
    })
}

/// A fresh server with one echo responder on `subject`, and a client.
pub async fn server_with_echo(subject: &str, echo: Echo) -> (cortex_testkit::NatsServer, Client) {
    let server = cortex_testkit::NatsServer::start();
    let client = connect(&[server.url()]).await;
    spawn_echo(client.clone(), subject, None, echo, CancelRegistry::new()).await;
    (server, client)
}

/// A generate request asking the echo responder for `tokens` deltas.
pub fn generate(id: &str, tokens: u32) -> InferRequest {
    InferRequest::Generate(Box::new(GenerateRequest {
        max_tokens: Some(tokens),
        ..GenerateRequest::new(
            id,
            "echo",
            GenerateInput::Text {
                prompt: "hello".into(),
            },
        )
    }))
}

/// Reads a stream to its end: the frames and the error that ended it, if any.
pub async fn drain(
    mut stream: cortex_bus::FrameStream,
) -> (Vec<Frame>, Option<cortex_bus::StreamError>) {
    let mut frames = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(frame) => frames.push(frame),
            Err(error) => return (frames, Some(error)),
        }
    }
    (frames, None)
}
