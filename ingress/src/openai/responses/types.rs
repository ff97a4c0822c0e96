//! `POST /v1/responses` bodies as clients send them (the Codex CLI, the
//! OpenAI Agents SDK). Unknown fields are ignored; input items stay JSON
//! values so that a bad item gets a message naming it (`input[3].type`).

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    pub model: String,
    pub input: Option<Input>,
    pub instructions: Option<String>,
    #[serde(default)]
    pub stream: bool,
    pub max_output_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    /// Needs responses kept on the server, which Cortex does not do.
    pub previous_response_id: Option<String>,
    /// A stored conversation: the same.
    pub conversation: Option<Value>,
    pub background: Option<bool>,
    pub text: Option<TextConfig>,
    pub reasoning: Option<Reasoning>,
    pub metadata: Option<Value>,
}

/// `input`: a string (one user message) or a list of items.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<Value>),
}

#[derive(Debug, Deserialize)]
pub struct TextConfig {
    pub format: Option<TextFormat>,
}

/// `text.format`: `text`, `json_object`, or `json_schema` with the
/// schema's fields inline (not nested as in chat completions).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct TextFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct Reasoning {
    /// `none` asks a reasoning model not to think; any other effort asks
    /// it to (the effort itself has no local meaning).
    pub effort: Option<String>,
}
