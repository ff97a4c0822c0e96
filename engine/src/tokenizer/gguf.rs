//! Builds a tokenizer from GGUF metadata (`tokenizer.ggml.*`) when no
//! `tokenizer.json` ships beside the model.
//!
//! The result is expressed as a `tokenizer.json` document and loaded by the
//! `tokenizers` crate, so GGUF and Hugging Face models share one code path.
//! Byte-level BPE vocabularies (`gpt2`) need the pre-tokenizer that matches
//! `tokenizer.ggml.pre`; an unknown value is an error rather than a guess,
//! because a wrong split silently changes every prompt. SentencePiece
//! vocabularies (`llama`) become BPE with byte fallback, their merges
//! derived from the token scores.

use serde_json::{json, Value as Json};

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;

/// GPT-2's split: contractions, letters, numbers, other, spaces.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3 (tiktoken cl100k style): numbers in groups of up to three.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2/2.5/3: like Llama 3 but numbers one digit at a time.
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral's tekken: case-aware words, single digits.
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-4o (o200k): case-aware words with contractions, numbers in threes.
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regex splits, applied in order, for a `tokenizer.ggml.pre` value.
pub fn pre_tokenizer_splits(pre: &str) -> Result<Vec<&'static str>> {
    let splits = match pre {
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            vec![r"\p{N}", GPT2]
        }
        "gpt-2" | "gpt2" | "default" | "phi-2" | "mpt" | "olmo" | "jina-es" | "jina-de"
        | "jina-v1-en" | "jina-v2-es" | "jina-v2-de" | "jina-v2-code" | "roberta-bpe"
        | "gigachat" | "trillion" => vec![GPT2],
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" | "dbrx" | "smaug-bpe"
        | "chatglm-bpe" | "lfm2" => vec![LLAMA3],
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "hunyuan" => vec![QWEN2],
        "tekken" => vec![TEKKEN],
        "gpt-4o" | "minimax-m2" => vec![GPT4O],
        other => {
            return Err(EngineError::Unsupported(format!(
                "GGUF tokenizer.ggml.pre {other:?}: no known pre-tokenizer (ship a tokenizer.json beside the model)"
            )))
        }
    };
    Ok(splits)
}

// GGUF token types (llama.cpp's llama_token_type).
const TYPE_NORMAL: i64 = 1;
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_BYTE: i64 = 6;

/// Token strings, types and scores as stored in the file.
struct Vocab {
    tokens: Vec<String>,
    types: Vec<i64>,
    scores: Vec<f32>,
}

fn read_vocab(file: &GgufFile) -> Result<Vocab> {
    let list = |key: &str| -> Result<Vec<candle_core::quantized::gguf_file::Value>> {
        match file.get(key) {
            Some(v) => Ok(v.to_vec().map_err(|_| invalid(key))?.clone()),
            None => Ok(Vec::new()),
        }
    };
    let tokens = list("tokenizer.ggml.tokens")?
        .iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|_| invalid("tokenizer.ggml.tokens"))
        })
        .collect::<Result<Vec<_>>>()?;
    if tokens.is_empty() {
        return Err(EngineError::InvalidModel(
            "GGUF has no tokenizer.ggml.tokens and no tokenizer.json beside it".into(),
        ));
    }
    let types = list("tokenizer.ggml.token_type")?
        .iter()
        .map(|v| {
            v.to_i32()
                .map(i64::from)
                .or_else(|_| v.to_u32().map(i64::from))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| invalid("tokenizer.ggml.token_type"))?;
    let scores = list("tokenizer.ggml.scores")?
        .iter()
        .map(|v| v.to_f32())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| invalid("tokenizer.ggml.scores"))?;
    Ok(Vocab {
        types: if types.len() == tokens.len() {
            types
        } else {
            vec![TYPE_NORMAL; tokens.len()]
        },
        scores: if scores.len() == tokens.len() {
            scores
        } else {
            vec![0.0; tokens.len()]
        },
        tokens,
    })
}

fn invalid(key: &str) -> EngineError {
    EngineError::InvalidModel(format!("GGUF metadata {key} has the wrong type"))
}

/// The `tokenizer.json` document equivalent to the GGUF's vocabulary.
pub fn tokenizer_json(file: &GgufFile) -> Result<Json> {
    let model = file.string("tokenizer.ggml.model")?;
    let vocab = read_vocab(file)?;
    match model.as_str() {
        "gpt2" => byte_level_bpe(file, &vocab),
        "llama" => sentencepiece_bpe(file, &vocab),
        other => Err(EngineError::Unsupported(format!(
            "GGUF tokenizer.ggml.model {other:?} (supported: gpt2, llama)"
        ))),
    }
}

fn added_tokens(vocab: &Vocab) -> Vec<Json> {
    vocab
        .tokens
        .iter()
        .zip(&vocab.types)
        .enumerate()
        .filter(|(_, (_, t))| matches!(**t, TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN))
        .map(|(id, (content, t))| {
            json!({
                "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": *t != TYPE_USER_DEFINED,
            })
        })
        .collect()
}

fn vocab_map(vocab: &Vocab) -> serde_json::Map<String, Json> {
    let mut map = serde_json::Map::with_capacity(vocab.tokens.len());
    for (id, token) in vocab.tokens.iter().enumerate() {
        map.entry(token.clone()).or_insert(json!(id));
    }
    map
}

fn byte_level_bpe(file: &GgufFile, vocab: &Vocab) -> Result<Json> {
    let pre = match file.get("tokenizer.ggml.pre") {
        Some(v) => v
            .to_string()
            .map_err(|_| invalid("tokenizer.ggml.pre"))?
            .clone(),
        None => "default".to_string(),
    };
    let mut steps: Vec<Json> = pre_tokenizer_splits(&pre)?
        .into_iter()
        .map(|pattern| {
            json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
        })
        .collect();
    steps.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}));
    let merges: Vec<Json> = match file.get("tokenizer.ggml.merges") {
        Some(v) => v
            .to_vec()
            .map_err(|_| invalid("tokenizer.ggml.merges"))?
            .iter()
            .map(|m| m.to_string().cloned().map(Json::String))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| invalid("tokenizer.ggml.merges"))?,
        None => Vec::new(),
    };
    Ok(json!({
        "version": "1.0",
        "added_tokens": added_tokens(vocab),
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": steps},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab_map(vocab), "merges": merges,
        },
    }))
}

/// SentencePiece BPE: a merge of two pieces is ranked by the score of the
/// piece it makes (higher first), as SentencePiece itself merges.
fn sentencepiece_merges(vocab: &Vocab) -> Vec<Json> {
    let index: std::collections::HashMap<&str, usize> = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.as_str(), id))
        .collect();
    let mut merges: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    for (id, piece) in vocab.tokens.iter().enumerate() {
        if vocab.types[id] != TYPE_NORMAL || piece.chars().count() < 2 {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(split);
            if let (Some(&l), Some(&r)) = (index.get(left), index.get(right)) {
                if vocab.types[l] == TYPE_NORMAL && vocab.types[r] == TYPE_NORMAL {
                    merges.push((vocab.scores[id], l, r, left, right));
                }
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    merges
        .into_iter()
        .map(|(_, _, _, l, r)| json!([l, r]))
        .collect()
}

fn sentencepiece_bpe(file: &GgufFile, vocab: &Vocab) -> Result<Json> {
    let add_space_prefix = file
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(true);
    let unk = file
        .u32("tokenizer.ggml.unknown_token_id")
        .ok()
        .and_then(|id| vocab.tokens.get(id as usize).cloned());
    let mut normalizers = Vec::new();
    if add_space_prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if add_space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let has_bytes = vocab.types.contains(&TYPE_BYTE);
    Ok(json!({
        "version": "1.0",
        "added_tokens": added_tokens(vocab),
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": has_bytes,
            "ignore_merges": false, "vocab": vocab_map(vocab), "merges": sentencepiece_merges(vocab),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_pre_tokenizer_is_an_error_naming_it() {
        let err = pre_tokenizer_splits("mystery-9").unwrap_err().to_string();
        assert!(err.contains("mystery-9"), "{err}");
        assert_eq!(pre_tokenizer_splits("smollm").unwrap().len(), 2);
    }

    #[test]
    fn sentencepiece_merges_follow_scores() {
        let vocab = Vocab {
            tokens: ["<unk>", "a", "b", "c", "ab", "bc", "abc"]
                .map(String::from)
                .to_vec(),
            types: vec![TYPE_UNKNOWN, 1, 1, 1, 1, 1, 1],
            scores: vec![0.0, -1.0, -1.0, -1.0, -3.0, -2.0, -4.0],
        };
        let merges = sentencepiece_merges(&vocab);
        // "bc" scores higher than "ab", so it merges first; "abc" comes last
        // and can be made two ways.
        assert_eq!(merges[0], json!(["b", "c"]));
        assert_eq!(merges[1], json!(["a", "b"]));
        assert_eq!(merges.len(), 4);
    }
}
