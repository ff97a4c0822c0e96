//! `GET /v1/models` and `GET /v1/models/{id}`: every model some neuron has
//! ready (from heartbeats) merged with every model the catalogue can load
//! (from `cortex-catalog`), with its owner, context length, aliases, and
//! whether and where it is loaded.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cortex_schemas::ModelProfile;
use serde::Serialize;

use crate::error::{ApiError, Dialect, DialectError, Kind};
use crate::fleet::ServedModel;
use crate::metrics_name;
use crate::state::AppState;

/// Every known model, by id.
fn listing(state: &AppState) -> BTreeMap<String, ModelEntry> {
    let served: BTreeMap<String, ServedModel> = state
        .fleet
        .models()
        .into_iter()
        .map(|m| (m.id.clone(), m))
        .collect();
    let mut models = BTreeMap::new();
    for profile in state.catalog.profiles() {
        let entry = entry(&profile.id, served.get(&profile.id), Some(&profile));
        models.insert(profile.id.clone(), entry);
    }
    for (id, model) in &served {
        models
            .entry(id.clone())
            .or_insert_with(|| entry(id, Some(model), None));
    }
    models
}

/// One model as `/v1/models` lists it: OpenAI's fields, then ours.
#[derive(Debug, Serialize)]
struct ModelEntry {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    kind: Option<String>,
    aliases: Vec<String>,
    context_length: Option<u32>,
    loaded: bool,
    neurons: Vec<String>,
}

/// `{"object": "list", "data": [...]}`.
#[derive(Debug, Serialize)]
struct ModelList {
    object: &'static str,
    data: Vec<ModelEntry>,
}

fn entry(id: &str, served: Option<&ServedModel>, profile: Option<&ModelProfile>) -> ModelEntry {
    ModelEntry {
        id: id.to_string(),
        object: "model",
        created: served.map_or(0, |m| m.since_ms / 1000),
        owned_by: "cortex",
        kind: profile.map(|p| metrics_name(&p.kind)),
        aliases: profile.map_or_else(Vec::new, |p| p.aliases.clone()),
        context_length: profile.and_then(|p| p.context_length),
        loaded: served.is_some(),
        neurons: served.map_or_else(Vec::new, |m| m.neurons.clone()),
    }
}

pub async fn list(State(state): State<AppState>) -> Response {
    let data = listing(&state).into_values().collect();
    Json(ModelList {
        object: "list",
        data,
    })
    .into_response()
}

pub async fn get(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let id = state.catalog.resolve(&id);
    match listing(&state).remove(&id) {
        Some(model) => Json(model).into_response(),
        None => DialectError(
            Dialect::OpenAi,
            ApiError {
                param: Some("model".into()),
                ..ApiError::new(Kind::NotFound, format!("The model {id:?} does not exist"))
            },
        )
        .into_response(),
    }
}
