//! The Anthropic dialect: request types ([`types`]) and Messages with its
//! event stream ([`messages`]).

pub mod messages;
pub mod types;
