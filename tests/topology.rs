//! The compose topology without Docker: the same processes on loopback (a
//! nats-server, 2 `cortex placement`, 2 `cortex neuron --engine sim`,
//! [`INGRESS_PODS`] `cortex ingress`, as `docker-compose up --scale
//! ingress=5` runs them) behind a round-robin TCP balancer, as haproxy sits
//! in front of the pods in `compose/`. One ingress pod is killed with kill -9
//! in the middle of the run: clients retrying through the balancer never
//! see a request fail for good.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_testkit::NatsServer;
use serde_json::json;
use support::*;
use tokio::net::{TcpListener, TcpStream};

/// Ingress pods in the run (the compose file's 3, scaled to 5).
const INGRESS_PODS: usize = 5;

/// A round-robin TCP balancer: each connection goes to the next backend
/// that accepts one (a dead pod refuses, so it is skipped).
async fn balancer(backends: Vec<String>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut next = 0usize;
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let mut upstream = None;
            for _ in 0..backends.len() {
                let backend = backends[next % backends.len()].clone();
                next += 1;
                if let Ok(stream) = TcpStream::connect(&backend).await {
                    upstream = Some(stream);
                    break;
                }
            }
            let Some(mut upstream) = upstream else {
                continue;
            };
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ingress_pod_killed_mid_run_costs_no_request() {
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(dir.path(), "[[model]]\nid = \"m\"\nsource = \"sim\"\nvram_mb = 100\nmin_replicas = 2\nmax_replicas = 2\n");
    let file = file.to_str().unwrap().to_string();
    let mut daemons = Vec::new();
    for id in ["placement-1", "placement-2"] {
        daemons.push(Daemon::spawn(&[
            "placement",
            "--nats-url",
            &url,
            "--id",
            id,
            "--models",
            &file,
            "--metrics-listen",
            "off",
            "--reconcile-interval",
            "200ms",
        ]));
    }
    for id in ["neuron-1", "neuron-2"] {
        daemons.push(Daemon::spawn(&[
            "neuron",
            "--engine",
            "sim",
            "--nats-url",
            &url,
            "--id",
            id,
            "--metrics-listen",
            "off",
            "--heartbeat-interval",
            "300ms",
            "--sim-reply-tokens",
            "20",
            "--sim-tokens-per-second",
            "200",
        ]));
    }
    let mut pods = Vec::new();
    let mut backends = Vec::new();
    for _ in 0..INGRESS_PODS {
        let listen = format!("127.0.0.1:{}", cortex_testkit::free_port());
        pods.push(Daemon::spawn(&[
            "ingress",
            "--nats-url",
            &url,
            "--listen",
            &listen,
        ]));
        backends.push(listen);
    }
    let base = balancer(backends.clone()).await;
    // Both neurons hold the model (min_replicas 2) before the run.
    let client = connect(&url).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = placement_call::<_, cortex_schemas::PlacementStatus>(
            &client,
            cortex_bus::PlacementOp::Status,
            &json!({}),
        )
        .await
        .map(|s| {
            s.neurons
                .iter()
                .filter(|n| {
                    n.models
                        .iter()
                        .any(|m| m.model_id == "m" && m.state == cortex_schemas::ModelState::Ready)
                })
                .count()
        })
        .unwrap_or(0);
        if ready == 2 && chat(&base, "m", json!({})).await.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "mesh never came up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (served, retried, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (stop, served, retried, failed, base) = (
            stop.clone(),
            served.clone(),
            retried.clone(),
            failed.clone(),
            base.clone(),
        );
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut ok = false;
                for attempt in 0..3 {
                    let answer = try_chat(&base).await;
                    if answer == Some(200) {
                        ok = true;
                        break;
                    }
                    if attempt < 2 {
                        retried.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                if ok {
                    served.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
            }
        }));
    }
    // Every pod serves before one dies, and the rest go on after it.
    until("40 requests served", Duration::from_secs(60), || {
        served.load(Ordering::Relaxed) >= 40
    })
    .await;
    let before = served.load(Ordering::Relaxed);
    pods[1].kill();
    until(
        "60 more served after the kill",
        Duration::from_secs(60),
        || served.load(Ordering::Relaxed) >= before + 60,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (served, retried, failed) = (
        served.load(Ordering::Relaxed),
        retried.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    // Every pod took its share (the killed one until its death).
    let mut shares = Vec::new();
    for (i, listen) in backends.iter().enumerate() {
        if i == 1 {
            continue;
        }
        let metrics = get_text(&format!("http://{listen}/metrics")).await;
        shares.push(requests_served(&metrics));
    }
    println!(
        "served {served} ({before} before the kill), retried {retried}, failed {failed}; \
         requests per live pod {shares:?}"
    );
    assert!(shares.iter().all(|&n| n > 0), "{shares:?}");
    assert_eq!(failed, 0);
    assert!(
        served > before + 10,
        "requests went on after the kill: {served} vs {before}"
    );
    drop(daemons);
}

/// The requests a pod's `/metrics` says it answered with 200.
fn requests_served(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("cortex_requests_total{") && l.contains("status=\"200\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// One streamed chat through the balancer: its status, or None when the
/// connection broke (the pod died under it).
async fn try_chat(base: &str) -> Option<u16> {
    let url = format!("{base}/v1/chat/completions");
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "stream": true});
        let mut response = agent.post(&url).header("content-type", "application/json").send(body.to_string()).ok()?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().ok()?;
        // A stream cut short by the pod's death is not a success.
        (status != 200 || text.trim_end().ends_with("data: [DONE]")).then_some(status)
    })
    .await
    .unwrap()
}
