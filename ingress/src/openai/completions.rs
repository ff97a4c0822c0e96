//! `POST /v1/completions` (legacy): a raw prompt, used verbatim; answered
//! as `text_completion` objects, whole or streamed.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use cortex_schemas::{
    Accepted, Delta, Done, GenerateInput, GenerateRequest, InferRequest, SamplingParams,
};
use serde_json::{json, Value};

use super::chat::{finish_reason, usage_json};
use super::types::{CompletionRequest, Prompt};
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
    let mut request: CompletionRequest =
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
    let id = format!("cmpl-{}", new_id());
    let deadline = state.deadline_ms(headers);
    let generate = translate(request, &id, deadline).map_err(|e| (model.clone(), e))?;
    let opened = crate::call::open(state, &InferRequest::Generate(Box::new(generate)), deadline)
        .await
        .map_err(|e| (model.clone(), e))?;
    if stream {
        let encoder = TextEncoder {
            id,
            model,
            created: unix_seconds(),
            include_usage,
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
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": unix_seconds(),
        "model": model,
        "choices": [{
            "text": collected.text,
            "index": 0,
            "logprobs": Value::Null,
            "finish_reason": finish_reason(done.finish_reason),
        }],
        "usage": usage_json(done),
    }))
    .into_response())
}

fn translate(
    request: CompletionRequest,
    id: &str,
    deadline_ms: u64,
) -> Result<GenerateRequest, ApiError> {
    validate::model(&request.model)?;
    let prompt = match request.prompt {
        Prompt::One(prompt) => prompt,
        Prompt::Many(mut prompts) if prompts.len() == 1 => prompts.remove(0),
        Prompt::Many(prompts) => {
            return Err(ApiError::invalid(
                "prompt",
                format!("prompt: one prompt per request, got {}", prompts.len()),
            ))
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "prompt: must not be empty"));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("n", "n: only 1 choice is supported"));
    }
    if request.echo == Some(true) {
        return Err(ApiError::invalid("echo", "echo: not supported"));
    }
    Ok(GenerateRequest {
        request_id: id.to_string(),
        model: request.model,
        input: GenerateInput::Text { prompt },
        tools: Vec::new(),
        tool_choice: None,
        sampling: SamplingParams {
            temperature: validate::range("temperature", request.temperature, 0.0, 2.0)?,
            top_p: validate::top_p(request.top_p)?,
            seed: request.seed.map(|s| s as u64),
            presence_penalty: validate::range(
                "presence_penalty",
                request.presence_penalty,
                -2.0,
                2.0,
            )?,
            frequency_penalty: validate::range(
                "frequency_penalty",
                request.frequency_penalty,
                -2.0,
                2.0,
            )?,
            ..SamplingParams::default()
        },
        // The legacy API's default is 16 tokens.
        max_tokens: Some(validate::max_tokens("max_tokens", request.max_tokens)?.unwrap_or(16)),
        stop: validate::stops(
            "stop",
            request.stop.map(|s| s.into_vec()).unwrap_or_default(),
        )?,
        response_format: None,
        logprobs: None,
        deadline_ms: Some(deadline_ms),
        thinking: None,
    })
}

/// Streamed `text_completion` chunks, then `[DONE]`.
#[derive(Debug)]
struct TextEncoder {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
}

impl TextEncoder {
    fn chunk(&self, text: &str, finish: Option<&str>) -> Event {
        json_event(
            None,
            &json!({
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [{ "text": text, "index": 0, "logprobs": Value::Null, "finish_reason": finish }],
            }),
        )
    }
}

impl Encoder for TextEncoder {
    fn start(&mut self, _accepted: &Accepted) -> Vec<Event> {
        Vec::new()
    }

    fn delta(&mut self, delta: &Delta) -> Vec<Event> {
        vec![self.chunk(&delta.text, None)]
    }

    fn done(&mut self, done: &Done) -> Vec<Event> {
        let mut events = vec![self.chunk("", Some(finish_reason(done.finish_reason)))];
        if self.include_usage {
            events.push(json_event(
                None,
                &json!({
                    "id": self.id, "object": "text_completion", "created": self.created,
                    "model": self.model, "choices": [], "usage": usage_json(done),
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
