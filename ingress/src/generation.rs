//! Reading a generation to its end (non-streaming answers of both
//! dialects): text, tool calls assembled from their fragments, usage.

use cortex_schemas::{Done, Frame, TokenLogprob, ToolCall, ToolCallDelta};
use futures::StreamExt;

use std::time::Instant;

use axum::response::{IntoResponse, Response};
use axum::Extension;

use crate::auth::Caller;
use crate::call::{stream_failure, Opened};
use crate::error::{ApiError, Dialect, DialectError};
use crate::state::AppState;

/// A whole generation.
#[derive(Debug)]
pub struct Collected {
    pub text: String,
    /// A reasoning model's thinking, apart from `text`.
    pub reasoning: String,
    pub tool_calls: Vec<ToolCall>,
    pub logprobs: Vec<TokenLogprob>,
    pub done: Done,
}

/// Tool calls from their streamed fragments: the first fragment of a call
/// brings its id and name, later ones append arguments.
#[derive(Debug, Default)]
pub struct ToolCalls(pub Vec<ToolCall>);

impl ToolCalls {
    pub fn push(&mut self, fragment: &ToolCallDelta) {
        let index = fragment.index as usize;
        while self.0.len() <= index {
            self.0.push(ToolCall {
                id: String::new(),
                name: String::new(),
                arguments: String::new(),
            });
        }
        let call = &mut self.0[index];
        if let Some(id) = &fragment.id {
            call.id.clone_from(id);
        }
        if let Some(name) = &fragment.name {
            call.name.clone_from(name);
        }
        call.arguments.push_str(&fragment.arguments);
    }
}

/// A generation that failed part way, and the tokens it had cost.
#[derive(Debug)]
pub struct Failed {
    pub error: ApiError,
    /// Prompt plus generated tokens, to charge the caller all the same.
    pub tokens: u32,
}

/// Reads `opened` to its terminal frame.
pub async fn collect(mut opened: Opened, model: &str) -> Result<Collected, Failed> {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut logprobs = Vec::new();
    let mut calls = ToolCalls::default();
    let mut tokens = opened.accepted.prompt_tokens.unwrap_or(0);
    let first = std::mem::replace(&mut opened.first, Frame::Keepalive(Default::default()));
    let mut frame = Some(first);
    loop {
        let current = match frame.take() {
            Some(frame) => frame,
            None => match opened.stream.next().await {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    let error = stream_failure(&error, model);
                    return Err(Failed { error, tokens });
                }
                None => {
                    let error = stream_failure(&cortex_bus::StreamError::Closed, model);
                    return Err(Failed { error, tokens });
                }
            },
        };
        match current {
            Frame::Delta(delta) => {
                tokens += delta.tokens;
                text.push_str(&delta.text);
                reasoning.push_str(&delta.reasoning);
                for fragment in &delta.tool_calls {
                    calls.push(fragment);
                }
                logprobs.extend(delta.logprobs);
            }
            Frame::Done(done) => {
                opened.cancel.disarm();
                return Ok(Collected {
                    text,
                    reasoning,
                    tool_calls: calls.0,
                    logprobs,
                    done,
                });
            }
            Frame::Error(error) => {
                opened.cancel.disarm();
                let error = ApiError::from_wire(&error);
                return Err(Failed { error, tokens });
            }
            Frame::Accepted(_) | Frame::Keepalive(_) | Frame::Embeddings(_) => {}
        }
    }
}

/// The caller the auth middleware put in the request (0 without keys).
pub fn caller(extension: Option<Extension<Caller>>) -> Caller {
    extension.map_or(Caller(0), |Extension(caller)| caller)
}

/// A handler's outcome as the response: on failure, counted in metrics
/// (with the model it named, if any) and written in the dialect.
pub fn answer(
    state: &AppState,
    dialect: Dialect,
    started: Instant,
    result: Result<Response, (String, ApiError)>,
) -> Response {
    match result {
        Ok(response) => response,
        Err((model, error)) => {
            let status = error.status().as_u16();
            state
                .metrics
                .finished(&model, dialect.as_str(), status, started.elapsed());
            DialectError(dialect, error).into_response()
        }
    }
}

/// Reads a non-streamed generation whole, with its metrics and token charge.
pub async fn collect_whole(
    state: &AppState,
    caller: Caller,
    opened: Opened,
    dialect: Dialect,
    started: Instant,
) -> Result<Collected, (String, ApiError)> {
    let model = opened.model.clone();
    state.metrics.first_token(&model, started.elapsed());
    let collected = collect(opened, &model).await.map_err(|failed| {
        state.record_tokens(caller, &model, 0, failed.tokens);
        (model.clone(), failed.error)
    })?;
    state.record_done(caller, &model, &collected.done);
    state
        .metrics
        .finished(&model, dialect.as_str(), 200, started.elapsed());
    Ok(collected)
}
