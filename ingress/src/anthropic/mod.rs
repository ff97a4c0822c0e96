//! The Anthropic dialect: request types ([`types`]), Messages with its
//! event stream ([`messages`]), and [`count_tokens`].

pub mod count_tokens;
pub mod messages;
pub mod types;
