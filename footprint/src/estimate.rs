//! How much memory a model needs before it is loaded, so that a load that
//! cannot fit is refused instead of crashing the device (the neuron) and a
//! model goes where it fits (placement, when it can see the files).
//!
//! Need = the profile's `vram_mb` when set; otherwise the weight files plus
//! the KV cache of one full context window (keys and values in f32 for
//! every layer and KV head) for the running batch, plus the prefix cache's
//! budget (`prefix_cache_mb`, by default one more window: what the engine
//! keeps, see the engine's `prefix_cache.rs`). Concurrent sequences share
//! the window: the engine holds the running batch's KV to it, suspending
//! the newest sequence when growing ones would pass it (the engine's
//! `EngineConfig::kv_budget_bytes`). The neuron and placement both call
//! [`estimate`], so they agree.

use std::path::Path;

use cortex_schemas::ModelProfile;

use crate::gguf_header::{self, Value};

const MIB: u64 = 1 << 20;

/// Bytes `profile` at `path` needs once loaded.
pub fn estimate(path: &Path, profile: &ModelProfile) -> u64 {
    if let Some(bytes) = profile.vram_bytes() {
        return bytes;
    }
    let files = size_on_disk(path);
    let kv = kv_cache_bytes(path, profile.context_length).unwrap_or(files / 5);
    let prefix = profile
        .prefix_cache_mb
        .map_or(kv, |mb| mb.saturating_mul(MIB));
    files.saturating_add(kv).saturating_add(prefix)
}

/// A file's size, or the sum of a directory's files.
pub fn size_on_disk(path: &Path) -> u64 {
    if path.is_file() {
        return path.metadata().map_or(0, |m| m.len());
    }
    std::fs::read_dir(path).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    })
}

/// The KV cache of one full window, from GGUF metadata or `config.json`.
fn kv_cache_bytes(path: &Path, context_cap: Option<u32>) -> Option<u64> {
    let shape = if path.is_file() {
        gguf_shape(path)?
    } else {
        config_shape(&path.join("config.json"))?
    };
    let window = context_cap.map_or(shape.context, |cap| shape.context.min(u64::from(cap)));
    // Metadata comes from the file: saturate rather than overflow on nonsense.
    Some(
        [shape.layers, shape.kv_heads, shape.head_dim, window]
            .iter()
            .fold(8u64, |bytes, &n| bytes.saturating_mul(n)),
    )
}

struct Shape {
    layers: u64,
    kv_heads: u64,
    head_dim: u64,
    context: u64,
}

fn gguf_shape(path: &Path) -> Option<Shape> {
    let table = gguf_header::read(path).ok()?;
    let Some(Value::Text(arch)) = table.get("general.architecture") else {
        return None;
    };
    let get = |key: &str| match table.get(&format!("{arch}.{key}"))? {
        Value::Uint(n) => Some(*n),
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    };
    let heads = get("attention.head_count")?;
    let head_dim = get("attention.key_length").unwrap_or(get("embedding_length")? / heads.max(1));
    Some(Shape {
        layers: get("block_count")?,
        kv_heads: get("attention.head_count_kv").unwrap_or(heads),
        head_dim,
        context: get("context_length").unwrap_or(4096),
    })
}

fn config_shape(path: &Path) -> Option<Shape> {
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let get = |key: &str| config.get(key).and_then(serde_json::Value::as_u64);
    let heads = get("num_attention_heads")?;
    // Encoders (BERT) keep no KV cache.
    if config.get("model_type").and_then(|v| v.as_str()) == Some("bert") {
        return Some(Shape {
            layers: 0,
            kv_heads: 0,
            head_dim: 0,
            context: 0,
        });
    }
    Some(Shape {
        layers: get("num_hidden_layers")?,
        kv_heads: get("num_key_value_heads").unwrap_or(heads),
        head_dim: get("head_dim").unwrap_or(get("hidden_size")? / heads.max(1)),
        context: get("max_position_embeddings").unwrap_or(4096),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: serde_json::Value) -> ModelProfile {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn vram_mb_wins_and_configs_give_a_kv_cache() {
        let dir = tempfile::tempdir().unwrap();
        let p = profile(serde_json::json!({"id": "m", "source": "x", "vram_mb": 100}));
        assert_eq!(estimate(dir.path(), &p), 100 * MIB);
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"model_type":"llama","num_attention_heads":8,"num_key_value_heads":2,
                "hidden_size":512,"num_hidden_layers":4,"max_position_embeddings":1024}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("model.safetensors"), vec![0u8; 1000]).unwrap();
        let p = profile(serde_json::json!({"id": "m", "source": "x"}));
        let files = size_on_disk(dir.path());
        let kv = 2 * 4 * 2 * 64 * 4 * 1024;
        // The running window, and as much again for the prefix cache.
        assert_eq!(estimate(dir.path(), &p), files + 2 * kv);
        let capped = profile(serde_json::json!({"id": "m", "source": "x", "context_length": 512}));
        assert_eq!(estimate(dir.path(), &capped), files + kv);
        let sized = profile(serde_json::json!({"id": "m", "source": "x", "prefix_cache_mb": 3}));
        assert_eq!(estimate(dir.path(), &sized), files + kv + 3 * MIB);
    }
}
