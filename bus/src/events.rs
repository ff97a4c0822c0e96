//! Lifecycle events on `<prefix>.v1.events.<kind>`, as JSON so that
//! `nats sub 'cortex.v1.events.>'` shows them as they are.

use async_nats::Client;
use cortex_schemas::{Event, EventDetail};

use crate::codec::Encoding;
use crate::subject::Subjects;

/// Publishes `detail` from `source` (a neuron or placement replica id).
/// Events are for operators: a failure is logged, never returned.
pub async fn publish(client: &Client, subjects: &Subjects, source: &str, detail: EventDetail) {
    let subject = subjects.event(detail.kind());
    let event = Event {
        at_ms: crate::headers::unix_ms(),
        source: source.to_string(),
        detail,
    };
    let encoding = Encoding::Json;
    match encoding.encode(&event) {
        Ok(payload) => {
            if let Err(error) = client
                .publish_with_headers(subject, encoding.headers(), payload)
                .await
            {
                tracing::warn!(%error, "event not published");
            }
        }
        Err(error) => tracing::warn!(%error, "event not encoded"),
    }
}
