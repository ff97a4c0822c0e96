//! Tiny random-weight Llama models written by the test, as Hugging Face
//! safetensors and as GGUF from the same weights: both load, generate, and
//! agree on the next token.

mod tiny;

use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use cortex_engine::{load, ChatEngine, EngineConfig, LoadOptions};
use cortex_schemas::frame::FinishReason;
use tiny::*;
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
    // Exact weights: f32 decoders agree with each other to rounding.
    for path in [&hf_dir, &gguf] {
        let reference = chat_model_with(
            path,
            LoadOptions {
                tensor_decoder: true,
                ..LoadOptions::default()
            },
        );
        let cpu = chat_model(path);
        for (i, (p, q)) in steps(&cpu, &prompt)
            .iter()
            .zip(steps(&reference, &prompt))
            .enumerate()
        {
            let diff = max_diff(p, &q);
            assert!(
                diff < 1e-3,
                "{}: step {i}: decoders differ by {diff}",
                path.display()
            );
        }
    }
    // Quantized weights: both decoders round activations to 8 bits, each
    // its own way (the CPU decoder on our tiles, the tensor decoder on
    // candle's kernels). Against the same quantized weights applied exactly
    // (dequantized into an f32 file), the CPU decoder is no further off.
    for (dtype, path) in [(GgmlDType::Q8_0, &q80), (GgmlDType::Q4_1, &q41)] {
        let exact_path = dir.path().join(format!("tiny-{dtype:?}-dequantized.gguf"));
        write_gguf(&exact_path, &dequantized(&weights, dtype), GgmlDType::F32);
        let exact = steps(&chat_model(&exact_path), &prompt);
        let tensor = steps(
            &chat_model_with(
                path,
                LoadOptions {
                    tensor_decoder: true,
                    ..LoadOptions::default()
                },
            ),
            &prompt,
        );
        let fast = steps(
            &chat_model_with(
                path,
                LoadOptions {
                    fast_prompt: true,
                    ..LoadOptions::default()
                },
            ),
            &prompt,
        );
        for i in 0..exact.len() {
            let scale = exact[i].iter().fold(0f32, |m, v| m.max(v.abs()));
            let (e_cpu, e_tensor) = (
                max_diff(&fast[i], &exact[i]),
                max_diff(&tensor[i], &exact[i]),
            );
            assert!(
                e_cpu <= 1.5 * e_tensor + 0.01 * scale,
                "{dtype:?} step {i}: CPU decoder off by {e_cpu}, tensor decoder by {e_tensor}"
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

#[test]
fn system_turns_mid_conversation_are_merged_for_templates_that_refuse_them() {
    use cortex_schemas::chat::{ChatMessage, Role};
    use cortex_schemas::infer::GenerateInput;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &weights(tokens().len(), false), GgmlDType::F32);
    // Like Mistral's and Llama 2's: a system turn is allowed only first.
    let strict = "{% for m in messages %}{% if m.role == 'system' and not loop.first %}{{ raise_exception('system only first') }}{% endif %}[{{ m.role }}]{{ m.content }}{% endfor %}";
    let opts = |template: &str| LoadOptions {
        chat_template: Some(template.into()),
        ..LoadOptions::default()
    };
    let mut req = request(4);
    req.input = GenerateInput::Chat {
        messages: vec![
            ChatMessage::text(Role::System, "be brief"),
            ChatMessage::text(Role::User, "hi"),
            ChatMessage::text(Role::System, "reminder"),
            ChatMessage::text(Role::User, "again"),
        ],
    };
    let (text, _) = chat_model_with(&path, opts(strict)).prompt(&req).unwrap();
    assert_eq!(text, "[system]be brief\n\nreminder[user]hi[user]again");
    // A template that takes them keeps them where they are.
    let open = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}";
    let (text, _) = chat_model_with(&path, opts(open)).prompt(&req).unwrap();
    assert_eq!(text, "[system]be brief[user]hi[system]reminder[user]again");
}

#[test]
fn a_reasoning_template_sends_thinking_apart_and_can_turn_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    write_gguf(&path, &weights(tokens().len(), false), GgmlDType::F32);
    // DeepSeek-R1-distill style: the prompt opens the think block; with
    // Qwen3's `enable_thinking` false it is written closed and empty.
    let template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% else %}<think>\n{% endif %}{% endif %}";
    let model = chat_model_with(
        &path,
        LoadOptions {
            chat_template: Some(template.into()),
            ..LoadOptions::default()
        },
    );
    assert!(model.reasons());
    let engine = ChatEngine::start(model.clone(), EngineConfig::default());
    let mut req = request(12);
    // Sampled (seeded): greedy random weights may repeat one blank token.
    req.sampling.temperature = Some(1.0);
    req.sampling.seed = Some(7);
    let thinking = engine.submit(&req).unwrap().collect_blocking().unwrap();
    assert_eq!(thinking.done.usage.completion_tokens, 12);
    // Random weights never close the block: all of it is reasoning.
    assert!(!thinking.reasoning.is_empty(), "{thinking:?}");
    assert_eq!(thinking.text, "");

    req.thinking = Some(false);
    assert!(model.prompt(&req).unwrap().0.ends_with("</think>\n\n"));
    let answer = engine.submit(&req).unwrap().collect_blocking().unwrap();
    assert_eq!(answer.reasoning, "");
    assert!(!answer.text.is_empty(), "{answer:?}");

    // A model without a reasoning template keeps all output as text.
    let plain = chat_model(&path);
    assert!(!plain.reasons());
}

/// Logits after the prompt and after three more chunks.
fn steps(model: &cortex_engine::chat_model::ChatModel, prompt: &[u32]) -> Vec<Vec<f32>> {
    let mut seq = model.lm.start();
    [prompt, &[5], &[9], &[3, 4]]
        .iter()
        .map(|chunk| seq.forward(chunk).unwrap())
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The weights `write_gguf` quantizes to `dtype`, as that quantization
/// leaves them.
fn dequantized(
    weights: &std::collections::HashMap<String, Tensor>,
    dtype: GgmlDType,
) -> std::collections::HashMap<String, Tensor> {
    weights
        .iter()
        .map(|(name, w)| {
            let linear = name.ends_with("_proj.weight") || name == "lm_head.weight";
            let w = if linear {
                QTensor::quantize(w, dtype)
                    .unwrap()
                    .dequantize(&Device::Cpu)
                    .unwrap()
            } else {
                w.clone()
            };
            (name.clone(), w)
        })
        .collect()
}
