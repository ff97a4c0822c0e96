//! Errors of the engine, typed so the neuron can map each to a wire class.

use std::path::PathBuf;

use cortex_schemas::error::{ErrorClass, TooLong, WireError};

/// The retry hint sent with `overloaded`: about one decode step of a few
/// sequences on a small model.
pub const OVERLOADED_RETRY_MS: u64 = 250;

/// Anything that can go wrong loading a model or serving a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A model file or directory is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file we need is not where the source says.
    #[error("model file missing: {0}")]
    Missing(String),
    /// The model's architecture, dtype or tokenizer is one we do not run.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// The model files are there but inconsistent or corrupt.
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// The request cannot be served as asked (bad parameters, too long).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The prompt does not fit the model's context window.
    #[error("prompt of {prompt} tokens plus {reserve} to generate exceeds the context window of {window}")]
    ContextTooLong {
        prompt: usize,
        reserve: usize,
        window: usize,
    },
    /// Every slot is busy and the wait queue is full.
    #[error("overloaded: {busy} slots busy and {queued} requests queued")]
    Overloaded { busy: usize, queued: usize },
    /// The chat template failed to render.
    #[error("chat template: {0}")]
    Template(String),
    /// Tokenizer construction or encoding failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The request was cancelled by its caller.
    #[error("cancelled")]
    Cancelled,
    /// The request's deadline passed before it finished.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The engine is shutting down or its worker has stopped.
    #[error("engine stopped")]
    Stopped,
    /// A broken invariant inside the engine (a bug, not the request's fault).
    #[error("internal: {0}")]
    Internal(String),
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Candle(candle_core::Error),
}

impl From<candle_core::Error> for EngineError {
    fn from(error: candle_core::Error) -> Self {
        Self::Candle(without_backtrace(error))
    }
}

/// `error` without the backtraces candle attaches when `RUST_BACKTRACE`
/// is set. Its `Display` would print them (symbolising each one: tens of
/// megabytes of debug information read, kept in a cache) into a message
/// that an operator or a client reads.
pub(crate) fn without_backtrace(error: candle_core::Error) -> candle_core::Error {
    match error {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        candle_core::Error::WithPath { inner, path } => candle_core::Error::WithPath {
            inner: Box::new(without_backtrace(*inner)),
            path,
        },
        candle_core::Error::Context { inner, context } => candle_core::Error::Context {
            inner: Box::new(without_backtrace(*inner)),
            context,
        },
        other => other,
    }
}

impl EngineError {
    /// The wire class a client sees for this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::InvalidRequest(_) | Self::ContextTooLong { .. } | Self::Template(_) => {
                ErrorClass::InvalidRequest
            }
            Self::Overloaded { .. } => ErrorClass::Overloaded,
            Self::Cancelled => ErrorClass::Cancelled,
            Self::DeadlineExceeded => ErrorClass::DeadlineExceeded,
            Self::Stopped => ErrorClass::Unavailable,
            Self::Io { .. }
            | Self::Missing(_)
            | Self::Unsupported(_)
            | Self::InvalidModel(_)
            | Self::Tokenizer(_)
            | Self::Internal(_)
            | Self::Candle(_) => ErrorClass::Internal,
        }
    }

    /// The error as an `Error` frame carries it.
    pub fn to_wire(&self) -> WireError {
        let mut wire = WireError::new(self.class(), self.to_string());
        match *self {
            Self::Overloaded { .. } => wire.retry_after_ms = Some(OVERLOADED_RETRY_MS),
            Self::ContextTooLong {
                prompt,
                reserve,
                window,
            } => {
                let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
                wire.too_long = Some(TooLong {
                    prompt_tokens: n(prompt),
                    generate_tokens: n(reserve),
                    context_window: n(window),
                });
            }
            _ => {}
        }
        wire
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, EngineError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_wire_classes() {
        let too_long = EngineError::ContextTooLong {
            prompt: 10,
            reserve: 5,
            window: 8,
        };
        assert_eq!(too_long.class(), ErrorClass::InvalidRequest);
        assert!(too_long.to_wire().message.contains("context window of 8"));
        assert_eq!(
            too_long.to_wire().too_long,
            Some(TooLong {
                prompt_tokens: 10,
                generate_tokens: 5,
                context_window: 8
            })
        );
        let busy = EngineError::Overloaded {
            busy: 4,
            queued: 16,
        }
        .to_wire();
        assert_eq!(busy.class, ErrorClass::Overloaded);
        assert_eq!(busy.retry_after_ms, Some(OVERLOADED_RETRY_MS));
        assert_eq!(EngineError::Cancelled.class(), ErrorClass::Cancelled);
        assert_eq!(
            EngineError::DeadlineExceeded.class(),
            ErrorClass::DeadlineExceeded
        );
        assert_eq!(EngineError::Stopped.class(), ErrorClass::Unavailable);
        assert_eq!(
            EngineError::Unsupported("x".into()).class(),
            ErrorClass::Internal
        );
        assert_eq!(EngineError::Cancelled.to_wire().retry_after_ms, None);
    }

    /// With `RUST_BACKTRACE` set, candle's errors carry a backtrace; the
    /// message an operator or client reads does not.
    #[test]
    fn candle_errors_lose_their_backtraces() {
        let traced = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("bad shape".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let located = candle_core::Error::WithPath {
            inner: Box::new(traced),
            path: "model.gguf".into(),
        };
        let error = EngineError::from(located);
        assert_eq!(error.to_string(), "tensor: path: \"model.gguf\" bad shape");
    }
}
