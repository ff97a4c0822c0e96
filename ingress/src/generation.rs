//! Reading a generation to its end (non-streamed answers of every API):
//! text, reasoning, tool calls assembled from their fragments, usage.

use cortex_schemas::{Delta, Done, TokenLogprob, ToolCall, ToolCallDelta};

use crate::call::{Opened, Output};
use crate::error::{ApiError, Kind};

/// A whole generation.
#[derive(Debug)]
pub struct Collected {
    pub text: String,
    /// A reasoning model's thinking, apart from `text`.
    pub reasoning: String,
    /// Tokens of the deltas that carried only thinking.
    pub reasoning_tokens: u32,
    pub tool_calls: Vec<ToolCall>,
    pub logprobs: Vec<TokenLogprob>,
    pub done: Done,
}

/// Tool calls from their streamed fragments: the first fragment of a call
/// brings its id and name, later ones append arguments.
#[derive(Debug, Default)]
pub struct ToolCalls(pub Vec<ToolCall>);

impl ToolCalls {
    pub fn push(&mut self, fragment: &ToolCallDelta) {
        let index = fragment.index as usize;
        while self.0.len() <= index {
            self.0.push(ToolCall {
                id: String::new(),
                name: String::new(),
                arguments: String::new(),
            });
        }
        let call = &mut self.0[index];
        if let Some(id) = &fragment.id {
            call.id.clone_from(id);
        }
        if let Some(name) = &fragment.name {
            call.name.clone_from(name);
        }
        call.arguments.push_str(&fragment.arguments);
    }
}

/// Whether a delta spent its tokens on thinking alone.
pub fn only_reasoning(delta: &Delta) -> bool {
    !delta.reasoning.is_empty() && delta.text.is_empty() && delta.tool_calls.is_empty()
}

/// Reads `opened` to its end.
pub async fn collect(opened: &mut Opened) -> Result<Collected, ApiError> {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut reasoning_tokens = 0;
    let mut logprobs = Vec::new();
    let mut calls = ToolCalls::default();
    while let Some(output) = opened.next().await {
        match output {
            Output::Delta(delta) => {
                if only_reasoning(&delta) {
                    reasoning_tokens += delta.tokens;
                }
                text.push_str(&delta.text);
                reasoning.push_str(&delta.reasoning);
                for fragment in &delta.tool_calls {
                    calls.push(fragment);
                }
                logprobs.extend(delta.logprobs);
            }
            Output::Done(done) => {
                return Ok(Collected {
                    text,
                    reasoning,
                    reasoning_tokens,
                    tool_calls: calls.0,
                    logprobs,
                    done,
                })
            }
            Output::Failed(error) => return Err(error),
        }
    }
    Err(ApiError::new(
        Kind::Internal,
        "the generation was read twice",
    ))
}
