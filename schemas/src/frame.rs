//! Frames a responder streams back on the request's reply inbox.
//!
//! Order: `Accepted`, then `Keepalive`s while queued or pre-filling, then
//! `Delta`s, then exactly one terminal frame (`Done`, `Embeddings` or
//! `Error`). Each frame travels with a `Cortex-Seq` header counting from 0.

use serde::{Deserialize, Serialize};

use crate::error::WireError;

/// One message of a streamed reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    Accepted(Accepted),
    Keepalive(Keepalive),
    Delta(Delta),
    Done(Done),
    /// Terminal frame of an embedding request.
    Embeddings(EmbedResponse),
    Error(WireError),
}

impl Frame {
    /// Whether this frame ends the stream.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Done(_) | Self::Embeddings(_) | Self::Error(_))
    }
}

/// The responder took the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Accepted {
    /// Which neuron answers: the target for `cancel` and directed retries.
    pub neuron: String,
    pub request_id: String,
    /// 0 when a slot was free at once.
    pub queue_position: u32,
    /// Tokens of the rendered prompt, when known at acceptance (dialects
    /// that report input tokens at the start of a stream use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u32>,
}

/// Still alive: sent each keepalive period while nothing else is sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Keepalive {
    /// Position in the neuron's queue, when still queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
}

/// Newly generated output; may batch several tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Delta {
    /// Text to append (always whole UTF-8 characters).
    #[serde(default)]
    pub text: String,
    /// Reasoning to append: what a reasoning model wrote between `<think>`
    /// and `</think>`, kept out of `text`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reasoning: String,
    /// How many tokens this delta covers.
    #[serde(default)]
    pub tokens: u32,
    /// Fragments of tool calls being generated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallDelta>,
    /// One entry per token, when the request asked for log-probabilities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<TokenLogprob>,
    /// The ids of the tokens this delta covers, in order: what a
    /// generation resumed on another replica replays
    /// ([`GenerateRequest::resume`](crate::infer::GenerateRequest::resume)).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<u32>,
}

impl Delta {
    /// Appends `more`, which came after this one.
    pub fn append(&mut self, more: Delta) {
        self.text.push_str(&more.text);
        self.reasoning.push_str(&more.reasoning);
        self.tokens += more.tokens;
        self.tool_calls.extend(more.tool_calls);
        self.logprobs.extend(more.logprobs);
        self.ids.extend(more.ids);
    }
}

/// A fragment of a tool call: the first fragment of a call carries its id and
/// name, later ones append to its arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ToolCallDelta {
    /// Position of the call in the message (0-based).
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// JSON text to append to the call's arguments.
    #[serde(default)]
    pub arguments: String,
}

/// Log-probability of one generated token, with the best alternatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TokenLogprob {
    pub token: String,
    #[cfg_attr(test, proptest(strategy = "crate::testing::finite_f64()"))]
    pub logprob: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<TopLogprob>,
}

/// An alternative token and its log-probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TopLogprob {
    pub token: String,
    #[cfg_attr(test, proptest(strategy = "crate::testing::finite_f64()"))]
    pub logprob: f64,
}

/// Successful end of a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Done {
    pub finish_reason: FinishReason,
    /// The stop sequence that ended generation, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequence: Option<String>,
    pub usage: Usage,
    pub timings: Timings,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of turn or a stop sequence.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    /// The model called one or more tools.
    ToolCalls,
}

/// Token accounting of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens served from a prefix cache.
    #[serde(default)]
    pub cached_tokens: u32,
}

/// Where the time went on the neuron, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct Timings {
    pub queue_ms: u64,
    pub prefill_ms: u64,
    pub decode_ms: u64,
}

/// Terminal frame of an embedding request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct EmbedResponse {
    pub model: String,
    /// One vector per input, in input order.
    #[cfg_attr(
        test,
        proptest(strategy = "proptest::collection::vec(crate::testing::vec_f32(), 0..4)")
    )]
    pub embeddings: Vec<Vec<f32>>,
    pub usage: Usage,
}
