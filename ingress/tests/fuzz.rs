//! Property test: whatever JSON a client sends to the chat, completions,
//! embeddings and messages endpoints, the answer is never a 5xx (the model
//! is loaded, and placement runs to tell that any other name is not in the
//! catalogue, so every failure is the client's: a 4xx in its dialect).

mod support;

use cortex_testkit::NatsServer;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Map, Value};
use support::*;

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e6f64..1e6).prop_map(|f| json!(f)),
        "[a-z \\\\\"\u{e9}\u{1F600}<>{}]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A plausible field value: mostly the right kind, sometimes anything.
fn field(good: BoxedStrategy<Value>) -> BoxedStrategy<Value> {
    prop_oneof![3 => good, 1 => any_json()].boxed()
}

fn message() -> BoxedStrategy<Value> {
    let role = prop_oneof![
        Just(json!("user")),
        Just(json!("assistant")),
        Just(json!("system")),
        Just(json!("tool")),
        Just(json!("developer")),
        any_json()
    ];
    let content = prop_oneof![
        "[a-z ]{0,20}".prop_map(Value::String),
        Just(json!([{"type": "text", "text": "hi"}])),
        Just(json!([{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}])),
        Just(json!([{"type": "tool_use", "id": "t1", "name": "f", "input": {}}])),
        any_json(),
    ];
    (role, content, prop::option::of(any_json()))
        .prop_map(|(role, content, extra)| {
            let mut m = json!({"role": role, "content": content});
            if let Some(extra) = extra {
                m["tool_call_id"] = extra;
            }
            m
        })
        .boxed()
}

/// A valid `base` request with up to three fields replaced (by a plausible
/// value or any JSON) or removed: both accepted and refused requests.
fn body(
    base: Value,
    fields: Vec<(&'static str, BoxedStrategy<Value>)>,
) -> impl Strategy<Value = String> {
    let mutations: Vec<BoxedStrategy<(&'static str, Option<Value>)>> = fields
        .into_iter()
        .map(|(name, strategy)| {
            prop::option::weighted(0.85, field(strategy))
                .prop_map(move |v| (name, v))
                .boxed()
        })
        .collect();
    let count = mutations.len();
    (prop::collection::vec(0..count, 0..=3), mutations).prop_map(move |(picks, mutations)| {
        let mut object = base.clone();
        for pick in picks {
            let (name, value) = &mutations[pick];
            match (value, object.as_object_mut()) {
                (Some(value), Some(map)) => {
                    map.insert(name.to_string(), value.clone());
                }
                (None, Some(map)) => {
                    map.remove(*name);
                }
                _ => {}
            }
        }
        object.to_string()
    })
}

fn small_count() -> BoxedStrategy<Value> {
    (-3i64..40).prop_map(|n| json!(n)).boxed()
}

/// A body with `model`, `messages` and `max_tokens` (the fields chat and
/// Messages share), each mutated, and `more` fields beside them.
fn messages_shaped(
    more: Vec<(&'static str, BoxedStrategy<Value>)>,
) -> impl Strategy<Value = String> {
    let base =
        json!({"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]});
    let mut fields = vec![
        ("model", Just(json!("m")).boxed()),
        (
            "messages",
            prop::collection::vec(message(), 0..4)
                .prop_map(Value::Array)
                .boxed(),
        ),
        ("max_tokens", field(small_count())),
    ];
    fields.extend(more);
    body(base, fields)
}

fn chat_body() -> impl Strategy<Value = String> {
    messages_shaped(vec![
        ("max_completion_tokens", field(small_count())),
        ("temperature", (-1.0f64..3.0).prop_map(|f| json!(f)).boxed()),
        ("top_p", (-0.5f64..1.5).prop_map(|f| json!(f)).boxed()),
        ("n", field(small_count())),
        ("stream", any::<bool>().prop_map(Value::Bool).boxed()),
        (
            "stop",
            prop_oneof![Just(json!("x")), Just(json!(["a", "b"]))].boxed(),
        ),
        (
            "tools",
            Just(json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]))
                .boxed(),
        ),
        (
            "tool_choice",
            prop_oneof![
                Just(json!("auto")),
                Just(json!("required")),
                Just(json!({"type": "function", "function": {"name": "f"}}))
            ]
            .boxed(),
        ),
        ("logprobs", any::<bool>().prop_map(Value::Bool).boxed()),
        ("top_logprobs", field(small_count())),
        (
            "response_format",
            prop_oneof![
                Just(json!({"type": "text"})),
                Just(json!({"type": "json_object"}))
            ]
            .boxed(),
        ),
        ("seed", any::<i64>().prop_map(|n| json!(n)).boxed()),
    ])
}

fn messages_body() -> impl Strategy<Value = String> {
    messages_shaped(vec![
        (
            "system",
            prop_oneof![
                Just(json!("be brief")),
                Just(json!([{"type": "text", "text": "x"}]))
            ]
            .boxed(),
        ),
        ("stop_sequences", Just(json!(["END"])).boxed()),
        ("stream", any::<bool>().prop_map(Value::Bool).boxed()),
        ("temperature", (-0.5f64..1.5).prop_map(|f| json!(f)).boxed()),
        ("top_k", field(small_count())),
        (
            "tools",
            Just(json!([{"name": "f", "input_schema": {"type": "object"}}])).boxed(),
        ),
        (
            "tool_choice",
            prop_oneof![
                Just(json!({"type": "any"})),
                Just(json!({"type": "tool", "name": "f"}))
            ]
            .boxed(),
        ),
    ])
}

fn other_body() -> impl Strategy<Value = String> {
    let base = json!({"model": "m", "max_tokens": 4, "prompt": "once", "input": "hi"});
    body(
        base,
        vec![
            ("model", Just(json!("m")).boxed()),
            ("prompt", "[a-z ]{0,10}".prop_map(Value::String).boxed()),
            ("input", "[a-z ]{0,10}".prop_map(Value::String).boxed()),
            ("max_tokens", field(small_count())),
            ("stream", any::<bool>().prop_map(Value::Bool).boxed()),
            ("echo", any::<bool>().prop_map(Value::Bool).boxed()),
        ],
    )
}

#[test]
fn no_request_body_gets_a_5xx() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let catalogue = dir.path().join("models.toml");
    std::fs::write(
        &catalogue,
        "[[model]]\nid = \"m\"\nsource = \"sim\"\nvram_mb = 300\n",
    )
    .unwrap();
    let (placement, neuron, pod) = runtime.block_on(async {
        // Without placement a model name nobody serves is 503 ("no
        // placement service answers"); with it, 404.
        let mut config = cortex_placement::PlacementConfig::for_tests(&server.url(), "p1");
        config.models = Some(catalogue.clone());
        let placement = cortex_placement::Placement::start(config, connect(&server.url()).await)
            .await
            .unwrap();
        let neuron = sim_neuron(&server, "n1", &["m"], |c| {
            c.sim_ttft = std::time::Duration::ZERO;
            c.sim_tokens_per_second = 5000.0;
            c.sim_reply_tokens = 8;
            c.max_queue = 256;
        })
        .await;
        (placement, neuron, ingress(&server, &["m"], |_| {}).await)
    });
    let base = format!("http://{}", pod.addr);
    // A name the generators may make up: not in the catalogue, so 404.
    let unknown = runtime.block_on(post(
        &format!("{base}/v1/chat/completions"),
        r#"{"model":"a","max_tokens":4,"messages":[{"role":"user","content":"hi"}]}"#,
        &[],
    ));
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    for (path, strategy) in [
        ("/v1/chat/completions", chat_body().boxed()),
        ("/v1/messages", messages_body().boxed()),
        ("/v1/completions", other_body().boxed()),
        ("/v1/embeddings", other_body().boxed()),
        ("/v1/messages/count_tokens", messages_body().boxed()),
    ] {
        let url = format!("{base}{path}");
        let mut runner = TestRunner::new(Config {
            cases: 96,
            failure_persistence: None,
            ..Config::default()
        });
        let statuses = std::cell::RefCell::new(std::collections::BTreeMap::<u16, usize>::new());
        runner
            .run(&strategy, |body| {
                let reply = runtime.block_on(post(&url, &body, &[]));
                *statuses.borrow_mut().entry(reply.status).or_default() += 1;
                prop_assert!(
                    reply.status < 500,
                    "{path} {body} -> {} {}",
                    reply.status,
                    reply.body
                );
                prop_assert!(!reply.body.is_empty());
                Ok(())
            })
            .unwrap();
        let statuses = statuses.into_inner();
        println!("{path}: {statuses:?}");
        // The generators reach both sides: accepted requests and refusals
        // (the sim model is a chat model: it refuses every embedding).
        let accepted = path == "/v1/embeddings" || statuses.contains_key(&200);
        assert!(
            accepted && statuses.keys().any(|s| *s >= 400),
            "{path}: {statuses:?}"
        );
    }
    runtime.block_on(pod.shutdown());
    drop(neuron);
    runtime.block_on(placement.shutdown());
}
