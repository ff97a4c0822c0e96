#!/usr/bin/env python3
"""Writes a random-weight Llama model in Hugging Face layout (config.json,
model-*.safetensors in bf16, tokenizer.json, tokenizer_config.json), so a
GPU machine with no network can serve a model of a realistic size. Needs
only numpy. Shapes: `llama3-8b` (Llama-3-8B: 16.06 GB in bf16) or `tiny`
(for a check on any machine).

    python3 neuron/gpu/make_model.py OUT_DIR [llama3-8b|tiny]
"""
import json
import os
import struct
import sys

import numpy as np

SHAPES = {
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                      max_position_embeddings=8192, rope_theta=500000.0),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                 max_position_embeddings=2048, rope_theta=10000.0),
}

# Largest safetensors file; Hugging Face shards at 5 GB.
SHARD_BYTES = 5 * 1024**3


def bf16(shape, rng, scale):
    """Random normal values as bfloat16 bytes (the top half of float32)."""
    values = rng.standard_normal(int(np.prod(shape)), dtype=np.float32) * scale
    return (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()


def ones_bf16(n):
    return (np.ones(n, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()


def tensors(cfg):
    """(name, shape, kind) of every weight, in file order."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = h // heads
    yield "model.embed_tokens.weight", (v, h), "w"
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        yield p + "input_layernorm.weight", (h,), "norm"
        yield p + "self_attn.q_proj.weight", (heads * d, h), "w"
        yield p + "self_attn.k_proj.weight", (kv * d, h), "w"
        yield p + "self_attn.v_proj.weight", (kv * d, h), "w"
        yield p + "self_attn.o_proj.weight", (h, heads * d), "w"
        yield p + "post_attention_layernorm.weight", (h,), "norm"
        yield p + "mlp.gate_proj.weight", (i, h), "w"
        yield p + "mlp.up_proj.weight", (i, h), "w"
        yield p + "mlp.down_proj.weight", (h, i), "w"
    yield "model.norm.weight", (h,), "norm"
    yield "lm_head.weight", (v, h), "w"


def write_shard(path, entries):
    """entries: [(name, shape, bytes)] → one safetensors file."""
    header, offset = {}, 0
    for name, shape, data in entries:
        header[name] = {"dtype": "BF16", "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, _, data in entries:
            f.write(data)


def main():
    out = sys.argv[1]
    shape = sys.argv[2] if len(sys.argv) > 2 else "llama3-8b"
    cfg = dict(SHAPES[shape])
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7)
    shards, current, size = [], [], 0
    for name, dims, kind in tensors(cfg):
        data = ones_bf16(dims[0]) if kind == "norm" else bf16(dims, rng, 0.02)
        if current and size + len(data) > SHARD_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append((name, dims, data))
        size += len(data)
    shards.append(current)
    index, total = {}, 0
    for n, entries in enumerate(shards, 1):
        file = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        write_shard(os.path.join(out, file), entries)
        for name, _, data in entries:
            index[name] = file
            total += len(data)
        print(f"wrote {file}", file=sys.stderr)
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": index}, f)
    config = dict(cfg, architectures=["LlamaForCausalLM"], model_type="llama",
                  rms_norm_eps=1e-5, torch_dtype="bfloat16", tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2, hidden_act="silu")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    # A word-level tokenizer with one token per id: random weights make
    # random text, and every id decodes to something.
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(3, cfg["vocab_size"]):
        vocab[f"w{i}"] = i
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True} for t, i in [("<unk>", 0), ("<s>", 1), ("</s>", 2)]
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tokenizer, f)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({
            "bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True,
            "chat_template": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:",
        }, f)
    print(f"{shape}: {total / 1e9:.2f} GB of bf16 weights in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
