//! Ingress pods are stateless: two behind one port-level balancer answer a
//! client alternately, with no difference; a graceful shutdown finishes the
//! streams that are open.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cortex_testkit::NatsServer;
use serde_json::json;
use support::*;
use tokio::net::{TcpListener, TcpStream};

/// A round-robin TCP balancer: each new connection goes to the next backend.
async fn balancer(
    backends: Vec<std::net::SocketAddr>,
) -> (std::net::SocketAddr, Arc<Vec<AtomicUsize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(
        (0..backends.len())
            .map(|_| AtomicUsize::new(0))
            .collect::<Vec<_>>(),
    );
    let seen = counts.clone();
    tokio::spawn(async move {
        let mut next = 0;
        while let Ok((mut client, _)) = listener.accept().await {
            let i = next % backends.len();
            next += 1;
            seen[i].fetch_add(1, Ordering::Relaxed);
            let backend = backends[i];
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (addr, counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_behind_one_balancer_answer_alike() {
    let server = NatsServer::start();
    let _neuron = sim_neuron(&server, "n1", &["m"], |_| {}).await;
    let a = ingress(&server, &["m"], |_| {}).await;
    let b = ingress(&server, &["m"], |_| {}).await;
    let (front, counts) = balancer(vec![a.addr, b.addr]).await;
    let url = format!("http://{front}/v1/chat/completions");
    let body = json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "same question"}]}).to_string();

    let mut answers = Vec::new();
    for _ in 0..6 {
        let reply = post(&url, &body, &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let json = reply.json();
        answers.push((
            json["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
            json["usage"].clone(),
        ));
        let streamed = post(
            &url,
            &body.replace("\"max_tokens\"", "\"stream\":true,\"max_tokens\""),
            &[],
        )
        .await;
        assert_eq!(streamed.status, 200);
        let text: String = parse_sse(&streamed.body)
            .iter()
            .filter(|e| e.data != "[DONE]")
            .filter_map(|e| serde_json::from_str::<serde_json::Value>(&e.data).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(
            text, answers[0].0,
            "streamed and whole answers agree across pods"
        );
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    let per_pod: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    assert_eq!(per_pod, [6, 6], "the balancer alternated");
    tokio::join!(a.shutdown(), b.shutdown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_open_streams() {
    let server = NatsServer::start();
    let neuron = sim_neuron(&server, "n1", &["m"], |c| c.sim_tokens_per_second = 20.0).await;
    let pod = ingress(&server, &["m"], |_| {}).await;
    let url = format!("http://{}/v1/chat/completions", pod.addr);
    let body = json!({"model": "m", "max_tokens": 20, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let open = tokio::spawn(async move { post(&url, &body, &[]).await });
    // The stream is open: the neuron is generating it.
    until("the stream is under way", Duration::from_secs(10), || {
        neuron.status().models[0].slots_busy == 1
    })
    .await;
    pod.shutdown().await;
    let reply = open.await.unwrap();
    assert_eq!(reply.status, 200);
    let events = parse_sse(&reply.body);
    assert_eq!(
        events.last().map(|e| e.data.as_str()),
        Some("[DONE]"),
        "{}",
        reply.body
    );
}
