//! `POST /v1/chat/completions`: OpenAI chat to the wire `GenerateRequest`,
//! and the answer back, whole or as `chat.completion.chunk` events.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use cortex_schemas::{
    Accepted, ChatMessage, ContentPart, Delta, Done, FinishReason, GenerateInput, GenerateRequest,
    InferRequest, ResponseFormat, Role, SamplingParams, ToolCall, ToolChoice, ToolDefinition,
};
use serde_json::{json, Value};

use super::types::{ChatRequest, Content, Message, ResponseFormat as FormatIn};
use crate::auth::Caller;
use crate::error::{ApiError, Dialect};
use crate::generation::{answer, caller, collect_whole};
use crate::ids::{new_id, unix_seconds};
use crate::sse::{json_event, Encoder};
use crate::state::AppState;
use crate::validate;

const DIALECT: Dialect = Dialect::OpenAi;

pub async fn handle(
    State(state): State<AppState>,
    caller_ext: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let result = serve(&state, caller(caller_ext), &headers, body, started).await;
    answer(&state, DIALECT, started, result)
}

async fn serve(
    state: &AppState,
    caller: Caller,
    headers: &HeaderMap,
    body: Body,
    started: Instant,
) -> Result<Response, (String, ApiError)> {
    let permit = state.admit().map_err(|e| (String::new(), e))?;
    let mut request: ChatRequest =
        crate::body::read_json(body, state.config.body_limit, state.config.body_timeout)
            .await
            .map_err(|e| (String::new(), e))?;
    // Aliases become catalogue ids before anything is sent.
    request.model = state.catalog.resolve(&request.model);
    let model = request.model.clone();
    let stream = request.stream;
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let id = format!("chatcmpl-{}", new_id());
    let deadline = state.deadline_ms(headers);
    let generate = translate(request, &id, deadline).map_err(|e| (model.clone(), e))?;
    let logprobs = generate.logprobs.is_some();
    let opened = crate::call::open(state, &InferRequest::Generate(Box::new(generate)), deadline)
        .await
        .map_err(|e| (model.clone(), e))?;
    if stream {
        let encoder = ChunkEncoder {
            id,
            model,
            created: unix_seconds(),
            include_usage,
            logprobs,
        };
        return Ok(crate::sse::respond(
            state,
            opened,
            encoder,
            crate::sse::Context {
                permit,
                caller,
                dialect: DIALECT,
                started,
            },
        ));
    }
    let collected = collect_whole(state, caller, opened, DIALECT, started).await?;
    let done = &collected.done;
    let message = json!({
        "role": "assistant",
        "content": if collected.text.is_empty() && !collected.tool_calls.is_empty() { Value::Null } else { Value::String(collected.text) },
        "tool_calls": if collected.tool_calls.is_empty() { Value::Null } else { tool_calls_json(&collected.tool_calls) },
        "refusal": Value::Null,
    });
    let mut message = message;
    // A reasoning model's thinking, where DeepSeek's API and vLLM put it.
    if !collected.reasoning.is_empty() {
        message["reasoning_content"] = Value::String(collected.reasoning.clone());
    }
    if message["tool_calls"].is_null() {
        if let Some(object) = message.as_object_mut() {
            object.remove("tool_calls");
        }
    }
    let logprobs_json = if logprobs {
        json!({ "content": collected.logprobs.iter().map(logprob_json).collect::<Vec<_>>(), "refusal": null })
    } else {
        Value::Null
    };
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_seconds(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": logprobs_json,
            "finish_reason": finish_reason(done.finish_reason),
        }],
        "usage": usage_json(done),
        "system_fingerprint": Value::Null,
    }))
    .into_response())
}

/// OpenAI's `finish_reason`.
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
    }
}

pub fn usage_json(done: &Done) -> Value {
    json!({
        "prompt_tokens": done.usage.prompt_tokens,
        "completion_tokens": done.usage.completion_tokens,
        "total_tokens": done.usage.prompt_tokens + done.usage.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": done.usage.cached_tokens },
    })
}

fn tool_calls_json(calls: &[ToolCall]) -> Value {
    calls
        .iter()
        .map(|call| {
            json!({
                "id": call.id,
                "type": "function",
                "function": { "name": call.name, "arguments": call.arguments },
            })
        })
        .collect()
}

fn logprob_json(logprob: &cortex_schemas::TokenLogprob) -> Value {
    json!({
        "token": logprob.token,
        "logprob": logprob.logprob,
        "bytes": logprob.token.as_bytes(),
        "top_logprobs": logprob.top.iter().map(|t| json!({
            "token": t.token, "logprob": t.logprob, "bytes": t.token.as_bytes(),
        })).collect::<Vec<_>>(),
    })
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
    })
}

fn message_in(i: usize, message: Message) -> Result<ChatMessage, ApiError> {
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
            Some(name) => ToolChoice::Function { name: name.to_string() },
            None => return Err(ApiError::invalid("tool_choice", "tool_choice: an object needs function.name")),
        },
        _ => return Err(ApiError::invalid("tool_choice", "tool_choice: auto, none, required, or {\"type\":\"function\",\"function\":{\"name\":...}}")),
    };
    if let ToolChoice::Function { name } = &choice {
        if !tools.iter().any(|t| &t.name == name) {
            return Err(ApiError::invalid(
                "tool_choice",
                format!("tool_choice: no tool named {name:?}"),
            ));
        }
    }
    if tools.is_empty() && matches!(choice, ToolChoice::Required) {
        return Err(ApiError::invalid(
            "tool_choice",
            "tool_choice: required needs tools",
        ));
    }
    Ok(choice)
}

fn response_format(format: Option<FormatIn>) -> Result<Option<ResponseFormat>, ApiError> {
    let Some(format) = format else {
        return Ok(None);
    };
    match format.kind.as_str() {
        "text" => Ok(Some(ResponseFormat::Text)),
        "json_object" => Ok(Some(ResponseFormat::JsonObject)),
        "json_schema" => {
            let schema = format.json_schema.ok_or_else(|| {
                ApiError::invalid("response_format.json_schema", "json_schema: missing")
            })?;
            Ok(Some(ResponseFormat::JsonSchema {
                name: schema.name,
                schema: schema.schema,
                strict: schema.strict.unwrap_or(false),
            }))
        }
        other => Err(ApiError::invalid(
            "response_format.type",
            format!("response_format.type: unknown {other:?} (text, json_object, json_schema)"),
        )),
    }
}

/// `chat.completion.chunk` events: role first, content and tool-call
/// deltas, the finish reason, an optional usage chunk, then `[DONE]`.
#[derive(Debug)]
pub struct ChunkEncoder {
    pub id: String,
    pub model: String,
    pub created: u64,
    pub include_usage: bool,
    pub logprobs: bool,
}

impl ChunkEncoder {
    fn chunk(&self, delta: Value, finish: Option<&str>, logprobs: Value) -> Event {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": Value::Null,
            "choices": [{ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish }],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        json_event(None, &chunk)
    }
}

impl Encoder for ChunkEncoder {
    fn start(&mut self, _accepted: &Accepted) -> Vec<Event> {
        vec![self.chunk(
            json!({"role": "assistant", "content": "", "refusal": null}),
            None,
            Value::Null,
        )]
    }

    fn delta(&mut self, delta: &Delta) -> Vec<Event> {
        let mut events = Vec::new();
        let logprobs = if self.logprobs && !delta.logprobs.is_empty() {
            json!({ "content": delta.logprobs.iter().map(logprob_json).collect::<Vec<_>>() })
        } else {
            Value::Null
        };
        if !delta.reasoning.is_empty() {
            events.push(self.chunk(
                json!({"reasoning_content": delta.reasoning}),
                None,
                Value::Null,
            ));
        }
        // A delta may carry log-probabilities without text (half a character).
        if !delta.text.is_empty() || !logprobs.is_null() {
            events.push(self.chunk(json!({"content": delta.text}), None, logprobs));
        }
        for fragment in &delta.tool_calls {
            let mut call =
                json!({ "index": fragment.index, "function": { "arguments": fragment.arguments } });
            if let Some(id) = &fragment.id {
                call["id"] = json!(id);
                call["type"] = json!("function");
            }
            if let Some(name) = &fragment.name {
                call["function"]["name"] = json!(name);
            }
            events.push(self.chunk(json!({ "tool_calls": [call] }), None, Value::Null));
        }
        events
    }

    fn done(&mut self, done: &Done) -> Vec<Event> {
        let mut events = vec![self.chunk(
            json!({}),
            Some(finish_reason(done.finish_reason)),
            Value::Null,
        )];
        if self.include_usage {
            events.push(json_event(
                None,
                &json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "system_fingerprint": Value::Null,
                    "choices": [],
                    "usage": usage_json(done),
                }),
            ));
        }
        events.push(Event::default().data("[DONE]"));
        events
    }

    fn error(&mut self, error: &ApiError) -> Vec<Event> {
        vec![json_event(None, &error.body(DIALECT))]
    }
}
