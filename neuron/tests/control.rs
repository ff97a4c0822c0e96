//! The `cortex-neuron` micro service, heartbeats, metrics and the directed
//! subject, with the sim engine over a real nats-server.

mod support;

use std::time::Duration;

use cortex_schemas::{ErrorClass, ModelState, NeuronState};
use cortex_testkit::{eventually, NatsServer};
use futures::StreamExt;
use serde_json::json;
use support::*;

fn load_body(id: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut profile = json!({ "id": id, "source": "sim" });
    if let (Some(p), Some(e)) = (profile.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    json!({ "profile": profile })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_ping_and_info_list_cortex_neuron_with_its_endpoints() {
    let server = NatsServer::start();
    let a = start(sim_config(&server, "a")).await;
    let b = start(sim_config(&server, "b")).await;
    let client = connect(&server.url()).await;

    let pings = gather(
        &client,
        "$SRV.PING.cortex-neuron",
        Duration::from_millis(500),
    )
    .await;
    let mut neurons: Vec<&str> = pings
        .iter()
        .map(|p| {
            assert_eq!(p["name"], "cortex-neuron");
            assert_eq!(p["type"], "io.nats.micro.v1.ping_response");
            p["metadata"]["neuron"].as_str().unwrap()
        })
        .collect();
    neurons.sort();
    assert_eq!(neurons, ["a", "b"]);

    let infos = gather(
        &client,
        "$SRV.INFO.cortex-neuron",
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(infos.len(), 2);
    for info in &infos {
        let neuron = info["metadata"]["neuron"].as_str().unwrap();
        let mut endpoints: Vec<(String, String)> = info["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["subject"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        endpoints.sort();
        let expected: Vec<(String, String)> = ["drain", "load", "status", "unload"]
            .iter()
            .map(|op| (op.to_string(), format!("cortex.v1.neuron.{neuron}.{op}")))
            .collect();
        assert_eq!(endpoints, expected);
    }
    let stats = gather(
        &client,
        "$SRV.STATS.cortex-neuron",
        Duration::from_millis(500),
    )
    .await;
    assert_eq!(stats.len(), 2);
    tokio::join!(a.shutdown(), b.shutdown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_serve_status_and_unload_over_nats() {
    let server = NatsServer::start();
    let neuron = start(sim_config(&server, "n")).await;
    let client = connect(&server.url()).await;

    let reply = control(
        &client,
        "n",
        "load",
        load_body("sim.chat", json!({"vram_mb": 256})),
    )
    .await;
    assert_eq!(reply["ok"]["model_id"], "sim.chat", "{reply}");
    assert_eq!(reply["ok"]["memory_bytes"], 256 << 20);
    // Loading again is answered at once from the ready model.
    let again = control(&client, "n", "load", load_body("sim.chat", json!({}))).await;
    assert_eq!(again["ok"]["model_id"], "sim.chat");

    let answer = collect(
        send(
            &client,
            &infer_subject("sim.chat"),
            &chat("r1", "sim.chat", "hi", 5),
        )
        .await,
    )
    .await;
    assert_eq!(answer.error, None);
    assert_eq!(answer.done.unwrap().usage.completion_tokens, 5);

    let status = control(&client, "n", "status", json!({})).await;
    assert_eq!(status["ok"]["neuron_id"], "n");
    assert_eq!(status["ok"]["models"][0]["state"], "ready");
    assert!(status["ok"]["models"][0]["last_used_ms"].as_u64().is_some());

    let unloaded = control(&client, "n", "unload", json!({"model_id": "sim.chat"})).await;
    assert_eq!(unloaded["ok"]["cancelled"], 0, "{unloaded}");
    let status = control(&client, "n", "status", json!({})).await;
    assert_eq!(status["ok"]["models"], json!([]));
    let gone = collect(
        send(
            &client,
            &infer_subject("sim.chat"),
            &chat("r2", "sim.chat", "hi", 5),
        )
        .await,
    )
    .await;
    assert!(gone.failure.unwrap().contains("NoResponders"));
    neuron.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_that_do_not_fit_are_refused_and_concurrent_loads_are_one() {
    let server = NatsServer::start();
    let mut config = sim_config(&server, "small");
    config.sim_gpus = vec![1 << 30];
    config.sim_load_time = Duration::from_millis(400);
    let neuron = start(config).await;
    let client = connect(&server.url()).await;
    let mut events = client.subscribe("cortex.v1.events.model.>").await.unwrap();

    let too_big = control(
        &client,
        "small",
        "load",
        load_body("big", json!({"vram_mb": 2048})),
    )
    .await;
    assert_eq!(too_big["error"]["class"], "unavailable", "{too_big}");
    assert!(
        too_big["error"]["message"]
            .as_str()
            .unwrap()
            .contains("needs 2.0 GiB"),
        "{too_big}"
    );

    // Five loads of one model at once: one load, five ready replies.
    let loads = (0..5).map(|_| {
        let client = client.clone();
        async move {
            control(
                &client,
                "small",
                "load",
                load_body("m", json!({"vram_mb": 600})),
            )
            .await
        }
    });
    let loads = tokio::spawn(futures::future::join_all(loads));
    // While it loads, heartbeats show its state and progress.
    eventually("loading progress", Duration::from_secs(5), || async {
        let status = neuron.status();
        let model = status.models.iter().find(|m| m.model_id == "m")?;
        assert_eq!(model.state, ModelState::Loading);
        model.load_progress.filter(|p| *p > 0.0 && *p < 1.0)
    })
    .await;
    for reply in loads.await.unwrap() {
        assert_eq!(reply["ok"]["model_id"], "m", "{reply}");
    }
    // A second 600 MiB model no longer fits in the 1 GiB device.
    let second = control(
        &client,
        "small",
        "load",
        load_body("m2", json!({"vram_mb": 600})),
    )
    .await;
    assert_eq!(second["error"]["class"], "unavailable", "{second}");

    let mut kinds = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(300), events.next()).await
    {
        let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        kinds.push(format!(
            "{}:{}",
            event["detail"]["kind"].as_str().unwrap(),
            event["detail"]["model"].as_str().unwrap()
        ));
    }
    let loading_m = kinds.iter().filter(|k| *k == "model.loading:m").count();
    assert_eq!(loading_m, 1, "{kinds:?}");
    assert!(kinds.contains(&"model.ready:m".to_string()), "{kinds:?}");
    neuron.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unload_is_refused_while_busy_unless_forced() {
    let server = NatsServer::start();
    let mut config = sim_config(&server, "busy");
    config.sim_tokens_per_second = 10.0;
    config.models = vec!["slow=sim".into()];
    let neuron = start(config).await;
    wait_ready(&neuron, "slow").await;
    let client = connect(&server.url()).await;

    let stream = send(
        &client,
        &infer_subject("slow"),
        &chat("long", "slow", "hi", 100),
    )
    .await;
    let in_flight = tokio::spawn(collect(stream));
    eventually("the request in flight", Duration::from_secs(5), || async {
        let status = neuron.status();
        (status.models[0].slots_busy == 1).then_some(())
    })
    .await;

    let refused = control(&client, "busy", "unload", json!({"model_id": "slow"})).await;
    assert_eq!(refused["error"]["class"], "unavailable");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("in flight"),
        "{refused}"
    );
    let forced = control(
        &client,
        "busy",
        "unload",
        json!({"model_id": "slow", "force": true}),
    )
    .await;
    assert_eq!(forced["ok"]["cancelled"], 1, "{forced}");
    let answer = in_flight.await.unwrap();
    assert_eq!(answer.error.map(|e| e.class), Some(ErrorClass::Cancelled));
    neuron.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_control_requests_get_clear_errors() {
    let server = NatsServer::start();
    let neuron = start(sim_config(&server, "strict")).await;
    let client = connect(&server.url()).await;

    let reply = client
        .request("cortex.v1.neuron.strict.load", "{not json".into())
        .await
        .unwrap();
    let headers = reply.headers.clone().expect("error headers");
    assert_eq!(
        headers.get("Nats-Service-Error-Code").map(|v| v.as_str()),
        Some("400")
    );
    let body: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(body["error"]["class"], "invalid_request");

    let bad_id = control(&client, "strict", "load", load_body("a b", json!({}))).await;
    assert_eq!(bad_id["error"]["class"], "invalid_request", "{bad_id}");
    let missing = control(&client, "strict", "unload", json!({"model_id": "nope"})).await;
    assert_eq!(missing["error"]["class"], "model_not_found");
    let no_file = {
        let mut config = config(&server, "real");
        config.metrics_listen = "off".into();
        let real = start(config).await;
        let reply = control(
            &client,
            "real",
            "load",
            json!({"profile": {"id": "x", "source": "/no/such/model.gguf"}}),
        )
        .await;
        real.shutdown().await;
        reply
    };
    assert_eq!(no_file["error"]["class"], "unavailable", "{no_file}");
    assert!(no_file["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/no/such/model.gguf"));
    assert!(
        neuron.status().models.is_empty(),
        "bad input changes nothing"
    );
    neuron.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_are_plain_json_and_metrics_and_health_answer() {
    let server = NatsServer::start();
    let mut config = sim_config(&server, "hb");
    config.models = vec!["m=sim".into()];
    config.metrics_listen = "127.0.0.1:0".into();
    let neuron = start(config).await;
    wait_ready(&neuron, "m").await;
    let client = connect(&server.url()).await;

    let (json, status) = eventually("a ready heartbeat", Duration::from_secs(10), || async {
        let (json, status) = heartbeat(&client, "hb").await;
        (status.state == NeuronState::Ready).then_some((json, status))
    })
    .await;
    assert_eq!(json["neuron_id"], "hb");
    assert_eq!(json["engine"], "sim");
    assert_eq!(json["interval_ms"], 200);
    assert!(json["devices"][0]["memory_total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(json["models"][0]["model_id"], "m");
    assert_eq!(json["models"][0]["state"], "ready");
    assert_eq!(json["models"][0]["slots_total"], 4);
    assert_eq!(status.models[0].state, ModelState::Ready);

    // Directed subject: the held model is served, another is named as missing.
    let answer = collect(
        send(
            &client,
            "cortex.v1.neuron.hb.infer",
            &chat("d1", "m", "hi", 3),
        )
        .await,
    )
    .await;
    assert_eq!(answer.done.map(|d| d.usage.completion_tokens), Some(3));
    let missing = collect(
        send(
            &client,
            "cortex.v1.neuron.hb.infer",
            &chat("d2", "other", "hi", 3),
        )
        .await,
    )
    .await;
    assert_eq!(
        missing.error.map(|e| e.class),
        Some(ErrorClass::ModelNotFound)
    );

    let addr = neuron.metrics_addr().expect("metrics enabled");
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "cortex_slots_total{neuron=\"hb\",model=\"m\"} 4",
        "cortex_neuron_requests_total{neuron=\"hb\",model=\"m\",outcome=\"ok\"} 1",
        "cortex_neuron_generated_tokens_total{neuron=\"hb\",model=\"m\"} 3",
        "cortex_model_state{neuron=\"hb\",model=\"m\",state=\"ready\"} 1",
    ] {
        assert!(body.contains(line), "{line} missing from:\n{body}");
    }
    assert!(
        body.contains("cortex_vram_total_bytes{neuron=\"hb\",device=\"cpu:0\""),
        "{body}"
    );
    let (code, body) = http_get(addr, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"nats\":\"connected\""), "{body}");
    neuron.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_is_accepted_with_its_position_and_kept_alive() {
    let server = NatsServer::start();
    let mut config = sim_config(&server, "q");
    config.models = vec!["m=sim".into()];
    config.max_concurrency = 1;
    config.max_queue = 1;
    config.sim_tokens_per_second = 10.0;
    let neuron = start(config).await;
    wait_ready(&neuron, "m").await;
    let client = connect(&server.url()).await;

    let first = send(&client, &infer_subject("m"), &chat("first", "m", "hi", 25)).await;
    let first = tokio::spawn(collect(first));
    eventually("the slot taken", Duration::from_secs(5), || async {
        (neuron.status().models[0].slots_busy == 1).then_some(())
    })
    .await;
    let mut queued = send(&client, &infer_subject("m"), &chat("second", "m", "hi", 2)).await;
    let mut keepalives = Vec::new();
    let mut accepted = None;
    while let Some(frame) = queued.next().await {
        match frame.expect("no stream error") {
            cortex_schemas::Frame::Accepted(a) => accepted = Some(a),
            cortex_schemas::Frame::Keepalive(k) => keepalives.push(k.queue_position),
            cortex_schemas::Frame::Delta(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(accepted.map(|a| a.queue_position), Some(1));
    assert!(
        keepalives.contains(&Some(1)),
        "keepalives while queued: {keepalives:?}"
    );
    assert!(first.await.unwrap().done.is_some());
    neuron.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_model_resumes_on_load_and_bad_requests_are_refused() {
    let server = NatsServer::start();
    let mut config = sim_config(&server, "r");
    config.models = vec!["m=sim".into()];
    let neuron = start(config).await;
    wait_ready(&neuron, "m").await;
    let client = connect(&server.url()).await;

    let drained = control(&client, "r", "drain", json!({"model_id": "m"})).await;
    assert_eq!(drained["ok"]["finished"], 0, "{drained}");
    assert_eq!(neuron.status().models[0].state, ModelState::Draining);
    let nobody = collect(send(&client, &infer_subject("m"), &chat("x", "m", "hi", 2)).await).await;
    assert!(nobody.failure.unwrap().contains("NoResponders"));
    let directed = collect(
        send(
            &client,
            "cortex.v1.neuron.r.infer",
            &chat("y", "m", "hi", 2),
        )
        .await,
    )
    .await;
    assert_eq!(
        directed.error.map(|e| e.class),
        Some(ErrorClass::Unavailable)
    );

    let resumed = control(&client, "r", "load", load_body("m", json!({}))).await;
    assert_eq!(resumed["ok"]["model_id"], "m", "{resumed}");
    let served = collect(send(&client, &infer_subject("m"), &chat("z", "m", "hi", 2)).await).await;
    assert_eq!(served.error, None);
    assert!(served.done.is_some());

    // An empty request id could not be cancelled on its own: refused.
    let anonymous =
        collect(send(&client, &infer_subject("m"), &chat("", "m", "hi", 2)).await).await;
    let error = anonymous.error.expect("refused");
    assert_eq!(error.class, ErrorClass::InvalidRequest);
    assert!(error.message.contains("request_id"));
    // Garbage on the subject gets an error frame, not silence.
    let garbage = cortex_bus::stream_request(
        &client,
        infer_subject("m"),
        &json!({"op": "dance"}),
        &cortex_bus::StreamOptions::default(),
    )
    .await
    .unwrap();
    let garbage = collect(garbage).await;
    assert_eq!(
        garbage.error.map(|e| e.class),
        Some(ErrorClass::InvalidRequest)
    );
    neuron.shutdown().await;
}

/// Two neurons with one id would take each other's loads: the second
/// refuses to start, with a message naming the flag; once the first is
/// gone the id is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_neuron_with_the_same_id_refuses_to_start() {
    let server = NatsServer::start();
    let first = start(sim_config(&server, "twin")).await;
    let config = sim_config(&server, "twin");
    let client = config.nats.connect("cortex-neuron-test").await.unwrap();
    let Err(error) = cortex_neuron::Neuron::start(config, client).await else {
        panic!("a second neuron called twin started");
    };
    assert!(
        matches!(error, cortex_neuron::NeuronError::DuplicateId(ref id) if id == "twin"),
        "{error}"
    );
    assert!(error.is_config());
    assert!(error.to_string().contains("--id"), "{error}");
    first.shutdown().await;
    let again = start(sim_config(&server, "twin")).await;
    again.shutdown().await;
}
