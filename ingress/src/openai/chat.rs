//! `POST /v1/chat/completions`: OpenAI chat to the wire `GenerateRequest`,
//! and the answer back, whole or as `chat.completion.chunk` events.

use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cortex_schemas::{
    Accepted, ChatMessage, ContentPart, Delta, Done, GenerateInput, GenerateRequest,
    ResponseFormat, Role, SamplingParams, ToolCall, ToolChoice, ToolDefinition,
};
use serde_json::{json, Value};

use super::answer::{
    finish_reason, ChatCompletion, Choice, Chunk, ChunkChoice, ChunkDelta, Logprobs, Message,
    ToolCallOut, Usage,
};
use super::types::{ChatRequest, Content, Message as MessageIn, ResponseFormat as FormatIn};
use crate::error::{ApiError, Dialect};
use crate::generation::Collected;
use crate::ids::{new_id, unix_seconds};
use crate::pipeline::{Answer, Api, Translated};
use crate::sse::{json_event, Encoder};
use crate::validate;

const DIALECT: Dialect = Dialect::OpenAi;

/// `POST /v1/chat/completions`.
#[derive(Debug)]
pub struct Chat;

impl Api for Chat {
    type Request = ChatRequest;
    type Answer = ChunkEncoder;
    const DIALECT: Dialect = DIALECT;

    fn model(request: &mut ChatRequest) -> &mut String {
        &mut request.model
    }

    fn translate(
        request: ChatRequest,
        deadline_ms: u64,
    ) -> Result<Translated<ChunkEncoder>, ApiError> {
        let stream = request.stream;
        let include_usage = request
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        let id = format!("chatcmpl-{}", new_id());
        let model = request.model.clone();
        let generate = translate(request, &id, deadline_ms)?;
        let logprobs = generate.logprobs.is_some();
        Ok(Translated {
            generate,
            stream,
            answer: ChunkEncoder {
                id,
                model,
                created: unix_seconds(),
                include_usage,
                logprobs,
            },
        })
    }
}

/// The wire request for an OpenAI chat request, or the field at fault.
pub fn translate(
    request: ChatRequest,
    id: &str,
    deadline_ms: u64,
) -> Result<GenerateRequest, ApiError> {
    validate::model(&request.model)?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "messages: must contain at least one message",
        ));
    }
    if let Some(n) = request.n {
        if n != 1 {
            return Err(ApiError::invalid(
                "n",
                format!("n: only 1 choice is supported, got {n}"),
            ));
        }
    }
    let max_tokens = match request.max_completion_tokens {
        Some(_) => validate::max_tokens("max_completion_tokens", request.max_completion_tokens)?,
        None => validate::max_tokens("max_tokens", request.max_tokens)?,
    };
    let top_logprobs = match request.top_logprobs {
        None => None,
        Some(n) if (0..=20).contains(&n) => Some(n as u8),
        Some(n) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                format!("top_logprobs: must be between 0 and 20, got {n}"),
            ))
        }
    };
    if top_logprobs.is_some() && request.logprobs != Some(true) {
        return Err(ApiError::invalid(
            "top_logprobs",
            "top_logprobs: requires logprobs: true",
        ));
    }
    let sampling = SamplingParams {
        temperature: validate::range("temperature", request.temperature, 0.0, 2.0)?,
        top_p: validate::top_p(request.top_p)?,
        seed: request.seed.map(|s| s as u64),
        presence_penalty: validate::range("presence_penalty", request.presence_penalty, -2.0, 2.0)?,
        frequency_penalty: validate::range(
            "frequency_penalty",
            request.frequency_penalty,
            -2.0,
            2.0,
        )?,
        ..SamplingParams::default()
    };
    let mut messages = Vec::with_capacity(request.messages.len());
    for (i, message) in request.messages.into_iter().enumerate() {
        messages.push(message_in(i, message)?);
    }
    let tools = request
        .tools
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, tool)| {
            if tool.kind.as_deref().is_some_and(|k| k != "function") {
                return Err(ApiError::invalid(
                    format!("tools[{i}].type"),
                    "tools: only type \"function\" is supported",
                ));
            }
            if tool.function.name.is_empty() {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.name"),
                    "tools: a function needs a name",
                ));
            }
            Ok(ToolDefinition {
                name: tool.function.name,
                description: tool.function.description,
                parameters: tool
                    .function
                    .parameters
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tool_choice = match request.tool_choice {
        None | Some(Value::Null) => None,
        Some(value) => Some(tool_choice(&value, &tools)?),
    };
    let thinking = match (
        request
            .chat_template_kwargs
            .as_ref()
            .map(|k| &k["enable_thinking"]),
        request.reasoning_effort.as_deref(),
    ) {
        (Some(Value::Bool(on)), _) => Some(*on),
        (Some(v), _) if !v.is_null() => {
            return Err(ApiError::invalid(
                "chat_template_kwargs.enable_thinking",
                "chat_template_kwargs.enable_thinking: true or false",
            ))
        }
        (_, Some("none")) => Some(false),
        (_, Some(_)) => Some(true),
        (_, None) => None,
    };
    Ok(GenerateRequest {
        request_id: id.to_string(),
        model: request.model,
        input: GenerateInput::Chat { messages },
        tools,
        tool_choice,
        sampling,
        max_tokens,
        stop: validate::stops(
            "stop",
            request.stop.map(|s| s.into_vec()).unwrap_or_default(),
        )?,
        response_format: response_format(request.response_format)?,
        logprobs: (request.logprobs == Some(true)).then(|| top_logprobs.unwrap_or(0)),
        deadline_ms: Some(deadline_ms),
        thinking,
        resume: Vec::new(),
        // Set from the caller and headers by the pipeline.
        tenant: None,
        priority: 0,
    })
}

fn message_in(i: usize, message: MessageIn) -> Result<ChatMessage, ApiError> {
    let role = match message.role.as_str() {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" | "function" => Role::Tool,
        other => {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!("messages[{i}].role: unknown role {other:?} (system, developer, user, assistant, tool)"),
            ))
        }
    };
    let content = match message.content {
        None => Vec::new(),
        Some(Content::Text(text)) => vec![ContentPart::Text { text }],
        Some(Content::Parts(parts)) => parts
            .into_iter()
            .enumerate()
            .map(|(j, part)| match (part.kind.as_str(), part.text) {
                ("text", Some(text)) => Ok(ContentPart::Text { text }),
                ("text", None) => Err(ApiError::invalid(
                    format!("messages[{i}].content[{j}].text"),
                    "a text part needs its text",
                )),
                (kind, _) => Err(ApiError::invalid(
                    format!("messages[{i}].content[{j}].type"),
                    format!("content parts of type {kind:?} are not supported; send text"),
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    let tool_calls: Vec<ToolCall> = message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|call| ToolCall {
            id: call.id,
            name: call.function.name,
            arguments: call.function.arguments,
        })
        .collect();
    if role == Role::Tool && message.tool_call_id.is_none() && message.name.is_none() {
        return Err(ApiError::invalid(
            format!("messages[{i}].tool_call_id"),
            "a tool message needs tool_call_id",
        ));
    }
    if content.is_empty() && tool_calls.is_empty() && role != Role::Assistant {
        return Err(ApiError::invalid(
            format!("messages[{i}].content"),
            format!("messages[{i}].content: must not be empty"),
        ));
    }
    Ok(ChatMessage {
        role,
        content,
        tool_calls,
        tool_call_id: message.tool_call_id,
        name: message.name,
    })
}

fn tool_choice(value: &Value, tools: &[ToolDefinition]) -> Result<ToolChoice, ApiError> {
    let choice = match value {
        Value::String(s) if s == "auto" => ToolChoice::Auto,
        Value::String(s) if s == "none" => ToolChoice::None,
        Value::String(s) if s == "required" => ToolChoice::Required,
        Value::Object(_) => match value["function"]["name"].as_str() {
            Some(name) => ToolChoice::Function {
                name: name.to_string(),
            },
            None => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "tool_choice: an object needs function.name",
                ))
            }
        },
        _ => {
            return Err(ApiError::invalid(
                "tool_choice",
                "tool_choice: auto, none, required, or {\"type\":\"function\",\"function\":{\"name\":...}}",
            ))
        }
    };
    validate::tool_choice("tool_choice", choice, tools)
}

fn response_format(format: Option<FormatIn>) -> Result<Option<ResponseFormat>, ApiError> {
    let Some(format) = format else {
        return Ok(None);
    };
    let schema = format.json_schema;
    validate::response_format(
        "response_format.type",
        &format.kind,
        "response_format.json_schema",
        || schema.map(|s| (s.name, s.schema, s.strict.unwrap_or(false))),
    )
    .map(Some)
}

/// `chat.completion.chunk` events: role first, content and tool-call
/// deltas, the finish reason, an optional usage chunk, then `[DONE]`; or
/// the whole `chat.completion`.
#[derive(Debug)]
pub struct ChunkEncoder {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub include_usage: bool,
    pub logprobs: bool,
}

impl ChunkEncoder {
    fn chunk<'a>(
        &'a self,
        delta: ChunkDelta<'a>,
        finish: Option<&'static str>,
        logprobs: Option<Logprobs<'a>>,
    ) -> Event {
        let choice = ChunkChoice {
            index: 0,
            delta,
            logprobs,
            finish_reason: finish,
        };
        self.event(vec![choice], self.include_usage.then_some(None))
    }

    fn event<'a>(&'a self, choices: Vec<ChunkChoice<'a>>, usage: Option<Option<Usage>>) -> Event {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: None,
            choices,
            usage,
        };
        json_event(None, &chunk)
    }
}

impl Encoder for ChunkEncoder {
    fn start(&mut self, _accepted: &Accepted) -> Vec<Event> {
        let delta = ChunkDelta {
            role: Some("assistant"),
            content: Some(""),
            refusal: Some(None),
            ..ChunkDelta::default()
        };
        vec![self.chunk(delta, None, None)]
    }

    fn delta(&mut self, delta: &Delta) -> Vec<Event> {
        let mut events = Vec::new();
        if !delta.reasoning.is_empty() {
            let reasoning = ChunkDelta {
                reasoning_content: Some(&delta.reasoning),
                ..ChunkDelta::default()
            };
            events.push(self.chunk(reasoning, None, None));
        }
        let logprobs =
            (self.logprobs && !delta.logprobs.is_empty()).then(|| Logprobs::of(&delta.logprobs));
        // A delta may carry log-probabilities without text (half a character).
        if !delta.text.is_empty() || logprobs.is_some() {
            let text = ChunkDelta {
                content: Some(&delta.text),
                ..ChunkDelta::default()
            };
            events.push(self.chunk(text, None, logprobs));
        }
        for fragment in &delta.tool_calls {
            let call = ChunkDelta {
                tool_calls: vec![ToolCallOut::fragment(fragment)],
                ..ChunkDelta::default()
            };
            events.push(self.chunk(call, None, None));
        }
        events
    }

    fn done(&mut self, done: &Done) -> Vec<Event> {
        let finish = Some(finish_reason(done.finish_reason));
        let mut events = vec![self.chunk(ChunkDelta::default(), finish, None)];
        if self.include_usage {
            events.push(self.event(Vec::new(), Some(Some(Usage::of(done)))));
        }
        events.push(Event::default().data("[DONE]"));
        events
    }

    fn error(&mut self, error: &ApiError) -> Vec<Event> {
        vec![json_event(None, &error.body(DIALECT))]
    }
}

impl Answer for ChunkEncoder {
    fn whole(self, collected: Collected) -> Response {
        let only_calls = collected.text.is_empty() && !collected.tool_calls.is_empty();
        let message = Message {
            role: "assistant",
            content: (!only_calls).then_some(collected.text.as_str()),
            reasoning_content: (!collected.reasoning.is_empty())
                .then_some(collected.reasoning.as_str()),
            tool_calls: collected
                .tool_calls
                .iter()
                .map(ToolCallOut::whole)
                .collect(),
            refusal: None,
        };
        let completion = ChatCompletion {
            id: &self.id,
            object: "chat.completion",
            created: unix_seconds(),
            model: &self.model,
            choices: [Choice {
                index: 0,
                message,
                logprobs: self.logprobs.then(|| Logprobs::of(&collected.logprobs)),
                finish_reason: finish_reason(collected.done.finish_reason),
            }],
            usage: Usage::of(&collected.done),
            system_fingerprint: None,
        };
        Json(completion).into_response()
    }
}
