//! Errors of the engine, typed so the neuron can map each to a wire class.

use std::path::PathBuf;

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
    /// The engine is shutting down or its worker has stopped.
    #[error("engine stopped")]
    Stopped,
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

impl EngineError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, EngineError>;
