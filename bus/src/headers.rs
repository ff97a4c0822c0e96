//! Header names Cortex puts on NATS messages, and typed access to them.

use async_nats::HeaderMap;

/// `application/json` or `application/msgpack`; see [`crate::codec`].
pub const CONTENT_TYPE: &str = "Content-Type";
/// Ingress-chosen id of an inference request.
pub const REQUEST_ID: &str = "Cortex-Request-Id";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// Unix ms after which the request is useless.
pub const DEADLINE: &str = "Cortex-Deadline";
/// Position of a frame in its stream, from 0.
pub const SEQ: &str = "Cortex-Seq";
/// Keepalive period the requester expects, in ms (the responder honours it).
pub const KEEPALIVE_MS: &str = "Cortex-Keepalive-Ms";

/// Now as unix milliseconds, the unit of [`DEADLINE`].
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Reads a header as an unsigned integer; `None` when absent or malformed.
pub fn get_u64(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().trim().parse().ok()
}

/// Reads a header as a string.
pub fn get_str<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|value| value.as_str())
}
