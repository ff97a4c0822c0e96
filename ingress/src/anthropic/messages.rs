//! `POST /v1/messages`: Anthropic Messages to the wire `GenerateRequest`,
//! and the answer back, whole or as the API's event stream:
//! `message_start`, then per block `content_block_start` / `ping` (once) /
//! `content_block_delta`s / `content_block_stop`, then `message_delta`
//! (stop reason, output tokens) and `message_stop`.

use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cortex_schemas::{
    merge_system, Accepted, ChatMessage, ContentPart, Delta, Done, GenerateInput, GenerateRequest,
    Role, SamplingParams, ToolCall, ToolChoice, ToolDefinition,
};
use serde_json::{json, Value};

use super::answer::{stop_reason, Block, BlockDelta, Message, StopDelta, StreamEvent, Usage};
use super::types::{MessageContent, MessagesRequest, System};
use crate::error::{ApiError, Dialect};
use crate::generation::Collected;
use crate::ids::new_id;
use crate::pipeline::{Answer, Api, Translated};
use crate::sse::{json_event, Encoder, Waiting};
use crate::validate;

const DIALECT: Dialect = Dialect::Anthropic;

/// `POST /v1/messages`.
#[derive(Debug)]
pub struct Messages;

impl Api for Messages {
    type Request = MessagesRequest;
    type Answer = EventEncoder;
    const DIALECT: Dialect = DIALECT;

    fn model(request: &mut MessagesRequest) -> &mut String {
        &mut request.model
    }

    fn translate(
        request: MessagesRequest,
        deadline_ms: u64,
    ) -> Result<Translated<EventEncoder>, ApiError> {
        let stream = request.stream;
        let id = format!("msg_{}", new_id());
        let model = request.model.clone();
        Ok(Translated {
            generate: translate(request, &id, deadline_ms)?,
            stream,
            answer: EventEncoder::new(id, model),
        })
    }
}

/// A tool call's arguments as the JSON object Anthropic's `input` is.
fn arguments(call: &ToolCall) -> Value {
    serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}))
}

/// The wire request for an Anthropic Messages request, or the field at fault.
pub fn translate(
    request: MessagesRequest,
    id: &str,
    deadline_ms: u64,
) -> Result<GenerateRequest, ApiError> {
    validate::model(&request.model)?;
    let max_tokens = validate::max_tokens("max_tokens", request.max_tokens)?
        .ok_or_else(|| ApiError::invalid("max_tokens", "max_tokens: field required"))?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "messages: must contain at least one message",
        ));
    }
    let top_k = match request.top_k {
        None => None,
        Some(k) if k >= 0 => Some(u32::try_from(k).unwrap_or(u32::MAX)),
        Some(k) => {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k: must be 0 or more, got {k}"),
            ))
        }
    };
    let sampling = SamplingParams {
        temperature: validate::range("temperature", request.temperature, 0.0, 1.0)?,
        top_p: validate::top_p(request.top_p)?,
        top_k,
        ..SamplingParams::default()
    };
    let mut messages = Vec::new();
    match request.system {
        None => {}
        Some(System::Text(text)) => messages.push(ChatMessage::text(Role::System, text)),
        Some(System::Blocks(blocks)) => {
            let mut text = String::new();
            for (j, block) in blocks.into_iter().enumerate() {
                match (block.kind.as_str(), block.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    _ => {
                        return Err(ApiError::invalid(
                            format!("system[{j}]"),
                            "system: only text blocks are supported",
                        ))
                    }
                }
            }
            messages.push(ChatMessage::text(Role::System, text));
        }
    }
    for (i, message) in request.messages.into_iter().enumerate() {
        // Claude Code sends `system` turns inside `messages` (its
        // environment, reminders); below they join the system prompt.
        let role = match message.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "system" => Role::System,
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!("messages[{i}].role: must be user, assistant or system, got {other:?}"),
                ))
            }
        };
        messages.extend(message_in(i, role, message.content)?);
    }
    // Merged, in order, into the leading system prompt: small local models
    // answer a system turn left after the user's question instead of the
    // question, and many templates refuse one mid-conversation.
    let messages = merge_system(messages);
    let thinking = thinking(request.thinking.as_ref())?;
    let tools = request
        .tools
        .unwrap_or_default()
        .into_iter()
        // Server tools run at Anthropic; a local model cannot call them.
        // Deferred ones are not in the context until searched for.
        .filter(|tool| tool.kind.as_deref().is_none_or(|kind| kind == "custom"))
        .filter(|tool| !tool.defer_loading)
        .map(|tool| ToolDefinition {
            name: tool.name,
            description: tool.description,
            parameters: tool
                .input_schema
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        })
        .collect::<Vec<_>>();
    let tool_choice = match request.tool_choice {
        None | Some(Value::Null) => None,
        Some(choice) => Some(match choice["type"].as_str() {
            Some("auto") => ToolChoice::Auto,
            Some("any") => ToolChoice::Required,
            Some("none") => ToolChoice::None,
            Some("tool") => ToolChoice::Function {
                name: choice["name"].as_str().unwrap_or_default().to_string(),
            },
            _ => {
                return Err(ApiError::invalid(
                    "tool_choice.type",
                    "tool_choice.type: auto, any, tool or none",
                ))
            }
        }),
    };
    let tool_choice = tool_choice
        .map(|choice| validate::tool_choice("tool_choice.name", choice, &tools))
        .transpose()?;
    Ok(GenerateRequest {
        request_id: id.to_string(),
        model: request.model,
        input: GenerateInput::Chat { messages },
        tools,
        tool_choice,
        sampling,
        max_tokens: Some(max_tokens),
        stop: validate::stops("stop_sequences", request.stop_sequences.unwrap_or_default())?,
        response_format: None,
        logprobs: None,
        deadline_ms: Some(deadline_ms),
        thinking,
        resume: Vec::new(),
        // Set from the caller and headers by the pipeline.
        tenant: None,
        priority: 0,
    })
}

/// `thinking`: `enabled` (with `budget_tokens`) or `adaptive` ask a
/// reasoning model to think, `disabled` asks it not to (where its template
/// can); absent leaves the model's default.
fn thinking(thinking: Option<&Value>) -> Result<Option<bool>, ApiError> {
    let Some(thinking) = thinking.filter(|t| !t.is_null()) else {
        return Ok(None);
    };
    match thinking["type"].as_str() {
        Some("enabled") => match thinking["budget_tokens"].as_i64() {
            Some(budget) if budget >= 1 => Ok(Some(true)),
            _ => Err(ApiError::invalid(
                "thinking.budget_tokens",
                "thinking.budget_tokens: a positive integer is required when thinking is enabled",
            )),
        },
        Some("adaptive") => Ok(Some(true)),
        Some("disabled") => Ok(Some(false)),
        _ => Err(ApiError::invalid(
            "thinking.type",
            "thinking.type: enabled, adaptive or disabled",
        )),
    }
}

/// One Anthropic message: text and `tool_use` blocks stay in it;
/// `tool_result` blocks become `tool` messages of their own.
fn message_in(i: usize, role: Role, content: MessageContent) -> Result<Vec<ChatMessage>, ApiError> {
    let blocks = match content {
        MessageContent::Text(text) => return Ok(vec![ChatMessage::text(role, text)]),
        MessageContent::Blocks(blocks) => blocks,
    };
    let mut out = Vec::new();
    let mut current = ChatMessage {
        role,
        content: Vec::new(),
        tool_calls: Vec::new(),
        tool_call_id: None,
        name: None,
    };
    for (j, block) in blocks.into_iter().enumerate() {
        let at = |field: &str| format!("messages[{i}].content[{j}]{field}");
        match block.kind.as_str() {
            "text" => current.content.push(ContentPart::Text {
                text: block
                    .text
                    .ok_or_else(|| ApiError::invalid(at(".text"), "a text block needs its text"))?,
            }),
            "tool_use" if role == Role::Assistant => current.tool_calls.push(ToolCall {
                id: block
                    .id
                    .ok_or_else(|| ApiError::invalid(at(".id"), "a tool_use block needs its id"))?,
                name: block.name.ok_or_else(|| {
                    ApiError::invalid(at(".name"), "a tool_use block needs its name")
                })?,
                arguments: block.input.unwrap_or_else(|| json!({})).to_string(),
            }),
            "tool_result" if role == Role::User => {
                let id = block.tool_use_id.ok_or_else(|| {
                    ApiError::invalid(at(".tool_use_id"), "a tool_result block needs tool_use_id")
                })?;
                out.push(ChatMessage {
                    role: Role::Tool,
                    content: vec![ContentPart::Text {
                        text: result_text(block.content, &at(".content"))?,
                    }],
                    tool_calls: Vec::new(),
                    tool_call_id: Some(id),
                    name: None,
                });
            }
            "thinking" | "redacted_thinking" => {}
            kind => {
                return Err(ApiError::invalid(
                    at(".type"),
                    format!("content blocks of type {kind:?} are not supported here"),
                ))
            }
        }
    }
    if !current.content.is_empty() || !current.tool_calls.is_empty() {
        out.push(current);
    }
    if out.is_empty() {
        return Err(ApiError::invalid(
            format!("messages[{i}].content"),
            format!("messages[{i}].content: must not be empty"),
        ));
    }
    Ok(out)
}

/// A tool result's content: a string or text blocks.
fn result_text(content: Option<Value>, param: &str) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(Value::String(text)) => Ok(text),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .map(|b| match (b["type"].as_str(), b["text"].as_str()) {
                (Some("text"), Some(text)) => Ok(text.to_string()),
                _ => Err(ApiError::invalid(
                    param,
                    "tool_result content: only text blocks are supported",
                )),
            })
            .collect(),
        Some(_) => Err(ApiError::invalid(
            param,
            "tool_result content: a string or text blocks",
        )),
    }
}

/// Which content block is open in the stream.
#[derive(Debug, PartialEq)]
enum Open {
    None,
    Thinking(usize),
    Text(usize),
    Tool(usize, u32),
}

/// Anthropic's streaming events, or the whole message.
#[derive(Debug)]
pub struct EventEncoder {
    id: String,
    model: String,
    next_index: usize,
    open: Open,
    pinged: bool,
}

fn event(event: &StreamEvent<'_>) -> Event {
    json_event(Some(event.name()), event)
}

impl EventEncoder {
    pub fn new(id: String, model: String) -> Self {
        Self {
            id,
            model,
            next_index: 0,
            open: Open::None,
            pinged: false,
        }
    }

    fn close(&mut self, events: &mut Vec<Event>) {
        let index = match self.open {
            Open::None => return,
            Open::Thinking(index) | Open::Text(index) | Open::Tool(index, _) => index,
        };
        events.push(event(&StreamEvent::ContentBlockStop { index }));
        self.open = Open::None;
    }

    fn begin(
        &mut self,
        block: Block<'_>,
        open: impl FnOnce(usize) -> Open,
        events: &mut Vec<Event>,
    ) {
        self.close(events);
        let index = self.next_index;
        self.next_index += 1;
        events.push(event(&StreamEvent::ContentBlockStart {
            index,
            content_block: block,
        }));
        if !self.pinged {
            self.pinged = true;
            events.push(event(&StreamEvent::Ping));
        }
        self.open = open(index);
    }

    fn message<'a>(
        &'a self,
        content: Vec<Block<'a>>,
        done: Option<&'a Done>,
        usage: Usage,
    ) -> Message<'a> {
        Message {
            id: &self.id,
            kind: "message",
            role: "assistant",
            model: &self.model,
            content,
            stop_reason: done.map(stop_reason),
            stop_sequence: done.and_then(|d| d.stop_sequence.as_deref()),
            usage,
        }
    }
}

impl Encoder for EventEncoder {
    fn start(&mut self, accepted: &Accepted) -> Vec<Event> {
        let usage = Usage::start(accepted.prompt_tokens.unwrap_or(0));
        let message = self.message(Vec::new(), None, usage);
        vec![event(&StreamEvent::MessageStart { message })]
    }

    fn delta(&mut self, delta: &Delta) -> Vec<Event> {
        let mut events = Vec::new();
        if !delta.reasoning.is_empty() {
            if !matches!(self.open, Open::Thinking(_)) {
                let block = Block::Thinking {
                    thinking: "",
                    signature: "",
                };
                self.begin(block, Open::Thinking, &mut events);
            }
            if let Open::Thinking(index) = self.open {
                let delta = BlockDelta::ThinkingDelta {
                    thinking: &delta.reasoning,
                };
                events.push(event(&StreamEvent::ContentBlockDelta { index, delta }));
            }
        }
        if !delta.text.is_empty() {
            if !matches!(self.open, Open::Text(_)) {
                self.begin(Block::Text { text: "" }, Open::Text, &mut events);
            }
            if let Open::Text(index) = self.open {
                let delta = BlockDelta::TextDelta { text: &delta.text };
                events.push(event(&StreamEvent::ContentBlockDelta { index, delta }));
            }
        }
        for fragment in &delta.tool_calls {
            let same = matches!(self.open, Open::Tool(_, call) if call == fragment.index);
            if !same {
                let block = Block::ToolUse {
                    id: fragment.id.as_deref().unwrap_or_default(),
                    name: fragment.name.as_deref().unwrap_or_default(),
                    input: json!({}),
                };
                self.begin(
                    block,
                    |index| Open::Tool(index, fragment.index),
                    &mut events,
                );
            }
            if let (Open::Tool(index, _), false) = (&self.open, fragment.arguments.is_empty()) {
                let delta = BlockDelta::InputJsonDelta {
                    partial_json: &fragment.arguments,
                };
                let index = *index;
                events.push(event(&StreamEvent::ContentBlockDelta { index, delta }));
            }
        }
        events
    }

    fn done(&mut self, done: &Done) -> Vec<Event> {
        let mut events = Vec::new();
        if self.next_index == 0 {
            // Every message has at least one block, even an empty reply.
            self.begin(Block::Text { text: "" }, Open::Text, &mut events);
        }
        self.close(&mut events);
        events.push(event(&StreamEvent::MessageDelta {
            delta: StopDelta {
                stop_reason: stop_reason(done),
                stop_sequence: done.stop_sequence.as_deref(),
            },
            usage: Usage::of(&done.usage),
        }));
        events.push(event(&StreamEvent::MessageStop));
        events
    }

    fn error(&mut self, error: &ApiError) -> Vec<Event> {
        vec![json_event(Some("error"), &error.body(DIALECT))]
    }

    /// A comment saying what the stream waits for, then a `ping`, as the
    /// real API keeps its streams alive (SDKs skip pings, before
    /// `message_start` too).
    fn keepalive(&mut self, waiting: &Waiting<'_>) -> Vec<Event> {
        vec![
            Event::default().comment(waiting.to_string()),
            json_event(Some("ping"), &json!({"type": "ping"})),
        ]
    }
}

impl Answer for EventEncoder {
    fn whole(self, collected: Collected) -> Response {
        let mut content = Vec::new();
        if !collected.reasoning.is_empty() {
            content.push(Block::Thinking {
                thinking: &collected.reasoning,
                signature: "",
            });
        }
        if !collected.text.is_empty() || collected.tool_calls.is_empty() {
            content.push(Block::Text {
                text: &collected.text,
            });
        }
        for call in &collected.tool_calls {
            content.push(Block::ToolUse {
                id: &call.id,
                name: &call.name,
                input: arguments(call),
            });
        }
        let usage = Usage::of(&collected.done.usage);
        let message = self.message(content, Some(&collected.done), usage);
        Json(message).into_response()
    }
}
