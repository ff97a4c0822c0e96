//! Reading a request body as JSON with errors that name the field: the
//! body limit gives 413, malformed JSON and wrong fields give 400 with the
//! path of the field (`messages[0].role`) as `param`.

use std::time::Duration;

use axum::body::Body;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, Kind};

/// Reads at most `limit` bytes of `body` within `timeout` and decodes them
/// as `T`. A client that trickles its body (slowloris) gets 408.
pub async fn read_json<T: DeserializeOwned>(
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<T, ApiError> {
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                Kind::SlowClient,
                format!("the request body did not arrive within {timeout:?}"),
            )
        })?;
    let bytes = read.map_err(|error| {
        if is_length_limit(&error) {
            ApiError::new(
                Kind::TooLarge,
                format!("the request body is larger than {limit} bytes"),
            )
        } else {
            // The upload broke off or its framing was bad: the client's fault, not the size.
            ApiError::invalid(
                "body",
                format!("the request body could not be read: {error}"),
            )
        }
    })?;
    parse(&bytes)
}

/// Whether reading stopped at the body limit (the error's cause chain
/// names it; the type lives in a crate axum does not re-export).
fn is_length_limit(error: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if current.to_string().contains("length limit exceeded") {
            return true;
        }
        cause = current.source();
    }
    false
}

/// Decodes `bytes` as `T`, naming the field at fault.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "body",
            "the request body is empty; send a JSON object",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let inner = error.inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::invalid(
                "body",
                format!("the request body is not valid JSON: {inner}"),
            );
        }
        let path = error.path().to_string();
        let message = inner.to_string();
        // "missing field `model`" names the field one level down.
        let param = match message.split('`').nth(1) {
            Some(field) if message.starts_with("missing field") => {
                if path == "." {
                    field.to_string()
                } else {
                    format!("{path}.{field}")
                }
            }
            _ if path == "." => "body".to_string(),
            _ => path,
        };
        ApiError::invalid(
            param.clone(),
            format!("{param}: {}", strip_position(&message)),
        )
    })?;
    deserializer.end().map_err(|e| {
        ApiError::invalid(
            "body",
            format!("trailing characters after the JSON object: {e}"),
        )
    })?;
    Ok(value)
}

/// serde_json appends " at line 1 column 42"; the field path says more.
fn strip_position(message: &str) -> &str {
    message.split(" at line ").next().unwrap_or(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        model: String,
        messages: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        role: String,
    }

    #[test]
    fn errors_name_the_field() {
        let error = parse::<Outer>(br#"{"messages": []}"#).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("model"));
        let error = parse::<Outer>(br#"{"model": "m", "messages": [{"role": 3}]}"#).unwrap_err();
        assert_eq!(error.param.as_deref(), Some("messages[0].role"));
        assert!(error.message.contains("invalid type"), "{}", error.message);
        let error = parse::<Outer>(b"{not json").unwrap_err();
        assert!(error.message.contains("not valid JSON"));
        let error = parse::<Outer>(b"").unwrap_err();
        assert!(error.message.contains("empty"));
        assert_eq!(error.kind, Kind::InvalidRequest);
    }
}
