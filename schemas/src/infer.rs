//! Requests on the data plane: `cortex.v1.infer.<model>` and
//! `cortex.v1.neuron.<id>.infer` carry an [`InferRequest`].

use serde::{Deserialize, Serialize};

use crate::chat::{ChatMessage, ToolChoice, ToolDefinition};
use crate::sampling::{ResponseFormat, SamplingParams};

/// What a neuron is asked to do. The `op` tag lets one subject carry both
/// generation and embedding requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum InferRequest {
    Generate(Box<GenerateRequest>),
    Embed(EmbedRequest),
    /// Render and tokenise the prompt only; the answer is a `Done` whose
    /// `usage.prompt_tokens` is the count (nothing is generated).
    CountTokens(Box<GenerateRequest>),
}

impl InferRequest {
    /// The request id, whichever the operation.
    pub fn request_id(&self) -> &str {
        match self {
            Self::Generate(r) | Self::CountTokens(r) => &r.request_id,
            Self::Embed(r) => &r.request_id,
        }
    }

    /// The model id the request names.
    pub fn model(&self) -> &str {
        match self {
            Self::Generate(r) | Self::CountTokens(r) => &r.model,
            Self::Embed(r) => &r.model,
        }
    }
}

/// Generate text (a chat turn or a raw completion).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct GenerateRequest {
    /// Unique id chosen by ingress; also sent as the `Cortex-Request-Id` header.
    pub request_id: String,
    /// Catalogue id of the model (aliases are resolved before this point).
    pub model: String,
    /// The conversation or the raw prompt.
    pub input: GenerateInput,
    /// Functions the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDefinition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    #[serde(default)]
    pub sampling: SamplingParams,
    /// Upper bound on generated tokens; absent means the model's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Generation stops before any of these strings; they are not emitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Return log-probabilities with this many alternatives per token (0 = only the chosen token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<u8>,
    /// Unix time in ms after which the result is useless; also the `Cortex-Deadline` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// For reasoning models: `false` asks the template to skip the
    /// thinking phase (`enable_thinking`), `true` asks for it; absent is
    /// the model's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<bool>,
    /// A generation resumed after its replica failed mid-stream: the ids of
    /// the tokens it had already streamed (`Delta::ids`), in order. The
    /// neuron takes them as generated for this turn (into the KV cache,
    /// the sampler's state and the stop, think and tool parsers) without
    /// sending them again, and goes on from there; usage counts them as
    /// completion tokens. Empty for a fresh request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resume: Vec<u32>,
    /// Who the request is for (ingress names the API key, never the key
    /// itself): a neuron's queue shares its slots fairly between tenants,
    /// so one that floods a model waits behind its own requests, not
    /// others'. Absent: the shared anonymous tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Queue order: a waiting request of higher priority takes the next
    /// free slot before any of lower priority (the `cortex-priority`
    /// header); 0 is the default.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i8,
}

fn is_zero(priority: &i8) -> bool {
    *priority == 0
}

impl GenerateRequest {
    /// A request with every optional field at its default (no tools, the
    /// model's sampling, no bound but the window, no stop strings, ...).
    pub fn new(
        request_id: impl Into<String>,
        model: impl Into<String>,
        input: GenerateInput,
    ) -> Self {
        Self {
            request_id: request_id.into(),
            model: model.into(),
            input,
            tools: Vec::new(),
            tool_choice: None,
            sampling: SamplingParams::default(),
            max_tokens: None,
            stop: Vec::new(),
            response_format: None,
            logprobs: None,
            deadline_ms: None,
            thinking: None,
            resume: Vec::new(),
            tenant: None,
            priority: 0,
        }
    }
}

/// The text a generation starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GenerateInput {
    /// Rendered through the model's chat template.
    Chat { messages: Vec<ChatMessage> },
    /// Used verbatim (legacy completions).
    Text { prompt: String },
}

/// Embed one or more texts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct EmbedRequest {
    pub request_id: String,
    pub model: String,
    /// Texts to embed; the response keeps their order.
    pub inputs: Vec<String>,
    /// L2-normalise each vector (the usual choice for cosine similarity).
    #[serde(default = "default_true")]
    pub normalize: bool,
    /// Truncate inputs longer than the model's context instead of failing.
    #[serde(default)]
    pub truncate: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

fn default_true() -> bool {
    true
}

/// Cancel an in-flight request (`cortex.v1.neuron.<id>.cancel`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct CancelRequest {
    pub request_id: String,
}
