//! `POST /v1/embeddings`: a string or a list of strings; vectors as float
//! arrays or base64 of little-endian f32s.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use base64::Engine;
use cortex_schemas::{EmbedRequest, Frame, InferRequest};
use serde::Serialize;

use super::types::{EmbeddingInput, EmbeddingsRequest};
use crate::auth::Caller;
use crate::error::{ApiError, Dialect, Kind};
use crate::ids::new_id;
use crate::pipeline::{caller, fail};
use crate::state::AppState;
use crate::validate;

pub async fn handle(
    State(state): State<AppState>,
    caller_ext: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let (model, result) = serve(&state, caller(caller_ext), &headers, body).await;
    match result {
        Ok(response) => {
            let label = state.metrics.label(&model);
            let dialect = Dialect::OpenAi.as_str();
            state
                .metrics
                .finished(&label, dialect, 200, started.elapsed());
            response
        }
        Err(error) => fail(&state, Dialect::OpenAi, &model, started, error),
    }
}

async fn serve(
    state: &AppState,
    caller: Caller,
    headers: &HeaderMap,
    body: Body,
) -> (String, Result<Response, ApiError>) {
    let permit = match state.admit() {
        Ok(permit) => permit,
        Err(error) => return (String::new(), Err(error)),
    };
    let mut request: EmbeddingsRequest = match crate::body::read_json(
        body,
        state.config.body_limit,
        state.config.body_timeout,
    )
    .await
    {
        Ok(request) => request,
        Err(error) => return (String::new(), Err(error)),
    };
    // Aliases become catalogue ids before anything is sent.
    request.model = state.catalog.resolve(&request.model);
    let model = request.model.clone();
    let result = embed(state, caller, headers, request).await;
    drop(permit);
    (model, result)
}

async fn embed(
    state: &AppState,
    caller: Caller,
    headers: &HeaderMap,
    request: EmbeddingsRequest,
) -> Result<Response, ApiError> {
    validate::model(&request.model)?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("encoding_format: float or base64, got {other:?}"),
            ))
        }
    };
    if request.dimensions.is_some() {
        return Err(ApiError::invalid(
            "dimensions",
            "dimensions: this server returns the model's own size; leave it out",
        ));
    }
    let inputs = match request.input {
        EmbeddingInput::One(text) => vec![text],
        EmbeddingInput::Many(texts) => texts,
        EmbeddingInput::Tokens(_) => {
            return Err(ApiError::invalid(
                "input",
                "input: token arrays are not supported; send strings",
            ))
        }
    };
    if inputs.is_empty() {
        return Err(ApiError::invalid("input", "input: must not be empty"));
    }
    let deadline = state.deadline_ms(headers);
    let wire = InferRequest::Embed(EmbedRequest {
        request_id: format!("embd-{}", new_id()),
        model: request.model.clone(),
        inputs,
        normalize: true,
        truncate: false,
        deadline_ms: Some(deadline),
    });
    let opened = crate::call::open(state, &wire, deadline).await?;
    let Some(Frame::Embeddings(response)) = opened.into_first() else {
        return Err(ApiError::new(
            Kind::Internal,
            "the neuron answered an embedding request with text",
        ));
    };
    let data = response
        .embeddings
        .iter()
        .enumerate()
        .map(|(index, vector)| Embedding {
            object: "embedding",
            index,
            embedding: if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Vector::Floats(vector)
            },
        })
        .collect();
    let label = state.metrics.label(&request.model);
    state.record_tokens(caller, &label, response.usage.prompt_tokens, 0);
    let tokens = response.usage.prompt_tokens;
    Ok(Json(EmbeddingList {
        object: "list",
        data,
        model: &request.model,
        usage: EmbeddingUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    })
    .into_response())
}

/// OpenAI's embeddings answer.
#[derive(Debug, Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<Embedding<'a>>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Debug, Serialize)]
struct Embedding<'a> {
    object: &'static str,
    index: usize,
    embedding: Vector<'a>,
}

/// Floats, or their little-endian bytes in base64 (`encoding_format`).
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Vector<'a> {
    Floats(&'a [f32]),
    Base64(String),
}

#[derive(Debug, Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u32,
    total_tokens: u32,
}
