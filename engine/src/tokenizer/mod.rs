//! Tokenizers: `tokenizer.json` when a model ships one, otherwise built from
//! GGUF metadata ([`gguf`]); incremental, UTF-8-safe detokenisation
//! ([`stream`]).

pub mod gguf;
pub mod stream;

use std::path::Path;

use crate::error::{EngineError, Result};

pub use stream::DecodeStream;

/// A model's tokenizer with the special tokens generation needs.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Beginning-of-sequence token, when the model has one.
    pub bos: Option<Special>,
    /// End-of-sequence token as the tokenizer names it.
    pub eos: Option<Special>,
    /// Whether plain-text prompts start with BOS.
    pub add_bos: bool,
}

/// A special token: its id and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Special {
    pub id: u32,
    pub text: String,
}

impl Tokenizer {
    /// Loads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(Self::from_inner(inner))
    }

    /// Loads a `tokenizer.json` document.
    pub fn from_json(doc: &serde_json::Value) -> Result<Self> {
        let bytes = serde_json::to_vec(doc).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(Self::from_inner(inner))
    }

    /// Builds the tokenizer a GGUF file describes.
    pub fn from_gguf(file: &crate::gguf::GgufFile) -> Result<Self> {
        let mut tokenizer = Self::from_json(&gguf::tokenizer_json(file)?)?;
        let special = |key: &str| {
            file.u32(key).ok().and_then(|id| {
                tokenizer
                    .inner
                    .id_to_token(id)
                    .map(|text| Special { id, text })
            })
        };
        tokenizer.bos = special("tokenizer.ggml.bos_token_id");
        tokenizer.eos = special("tokenizer.ggml.eos_token_id");
        tokenizer.add_bos = file
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or_else(|| {
                file.string("tokenizer.ggml.model")
                    .is_ok_and(|m| m == "llama")
            });
        Ok(tokenizer)
    }

    fn from_inner(mut inner: tokenizers::Tokenizer) -> Self {
        // Lengths are the engine's business: a tokenizer.json may carry the
        // training setup's truncation and padding.
        let _ = inner.with_truncation(None);
        inner.with_padding(None);
        Self {
            inner,
            bos: None,
            eos: None,
            add_bos: false,
        }
    }

    /// Sets BOS/EOS from their texts (as `tokenizer_config.json` gives them).
    pub fn set_specials(&mut self, bos: Option<&str>, eos: Option<&str>, add_bos: bool) {
        let lookup = |text: &str| {
            self.inner.token_to_id(text).map(|id| Special {
                id,
                text: text.to_string(),
            })
        };
        self.bos = bos.and_then(lookup);
        self.eos = eos.and_then(lookup);
        self.add_bos = add_bos && self.bos.is_some();
    }

    /// Encodes text. Special tokens written in the text (`<|im_start|>`)
    /// become their ids, as a rendered chat template needs.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Encodes with the tokenizer's own post-processing (`[CLS] … [SEP]`
    /// for BERT).
    pub fn encode_with_specials(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Encodes a plain-text prompt, with BOS first when the model wants it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if let (true, Some(bos)) = (self.add_bos, &self.bos) {
            ids.push(bos.id);
        }
        ids.extend(self.encode(text)?);
        Ok(ids)
    }

    /// Decodes ids, leaving out special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The tokenizer as a `tokenizer.json` document.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
