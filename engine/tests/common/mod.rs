//! Shared by the engine's integration tests: where the real models are.

#![allow(dead_code)]

use std::path::PathBuf;

use cortex_schemas::chat::{ChatMessage, Role};
use cortex_schemas::infer::{GenerateInput, GenerateRequest};
use cortex_schemas::sampling::SamplingParams;

/// The model cache `scripts/setup.sh` fills (`CORTEX_MODELS_DIR` overrides).
pub fn models_dir() -> PathBuf {
    std::env::var_os("CORTEX_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/models"))
}

/// A model file the setup script installs; a clear failure when absent.
pub fn model_path(relative: &str) -> PathBuf {
    let path = models_dir().join(relative);
    assert!(
        path.exists(),
        "{} is missing: run `scripts/setup.sh` (or `make test`) first",
        path.display()
    );
    path
}

pub fn smollm_path() -> PathBuf {
    model_path("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// A greedy chat request with one user message.
pub fn chat(id: &str, user: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        request_id: id.to_string(),
        model: "smollm2".to_string(),
        input: GenerateInput::Chat {
            messages: vec![ChatMessage::text(Role::User, user)],
        },
        tools: Vec::new(),
        tool_choice: None,
        sampling: SamplingParams {
            temperature: Some(0.0),
            ..SamplingParams::default()
        },
        max_tokens: Some(max_tokens),
        stop: Vec::new(),
        response_format: None,
        logprobs: None,
        deadline_ms: None,
    }
}
