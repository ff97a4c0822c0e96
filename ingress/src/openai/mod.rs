//! The OpenAI dialect: request types ([`types`]), chat completions with
//! their chunk stream ([`chat`]), embeddings ([`embeddings`]) and the model
//! list ([`models`]).

pub mod chat;
pub mod embeddings;
pub mod models;
pub mod types;
