//! Calls to control-plane endpoints (NATS micro services speaking JSON
//! `Reply` envelopes): placement asks neurons to load and unload, ingress
//! asks placement to `ensure`, the CLI asks both. One function, [`call`],
//! with a deadline; every failure comes back as a [`WireError`] whose class
//! says what the caller can do about it.

use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use cortex_schemas::{ErrorClass, Reply, WireError};
use serde::{de::DeserializeOwned, Serialize};

use crate::codec::Encoding;

/// Sends `request` as JSON to `subject` and waits up to `timeout` for the
/// reply. No responder is `unavailable`, the deadline `deadline_exceeded`,
/// an undecodable reply `internal`; an error reply is returned as sent.
pub async fn call<Req, Rep>(
    client: &Client,
    subject: String,
    request: &Req,
    timeout: Duration,
) -> Result<Rep, WireError>
where
    Req: Serialize,
    Rep: DeserializeOwned,
{
    let encoding = Encoding::Json;
    let payload = encoding
        .encode(request)
        .map_err(|e| WireError::new(ErrorClass::Internal, e.to_string()))?;
    let message = async_nats::Request::new()
        .payload(payload)
        .headers(encoding.headers())
        .timeout(Some(timeout));
    let reply = client
        .send_request(subject.clone(), message)
        .await
        .map_err(|error| match error.kind() {
            RequestErrorKind::NoResponders => WireError::new(
                ErrorClass::Unavailable,
                format!("nothing answers on {subject}"),
            ),
            RequestErrorKind::TimedOut => WireError::new(
                ErrorClass::DeadlineExceeded,
                format!("no reply on {subject} within {timeout:?}"),
            ),
            RequestErrorKind::InvalidSubject | RequestErrorKind::MaxPayloadExceeded => {
                WireError::new(
                    ErrorClass::InvalidRequest,
                    format!("request on {subject} refused: {error}"),
                )
            }
            _ => WireError::new(
                ErrorClass::Unavailable,
                format!("request on {subject} failed: {error}"),
            ),
        })?;
    serde_json::from_slice::<Reply<Rep>>(&reply.payload)
        .map_err(|e| {
            WireError::new(
                ErrorClass::Internal,
                format!("reply on {subject} does not decode: {e}"),
            )
        })?
        .into_result()
}
