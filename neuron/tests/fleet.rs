//! Fleets of sim neurons over a real nats-server: drain for rolling
//! restarts, graceful shutdown, and 200 neurons in one process.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cortex_schemas::{ModelState, NeuronState, NeuronStatus};
use cortex_testkit::{eventually, NatsServer};
use futures::StreamExt;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_requests_and_new_ones_go_to_the_other_neuron() {
    let server = NatsServer::start();
    let neuron = |id: &str| {
        let mut config = sim_config(&server, id);
        config.models = vec!["m=sim".into()];
        config.sim_tokens_per_second = 20.0;
        config
    };
    let (a, b) = tokio::join!(start(neuron("a")), start(neuron("b")));
    wait_ready(&a, "m").await;
    wait_ready(&b, "m").await;
    let client = connect(&server.url()).await;
    let subject = infer_subject("m");

    // Requests in flight on both neurons (each takes about a second).
    let mut before = Vec::new();
    for i in 0..8 {
        before.push(
            send(
                &client,
                &subject,
                &chat(&format!("before-{i}"), "m", "hi", 20),
            )
            .await,
        );
    }
    let before = tokio::spawn(futures::future::join_all(before.into_iter().map(collect)));
    // Generous: the 200-neuron test beside this one loads both cores.
    eventually(
        "requests in flight on a",
        Duration::from_secs(20),
        || async { (a.status().models[0].slots_busy > 0).then_some(()) },
    )
    .await;

    let drain = {
        let client = client.clone();
        tokio::spawn(async move { control(&client, "a", "drain", json!({})).await })
    };
    eventually("a draining", Duration::from_secs(5), || async {
        (a.status().state == NeuronState::Draining).then_some(())
    })
    .await;
    let mut after = Vec::new();
    for i in 0..8 {
        after.push(
            send(
                &client,
                &subject,
                &chat(&format!("after-{i}"), "m", "hi", 2),
            )
            .await,
        );
    }
    for answer in futures::future::join_all(after.into_iter().map(collect)).await {
        assert_eq!(answer.error, None);
        assert_eq!(
            answer.neuron(),
            "b",
            "new requests go to the neuron not draining"
        );
    }
    let before = before.await.unwrap();
    let on_a = before
        .iter()
        .filter(|answer| answer.neuron() == "a")
        .count();
    assert!(on_a > 0);
    for answer in &before {
        assert_eq!(answer.error, None, "in-flight requests finish");
        assert_eq!(
            answer.done.as_ref().map(|d| d.usage.completion_tokens),
            Some(20)
        );
    }
    let reply = drain.await.unwrap();
    assert!(reply["ok"]["finished"].as_u64().unwrap() >= 1, "{reply}");
    assert_eq!(a.status().models[0].state, ModelState::Draining);
    tokio::join!(a.shutdown(), b.shutdown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_work_and_says_stopped() {
    let server = NatsServer::start();
    let mut config = sim_config(&server, "bye");
    config.models = vec!["m=sim".into()];
    config.sim_tokens_per_second = 20.0;
    let neuron = start(config).await;
    wait_ready(&neuron, "m").await;
    let client = connect(&server.url()).await;
    let mut beats = client.subscribe("cortex.v1.heartbeat.bye").await.unwrap();

    let stream = send(&client, &infer_subject("m"), &chat("last", "m", "hi", 20)).await;
    let in_flight = tokio::spawn(collect(stream));
    eventually("the request in flight", Duration::from_secs(5), || async {
        (neuron.status().models[0].slots_busy == 1).then_some(())
    })
    .await;
    neuron.shutdown().await;
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.error, None);
    assert_eq!(answer.done.map(|d| d.usage.completion_tokens), Some(20));

    let mut states = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), beats.next()).await
    {
        let status: NeuronStatus = serde_json::from_slice(&message.payload).unwrap();
        states.push(status.state);
    }
    assert!(states.contains(&NeuronState::Draining), "{states:?}");
    assert_eq!(states.last(), Some(&NeuronState::Stopped), "{states:?}");
}

/// CPU seconds this process has used (user + system), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (11 and 12 after the command name).
    (ticks(11) + ticks(12)) / 100.0
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sim_neurons_heartbeat_and_serve() {
    const NEURONS: usize = 200;
    let server = NatsServer::start();
    let client = connect(&server.url()).await;
    let rss_before = rss_mib();
    let started = Instant::now();
    let mut neurons = Vec::new();
    for i in 0..NEURONS {
        let mut config = sim_config(&server, &format!("sim-{i:03}"));
        config.heartbeat_interval = Duration::from_secs(2);
        config.models = vec!["fleet=sim".into()];
        config.sim_ttft = Duration::from_millis(20);
        config.sim_tokens_per_second = 100.0;
        neurons.push(start(config).await);
    }
    for neuron in &neurons {
        wait_ready(neuron, "fleet").await;
    }
    let startup = started.elapsed();

    // Every neuron heartbeats within one interval (plus slack).
    let mut beats = client.subscribe("cortex.v1.heartbeat.*").await.unwrap();
    let mut seen = HashMap::new();
    let window = Instant::now();
    while seen.len() < NEURONS && window.elapsed() < Duration::from_secs(6) {
        if let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(1), beats.next()).await
        {
            let status: NeuronStatus = serde_json::from_slice(&message.payload).unwrap();
            assert_eq!(status.models[0].state, ModelState::Ready);
            seen.insert(status.neuron_id, ());
        }
    }
    assert_eq!(seen.len(), NEURONS, "every neuron heartbeats");

    // 1,000 requests spread by the queue group, all answered.
    let load_started = Instant::now();
    let cpu_load = cpu_seconds();
    let subject = infer_subject("fleet");
    let mut served: HashMap<String, usize> = HashMap::new();
    for batch in 0..5 {
        let mut streams = Vec::new();
        for i in 0..200 {
            streams.push(
                send(
                    &client,
                    &subject,
                    &chat(&format!("f-{batch}-{i}"), "fleet", "hi", 8),
                )
                .await,
            );
        }
        for answer in futures::future::join_all(streams.into_iter().map(collect)).await {
            assert_eq!(answer.failure, None);
            assert_eq!(answer.error, None);
            assert_eq!(
                answer.done.as_ref().map(|d| d.usage.completion_tokens),
                Some(8)
            );
            *served.entry(answer.neuron().to_string()).or_default() += 1;
        }
    }
    let serve_time = load_started.elapsed();
    let cpu_serving = cpu_seconds() - cpu_load;

    // Idle cost: a few heartbeat intervals with no requests.
    let cpu_idle_start = cpu_seconds();
    let idle = Duration::from_secs(4);
    tokio::time::sleep(idle).await;
    let idle_cpu = (cpu_seconds() - cpu_idle_start) / idle.as_secs_f64();

    println!(
        "{NEURONS} sim neurons: started in {startup:.1?}; 1000 requests in {serve_time:.1?} \
         ({cpu_serving:.1} CPU s) over {} neurons; idle CPU {:.0}% of one core; \
         RSS {rss_before:.0} MiB before, {:.0} MiB with the fleet",
        served.len(),
        idle_cpu * 100.0,
        rss_mib(),
    );
    assert!(
        served.len() > NEURONS / 2,
        "the queue group spreads requests: {}",
        served.len()
    );
    futures::future::join_all(neurons.into_iter().map(|n| n.shutdown())).await;
}
