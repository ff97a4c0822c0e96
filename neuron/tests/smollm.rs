//! A neuron serving the real SmolLM2-135M-Instruct and all-MiniLM-L6-v2
//! over a real nats-server: answers, sharing between replicas, cancel,
//! overload, embeddings.

mod support;

use std::time::{Duration, Instant};

use cortex_bus::{send_cancel, Subjects};
use cortex_schemas::{EmbedRequest, ErrorClass, FinishReason, Frame, InferRequest};
use cortex_testkit::NatsServer;
use futures::StreamExt;
use support::*;

fn smollm_spec() -> String {
    format!("smollm2={}", smollm_path().display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm_answers_a_streamed_request_on_the_queue_subject() {
    let server = NatsServer::start();
    let mut config = config(&server, "n1");
    config.models = vec![smollm_spec()];
    let neuron = start(config).await;
    wait_ready(&neuron, "smollm2").await;
    let client = connect(&server.url()).await;

    let request = chat("paris-1", "smollm2", "What is the capital of France?", 24);
    let answer = collect(send(&client, &infer_subject("smollm2"), &request).await).await;

    assert_eq!(answer.failure, None);
    assert_eq!(answer.error, None);
    let accepted = answer.accepted.as_ref().expect("Accepted first");
    assert_eq!(accepted.neuron, "n1");
    assert_eq!(accepted.request_id, "paris-1");
    assert!(answer.text.contains("Paris"), "{:?}", answer.text);
    let done = answer.done.expect("Done last");
    assert!(done.usage.prompt_tokens > 5, "{done:?}");
    assert!(done.usage.completion_tokens > 0, "{done:?}");
    assert!(
        done.timings.prefill_ms + done.timings.decode_ms > 0,
        "{done:?}"
    );
    assert!(matches!(
        done.finish_reason,
        FinishReason::Stop | FinishReason::Length
    ));
    // The heartbeat's batch KV: one window of budget (the footprint's),
    // the answer's KV held at its peak, none once it ended.
    let status = neuron.status();
    let kv = status.models[0].batch_kv.expect("a batch KV status");
    let prefix = status.models[0].prefix_cache.expect("a prefix cache");
    assert_eq!(kv.budget_tokens, 8192, "{kv:?}");
    // The prefix cache's default budget is one window too, in bytes.
    assert_eq!(prefix.budget_bytes % kv.budget_tokens, 0, "{prefix:?}");
    let used = u64::from(done.usage.prompt_tokens + done.usage.completion_tokens);
    assert!(kv.peak_tokens + 1 >= used, "{kv:?} after {used} tokens");
    assert_eq!((kv.tokens, kv.suspensions), (0, 0), "{kv:?}");
    neuron.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_neurons_share_twenty_concurrent_requests() {
    let server = NatsServer::start();
    let mut first = config(&server, "left");
    first.models = vec![smollm_spec()];
    let mut second = config(&server, "right");
    second.models = vec![smollm_spec()];
    let (left, right) = tokio::join!(start(first), start(second));
    wait_ready(&left, "smollm2").await;
    wait_ready(&right, "smollm2").await;
    let client = connect(&server.url()).await;

    let subject = infer_subject("smollm2");
    let mut streams = Vec::new();
    for i in 0..20 {
        let request = chat(&format!("share-{i}"), "smollm2", "Say hello.", 4);
        streams.push(send(&client, &subject, &request).await);
    }
    let answers = futures::future::join_all(streams.into_iter().map(collect)).await;
    let mut served = std::collections::HashMap::new();
    for answer in &answers {
        assert_eq!(answer.failure, None);
        assert_eq!(answer.error, None);
        assert!(answer.done.is_some());
        *served.entry(answer.neuron().to_string()).or_insert(0) += 1;
    }
    assert_eq!(served.len(), 2, "both neurons serve some: {served:?}");
    assert_eq!(served.values().sum::<i32>(), 20);
    tokio::join!(left.shutdown(), right.shutdown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_frees_the_slot_and_overload_is_refused_at_once() {
    let server = NatsServer::start();
    let mut config = config(&server, "solo");
    config.models = vec![smollm_spec()];
    config.max_concurrency = 1;
    config.max_queue = 0;
    let neuron = start(config).await;
    wait_ready(&neuron, "smollm2").await;
    let client = connect(&server.url()).await;
    let subject = infer_subject("smollm2");

    // A long generation takes the only slot.
    let long = chat("long", "smollm2", "Write a long story about a dragon.", 400);
    let mut stream = send(&client, &subject, &long).await;
    loop {
        match stream
            .next()
            .await
            .expect("frames")
            .expect("no stream error")
        {
            Frame::Delta(_) => break,
            Frame::Accepted(_) | Frame::Keepalive(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    // Overload: no slot, no queue: refused at once, with a retry hint.
    let started = Instant::now();
    let refused = collect(send(&client, &subject, &chat("extra", "smollm2", "Hi", 4)).await).await;
    let waited = started.elapsed();
    let error = refused.error.expect("refused");
    assert_eq!(error.class, ErrorClass::Overloaded);
    assert!(error.retry_after_ms.is_some());
    assert!(refused.accepted.is_none(), "refused before acceptance");
    assert!(waited < Duration::from_millis(500), "refused in {waited:?}");

    // Cancel: the slot is free for the next request at once.
    send_cancel(&client, &Subjects::default(), "solo", "long")
        .await
        .unwrap();
    let rest = collect(stream).await;
    assert_eq!(rest.error.map(|e| e.class), Some(ErrorClass::Cancelled));
    let started = Instant::now();
    let next = collect(send(&client, &subject, &chat("next", "smollm2", "Hi", 2)).await).await;
    assert_eq!(next.error, None, "the slot was freed");
    assert_eq!(next.accepted.as_ref().map(|a| a.queue_position), Some(0));
    assert!(next.done.is_some());
    assert!(started.elapsed() < Duration::from_secs(10));
    neuron.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_embeds_on_the_same_subjects() {
    let server = NatsServer::start();
    let mut config = config(&server, "emb");
    config.models = vec![format!("minilm={}", minilm_dir().display())];
    let neuron = start(config).await;
    wait_ready(&neuron, "minilm").await;
    let client = connect(&server.url()).await;

    let request = InferRequest::Embed(EmbedRequest {
        request_id: "e1".into(),
        model: "minilm".into(),
        inputs: vec!["The capital of France is Paris.".into(), "Bonjour".into()],
        normalize: true,
        truncate: false,
        deadline_ms: None,
    });
    let answer = collect(send(&client, &infer_subject("minilm"), &request).await).await;
    assert_eq!(answer.error, None);
    let embeddings = answer.embeddings.expect("Embeddings frame");
    assert_eq!(embeddings.embeddings.len(), 2);
    assert_eq!(embeddings.embeddings[0].len(), 384);
    let norm: f32 = embeddings.embeddings[0].iter().map(|x| x * x).sum();
    assert!((norm - 1.0).abs() < 1e-3);
    assert!(embeddings.usage.prompt_tokens > 0);

    // The wrong operation for the model is a clear error, not a hang.
    let wrong = collect(
        send(
            &client,
            &infer_subject("minilm"),
            &chat("c", "minilm", "Hi", 2),
        )
        .await,
    )
    .await;
    let error = wrong.error.expect("refused");
    assert_eq!(error.class, ErrorClass::InvalidRequest);
    assert!(error.message.contains("embedding model"), "{error:?}");
    neuron.shutdown().await;
}
