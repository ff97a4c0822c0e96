#!/usr/bin/env bash
# The whole mesh (`cortex up`) beside llama.cpp's llama-server on the same
# GGUF, both driven by `cortex bench` in one run, at 1, 4 and 8 clients;
# `cortex bench --compare` prints the ratios.
#
#   LLAMA_SERVER=/path/to/llama-server make bench-mesh
#
# Build llama-server as the README's Speed section says (AVX-512 on, AMX
# off). CLIENTS, DURATION, PROMPT_WORDS, MAX_TOKENS and LLAMA_PORT change
# the run; llama-server runs as `-t 2 -np 4 -c 8192`, THREADS and SLOTS
# change those.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

: "${LLAMA_SERVER:?set LLAMA_SERVER to a llama-server binary}"
clients=${CLIENTS:-1 4 8}
duration=${DURATION:-20s}
port=${LLAMA_PORT:-18080}
gguf=${CORTEX_MODELS_DIR:-$PWD/.cache/models}/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
ingress=http://127.0.0.1:31313
llama=http://127.0.0.1:$port

cargo build --release --quiet
logs=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$logs"
}
trap cleanup EXIT

# llama-server finds its shared libraries beside it.
LD_LIBRARY_PATH="$(dirname "$LLAMA_SERVER")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$LLAMA_SERVER" -m "$gguf" -t "${THREADS:-2}" -np "${SLOTS:-4}" -c 8192 \
    --host 127.0.0.1 --port "$port" >"$logs/llama-server.log" 2>&1 &
pids+=($!)
target/release/cortex up >"$logs/up.log" 2>&1 &
pids+=($!)

ready() {
    curl -sf "$ingress/v1/chat/completions" -H 'content-type: application/json' \
        -d '{"model":"smollm2","messages":[{"role":"user","content":"hi"}],"max_tokens":4}' \
        >/dev/null && curl -sf "$llama/health" >/dev/null
}
for _ in $(seq 1 180); do
    ready && break
    sleep 1
done
if ! ready; then
    echo "not ready after 180 s; the logs:" >&2
    tail -20 "$logs/up.log" "$logs/llama-server.log" >&2
    exit 1
fi

for c in $clients; do
    echo "=== $c clients"
    target/release/cortex bench --url "$ingress" --concurrency "$c" --duration "$duration" \
        --prompt-words "${PROMPT_WORDS:-32}" --max-tokens "${MAX_TOKENS:-64}" --compare "$llama"
done
