//! The `response` object and its output items, typed: what the whole
//! answer is, and what the lifecycle events of the stream carry.

use cortex_schemas::Done;
use serde::Serialize;
use serde_json::{json, Value};

use super::types::ResponsesRequest;

/// What the response repeats of its request (the real API echoes these).
#[derive(Debug, Serialize)]
pub struct Echo {
    pub model: String,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub tools: Vec<Value>,
    pub tool_choice: Value,
    pub parallel_tool_calls: bool,
    pub text: Value,
    pub reasoning: Value,
    pub metadata: Value,
}

impl Echo {
    pub fn of(request: &ResponsesRequest) -> Self {
        let format = request
            .text
            .as_ref()
            .and_then(|t| t.format.as_ref())
            .map_or_else(|| json!({"type": "text"}), |f| json!(f));
        let effort = request.reasoning.as_ref().and_then(|r| r.effort.clone());
        Self {
            model: request.model.clone(),
            instructions: request.instructions.clone(),
            max_output_tokens: request.max_output_tokens,
            temperature: request.temperature,
            top_p: request.top_p,
            tools: request
                .tools
                .iter()
                .flatten()
                .filter(|t| t["type"] == "function")
                .cloned()
                .collect(),
            tool_choice: request.tool_choice.clone().unwrap_or_else(|| json!("auto")),
            parallel_tool_calls: request.parallel_tool_calls.unwrap_or(true),
            text: json!({ "format": format }),
            reasoning: json!({ "effort": effort, "summary": null }),
            metadata: request.metadata.clone().unwrap_or_else(|| json!({})),
        }
    }
}

/// `status` of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    InProgress,
    Completed,
    Incomplete,
    Failed,
}

/// The `response` object.
#[derive(Debug, Serialize)]
pub struct ResponseBody<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created_at: u64,
    pub status: Status,
    pub error: Option<Failure<'a>>,
    pub incomplete_details: Option<Incomplete>,
    pub output: Vec<ItemOut<'a>>,
    pub previous_response_id: Option<&'a str>,
    pub store: bool,
    pub truncation: &'static str,
    pub usage: Option<UsageOut>,
    pub user: Option<&'a str>,
    #[serde(flatten)]
    pub echo: &'a Echo,
}

#[derive(Debug, Serialize)]
pub struct Failure<'a> {
    pub code: &'static str,
    pub message: &'a str,
}

#[derive(Debug, Serialize)]
pub struct Incomplete {
    pub reason: &'static str,
}

#[derive(Debug, Serialize)]
pub struct UsageOut {
    pub input_tokens: u32,
    pub input_tokens_details: InputDetails,
    pub output_tokens: u32,
    pub output_tokens_details: OutputDetails,
    pub total_tokens: u32,
}

#[derive(Debug, Serialize)]
pub struct InputDetails {
    pub cached_tokens: u32,
}

#[derive(Debug, Serialize)]
pub struct OutputDetails {
    pub reasoning_tokens: u32,
}

impl UsageOut {
    pub fn of(done: &Done, reasoning_tokens: u32) -> Self {
        let usage = &done.usage;
        Self {
            input_tokens: usage.prompt_tokens,
            input_tokens_details: InputDetails {
                cached_tokens: usage.cached_tokens,
            },
            output_tokens: usage.completion_tokens,
            output_tokens_details: OutputDetails {
                reasoning_tokens: reasoning_tokens.min(usage.completion_tokens),
            },
            total_tokens: usage.prompt_tokens + usage.completion_tokens,
        }
    }
}

/// An output item: reasoning, the assistant's message, or a function call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Reasoning {
        id: String,
        text: String,
    },
    Message {
        id: String,
        text: String,
    },
    FunctionCall {
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

impl Item {
    pub fn id(&self) -> &str {
        match self {
            Self::Reasoning { id, .. }
            | Self::Message { id, .. }
            | Self::FunctionCall { id, .. } => id,
        }
    }

    /// The item as written, `done` or still in progress (no content yet).
    pub fn out(&self, done: bool) -> ItemOut<'_> {
        let status = if done { "completed" } else { "in_progress" };
        match self {
            Self::Reasoning { id, text } => ItemOut::Reasoning {
                id,
                summary: &[],
                content: if done {
                    vec![Part::ReasoningText { text }]
                } else {
                    Vec::new()
                },
            },
            Self::Message { id, text } => ItemOut::Message {
                id,
                status,
                role: "assistant",
                content: if done {
                    vec![Part::output_text(text)]
                } else {
                    Vec::new()
                },
            },
            Self::FunctionCall {
                id,
                call_id,
                name,
                arguments,
            } => ItemOut::FunctionCall {
                id,
                call_id,
                name,
                arguments: if done { arguments } else { "" },
                status,
            },
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ItemOut<'a> {
    Reasoning {
        id: &'a str,
        summary: &'static [Value],
        content: Vec<Part<'a>>,
    },
    Message {
        id: &'a str,
        status: &'static str,
        role: &'static str,
        content: Vec<Part<'a>>,
    },
    FunctionCall {
        id: &'a str,
        call_id: &'a str,
        name: &'a str,
        arguments: &'a str,
        status: &'static str,
    },
}

/// A content part of an output item.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part<'a> {
    OutputText {
        text: &'a str,
        annotations: &'static [Value],
        logprobs: &'static [Value],
    },
    ReasoningText {
        text: &'a str,
    },
}

impl<'a> Part<'a> {
    pub fn output_text(text: &'a str) -> Self {
        Self::OutputText {
            text,
            annotations: &[],
            logprobs: &[],
        }
    }
}
