//! The fault-injection suite: what a client of the mesh sees when parts of
//! it die. Every scenario is bounded in time and uses real processes and a
//! real nats-server; the README's fault table quotes these bounds.
//!
//! - a neuron killed (-9) mid-stream: its streams end with an error event
//!   within 3 s, the other streams finish untouched;
//! - a neuron killed before its first token: the request is retried on
//!   another neuron and succeeds;
//! - nats-server restarted: the mesh answers again within 5 s of the kill,
//!   no assignment lost;
//! - one node of a 3-node NATS cluster killed: only requests in flight on
//!   the lost connection fail, each with a clear error; assignments kept;
//! - a neuron partitioned from NATS (silence, no close): its model is
//!   loaded elsewhere and served; healed, it reconciles to one copy;
//! - nats-server gone when the daemons are told to stop: they still stop.
//!
//! Neurons dying or cut off are in `neurons.rs`, NATS faults in `nats.rs`;
//! the placement leader killed and an ingress pod killed are in
//! `placement_failover.rs` and `topology.rs`.

#[path = "../support/mod.rs"]
mod support;

mod nats;
mod neurons;

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::Client;
use cortex_bus::{NatsOptions, Subjects};
use cortex_ingress::{Ingress, IngressConfig};
use cortex_schemas::{ModelState, NeuronStatus};
use futures::StreamExt;
use serde_json::{json, Value};
use support::Daemon;

/// The scenarios run one at a time: their time bounds are about the mesh,
/// not about sharing two cores with another scenario.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `cortex neuron` (sim engine, `m` preloaded) as a process, with `extra` flags.
pub fn neuron_process(url: &str, id: &str, extra: &[&str]) -> Daemon {
    let mut args = vec!["--engine", "sim"];
    args.extend_from_slice(extra);
    neuron_daemon(url, id, "m=sim", &args)
}

/// `cortex neuron` as a process holding `models`, beating every 200 ms,
/// 16 sequences at a time, with `extra` flags; no metrics address unless
/// `extra` names one.
pub fn neuron_daemon(url: &str, id: &str, models: &str, extra: &[&str]) -> Daemon {
    let mut args = vec![
        "neuron",
        "--nats-url",
        url,
        "--id",
        id,
        "--models",
        models,
        "--heartbeat-interval",
        "200ms",
        "--max-concurrency",
        "16",
    ];
    if !extra
        .iter()
        .any(|a| *a == "--metrics-listen" || a.starts_with("--metrics-listen="))
    {
        args.extend_from_slice(&["--metrics-listen", "off"]);
    }
    args.extend_from_slice(extra);
    Daemon::spawn(&args)
}

/// Waits until every neuron in `ids` reports `m` ready.
pub async fn wait_ready(client: &Client, ids: &[&str]) {
    wait_beats(client, ids, |status| {
        status
            .models
            .iter()
            .any(|m| m.model_id == "m" && m.state == ModelState::Ready)
    })
    .await
}

/// Waits until every neuron in `ids` sends a heartbeat that passes `check`.
pub async fn wait_beats(client: &Client, ids: &[&str], check: impl Fn(&NeuronStatus) -> bool) {
    let mut beats = client
        .subscribe(Subjects::default().heartbeats())
        .await
        .unwrap();
    let mut missing: Vec<&str> = ids.to_vec();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !missing.is_empty() {
        assert!(Instant::now() < deadline, "never ready: {missing:?}");
        if let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(1), beats.next()).await
        {
            let status: NeuronStatus = serde_json::from_slice(&message.payload).unwrap();
            if check(&status) {
                missing.retain(|id| *id != status.neuron_id);
            }
        }
    }
}

/// What one client saw of one request.
#[derive(Debug)]
pub struct Outcome {
    pub started: Instant,
    pub ended: Instant,
    pub status: u16,
    /// Content deltas received (streams) or 1 for a whole answer with content.
    pub deltas: usize,
    /// The stream ended with `[DONE]`, or the whole answer was complete.
    pub done: bool,
    /// The error the client was told, if any.
    pub error: Option<String>,
    /// The content, as streamed or whole.
    pub text: String,
    /// The longest wait between two content deltas.
    pub longest_gap: Duration,
}

/// A chat completion for `m` through `base`, streamed or whole, read to its end.
pub fn request_chat(base: &str, stream: bool, max_tokens: u32) -> Outcome {
    request_model(base, "m", "hello", stream, max_tokens)
}

/// How many streams have had their first content delta: a fault is
/// injected once the streams are really under way, not after a guessed
/// sleep (a slow machine takes longer to reach the first token).
#[derive(Clone, Debug, Default)]
pub struct Streaming(Arc<AtomicUsize>);

impl Streaming {
    /// Waits (at most 60 s) until `n` streams have had a content delta.
    pub async fn reach(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.0.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} streams started",
                self.0.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `request_chat` that counts its first content delta in `streaming`.
pub fn request_chat_counted(
    base: &str,
    stream: bool,
    max_tokens: u32,
    streaming: &Streaming,
) -> Outcome {
    request_model_counted(base, "m", "hello", stream, max_tokens, Some(streaming))
}

/// A greedy chat completion for `model`, streamed or whole, read to its end.
pub fn request_model(
    base: &str,
    model: &str,
    prompt: &str,
    stream: bool,
    max_tokens: u32,
) -> Outcome {
    request_model_counted(base, model, prompt, stream, max_tokens, None)
}

/// `request_model` that counts its first content delta in `streaming`.
pub fn request_model_counted(
    base: &str,
    model: &str,
    prompt: &str,
    stream: bool,
    max_tokens: u32,
    streaming: Option<&Streaming>,
) -> Outcome {
    let started = Instant::now();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    });
    let mut outcome = Outcome {
        started,
        ended: started,
        status: 0,
        deltas: 0,
        done: false,
        error: None,
        text: String::new(),
        longest_gap: Duration::ZERO,
    };
    let response = agent
        .post(&format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .send(body.to_string());
    let mut response = match response {
        Ok(response) => response,
        Err(error) => {
            outcome.error = Some(format!("HTTP: {error}"));
            outcome.ended = Instant::now();
            return outcome;
        }
    };
    outcome.status = response.status().as_u16();
    if !stream || outcome.status != 200 {
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if let Some(message) = value["error"]["message"].as_str() {
            outcome.error = Some(message.to_string());
        } else if let Some(text) = value["choices"][0]["message"]["content"].as_str() {
            outcome.deltas = 1;
            outcome.done = true;
            outcome.text = text.to_string();
        }
        outcome.ended = Instant::now();
        return outcome;
    }
    let reader = BufReader::new(response.body_mut().as_reader());
    let mut last = Instant::now();
    for line in reader.lines() {
        let Ok(line) = line else {
            outcome.error.get_or_insert("the stream broke off".into());
            break;
        };
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            outcome.done = true;
            break;
        }
        let event: Value = serde_json::from_str(data).unwrap_or(Value::Null);
        if let Some(message) = event["error"]["message"].as_str() {
            outcome.error = Some(message.to_string());
        } else if let Some(content) = event["choices"][0]["delta"]["content"]
            .as_str()
            .filter(|c| !c.is_empty())
        {
            if outcome.deltas > 0 {
                outcome.longest_gap = outcome.longest_gap.max(last.elapsed());
            } else if let Some(streaming) = streaming {
                streaming.0.fetch_add(1, Ordering::SeqCst);
            }
            last = Instant::now();
            outcome.deltas += 1;
            outcome.text.push_str(content);
        }
    }
    outcome.ended = Instant::now();
    outcome
}

pub async fn ingress_on(options: NatsOptions) -> (Ingress, Client) {
    let mut config = IngressConfig::for_tests(&options.servers[0]);
    config.nats = options;
    let client = config.nats.connect("ingress").await.unwrap();
    let ingress = Ingress::start(config, client.clone()).await.unwrap();
    (ingress, client)
}
