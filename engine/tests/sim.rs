//! The simulated engine: deterministic text at the configured pace, with
//! the real scheduler around it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cortex_engine::sim::{sim_model, SimConfig};
use cortex_engine::{ChatEngine, EngineConfig, Event};
use cortex_schemas::chat::{ChatMessage, Role};
use cortex_schemas::frame::FinishReason;
use cortex_schemas::infer::{GenerateInput, GenerateRequest};

fn request(id: &str, text: &str, max_tokens: Option<u32>) -> GenerateRequest {
    GenerateRequest {
        max_tokens,
        ..GenerateRequest::new(
            id,
            "sim",
            GenerateInput::Chat {
                messages: vec![ChatMessage::text(Role::User, text)],
            },
        )
    }
}

fn engine(cfg: SimConfig, slots: usize) -> ChatEngine {
    let model = Arc::new(sim_model(cfg).unwrap());
    ChatEngine::start(
        model,
        EngineConfig {
            max_concurrency: slots,
            ..EngineConfig::default()
        },
    )
}

#[test]
fn deterministic_text_that_ends_on_its_own() {
    let cfg = SimConfig {
        tokens_per_second: 2000.0,
        time_to_first_token: Duration::ZERO,
        reply_tokens: 12,
        ..SimConfig::default()
    };
    let engine = engine(cfg, 2);
    let a = engine
        .submit(&request("a", "hello", None))
        .unwrap()
        .collect_blocking()
        .unwrap();
    let b = engine
        .submit(&request("b", "hello", None))
        .unwrap()
        .collect_blocking()
        .unwrap();
    let c = engine
        .submit(&request("c", "another prompt", None))
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert_eq!(a.text, b.text);
    assert_ne!(a.text, c.text);
    assert_eq!(a.done.usage.completion_tokens, 12);
    assert_eq!(a.done.finish_reason, FinishReason::Stop);
    assert_eq!(a.text.split_whitespace().count(), 12, "{:?}", a.text);
    let capped = engine
        .submit(&request("d", "hello", Some(5)))
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert_eq!(capped.done.finish_reason, FinishReason::Length);
    assert!(a.text.starts_with(&capped.text));
}

#[test]
fn keeps_its_pace_and_overlaps_concurrent_sequences() {
    let cfg = SimConfig {
        tokens_per_second: 100.0,
        time_to_first_token: Duration::from_millis(200),
        reply_tokens: 20,
        ..SimConfig::default()
    };
    let engine = engine(cfg, 4);
    let start = Instant::now();
    let mut handle = engine.submit(&request("one", "hi", None)).unwrap();
    let mut first_token = None;
    while let Some(event) = handle.events.blocking_recv() {
        match event {
            Event::Delta(_) if first_token.is_none() => first_token = Some(start.elapsed()),
            e if e.is_terminal() => break,
            _ => {}
        }
    }
    let total = start.elapsed();
    let ttft = first_token.unwrap();
    assert!(
        ttft >= Duration::from_millis(200) && ttft < Duration::from_millis(600),
        "ttft {ttft:?}"
    );
    // 20 tokens at 100/s after the first: about 0.2 s more.
    assert!(
        total >= Duration::from_millis(380) && total < Duration::from_millis(1200),
        "total {total:?}"
    );

    // Four at once take about as long as one: the slots overlap.
    let start = Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            engine
                .submit(&request(&format!("c{i}"), "hi", None))
                .unwrap()
        })
        .collect();
    for h in handles {
        h.collect_blocking().unwrap();
    }
    let four = start.elapsed();
    assert!(
        four < Duration::from_millis(1500),
        "four concurrent took {four:?}"
    );
}

#[test]
fn a_passed_deadline_ends_the_request_with_its_own_error() {
    let cfg = SimConfig {
        tokens_per_second: 20.0,
        reply_tokens: 100,
        ..SimConfig::default()
    };
    let engine = engine(cfg, 2);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut req = request("late", "hi", None);
    req.deadline_ms = Some(now_ms + 200);
    let start = Instant::now();
    let err = engine.submit(&req).unwrap().collect_blocking().unwrap_err();
    assert!(
        matches!(err, cortex_engine::EngineError::DeadlineExceeded),
        "{err}"
    );
    assert_eq!(
        err.to_wire().class,
        cortex_schemas::error::ErrorClass::DeadlineExceeded
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
}

/// The slot is free by the time the caller hears the run ended, so a caller
/// that submits again at once (one slot, no queue) is never refused; and a
/// cancelled request waiting in the queue leaves it at once.
#[test]
fn a_finished_or_cancelled_request_frees_its_place_before_the_caller_hears() {
    let fast = SimConfig {
        time_to_first_token: Duration::ZERO,
        tokens_per_second: 10_000.0,
        ..SimConfig::default()
    };
    let model = Arc::new(sim_model(fast).unwrap());
    let engine = ChatEngine::start(
        model.clone(),
        EngineConfig {
            max_concurrency: 1,
            max_queue: 0,
            ..EngineConfig::default()
        },
    );
    for i in 0..200 {
        let generation = engine
            .submit(&request(&format!("r{i}"), "hi", Some(2)))
            .unwrap_or_else(|e| panic!("request {i} refused: {e}"));
        generation.collect_blocking().unwrap();
    }

    let slow = SimConfig {
        tokens_per_second: 5.0,
        ..SimConfig::default()
    };
    let engine = ChatEngine::start(
        Arc::new(sim_model(slow).unwrap()),
        EngineConfig {
            max_concurrency: 1,
            max_queue: 1,
            ..EngineConfig::default()
        },
    );
    let _running = engine.submit(&request("running", "hi", Some(50))).unwrap();
    let mut queued = engine.submit(&request("queued", "hi", Some(5))).unwrap();
    assert!(matches!(
        queued.events.blocking_recv(),
        Some(Event::Queued { position: 1 })
    ));
    let started = Instant::now();
    queued.cancel();
    loop {
        match queued.events.blocking_recv() {
            Some(Event::Error(error)) => {
                assert!(matches!(error, cortex_engine::EngineError::Cancelled));
                break;
            }
            Some(Event::Queued { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(engine.stats().queued, 0);
}

/// With tools offered, the sim calls the first one; without, it writes words.
#[test]
fn offered_tools_are_called() {
    let engine = engine(
        SimConfig {
            time_to_first_token: Duration::ZERO,
            tokens_per_second: 100_000.0,
            ..SimConfig::default()
        },
        1,
    );
    let mut req = request("tools", "What is the weather in Paris?", Some(200));
    req.tools = vec![cortex_schemas::chat::ToolDefinition {
        name: "get_weather".into(),
        description: Some("Weather now".into()),
        parameters: serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}}),
    }];
    let collected = engine.submit(&req).unwrap().collect_blocking().unwrap();
    assert_eq!(
        collected.done.finish_reason,
        FinishReason::ToolCalls,
        "{collected:?}"
    );
    let name = collected.tool_calls.iter().find_map(|c| c.name.clone());
    assert_eq!(name.as_deref(), Some("get_weather"));
    let arguments: String = collected
        .tool_calls
        .iter()
        .map(|c| c.arguments.as_str())
        .collect();
    assert_eq!(arguments, "{}");

    // Given the tool's result, it answers in words, so a client's loop ends.
    if let GenerateInput::Chat { messages } = &mut req.input {
        messages.push(ChatMessage {
            role: Role::Assistant,
            content: Vec::new(),
            tool_calls: vec![cortex_schemas::chat::ToolCall {
                id: "call_1".into(),
                name: "get_weather".into(),
                arguments: "{}".into(),
            }],
            tool_call_id: None,
            name: None,
        });
        messages.push(ChatMessage {
            tool_call_id: Some("call_1".into()),
            ..ChatMessage::text(Role::Tool, "sunny")
        });
    }
    let answer = engine.submit(&req).unwrap().collect_blocking().unwrap();
    assert!(answer.tool_calls.is_empty(), "{answer:?}");
    assert_eq!(answer.done.finish_reason, FinishReason::Stop);
    assert!(!answer.text.is_empty());

    req.tool_choice = Some(cortex_schemas::chat::ToolChoice::None);
    let plain = engine.submit(&req).unwrap().collect_blocking().unwrap();
    assert!(plain.tool_calls.is_empty());
    assert!(!plain.text.is_empty());
}

#[test]
fn max_tokens_past_the_window_is_bounded_by_it_unless_the_catalogue_refuses() {
    let cfg = SimConfig {
        tokens_per_second: 5000.0,
        time_to_first_token: Duration::ZERO,
        reply_tokens: 10_000,
        context_length: 96,
        ..SimConfig::default()
    };
    let model = Arc::new(sim_model(cfg).unwrap());
    let clamp = ChatEngine::start(model.clone(), EngineConfig::default());
    let req = request("w", "hello", Some(32_000));
    let generation = clamp.submit(&req).unwrap();
    let prompt = generation.prompt_tokens as usize;
    let out = generation.collect_blocking().unwrap();
    assert_eq!(out.done.finish_reason, FinishReason::Length);
    assert_eq!(out.done.usage.completion_tokens as usize, 96 - prompt);

    let refuse = ChatEngine::start(
        model,
        EngineConfig {
            refuse_over_window: true,
            ..EngineConfig::default()
        },
    );
    let err = refuse.submit(&req).unwrap_err();
    let wire = err.to_wire().too_long.expect("the numbers travel");
    assert_eq!(
        (
            wire.prompt_tokens as usize,
            wire.generate_tokens,
            wire.context_window
        ),
        (prompt, 32_000, 96)
    );
    // A prompt that leaves no room at all is refused either way.
    let long = request("l", &"x".repeat(200), Some(1));
    let err = clamp.submit(&long).unwrap_err();
    let wire = err.to_wire().too_long.expect("the numbers travel");
    assert!(wire.prompt_tokens > 96, "{wire:?}");
    assert_eq!(wire.generate_tokens, 1);
}

#[test]
fn a_grammar_binds_the_sim_too_and_its_forced_call_fits() {
    let engine = engine(
        SimConfig {
            tokens_per_second: 5000.0,
            ..SimConfig::default()
        },
        2,
    );
    // JSON mode: the sim's words are masked out; what it writes is JSON,
    // whole when it ends on its own, else JSON's start cut at max_tokens.
    let mut json = request("json", "hi", Some(12));
    json.response_format = Some(cortex_schemas::sampling::ResponseFormat::JsonObject);
    let out = engine.submit(&json).unwrap().collect_blocking().unwrap();
    match out.done.finish_reason {
        FinishReason::Stop => {
            let value: serde_json::Value = serde_json::from_str(&out.text).unwrap();
            assert!(value.is_object(), "{:?}", out.text);
        }
        _ => assert!(out.text.starts_with('{'), "{:?}", out.text),
    }
    // A forced call to a tool without required arguments: the sim's own
    // `{"name": …, "arguments": {}}` fits the grammar, word for word.
    let mut forced = request("forced", "hi", Some(64));
    forced.tools = vec![cortex_schemas::chat::ToolDefinition {
        name: "f".into(),
        description: None,
        parameters: serde_json::json!({"type": "object", "properties": {}}),
    }];
    forced.tool_choice = Some(cortex_schemas::chat::ToolChoice::Function { name: "f".into() });
    let out = engine.submit(&forced).unwrap().collect_blocking().unwrap();
    assert_eq!(out.done.finish_reason, FinishReason::ToolCalls, "{out:?}");
    assert_eq!(out.tool_calls[0].name.as_deref(), Some("f"));
}
