//! Incremental detokenisation that never emits a broken character.
//!
//! Byte-level tokens can end in the middle of a UTF-8 sequence (emoji and
//! CJK often take two or three tokens). Decoding each token alone would
//! emit U+FFFD; instead we decode a short window of recent tokens and emit
//! only the text that grew and does not end in an incomplete character.

use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// Turns generated ids into text pieces as they arrive.
#[derive(Debug, Clone, Default)]
pub struct DecodeStream {
    ids: Vec<u32>,
    /// Start of the window whose text was already emitted up to `read`.
    prefix: usize,
    read: usize,
}

impl DecodeStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one id; returns the text it completes, if any.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let after = tokenizer.decode(&self.ids[self.prefix..])?;
        if after.len() > before.len() && !after.ends_with('\u{FFFD}') {
            // Decoders may strip or merge at the window start; compare on a
            // character boundary of the shorter text.
            let split = if after.starts_with(&before) {
                before.len()
            } else {
                common_prefix_len(&before, &after)
            };
            let text = after[split..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Ok(Some(text))
        } else {
            Ok(None)
        }
    }

    /// Text still held back (an incomplete character at the very end).
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>> {
        let before = tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let after = tokenizer.decode(&self.ids[self.prefix..])?;
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        if after.len() > before.len() && after.starts_with(&before) {
            Ok(Some(after[before.len()..].to_string()))
        } else {
            Ok(None)
        }
    }
}

fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, ca), cb)| ca != cb)
        .map(|((i, _), _)| i)
        .unwrap_or(a.len().min(b.len()))
}
