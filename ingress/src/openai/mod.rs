//! The OpenAI dialect: request types ([`types`]), chat completions with
//! their chunk stream ([`chat`]), legacy [`completions`], both answers'
//! typed bodies ([`answer`]), the Responses API ([`responses`]), embeddings ([`embeddings`]) and the model
//! list ([`models`]).

pub mod answer;
pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod models;
pub mod responses;
pub mod types;
