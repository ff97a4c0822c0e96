//! One inference request, from its message to its terminal frame.
//!
//! [`admit`] runs in the intake loop itself, before the request gets a task:
//! it decodes, finds the model and counts the request as in flight. So once
//! an intake has stopped, every request it took is already counted, and a
//! drain, unload or shutdown waiting for the count to reach zero cannot miss
//! one. The count is taken before the model's state is checked (and the
//! lifecycle changes the state before it reads the count), so a request
//! either sees the model draining and is refused, or is waited for.

use std::sync::Arc;

use cortex_bus::{Incoming, Responder};
use cortex_schemas::{ErrorClass, Frame, InferRequest, ModelState, WireError};

use super::{embed, generate};
use crate::held::{Backend, HeldModel, InFlight};
use crate::metrics::serde_name;
use crate::shared::Shared;

/// Where a request came in.
#[derive(Debug, Clone)]
pub enum Route {
    /// The model's queue subject: the subscription names the model, and
    /// everything it delivered is served, draining or not.
    Model(Arc<HeldModel>),
    /// The neuron's directed subject: the request names the model, which
    /// must be ready.
    Directed,
}

/// What the intake decided about a message.
#[derive(Debug)]
pub enum Admission {
    /// Counted in flight; to be served.
    Serve {
        incoming: Incoming,
        request: InferRequest,
        held: Arc<HeldModel>,
        in_flight: InFlight,
    },
    /// To be answered with this error alone.
    Refuse {
        incoming: Incoming,
        error: WireError,
    },
}

/// Decodes and routes a message (no I/O: called in the intake loop).
pub fn admit(shared: &Shared, route: &Route, incoming: Incoming) -> Admission {
    let request: InferRequest = match incoming.decode() {
        Ok(request) => request,
        Err(error) => {
            let error = WireError::new(
                ErrorClass::InvalidRequest,
                format!("undecodable inference request: {error}"),
            );
            return Admission::Refuse { incoming, error };
        }
    };
    if request.request_id().is_empty() {
        let error = WireError::new(ErrorClass::InvalidRequest, "request_id must not be empty");
        return Admission::Refuse { incoming, error };
    }
    let held = match route {
        Route::Model(held) => held.clone(),
        Route::Directed => match shared.model(request.model()) {
            Some(held) => held,
            None => {
                let error = WireError::new(
                    ErrorClass::ModelNotFound,
                    format!(
                        "neuron {} does not hold model {:?}",
                        shared.id,
                        request.model()
                    ),
                );
                return Admission::Refuse { incoming, error };
            }
        },
    };
    let in_flight = held.begin();
    if let Route::Directed = route {
        let state = held.state();
        if state != ModelState::Ready {
            let error = WireError::new(
                ErrorClass::Unavailable,
                format!(
                    "model {:?} is {} on neuron {}",
                    held.id(),
                    serde_name(&state),
                    shared.id
                ),
            );
            return Admission::Refuse { incoming, error };
        }
    }
    Admission::Serve {
        incoming,
        request,
        held,
        in_flight,
    }
}

/// Serves an admitted request (or sends its refusal). Every path ends with
/// a terminal frame on the request's inbox (the responder sends one itself
/// if a path forgets).
pub async fn handle(shared: Arc<Shared>, admission: Admission) {
    let (incoming, request, held, _in_flight) = match admission {
        Admission::Refuse { incoming, error } => {
            refuse(&shared, &incoming, error).await;
            return;
        }
        Admission::Serve {
            incoming,
            request,
            held,
            in_flight,
        } => (incoming, request, held, in_flight),
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
    let outcome = match (held.backend(), request) {
        (Some(Backend::Chat(engine)), InferRequest::Generate(request)) => {
            generate::run(&shared, &held, engine, *request, &responder).await
        }
        (Some(Backend::Embed(engine)), InferRequest::Embed(request)) => {
            embed::run(&shared, &held, engine, request, &responder).await
        }
        (Some(Backend::Chat(engine)), InferRequest::CountTokens(request)) => {
            generate::count(&shared, engine.model().clone(), *request, &responder).await
        }
        (Some(backend), _) => {
            let message = match backend {
                Backend::Chat(_) => {
                    format!("model {:?} is a chat model; it cannot embed", held.id())
                }
                Backend::Embed(_) => format!(
                    "model {:?} is an embedding model; it cannot generate text",
                    held.id()
                ),
            };
            fail(
                &responder,
                WireError::new(ErrorClass::InvalidRequest, message),
            )
            .await
        }
        (None, _) => {
            let message = format!(
                "model {:?} is not loaded on neuron {}",
                held.id(),
                shared.id
            );
            fail(&responder, WireError::new(ErrorClass::Unavailable, message)).await
        }
    };
    shared.metrics.request_finished(held.id(), outcome);
}

/// How a request ended, for metrics: `None` is success.
pub type Outcome = Option<ErrorClass>;

/// Ends the stream with `error`.
pub async fn fail(responder: &Responder, error: WireError) -> Outcome {
    let class = error.class;
    if let Err(error) = responder.send(&Frame::Error(error)).await {
        tracing::debug!(%error, "error frame not sent");
    }
    Some(class)
}

/// Answers a request we do not serve with a single `Error` frame (`Cortex-Seq: 0`).
async fn refuse(shared: &Shared, incoming: &Incoming, error: WireError) {
    let class = error.class;
    match incoming.responder(&shared.client, None) {
        Ok(responder) => {
            fail(&responder, error).await;
        }
        Err(error) => tracing::debug!(%error, "refused request without a reply subject"),
    }
    shared.metrics.request_finished("", Some(class));
}
