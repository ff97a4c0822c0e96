//! Fair queues under overload: one API key flooding a model does not make
//! another key's requests wait behind the flood, and `cortex-priority` is
//! checked at the door.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_ingress::config::ApiKey;
use cortex_testkit::NatsServer;
use serde_json::json;
use support::*;

const FLOOD: &str = "flood-key";
const CALM: &str = "calm-key";

fn body(text: &str) -> String {
    json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": text}]})
        .to_string()
}

/// Median latency of `n` requests sent one after another with `key`.
async fn median_latency(url: &str, key: &str, n: usize) -> Duration {
    let auth = format!("Bearer {key}");
    let mut times = Vec::new();
    for i in 0..n {
        let started = Instant::now();
        let reply = post(
            url,
            &body(&format!("calm {i}")),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        times.push(started.elapsed());
    }
    times.sort();
    times[n / 2]
}

/// One sim neuron with 4 slots and 8 queue places, 16 flooding clients on
/// one key: the other key's median latency stays within 2x of what it is
/// with the mesh idle (a FIFO queue would put it behind 8 queued floods).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_key_does_not_slow_another_key_down() {
    let server = NatsServer::start();
    let _neuron = sim_neuron(&server, "n", &["m"], |c| {
        c.max_concurrency = 4;
        c.max_queue = 8;
        c.sim_reply_tokens = 8;
        c.sim_ttft = std::time::Duration::from_millis(10);
        c.sim_tokens_per_second = 200.0;
    })
    .await;
    let pod = ingress(&server, &[], |c| {
        c.api_keys = vec![ApiKey(FLOOD.into()), ApiKey(CALM.into())];
        // One attempt: an overloaded flood is refused, not retried.
        c.attempts = 1;
    })
    .await;
    let url = format!("http://{}/v1/chat/completions", pod.addr);
    let idle = median_latency(&url, CALM, 25).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (served, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut flooders = Vec::new();
    for client in 0..16 {
        let (url, stop) = (url.clone(), stop.clone());
        let (served, refused) = (served.clone(), refused.clone());
        flooders.push(tokio::spawn(async move {
            let auth = format!("Bearer {FLOOD}");
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let reply = post(
                    &url,
                    &body(&format!("flood {client} {i}")),
                    &[("authorization", &auth)],
                )
                .await;
                match reply.status {
                    200 => served.fetch_add(1, Ordering::Relaxed),
                    429 => {
                        // As clients do on Retry-After, if more eagerly.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                    other => panic!("flood answered {other}: {}", reply.body),
                };
                i += 1;
            }
        }));
    }
    // The flood fills every slot and queue place before the calm key asks.
    support::until_queue_full(&pod, "m", 8).await;
    let loaded = median_latency(&url, CALM, 25).await;
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.await.unwrap();
    }
    let (served, refused) = (
        served.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    println!("calm key median: idle {idle:?}, under the flood {loaded:?}; flood: {served} served, {refused} refused with 429");
    assert!(refused > 0, "the flood never saturated the neuron");
    assert!(loaded <= idle * 2, "idle {idle:?}, loaded {loaded:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_priority_header_is_refused_in_the_dialect() {
    let server = NatsServer::start();
    let _neuron = sim_neuron(&server, "n", &["m"], |_| {}).await;
    let pod = ingress(&server, &["m"], |_| {}).await;
    let base = format!("http://{}", pod.addr);
    let reply = post(
        &format!("{base}/v1/chat/completions"),
        &body("hi"),
        &[("cortex-priority", "urgent")],
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.json()["error"]["param"], "cortex-priority");
    let reply = post(
        &format!("{base}/v1/messages"),
        &messages_body("m", false),
        &[("cortex-priority", "300")],
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.json()["type"], "error");
    let reply = post(
        &format!("{base}/v1/chat/completions"),
        &body("hi"),
        &[("cortex-priority", "-5")],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_operators_raise_priority() {
    let server = NatsServer::start();
    let _neuron = sim_neuron(&server, "n", &["m"], |_| {}).await;
    let pod = ingress(&server, &[], |c| {
        c.api_keys = vec![ApiKey("user".into())];
        c.admin_keys = vec![ApiKey("op".into())];
    })
    .await;
    let url = format!("http://{}/v1/chat/completions", pod.addr);
    let ask = |key: &'static str, priority: &'static str| {
        let url = url.clone();
        async move {
            let auth = format!("Bearer {key}");
            post(
                &url,
                &body("hi"),
                &[("authorization", &auth), ("cortex-priority", priority)],
            )
            .await
        }
    };
    let refused = ask("user", "5").await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.json()["error"]["type"], "permission_error");
    assert_eq!(ask("user", "-3").await.status, 200);
    assert_eq!(ask("op", "5").await.status, 200);
}
