//! The Cortex inference engine: real models on candle, turned into streams
//! of tokens. It builds on the wire types of `cortex-schemas` only and runs
//! without NATS; the neuron daemon puts it on the bus.
//!
//! Modules, from the files up:
//! - [`source`]: model locations (`/path`, `hf:org/name@rev:file` in the
//!   local Hugging Face cache, [`download`]ed into it when missing and
//!   online); [`progress`]: bytes-read load progress;
//!   [`gguf`]: GGUF metadata and tensors; [`device`]: `cpu` / `cuda:N`;
//!   [`footprint`]: the memory a model will need, before loading it
//!   (re-exported from `cortex-footprint`, which placement uses too).
//! - [`tokenizer`]: `tokenizer.json` or one built from GGUF metadata, and
//!   UTF-8-safe incremental decoding; [`template`]: the model's Jinja chat
//!   template, rendered as `transformers` does.
//! - [`models`]: our Llama-family decoder (GGUF and safetensors, with a
//!   lossless fast path for Q4_1), candle's phi3/gemma3, BERT embeddings.
//! - [`load`]: picks the code path from a model's files; [`chat_model`]:
//!   a loaded chat model and prompt building (tools included).
//! - [`generate`]: sampling, stop strings, tool-call parsing, one running
//!   sequence; [`engine`]: slots, queue, cancellation, the worker thread
//!   that runs every sequence in one batched forward pass per step;
//!   [`fair_queue`]: its wait queue, fair between tenants, by priority;
//!   [`prefix_cache`]: KV of earlier prompts reused by new ones;
//!   `kv_budget`: the running batch's KV held within its budget; `step`:
//!   one batched pass (who gets which tokens, the forward pass, outcomes);
//!   [`embed`]: the embedding service; [`sim`]: a simulated engine for
//!   fleet and load tests.

pub mod chat_model;
pub mod device;
pub mod download;
pub mod embed;
pub mod engine;
pub mod error;
pub mod fair_queue;
/// The memory a model will need (its own crate: placement uses it too).
pub use cortex_footprint as footprint;
pub mod generate;
pub mod gguf;
mod kv_budget;
pub mod load;
pub mod models;
pub mod prefix_cache;
pub mod progress;
pub mod sim;
pub mod source;
mod step;
pub mod template;
pub mod tokenizer;

pub use device::DeviceSpec;
#[cfg(any(test, feature = "test-support"))]
pub use engine::Collected;
pub use engine::{ChatEngine, EngineConfig, EngineStats, Generation};
pub use error::{EngineError, Result};
pub use generate::Event;
pub use load::{load, LoadOptions, LoadedModel};
pub use progress::LoadProgress;
