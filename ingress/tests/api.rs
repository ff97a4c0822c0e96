//! The HTTP API against a real nats-server and sim neurons: both dialects,
//! whole and streamed, the model list, errors, overload and disconnects.

mod support;

use std::time::Duration;

use cortex_testkit::{eventually, NatsServer};
use serde_json::{json, Value};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_whole_and_streamed() {
    let server = NatsServer::start();
    let _neuron = sim_neuron(&server, "n1", &["sim-chat"], |_| {}).await;
    let ingress = ingress(&server, &["sim-chat"], |_| {}).await;
    let url = format!("http://{}/v1/chat/completions", ingress.addr);

    let reply = post(&url, &chat_body("sim-chat", false, json!({})), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert!(!body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 6);
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let reply = post(
        &url,
        &chat_body(
            "sim-chat",
            true,
            json!({"stream_options": {"include_usage": true}}),
        ),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply
            .header("content-type")
            .unwrap_or_default()
            .starts_with("text/event-stream"),
        "{:?}",
        reply.header("content-type")
    );
    let events = parse_sse(&reply.body);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!text.is_empty());
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 6);
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], chunks[0]["id"]);
    }
    ingress.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_messages_whole_and_streamed_in_the_real_order() {
    let server = NatsServer::start();
    let _neuron = sim_neuron(&server, "n1", &["sim-chat"], |_| {}).await;
    let ingress = ingress(&server, &["sim-chat"], |_| {}).await;
    let url = format!("http://{}/v1/messages", ingress.addr);
    let headers = [
        ("x-api-key", "anything"),
        ("anthropic-version", "2023-06-01"),
    ];

    let reply = post(&url, &messages_body("sim-chat", false), &headers).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["type"], "message");
    assert_eq!(body["role"], "assistant");
    assert_eq!(body["content"][0]["type"], "text");
    assert_eq!(body["stop_reason"], "max_tokens");
    assert_eq!(body["usage"]["output_tokens"], 6);

    let reply = post(&url, &messages_body("sim-chat", true), &headers).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let events = parse_sse(&reply.body);
    let names: Vec<&str> = events
        .iter()
        .map(|e| e.event.as_deref().unwrap_or(""))
        .collect();
    let deltas = names
        .iter()
        .filter(|n| **n == "content_block_delta")
        .count();
    assert!(deltas >= 1);
    let mut expected = vec!["message_start", "content_block_start", "ping"];
    expected.extend(std::iter::repeat_n("content_block_delta", deltas));
    expected.extend(["content_block_stop", "message_delta", "message_stop"]);
    assert_eq!(names, expected);
    for event in &events {
        let data: Value = serde_json::from_str(&event.data).unwrap();
        assert_eq!(
            data["type"],
            event.event.clone().unwrap(),
            "the data's type names the event"
        );
    }
    let start: Value = serde_json::from_str(&events[0].data).unwrap();
    assert!(start["message"]["usage"]["input_tokens"].as_u64().unwrap() > 0);
    let delta: Value = serde_json::from_str(&events[events.len() - 2].data).unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    assert_eq!(delta["usage"]["output_tokens"], 6);
    ingress.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_list_comes_from_heartbeats() {
    let server = NatsServer::start();
    let _a = sim_neuron(&server, "a", &["m1", "m2"], |_| {}).await;
    let _b = sim_neuron(&server, "b", &["m1"], |_| {}).await;
    let ingress = ingress(&server, &["m1", "m2"], |_| {}).await;
    let base = format!("http://{}", ingress.addr);
    eventually("m1 on both neurons", Duration::from_secs(5), || {
        let url = format!("{base}/v1/models/m1");
        async move {
            let (_, body) = get(&url).await;
            let body: Value = serde_json::from_str(&body).ok()?;
            (body["neurons"].as_array()?.len() == 2).then_some(())
        }
    })
    .await;
    let (status, body) = get(&format!("{base}/v1/models")).await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["object"], "list");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m1", "m2"]);
    let (status, body) = get(&format!("{base}/v1/models/nope")).await;
    assert_eq!(status, 404);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        "model_not_found"
    );
    ingress.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_status_and_dialect_body() {
    let server = NatsServer::start();
    let _neuron = sim_neuron(&server, "n1", &["m"], |_| {}).await;
    let ingress = ingress(&server, &["m"], |c| c.body_limit = 4096).await;
    let chat = format!("http://{}/v1/chat/completions", ingress.addr);
    let messages = format!("http://{}/v1/messages", ingress.addr);
    let embeddings = format!("http://{}/v1/embeddings", ingress.addr);
    let user = json!([{"role": "user", "content": "hi"}]);
    let big = "x".repeat(5000);
    // (url, body, status, param or anthropic error type)
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (&chat, "{not json".into(), 400, "body"),
        (&chat, "".into(), 400, "body"),
        (&chat, "[]".into(), 400, "body"),
        (&chat, json!({"messages": user}).to_string(), 400, "model"),
        (&chat, json!({"model": "m"}).to_string(), 400, "messages"),
        (&chat, json!({"model": "m", "messages": []}).to_string(), 400, "messages"),
        (&chat, json!({"model": 7, "messages": user}).to_string(), 400, "model"),
        (&chat, json!({"model": "", "messages": user}).to_string(), 400, "model"),
        (&chat, json!({"model": "m", "messages": user, "max_tokens": -1}).to_string(), 400, "max_tokens"),
        (&chat, json!({"model": "m", "messages": user, "max_tokens": 0}).to_string(), 400, "max_tokens"),
        (&chat, json!({"model": "m", "messages": user, "max_completion_tokens": -5}).to_string(), 400, "max_completion_tokens"),
        (&chat, json!({"model": "m", "messages": user, "max_tokens": "ten"}).to_string(), 400, "max_tokens"),
        (&chat, json!({"model": "m", "messages": user, "n": 2}).to_string(), 400, "n"),
        (&chat, json!({"model": "m", "messages": user, "temperature": 3.0}).to_string(), 400, "temperature"),
        (&chat, json!({"model": "m", "messages": user, "top_p": 0}).to_string(), 400, "top_p"),
        (&chat, json!({"model": "m", "messages": user, "presence_penalty": 9}).to_string(), 400, "presence_penalty"),
        (&chat, json!({"model": "m", "messages": user, "frequency_penalty": -9}).to_string(), 400, "frequency_penalty"),
        (&chat, json!({"model": "m", "messages": user, "top_logprobs": 5}).to_string(), 400, "top_logprobs"),
        (&chat, json!({"model": "m", "messages": user, "logprobs": true, "top_logprobs": 50}).to_string(), 400, "top_logprobs"),
        (&chat, json!({"model": "m", "messages": [{"role": "robot", "content": "hi"}]}).to_string(), 400, "messages[0].role"),
        (&chat, json!({"model": "m", "messages": [{"role": "user"}]}).to_string(), 400, "messages[0].content"),
        (&chat, json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).to_string(), 400, "messages[0].content[0].type"),
        (&chat, json!({"model": "m", "messages": [{"role": "tool", "content": "42"}]}).to_string(), 400, "messages[0].tool_call_id"),
        (&chat, json!({"model": "m", "messages": user, "stop": ["a", ""]}).to_string(), 400, "stop"),
        (&chat, json!({"model": "m", "messages": user, "tool_choice": "sometimes"}).to_string(), 400, "tool_choice"),
        (&chat, json!({"model": "m", "messages": user, "tool_choice": {"type": "function", "function": {"name": "nope"}}}).to_string(), 400, "tool_choice"),
        (&chat, json!({"model": "m", "messages": user, "response_format": {"type": "yaml"}}).to_string(), 400, "response_format.type"),
        (&chat, json!({"model": "m", "messages": user, "tools": [{"type": "retrieval", "function": {"name": "f"}}]}).to_string(), 400, "tools[0].type"),
        (&chat, json!({"model": "bad model", "messages": user}).to_string(), 400, "model"),
        (&chat, json!({"model": "m", "messages": user, "padding": big}).to_string(), 413, ""),
        (&chat, json!({"model": "not-loaded", "messages": user}).to_string(), 503, ""),
        (&embeddings, json!({"model": "m", "input": []}).to_string(), 400, "input"),
        (&embeddings, json!({"model": "m", "input": [[1, 2, 3]]}).to_string(), 400, "input"),
        (&embeddings, json!({"model": "m", "input": "hi", "encoding_format": "hex"}).to_string(), 400, "encoding_format"),
        (&messages, json!({"model": "m", "messages": user}).to_string(), 400, "invalid_request_error"),
        (&messages, json!({"model": "m", "max_tokens": 10, "messages": []}).to_string(), 400, "invalid_request_error"),
        (&messages, json!({"model": "m", "max_tokens": -3, "messages": user}).to_string(), 400, "invalid_request_error"),
        (&messages, json!({"model": "m", "max_tokens": 10, "messages": [{"role": "tool", "content": "x"}]}).to_string(), 400, "invalid_request_error"),
        (&messages, json!({"model": "m", "max_tokens": 10, "messages": user, "temperature": 1.5}).to_string(), 400, "invalid_request_error"),
        (&messages, json!({"model": "m", "max_tokens": 10, "messages": user, "top_k": -1}).to_string(), 400, "invalid_request_error"),
        (&messages, json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "image"}]}]}).to_string(), 400, "invalid_request_error"),
        (&messages, json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}).to_string(), 400, "invalid_request_error"),
        (&messages, json!({"model": "m", "max_tokens": 10, "messages": user, "tool_choice": {"type": "tool", "name": "x"}}).to_string(), 400, "invalid_request_error"),
        (&messages, json!({"model": "m", "max_tokens": 10, "messages": user, "padding": big}).to_string(), 413, "request_too_large"),
        (&messages, "{}".into(), 400, "invalid_request_error"),
    ];
    assert!(cases.len() >= 30);
    for (url, body, status, expected) in &cases {
        let reply = post(url, body, &[]).await;
        assert_eq!(reply.status, *status, "{body} -> {}", reply.body);
        let json = reply.json();
        if url.ends_with("/v1/messages") {
            assert_eq!(json["type"], "error", "{body}");
            assert_eq!(json["error"]["type"], *expected, "{body} -> {}", reply.body);
            assert!(!json["error"]["message"].as_str().unwrap().is_empty());
        } else {
            assert!(
                json["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{}",
                reply.body
            );
            assert!(json["error"]["type"].is_string());
            if !expected.is_empty() {
                assert_eq!(
                    json["error"]["param"], *expected,
                    "{body} -> {}",
                    reply.body
                );
            }
        }
    }
    let (status, body) = get(&format!("http://{}/v1/nothing", ingress.addr)).await;
    assert_eq!(status, 404);
    assert!(body.contains("no route"));
    ingress.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_frees_the_slot_on_the_neuron() {
    let server = NatsServer::start();
    let neuron = sim_neuron(&server, "n1", &["slow"], |c| c.sim_tokens_per_second = 10.0).await;
    // A second replica: a hang-up is not a failure to resume from.
    let other = sim_neuron(&server, "n2", &["slow"], |c| c.sim_tokens_per_second = 10.0).await;
    let ingress = ingress(&server, &["slow"], |_| {}).await;
    let url = format!("http://{}/v1/chat/completions", ingress.addr);
    let body = chat_body("slow", true, json!({"max_tokens": 200}));

    let seen = post_and_hang_up(&url, &body, 2).await;
    assert_eq!(seen.len(), 2);
    // 200 tokens at 10/s would hold the slot for 20 s; the cancel frees it at once.
    let busy = || neuron.status().models[0].slots_busy + other.status().models[0].slots_busy;
    eventually("the slot freed", Duration::from_secs(3), || async {
        (busy() == 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(busy(), 0, "the hung-up stream was not resumed anywhere");
    let (_, metrics) = get(&format!("http://{}/metrics", ingress.addr)).await;
    assert!(
        !metrics.contains("cortex_stream_resumes_total{"),
        "{metrics}"
    );
    ingress.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_is_kept_alive_each_second_in_its_dialect() {
    let server = NatsServer::start();
    // 2.2 s between two tokens: a stream resuming on another replica
    // looks the same to the client.
    let _neuron = sim_neuron(&server, "n1", &["m"], |c| {
        c.sim_tokens_per_second = 0.45;
        c.sim_reply_tokens = 2;
    })
    .await;
    let ingress = ingress(&server, &["m"], |_| {}).await;
    let base = format!("http://{}", ingress.addr);

    let reply = post(
        &format!("{base}/v1/messages"),
        &messages_body("m", true),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let names: Vec<String> = parse_sse(&reply.body)
        .into_iter()
        .filter_map(|e| e.event)
        .collect();
    let deltas: Vec<usize> = (0..names.len())
        .filter(|&i| names[i] == "content_block_delta")
        .collect();
    assert_eq!(deltas.len(), 2, "{names:?}");
    let pings = names[deltas[0]..deltas[1]]
        .iter()
        .filter(|n| *n == "ping")
        .count();
    assert!(pings >= 2, "a ping each second of silence: {names:?}");
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));

    // OpenAI's stream has no ping event: an SSE comment, which clients skip.
    let reply = post(
        &format!("{base}/v1/chat/completions"),
        &chat_body("m", true, json!({})),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let comments = reply.body.lines().filter(|l| *l == ": waiting").count();
    assert!(comments >= 2, "{}", reply.body);
    assert!(
        reply.body.trim_end().ends_with("data: [DONE]"),
        "{}",
        reply.body
    );
    ingress.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_replicas_give_429_with_retry_after() {
    let server = NatsServer::start();
    let neuron = sim_neuron(&server, "n1", &["tiny"], |c| {
        c.max_concurrency = 1;
        c.max_queue = 0;
        c.sim_tokens_per_second = 10.0;
    })
    .await;
    let busy = || neuron.status().models[0].slots_busy == 1;
    let ingress = ingress(&server, &["tiny"], |_| {}).await;
    let url = format!("http://{}/v1/chat/completions", ingress.addr);
    let long = tokio::spawn({
        let url = url.clone();
        async move {
            post(
                &url,
                &chat_body("tiny", false, json!({"max_tokens": 20})),
                &[],
            )
            .await
        }
    });
    until(
        "the long request holds the slot",
        Duration::from_secs(10),
        busy,
    )
    .await;
    let reply = post(&url, &chat_body("tiny", false, json!({})), &[]).await;
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert!(reply.header("retry-after").is_some());
    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
    assert_eq!(long.await.unwrap().status, 200);

    // This pod's own limit sheds at once too.
    let limited = support::ingress(&server, &["tiny"], |c| c.max_in_flight = 1).await;
    let url = format!("http://{}/v1/chat/completions", limited.addr);
    let first = tokio::spawn({
        let url = url.clone();
        async move {
            post(
                &url,
                &chat_body("tiny", false, json!({"max_tokens": 10})),
                &[],
            )
            .await
        }
    });
    until(
        "the first request holds the slot",
        Duration::from_secs(10),
        busy,
    )
    .await;
    let shed = post(&url, &chat_body("tiny", false, json!({})), &[]).await;
    assert_eq!(shed.status, 429, "{}", shed.body);
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert_eq!(first.await.unwrap().status, 200);
    tokio::join!(ingress.shutdown(), limited.shutdown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_replica_is_retried_on_another_before_the_first_token() {
    let server = NatsServer::start();
    // "busy" holds one request and queues none; "spare" has room.
    let busy = sim_neuron(&server, "busy", &["m"], |c| {
        c.max_concurrency = 1;
        c.max_queue = 0;
        c.sim_tokens_per_second = 20.0;
    })
    .await;
    let _spare = sim_neuron(&server, "spare", &["m"], |c| c.max_concurrency = 32).await;
    let pod = ingress(&server, &["m"], |_| {}).await;
    eventually("both replicas listed", Duration::from_secs(5), || {
        let url = format!("http://{}/v1/models/m", pod.addr);
        async move {
            let (_, body) = get(&url).await;
            let body: Value = serde_json::from_str(&body).ok()?;
            (body["neurons"].as_array()?.len() == 2).then_some(())
        }
    })
    .await;
    let url = format!("http://{}/v1/chat/completions", pod.addr);
    let requests = (0..12).map(|_| {
        let url = url.clone();
        async move { post(&url, &chat_body("m", false, json!({"max_tokens": 10})), &[]).await }
    });
    let replies = futures::future::join_all(requests).await;
    for reply in &replies {
        assert_eq!(
            reply.status, 200,
            "every request lands somewhere: {}",
            reply.body
        );
    }
    // Without the retry, the requests that first landed on "busy" (about
    // half) would have been 429s.
    drop(busy);
    pod.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_failures_are_error_events_and_oversized_requests_are_413() {
    let server = NatsServer::start();
    let _neuron = sim_neuron(&server, "n1", &["slow"], |c| c.sim_tokens_per_second = 10.0).await;
    let pod = ingress(&server, &["slow"], |_| {}).await;
    let chat = format!("http://{}/v1/chat/completions", pod.addr);
    let messages = format!("http://{}/v1/messages", pod.addr);
    // A 700 ms deadline (header) ends a 50-token stream after its first tokens.
    let deadline = [("cortex-timeout-ms", "700")];

    let reply = post(
        &chat,
        &chat_body("slow", true, json!({"max_tokens": 50})),
        &deadline,
    )
    .await;
    assert_eq!(reply.status, 200, "the stream had begun");
    let events = parse_sse(&reply.body);
    let last: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(last["error"]["type"], "timeout", "{}", reply.body);
    assert!(events.iter().all(|e| e.data != "[DONE]"));

    let body = json!({"model": "slow", "max_tokens": 50, "stream": true,
                      "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let reply = post(&messages, &body, &deadline).await;
    let events = parse_sse(&reply.body);
    let last = events.last().unwrap();
    assert_eq!(last.event.as_deref(), Some("error"), "{}", reply.body);
    assert_eq!(
        serde_json::from_str::<Value>(&last.data).unwrap()["type"],
        "error"
    );

    // Under the body limit (8 MiB) but over NATS's max_payload (1 MiB): 413, not a timeout.
    let huge = "word ".repeat(300_000);
    let reply = post(
        &chat,
        &chat_body(
            "slow",
            false,
            json!({"messages": [{"role": "user", "content": huge}]}),
        ),
        &[],
    )
    .await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limit"));
    pod.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_while_queued_leaves_the_queue() {
    let server = NatsServer::start();
    let neuron = sim_neuron(&server, "n1", &["m"], |c| {
        c.max_concurrency = 1;
        c.max_queue = 4;
        c.sim_tokens_per_second = 10.0;
    })
    .await;
    let pod = ingress(&server, &["m"], |_| {}).await;
    let url = format!("http://{}/v1/chat/completions", pod.addr);
    let running = tokio::spawn({
        let url = url.clone();
        async move { post(&url, &chat_body("m", false, json!({"max_tokens": 30})), &[]).await }
    });
    eventually("the slot taken", Duration::from_secs(5), || async {
        (neuron.status().models[0].slots_busy == 1).then_some(())
    })
    .await;
    // Queued behind it, the client gives up before any output.
    let waiting = tokio::spawn({
        let url = url.clone();
        async move {
            post_and_give_up(
                &url,
                &chat_body("m", true, json!({"max_tokens": 30})),
                Duration::from_millis(600),
            )
            .await
        }
    });
    eventually(
        "the second request queued",
        Duration::from_secs(5),
        || async { (neuron.status().models[0].queue_depth == 1).then_some(()) },
    )
    .await;
    waiting.await.unwrap();
    eventually(
        "the abandoned request left the queue",
        Duration::from_secs(2),
        || async { (neuron.status().models[0].queue_depth == 0).then_some(()) },
    )
    .await;
    assert_eq!(
        neuron.status().models[0].slots_busy,
        1,
        "the first request still runs"
    );
    assert_eq!(running.await.unwrap().status, 200);
    pod.shutdown().await;
}
