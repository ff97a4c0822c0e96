//! Neurons that die or are cut off from NATS.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cortex_bus::NatsOptions;
use cortex_neuron::{EngineKind, Neuron, NeuronConfig};
use cortex_schemas::{EventDetail, ModelState};
use cortex_testkit::{NatsServer, PartitionProxy, ServerOptions};

use crate::support::*;
use crate::{
    ingress_on, neuron_daemon, neuron_process, request_chat, request_chat_counted, request_model,
    request_model_counted, wait_ready, Streaming, SERIAL,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_neuron_killed_mid_stream_has_its_streams_resumed_on_the_other() {
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

    let (streams, streaming) = spawn_streams(12, {
        let base = base.clone();
        move |streaming| request_chat_counted(&base, true, 100, streaming)
    });
    streaming.reach(12).await;
    victim.kill();
    let outcomes = finish(streams).await;
    // Every stream completes, whole, with the text an uninterrupted one has
    // (the sim writes the same words for the same prompt).
    let reference = &outcomes[0].text;
    all_whole_and_alike(&outcomes, Some(100), reference);
    // Queue groups spread 12 streams over both (all on one: p = 2/4096):
    // the victim's streams paused once, for less than 3 seconds.
    let metrics = get_text(&format!("{base}/metrics")).await;
    let resumed = metric_sum(
        &metrics,
        "cortex_stream_resumes_total{",
        "outcome=\"resumed\"",
    );
    assert!(resumed >= 1, "some streams were on the victim:\n{metrics}");
    let gaps: Vec<Duration> = outcomes.iter().map(|o| o.longest_gap).collect();
    println!("{resumed} of 12 streams resumed; longest pauses {gaps:?}");
    for gap in &gaps {
        assert!(*gap < Duration::from_secs(3), "resume gap {gap:?}");
    }
    let after = request_chat(&base, false, 8);
    assert_eq!(after.status, 200, "{after:?}");
    ingress.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_whose_every_replica_dies_ends_with_a_clear_error() {
    let _serial = SERIAL.lock().await;
    let server = NatsServer::start();
    let url = server.url();
    let slow = ["--sim-tokens-per-second", "20", "--sim-reply-tokens", "100"];
    let mut only = neuron_process(&url, "only", &slow);
    let client = connect(&url).await;
    wait_ready(&client, &["only"]).await;
    let (ingress, _) = ingress_on(NatsOptions::new([url.clone()])).await;
    let base = format!("http://{}", ingress.addr);
    let (mut streams, streaming) = spawn_streams(1, {
        let base = base.clone();
        move |streaming| request_chat_counted(&base, true, 100, streaming)
    });
    let stream = streams.remove(0);
    streaming.reach(1).await;
    only.kill();
    let killed = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(30), stream)
        .await
        .expect("the stream ends: nothing hangs")
        .unwrap();
    println!(
        "after the last replica died: {:?} in {:?}",
        outcome.error,
        killed.elapsed()
    );
    assert!(outcome.deltas > 0 && !outcome.done, "{outcome:?}");
    let error = outcome.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("not loaded")
            || error.contains("placement")
            || error.contains("stopped answering"),
        "{error}"
    );
    let metrics = get_text(&format!("{base}/metrics")).await;
    assert_eq!(
        metric_sum(
            &metrics,
            "cortex_stream_resumes_total{",
            "outcome=\"resumed\""
        ),
        0
    );
    assert!(
        metric_sum(
            &metrics,
            "cortex_stream_resumes_total{",
            "outcome=\"failed\""
        ) >= 1,
        "{metrics}"
    );
    ingress.shutdown().await;
}

/// SIGTERM, then waits (at most 10 s) for the process to exit.
async fn terminate(daemon: &mut Daemon) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status();
    let stopping = Instant::now();
    while daemon.0.try_wait().unwrap().is_none() {
        assert!(
            stopping.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A rolling restart under load: each neuron in turn gets SIGTERM with a
/// drain timeout shorter than its streams, so the drain cancels them, and
/// comes back; every stream moves instead of being cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_cuts_no_stream() {
    let _serial = SERIAL.lock().await;
    let server = NatsServer::start();
    let url = server.url();
    let args = [
        "--sim-tokens-per-second",
        "20",
        "--sim-reply-tokens",
        "100",
        "--drain-timeout",
        "1s",
    ];
    let mut a = neuron_process(&url, "a", &args);
    let mut b = neuron_process(&url, "b", &args);
    let client = connect(&url).await;
    wait_ready(&client, &["a", "b"]).await;
    let (ingress, _) = ingress_on(NatsOptions::new([url.clone()])).await;
    let base = format!("http://{}", ingress.addr);
    let (streams, streaming) = spawn_streams(12, {
        let base = base.clone();
        move |streaming| request_chat_counted(&base, true, 100, streaming)
    });
    streaming.reach(12).await;
    terminate(&mut a).await;
    a = neuron_process(&url, "a", &args);
    wait_ready(&client, &["a"]).await;
    terminate(&mut b).await;
    b = neuron_process(&url, "b", &args);
    wait_ready(&client, &["b"]).await;
    let outcomes = finish(streams).await;
    let metrics = get_text(&format!("{base}/metrics")).await;
    let resumed = metric_sum(
        &metrics,
        "cortex_stream_resumes_total{",
        "outcome=\"resumed\"",
    );
    println!("rolling restart: {resumed} resumes for 12 streams");
    let reference = &outcomes[0].text;
    all_whole_and_alike(&outcomes, Some(100), reference);
    assert!(resumed >= 1, "the drains cut some streams:\n{metrics}");
    drop((a, b));
    ingress.shutdown().await;
}

/// SmolLM2 neurons as processes: greedy streams cut by `kill -9` go on
/// on the survivor, word for word what an uninterrupted run writes (the
/// replayed tokens run at decode precision, so the KV cache is the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn greedy_smollm2_streams_survive_their_neuron_word_for_word() {
    let _serial = SERIAL.lock().await;
    let server = NatsServer::start();
    let url = server.url();
    let model = format!(
        "smollm2={}",
        cortex_testkit::models::smollm_path().display()
    );
    let smollm = |id: &'static str| neuron_daemon(&url, id, &model, &[]);
    let mut victim = smollm("victim");
    let _survivor = smollm("survivor");
    let client = connect(&url).await;
    crate::wait_beats(&client, &["victim", "survivor"], |status| {
        status
            .models
            .iter()
            .any(|m| m.model_id == "smollm2" && m.state == ModelState::Ready)
    })
    .await;
    // RUST_LOG=cortex_ingress=warn shows each resume and its pause.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let (ingress, _) = ingress_on(NatsOptions::new([url.clone()])).await;
    let base = format!("http://{}", ingress.addr);
    let prompt = "Write a short poem about the sea.";
    let reference = {
        let base = base.clone();
        tokio::task::spawn_blocking(move || request_model(&base, "smollm2", prompt, false, 96))
            .await
            .unwrap()
    };
    assert!(reference.done, "{reference:?}");

    let (streams, streaming) = spawn_streams(12, {
        let base = base.clone();
        move |streaming| request_model_counted(&base, "smollm2", prompt, true, 96, Some(streaming))
    });
    streaming.reach(12).await;
    victim.kill();
    let outcomes = finish(streams).await;
    let metrics = get_text(&format!("{base}/metrics")).await;
    let resumed = metric_sum(
        &metrics,
        "cortex_stream_resumes_total{",
        "outcome=\"resumed\"",
    );
    let gaps: Vec<Duration> = outcomes.iter().map(|o| o.longest_gap).collect();
    println!("{resumed} of 12 SmolLM2 streams resumed; longest pauses {gaps:?}");
    all_whole_and_alike(&outcomes, None, &reference.text);
    assert!(resumed >= 1, "some streams were on the victim:\n{metrics}");
    // The survivor serves the same prompt: its prefix cache holds the
    // prompt's KV from the moment its own streams computed it, so a resume
    // computes only the tokens already sent.
    for gap in &gaps {
        assert!(*gap < Duration::from_secs(3), "resume gap {gap:?}");
    }
    ingress.shutdown().await;
}

/// `n` copies of `request`, each on a blocking thread, started together,
/// and what counts the ones under way.
fn spawn_streams(
    n: usize,
    request: impl Fn(&Streaming) -> crate::Outcome + Clone + Send + 'static,
) -> (Vec<tokio::task::JoinHandle<crate::Outcome>>, Streaming) {
    let streaming = Streaming::default();
    let handles = (0..n)
        .map(|_| {
            let request = request.clone();
            let streaming = streaming.clone();
            tokio::task::spawn_blocking(move || request(&streaming))
        })
        .collect();
    (handles, streaming)
}

async fn finish(streams: Vec<tokio::task::JoinHandle<crate::Outcome>>) -> Vec<crate::Outcome> {
    let mut outcomes = Vec::new();
    for stream in streams {
        outcomes.push(stream.await.unwrap());
    }
    outcomes
}

/// Every stream ended with its `[DONE]`, no error, `deltas` content
/// deltas (when given) and the text `reference`.
fn all_whole_and_alike(outcomes: &[crate::Outcome], deltas: Option<usize>, reference: &str) {
    for outcome in outcomes {
        assert!(outcome.done && outcome.error.is_none(), "{outcome:#?}");
        if let Some(deltas) = deltas {
            assert_eq!(outcome.deltas, deltas, "whole stream: {outcome:?}");
        }
        assert_eq!(
            outcome.text, reference,
            "same text as an uninterrupted run: {outcome:?}"
        );
    }
}

/// The sum of the series of `family` whose labels contain `label`.
fn metric_sum(metrics: &str, family: &str, label: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(family) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
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
    // Kill the victim once it holds requests (its first token is 30 s off).
    crate::wait_beats(&client, &["victim"], |status| {
        status
            .models
            .iter()
            .any(|m| m.slots_busy + m.queue_depth > 0)
    })
    .await;
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
    load(&client, "m", Some("island")).await;
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
    let kept = loop {
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
            break holders[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "not reconciled: holders {holders:?}, assigned {assigned:?}, island back {island_back}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The island came back holding its copy, so one of the two went: the
    // least recently used. Which one is a race: a request routed to the
    // island just before the server dropped it waits in the cut link and
    // reaches the island when the link heals, making its copy the newer.
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
    let gone = if kept == "island" {
        "mainland"
    } else {
        "island"
    };
    assert!(
        seen.iter().any(|n| n == gone),
        "kept {kept}, unloaded {seen:?}"
    );
    assert!(!seen.contains(&kept), "kept {kept}, unloaded {seen:?}");
    let after = request_chat(&base, true, 8);
    assert!(after.done, "{after:?}");
    ingress.shutdown().await;
    island.shutdown().await;
    mainland.shutdown().await;
    p.shutdown().await;
}
