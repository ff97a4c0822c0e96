//! `POST /v1/responses`, the OpenAI Responses API: `input` (a string or
//! items: messages, `function_call`, `function_call_output`) and
//! `instructions` to the wire `GenerateRequest`; the answer whole or as
//! the API's semantic events ([`stream`]), in the bodies of [`answer`].
//!
//! Responses are not stored: `previous_response_id`, `conversation` and
//! `background` get a clear error, and the answer says `store: false`.
//! Hosted tools (web search, file search, code interpreter, ...) run at
//! OpenAI; a local model cannot call them, so they are left out, as the
//! Anthropic dialect leaves out server tools.

pub mod answer;
pub mod stream;
pub mod types;

use cortex_schemas::{
    ChatMessage, ContentPart, GenerateInput, GenerateRequest, ResponseFormat, Role, SamplingParams,
    ToolCall, ToolChoice, ToolDefinition,
};
use serde_json::{json, Value};

use self::stream::ResponseEncoder;
use self::types::{Input, ResponsesRequest, TextFormat};
use crate::error::{ApiError, Dialect};
use crate::ids::new_id;
use crate::pipeline::{Api, Translated};
use crate::validate;

/// `POST /v1/responses`.
#[derive(Debug)]
pub struct Responses;

impl Api for Responses {
    type Request = ResponsesRequest;
    type Answer = ResponseEncoder;
    const DIALECT: Dialect = Dialect::OpenAi;

    fn model(request: &mut ResponsesRequest) -> &mut String {
        &mut request.model
    }

    fn translate(
        request: ResponsesRequest,
        deadline_ms: u64,
    ) -> Result<Translated<ResponseEncoder>, ApiError> {
        let id = format!("resp_{}", new_id());
        let stream = request.stream;
        let echo = answer::Echo::of(&request);
        let generate = translate(request, &id, deadline_ms)?;
        Ok(Translated {
            generate,
            stream,
            answer: ResponseEncoder::new(id, echo),
        })
    }
}

/// The wire request for a Responses request, or the field at fault.
pub fn translate(
    request: ResponsesRequest,
    id: &str,
    deadline_ms: u64,
) -> Result<GenerateRequest, ApiError> {
    validate::model(&request.model)?;
    let stored = "responses are not stored here; send the whole conversation in input";
    if request.previous_response_id.is_some() {
        return Err(ApiError::invalid(
            "previous_response_id",
            format!("previous_response_id: {stored}"),
        ));
    }
    if request.conversation.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(ApiError::invalid(
            "conversation",
            format!("conversation: {stored}"),
        ));
    }
    if request.background == Some(true) {
        return Err(ApiError::invalid(
            "background",
            "background: not supported; stream the response instead",
        ));
    }
    let mut messages = Vec::new();
    if let Some(instructions) = request.instructions.filter(|i| !i.is_empty()) {
        messages.push(ChatMessage::text(Role::System, instructions));
    }
    match request.input {
        None => return Err(ApiError::invalid("input", "input: field required")),
        Some(Input::Text(text)) if text.is_empty() => {
            return Err(ApiError::invalid("input", "input: must not be empty"))
        }
        Some(Input::Text(text)) => messages.push(ChatMessage::text(Role::User, text)),
        Some(Input::Items(items)) => {
            for (i, item) in items.iter().enumerate() {
                item_in(i, item, &mut messages)?;
            }
        }
    }
    if !messages.iter().any(|m| m.role != Role::System) {
        return Err(ApiError::invalid(
            "input",
            "input: must contain at least one message",
        ));
    }
    let tools = tools(request.tools.unwrap_or_default())?;
    let tool_choice = match request.tool_choice {
        None | Some(Value::Null) => None,
        Some(value) => Some(tool_choice(&value, &tools)?),
    };
    let thinking = request
        .reasoning
        .and_then(|r| r.effort)
        .map(|effort| effort != "none");
    Ok(GenerateRequest {
        request_id: id.to_string(),
        model: request.model,
        input: GenerateInput::Chat { messages },
        tools,
        tool_choice,
        sampling: SamplingParams {
            temperature: validate::range("temperature", request.temperature, 0.0, 2.0)?,
            top_p: validate::top_p(request.top_p)?,
            ..SamplingParams::default()
        },
        max_tokens: validate::max_tokens("max_output_tokens", request.max_output_tokens)?,
        stop: Vec::new(),
        response_format: response_format(request.text.and_then(|t| t.format))?,
        logprobs: None,
        deadline_ms: Some(deadline_ms),
        thinking,
        resume: Vec::new(),
        // Set from the caller and headers by the pipeline.
        tenant: None,
        priority: 0,
    })
}

/// One input item into the conversation. A `function_call` joins the
/// assistant turn before it (a model's reply may be text and calls).
fn item_in(i: usize, item: &Value, messages: &mut Vec<ChatMessage>) -> Result<(), ApiError> {
    let at = |field: &str| format!("input[{i}]{field}");
    let text_of = |field: &str| -> Result<String, ApiError> {
        match &item[field] {
            Value::String(text) => Ok(text.clone()),
            _ => Err(ApiError::invalid(
                at(&format!(".{field}")),
                format!("input[{i}].{field}: a string is required"),
            )),
        }
    };
    let kind = match &item["type"] {
        Value::String(kind) => kind.as_str(),
        // Easy input messages: `{role, content}` without a type.
        Value::Null if item.get("role").is_some() => "message",
        _ => {
            return Err(ApiError::invalid(
                at(".type"),
                format!("input[{i}].type: required (message, function_call, function_call_output)"),
            ))
        }
    };
    match kind {
        "message" => {
            let role = match item["role"].as_str() {
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                Some("system" | "developer") => Role::System,
                other => {
                    return Err(ApiError::invalid(
                        at(".role"),
                        format!("input[{i}].role: user, assistant, system or developer, got {other:?}"),
                    ))
                }
            };
            let content = content_in(&item["content"], &at(".content"))?;
            messages.push(ChatMessage {
                role,
                content,
                tool_calls: Vec::new(),
                tool_call_id: None,
                name: None,
            });
        }
        "function_call" => {
            let call = ToolCall {
                id: text_of("call_id")?,
                name: text_of("name")?,
                arguments: text_of("arguments")?,
            };
            match messages.last_mut() {
                Some(last) if last.role == Role::Assistant => last.tool_calls.push(call),
                _ => messages.push(ChatMessage {
                    role: Role::Assistant,
                    content: Vec::new(),
                    tool_calls: vec![call],
                    tool_call_id: None,
                    name: None,
                }),
            }
        }
        "function_call_output" => {
            let call_id = text_of("call_id")?;
            let output = match &item["output"] {
                Value::String(text) => vec![ContentPart::Text { text: text.clone() }],
                parts @ Value::Array(_) => content_in(parts, &at(".output"))?,
                _ => {
                    return Err(ApiError::invalid(
                        at(".output"),
                        format!("input[{i}].output: a string or text parts"),
                    ))
                }
            };
            messages.push(ChatMessage {
                role: Role::Tool,
                content: output,
                tool_calls: Vec::new(),
                tool_call_id: Some(call_id),
                name: None,
            });
        }
        // A model's earlier reasoning: not part of a new turn's prompt.
        "reasoning" => {}
        "item_reference" => {
            return Err(ApiError::invalid(
                at(".type"),
                "item_reference: responses are not stored here; send the item itself",
            ))
        }
        other => {
            return Err(ApiError::invalid(
                at(".type"),
                format!("input items of type {other:?} are not supported (message, function_call, function_call_output)"),
            ))
        }
    }
    Ok(())
}

/// A message's content: a string or text parts (`input_text`,
/// `output_text`).
fn content_in(content: &Value, param: &str) -> Result<Vec<ContentPart>, ApiError> {
    match content {
        Value::String(text) => Ok(vec![ContentPart::Text { text: text.clone() }]),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(
                |(j, part)| match (part["type"].as_str(), part["text"].as_str()) {
                    (Some("input_text" | "output_text" | "text"), Some(text)) => {
                        Ok(ContentPart::Text {
                            text: text.to_string(),
                        })
                    }
                    (Some(kind @ ("input_text" | "output_text" | "text")), None) => {
                        Err(ApiError::invalid(
                            format!("{param}[{j}].text"),
                            format!("a {kind} part needs its text"),
                        ))
                    }
                    (kind, _) => Err(ApiError::invalid(
                        format!("{param}[{j}].type"),
                        format!(
                            "content parts of type {kind:?} are not supported; send input_text"
                        ),
                    )),
                },
            )
            .collect(),
        _ => Err(ApiError::invalid(
            param,
            format!("{param}: a string or a list of parts"),
        )),
    }
}

/// Function tools, flat as the Responses API writes them (`name` at the
/// top, not under `function`). Hosted tools are left out.
fn tools(tools: Vec<Value>) -> Result<Vec<ToolDefinition>, ApiError> {
    let mut out = Vec::new();
    for (i, tool) in tools.into_iter().enumerate() {
        if tool["type"].as_str() != Some("function") {
            continue;
        }
        let Some(name) = tool["name"].as_str().filter(|n| !n.is_empty()) else {
            return Err(ApiError::invalid(
                format!("tools[{i}].name"),
                "tools: a function needs a name",
            ));
        };
        out.push(ToolDefinition {
            name: name.to_string(),
            description: tool["description"].as_str().map(str::to_string),
            parameters: match &tool["parameters"] {
                Value::Null => json!({"type": "object", "properties": {}}),
                parameters => parameters.clone(),
            },
        });
    }
    Ok(out)
}

fn tool_choice(value: &Value, tools: &[ToolDefinition]) -> Result<ToolChoice, ApiError> {
    let choice = match (value.as_str(), value["type"].as_str()) {
        (Some("auto"), _) => ToolChoice::Auto,
        (Some("none"), _) => ToolChoice::None,
        (Some("required"), _) => ToolChoice::Required,
        (None, Some("function")) => ToolChoice::Function {
            name: value["name"].as_str().unwrap_or_default().to_string(),
        },
        _ => {
            return Err(ApiError::invalid(
                "tool_choice",
                "tool_choice: auto, none, required, or {\"type\":\"function\",\"name\":...}",
            ))
        }
    };
    validate::tool_choice("tool_choice.name", choice, tools)
}

fn response_format(format: Option<TextFormat>) -> Result<Option<ResponseFormat>, ApiError> {
    let Some(format) = format else {
        return Ok(None);
    };
    let TextFormat {
        kind,
        name,
        schema,
        strict,
    } = format;
    validate::response_format("text.format.type", &kind, "text.format.schema", || {
        let name = name.unwrap_or_else(|| "response".to_string());
        schema.map(|schema| (name, schema, strict.unwrap_or(false)))
    })
    .map(Some)
}
