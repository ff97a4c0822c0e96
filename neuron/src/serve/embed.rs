//! An embedding request: refused at once when it is malformed or every batch slot is busy,
//! otherwise `Accepted`, the batch on a blocking thread, then one
//! `Embeddings` frame (or `Error`).

use std::sync::Arc;

use cortex_bus::Responder;
use cortex_engine::embed::EmbedEngine;
use cortex_schemas::{Accepted, EmbedRequest, ErrorClass, Frame, WireError};

use super::request::{fail, Outcome};
use crate::held::HeldModel;
use crate::shared::Shared;

pub async fn run(
    shared: &Shared,
    held: &HeldModel,
    engine: Arc<EmbedEngine>,
    request: EmbedRequest,
    responder: &Responder,
) -> Outcome {
    // Bad input and a full house are refused before `Accepted`.
    if let Err(error) = EmbedEngine::validate(&request) {
        return fail(responder, error.to_wire()).await;
    }
    let permit = match engine.try_acquire() {
        Ok(permit) => permit,
        Err(error) => return fail(responder, error.to_wire()).await,
    };
    let accepted = Frame::Accepted(Accepted {
        neuron: shared.id.clone(),
        request_id: request.request_id.clone(),
        queue_position: 0,
        prompt_tokens: None,
    });
    if responder.send(&accepted).await.is_err() {
        return Some(ErrorClass::Internal);
    }
    // The permit goes with the batch: the slot stays taken until it ends,
    // even when the requester cancels and this handler returns.
    let work = tokio::task::spawn_blocking(move || engine.embed_with(&permit, &request));
    tokio::select! {
        result = work => match result {
            Ok(Ok(response)) => {
                let _ = responder.send(&Frame::Embeddings(response)).await;
                None
            }
            Ok(Err(error)) => fail(responder, error.to_wire()).await,
            Err(error) => {
                fail(responder, WireError::new(ErrorClass::Internal, format!("embedding failed: {error}"))).await
            }
        },
        // The batch runs to its end on its thread; its result is dropped.
        _ = responder.cancelled() => fail(responder, WireError::new(ErrorClass::Cancelled, "cancelled")).await,
        _ = held.abort.cancelled() => fail(responder, WireError::new(ErrorClass::Cancelled, "the model is being unloaded")).await,
    }
}
