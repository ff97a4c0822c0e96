//! Chat messages and tools, in the neutral shape both HTTP dialects translate to.

use serde::{Deserialize, Serialize};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
    /// The result of a tool call; [`ChatMessage::tool_call_id`] says which.
    Tool,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ChatMessage {
    pub role: Role,
    /// Content parts in order; most messages have exactly one text part.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content: Vec<ContentPart>,
    /// Tool calls the assistant made in this message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For `role: tool`: the id of the call this message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Optional participant or tool name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The conversation with every system message's text joined, in order,
/// into one leading system message (none when there is no system text).
pub fn merge_system(messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
    let (system, rest): (Vec<_>, Vec<_>) =
        messages.into_iter().partition(|m| m.role == Role::System);
    if system.is_empty() {
        return rest;
    }
    let text: Vec<String> = system.iter().map(ChatMessage::joined_text).collect();
    let mut out = Vec::with_capacity(rest.len() + 1);
    out.push(ChatMessage::text(Role::System, text.join("\n\n")));
    out.extend(rest);
    out
}

impl ChatMessage {
    /// A message with a single text part.
    pub fn text(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: vec![ContentPart::Text { text: text.into() }],
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }

    /// The text parts joined, as a chat template sees `message.content`.
    pub fn joined_text(&self) -> String {
        self.content
            .iter()
            .map(|part| match part {
                ContentPart::Text { text } => text.as_str(),
            })
            .collect()
    }
}

/// A piece of message content. Only text today; the tag leaves room for images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text { text: String },
}

/// A complete tool call, as the assistant made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ToolCall {
    /// Unique within the conversation (`call_...`).
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments as JSON text, exactly as the model wrote them.
    pub arguments: String,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct ToolDefinition {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON Schema of the arguments object.
    #[cfg_attr(test, proptest(strategy = "crate::testing::json_value()"))]
    pub parameters: serde_json::Value,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    Auto,
    /// No tool calls.
    None,
    /// At least one tool call.
    Required,
    /// Exactly this function.
    Function { name: String },
}
