//! Every failure a client can see, and the one place it becomes an HTTP
//! response in the client's dialect ([`ApiError::into_response_for`]).
//!
//! | what | status | OpenAI `type` | Anthropic `type` |
//! |---|---|---|---|
//! | invalid request (bad JSON, missing or wrong field) | 400 | `invalid_request_error` | `invalid_request_error` |
//! | missing or wrong API key | 401 | `authentication_error` | `authentication_error` |
//! | unknown model or route | 404 | `invalid_request_error` (`model_not_found`) | `not_found_error` |
//! | body or request over the limit | 413 | `invalid_request_error` | `request_too_large` |
//! | overloaded (every replica full, or this pod's limit) | 429 + `Retry-After` | `rate_limit_error` | `rate_limit_error` |
//! | internal fault | 500 | `server_error` | `api_error` |
//! | model not loaded, neuron unavailable | 503 | `server_error` | `api_error` |
//! | deadline passed | 504 | `timeout` | `api_error` |

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cortex_schemas::{ErrorClass, TooLong, WireError};
use serde::Serialize;

/// Which API shape the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
        }
    }
}

/// What went wrong, independent of dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidRequest,
    Unauthorized,
    /// A valid key without the rights the call needs (403).
    Forbidden,
    NotFound,
    TooLarge,
    /// The client sent its request too slowly (408).
    SlowClient,
    Overloaded,
    Unavailable,
    Timeout,
    Cancelled,
    Internal,
}

/// A failure as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: Kind,
    pub message: String,
    /// The request field at fault, when one is.
    pub param: Option<String>,
    /// Seconds after which a retry may succeed (429).
    pub retry_after_s: Option<u64>,
    /// A request past the model's context window: each dialect words it
    /// the way its clients parse (see [`ApiError::message_for`]).
    pub too_long: Option<TooLong>,
}

impl ApiError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
            retry_after_s: None,
            too_long: None,
        }
    }

    /// An invalid request naming the field at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.into()),
            ..Self::new(Kind::InvalidRequest, message)
        }
    }

    /// From an `Error` frame or control reply.
    pub fn from_wire(error: &WireError) -> Self {
        let kind = match error.class {
            ErrorClass::InvalidRequest => Kind::InvalidRequest,
            ErrorClass::ModelNotFound => Kind::NotFound,
            ErrorClass::Overloaded => Kind::Overloaded,
            ErrorClass::Unavailable => Kind::Unavailable,
            // A neuron cancels on its own only when unloading or stopping:
            // for the client that is the service being unavailable.
            ErrorClass::Cancelled => Kind::Unavailable,
            ErrorClass::DeadlineExceeded => Kind::Timeout,
            ErrorClass::Internal => Kind::Internal,
        };
        Self {
            retry_after_s: error.retry_after_ms.map(|ms| ms.div_ceil(1000).max(1)),
            too_long: error.too_long,
            ..Self::new(kind, error.message.clone())
        }
    }

    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::InvalidRequest => StatusCode::BAD_REQUEST,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::SlowClient => StatusCode::REQUEST_TIMEOUT,
            Kind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            // nginx's "client closed request": only ever logged and counted.
            Kind::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The dialect's error `type`.
    pub fn type_name(&self, dialect: Dialect) -> &'static str {
        match (dialect, self.kind) {
            (_, Kind::InvalidRequest | Kind::SlowClient) => "invalid_request_error",
            (_, Kind::Unauthorized) => "authentication_error",
            (_, Kind::Forbidden) => "permission_error",
            (_, Kind::Overloaded) => "rate_limit_error",
            (Dialect::OpenAi, Kind::NotFound | Kind::TooLarge) => "invalid_request_error",
            (Dialect::OpenAi, Kind::Timeout) => "timeout",
            (Dialect::OpenAi, _) => "server_error",
            (Dialect::Anthropic, Kind::NotFound) => "not_found_error",
            (Dialect::Anthropic, Kind::TooLarge) => "request_too_large",
            (Dialect::Anthropic, _) => "api_error",
        }
    }

    /// OpenAI's `code`.
    fn code(&self) -> Option<&'static str> {
        if self.too_long.is_some() {
            return Some("context_length_exceeded");
        }
        match self.kind {
            Kind::NotFound => Some("model_not_found"),
            Kind::Unauthorized => Some("invalid_api_key"),
            Kind::Overloaded => Some("rate_limit_exceeded"),
            _ => None,
        }
    }

    /// The message as the dialect words it. Past the context window the
    /// wording is the real APIs': Claude Code reads the two numbers out of
    /// Anthropic's `prompt is too long: N tokens > M maximum`.
    pub fn message_for(&self, dialect: Dialect) -> String {
        let Some(t) = self.too_long else {
            return self.message.clone();
        };
        let (prompt, generate, window) = (t.prompt_tokens, t.generate_tokens, t.context_window);
        match dialect {
            Dialect::Anthropic if prompt >= window => {
                format!("prompt is too long: {prompt} tokens > {} maximum", window.saturating_sub(1))
            }
            Dialect::Anthropic => format!(
                "input length and `max_tokens` exceed context limit: {prompt} + {generate} > {window}, decrease input length or `max_tokens` and try again"
            ),
            Dialect::OpenAi => format!(
                "This model's maximum context length is {window} tokens. However, you requested {} tokens ({prompt} in the messages, {generate} in the completion). Please reduce the length of the messages or completion.",
                u64::from(prompt) + u64::from(generate)
            ),
        }
    }

    /// The error body, as the dialect writes it (also used for error events in streams).
    pub fn body(&self, dialect: Dialect) -> ErrorBody<'_> {
        let message = self.message_for(dialect);
        let kind = self.type_name(dialect);
        match dialect {
            Dialect::OpenAi => ErrorBody::OpenAi {
                error: OpenAiError {
                    message,
                    kind,
                    param: self.param.as_deref().or(self.too_long.map(|_| "messages")),
                    code: self.code(),
                },
            },
            Dialect::Anthropic => ErrorBody::Anthropic {
                kind: "error",
                error: AnthropicError { kind, message },
            },
        }
    }

    /// The HTTP response: status, `Retry-After` when known, dialect body.
    pub fn into_response_for(self, dialect: Dialect) -> Response {
        let mut response = (self.status(), axum::Json(self.body(dialect))).into_response();
        if let Some(seconds) = self.retry_after_s {
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

/// An error already tied to its dialect: what handlers return.
#[derive(Debug)]
pub struct DialectError(pub Dialect, pub ApiError);

impl IntoResponse for DialectError {
    fn into_response(self) -> Response {
        self.1.into_response_for(self.0)
    }
}

/// An error response's body in each dialect.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ErrorBody<'a> {
    /// `{"error": {"message", "type", "param", "code"}}`.
    OpenAi { error: OpenAiError<'a> },
    /// `{"type": "error", "error": {"type", "message"}}`.
    Anthropic {
        #[serde(rename = "type")]
        kind: &'static str,
        error: AnthropicError,
    },
}

#[derive(Debug, Serialize)]
pub struct OpenAiError<'a> {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<&'a str>,
    pub code: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct AnthropicError {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wire_class_maps_to_a_status_and_both_bodies() {
        for (class, status) in [
            (ErrorClass::InvalidRequest, 400),
            (ErrorClass::ModelNotFound, 404),
            (ErrorClass::Overloaded, 429),
            (ErrorClass::Unavailable, 503),
            (ErrorClass::DeadlineExceeded, 504),
            (ErrorClass::Internal, 500),
        ] {
            let error = ApiError::from_wire(&WireError::new(class, "m"));
            assert_eq!(error.status().as_u16(), status);
            assert_eq!(
                serde_json::to_value(error.body(Dialect::OpenAi)).unwrap()["error"]["message"],
                "m"
            );
            assert_eq!(
                serde_json::to_value(error.body(Dialect::Anthropic)).unwrap()["type"],
                "error"
            );
        }
        let mut overloaded = WireError::new(ErrorClass::Overloaded, "full");
        overloaded.retry_after_ms = Some(250);
        let response = ApiError::from_wire(&overloaded).into_response_for(Dialect::OpenAi);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    fn too_long(prompt_tokens: u32, generate_tokens: u32) -> ApiError {
        let mut wire = WireError::new(ErrorClass::InvalidRequest, "engine words");
        wire.too_long = Some(TooLong {
            prompt_tokens,
            generate_tokens,
            context_window: 2048,
        });
        ApiError::from_wire(&wire)
    }

    #[test]
    fn a_request_past_the_window_is_worded_as_each_api_words_it() {
        let prompt = too_long(3000, 1);
        assert_eq!(prompt.status().as_u16(), 400);
        assert_eq!(
            serde_json::to_value(prompt.body(Dialect::Anthropic)).unwrap()["error"]["message"],
            "prompt is too long: 3000 tokens > 2047 maximum"
        );
        let openai = serde_json::to_value(prompt.body(Dialect::OpenAi)).unwrap();
        assert_eq!(openai["error"]["code"], "context_length_exceeded");
        assert_eq!(openai["error"]["param"], "messages");
        assert!(openai["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("This model's maximum context length is 2048 tokens. However, you requested 3001 tokens"));
        let both = too_long(1000, 32000);
        assert_eq!(
            serde_json::to_value(both.body(Dialect::Anthropic)).unwrap()["error"]["message"],
            "input length and `max_tokens` exceed context limit: 1000 + 32000 > 2048, decrease input length or `max_tokens` and try again"
        );
    }
}
