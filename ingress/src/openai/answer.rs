//! OpenAI chat and legacy completion answers as typed bodies: the whole
//! `chat.completion` / `text_completion` objects and their stream chunks.
//! Borrowed fields: a chunk is built and written once per token.

use cortex_schemas::{Done, FinishReason, TokenLogprob, ToolCall, ToolCallDelta};
use serde::Serialize;

/// OpenAI's `finish_reason`.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
    }
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: PromptDetails,
}

#[derive(Debug, Serialize)]
pub struct PromptDetails {
    pub cached_tokens: u32,
}

impl Usage {
    pub fn of(done: &Done) -> Self {
        let usage = &done.usage;
        Self {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens + usage.completion_tokens,
            prompt_tokens_details: PromptDetails {
                cached_tokens: usage.cached_tokens,
            },
        }
    }
}

/// A whole `chat.completion`.
#[derive(Debug, Serialize)]
pub struct ChatCompletion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: [Choice<'a>; 1],
    pub usage: Usage,
    pub system_fingerprint: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct Choice<'a> {
    pub index: u32,
    pub message: Message<'a>,
    pub logprobs: Option<Logprobs<'a>>,
    pub finish_reason: &'static str,
}

/// The assistant's message; `content` is null when it only calls tools.
#[derive(Debug, Serialize)]
pub struct Message<'a> {
    pub role: &'static str,
    pub content: Option<&'a str>,
    /// A reasoning model's thinking, where DeepSeek's API and vLLM put it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut<'a>>,
    pub refusal: Option<&'a str>,
}

/// A tool call, whole (`index` absent) or a streamed fragment of one.
#[derive(Debug, Serialize)]
pub struct ToolCallOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionOut<'a>,
}

#[derive(Debug, Serialize)]
pub struct FunctionOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub arguments: &'a str,
}

impl<'a> ToolCallOut<'a> {
    pub fn whole(call: &'a ToolCall) -> Self {
        Self {
            index: None,
            id: Some(&call.id),
            kind: Some("function"),
            function: FunctionOut {
                name: Some(&call.name),
                arguments: &call.arguments,
            },
        }
    }

    /// A fragment: the first of a call names it, later ones add arguments.
    pub fn fragment(fragment: &'a ToolCallDelta) -> Self {
        Self {
            index: Some(fragment.index),
            id: fragment.id.as_deref(),
            kind: fragment.id.as_ref().map(|_| "function"),
            function: FunctionOut {
                name: fragment.name.as_deref(),
                arguments: &fragment.arguments,
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Logprobs<'a> {
    pub content: Vec<Logprob<'a>>,
    pub refusal: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct Logprob<'a> {
    pub token: &'a str,
    pub logprob: f64,
    pub bytes: &'a [u8],
    pub top_logprobs: Vec<TopLogprob<'a>>,
}

#[derive(Debug, Serialize)]
pub struct TopLogprob<'a> {
    pub token: &'a str,
    pub logprob: f64,
    pub bytes: &'a [u8],
}

impl<'a> Logprobs<'a> {
    pub fn of(logprobs: &'a [TokenLogprob]) -> Self {
        let content = logprobs
            .iter()
            .map(|l| Logprob {
                token: &l.token,
                logprob: l.logprob,
                bytes: l.token.as_bytes(),
                top_logprobs: l
                    .top
                    .iter()
                    .map(|t| TopLogprob {
                        token: &t.token,
                        logprob: t.logprob,
                        bytes: t.token.as_bytes(),
                    })
                    .collect(),
            })
            .collect();
        Self {
            content,
            refusal: None,
        }
    }
}

/// One `chat.completion.chunk`.
#[derive(Debug, Serialize)]
pub struct Chunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub system_fingerprint: Option<&'a str>,
    /// Empty in the closing usage chunk.
    pub choices: Vec<ChunkChoice<'a>>,
    /// Present (null until the last chunk) when the client asked for usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Serialize)]
pub struct ChunkChoice<'a> {
    pub index: u32,
    pub delta: ChunkDelta<'a>,
    pub logprobs: Option<Logprobs<'a>>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Default, Serialize)]
pub struct ChunkDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut<'a>>,
    /// Null in the role chunk, absent afterwards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Option<&'a str>>,
}

/// A `text_completion`, whole or one streamed chunk of it.
#[derive(Debug, Serialize)]
pub struct TextCompletion<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<TextChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Serialize)]
pub struct TextChoice<'a> {
    pub text: &'a str,
    pub index: u32,
    pub logprobs: Option<Logprobs<'a>>,
    pub finish_reason: Option<&'static str>,
}
