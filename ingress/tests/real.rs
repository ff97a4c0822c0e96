//! The HTTP API (OpenAI chat and Responses, Anthropic Messages, embeddings)
//! in front of neurons running the real SmolLM2 and MiniLM.

mod support;

use base64::Engine;
use cortex_testkit::NatsServer;
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm_answers_both_dialects_and_minilm_embeds() {
    let server = NatsServer::start();
    let _neuron = real_neuron(
        &server,
        "cpu",
        &[
            format!("smollm2={}", smollm_path().display()),
            format!("minilm={}", minilm_dir().display()),
        ],
    )
    .await;
    let ingress = ingress(&server, &["smollm2", "minilm"], |_| {}).await;
    let base = format!("http://{}", ingress.addr);
    let question = "What is the capital of France?";

    let openai = post(
        &format!("{base}/v1/chat/completions"),
        &json!({"model": "smollm2", "temperature": 0, "max_tokens": 24,
                "messages": [{"role": "user", "content": question}]})
        .to_string(),
        &[],
    )
    .await;
    assert_eq!(openai.status, 200, "{}", openai.body);
    let text = openai.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text.contains("Paris"), "{text}");

    let anthropic = post(
        &format!("{base}/v1/messages"),
        &json!({"model": "smollm2", "temperature": 0, "max_tokens": 24, "stream": true,
                "messages": [{"role": "user", "content": question}]})
        .to_string(),
        &[("anthropic-version", "2023-06-01")],
    )
    .await;
    assert_eq!(anthropic.status, 200, "{}", anthropic.body);
    let streamed: String = parse_sse(&anthropic.body)
        .iter()
        .filter(|e| e.event.as_deref() == Some("content_block_delta"))
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.data).unwrap()["delta"]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert!(streamed.contains("Paris"), "{streamed}");

    // The Responses API, streamed: the same greedy answer, the same tokens.
    let responses = post(
        &format!("{base}/v1/responses"),
        &json!({"model": "smollm2", "temperature": 0, "max_output_tokens": 24, "stream": true,
                "input": [{"role": "user", "content": [{"type": "input_text", "text": question}]}]})
        .to_string(),
        &[],
    )
    .await;
    assert_eq!(responses.status, 200, "{}", responses.body);
    let events = parse_sse(&responses.body);
    let answer: String = events
        .iter()
        .filter(|e| e.event.as_deref() == Some("response.output_text.delta"))
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.data).unwrap()["delta"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(answer, streamed, "both APIs answer greedily alike");
    let last: serde_json::Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(last["type"], "response.completed", "{last:#}");
    assert_eq!(
        last["response"]["output"][0]["content"][0]["text"],
        answer.as_str()
    );

    let floats = post(
        &format!("{base}/v1/embeddings"),
        &json!({"model": "minilm", "input": ["Paris is in France.", "Bonjour"]}).to_string(),
        &[],
    )
    .await;
    assert_eq!(floats.status, 200, "{}", floats.body);
    let floats = floats.json();
    assert_eq!(floats["data"].as_array().unwrap().len(), 2);
    let vector: Vec<f32> = serde_json::from_value(floats["data"][0]["embedding"].clone()).unwrap();
    assert_eq!(vector.len(), 384);
    let encoded = post(
        &format!("{base}/v1/embeddings"),
        &json!({"model": "minilm", "input": "Paris is in France.", "encoding_format": "base64"})
            .to_string(),
        &[],
    )
    .await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.json()["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded.len(), 384);
    for (a, b) in decoded.iter().zip(&vector) {
        assert!((a - b).abs() < 1e-5);
    }
    ingress.shutdown().await;
}
