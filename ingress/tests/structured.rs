//! Structured output over HTTP on the real SmolLM2: `response_format`
//! `json_schema` (chat), `text.format` `json_schema` (Responses, streamed)
//! and forced tool calls (OpenAI `tool_choice` naming a function,
//! Anthropic `tool_choice: {type: tool}`) give output that parses and
//! fits; a schema that cannot compile is a 400 in the client's dialect.

mod support;

use cortex_testkit::NatsServer;
use serde_json::{json, Value};
use support::*;

fn city_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "country": {"type": "string"},
            "population": {"type": "integer", "minimum": 0, "maximum": 100000000},
        },
        "required": ["city", "country", "population"],
        "additionalProperties": false,
    })
}

fn fits_city(text: &str) {
    let value: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let mut keys: Vec<&String> = value.as_object().expect("an object").keys().collect();
    keys.sort();
    assert_eq!(keys, ["city", "country", "population"], "{text}");
    assert!(
        value["city"].is_string() && value["country"].is_string(),
        "{text}"
    );
    let population = value["population"].as_i64().unwrap_or(-1);
    assert!((0..=100_000_000).contains(&population), "{text}");
}

fn weather_tool() -> Value {
    json!({
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
        "required": ["city", "unit"],
        "additionalProperties": false,
    })
}

fn fits_weather(arguments: &Value) {
    assert!(arguments["city"].is_string(), "{arguments}");
    assert!(
        ["C", "F"].contains(&arguments["unit"].as_str().unwrap_or_default()),
        "{arguments}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_output_is_enforced_in_every_api() {
    let server = NatsServer::start();
    let _neuron = real_neuron(
        &server,
        "cpu",
        &[format!("smollm2={}", smollm_path().display())],
    )
    .await;
    let ingress = ingress(&server, &["smollm2"], |_| {}).await;
    let base = format!("http://{}", ingress.addr);
    let ask = "Describe Paris.";

    let chat = post(
        &format!("{base}/v1/chat/completions"),
        &json!({"model": "smollm2", "max_tokens": 64, "temperature": 0.8, "seed": 3,
                "messages": [{"role": "user", "content": ask}],
                "response_format": {"type": "json_schema", "json_schema": {
                    "name": "city", "strict": true, "schema": city_schema()}}})
        .to_string(),
        &[],
    )
    .await;
    assert_eq!(chat.status, 200, "{}", chat.body);
    let answer = chat.json();
    assert_eq!(answer["choices"][0]["finish_reason"], "stop", "{answer}");
    fits_city(answer["choices"][0]["message"]["content"].as_str().unwrap());

    let responses = post(
        &format!("{base}/v1/responses"),
        &json!({"model": "smollm2", "max_output_tokens": 200, "temperature": 0, "stream": true, "input": ask,
                "text": {"format": {"type": "json_schema", "name": "city", "strict": true,
                                    "schema": city_schema()}}})
        .to_string(),
        &[],
    )
    .await;
    assert_eq!(responses.status, 200, "{}", responses.body);
    let streamed: String = parse_sse(&responses.body)
        .iter()
        .filter(|e| e.event.as_deref() == Some("response.output_text.delta"))
        .map(|e| {
            serde_json::from_str::<Value>(&e.data).unwrap()["delta"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    fits_city(&streamed);

    // A greeting, yet the named tool must be called, with fitting arguments.
    let greeting = "Hello! How are you today?";
    let forced = post(
        &format!("{base}/v1/chat/completions"),
        &json!({"model": "smollm2", "max_tokens": 200, "temperature": 0,
                "messages": [{"role": "user", "content": greeting}],
                "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": weather_tool()}}],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
        .to_string(),
        &[],
    )
    .await;
    assert_eq!(forced.status, 200, "{}", forced.body);
    let answer = forced.json();
    assert_eq!(
        answer["choices"][0]["finish_reason"], "tool_calls",
        "{answer}"
    );
    let call = &answer["choices"][0]["message"]["tool_calls"][0]["function"];
    assert_eq!(call["name"], "get_weather");
    fits_weather(&serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap());

    let anthropic = post(
        &format!("{base}/v1/messages"),
        &json!({"model": "smollm2", "max_tokens": 200, "temperature": 0,
                "messages": [{"role": "user", "content": greeting}],
                "tools": [{"name": "get_weather", "input_schema": weather_tool()}],
                "tool_choice": {"type": "tool", "name": "get_weather"}})
        .to_string(),
        &[("anthropic-version", "2023-06-01")],
    )
    .await;
    assert_eq!(anthropic.status, 200, "{}", anthropic.body);
    let message = anthropic.json();
    assert_eq!(message["stop_reason"], "tool_use", "{message}");
    let used = message["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "tool_use")
        .cloned()
        .expect("a tool_use block");
    assert_eq!(used["name"], "get_weather");
    fits_weather(&used["input"]);

    // A schema that cannot compile: the client's error, in its dialect.
    let bad = post(
        &format!("{base}/v1/chat/completions"),
        &json!({"model": "smollm2", "max_tokens": 8, "messages": [{"role": "user", "content": ask}],
                "response_format": {"type": "json_schema", "json_schema": {
                    "name": "bad", "schema": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}, "required": ["a"]}}}})
        .to_string(),
        &[],
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.json()["error"]["type"], "invalid_request_error");
    ingress.shutdown().await;
}
