//! The fleet console at `/ui`: one page of plain HTML and JavaScript built
//! into the binary (no CDN: it works offline), and the two calls it makes.
//!
//! - `GET /ui`: the page; it holds no data, so it needs no key.
//! - `GET /ui/api/status`: neurons with devices and memory, models with
//!   state, replicas, slots, queue and tok/s (from the heartbeats this pod
//!   follows, the same data `cortex status` shows), placement's replica
//!   and pins (from its `status`, when it answers), this pod's recent
//!   requests, and whether the caller may drive placement.
//! - `POST /ui/api/{load,unload,pin,unpin}` with `{"model", "neuron"?}`:
//!   placement's verbs, for operator keys only ([`crate::auth::Keys::is_operator`]).
//!
//! Both API calls sit behind the API keys like `/v1`; `--no-ui` removes all three.

mod view;

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Extension, Json, Router};
use cortex_bus::control::{call, CallError};
use cortex_bus::PlacementOp;
use cortex_schemas::{AssignmentReply, PinRequest, PlaceRequest, PlacementStatus, UnpinRequest};
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::{ApiError, Dialect, DialectError, Kind};
use crate::state::AppState;

/// The page, as shipped.
const PAGE: &str = include_str!("page.html");

/// How long the status call waits for placement before showing the
/// heartbeats alone.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// The console's API routes (they go behind authentication).
pub fn api() -> Router<AppState> {
    Router::new()
        .route("/ui/api/status", get(status))
        .route("/ui/api/load", verb(PlacementOp::Load))
        .route("/ui/api/unload", verb(PlacementOp::Unload))
        .route("/ui/api/pin", verb(PlacementOp::Pin))
        .route("/ui/api/unpin", verb(PlacementOp::Unpin))
}

/// `GET /ui`.
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn status(State(state): State<AppState>, caller: Option<Extension<Caller>>) -> Response {
    let caller = crate::pipeline::caller(caller);
    let placement: Result<PlacementStatus, _> = call(
        &state.client,
        state.subjects.placement(PlacementOp::Status),
        &serde_json::json!({}),
        STATUS_TIMEOUT,
    )
    .await;
    let (placement, placement_error) = match placement {
        Ok(status) => (Some(status), None),
        Err(error) => (None, Some(placement_failure(error).message)),
    };
    let console = view::Console::build(
        &state,
        state.keys.is_operator(caller),
        placement,
        placement_error,
    );
    Json(console).into_response()
}

/// The body of a control call.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Order {
    model: String,
    neuron: Option<String>,
}

/// The handler of one of placement's verbs.
fn verb(op: PlacementOp) -> MethodRouter<AppState> {
    post(move |state, caller, body| control(op, state, caller, body))
}

async fn control(
    op: PlacementOp,
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    body: Body,
) -> Response {
    match order(&state, crate::pipeline::caller(caller), op, body).await {
        Ok(assignment) => Json(assignment).into_response(),
        Err(error) => DialectError(Dialect::OpenAi, error).into_response(),
    }
}

async fn order(
    state: &AppState,
    caller: Caller,
    op: PlacementOp,
    body: Body,
) -> Result<AssignmentReply, ApiError> {
    if !state.keys.is_operator(caller) {
        return Err(ApiError::new(
            Kind::Forbidden,
            "loading, unloading and pinning need an operator key (--admin-keys)",
        ));
    }
    let order: Order =
        crate::body::read_json(body, state.config.body_limit, state.config.body_timeout).await?;
    let model = state.catalog.resolve(&order.model);
    let subject = state.subjects.placement(op);
    // Loads can take minutes: the request timeout bounds the wait.
    let timeout = state.config.request_timeout;
    let reply = match op {
        PlacementOp::Pin => {
            let request = PinRequest {
                model,
                neurons: order.neuron.into_iter().collect(),
            };
            call(&state.client, subject, &request, timeout).await
        }
        PlacementOp::Unpin => call(&state.client, subject, &UnpinRequest { model }, timeout).await,
        _ => {
            let request = PlaceRequest {
                model,
                neuron: order.neuron,
            };
            call(&state.client, subject, &request, timeout).await
        }
    };
    reply.map_err(placement_failure)
}

/// A failed placement call as the client sees it.
fn placement_failure(error: CallError) -> ApiError {
    match error {
        CallError::NoResponders { .. } => {
            ApiError::new(Kind::Unavailable, "no placement service answers")
        }
        CallError::TimedOut { .. } => {
            ApiError::new(Kind::Timeout, "placement did not answer in time")
        }
        error => ApiError::from_wire(&error.into()),
    }
}
