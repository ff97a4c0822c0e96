//! Payload encodings: JSON for the control plane (readable with the `nats`
//! CLI), MessagePack with named fields for the data plane. Every consumer
//! accepts both, picking by `Content-Type`; a message without one is JSON,
//! which is what `nats req` and `nats pub` send.

use async_nats::HeaderMap;
use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};

use crate::headers::CONTENT_TYPE;

/// `Content-Type` of JSON payloads.
pub const JSON: &str = "application/json";
/// `Content-Type` of MessagePack payloads.
pub const MSGPACK: &str = "application/msgpack";

/// A payload encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encoding {
    #[default]
    Json,
    MsgPack,
}

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unsupported Content-Type {0:?} (expected {JSON} or {MSGPACK})")]
    UnsupportedContentType(String),
    #[error("cannot encode as JSON: {0}")]
    EncodeJson(#[source] serde_json::Error),
    #[error("cannot encode as MessagePack: {0}")]
    EncodeMsgPack(#[source] rmp_serde::encode::Error),
    #[error("invalid JSON payload: {0}")]
    DecodeJson(#[source] serde_json::Error),
    #[error("invalid MessagePack payload: {0}")]
    DecodeMsgPack(#[source] rmp_serde::decode::Error),
}

impl Encoding {
    /// The `Content-Type` value of this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => JSON,
            Self::MsgPack => MSGPACK,
        }
    }

    /// Parses a `Content-Type` value (parameters such as `; charset=utf-8` are ignored).
    pub fn from_content_type(value: &str) -> Result<Self, CodecError> {
        let essence = value.split(';').next().unwrap_or("").trim();
        match essence.to_ascii_lowercase().as_str() {
            "" | JSON | "text/json" => Ok(Self::Json),
            MSGPACK | "application/x-msgpack" | "application/vnd.msgpack" => Ok(Self::MsgPack),
            _ => Err(CodecError::UnsupportedContentType(value.to_string())),
        }
    }

    /// The encoding a message declares; JSON when it declares none.
    pub fn of_message(headers: Option<&HeaderMap>) -> Result<Self, CodecError> {
        match headers.and_then(|h| h.get(CONTENT_TYPE)) {
            Some(value) => Self::from_content_type(value.as_str()),
            None => Ok(Self::Json),
        }
    }

    /// Serializes `value` (MessagePack with named fields, so it decodes like JSON).
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes, CodecError> {
        match self {
            Self::Json => serde_json::to_vec(value)
                .map(Bytes::from)
                .map_err(CodecError::EncodeJson),
            Self::MsgPack => rmp_serde::to_vec_named(value)
                .map(Bytes::from)
                .map_err(CodecError::EncodeMsgPack),
        }
    }

    /// Deserializes `payload`.
    pub fn decode<T: DeserializeOwned>(self, payload: &[u8]) -> Result<T, CodecError> {
        match self {
            Self::Json => serde_json::from_slice(payload).map_err(CodecError::DecodeJson),
            Self::MsgPack => rmp_serde::from_slice(payload).map_err(CodecError::DecodeMsgPack),
        }
    }

    /// Headers carrying this encoding's `Content-Type`.
    pub fn headers(self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, self.content_type());
        headers
    }
}

/// Decodes a message's payload by its own `Content-Type`.
pub fn decode_message<T: DeserializeOwned>(
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<T, CodecError> {
    Encoding::of_message(headers)?.decode(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cortex_schemas::{ErrorClass, Frame, WireError};

    #[test]
    fn content_types_parse() {
        assert_eq!(
            Encoding::from_content_type("application/json").unwrap(),
            Encoding::Json
        );
        assert_eq!(
            Encoding::from_content_type("Application/MsgPack; x=1").unwrap(),
            Encoding::MsgPack
        );
        assert!(matches!(
            Encoding::from_content_type("text/plain"),
            Err(CodecError::UnsupportedContentType(_))
        ));
        assert_eq!(Encoding::of_message(None).unwrap(), Encoding::Json);
    }

    #[test]
    fn both_encodings_roundtrip_and_differ() {
        let frame = Frame::Error(WireError::new(ErrorClass::Overloaded, "busy"));
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let bytes = encoding.encode(&frame).unwrap();
            let back: Frame = decode_message(Some(&encoding.headers()), &bytes).unwrap();
            assert_eq!(back, frame);
        }
        let json = Encoding::Json.encode(&frame).unwrap();
        assert!(matches!(
            Encoding::MsgPack.decode::<Frame>(&json),
            Err(CodecError::DecodeMsgPack(_))
        ));
    }
}
