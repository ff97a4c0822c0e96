//! Streamed request/reply through a real nats-server, beside plain
//! async-nats request/reply in the same run.
//!
//! Run: `cargo bench -p cortex-bus --bench stream_rtt` (needs nats-server:
//! `scripts/setup.sh` installs it). Prints round-trip latency percentiles and
//! frame throughput, each with the plain-NATS reference and the ratio.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cortex_bus::{stream_request, CancelRegistry, StreamOptions};
use cortex_testkit::NatsServer;
use futures::StreamExt;
use support::{connect, generate, spawn_echo, Echo};

const ROUND_TRIPS: usize = 5_000;
const STREAM_FRAMES: u32 = 100_000;

#[tokio::main]
async fn main() {
    let server = NatsServer::start();
    let requester = connect(&[server.url()]).await;
    let responder = connect(&[server.url()]).await;
    spawn_plain_echo(responder.clone()).await;
    spawn_echo(
        responder.clone(),
        "bench.stream",
        Some("neurons"),
        Echo::new("bench"),
        CancelRegistry::new(),
    )
    .await;

    let options = StreamOptions::default();
    let request = generate("bench", 0);
    let request_bytes = cortex_bus::Encoding::MsgPack.encode(&request).unwrap();

    // Warm both paths.
    for _ in 0..500 {
        requester
            .request("bench.plain", request_bytes.clone())
            .await
            .unwrap();
        let mut s = stream_request(&requester, "bench.stream", &request, &options)
            .await
            .unwrap();
        while s.next().await.is_some() {}
    }

    let mut plain = Vec::with_capacity(ROUND_TRIPS);
    let mut first_frame = Vec::with_capacity(ROUND_TRIPS);
    let mut terminal = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let started = Instant::now();
        requester
            .request("bench.plain", request_bytes.clone())
            .await
            .unwrap();
        plain.push(started.elapsed());

        let started = Instant::now();
        let mut stream = stream_request(&requester, "bench.stream", &request, &options)
            .await
            .unwrap();
        stream.next().await.unwrap().unwrap();
        first_frame.push(started.elapsed());
        while let Some(frame) = stream.next().await {
            frame.unwrap();
        }
        terminal.push(started.elapsed());
    }
    println!(
        "round trip, {ROUND_TRIPS} sequential requests (MessagePack, {} byte request):",
        request_bytes.len()
    );
    let base = report("plain async-nats request/reply", &mut plain, None);
    report(
        "cortex stream: first frame (Accepted)",
        &mut first_frame,
        Some(base),
    );
    report(
        "cortex stream: terminal frame (Accepted+Done)",
        &mut terminal,
        Some(base),
    );

    // Throughput: one stream of many small deltas vs plain publishes of the same size.
    let started = Instant::now();
    let mut stream = stream_request(
        &requester,
        "bench.stream",
        &generate("tp", STREAM_FRAMES),
        &options,
    )
    .await
    .unwrap();
    let mut frames = 0u64;
    while let Some(frame) = stream.next().await {
        frame.unwrap();
        frames += 1;
    }
    let stream_rate = frames as f64 / started.elapsed().as_secs_f64();

    let plain_rate = plain_publish_rate(&requester, &responder, frames).await;
    println!("\nthroughput, one stream of {frames} frames (deltas of ~20 bytes):");
    println!("  plain async-nats publish → subscriber : {plain_rate:>10.0} msgs/s");
    println!(
        "  cortex streamed frames (seq, encode)  : {stream_rate:>10.0} frames/s  ({:.2}x plain)",
        stream_rate / plain_rate
    );
}

/// A plain request/reply responder: answers each request with its own payload.
async fn spawn_plain_echo(client: async_nats::Client) {
    let mut subscriber = client.subscribe("bench.plain").await.unwrap();
    cortex_bus::sync_with_server(&client).await.unwrap();
    tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            if let Some(reply) = message.reply {
                client.publish(reply, message.payload).await.unwrap();
            }
        }
    });
}

/// Messages per second from one client's publishes to another's subscriber.
async fn plain_publish_rate(rx: &async_nats::Client, tx: &async_nats::Client, count: u64) -> f64 {
    let mut subscriber = rx.subscribe("bench.flood").await.unwrap();
    cortex_bus::sync_with_server(rx).await.unwrap();
    let payload = Bytes::from_static(b"{\"type\":\"delta\",\"text\":\"t123 \"}");
    let started = Instant::now();
    let publisher = {
        let tx = tx.clone();
        tokio::spawn(async move {
            for _ in 0..count {
                tx.publish("bench.flood", payload.clone()).await.unwrap();
            }
            tx.flush().await.unwrap();
        })
    };
    let mut received = 0u64;
    while received < count {
        match tokio::time::timeout(Duration::from_secs(10), subscriber.next()).await {
            Ok(Some(_)) => received += 1,
            _ => break,
        }
    }
    publisher.await.unwrap();
    received as f64 / started.elapsed().as_secs_f64()
}

/// Prints p50/p99/p99.9 (and the ratio of p50 to `base`), returns p50.
fn report(label: &str, samples: &mut [Duration], base: Option<Duration>) -> Duration {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    let (p50, p99, p999) = (at(0.50), at(0.99), at(0.999));
    let ratio = base
        .map(|b| format!("  ({:.2}x plain p50)", p50.as_secs_f64() / b.as_secs_f64()))
        .unwrap_or_default();
    println!(
        "  {label:<46} p50 {:>7.1} µs  p99 {:>7.1} µs  p99.9 {:>7.1} µs{ratio}",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        p999.as_secs_f64() * 1e6
    );
    p50
}
