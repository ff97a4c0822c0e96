//! The context window: a `max_tokens` past it is bounded by it, and a
//! prompt that does not fit is refused in each API's words.

mod support;

use cortex_testkit::NatsServer;
use serde_json::json;
use support::*;

/// A prompt past the window is refused in each API's words; a
/// `max_tokens` past it is bounded by it and ends as `length`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_window_bounds_generation_and_refuses_what_cannot_fit() {
    let server = NatsServer::start();
    let _neuron = sim_neuron(&server, "n1", &["small"], |c| {
        c.sim_reply_tokens = 1000;
        c.sim_tokens_per_second = 5000.0;
        c.models.clear();
        c.profiles = vec![serde_json::from_value(
            json!({"id": "small", "source": "sim", "context_length": 96}),
        )
        .unwrap()];
    })
    .await;
    let ingress = ingress(&server, &["small"], |_| {}).await;
    let chat = format!("http://{}/v1/chat/completions", ingress.addr);
    let messages = format!("http://{}/v1/messages", ingress.addr);
    let short = json!([{"role": "user", "content": "hi"}]);
    let long = json!([{"role": "user", "content": "x".repeat(300)}]);

    let reply = post(
        &chat,
        &json!({"model": "small", "messages": short, "max_tokens": 32000}).to_string(),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    let usage = &body["usage"];
    assert_eq!(
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap(),
        96
    );
    let reply = post(
        &messages,
        &json!({"model": "small", "messages": short, "max_tokens": 32000}).to_string(),
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["stop_reason"], "max_tokens");

    for stream in [false, true] {
        let reply = post(
            &chat,
            &json!({"model": "small", "messages": long, "stream": stream}).to_string(),
            &[],
        )
        .await;
        assert_eq!(reply.status, 400, "{}", reply.body);
        let error = &reply.json()["error"];
        assert_eq!(error["code"], "context_length_exceeded", "{}", reply.body);
        assert!(error["message"]
            .as_str()
            .unwrap()
            .starts_with("This model's maximum context length is 96 tokens."));
        let reply = post(
            &messages,
            &json!({"model": "small", "messages": long, "max_tokens": 10, "stream": stream})
                .to_string(),
            &[],
        )
        .await;
        assert_eq!(reply.status, 400, "{}", reply.body);
        let error = &reply.json()["error"];
        assert_eq!(error["type"], "invalid_request_error");
        let message = error["message"].as_str().unwrap();
        // Claude Code reads both numbers out of this sentence.
        let rest = message.strip_prefix("prompt is too long: ").unwrap();
        let (n, rest) = rest.split_once(" tokens > ").unwrap();
        assert!(n.parse::<u32>().unwrap() > 300, "{message}");
        assert_eq!(rest, "95 maximum");
    }
    ingress.shutdown().await;
}
