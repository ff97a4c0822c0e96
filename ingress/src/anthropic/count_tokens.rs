//! `POST /v1/messages/count_tokens`: the prompt rendered and tokenised by
//! a neuron holding the model, exactly as a request would be.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cortex_schemas::{Frame, InferRequest};
use serde::Serialize;

use super::messages::translate;
use super::types::MessagesRequest;
use crate::error::{ApiError, Dialect, DialectError, Kind};
use crate::ids::new_id;
use crate::state::AppState;

/// Anthropic's `count_tokens` answer.
#[derive(Debug, Serialize)]
struct TokenCount {
    input_tokens: u32,
}

pub async fn handle(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    match count(&state, &headers, body).await {
        Ok(input_tokens) => Json(TokenCount { input_tokens }).into_response(),
        Err(error) => DialectError(Dialect::Anthropic, error).into_response(),
    }
}

async fn count(state: &AppState, headers: &HeaderMap, body: Body) -> Result<u32, ApiError> {
    let _permit = state.admit()?;
    let mut request: MessagesRequest =
        crate::body::read_json(body, state.config.body_limit, state.config.body_timeout).await?;
    // count_tokens has no max_tokens; the translation wants one.
    request.max_tokens.get_or_insert(1);
    request.model = state.catalog.resolve(&request.model);
    let deadline = state.deadline_ms(headers);
    let generate = translate(request, &format!("count_{}", new_id()), deadline)?;
    let opened = crate::call::open(
        state,
        &InferRequest::CountTokens(Box::new(generate)),
        deadline,
    )
    .await?;
    match opened.into_first() {
        Some(Frame::Done(done)) => Ok(done.usage.prompt_tokens),
        _ => Err(ApiError::new(
            Kind::Internal,
            "the neuron did not answer with a count",
        )),
    }
}
