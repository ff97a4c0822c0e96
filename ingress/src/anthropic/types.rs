//! Anthropic Messages request bodies as clients send them.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
pub struct MessagesRequest {
    pub model: String,
    pub messages: Vec<Message>,
    /// Required by the API; checked (with its own message) in translation.
    pub max_tokens: Option<i64>,
    pub system: Option<System>,
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    pub stream: bool,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub tools: Option<Vec<Tool>>,
    pub tool_choice: Option<Value>,
    pub metadata: Option<Value>,
    /// `{"type": "enabled" | "adaptive" | "disabled", ...}`; checked in
    /// translation.
    pub thinking: Option<Value>,
    // Other fields clients send (`output_config`, `context_management`,
    // `service_tier`, `container`, `mcp_servers`, ...) have no local meaning
    // and are ignored, as unknown fields are throughout.
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum System {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: MessageContent,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Blocks(Vec<Block>),
}

/// A content block; `kind` decides which other fields matter.
#[derive(Debug, Deserialize)]
pub struct Block {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    /// `tool_use`
    pub id: Option<String>,
    pub name: Option<String>,
    pub input: Option<Value>,
    /// `tool_result`
    pub tool_use_id: Option<String>,
    pub content: Option<Value>,
    pub is_error: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct Tool {
    /// Absent or `custom` for a client's own tool; Anthropic's server tools
    /// (`web_search_20250305`, `bash_20250124`, ...) name their version here.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub name: String,
    pub description: Option<String>,
    pub input_schema: Option<Value>,
    /// Tool search: the tool stays out of the model's context until a
    /// search loads it (Claude Code's `DeferredToolPlaceholder`).
    #[serde(default)]
    pub defer_loading: bool,
}
