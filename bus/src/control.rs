//! Control-plane endpoints: NATS micro services speaking JSON `Reply`
//! envelopes. The serving side is [`answer`] (decode, run, reply, with the
//! micro protocol's error headers); the calling side is [`call`]: placement
//! asks neurons to load and unload, ingress asks placement to `ensure`, the
//! CLI asks both. [`call`] has
//! with a deadline; a failure is a [`CallError`] (no responder, timeout,
//! transport, or the endpoint's own error), convertible to a [`WireError`].

use std::time::Duration;

use std::future::Future;

use async_nats::service::Request;
use async_nats::{Client, RequestErrorKind};
use cortex_schemas::{ErrorClass, Reply, WireError};
use serde::{de::DeserializeOwned, Serialize};

use crate::codec::Encoding;

/// Why a control call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("nothing answers on {subject}")]
    NoResponders { subject: String },
    #[error("no reply on {subject} within {timeout:?}")]
    TimedOut { subject: String, timeout: Duration },
    #[error("request on {subject} failed: {message}")]
    Failed {
        subject: String,
        class: ErrorClass,
        message: String,
    },
    /// The endpoint answered with an error.
    #[error("{0}")]
    Refused(WireError),
}

impl From<CallError> for WireError {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Refused(wire) => wire,
            CallError::NoResponders { .. } => {
                WireError::new(ErrorClass::Unavailable, error.to_string())
            }
            CallError::TimedOut { .. } => {
                WireError::new(ErrorClass::DeadlineExceeded, error.to_string())
            }
            CallError::Failed { class, .. } => WireError::new(class, error.to_string()),
        }
    }
}

/// Sends `request` as JSON to `subject` and waits up to `timeout` for the
/// reply, decoded from its `Reply` envelope.
pub async fn call<Req, Rep>(
    client: &Client,
    subject: String,
    request: &Req,
    timeout: Duration,
) -> Result<Rep, CallError>
where
    Req: Serialize,
    Rep: DeserializeOwned,
{
    let failed = |class, message: String| CallError::Failed {
        subject: subject.clone(),
        class,
        message,
    };
    let encoding = Encoding::Json;
    let payload = encoding
        .encode(request)
        .map_err(|e| failed(ErrorClass::Internal, e.to_string()))?;
    let message = async_nats::Request::new()
        .payload(payload)
        .headers(encoding.headers())
        .timeout(Some(timeout));
    let reply = client
        .send_request(subject.clone(), message)
        .await
        .map_err(|error| match error.kind() {
            RequestErrorKind::NoResponders => CallError::NoResponders {
                subject: subject.clone(),
            },
            RequestErrorKind::TimedOut => CallError::TimedOut {
                subject: subject.clone(),
                timeout,
            },
            RequestErrorKind::InvalidSubject | RequestErrorKind::MaxPayloadExceeded => {
                failed(ErrorClass::InvalidRequest, error.to_string())
            }
            _ => failed(ErrorClass::Unavailable, error.to_string()),
        })?;
    serde_json::from_slice::<Reply<Rep>>(&reply.payload)
        .map_err(|e| failed(ErrorClass::Internal, format!("reply does not decode: {e}")))?
        .into_result()
        .map_err(CallError::Refused)
}

/// The HTTP-like code a micro-service error header carries for `class`.
pub fn status_code(class: ErrorClass) -> u16 {
    match class {
        ErrorClass::InvalidRequest => 400,
        ErrorClass::ModelNotFound => 404,
        ErrorClass::Overloaded => 429,
        ErrorClass::Cancelled => 499,
        ErrorClass::DeadlineExceeded => 504,
        ErrorClass::Unavailable => 503,
        ErrorClass::Internal => 500,
    }
}

/// Serves one endpoint request: decodes the JSON body (an empty body is
/// `{}`), runs `handler`, replies with [`respond`].
pub async fn answer<Req, Rep, F, Fut>(request: &Request, handler: F)
where
    Req: DeserializeOwned,
    Rep: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Result<Rep, WireError>>,
{
    let body: &[u8] = if request.message.payload.is_empty() {
        b"{}"
    } else {
        &request.message.payload
    };
    let reply: Reply<Rep> = match serde_json::from_slice::<Req>(body) {
        Ok(decoded) => handler(decoded).await.into(),
        Err(error) => Reply::Error(WireError::new(
            ErrorClass::InvalidRequest,
            format!("malformed request: {error}"),
        )),
    };
    respond(request, &reply).await;
}

/// Replies with `reply` as JSON; an error also sets the micro protocol's
/// `Nats-Service-Error` and `Nats-Service-Error-Code` headers.
pub async fn respond<T: Serialize>(request: &Request, reply: &Reply<T>) {
    let encoding = Encoding::Json;
    let mut headers = encoding.headers();
    if let Reply::Error(error) = reply {
        headers.insert(
            "Nats-Service-Error",
            error.message.replace(['\r', '\n'], " ").as_str(),
        );
        headers.insert(
            "Nats-Service-Error-Code",
            status_code(error.class).to_string().as_str(),
        );
    }
    let payload = match encoding.encode(reply) {
        Ok(payload) => payload,
        Err(error) => {
            tracing::error!(%error, "control reply not encodable");
            return;
        }
    };
    if let Err(error) = request.respond_with_headers(Ok(payload), headers).await {
        tracing::debug!(%error, "control reply not sent");
    }
}
