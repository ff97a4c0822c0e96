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
//! The placement leader killed and an ingress pod killed are in
//! `placement_failover.rs` and `topology.rs`.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_nats::Client;
use cortex_bus::kv::get;
use cortex_bus::{buckets, NatsOptions, PlacementOp, Subjects};
use cortex_ingress::{Ingress, IngressConfig};
use cortex_neuron::{EngineKind, Neuron, NeuronConfig};
use cortex_placement::Placement;
use cortex_schemas::{Assignment, EventDetail, ModelState, NeuronStatus, PlaceRequest};
use cortex_testkit::{NatsCluster, NatsServer, PartitionProxy, ServerOptions};
use futures::StreamExt;
use serde_json::{json, Value};
use support::*;

/// The scenarios run one at a time: their time bounds are about the mesh,
/// not about sharing two cores with another scenario.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `cortex neuron` (sim engine, `m` preloaded) as a process, with `extra` flags.
fn neuron_process(url: &str, id: &str, extra: &[&str]) -> Daemon {
    let mut args = vec![
        "neuron",
        "--nats-url",
        url,
        "--id",
        id,
        "--engine",
        "sim",
        "--models",
        "m=sim",
        "--heartbeat-interval",
        "200ms",
        "--max-concurrency",
        "16",
        "--metrics-listen",
        "off",
    ];
    args.extend_from_slice(extra);
    Daemon::spawn(&args)
}

/// Waits until every neuron in `ids` reports `m` ready.
async fn wait_ready(client: &Client, ids: &[&str]) {
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
            if status
                .models
                .iter()
                .any(|m| m.model_id == "m" && m.state == ModelState::Ready)
            {
                missing.retain(|id| *id != status.neuron_id);
            }
        }
    }
}

/// What one client saw of one request.
#[derive(Debug)]
struct Outcome {
    started: Instant,
    ended: Instant,
    status: u16,
    /// Content deltas received (streams) or 1 for a whole answer with content.
    deltas: usize,
    /// The stream ended with `[DONE]`, or the whole answer was complete.
    done: bool,
    /// The error the client was told, if any.
    error: Option<String>,
}

/// A chat completion for `m` through `base`, streamed or whole, read to its end.
fn request_chat(base: &str, stream: bool, max_tokens: u32) -> Outcome {
    let started = Instant::now();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": max_tokens,
        "stream": stream,
    });
    let mut outcome = Outcome {
        started,
        ended: started,
        status: 0,
        deltas: 0,
        done: false,
        error: None,
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
        } else if value["choices"][0]["message"]["content"].is_string() {
            outcome.deltas = 1;
            outcome.done = true;
        }
        outcome.ended = Instant::now();
        return outcome;
    }
    let reader = BufReader::new(response.body_mut().as_reader());
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
        } else if event["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
        {
            outcome.deltas += 1;
        }
    }
    outcome.ended = Instant::now();
    outcome
}

async fn ingress_on(options: NatsOptions) -> (Ingress, Client) {
    let mut config = IngressConfig::for_tests(&options.servers[0]);
    config.nats = options;
    let client = config.nats.connect("ingress").await.unwrap();
    let ingress = Ingress::start(config, client.clone()).await.unwrap();
    (ingress, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_neuron_killed_mid_stream_fails_only_its_streams_within_3_seconds() {
    let _serial = SERIAL.lock().await;
    let server = NatsServer::start();
    let url = server.url();
    // 100 tokens at 20/s: five-second streams.
    let slow = ["--sim-tokens-per-second", "20", "--sim-reply-tokens", "100"];
    let mut victim = neuron_process(&url, "victim", &slow);
    let _survivor = neuron_process(&url, "survivor", &slow);
    let client = connect(&url).await;
    wait_ready(&client, &["victim", "survivor"]).await;
    let (ingress, _) = ingress_on(NatsOptions::new([url.clone()])).await;
    let base = format!("http://{}", ingress.addr);

    let streams: Vec<_> = (0..12)
        .map(|_| {
            let base = base.clone();
            tokio::task::spawn_blocking(move || request_chat(&base, true, 100))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    victim.kill();
    let killed = Instant::now();
    let mut outcomes = Vec::new();
    for stream in streams {
        outcomes.push(stream.await.unwrap());
    }
    let (failed, finished): (Vec<&Outcome>, Vec<&Outcome>) =
        outcomes.iter().partition(|o| o.error.is_some());
    // Queue groups spread 12 streams over both (all on one: p = 2/4096).
    assert!(
        !failed.is_empty(),
        "no stream was on the victim: {outcomes:#?}"
    );
    assert!(!finished.is_empty(), "every stream failed: {outcomes:#?}");
    for outcome in &failed {
        let after = outcome.ended.duration_since(killed);
        println!(
            "stream on the killed neuron: error after {after:?}: {:?}",
            outcome.error
        );
        assert!(after < Duration::from_secs(3), "{outcome:?}");
        assert!(outcome.deltas > 0, "was mid-stream: {outcome:?}");
        assert_eq!(outcome.status, 200, "the stream had started");
        assert!(!outcome.done);
    }
    for outcome in &finished {
        assert!(outcome.done, "{outcome:?}");
        assert_eq!(outcome.deltas, 100, "whole stream: {outcome:?}");
    }
    // New requests go to the survivor at once.
    let after = request_chat(&base, false, 8);
    assert_eq!(after.status, 200, "{after:?}");
    ingress.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_neuron_killed_before_its_first_token_is_retried_elsewhere() {
    let _serial = SERIAL.lock().await;
    let server = NatsServer::start();
    let url = server.url();
    // The victim takes 30 s to a first token; the survivor 10 ms.
    let mut victim = neuron_process(&url, "victim", &["--sim-ttft", "30s"]);
    let _survivor = neuron_process(&url, "survivor", &["--sim-ttft", "10ms"]);
    let client = connect(&url).await;
    wait_ready(&client, &["victim", "survivor"]).await;
    let (ingress, _) = ingress_on(NatsOptions::new([url.clone()])).await;
    let base = format!("http://{}", ingress.addr);

    let calls: Vec<_> = (0..12)
        .map(|i| {
            let base = base.clone();
            tokio::task::spawn_blocking(move || request_chat(&base, i % 2 == 0, 16))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    victim.kill();
    let killed = Instant::now();
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.unwrap());
    }
    for outcome in &outcomes {
        assert_eq!(outcome.status, 200, "{outcome:?}");
        assert!(outcome.done && outcome.error.is_none(), "{outcome:?}");
    }
    // Those the victim held waited for it to go silent (2.5 keepalive
    // periods), then were answered by the survivor.
    let retried: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.ended > killed + Duration::from_millis(1500))
        .map(|o| o.ended.duration_since(killed))
        .collect();
    println!("retried after the kill, answered within {retried:?}");
    assert!(!retried.is_empty(), "no request was on the victim");
    assert!(retried.iter().all(|d| *d < Duration::from_secs(5)));
    ingress.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarting_nats_brings_the_mesh_back_within_5_seconds_with_every_assignment() {
    let _serial = SERIAL.lock().await;
    let mut server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(
        dir.path(),
        "[[model]]\nid = \"m\"\nsource = \"sim\"\nvram_mb = 300\n",
    );
    let p = placement(placement_config(&server, "p1", Some(&file))).await;
    let n1 = sim_neuron(&server, "n1", |_| {}).await;
    let ingress = ingress(&server).await;
    let base = format!("http://{}", ingress.addr);
    let client = connect(&server.url()).await;
    until("neuron seen", Duration::from_secs(10), || {
        p.shared().fleet.live().len() == 1
    })
    .await;
    let loaded: Assignment = placement_call(
        &client,
        PlacementOp::Load,
        &PlaceRequest {
            model: "m".into(),
            neuron: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(loaded.replicas.len(), 1);

    let killed = Instant::now();
    server.restart();
    let back = loop {
        let answer = chat(&base, "m", json!({})).await;
        if answer.status == 200 {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "mesh not back within 5 s: {}",
            answer.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("mesh answered again {back:?} after nats-server was killed");
    assert!(back < Duration::from_secs(5), "mesh back after {back:?}");
    let js = async_nats::jetstream::new(connect(&server.url()).await);
    let store = js.get_key_value(buckets::PLACEMENTS).await.unwrap();
    let kept: Assignment = get(&store, "m")
        .await
        .unwrap()
        .expect("assignment kept")
        .value;
    let on: Vec<&str> = kept.replicas.iter().map(|r| r.neuron.as_str()).collect();
    assert_eq!(on, vec!["n1"]);
    let catalog = js.get_key_value(buckets::CATALOG).await.unwrap();
    assert!(
        get::<Value>(&catalog, "m").await.unwrap().is_some(),
        "catalogue kept"
    );
    ingress.shutdown().await;
    n1.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn daemons_stop_on_sigterm_even_with_nats_gone() {
    let _serial = SERIAL.lock().await;
    let mut server = NatsServer::start();
    let url = server.url();
    let mut neuron = neuron_process(&url, "orphan", &[]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut ingress = Daemon::spawn(&["ingress", "--nats-url", &url, "--listen", &listen]);
    let client = connect(&url).await;
    wait_ready(&client, &["orphan"]).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Their last heartbeat and flush cannot reach anyone: they must still
    // end, each wait cut at its deadline (a neuron waits up to 5 s for each
    // served subject's drain, the last flush 2 s).
    for daemon in [&mut neuron, &mut ingress] {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &daemon.0.id().to_string()])
            .status();
    }
    let stopping = Instant::now();
    for daemon in [&mut neuron, &mut ingress] {
        loop {
            if daemon.0.try_wait().unwrap().is_some() {
                break;
            }
            assert!(
                stopping.elapsed() < Duration::from_secs(30),
                "a daemon hung at shutdown without NATS"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!("both stopped {:?} after SIGTERM", stopping.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_one_node_of_three_fails_only_requests_in_flight_on_it() {
    let _serial = SERIAL.lock().await;
    let mut cluster = NatsCluster::start(3);
    let urls = cluster.urls();
    // Every part knows all three nodes and fails over between them.
    let options = || {
        let mut options = NatsOptions::new(urls.clone());
        options.connect_timeout = Duration::from_secs(10);
        options
    };
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(
        dir.path(),
        "[[model]]\nid = \"m\"\nsource = \"sim\"\nvram_mb = 300\nmin_replicas = 2\nmax_replicas = 2\n",
    );
    let mut config = cortex_placement::PlacementConfig::for_tests(&urls[0], "p1");
    config.nats = options();
    config.models = Some(file);
    config.bucket_replicas = 3;
    config.reconcile_interval = Duration::from_millis(200);
    config.lease_ttl = Duration::from_millis(1500);
    let placement = Placement::start(config.clone(), config.nats.connect("p").await.unwrap())
        .await
        .unwrap();
    let mut neurons = Vec::new();
    for id in ["n1", "n2"] {
        let mut config = NeuronConfig::for_tests(&urls[0], id);
        config.nats = options();
        config.engine = EngineKind::Sim;
        config.heartbeat_interval = Duration::from_millis(200);
        config.sim_reply_tokens = 20;
        config.sim_tokens_per_second = 50.0;
        config.max_concurrency = 16;
        let client = config.nats.connect(id).await.unwrap();
        neurons.push(Neuron::start(config, client).await.unwrap());
    }
    let (ingress, ingress_client) = ingress_on(options()).await;
    let base = format!("http://{}", ingress.addr);
    let operator = options().connect("operator").await.unwrap();
    // min_replicas = 2: placement loads m on both neurons.
    until("m on both neurons", Duration::from_secs(20), || {
        placement
            .shared()
            .fleet
            .live()
            .iter()
            .filter(|n| n.models.iter().any(|m| m.state == ModelState::Ready))
            .count()
            == 2
    })
    .await;
    let warm = request_chat(&base, true, 20);
    assert!(warm.done, "{warm:?}");

    // Kill the node the ingress is connected to, under load.
    let port = ingress_client.server_info().port;
    let victim = (0..3)
        .find(|i| cluster.url(*i).ends_with(&format!(":{port}")))
        .expect("the ingress's node");
    let stop_at = Instant::now() + Duration::from_secs(8);
    let workers: Vec<_> = (0..6)
        .map(|i| {
            let base = base.clone();
            tokio::task::spawn_blocking(move || {
                let mut seen = Vec::new();
                while Instant::now() < stop_at {
                    seen.push(request_chat(&base, i % 2 == 0, 20));
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.kill(victim);
    let killed = Instant::now();
    let mut outcomes = Vec::new();
    for worker in workers {
        outcomes.extend(worker.await.unwrap());
    }
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.done).collect();
    println!(
        "{} requests, {} failed: {:?}",
        outcomes.len(),
        failed.len(),
        failed.iter().map(|o| &o.error).collect::<Vec<_>>()
    );
    for outcome in &failed {
        assert!(
            outcome.started < killed,
            "a request started after the loss failed: {outcome:?}"
        );
        let message = outcome.error.as_deref().unwrap_or("");
        assert!(!message.is_empty(), "failed without an error: {outcome:?}");
    }
    assert!(failed.len() <= 6, "more failures than requests in flight");
    let after: Vec<&Outcome> = outcomes.iter().filter(|o| o.started > killed).collect();
    assert!(after.len() >= 6, "too few requests after the loss");
    // Placement's state survived on the other two nodes.
    let js = async_nats::jetstream::new(operator.clone());
    let store = js.get_key_value(buckets::PLACEMENTS).await.unwrap();
    let kept: Assignment = get(&store, "m").await.unwrap().expect("kept").value;
    assert_eq!(kept.replicas.len(), 2, "{kept:?}");
    ingress.shutdown().await;
    for neuron in neurons {
        neuron.shutdown().await;
    }
    placement.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_neuron_is_replaced_and_reconciles_when_it_returns() {
    let _serial = SERIAL.lock().await;
    // The server drops a silent client after ~2 s (two missed pings a
    // second apart), as an operator's nats.conf should.
    let server = NatsServer::with_options(ServerOptions {
        extra_config: "ping_interval: \"1s\"\nping_max: 2\n".into(),
        ..ServerOptions::default()
    });
    let upstream: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let link = PartitionProxy::start(upstream);
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(
        dir.path(),
        "[[model]]\nid = \"m\"\nsource = \"sim\"\nvram_mb = 300\nmin_replicas = 1\nmax_replicas = 1\n",
    );
    let p = placement(placement_config(&server, "p1", Some(&file))).await;
    // The island reaches NATS only through the link; the mainland directly.
    let mut config = NeuronConfig::for_tests(&link.url(), "island");
    config.engine = EngineKind::Sim;
    config.heartbeat_interval = Duration::from_millis(200);
    config.sim_reply_tokens = 8;
    let island = Neuron::start(config, connect(&link.url()).await)
        .await
        .unwrap();
    let mainland = sim_neuron(&server, "mainland", |_| {}).await;
    let ingress = ingress(&server).await;
    let base = format!("http://{}", ingress.addr);
    let client = connect(&server.url()).await;
    until("both neurons seen", Duration::from_secs(10), || {
        p.shared().fleet.live().len() == 2
    })
    .await;
    let _: Assignment = placement_call(
        &client,
        PlacementOp::Load,
        &PlaceRequest {
            model: "m".into(),
            neuron: Some("island".into()),
        },
    )
    .await
    .unwrap();
    assert_eq!(request_chat(&base, false, 8).status, 200);

    link.partition();
    let cut = Instant::now();
    // The island's heartbeats stop; placement loads m on the mainland.
    let deadline = cut + Duration::from_secs(15);
    loop {
        if ready_on(&client, "m").await == vec!["mainland".to_string()] {
            break;
        }
        assert!(Instant::now() < deadline, "m not moved to the mainland");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "m ready on the mainland {:?} after the partition",
        cut.elapsed()
    );
    // Served during the partition.
    let during = request_chat(&base, true, 8);
    assert!(during.done, "{during:?}");

    let mut events = record_events(&client).await;
    link.heal();
    let healed = Instant::now();
    // The island reconnects with its copy; one copy remains, and the
    // assignment says where it is.
    let deadline = healed + Duration::from_secs(20);
    loop {
        let status = status(&client).await;
        let holders: Vec<String> = status
            .neurons
            .iter()
            .filter(|n| n.models.iter().any(|m| m.model_id == "m"))
            .map(|n| n.neuron_id.clone())
            .collect();
        let assigned: Vec<String> = status
            .assignments
            .iter()
            .filter(|a| a.model_id == "m")
            .flat_map(|a| a.replicas.iter().map(|r| r.neuron.clone()))
            .collect();
        let island_back = status.neurons.iter().any(|n| n.neuron_id == "island");
        if island_back && holders.len() == 1 && holders == assigned {
            let island = status.neurons.iter().find(|n| n.neuron_id == "island");
            println!(
                "reconciled {:?} after healing: m on {holders:?}; island: {:?}",
                healed.elapsed(),
                island.map(|n| (&n.state, &n.models))
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not reconciled: holders {holders:?}, assigned {assigned:?}, island back {island_back}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The island came back holding its copy, which was the surplus one.
    let seen: Vec<String> = drain(&mut events)
        .iter()
        .filter_map(|e| match &e.detail {
            EventDetail::ModelEvicted { neuron, model, .. }
            | EventDetail::ModelUnloaded { neuron, model }
                if model == "m" =>
            {
                Some(neuron.clone())
            }
            _ => None,
        })
        .collect();
    assert!(seen.contains(&"island".to_string()), "{seen:?}");
    let after = request_chat(&base, true, 8);
    assert!(after.done, "{after:?}");
    ingress.shutdown().await;
    island.shutdown().await;
    mainland.shutdown().await;
    p.shutdown().await;
}
