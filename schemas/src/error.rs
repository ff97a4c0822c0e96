//! Errors that cross the bus: a small closed set of classes every component
//! understands, so that ingress can map them to HTTP without string matching.

use serde::{Deserialize, Serialize};

/// Why a request failed, as every component on the mesh names it.
///
/// Ingress maps each class to an HTTP status and a dialect's error body in one
/// function; nothing matches on [`WireError::message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The request itself is wrong (bad parameter, prompt too long, ...). Retrying will not help.
    InvalidRequest,
    /// No model (or alias) of that name is in the catalogue or on that neuron.
    ModelNotFound,
    /// Every slot and the bounded queue are full; retry elsewhere or later.
    Overloaded,
    /// The model exists but cannot serve now (not loaded, neuron draining, load failed).
    Unavailable,
    /// The caller cancelled the request.
    Cancelled,
    /// The request's deadline passed before it could finish.
    DeadlineExceeded,
    /// A fault inside a component; the message says what.
    Internal,
}

/// The error body carried by an `Error` frame and by control-plane replies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct WireError {
    pub class: ErrorClass,
    /// Human-readable detail, safe to show to the client.
    pub message: String,
    /// For `overloaded`: when a retry is likely to succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// For a request that does not fit the model's context window (class
    /// `invalid_request`): the numbers, which each dialect writes in the
    /// form its clients parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub too_long: Option<TooLong>,
}

/// How a request overflows the context window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub struct TooLong {
    pub prompt_tokens: u32,
    /// Tokens the request asked to generate beyond the prompt (at least 1).
    pub generate_tokens: u32,
    pub context_window: u32,
}

impl WireError {
    /// An error of `class` with `message` and no retry hint.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            retry_after_ms: None,
            too_long: None,
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let class = serde_json::to_value(self.class).unwrap_or_default();
        write!(f, "{}: {}", class.as_str().unwrap_or("error"), self.message)
    }
}

impl std::error::Error for WireError {}
