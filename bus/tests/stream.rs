//! Streamed request/reply against a real nats-server.

mod support;

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use cortex_bus::codec::{Encoding, JSON, MSGPACK};
use cortex_bus::{
    headers, send_cancel, serve, stream_request, CancelRegistry, StreamError, StreamOptions,
    Subjects,
};
use cortex_schemas::{Accepted, Delta, ErrorClass, Frame, GenerateInput, InferRequest};
use cortex_testkit::{NatsServer, ServerOptions};
use futures::StreamExt;
use support::{accepted, connect, drain, generate, server_with_echo, spawn_echo, Echo};

fn options(keepalive_ms: u64) -> StreamOptions {
    StreamOptions {
        keepalive: Duration::from_millis(keepalive_ms),
        ..StreamOptions::default()
    }
}

#[tokio::test]
async fn ten_thousand_frames_arrive_complete_and_in_order() {
    let (_server, client) = server_with_echo("t.echo", Echo::new("n1")).await;

    let stream = stream_request(&client, "t.echo", &generate("r1", 10_000), &options(1000))
        .await
        .unwrap();
    let (frames, error) = drain(stream).await;
    assert!(error.is_none(), "stream failed: {error:?}");
    assert_eq!(frames.len(), 10_002, "accepted + 10,000 deltas + done");
    assert!(matches!(&frames[0], Frame::Accepted(a) if a.neuron == "n1"));
    for (i, frame) in frames[1..10_001].iter().enumerate() {
        match frame {
            Frame::Delta(delta) => assert_eq!(delta.text, format!("t{i} ")),
            other => panic!("frame {i} is {other:?}"),
        }
    }
    assert!(matches!(frames.last(), Some(Frame::Done(d)) if d.usage.completion_tokens == 10_000));
}

/// A raw responder that publishes the given sequence numbers, to fake loss.
async fn raw_responder(client: async_nats::Client, subject: &str, seqs: Vec<u64>) {
    let mut requests = serve(&client, subject, None).await.unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = requests.next().await {
            let reply = incoming.message.reply.clone().unwrap();
            for seq in &seqs {
                let frame = if *seq == 0 {
                    accepted("raw", "r")
                } else {
                    Frame::Delta(Delta {
                        text: format!("s{seq}"),
                        tokens: 1,
                        ..Delta::default()
                    })
                };
                let mut headers = incoming.encoding.headers();
                headers.insert(headers::SEQ, seq.to_string().as_str());
                let payload = incoming.encoding.encode(&frame).unwrap();
                client
                    .publish_with_headers(reply.clone(), headers, payload)
                    .await
                    .unwrap();
            }
            client.flush().await.unwrap();
        }
    });
}

#[tokio::test]
async fn a_dropped_frame_is_reported_as_a_gap() {
    let server = NatsServer::start();
    let client = connect(&[server.url()]).await;
    raw_responder(client.clone(), "t.gap", vec![0, 1, 3, 4]).await;

    let stream = stream_request(&client, "t.gap", &generate("r", 1), &options(1000))
        .await
        .unwrap();
    let (frames, error) = drain(stream).await;
    assert_eq!(frames.len(), 2, "frames before the gap are delivered");
    assert!(
        matches!(
            error,
            Some(StreamError::SequenceGap {
                expected: 2,
                got: 3
            })
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_responder_that_dies_mid_stream_is_reported_after_the_idle_limit() {
    let server = NatsServer::start();
    let requester = connect(&[server.url()]).await;
    let responder = connect(&[server.url()]).await;
    // Sends Accepted and one delta, then goes silent like a killed process.
    raw_responder(responder, "t.dies", vec![0, 1]).await;

    let keepalive = Duration::from_millis(200);
    let mut stream = stream_request(&requester, "t.dies", &generate("r", 5), &options(200))
        .await
        .unwrap();
    let first = stream.next().await;
    assert!(matches!(first, Some(Ok(Frame::Accepted(_)))), "{first:?}");
    let second = stream.next().await;
    assert!(matches!(second, Some(Ok(Frame::Delta(_)))), "{second:?}");
    let silent_since = Instant::now();
    let item = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream must end by itself, not hang");
    let waited = silent_since.elapsed();
    assert!(
        matches!(item, Some(Err(StreamError::Idle { .. }))),
        "{item:?}"
    );
    assert!(
        waited >= cortex_bus::stream::idle_limit(keepalive) - Duration::from_millis(20),
        "too early: {waited:?}"
    );
    assert!(
        waited < cortex_bus::stream::idle_limit(keepalive) + Duration::from_millis(400),
        "too late: {waited:?}"
    );
    assert!(stream.next().await.is_none(), "nothing after the failure");
}

#[tokio::test]
async fn keepalives_carry_a_slow_prefill() {
    let echo = Echo {
        initial_delay: Duration::from_millis(800),
        ..Echo::new("slow")
    };
    let (_server, client) = server_with_echo("t.slow", echo).await;

    // 100 ms keepalive: 800 ms of prefill is 8 periods, far past the 2.5-period limit.
    let stream = stream_request(&client, "t.slow", &generate("r", 2), &options(100))
        .await
        .unwrap();
    let (frames, error) = drain(stream).await;
    assert!(error.is_none(), "{error:?}");
    let keepalives = frames
        .iter()
        .filter(|f| matches!(f, Frame::Keepalive(_)))
        .count();
    assert!(
        keepalives >= 5,
        "expected keepalives during prefill, got {keepalives}"
    );
    assert!(matches!(frames.last(), Some(Frame::Done(_))));
}

#[tokio::test]
async fn a_responder_dropped_before_finishing_sends_an_error_frame() {
    let server = NatsServer::start();
    let client = connect(&[server.url()]).await;
    let mut requests = serve(&client, "t.drop", None).await.unwrap();
    let server_client = client.clone();
    tokio::spawn(async move {
        while let Some(incoming) = requests.next().await {
            let responder = incoming.responder(&server_client, None).unwrap();
            responder.send(&accepted("n", "r")).await.unwrap();
            drop(responder); // a handler that returns early
        }
    });

    let started = Instant::now();
    let stream = stream_request(&client, "t.drop", &generate("r", 1), &options(1000))
        .await
        .unwrap();
    let (frames, error) = drain(stream).await;
    assert!(error.is_none(), "{error:?}");
    assert!(
        matches!(frames.last(), Some(Frame::Error(e)) if e.class == ErrorClass::Internal),
        "{frames:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "should not wait for the idle timeout"
    );
}

#[tokio::test]
async fn no_responders_is_reported_within_100ms() {
    let server = NatsServer::start();
    let client = connect(&[server.url()]).await;
    // Warm the connection so the measurement is of the protocol, not of setup.
    client.flush().await.unwrap();

    let started = Instant::now();
    let mut stream = stream_request(&client, "t.nobody", &generate("r", 1), &options(1000))
        .await
        .unwrap();
    let item = stream.next().await;
    let elapsed = started.elapsed();
    assert!(
        matches!(&item, Some(Err(StreamError::NoResponders { subject })) if subject == "t.nobody"),
        "{item:?}"
    );
    assert!(elapsed < Duration::from_millis(100), "took {elapsed:?}");
}

#[tokio::test]
async fn an_oversized_payload_is_refused_before_publishing() {
    let server = NatsServer::with_options(ServerOptions {
        max_payload: Some(4096),
        ..ServerOptions::default()
    });
    let client = connect(&[server.url()]).await;
    let mut watcher = client.subscribe("t.big").await.unwrap();
    client.flush().await.unwrap();

    let mut request = generate("r", 1);
    if let InferRequest::Generate(g) = &mut request {
        g.input = GenerateInput::Text {
            prompt: "x".repeat(8000),
        };
    }
    let result = stream_request(&client, "t.big", &request, &options(1000)).await;
    match result {
        Err(StreamError::PayloadTooLarge { size, max }) => {
            assert_eq!(max, 4096);
            assert!(size > 8000, "size counts the payload and headers: {size}");
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    client.flush().await.unwrap();
    let leaked = tokio::time::timeout(Duration::from_millis(200), watcher.next()).await;
    assert!(leaked.is_err(), "nothing may reach the subject");

    // A request that fits still goes through the same path.
    let fits = stream_request(&client, "t.big", &generate("r2", 1), &options(1000)).await;
    assert!(fits.is_ok());
}

#[tokio::test]
async fn a_json_request_is_answered_in_json_and_msgpack_in_msgpack() {
    let (_server, client) = server_with_echo("t.codec", Echo::new("n")).await;

    // What `nats req t.codec '{...}'` sends: a bare JSON payload, no headers.
    let body = serde_json::json!({
        "op": "generate", "request_id": "cli", "model": "echo",
        "input": {"kind": "text", "prompt": "hi"}, "max_tokens": 1
    });
    let reply = client
        .request("t.codec", Bytes::from(body.to_string()))
        .await
        .unwrap();
    let content_type = headers::get_str(reply.headers.as_ref(), headers::CONTENT_TYPE);
    assert_eq!(content_type, Some(JSON));
    let first: serde_json::Value = serde_json::from_slice(&reply.payload).expect("JSON reply");
    assert_eq!(first["type"], "accepted");
    assert_eq!(first["request_id"], "cli");

    // A MessagePack request: every frame comes back as MessagePack.
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    let payload = Encoding::MsgPack.encode(&generate("mp", 2)).unwrap();
    let mut request_headers = HeaderMap::new();
    request_headers.insert(headers::CONTENT_TYPE, MSGPACK);
    client
        .publish_with_reply_and_headers("t.codec", inbox, request_headers, payload)
        .await
        .unwrap();
    for _ in 0..4 {
        let message = tokio::time::timeout(Duration::from_secs(5), replies.next())
            .await
            .unwrap()
            .unwrap();
        let content_type = headers::get_str(message.headers.as_ref(), headers::CONTENT_TYPE);
        assert_eq!(content_type, Some(MSGPACK));
        let frame: Frame = rmp_serde::from_slice(&message.payload).expect("MessagePack frame");
        assert!(serde_json::from_slice::<serde_json::Value>(&message.payload).is_err());
        if frame.is_terminal() {
            break;
        }
    }

    // And the typed client in JSON mode gets the whole stream.
    let json = StreamOptions {
        encoding: Encoding::Json,
        ..StreamOptions::default()
    };
    let (frames, error) = drain(
        stream_request(&client, "t.codec", &generate("js", 3), &json)
            .await
            .unwrap(),
    )
    .await;
    assert!(error.is_none());
    assert_eq!(frames.len(), 5);
}

#[tokio::test]
async fn a_cancel_reaches_the_responder_and_ends_the_stream() {
    let server = NatsServer::start();
    let client = connect(&[server.url()]).await;
    let subjects = Subjects::default();
    let registry = CancelRegistry::new();
    let echo = Echo {
        per_token_delay: Duration::from_millis(5),
        ..Echo::new("n-cancel")
    };
    spawn_echo(client.clone(), "t.cancel", None, echo, registry.clone()).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listener = cortex_bus::serve_cancels(
        client.clone(),
        &subjects,
        "n-cancel",
        registry.clone(),
        shutdown.clone(),
    )
    .await
    .unwrap();

    let mut stream = stream_request(
        &client,
        "t.cancel",
        &generate("victim", 100_000),
        &options(1000),
    )
    .await
    .unwrap();
    let mut deltas = 0;
    let mut cancelled_at = None;
    let terminal = loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("no hang")
            .expect("a terminal frame")
            .expect("no stream error");
        if let Frame::Delta(_) = frame {
            deltas += 1;
            if deltas == 5 {
                let neuron = stream.responder().expect("accepted names the neuron");
                send_cancel(&client, &subjects, neuron, "victim")
                    .await
                    .unwrap();
                cancelled_at = Some(Instant::now());
            }
        }
        if frame.is_terminal() {
            break frame;
        }
    };
    assert!(matches!(terminal, Frame::Error(e) if e.class == ErrorClass::Cancelled));
    assert!(cancelled_at.unwrap().elapsed() < Duration::from_millis(500));
    assert!(
        deltas < 1000,
        "the responder stopped early ({deltas} deltas)"
    );
    support_eventually_empty(&registry).await;
    shutdown.cancel();
    listener.await.unwrap();
}

async fn support_eventually_empty(registry: &CancelRegistry) {
    cortex_testkit::eventually(
        "cancel registry to empty",
        Duration::from_secs(2),
        || async { registry.is_empty().then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_queue_group_spreads_requests_and_answers_each_once() {
    let server = NatsServer::start();
    let client = connect(&[server.url()]).await;
    for name in ["a", "b"] {
        let responder = connect(&[server.url()]).await;
        spawn_echo(
            responder,
            "t.group",
            Some(cortex_bus::QUEUE_GROUP),
            Echo::new(name),
            CancelRegistry::new(),
        )
        .await;
    }
    let mut seen = std::collections::HashSet::new();
    for i in 0..40 {
        let stream = stream_request(
            &client,
            "t.group",
            &generate(&format!("r{i}"), 2),
            &options(1000),
        )
        .await
        .unwrap();
        let (frames, error) = drain(stream).await;
        assert!(error.is_none(), "{error:?}");
        let accepted: Vec<&Accepted> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Accepted(a) => Some(a),
                _ => None,
            })
            .collect();
        assert_eq!(accepted.len(), 1, "exactly one replica answers");
        seen.insert(accepted[0].neuron.clone());
    }
    assert_eq!(seen.len(), 2, "both replicas took requests: {seen:?}");
}

#[tokio::test]
async fn a_passed_deadline_ends_the_stream() {
    let echo = Echo {
        per_token_delay: Duration::from_millis(50),
        ..Echo::new("n")
    };
    let (_server, client) = server_with_echo("t.deadline", echo).await;
    let now_ms = headers::unix_ms();
    let options = StreamOptions {
        deadline_ms: Some(now_ms + 300),
        ..StreamOptions::default()
    };
    let started = Instant::now();
    let (frames, error) = drain(
        stream_request(&client, "t.deadline", &generate("r", 1000), &options)
            .await
            .unwrap(),
    )
    .await;
    // Both sides know the deadline: whichever notices first ends the stream,
    // the requester's timer (a stream error) or the responder (a terminal frame).
    let responder_ended = matches!(
        frames.last(),
        Some(Frame::Error(e)) if e.class == ErrorClass::DeadlineExceeded
    );
    assert!(
        responder_ended || matches!(error, Some(StreamError::DeadlineExceeded)),
        "{error:?} / {:?}",
        frames.last()
    );
    assert!(started.elapsed() < Duration::from_millis(800));
}

#[tokio::test]
async fn a_requester_that_stops_reading_fails_cleanly_not_with_a_corrupt_answer() {
    let server = NatsServer::start();
    let requester = connect(&[server.url()]).await;
    let responder = connect(&[server.url()]).await;
    spawn_echo(
        responder,
        "t.flood",
        None,
        Echo::new("n"),
        CancelRegistry::new(),
    )
    .await;

    // More frames than the subscription buffers (async-nats: 65,536 messages),
    // sent while the requester does not read: async-nats drops the excess.
    let total = 120_000;
    let mut stream = stream_request(&requester, "t.flood", &generate("r", total), &options(300))
        .await
        .unwrap();
    cortex_testkit::eventually("the flood to overflow", Duration::from_secs(20), || async {
        (requester
            .statistics()
            .in_messages
            .load(std::sync::atomic::Ordering::Relaxed)
            > 100_000)
            .then_some(())
    })
    .await;
    let mut delivered = 0u64;
    let error = loop {
        match stream.next().await {
            Some(Ok(_)) => delivered += 1,
            Some(Err(error)) => break Some(error),
            None => break None,
        }
    };
    // A gap when frames after the loss still arrive; idle (2.5 keepalives) when
    // the loss was the tail of the stream. Never a "complete" answer.
    assert!(
        matches!(
            error,
            Some(StreamError::SequenceGap { .. } | StreamError::Idle { .. })
        ),
        "{error:?} after {delivered} frames"
    );
    assert!(delivered < u64::from(total) + 2);
}

#[tokio::test]
async fn the_responder_ends_a_stream_at_its_deadline_even_if_the_handler_is_stuck() {
    let server = NatsServer::start();
    let client = connect(&[server.url()]).await;
    let mut requests = serve(&client, "t.stuck", None).await.unwrap();
    let handler_client = client.clone();
    tokio::spawn(async move {
        while let Some(incoming) = requests.next().await {
            let responder = incoming.responder(&handler_client, None).unwrap();
            tokio::spawn(async move {
                responder.send(&accepted("n", "r")).await.unwrap();
                // Stuck, holding the responder.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                drop(responder);
            });
        }
    });

    // A raw requester (no local deadline) sees what the responder sends.
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.unwrap();
    let now_ms = headers::unix_ms();
    let mut request_headers = Encoding::Json.headers();
    request_headers.insert(headers::DEADLINE, (now_ms + 400).to_string().as_str());
    request_headers.insert(headers::KEEPALIVE_MS, "100");
    let payload = Encoding::Json.encode(&generate("r", 1)).unwrap();
    client
        .publish_with_reply_and_headers("t.stuck", inbox, request_headers, payload)
        .await
        .unwrap();
    let started = Instant::now();
    let terminal = loop {
        let message = tokio::time::timeout(Duration::from_secs(3), replies.next())
            .await
            .expect("the stream must end by itself")
            .unwrap();
        let frame: Frame = serde_json::from_slice(&message.payload).unwrap();
        if frame.is_terminal() {
            break frame;
        }
    };
    assert!(
        matches!(&terminal, Frame::Error(e) if e.class == ErrorClass::DeadlineExceeded),
        "{terminal:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(900));
}

#[tokio::test]
async fn a_header_value_with_a_line_break_is_refused() {
    let server = NatsServer::start();
    let client = connect(&[server.url()]).await;
    let options = StreamOptions {
        request_id: Some("evil\r\nX-Injected: 1".into()),
        ..StreamOptions::default()
    };
    let result = stream_request(&client, "t.any", &generate("r", 1), &options).await;
    assert!(
        matches!(
            result,
            Err(StreamError::InvalidHeader {
                header: headers::REQUEST_ID,
                ..
            })
        ),
        "{result:?}"
    );
}
