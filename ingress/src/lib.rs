//! # Cortex ingress
//!
//! Stateless OpenAI- and Anthropic-compatible HTTP front over the bus.
//!
//! Not built yet (issue 5). Until then this crate holds nothing.
