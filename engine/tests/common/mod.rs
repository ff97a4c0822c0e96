//! Shared by the engine's integration tests: where the real models are.

#![allow(dead_code, unused_imports)]

use cortex_schemas::chat::{ChatMessage, Role};
use cortex_schemas::infer::{GenerateInput, GenerateRequest};
use cortex_schemas::sampling::SamplingParams;

pub use cortex_testkit::models::{model_path, models_dir, smollm_path};

/// A greedy chat request with one user message.
pub fn chat(id: &str, user: &str, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        sampling: SamplingParams {
            temperature: Some(0.0),
            ..SamplingParams::default()
        },
        max_tokens: Some(max_tokens),
        ..GenerateRequest::new(
            id,
            "smollm2",
            GenerateInput::Chat {
                messages: vec![ChatMessage::text(Role::User, user)],
            },
        )
    }
}
