//! The Anthropic dialect: request types ([`types`]), Messages with its
//! event stream ([`messages`]) and their typed bodies ([`answer`]), and
//! [`count_tokens`].

pub mod answer;
pub mod count_tokens;
pub mod messages;
pub mod types;
