//! Tiny random-weight Llama models written by the test, as Hugging Face
//! safetensors and as GGUF from the same weights: both load, generate, and
//! agree on the next token.

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

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const LAYERS: usize = 2;
const FFN: usize = 128;
const THETA: f32 = 10_000.0;

/// Byte-level tokens: two specials, then letters, space (Ġ), newline (Ċ)
/// and some punctuation.
fn tokens() -> Vec<String> {
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
fn uniform(count: usize, scale: f32, seed: &mut u64) -> Vec<f32> {
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
fn weights(vocab: usize, qk_norm: bool) -> HashMap<String, Tensor> {
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

fn write_hf_dir(dir: &Path, weights: &HashMap<String, Tensor>, model_type: &str) {
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
fn permute(w: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    w.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

fn write_gguf(path: &Path, weights: &HashMap<String, Tensor>, dtype: GgmlDType) {
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
fn tokenizer_metadata() -> Vec<(&'static str, Value)> {
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

fn write_gguf_file(path: &Path, metadata: &[(&str, Value)], tensors: &[(String, QTensor)]) {
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata, &tensors).unwrap();
}

fn chat_model(path: &Path) -> std::sync::Arc<ChatModel> {
    chat_model_with(path, LoadOptions::default())
}

fn chat_model_with(path: &Path, opts: LoadOptions) -> std::sync::Arc<ChatModel> {
    match load(path, &opts).unwrap() {
        LoadedModel::Chat(m) => m,
        LoadedModel::Embedding(_) => panic!("loaded as an embedding model"),
    }
}

fn logits(model: &ChatModel, tokens: &[u32]) -> Vec<f32> {
    let mut seq = model.lm.start();
    // Prompt in two pieces, so the KV cache path is exercised as well.
    seq.forward(&tokens[..tokens.len() - 2]).unwrap();
    seq.forward(&tokens[tokens.len() - 2..])
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

fn request(max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        request_id: "tiny".into(),
        model: "tiny".into(),
        input: GenerateInput::Chat {
            messages: vec![ChatMessage::text(Role::User, "hello there")],
        },
        tools: Vec::new(),
        tool_choice: None,
        sampling: SamplingParams {
            temperature: Some(0.0),
            ..Default::default()
        },
        max_tokens: Some(max_tokens),
        stop: Vec::new(),
        response_format: None,
        logprobs: None,
        deadline_ms: None,
    }
}

#[test]
fn safetensors_and_gguf_from_the_same_weights_agree() {
    let dir = tempfile::tempdir().unwrap();
    let weights = weights(tokens().len(), false);
    let hf_dir = dir.path().join("hf");
    std::fs::create_dir(&hf_dir).unwrap();
    write_hf_dir(&hf_dir, &weights, "llama");
    let gguf = dir.path().join("tiny-f32.gguf");
    write_gguf(&gguf, &weights, GgmlDType::F32);

    let st = chat_model(&hf_dir);
    let gg = chat_model(&gguf);
    let prompt = st.prompt(&request(4)).unwrap().1;
    assert_eq!(
        prompt,
        gg.prompt(&request(4)).unwrap().1,
        "same tokenizer, same prompt ids"
    );
    let (a, b) = (logits(&st, &prompt), logits(&gg, &prompt));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(diff < 1e-3, "logits differ by {diff}");
    assert_eq!(argmax(&a), argmax(&b), "greedy next token");

    // The CPU decoder (used above) against candle tensor ops, for the
    // prompt and for single-token steps.
    let q41 = dir.path().join("tiny-q41.gguf");
    write_gguf(&q41, &weights, GgmlDType::Q4_1);
    let q80 = dir.path().join("tiny-q80.gguf");
    write_gguf(&q80, &weights, GgmlDType::Q8_0);
    for path in [&hf_dir, &gguf, &q80, &q41] {
        let reference = chat_model_with(
            path,
            LoadOptions {
                tensor_decoder: true,
                ..LoadOptions::default()
            },
        );
        // Both with 8-bit activations on the prompt (see models::cpu).
        let fast = chat_model_with(
            path,
            LoadOptions {
                fast_prompt: true,
                ..LoadOptions::default()
            },
        );
        let (mut x, mut y) = (fast.lm.start(), reference.lm.start());
        for (i, chunk) in [&prompt[..], &[5], &[9], &[3, 4]].iter().enumerate() {
            let p = x.forward(chunk).unwrap().to_vec1::<f32>().unwrap();
            let q = y.forward(chunk).unwrap().to_vec1::<f32>().unwrap();
            let diff = p
                .iter()
                .zip(&q)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            // Exact weights: the same maths in another order. Quantized
            // weights: a different summation order can flip an activation's
            // 8-bit rounding, which a random net amplifies a little.
            let scale = q.iter().fold(0f32, |m, v| m.max(v.abs()));
            let quantized = path == &q41 || path == &q80;
            let tolerance = if quantized { 0.05 * scale } else { 1e-3 };
            assert!(
                diff < tolerance,
                "{}: step {i}: CPU and tensor decoders differ by {diff}",
                path.display()
            );
        }
    }

    // Both generate through the engine, identically.
    let run = |m| {
        ChatEngine::start(m, EngineConfig::default())
            .submit(&request(6))
            .unwrap()
            .collect_blocking()
            .unwrap()
    };
    let (x, y) = (run(st), run(gg));
    assert_eq!(x.text, y.text);
    assert!(x.done.usage.completion_tokens <= 6);
    if x.done.usage.completion_tokens == 6 {
        assert_eq!(x.done.finish_reason, FinishReason::Length);
    }
}

#[test]
fn quantized_gguf_and_qwen3_variant_load_and_generate() {
    let dir = tempfile::tempdir().unwrap();
    let shared = weights(tokens().len(), false);
    let exact = dir.path().join("tiny-f32.gguf");
    write_gguf(&exact, &shared, GgmlDType::F32);
    let mut errors = Vec::new();
    for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1] {
        let path = dir.path().join(format!("tiny-{dtype:?}.gguf"));
        write_gguf(&path, &shared, dtype);
        let model = chat_model(&path);
        let prompt = model.prompt(&request(4)).unwrap().1;
        let (q, e) = (
            logits(&model, &prompt),
            logits(&chat_model(&exact), &prompt),
        );
        let diff = q
            .iter()
            .zip(&e)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        let scale = e.iter().map(|x| x.abs()).fold(0.0, f32::max);
        errors.push((dtype, diff / scale));
        let out = ChatEngine::start(model, EngineConfig::default())
            .submit(&request(5))
            .unwrap()
            .collect_blocking()
            .unwrap();
        assert!(out.done.usage.completion_tokens >= 1);
    }
    // Relative to the largest logit (a random two-layer net amplifies
    // weight noise): 8-bit weights move the logits little; Q4_1 (our split
    // path) is no worse than Q4_0 (candle's own kernel).
    println!("relative logit errors: {errors:?}");
    assert!(errors[0].1 < 0.1, "{errors:?}");
    assert!(errors[2].1 <= errors[1].1, "{errors:?}");

    let qwen3 = dir.path().join("qwen3");
    std::fs::create_dir(&qwen3).unwrap();
    write_hf_dir(&qwen3, &weights(tokens().len(), true), "qwen3");
    let model = chat_model(&qwen3);
    assert_eq!(model.architecture, "qwen3");
    let out = ChatEngine::start(model, EngineConfig::default())
        .submit(&request(3))
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert!(out.done.usage.completion_tokens >= 1);
}

#[test]
fn unsupported_architectures_and_dtypes_fail_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(bad.join("config.json"), r#"{"model_type": "mamba"}"#).unwrap();
    let err = load(&bad, &LoadOptions::default()).unwrap_err().to_string();
    assert!(err.contains("mamba"), "{err}");

    let ints = dir.path().join("ints");
    std::fs::create_dir(&ints).unwrap();
    let mut ints_weights = weights(tokens().len(), false);
    let embed = ints_weights["model.embed_tokens.weight"]
        .to_dtype(DType::U8)
        .unwrap();
    ints_weights.insert("model.embed_tokens.weight".into(), embed);
    write_hf_dir(&ints, &ints_weights, "llama");
    let err = load(&ints, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("U8") && err.contains("embed_tokens"), "{err}");

    let missing = load(&dir.path().join("nothing.gguf"), &LoadOptions::default()).unwrap_err();
    assert!(missing.to_string().contains("nothing.gguf"), "{missing}");
}

/// A tiny GGUF of candle's phi3 (fused qkv and gate/up) or gemma3 (q/k
/// norms, post-norms, sliding window) layout.
fn write_wrapped_gguf(path: &Path, arch: &str) {
    let dev = Device::Cpu;
    let vocab = tokens().len();
    let seed = std::cell::Cell::new(7u64);
    let draw = |r: usize, c: usize| {
        let mut s = seed.get();
        let v = uniform(r * c, 0.5, &mut s);
        seed.set(s);
        QTensor::quantize(&Tensor::from_vec(v, (r, c), &dev).unwrap(), GgmlDType::F32).unwrap()
    };
    let ones = |n: usize| {
        QTensor::quantize(&Tensor::ones(n, DType::F32, &dev).unwrap(), GgmlDType::F32).unwrap()
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), draw(vocab, HIDDEN)),
        ("output_norm.weight".into(), ones(HIDDEN)),
        ("output.weight".into(), draw(vocab, HIDDEN)),
    ];
    let head_dim = HIDDEN / HEADS;
    for i in 0..LAYERS {
        let name = |n: &str| format!("blk.{i}.{n}.weight");
        tensors.push((name("attn_norm"), ones(HIDDEN)));
        tensors.push((name("ffn_norm"), ones(HIDDEN)));
        tensors.push((name("attn_output"), draw(HIDDEN, HIDDEN)));
        tensors.push((name("ffn_down"), draw(HIDDEN, FFN)));
        if arch == "phi3" {
            tensors.push((name("attn_qkv"), draw(3 * HIDDEN, HIDDEN)));
            tensors.push((name("ffn_up"), draw(2 * FFN, HIDDEN)));
        } else {
            tensors.push((name("attn_q"), draw(HIDDEN, HIDDEN)));
            tensors.push((name("attn_k"), draw(KV_HEADS * head_dim, HIDDEN)));
            tensors.push((name("attn_v"), draw(KV_HEADS * head_dim, HIDDEN)));
            tensors.push((name("attn_q_norm"), ones(head_dim)));
            tensors.push((name("attn_k_norm"), ones(head_dim)));
            tensors.push((name("post_attention_norm"), ones(HIDDEN)));
            tensors.push((name("post_ffw_norm"), ones(HIDDEN)));
            tensors.push((name("ffn_gate"), draw(FFN, HIDDEN)));
            tensors.push((name("ffn_up"), draw(FFN, HIDDEN)));
        }
    }
    let kv_heads = if arch == "phi3" { HEADS } else { KV_HEADS };
    let key = |k: &str| format!("{arch}.{k}");
    let keys: Vec<String> = [
        "context_length",
        "embedding_length",
        "block_count",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
        "rope.dimension_count",
        "attention.layer_norm_rms_epsilon",
        "attention.key_length",
        "attention.value_length",
        "attention.sliding_window",
    ]
    .iter()
    .map(|k| key(k))
    .collect();
    let mut metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String(arch.into())),
        (&keys[0], Value::U32(64)),
        (&keys[1], Value::U32(HIDDEN as u32)),
        (&keys[2], Value::U32(LAYERS as u32)),
        (&keys[3], Value::U32(FFN as u32)),
        (&keys[4], Value::U32(HEADS as u32)),
        (&keys[5], Value::U32(kv_heads as u32)),
        (&keys[6], Value::U32(head_dim as u32)),
        (&keys[7], Value::F32(1e-5)),
    ];
    metadata.extend(tokenizer_metadata());
    if arch == "gemma3" {
        metadata.push((&keys[8], Value::U32(head_dim as u32)));
        metadata.push((&keys[9], Value::U32(head_dim as u32)));
        metadata.push((&keys[10], Value::U32(8)));
    }
    write_gguf_file(path, &metadata, &tensors);
}

#[test]
fn phi3_and_gemma3_run_on_candle_with_a_clone_per_sequence() {
    let dir = tempfile::tempdir().unwrap();
    for arch in ["phi3", "gemma3"] {
        let path = dir.path().join(format!("tiny-{arch}.gguf"));
        write_wrapped_gguf(&path, arch);
        let model = chat_model(&path);
        assert_eq!(model.architecture, arch);
        assert_eq!(model.context_length(), 64);
        let engine = ChatEngine::start(model, EngineConfig::default());
        let alone = engine
            .submit(&request(5))
            .unwrap()
            .collect_blocking()
            .unwrap();
        // Two at once: each has its own cache, so each says the same as alone.
        let (a, b) = (
            engine.submit(&request(5)).unwrap(),
            engine.submit(&request(5)).unwrap(),
        );
        assert_eq!(a.collect_blocking().unwrap().text, alone.text, "{arch}");
        assert_eq!(b.collect_blocking().unwrap().text, alone.text, "{arch}");
        assert!(alone.done.usage.completion_tokens >= 1, "{arch}");
    }
}
