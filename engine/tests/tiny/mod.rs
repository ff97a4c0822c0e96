//! Tiny random-weight Llama models written by a test: the same weights as
//! Hugging Face safetensors and as GGUF of any type, with a byte-level
//! tokenizer and a ChatML template.

#![allow(dead_code, unused_imports)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use cortex_engine::chat_model::ChatModel;
use cortex_engine::{load, ChatEngine, EngineConfig, LoadOptions, LoadedModel};
use cortex_schemas::chat::{ChatMessage, Role};
use cortex_schemas::frame::FinishReason;
use cortex_schemas::infer::{GenerateInput, GenerateRequest};
use cortex_schemas::sampling::SamplingParams;
use serde_json::json;

pub const HIDDEN: usize = 64;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const LAYERS: usize = 2;
pub const FFN: usize = 128;
pub const THETA: f32 = 10_000.0;

/// Byte-level tokens: two specials, then letters, space (Ġ), newline (Ċ)
/// and some punctuation.
pub fn tokens() -> Vec<String> {
    let mut t = vec!["<|im_start|>".to_string(), "<|im_end|>".to_string()];
    t.extend(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
            .chars()
            .map(String::from),
    );
    t.extend(["Ġ", "Ċ", ".", ",", "?", "!", ":", "'"].map(String::from));
    t
}

/// Uniform values in (-scale, scale) from a fixed seed: the same weights on
/// every run, so the test's thresholds hold every time.
pub fn uniform(count: usize, scale: f32, seed: &mut u64) -> Vec<f32> {
    (0..count)
        .map(|_| {
            *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let unit = ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32;
            (unit * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Pseudo-random weights in Hugging Face naming, `[out, in]` layout.
pub fn weights(vocab: usize, qk_norm: bool) -> HashMap<String, Tensor> {
    let dev = Device::Cpu;
    let head_dim = HIDDEN / HEADS;
    let seed = std::cell::Cell::new(42u64);
    let draw = |n: usize, scale: f32| {
        let mut s = seed.get();
        let v = uniform(n, scale, &mut s);
        seed.set(s);
        v
    };
    let rand = |(r, c): (usize, usize)| Tensor::from_vec(draw(r * c, 0.5), (r, c), &dev).unwrap();
    let norm = |n: usize| (Tensor::from_vec(draw(n, 0.2), n, &dev).unwrap() + 1.0).unwrap();
    let mut w = HashMap::new();
    w.insert(
        "model.embed_tokens.weight".to_string(),
        rand((vocab, HIDDEN)),
    );
    w.insert("model.norm.weight".to_string(), norm(HIDDEN));
    w.insert("lm_head.weight".to_string(), rand((vocab, HIDDEN)));
    for i in 0..LAYERS {
        let p = |n: &str| format!("model.layers.{i}.{n}.weight");
        w.insert(p("input_layernorm"), norm(HIDDEN));
        w.insert(p("post_attention_layernorm"), norm(HIDDEN));
        w.insert(p("self_attn.q_proj"), rand((HEADS * head_dim, HIDDEN)));
        w.insert(p("self_attn.k_proj"), rand((KV_HEADS * head_dim, HIDDEN)));
        w.insert(p("self_attn.v_proj"), rand((KV_HEADS * head_dim, HIDDEN)));
        w.insert(p("self_attn.o_proj"), rand((HIDDEN, HEADS * head_dim)));
        w.insert(p("mlp.gate_proj"), rand((FFN, HIDDEN)));
        w.insert(p("mlp.up_proj"), rand((FFN, HIDDEN)));
        w.insert(p("mlp.down_proj"), rand((HIDDEN, FFN)));
        if qk_norm {
            w.insert(p("self_attn.q_norm"), norm(head_dim));
            w.insert(p("self_attn.k_norm"), norm(head_dim));
        }
    }
    w
}

pub fn write_hf_dir(dir: &Path, weights: &HashMap<String, Tensor>, model_type: &str) {
    candle_core::safetensors::save(weights, dir.join("model.safetensors")).unwrap();
    let config = json!({
        "model_type": model_type, "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "intermediate_size": FFN, "rms_norm_eps": 1e-6, "rope_theta": THETA,
        "max_position_embeddings": 256, "vocab_size": tokens().len(),
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let vocab: serde_json::Map<String, serde_json::Value> = tokens()
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, json!(i)))
        .collect();
    let added: Vec<_> = ["<|im_start|>", "<|im_end|>"]
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let tokenizer = json!({
        "version": "1.0", "added_tokens": added, "normalizer": null, "post_processor": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []},
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let tok_config = json!({
        "eos_token": "<|im_end|>",
        "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    });
    std::fs::write(dir.join("tokenizer_config.json"), tok_config.to_string()).unwrap();
}

/// convert_hf_to_gguf's q/k permutation: Hugging Face rotates the two
/// halves of each head, GGUF llama rotates interleaved pairs.
pub fn permute(w: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    w.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

pub fn write_gguf(path: &Path, weights: &HashMap<String, Tensor>, dtype: GgmlDType) {
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let q = |t: &Tensor, dtype| QTensor::quantize(t, dtype).unwrap();
    tensors.push((
        "token_embd.weight".into(),
        q(&weights["model.embed_tokens.weight"], GgmlDType::F32),
    ));
    tensors.push(("output.weight".into(), q(&weights["lm_head.weight"], dtype)));
    tensors.push((
        "output_norm.weight".into(),
        q(&weights["model.norm.weight"], GgmlDType::F32),
    ));
    for i in 0..LAYERS {
        let hf = |n: &str| &weights[&format!("model.layers.{i}.{n}.weight")];
        let name = |n: &str| format!("blk.{i}.{n}.weight");
        tensors.push((name("attn_norm"), q(hf("input_layernorm"), GgmlDType::F32)));
        tensors.push((
            name("ffn_norm"),
            q(hf("post_attention_layernorm"), GgmlDType::F32),
        ));
        tensors.push((
            name("attn_q"),
            q(&permute(hf("self_attn.q_proj"), HEADS), dtype),
        ));
        tensors.push((
            name("attn_k"),
            q(&permute(hf("self_attn.k_proj"), KV_HEADS), dtype),
        ));
        tensors.push((name("attn_v"), q(hf("self_attn.v_proj"), dtype)));
        tensors.push((name("attn_output"), q(hf("self_attn.o_proj"), dtype)));
        tensors.push((name("ffn_gate"), q(hf("mlp.gate_proj"), dtype)));
        tensors.push((name("ffn_up"), q(hf("mlp.up_proj"), dtype)));
        tensors.push((name("ffn_down"), q(hf("mlp.down_proj"), dtype)));
    }
    let mut metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.context_length", Value::U32(256)),
        ("llama.embedding_length", Value::U32(HIDDEN as u32)),
        ("llama.block_count", Value::U32(LAYERS as u32)),
        ("llama.feed_forward_length", Value::U32(FFN as u32)),
        ("llama.attention.head_count", Value::U32(HEADS as u32)),
        ("llama.attention.head_count_kv", Value::U32(KV_HEADS as u32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-6)),
        ("llama.rope.freq_base", Value::F32(THETA)),
    ];
    metadata.extend(tokenizer_metadata());
    write_gguf_file(path, &metadata, &tensors);
}

/// The byte-level vocabulary of [`tokens`] as GGUF metadata.
pub fn tokenizer_metadata() -> Vec<(&'static str, Value)> {
    let toks = tokens();
    let types = (0..toks.len())
        .map(|i| Value::I32(if i < 2 { 3 } else { 1 }))
        .collect();
    vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("gpt-2".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(toks.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", Value::Array(Vec::new())),
        ("tokenizer.ggml.eos_token_id", Value::U32(1)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
    ]
}

pub fn write_gguf_file(path: &Path, metadata: &[(&str, Value)], tensors: &[(String, QTensor)]) {
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata, &tensors).unwrap();
}

pub fn chat_model(path: &Path) -> std::sync::Arc<ChatModel> {
    chat_model_with(path, LoadOptions::default())
}

pub fn chat_model_with(path: &Path, opts: LoadOptions) -> std::sync::Arc<ChatModel> {
    match load(path, &opts).unwrap() {
        LoadedModel::Chat(m) => m,
        LoadedModel::Embedding(_) => panic!("loaded as an embedding model"),
    }
}

pub fn logits(model: &ChatModel, tokens: &[u32]) -> Vec<f32> {
    let mut seq = model.lm.start();
    // Prompt in two pieces, so the KV cache path is exercised as well.
    seq.forward(&tokens[..tokens.len() - 2]).unwrap();
    seq.forward(&tokens[tokens.len() - 2..]).unwrap()
}

pub fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

pub fn request(max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        sampling: SamplingParams {
            temperature: Some(0.0),
            ..Default::default()
        },
        max_tokens: Some(max_tokens),
        ..GenerateRequest::new(
            "tiny",
            "tiny",
            GenerateInput::Chat {
                messages: vec![ChatMessage::text(Role::User, "hello there")],
            },
        )
    }
}
