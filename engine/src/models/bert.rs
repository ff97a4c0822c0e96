//! Sentence embeddings with BERT-family encoders (all-MiniLM, bge, e5…):
//! the encoder, then the pooling and normalisation the model's
//! sentence-transformers config names (`modules.json`,
//! `1_Pooling/config.json`, `sentence_bert_config.json`).

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;

use crate::error::{EngineError, Result};
use crate::progress::LoadProgress;
use crate::tokenizer::Tokenizer;

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
    Max,
    MeanSqrtLen,
}

#[derive(Debug, Default, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Debug, Deserialize)]
struct Module {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

#[derive(Debug, Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

/// A loaded embedding model.
pub struct BertEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    pooling: Pooling,
    /// The pipeline ends with a Normalize module.
    normalizes: bool,
    max_tokens: usize,
    dimensions: usize,
    device: Device,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::io(path, e)),
    }
}

impl std::fmt::Debug for BertEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertEmbedder")
            .field("pooling", &self.pooling)
            .field("normalizes", &self.normalizes)
            .field("max_tokens", &self.max_tokens)
            .field("dimensions", &self.dimensions)
            .finish()
    }
}

impl BertEmbedder {
    /// Loads a Hugging Face directory: `config.json`, `model.safetensors`,
    /// `tokenizer.json` and the optional sentence-transformers files.
    pub fn load(dir: &Path, device: &Device, progress: &LoadProgress) -> Result<Self> {
        let config: Config = read_json(&dir.join("config.json"))?
            .ok_or_else(|| EngineError::Missing(dir.join("config.json").display().to_string()))?;
        let weights_path = dir.join("model.safetensors");
        let bytes = std::fs::read(&weights_path).map_err(|e| EngineError::io(&weights_path, e))?;
        progress.add_total(bytes.len() as u64);
        progress.add_read(bytes.len() as u64);
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)?;
        let model = BertModel::load(vb, &config)?;
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;

        let modules: Vec<Module> = read_json(&dir.join("modules.json"))?.unwrap_or_default();
        let normalizes = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
        let pooling_dir = modules
            .iter()
            .find(|m| m.kind.ends_with(".Pooling"))
            .map(|m| dir.join(&m.path))
            .unwrap_or_else(|| dir.join("1_Pooling"));
        let pooling_config: PoolingConfig =
            read_json(&pooling_dir.join("config.json"))?.unwrap_or(PoolingConfig {
                pooling_mode_mean_tokens: true,
                ..PoolingConfig::default()
            });
        let pooling = match (
            pooling_config.pooling_mode_cls_token,
            pooling_config.pooling_mode_mean_tokens,
            pooling_config.pooling_mode_max_tokens,
            pooling_config.pooling_mode_mean_sqrt_len_tokens,
        ) {
            (true, false, false, false) => Pooling::Cls,
            (false, true, false, false) => Pooling::Mean,
            (false, false, true, false) => Pooling::Max,
            (false, false, false, true) => Pooling::MeanSqrtLen,
            _ => {
                return Err(EngineError::Unsupported(format!(
                    "{}: exactly one pooling mode must be set",
                    pooling_dir.display()
                )))
            }
        };
        let st: Option<SentenceBertConfig> = read_json(&dir.join("sentence_bert_config.json"))?;
        let max_tokens = st
            .and_then(|c| c.max_seq_length)
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);
        Ok(Self {
            model,
            tokenizer,
            pooling,
            normalizes,
            max_tokens,
            dimensions: config.hidden_size,
            device: device.clone(),
        })
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// The longest input in tokens (special tokens included).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of `text` as the encoder sees them (`[CLS] … [SEP]`),
    /// cut to the window when `truncate`, else an error when too long.
    pub fn token_ids(&self, text: &str, truncate: bool) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode_with_specials(text)?;
        if ids.len() > self.max_tokens {
            if !truncate {
                return Err(EngineError::ContextTooLong {
                    prompt: ids.len(),
                    reserve: 0,
                    window: self.max_tokens,
                });
            }
            let last = ids[ids.len() - 1];
            ids.truncate(self.max_tokens - 1);
            ids.push(last);
        }
        Ok(ids)
    }

    /// Embeds texts in one padded batch; `normalize` L2-normalises each
    /// vector (the model's own Normalize module applies regardless).
    pub fn embed(&self, texts: &[String], normalize: bool, truncate: bool) -> Result<Embedded> {
        let ids = texts
            .iter()
            .map(|t| self.token_ids(t, truncate))
            .collect::<Result<Vec<_>>>()?;
        let tokens = ids.iter().map(Vec::len).sum();
        let width = ids.iter().map(Vec::len).max().unwrap_or(0);
        if width == 0 {
            return Ok(Embedded {
                vectors: Vec::new(),
                tokens,
            });
        }
        let mut flat_ids = Vec::with_capacity(ids.len() * width);
        let mut flat_mask = Vec::with_capacity(ids.len() * width);
        for row in &ids {
            flat_ids.extend(row.iter().copied().chain(std::iter::repeat(0)).take(width));
            flat_mask.extend((0..width).map(|i| u32::from(i < row.len())));
        }
        let shape = (ids.len(), width);
        let input = Tensor::from_vec(flat_ids, shape, &self.device)?;
        let mask = Tensor::from_vec(flat_mask, shape, &self.device)?;
        let types = input.zeros_like()?;
        let hidden = self.model.forward(&input, &types, Some(&mask))?;
        let pooled = self.pool(&hidden, &mask)?;
        let pooled = if normalize || self.normalizes {
            pooled.broadcast_div(
                &pooled
                    .sqr()?
                    .sum_keepdim(D::Minus1)?
                    .sqrt()?
                    .maximum(1e-12)?,
            )?
        } else {
            pooled
        };
        Ok(Embedded {
            vectors: pooled.to_vec2::<f32>()?,
            tokens,
        })
    }

    fn pool(&self, hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let mask_f = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let counts = mask_f.sum(1)?.maximum(1e-9)?;
        Ok(match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => hidden
                .broadcast_mul(&mask_f)?
                .sum(1)?
                .broadcast_div(&counts)?,
            Pooling::MeanSqrtLen => hidden
                .broadcast_mul(&mask_f)?
                .sum(1)?
                .broadcast_div(&counts.sqrt()?)?,
            Pooling::Max => {
                let masked = hidden.broadcast_add(&((mask_f - 1.0)? * 1e9)?)?;
                masked.max(1)?
            }
        })
    }
}

/// Vectors in input order, and how many tokens they took.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: usize,
}
