//! Anthropic Messages answers as typed bodies: the whole `message` and
//! the stream's events (each named by its `type`).

use cortex_schemas::{Done, FinishReason};
use serde::Serialize;
use serde_json::Value;

/// Anthropic's `stop_reason`.
pub fn stop_reason(done: &Done) -> &'static str {
    match done.finish_reason {
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::Stop if done.stop_sequence.is_some() => "stop_sequence",
        FinishReason::Stop => "end_turn",
    }
}

/// A `message`, whole or as `message_start` opens it.
#[derive(Debug, Serialize)]
pub struct Message<'a> {
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub role: &'static str,
    pub model: &'a str,
    pub content: Vec<Block<'a>>,
    pub stop_reason: Option<&'static str>,
    pub stop_sequence: Option<&'a str>,
    pub usage: Usage,
}

/// Anthropic's usage: `input_tokens` counts the prompt tokens not read
/// from the cache, `cache_read_input_tokens` those that were (the engine's
/// prefix cache); the prompt is their sum.
#[derive(Debug, Serialize)]
pub struct Usage {
    pub input_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_creation_input_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_read_input_tokens: Option<u32>,
    pub output_tokens: u32,
}

impl Usage {
    pub fn of(usage: &cortex_schemas::Usage) -> Self {
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        Self {
            input_tokens: usage.prompt_tokens - cached,
            cache_creation_input_tokens: Some(0),
            cache_read_input_tokens: Some(cached),
            output_tokens: usage.completion_tokens,
        }
    }

    /// What `message_start` reports before any output.
    pub fn start(prompt_tokens: u32) -> Self {
        Self {
            input_tokens: prompt_tokens,
            cache_creation_input_tokens: None,
            cache_read_input_tokens: None,
            output_tokens: 1,
        }
    }
}

/// A content block.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block<'a> {
    Text {
        text: &'a str,
    },
    /// No signature: the thinking was not made by Anthropic.
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Value,
    },
}

/// A streamed block's increment.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockDelta<'a> {
    TextDelta { text: &'a str },
    ThinkingDelta { thinking: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

/// `message_delta`'s delta.
#[derive(Debug, Serialize)]
pub struct StopDelta<'a> {
    pub stop_reason: &'static str,
    pub stop_sequence: Option<&'a str>,
}

/// One event of the stream; its SSE name is its `type`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent<'a> {
    MessageStart {
        message: Message<'a>,
    },
    ContentBlockStart {
        index: usize,
        content_block: Block<'a>,
    },
    Ping,
    ContentBlockDelta {
        index: usize,
        delta: BlockDelta<'a>,
    },
    ContentBlockStop {
        index: usize,
    },
    MessageDelta {
        delta: StopDelta<'a>,
        usage: Usage,
    },
    MessageStop,
}

impl StreamEvent<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Self::MessageStart { .. } => "message_start",
            Self::ContentBlockStart { .. } => "content_block_start",
            Self::Ping => "ping",
            Self::ContentBlockDelta { .. } => "content_block_delta",
            Self::ContentBlockStop { .. } => "content_block_stop",
            Self::MessageDelta { .. } => "message_delta",
            Self::MessageStop => "message_stop",
        }
    }
}
