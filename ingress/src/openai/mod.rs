//! The OpenAI dialect: request types ([`types`]), chat completions with
//! their chunk stream ([`chat`]), legacy [`completions`], embeddings ([`embeddings`]) and the model
//! list ([`models`]).

pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod models;
pub mod types;
