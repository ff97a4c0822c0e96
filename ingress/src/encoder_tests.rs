//! The stream encoders (OpenAI chat, Responses, Anthropic) against the event sequences the real APIs
//! send for a reply with text and then a tool call (the shapes the
//! official SDKs' stream parsers expect; recorded from the APIs' reference
//! documentation of streaming with tools).

use cortex_schemas::{Accepted, Delta, Done, FinishReason, Timings, ToolCallDelta, Usage};
use serde_json::json;

use crate::anthropic::messages::EventEncoder;
use crate::openai::chat::ChunkEncoder;
use crate::openai::responses::answer::Echo;
use crate::openai::responses::stream::ResponseEncoder;
use crate::openai::responses::types::ResponsesRequest;
use crate::sse::{parse, render, Encoder};

fn accepted() -> Accepted {
    Accepted {
        neuron: "n1".into(),
        request_id: "r1".into(),
        queue_position: 0,
        prompt_tokens: Some(21),
    }
}

/// Text, then one tool call whose arguments arrive in two fragments.
fn frames() -> Vec<Delta> {
    vec![
        Delta {
            text: "Let me check.".into(),
            tokens: 3,
            ..Delta::default()
        },
        Delta {
            tokens: 4,
            tool_calls: vec![ToolCallDelta {
                index: 0,
                id: Some("call_1".into()),
                name: Some("get_weather".into()),
                arguments: "{\"city\": ".into(),
            }],
            ..Delta::default()
        },
        Delta {
            tokens: 2,
            tool_calls: vec![ToolCallDelta {
                index: 0,
                id: None,
                name: None,
                arguments: "\"Paris\"}".into(),
            }],
            ..Delta::default()
        },
    ]
}

fn done() -> Done {
    Done {
        finish_reason: FinishReason::ToolCalls,
        stop_sequence: None,
        usage: Usage {
            prompt_tokens: 21,
            completion_tokens: 9,
            cached_tokens: 0,
        },
        timings: Timings::default(),
    }
}

async fn run(mut encoder: impl Encoder) -> String {
    let mut events = encoder.start(&accepted());
    for delta in frames() {
        events.extend(encoder.delta(&delta));
    }
    events.extend(encoder.done(&done()));
    render(events).await
}

#[tokio::test]
async fn openai_chunks_follow_the_real_tool_call_stream() {
    let text = run(ChunkEncoder {
        id: "chatcmpl-1".into(),
        model: "m".into(),
        created: 1,
        include_usage: true,
        logprobs: false,
    })
    .await;
    let events = parse(&text);
    let deltas: Vec<serde_json::Value> = events
        .iter()
        .filter_map(|(_, data)| data.get("choices")?.get(0).map(|c| c["delta"].clone()))
        .collect();
    assert_eq!(deltas[0]["role"], "assistant");
    assert_eq!(deltas[1], json!({"content": "Let me check."}));
    assert_eq!(
        deltas[2],
        json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "get_weather", "arguments": "{\"city\": "}}]})
    );
    assert_eq!(
        deltas[3],
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]})
    );
    assert_eq!(deltas[4], json!({}));
    let finish = &events[4].1;
    assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");
    let usage = &events[5].1;
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 30);
    assert_eq!(events.last().unwrap().1, json!("[DONE]"));
    assert!(
        events.iter().all(|(name, _)| name.is_none()),
        "OpenAI streams have no event names"
    );
}

#[tokio::test]
async fn anthropic_events_follow_the_real_tool_use_stream() {
    let text = run(EventEncoder::new("msg_1".into(), "m".into())).await;
    let events = parse(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert_eq!(events[0].1["message"]["usage"]["input_tokens"], 21);
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    assert_eq!(
        events[3].1["delta"],
        json!({"type": "text_delta", "text": "Let me check."})
    );
    assert_eq!(events[4].1["index"], 0);
    assert_eq!(
        events[5].1["content_block"],
        json!({"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}})
    );
    assert_eq!(events[5].1["index"], 1);
    assert_eq!(
        events[6].1["delta"],
        json!({"type": "input_json_delta", "partial_json": "{\"city\": "})
    );
    assert_eq!(events[7].1["delta"]["partial_json"], "\"Paris\"}");
    assert_eq!(events[8].1["index"], 1);
    assert_eq!(events[9].1["delta"]["stop_reason"], "tool_use");
    assert_eq!(events[9].1["usage"]["output_tokens"], 9);
    for (name, data) in &events {
        assert_eq!(data["type"].as_str(), name.as_deref());
    }
}

/// A reasoning model's stream: thinking in two pieces, then the answer.
fn thinking_frames() -> Vec<Delta> {
    ["Paris is", " the capital."]
        .iter()
        .map(|piece| Delta {
            reasoning: (*piece).into(),
            tokens: 2,
            ..Delta::default()
        })
        .chain([Delta {
            text: "Paris.".into(),
            tokens: 2,
            ..Delta::default()
        }])
        .collect()
}

async fn run_thinking(mut encoder: impl Encoder) -> Vec<(Option<String>, serde_json::Value)> {
    let mut events = encoder.start(&accepted());
    for delta in thinking_frames() {
        events.extend(encoder.delta(&delta));
    }
    events.extend(encoder.done(&Done {
        finish_reason: FinishReason::Stop,
        ..done()
    }));
    parse(&render(events).await)
}

#[tokio::test]
async fn reasoning_streams_as_each_api_streams_thinking() {
    let events = run_thinking(EventEncoder::new("msg_1".into(), "m".into())).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert_eq!(
        events[1].1["content_block"],
        json!({"type": "thinking", "thinking": "", "signature": ""})
    );
    assert_eq!(
        events[3].1["delta"],
        json!({"type": "thinking_delta", "thinking": "Paris is"})
    );
    assert_eq!(events[6].1["content_block"]["type"], "text");
    assert_eq!(events[6].1["index"], 1);
    assert_eq!(events[7].1["delta"]["text"], "Paris.");

    let events = run_thinking(ChunkEncoder {
        id: "chatcmpl-1".into(),
        model: "m".into(),
        created: 1,
        include_usage: false,
        logprobs: false,
    })
    .await;
    let deltas: Vec<serde_json::Value> = events
        .iter()
        .filter_map(|(_, data)| data.get("choices")?.get(0).map(|c| c["delta"].clone()))
        .collect();
    assert_eq!(deltas[1], json!({"reasoning_content": "Paris is"}));
    assert_eq!(deltas[2], json!({"reasoning_content": " the capital."}));
    assert_eq!(deltas[3], json!({"content": "Paris."}));
}

fn response_encoder() -> ResponseEncoder {
    let request: ResponsesRequest =
        serde_json::from_value(json!({"model": "m", "input": "hi", "instructions": "Be brief."}))
            .unwrap();
    ResponseEncoder::new("resp_1".into(), Echo::of(&request))
}

#[tokio::test]
async fn responses_events_follow_the_real_function_call_stream() {
    let events = parse(&run(response_encoder()).await);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (i, (name, data)) in events.iter().enumerate() {
        assert_eq!(data["type"].as_str(), name.as_deref());
        assert_eq!(
            data["sequence_number"], i,
            "sequence numbers count up from 0"
        );
    }
    let created = &events[0].1["response"];
    assert_eq!(created["id"], "resp_1");
    assert_eq!(created["status"], "in_progress");
    assert_eq!(created["instructions"], "Be brief.");
    assert_eq!(created["output"], json!([]));
    let message = &events[2].1;
    assert_eq!(message["output_index"], 0);
    assert_eq!(message["item"]["type"], "message");
    assert_eq!(message["item"]["status"], "in_progress");
    let message_id = message["item"]["id"].as_str().unwrap();
    assert!(message_id.starts_with("msg_"));
    assert_eq!(events[4].1["item_id"], message_id);
    assert_eq!(events[4].1["delta"], "Let me check.");
    assert_eq!(events[5].1["text"], "Let me check.");
    assert_eq!(events[7].1["item"]["content"][0]["text"], "Let me check.");
    assert_eq!(events[7].1["item"]["status"], "completed");
    let call = &events[8].1;
    assert_eq!(call["output_index"], 1);
    assert_eq!(call["item"]["type"], "function_call");
    assert_eq!(call["item"]["call_id"], "call_1");
    assert_eq!(call["item"]["name"], "get_weather");
    assert_eq!(call["item"]["arguments"], "");
    assert_eq!(events[9].1["delta"], "{\"city\": ");
    assert_eq!(events[11].1["arguments"], "{\"city\": \"Paris\"}");
    let completed = &events[13].1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["output"].as_array().unwrap().len(), 2);
    assert_eq!(completed["output"][1]["arguments"], "{\"city\": \"Paris\"}");
    assert_eq!(completed["usage"]["input_tokens"], 21);
    assert_eq!(completed["usage"]["output_tokens"], 9);
    assert_eq!(completed["usage"]["total_tokens"], 30);
}

#[tokio::test]
async fn responses_stream_reasoning_as_its_own_item_and_stop_incomplete_at_the_limit() {
    let mut encoder = response_encoder();
    let mut events = encoder.start(&accepted());
    for delta in thinking_frames() {
        events.extend(encoder.delta(&delta));
    }
    events.extend(encoder.done(&Done {
        finish_reason: FinishReason::Length,
        ..done()
    }));
    let events = parse(&render(events).await);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_deref().unwrap()).collect();
    assert_eq!(
        names[2..7],
        [
            "response.output_item.added",
            "response.content_part.added",
            "response.reasoning_text.delta",
            "response.reasoning_text.delta",
            "response.reasoning_text.done",
        ]
    );
    assert_eq!(events[2].1["item"]["type"], "reasoning");
    assert_eq!(events[6].1["text"], "Paris is the capital.");
    let last = &events.last().unwrap().1;
    assert_eq!(last["type"], "response.incomplete");
    assert_eq!(
        last["response"]["incomplete_details"]["reason"],
        "max_output_tokens"
    );
    assert_eq!(last["response"]["output"][0]["type"], "reasoning");
    assert_eq!(
        last["response"]["output"][1]["content"][0]["text"],
        "Paris."
    );
    assert_eq!(
        last["response"]["usage"]["output_tokens_details"]["reasoning_tokens"],
        4
    );
}
