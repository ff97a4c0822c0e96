//! Cold start on demand: a request for a model no neuron holds is served
//! after placement loads it, and 20 concurrent first requests through two
//! placement replicas cause exactly one load.

mod support;

use std::time::Duration;

use cortex_bus::PlacementOp;
use cortex_schemas::{EnsureReply, EnsureRequest, ErrorClass};
use cortex_testkit::NatsServer;
use serde_json::json;
use support::*;

const CATALOG: &str = r#"
[[model]]
id = "m"
aliases = ["m-alias"]
source = "sim"
vram_mb = 300
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_first_requests_through_two_replicas_cause_one_load() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(dir.path(), CATALOG);
    let p1 = placement(placement_config(&server, "p1", Some(&file))).await;
    let p2 = placement(placement_config(&server, "p2", Some(&file))).await;
    let n1 = sim_neuron(&server, "n1", |c| {
        c.sim_load_time = Duration::from_millis(500)
    })
    .await;
    let n2 = sim_neuron(&server, "n2", |c| {
        c.sim_load_time = Duration::from_millis(500)
    })
    .await;
    let ingress = ingress(&server).await;
    let base = format!("http://{}", ingress.addr);
    let client = connect(&server.url()).await;
    let mut events = record_events(&client).await;
    // Both replicas see both neurons before the burst.
    until("fleet seen", Duration::from_secs(10), || {
        p1.shared().fleet.live().len() == 2 && p2.shared().fleet.live().len() == 2
    })
    .await;

    let mut calls = Vec::new();
    for _ in 0..20 {
        let base = base.clone();
        calls.push(tokio::spawn(
            async move { chat(&base, "m", json!({})).await },
        ));
    }
    for call in calls {
        let answer = call.await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(!answer.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .is_empty());
    }
    let seen = events_until(&mut events, "m ready", Duration::from_secs(5), |seen| {
        count_kind(seen, "model.ready", "m") >= 1
    })
    .await;
    assert_eq!(count_kind(&seen, "model.loading", "m"), 1, "{seen:#?}");
    assert_eq!(count_kind(&seen, "model.ready", "m"), 1);
    let on = ready_on(&client, "m").await;
    assert_eq!(on.len(), 1, "one copy: {on:?}");
    // The assignment in KV says where, and that it is ready.
    let status = status(&client).await;
    let assignment = status
        .assignments
        .iter()
        .find(|a| a.model_id == "m")
        .unwrap();
    assert_eq!(assignment.replicas.len(), 1);
    assert_eq!(assignment.replicas[0].neuron, on[0]);

    // ensure on a loaded model (by alias) answers at once, without a cold start.
    let reply: EnsureReply = placement_call(
        &client,
        PlacementOp::Ensure,
        &EnsureRequest {
            model: "m-alias".into(),
            timeout_ms: None,
        },
    )
    .await
    .unwrap();
    assert_eq!((reply.model_id.as_str(), reply.cold_start), ("m", false));

    // The ingress counted the cold start.
    let text = get_text(&format!("{base}/metrics")).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("cortex_cold_starts_total{") && !l.ends_with(" 0")),
        "{text}"
    );

    ingress.shutdown().await;
    n1.shutdown().await;
    n2.shutdown().await;
    p1.shutdown().await;
    p2.shutdown().await;
}

/// Each line of a streamed answer, with when it came (from the request).
async fn timed_lines(url: String, body: serde_json::Value) -> (u16, Vec<(Duration, String)>) {
    tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let started = std::time::Instant::now();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut response = agent
            .post(&url)
            .header("content-type", "application/json")
            .header("anthropic-version", "2023-06-01")
            .send(body.to_string())
            .expect("HTTP POST");
        let status = response.status().as_u16();
        let reader = std::io::BufReader::new(response.body_mut().as_reader());
        let lines = reader
            .lines()
            .map_while(Result::ok)
            .filter(|line| !line.is_empty())
            .map(|line| (started.elapsed(), line))
            .collect();
        (status, lines)
    })
    .await
    .unwrap()
}

/// The percentages of `: loading <model>: N%` comments, in order.
fn load_percentages(lines: &[(Duration, String)], model: &str) -> Vec<u32> {
    let prefix = format!(": loading {model}: ");
    lines
        .iter()
        .filter_map(|(_, line)| line.strip_prefix(&prefix)?.strip_suffix('%')?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cold_loading_stream_shows_the_load_before_its_first_token() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(
        dir.path(),
        "[[model]]\nid = \"m\"\nsource = \"sim\"\nvram_mb = 300\n\n\
         [[model]]\nid = \"a\"\nsource = \"sim\"\nvram_mb = 300\n",
    );
    let p = placement(placement_config(&server, "p1", Some(&file))).await;
    let n = sim_neuron(&server, "n1", |c| c.sim_load_time = Duration::from_secs(3)).await;
    let ingress = ingress(&server).await;
    let base = format!("http://{}", ingress.addr);
    until("neuron seen", Duration::from_secs(10), || {
        p.shared().fleet.live().len() == 1
    })
    .await;
    // Ingress streams early only for models its catalogue view knows.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let models = get_text(&format!("{base}/v1/models")).await;
        if models.contains("\"a\"") && models.contains("\"m\"") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "catalogue not seen: {models}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // OpenAI: the stream begins while the model loads, with comments
    // telling the load's progress, then the answer as usual.
    let body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 8,
        "stream": true,
    });
    let (status, lines) = timed_lines(format!("{base}/v1/chat/completions"), body).await;
    assert_eq!(status, 200, "{lines:?}");
    let first_data = lines
        .iter()
        .position(|(_, line)| line.starts_with("data: "))
        .expect("data");
    let before: Vec<_> = lines[..first_data].iter().collect();
    println!("before the first token: {before:?}");
    assert!(
        before.len() >= 2 && before[0].0 < Duration::from_millis(2500),
        "progress is shown while the 3 s load runs: {lines:?}"
    );
    assert!(
        before.iter().all(|(_, l)| l.starts_with(": loading m")),
        "{before:?}"
    );
    let percentages = load_percentages(&lines, "m");
    assert!(!percentages.is_empty(), "{lines:?}");
    assert!(
        percentages.windows(2).all(|w| w[0] <= w[1]),
        "{percentages:?}"
    );
    assert_eq!(lines.last().unwrap().1, "data: [DONE]");

    // Anthropic: `ping` events (with the same comments) until
    // `message_start`; the SDKs skip pings.
    let body = json!({
        "model": "a",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 8,
        "stream": true,
    });
    let (status, lines) = timed_lines(format!("{base}/v1/messages"), body).await;
    assert_eq!(status, 200, "{lines:?}");
    let start = lines
        .iter()
        .position(|(_, line)| line == "event: message_start")
        .expect("message_start");
    let pings = lines[..start]
        .iter()
        .filter(|(_, line)| line == "event: ping")
        .count();
    assert!(pings >= 2, "{lines:?}");
    assert!(!load_percentages(&lines, "a").is_empty(), "{lines:?}");
    assert!(
        lines.iter().any(|(_, l)| l == "event: message_stop"),
        "{lines:?}"
    );

    ingress.shutdown().await;
    n.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_and_no_room_are_clear_errors() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = models_file(
        dir.path(),
        "[[model]]\nid = \"huge\"\nsource = \"sim\"\nvram_mb = 100000\n",
    );
    let p = placement(placement_config(&server, "p1", Some(&file))).await;
    let n = sim_neuron(&server, "n1", |c| c.sim_gpus = vec![1 << 30]).await;
    let ingress = ingress(&server).await;
    let base = format!("http://{}", ingress.addr);
    let client = connect(&server.url()).await;
    until("neuron seen", Duration::from_secs(10), || {
        p.shared().fleet.live().len() == 1
    })
    .await;

    let answer = chat(&base, "nope", json!({})).await;
    assert_eq!(answer.status, 404, "{}", answer.body);
    assert_eq!(
        answer.json()["error"]["code"],
        "model_not_found",
        "{}",
        answer.body
    );

    let answer = chat(&base, "huge", json!({})).await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.body.contains("needs"), "{}", answer.body);
    // Streamed, the same refusals keep their HTTP status: a cold-loading
    // stream begins only once placement has taken the load on.
    let answer = chat(&base, "nope", json!({"stream": true})).await;
    assert_eq!(answer.status, 404, "{}", answer.body);
    let answer = chat(&base, "huge", json!({"stream": true})).await;
    assert_eq!(answer.status, 503, "{}", answer.body);

    let error = placement_call::<_, EnsureReply>(
        &client,
        PlacementOp::Ensure,
        &EnsureRequest {
            model: "nope".into(),
            timeout_ms: Some(1000),
        },
    )
    .await
    .unwrap_err();
    let wire: cortex_schemas::WireError = error.into();
    assert_eq!(wire.class, ErrorClass::ModelNotFound);

    ingress.shutdown().await;
    n.shutdown().await;
    p.shutdown().await;
}
