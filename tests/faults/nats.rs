//! NATS faults: a restart, a cluster node lost, a server gone at shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_bus::kv::get;
use cortex_bus::{buckets, NatsOptions};
use cortex_neuron::{EngineKind, Neuron, NeuronConfig};
use cortex_placement::Placement;
use cortex_schemas::{Assignment, ModelState};
use cortex_testkit::{eventually, NatsCluster, NatsServer};
use serde_json::{json, Value};

use crate::support::*;
use crate::{ingress_on, neuron_process, request_chat, wait_beats, Outcome, SERIAL};

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
    let loaded = load(&client, "m", None).await;
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
    // Four models: each served subject's drain is cut short together.
    let metrics = format!("127.0.0.1:{}", cortex_testkit::free_port());
    let mut neuron = neuron_process(
        &url,
        "orphan",
        &[
            "--models",
            "m2=sim,m3=sim,m4=sim",
            "--metrics-listen",
            &metrics,
        ],
    );
    let listen = format!("127.0.0.1:{}", cortex_testkit::free_port());
    let mut ingress = Daemon::spawn(&["ingress", "--nats-url", &url, "--listen", &listen]);
    let client = connect(&url).await;
    wait_beats(&client, &["orphan"], |status| {
        let ready = status
            .models
            .iter()
            .filter(|m| m.state == ModelState::Ready);
        ready.count() == 4
    })
    .await;
    // Both are connected (their health says so), then see the connection go.
    let probes = [
        format!("http://{metrics}/healthz"),
        format!("http://{listen}/readyz"),
    ];
    answer_with(&probes, 200).await;
    server.kill();
    answer_with(&probes, 503).await;
    // Their last heartbeat and flush cannot reach anyone: they must still
    // end promptly. Without a connection a served subject's drain ends at
    // once (no round trip can confirm it); the last flush waits its 2 s.
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
                stopping.elapsed() < Duration::from_secs(8),
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
    let answered = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..6)
        .map(|i| {
            let (base, answered) = (base.clone(), answered.clone());
            tokio::task::spawn_blocking(move || {
                let mut seen = Vec::new();
                while Instant::now() < stop_at {
                    seen.push(request_chat(&base, i % 2 == 0, 20));
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                seen
            })
        })
        .collect();
    // Under load: every worker has had an answer and is on its next.
    until("12 answers before the kill", Duration::from_secs(6), || {
        answered.load(Ordering::Relaxed) >= 12
    })
    .await;
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
    // Placement's state survived on the other two nodes (read once the
    // cluster answers JetStream again: a lost node can cost it an election).
    let js = async_nats::jetstream::new(operator.clone());
    let kept: Assignment = cortex_testkit::eventually(
        "the placements bucket readable after the loss",
        Duration::from_secs(20),
        || async {
            let store = js.get_key_value(buckets::PLACEMENTS).await.ok()?;
            get(&store, "m").await.ok()?
        },
    )
    .await
    .value;
    assert_eq!(kept.replicas.len(), 2, "{kept:?}");
    ingress.shutdown().await;
    for neuron in neurons {
        neuron.shutdown().await;
    }
    placement.shutdown().await;
}

/// Waits until every URL in `probes` answers a GET with `code`.
async fn answer_with(probes: &[String], code: u16) {
    for probe in probes {
        let what = format!("{probe} to answer {code}");
        eventually(&what, Duration::from_secs(10), || async {
            (cortex_testkit::http::status(probe).await == Some(code)).then_some(())
        })
        .await;
    }
}
