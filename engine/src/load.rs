//! Loading a model from disk: a GGUF file (or a directory holding one), a
//! Hugging Face safetensors directory for a decoder, or a BERT-family
//! sentence-embedding directory. The architecture decides the code path;
//! one we do not run fails here with its name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device};
use serde_json::Value as Json;

use crate::chat_model::ChatModel;
use crate::device::DeviceSpec;
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::models::bert::BertEmbedder;
use crate::models::cpu::CpuLlama;
use crate::models::llama::{Llama, LlamaConfig};
use crate::models::weights::{GgufWeights, SafetensorsWeights, WeightSource};
use crate::models::wrapped::WrappedLm;
use crate::models::CausalLm;
use crate::progress::LoadProgress;
use crate::tokenizer::Tokenizer;

/// How to load.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub device: DeviceSpec,
    /// Replaces the model's own chat template.
    pub chat_template: Option<String>,
    /// Caps the context window below the model's own.
    pub context_length: Option<usize>,
    /// Runs Llama-family decoders as candle tensor ops even on the CPU:
    /// slower, and the reference the CPU decoder is tested against.
    pub tensor_decoder: bool,
    /// Skips the CPU decoder's precision pass on prompts: prompt processing
    /// about twice as fast, logits as llama.cpp computes them (8-bit
    /// activations). See `models::cpu`.
    pub fast_prompt: bool,
    pub progress: LoadProgress,
}

/// A model ready to serve.
#[derive(Debug, Clone)]
pub enum LoadedModel {
    Chat(Arc<ChatModel>),
    Embedding(Arc<BertEmbedder>),
}

/// GGUF architectures our own decoder runs.
const OWN_GGUF: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];
/// GGUF architectures run by candle's implementations.
const WRAPPED_GGUF: &[&str] = &["phi3", "gemma3"];

/// Loads whatever `path` holds.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<LoadedModel> {
    let device = opts.device.open()?;
    if path.is_file() {
        return load_gguf(path, &device, opts).map(|m| LoadedModel::Chat(Arc::new(m)));
    }
    if !path.is_dir() {
        return Err(EngineError::Missing(path.display().to_string()));
    }
    let config_path = path.join("config.json");
    if !config_path.exists() {
        let gguf = single_gguf(path)?;
        return load_gguf(&gguf, &device, opts).map(|m| LoadedModel::Chat(Arc::new(m)));
    }
    let config = read_json(&config_path)?;
    let model_type = config["model_type"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match model_type.as_str() {
        "bert" => Ok(LoadedModel::Embedding(Arc::new(BertEmbedder::load(
            path,
            &device,
            &opts.progress,
        )?))),
        "llama" | "mistral" | "qwen2" | "qwen3" => {
            load_safetensors(path, &config, &model_type, &device, opts)
                .map(|m| LoadedModel::Chat(Arc::new(m)))
        }
        other => Err(EngineError::Unsupported(format!(
            "{}: model_type {other:?} (supported: llama, mistral, qwen2, qwen3 decoders; bert encoders)",
            config_path.display()
        ))),
    }
}

fn single_gguf(dir: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir).map_err(|e| EngineError::io(dir, e))?;
    let ggufs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(EngineError::Missing(format!(
            "{}: no config.json and no .gguf file",
            dir.display()
        ))),
        _ => Err(EngineError::InvalidModel(format!(
            "{}: several .gguf files; name one",
            dir.display()
        ))),
    }
}

fn read_json(path: &Path) -> Result<Json> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| EngineError::InvalidModel(format!("{}: {e}", path.display())))
}

fn cap(window: usize, opts: &LoadOptions) -> usize {
    opts.context_length.map_or(window, |c| c.min(window)).max(1)
}

/// A GGUF chat model.
pub fn load_gguf(path: &Path, device: &Device, opts: &LoadOptions) -> Result<ChatModel> {
    let mut file = GgufFile::open(path, &opts.progress)?;
    let arch = file.architecture()?;
    let weight_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let beside = path.parent().map(|d| d.join("tokenizer.json"));
    let tokenizer = match beside.filter(|p| p.exists()) {
        Some(json) => {
            let mut t = Tokenizer::from_file(&json)?;
            let from_gguf = Tokenizer::from_gguf(&file).ok();
            if let Some(g) = from_gguf {
                t.bos = g.bos;
                t.eos = g.eos;
                t.add_bos = g.add_bos;
            }
            t
        }
        None => Tokenizer::from_gguf(&file)?,
    };
    let template = opts
        .chat_template
        .clone()
        .or_else(|| file.string("tokenizer.chat_template").ok());
    let lm: Arc<dyn CausalLm> = if OWN_GGUF.contains(&arch.as_str()) {
        let cfg = gguf_llama_config(&file, &arch, opts)?;
        let mut source = GgufWeights {
            file: &mut file,
            device: device.clone(),
        };
        llama(cfg, &mut source, device, opts)?
    } else if WRAPPED_GGUF.contains(&arch.as_str()) {
        Arc::new(WrappedLm::load(&arch, file, device)?)
    } else {
        return Err(EngineError::Unsupported(format!(
            "{}: GGUF architecture {arch:?} (supported: {})",
            path.display(),
            [OWN_GGUF, WRAPPED_GGUF].concat().join(", ")
        )));
    };
    ChatModel::new(lm, tokenizer, template.as_deref(), &[], weight_bytes, arch)
}

/// Our CPU decoder on the CPU, candle tensor ops elsewhere (or when asked).
fn llama(
    cfg: LlamaConfig,
    source: &mut dyn WeightSource,
    device: &Device,
    opts: &LoadOptions,
) -> Result<Arc<dyn CausalLm>> {
    if device.is_cpu() && !opts.tensor_decoder {
        Ok(Arc::new(CpuLlama::load(cfg, source, !opts.fast_prompt)?))
    } else {
        Ok(Arc::new(Llama::load(cfg, source)?))
    }
}

fn gguf_llama_config(file: &GgufFile, arch: &str, opts: &LoadOptions) -> Result<LlamaConfig> {
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = file.u32(&key("embedding_length"))? as usize;
    let heads = file.u32(&key("attention.head_count"))? as usize;
    let head_dim = file
        .u32(&key("attention.key_length"))
        .map(|v| v as usize)
        .unwrap_or(hidden / heads.max(1));
    if let Ok(experts) = file.u32(&key("expert_count")) {
        if experts > 1 {
            return Err(EngineError::Unsupported(format!(
                "{arch} mixture-of-experts GGUF ({experts} experts)"
            )));
        }
    }
    if file.has_tensor("rope_freqs.weight") {
        return Err(EngineError::Unsupported(
            "GGUF with rope_freqs (Llama 3.1 rope scaling) is not supported yet".into(),
        ));
    }
    Ok(LlamaConfig {
        hidden,
        layers: file.u32(&key("block_count"))? as usize,
        heads,
        kv_heads: file
            .u32(&key("attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(heads),
        head_dim,
        rope_theta: file.f32(&key("rope.freq_base")).unwrap_or(10_000.0),
        rms_eps: f64::from(
            file.f32(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
        ),
        context_length: cap(
            file.u32(&key("context_length")).unwrap_or(4096) as usize,
            opts,
        ),
        rope_interleaved: matches!(arch, "llama" | "mistral"),
        qk_norm: arch == "qwen3",
    })
}

fn load_safetensors(
    dir: &Path,
    config: &Json,
    model_type: &str,
    device: &Device,
    opts: &LoadOptions,
) -> Result<ChatModel> {
    let get = |k: &str| config[k].as_u64().map(|v| v as usize);
    let need = |k: &str| {
        get(k).ok_or_else(|| {
            EngineError::InvalidModel(format!("{}/config.json: {k} is missing", dir.display()))
        })
    };
    if config.get("rope_scaling").is_some_and(|v| !v.is_null()) {
        return Err(EngineError::Unsupported(format!(
            "{}/config.json: rope_scaling is not supported yet",
            dir.display()
        )));
    }
    let hidden = need("hidden_size")?;
    let heads = need("num_attention_heads")?;
    let cfg = LlamaConfig {
        hidden,
        layers: need("num_hidden_layers")?,
        heads,
        kv_heads: get("num_key_value_heads").unwrap_or(heads),
        head_dim: get("head_dim").unwrap_or(hidden / heads.max(1)),
        rope_theta: config["rope_theta"].as_f64().unwrap_or(10_000.0) as f32,
        rms_eps: config["rms_norm_eps"].as_f64().unwrap_or(1e-6),
        context_length: cap(get("max_position_embeddings").unwrap_or(4096), opts),
        rope_interleaved: false,
        qk_norm: model_type == "qwen3",
    };
    let files = safetensors_files(dir)?;
    let mut tensors = std::collections::HashMap::new();
    let mut weight_bytes = 0;
    for file in &files {
        let size = std::fs::metadata(file)
            .map_err(|e| EngineError::io(file, e))?
            .len();
        opts.progress.add_total(size);
    }
    for file in &files {
        let loaded = candle_core::safetensors::load(file, &Device::Cpu)?;
        let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        weight_bytes += size;
        opts.progress.add_read(size);
        tensors.extend(loaded);
    }
    let dtype = if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    };
    let mut source = SafetensorsWeights {
        tensors,
        device: device.clone(),
        dtype,
    };
    let lm = llama(cfg, &mut source, device, opts)?;

    let mut tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let tok_config = read_json(&dir.join("tokenizer_config.json")).unwrap_or(Json::Null);
    let token_text = |v: &Json| match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    };
    let bos = token_text(&tok_config["bos_token"]);
    let eos = token_text(&tok_config["eos_token"]);
    let add_bos = tok_config["add_bos_token"].as_bool().unwrap_or(false);
    tokenizer.set_specials(bos.as_deref(), eos.as_deref(), add_bos);
    let template = opts
        .chat_template
        .clone()
        .or_else(|| match &tok_config["chat_template"] {
            Json::String(s) => Some(s.clone()),
            Json::Array(list) => list
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .map(String::from),
            _ => None,
        });
    let generation = read_json(&dir.join("generation_config.json")).unwrap_or(Json::Null);
    let extra_eos: Vec<u32> = match &generation["eos_token_id"] {
        Json::Number(n) => n.as_u64().map(|v| v as u32).into_iter().collect(),
        Json::Array(list) => list
            .iter()
            .filter_map(|v| v.as_u64().map(|v| v as u32))
            .collect(),
        _ => Vec::new(),
    };
    ChatModel::new(
        lm,
        tokenizer,
        template.as_deref(),
        &extra_eos,
        weight_bytes,
        model_type.to_string(),
    )
}

/// `model.safetensors`, or the shards an index names, or every
/// `model*.safetensors`.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let doc = read_json(&index)?;
        let mut files: Vec<PathBuf> = doc["weight_map"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str())
                    .map(|f| dir.join(f))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.dedup();
        if let Some(missing) = files.iter().find(|f| !f.exists()) {
            return Err(EngineError::Missing(missing.display().to_string()));
        }
        return Ok(files);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| EngineError::io(dir, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with("model") && name.ends_with(".safetensors")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(EngineError::Missing(format!(
            "{}/model.safetensors",
            dir.display()
        )));
    }
    Ok(files)
}
