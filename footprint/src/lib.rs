//! # Cortex footprint
//!
//! How much memory a model needs once loaded, worked out from its files
//! without loading them, so that the neuron refuses a load that cannot fit
//! and placement sends a model where it fits, with the same figure. A small
//! crate of its own so that placement builds without the inference engine
//! (candle, tokenizers, templates).
//!
//! ## Layout
//! - [`estimate`]: the estimate (weights, the KV cache of a window for the
//!   running batch, the prefix cache's budget) and [`size_on_disk`].
//! - [`gguf_header`]: the metadata table of a GGUF file, read from its
//!   header with every length checked.

pub mod estimate;
pub mod gguf_header;

pub use estimate::{estimate, size_on_disk};
