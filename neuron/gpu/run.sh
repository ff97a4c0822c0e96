#!/usr/bin/env bash
# The GPU check of issue 8, prepared to run once on a lent GPU machine (no
# Rust, no network; PyTorch and transformers installed), from the
# repository root, with one folder carried in: target/gpu/, made here by
# `make gpu-bundle` (the CUDA build of `cortex`, stripped, and nats-server,
# both gzipped: 82 MB of binary would not fit the 64 MiB carried).
#
#   neuron/gpu/run.sh            # Llama-3-8B shapes, random bf16 weights
#   SHAPE=tiny neuron/gpu/run.sh # a quick check of the script itself (CPU works too)
#
# It prints, and writes to $OUT/summary.txt:
#  1. what the neuron's heartbeat says of the GPU (NVML, no nvidia-smi);
#  2. load time of the model on cuda:0 (kernels warmed during the load);
#  3. decode tokens/s at batch 1 beside the HBM roofline and beside
#     transformers on the same weights;
#  4. prefill tokens/s for 512- and 2,048-token prompts (both engines);
#  5. aggregate tokens/s of 4 concurrent sequences.
set -uo pipefail

OUT="${OUT:-${TMPDIR:-/tmp}/cortex-gpu}"
SHAPE="${SHAPE:-llama3-8b}"
DEVICE="${DEVICE:-cuda:0}"
MODEL_DIR="${MODEL_DIR:-$OUT/model-$SHAPE}"
BIN="${CORTEX_BIN:-$OUT/bin/cortex}"
NATS_BIN="${NATS_SERVER_BIN:-$OUT/bin/nats-server}"
DECODE_TOKENS="${DECODE_TOKENS:-256}"
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: > "$summary"
say() { echo "$*" | tee -a "$summary"; }
step() { echo "== $*" >&2; }

# The CUDA 13 libraries PyTorch's nvidia-* packages install, and the driver.
cu13="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)"
export LD_LIBRARY_PATH="${cu13:+$cu13:}${LD_LIBRARY_PATH:-}"

# Unpack the carried binaries.
mkdir -p "$OUT/bin"
for name in cortex nats-server; do
  if [ -f "target/gpu/$name.gz" ] && [ ! -x "$OUT/bin/$name" ]; then
    gunzip -c "target/gpu/$name.gz" > "$OUT/bin/$name" && chmod +x "$OUT/bin/$name"
  fi
done

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap cleanup EXIT

step "model: $SHAPE random weights in $MODEL_DIR"
if [ ! -f "$MODEL_DIR/config.json" ]; then
  start=$(date +%s.%N)
  python3 neuron/gpu/make_model.py "$MODEL_DIR" "$SHAPE" || exit 1
  say "model written in $(echo "$(date +%s.%N) - $start" | bc) s"
fi
weight_bytes=$(du -cb "$MODEL_DIR"/*.safetensors | tail -1 | cut -f1)

port=14222
"$NATS_BIN" -a 127.0.0.1 -p "$port" -js -sd "$OUT/js" > "$OUT/nats.log" 2>&1 &
pids+=($!)
url="nats://127.0.0.1:$port"
sleep 1
"$BIN" placement --nats-url "$url" --id gpu-placement > "$OUT/placement.log" 2>&1 &
pids+=($!)

step "neuron on $DEVICE"
load_start=$(date +%s.%N)
RUST_LOG=info "$BIN" neuron --nats-url "$url" --id gpu-1 --devices "$DEVICE" \
  --models "m=$MODEL_DIR" --max-concurrency 4 --metrics-listen off > "$OUT/neuron.log" 2>&1 &
pids+=($!)
"$BIN" ingress --nats-url "$url" --listen 127.0.0.1:14313 > "$OUT/ingress.log" 2>&1 &
pids+=($!)
base="http://127.0.0.1:14313"

ready=""
for _ in $(seq 1 600); do
  if curl -sf "$base/v1/models" | grep -q '"loaded":true'; then ready=1; break; fi
  sleep 1
done
load_s=$(echo "$(date +%s.%N) - $load_start" | bc)
if [ -z "$ready" ]; then
  say "model not ready after 600 s; neuron log:"; tail -30 "$OUT/neuron.log" | tee -a "$summary"; exit 1
fi
say "model ready on $DEVICE in $load_s s (read, upload, kernel warm-up)"

step "heartbeat (NVML)"
# Placement's status shows the fleet as heartbeats describe it.
for _ in $(seq 1 30); do
  "$BIN" status --nats-url "$url" --json > "$OUT/status.json" 2>/dev/null
  grep -q '"memory_total_bytes"' "$OUT/status.json" && break
  sleep 1
done
python3 - "$OUT/status.json" <<'PY' | tee -a "$summary"
import json, sys
status = json.load(open(sys.argv[1]))
for n in status.get("neurons", []):
    for d in n.get("devices", []):
        gib = lambda b: f"{b / 2**30:.1f} GiB"
        print(f"heartbeat: {n['neuron_id']} {d.get('kind')}:{d.get('index')} {d.get('name')} "
              f"total {gib(d.get('memory_total_bytes', 0))}, free {gib(d.get('memory_free_bytes', 0))}, "
              f"used {gib(d.get('memory_used_bytes', 0))}")
    for m in n.get("models", []):
        print(f"heartbeat: model {m['model_id']} {m['state']} on device {m['device']}, "
              f"{m['memory_bytes'] / 2**30:.1f} GiB")
PY
gpu_name="$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["neurons"][0]["devices"][0]["name"])' "$OUT/status.json" 2>/dev/null || echo unknown)"

bench() { # name, extra args → JSON report in $OUT/bench-<name>.json
  local name="$1"
  shift
  "$BIN" bench --url "$base" --model m --json "$@" > "$OUT/bench-$name.json" 2>"$OUT/bench-$name.err"
}
field() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, r))" "$1" "$2" 2>/dev/null || echo "?"; }

step "decode, batch 1"
bench decode1 --concurrency 1 --duration 60s --prompt-words 16 --max-tokens "$DECODE_TOKENS"
decode_tps=$(field "$OUT/bench-decode1.json" "round(1000 / inter_token_ms['p50'], 1)")
say "cortex decode, batch 1: $decode_tps tok/s (1000 / p50 inter-token gap); report $OUT/bench-decode1.json"

step "prefill 512 and 2048"
for n in 512 2048; do
  bench "prefill$n" --concurrency 1 --duration 30s --prompt-words "$n" --max-tokens 1
  say "cortex prefill of ~$n tokens: $(field "$OUT/bench-prefill$n.json" "round(ttft_ms['p50'], 1)") ms to first token (p50)"
done

step "4 concurrent sequences"
bench decode4 --concurrency 4 --duration 60s --prompt-words 16 --max-tokens "$DECODE_TOKENS"
say "cortex 4 concurrent: $(field "$OUT/bench-decode4.json" "round(tokens_per_second, 1)") tok/s aggregate"

step "roofline"
python3 - "$gpu_name" "$weight_bytes" <<'PY' | tee -a "$summary"
import sys
name, weights = sys.argv[1], int(sys.argv[2])
# HBM bandwidth by card, TB/s (vendor figures).
bandwidth = 4.8e12 if "H200" in name else 3.35e12 if "H100" in name else None
if bandwidth:
    print(f"roofline on {name}: {weights / 1e9:.2f} GB per token at {bandwidth / 1e12:.2f} TB/s "
          f"= {bandwidth / weights:.0f} tok/s")
else:
    print(f"roofline: bandwidth of {name!r} unknown")
PY

step "transformers on the same weights"
python3 - "$MODEL_DIR" "$DECODE_TOKENS" <<'PY' 2>"$OUT/transformers.err" | tee -a "$summary"
import sys, time
import torch
from transformers import AutoModelForCausalLM
path, new = sys.argv[1], int(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16).to("cuda").eval()
vocab = model.config.vocab_size
with torch.no_grad():
    ids = torch.randint(3, vocab, (1, 16), device="cuda")
    model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)  # warm-up
    torch.cuda.synchronize(); t = time.perf_counter()
    model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
    torch.cuda.synchronize(); dt = time.perf_counter() - t
    print(f"transformers decode, batch 1: {new / dt:.1f} tok/s ({new} tokens, eager, bf16)")
    for n in (512, 2048):
        ids = torch.randint(3, vocab, (1, n), device="cuda")
        model(ids); torch.cuda.synchronize(); t = time.perf_counter()
        model(ids); torch.cuda.synchronize(); dt = time.perf_counter() - t
        print(f"transformers prefill of {n} tokens: {dt * 1000:.1f} ms ({n / dt:.0f} tok/s)")
PY

echo; echo "== summary ($summary)"; cat "$summary"
