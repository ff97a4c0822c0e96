//! Taking inference requests off the bus. Each ready model has an intake:
//! a subscription to `<prefix>.v1.infer.<token>` in queue group `neurons`,
//! so NATS hands each request to one replica. The neuron's directed
//! subject `<prefix>.v1.neuron.<id>.infer` (retries, affinity) takes
//! requests for any model it holds. Stopping an intake drains its
//! subscription: requests the server routed here before the unsubscribe
//! are still served, so none is lost.
//!
//! - [`request`]: one request from decode to terminal frame.
//! - [`generate`]: engine events → `Accepted`, `Delta`s, `Done`.
//! - [`embed`]: an embedding batch → `Accepted`, `Embeddings`.

mod embed;
mod generate;
mod request;

use std::sync::Arc;
use std::time::Duration;

use cortex_bus::{serve, NeuronOp, StreamError, QUEUE_GROUP};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::held::{HeldModel, Intake};
use crate::shared::Shared;

pub use request::Route;

/// How long stopping an intake waits for its drained subscription to end.
const DRAIN_SUBSCRIPTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts taking `held`'s requests from its queue subject.
pub async fn start_intake(shared: &Arc<Shared>, held: &Arc<HeldModel>) -> Result<(), StreamError> {
    let subject = shared.subjects.infer(&held.token);
    let requests = serve(&shared.client, subject, Some(QUEUE_GROUP)).await?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(take(
        shared.clone(),
        requests,
        stop.clone(),
        Route::Model(held.clone()),
    ));
    let old = held
        .intake
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(Intake { stop, task });
    if let Some(old) = old {
        old.stop.cancel();
    }
    Ok(())
}

/// Stops taking `held`'s requests; returns once the requests already
/// routed here have been handed to handlers.
pub async fn stop_intake(held: &HeldModel) {
    let intake = held.intake.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(intake) = intake {
        finish(intake).await;
    }
}

/// Starts the neuron's directed subject.
pub async fn start_directed(shared: &Arc<Shared>) -> Result<Intake, StreamError> {
    let subject = shared.subjects.neuron(&shared.id, NeuronOp::Infer);
    let requests = serve(&shared.client, subject, None).await?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(take(
        shared.clone(),
        requests,
        stop.clone(),
        Route::Directed,
    ));
    Ok(Intake { stop, task })
}

/// Stops an intake and waits for its drain.
pub async fn finish(mut intake: Intake) {
    intake.stop.cancel();
    if tokio::time::timeout(DRAIN_SUBSCRIPTION_TIMEOUT, &mut intake.task)
        .await
        .is_err()
    {
        // Without a connection the drain's round trip cannot complete.
        tracing::warn!("a served subject did not drain in time");
        intake.task.abort();
    }
}

/// The intake loop: each request is admitted here (decoded, routed, counted
/// in flight), then gets its own task (their number is bounded by the
/// engine's slots and queue: a request beyond those is refused at once and
/// its task ends).
async fn take(
    shared: Arc<Shared>,
    mut requests: cortex_bus::stream::RequestStream,
    stop: CancellationToken,
    route: Route,
) {
    let dispatch = |incoming| {
        let admission = request::admit(&shared, &route, incoming);
        tokio::spawn(request::handle(shared.clone(), admission));
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            incoming = requests.next() => match incoming {
                Some(incoming) => dispatch(incoming),
                None => return,
            },
        }
    }
    requests.drain().await;
    while let Some(incoming) = requests.next().await {
        dispatch(incoming);
    }
}
