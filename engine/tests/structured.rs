//! Structured output that is enforced, on the real SmolLM2: a JSON Schema,
//! JSON mode and a forced tool call produce output that parses and fits,
//! greedy and sampled, through the engine's llguidance constraint.

mod common;

use std::sync::{Arc, OnceLock};

use common::{chat, smollm_path};
use cortex_engine::chat_model::ChatModel;
use cortex_engine::{load, ChatEngine, EngineConfig, EngineError, LoadOptions, LoadedModel};
use cortex_schemas::chat::{ToolChoice, ToolDefinition};
use cortex_schemas::frame::FinishReason;
use cortex_schemas::infer::GenerateRequest;
use cortex_schemas::sampling::ResponseFormat;
use serde_json::{json, Value};

fn engine() -> &'static ChatEngine {
    static ENGINE: OnceLock<ChatEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let model: Arc<ChatModel> = match load(&smollm_path(), &LoadOptions::default()).unwrap() {
            LoadedModel::Chat(m) => m,
            LoadedModel::Embedding(_) => panic!("SmolLM2 loaded as an embedding model"),
        };
        ChatEngine::start(model, EngineConfig::default())
    })
}

fn city_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "country": {"type": "string"},
            "population": {"type": "integer"},
            "is_capital": {"type": "boolean"},
        },
        "required": ["city", "country", "population", "is_capital"],
        "additionalProperties": false,
    })
}

fn with_schema(id: &str, temperature: f64) -> GenerateRequest {
    let mut req = chat(id, "Describe Paris as JSON.", 96);
    req.sampling.temperature = Some(temperature);
    req.sampling.seed = Some(7);
    req.response_format = Some(ResponseFormat::JsonSchema {
        name: "city".into(),
        schema: city_schema(),
        strict: true,
    });
    req
}

/// Checks `value` against `city_schema` by hand: exactly its keys, each
/// of its type.
fn fits_city(value: &Value) {
    let object = value.as_object().expect("an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["city", "country", "is_capital", "population"],
        "{value}"
    );
    assert!(value["city"].is_string(), "{value}");
    assert!(value["country"].is_string(), "{value}");
    assert!(
        value["population"].is_i64() || value["population"].is_u64(),
        "{value}"
    );
    assert!(value["is_capital"].is_boolean(), "{value}");
}

#[test]
fn a_json_schema_is_followed_greedy_and_sampled() {
    for (id, temperature) in [("greedy", 0.0), ("sampled", 1.0)] {
        let out = engine()
            .submit(&with_schema(id, temperature))
            .unwrap()
            .collect_blocking()
            .unwrap();
        println!("{id}: {}", out.text);
        assert_eq!(out.done.finish_reason, FinishReason::Stop, "{}", out.text);
        let value: Value = serde_json::from_str(&out.text)
            .unwrap_or_else(|e| panic!("{id} output is not JSON ({e}): {}", out.text));
        fits_city(&value);
    }
}

#[test]
fn json_mode_gives_an_object() {
    let mut req = chat("json", "List three colours.", 64);
    req.response_format = Some(ResponseFormat::JsonObject);
    let out = engine().submit(&req).unwrap().collect_blocking().unwrap();
    println!("json mode: {}", out.text);
    if out.done.finish_reason == FinishReason::Stop {
        let value: Value = serde_json::from_str(&out.text).unwrap();
        assert!(value.is_object(), "{}", out.text);
    } else {
        // Cut at max_tokens: still the start of an object.
        assert!(out.text.starts_with('{'), "{}", out.text);
    }
}

#[test]
fn a_forced_tool_call_is_made_with_arguments_that_fit() {
    let mut req = chat("forced", "Hello! How are you today?", 64);
    req.tools = vec![ToolDefinition {
        name: "get_weather".into(),
        description: Some("The weather in a city now".into()),
        parameters: json!({
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
        }),
    }];
    req.tool_choice = Some(ToolChoice::Function {
        name: "get_weather".into(),
    });
    let out = engine().submit(&req).unwrap().collect_blocking().unwrap();
    println!("forced: {:?} {:?}", out.text, out.tool_calls);
    assert_eq!(out.done.finish_reason, FinishReason::ToolCalls, "{out:?}");
    assert_eq!(out.tool_calls[0].name.as_deref(), Some("get_weather"));
    let arguments: String = out
        .tool_calls
        .iter()
        .map(|c| c.arguments.as_str())
        .collect();
    let arguments: Value = serde_json::from_str(&arguments).unwrap();
    assert!(arguments["city"].is_string(), "{arguments}");
    assert!(
        ["C", "F"].contains(&arguments["unit"].as_str().unwrap()),
        "{arguments}"
    );
    assert!(
        out.text.trim().is_empty(),
        "nothing but the call: {:?}",
        out.text
    );
}

#[test]
fn a_schema_that_cannot_compile_is_the_clients_error() {
    let mut req = chat("bad", "Hi", 8);
    req.response_format = Some(ResponseFormat::JsonSchema {
        name: "bad".into(),
        schema: json!({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}, "required": ["a"]}),
        strict: true,
    });
    match engine().submit(&req) {
        Err(EngineError::InvalidRequest(message)) => {
            assert!(message.contains("schema"), "{message}")
        }
        other => panic!("expected an invalid request, got {other:?}"),
    }
    let mut req = chat("bad-type", "Hi", 8);
    req.response_format = Some(ResponseFormat::JsonSchema {
        name: "bad".into(),
        schema: json!(42),
        strict: true,
    });
    assert!(matches!(
        engine().submit(&req),
        Err(EngineError::InvalidRequest(_))
    ));
}

#[test]
fn a_fitting_answer_is_never_masked_and_a_wrong_one_is() {
    let LoadedModel::Chat(model) = load(&smollm_path(), &LoadOptions::default()).unwrap() else {
        panic!("SmolLM2 loaded as an embedding model")
    };
    let mut req = chat("replay", "Describe Paris.", 64);
    req.response_format = Some(ResponseFormat::JsonSchema {
        name: "city".into(),
        schema: city_schema(),
        strict: true,
    });
    let replay = |answer: &str| -> Option<usize> {
        let mut constraint = model.constraint(&req).unwrap().unwrap();
        let tokens = model.tokenizer.encode(answer).unwrap();
        let mut logits = vec![0.0f32; model.tokenizer.vocab_size()];
        for (i, &token) in tokens.iter().enumerate() {
            logits.fill(0.0);
            constraint.mask(&mut logits).unwrap();
            if !logits[token as usize].is_finite() {
                let text = model.tokenizer.decode(&tokens[..=i]).unwrap();
                println!("masked at token {i} ({token}): {text:?}");
                return Some(i);
            }
            constraint.commit(token).unwrap();
        }
        None
    };
    let fits =
        r#"{"city": "Paris", "country": "France", "population": 2102650, "is_capital": true}"#;
    assert_eq!(replay(fits), None);
    let extra = r#"{"city": "Paris", "mayor": "x"}"#;
    assert!(replay(extra).is_some());
}
