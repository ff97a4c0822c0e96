//! One inference request, from its message to its terminal frame.

use std::sync::Arc;

use cortex_bus::Incoming;
use cortex_schemas::{ErrorClass, Frame, InferRequest, ModelState, WireError};

use super::{embed, generate};
use crate::held::{Backend, HeldModel};
use crate::shared::Shared;

/// Where a request came in.
#[derive(Debug, Clone)]
pub enum Route {
    /// The model's queue subject: the subscription names the model.
    Model(Arc<HeldModel>),
    /// The neuron's directed subject: the request names the model.
    Directed,
}

/// Serves one request. Every path ends with a terminal frame on the
/// request's inbox (the responder sends one itself if a path forgets).
pub async fn handle(shared: Arc<Shared>, route: Route, incoming: Incoming) {
    let request: InferRequest = match incoming.decode() {
        Ok(request) => request,
        Err(error) => {
            let wire = WireError::new(
                ErrorClass::InvalidRequest,
                format!("undecodable inference request: {error}"),
            );
            refuse(&shared, &incoming, wire).await;
            return;
        }
    };
    let held = match route {
        Route::Model(held) => held,
        Route::Directed => match shared.model(request.model()) {
            Some(held) if held.state() == ModelState::Ready => held,
            Some(held) => {
                let wire = WireError::new(
                    ErrorClass::Unavailable,
                    format!(
                        "model {:?} is {} on neuron {}",
                        request.model(),
                        crate::metrics::serde_name(&held.state()),
                        shared.id
                    ),
                );
                refuse(&shared, &incoming, wire).await;
                return;
            }
            None => {
                let wire = WireError::new(
                    ErrorClass::ModelNotFound,
                    format!(
                        "neuron {} does not hold model {:?}",
                        shared.id,
                        request.model()
                    ),
                );
                refuse(&shared, &incoming, wire).await;
                return;
            }
        },
    };
    let responder = match incoming.responder(
        &shared.client,
        Some((&shared.cancels, request.request_id())),
    ) {
        Ok(responder) => responder,
        Err(error) => {
            tracing::debug!(%error, "inference request without a reply subject ignored");
            return;
        }
    };
    let _in_flight = held.begin();
    let outcome = match (held.backend(), request) {
        (Some(Backend::Chat(engine)), InferRequest::Generate(request)) => {
            generate::run(&shared, &held, &engine, *request, &responder).await
        }
        (Some(Backend::Embed(engine)), InferRequest::Embed(request)) => {
            embed::run(&shared, &held, engine, request, &responder).await
        }
        (Some(backend), _) => {
            let message = match backend {
                Backend::Chat(_) => {
                    format!("model {:?} is a chat model; it cannot embed", held.id())
                }
                Backend::Embed(_) => {
                    format!(
                        "model {:?} is an embedding model; it cannot generate text",
                        held.id()
                    )
                }
            };
            fail(
                &responder,
                WireError::new(ErrorClass::InvalidRequest, message),
            )
            .await
        }
        (None, _) => {
            fail(
                &responder,
                WireError::new(
                    ErrorClass::Unavailable,
                    format!(
                        "model {:?} is not loaded on neuron {}",
                        held.id(),
                        shared.id
                    ),
                ),
            )
            .await
        }
    };
    shared.metrics.request_finished(held.id(), outcome);
}

/// How a request ended, for metrics: `None` is success.
pub type Outcome = Option<ErrorClass>;

/// Ends the stream with `error`.
pub async fn fail(responder: &cortex_bus::Responder, error: WireError) -> Outcome {
    let class = error.class;
    if let Err(error) = responder.send(&Frame::Error(error)).await {
        tracing::debug!(%error, "error frame not sent");
    }
    Some(class)
}

/// Answers a request we cannot route with a single `Error` frame (`Cortex-Seq: 0`).
async fn refuse(shared: &Shared, incoming: &Incoming, error: WireError) {
    let class = error.class;
    match incoming.responder(&shared.client, None) {
        Ok(responder) => {
            fail(&responder, error).await;
        }
        Err(error) => tracing::debug!(%error, "unroutable request without a reply subject"),
    }
    shared.metrics.request_finished("", Some(class));
}
