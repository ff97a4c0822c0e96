//! `GET /v1/models` and `GET /v1/models/{id}`: every model ready on some
//! neuron (from heartbeats), with where it is loaded.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::error::{ApiError, Dialect, DialectError, Kind};
use crate::fleet::ServedModel;
use crate::state::AppState;

fn model_json(model: &ServedModel) -> Value {
    json!({
        "id": model.id,
        "object": "model",
        "created": model.since_ms / 1000,
        "owned_by": "cortex",
        "loaded": true,
        "neurons": model.neurons,
    })
}

pub async fn list(State(state): State<AppState>) -> Response {
    let data: Vec<Value> = state.fleet.models().iter().map(model_json).collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match state.fleet.models().iter().find(|m| m.id == id) {
        Some(model) => Json(model_json(model)).into_response(),
        None => DialectError(
            Dialect::OpenAi,
            ApiError {
                param: Some("model".into()),
                ..ApiError::new(
                    Kind::NotFound,
                    format!("The model {id:?} does not exist or is not loaded"),
                )
            },
        )
        .into_response(),
    }
}
