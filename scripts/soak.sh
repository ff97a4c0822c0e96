#!/usr/bin/env bash
# Soak benchmark (issue 9): CLIENTS concurrent streaming clients
# (`cortex bench`) through 3 ingress pods to sim neurons for DURATION, on
# this machine. Prints the bench report (requests, errors by kind, p50/p99
# of time to first token, inter-token gap and request latency) and the
# resident memory of every process: idle, after a warm-up at full load,
# every minute, and at the end. Run with `make soak` (release build).
#
#   CLIENTS=1000 DURATION=10m NEURONS=2 TOKENS=32 RATE=10 scripts/soak.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${CORTEX_BIN:-$root/target/release/cortex}"
nats="${NATS_SERVER_BIN:-$root/.cache/bin/nats-server}"
clients="${CLIENTS:-1000}"
duration="${DURATION:-10m}"
neurons="${NEURONS:-2}"
tokens="${TOKENS:-32}"
rate="${RATE:-10}"
warmup="${WARMUP:-30s}"

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
rss_mib() { awk '/^VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo "-"; }

port="$(free_port)"
"$nats" -a 127.0.0.1 -p "$port" -js -sd "$work/js" > "$work/nats.log" 2>&1 &
pids+=($!); names=("nats-server")
url="nats://127.0.0.1:$port"
sleep 1

per_neuron=$(( clients / neurons + 16 ))
for i in $(seq 1 "$neurons"); do
  RUST_LOG=warn "$bin" neuron --nats-url "$url" --id "soak-$i" --engine sim --models m=sim \
    --max-concurrency "$per_neuron" --max-queue "$per_neuron" \
    --sim-tokens-per-second "$rate" --sim-reply-tokens "$tokens" \
    --metrics-listen off > "$work/neuron-$i.log" 2>&1 &
  pids+=($!); names+=("neuron-$i")
done

urls=()
for i in 1 2 3; do
  p="$(free_port)"
  RUST_LOG=warn "$bin" ingress --nats-url "$url" --listen "127.0.0.1:$p" > "$work/ingress-$i.log" 2>&1 &
  pids+=($!); names+=("ingress-$i")
  urls+=("http://127.0.0.1:$p")
done
joined="$(IFS=,; echo "${urls[*]}")"

# Ready when each pod answers a chat.
for u in "${urls[@]}"; do
  for _ in $(seq 1 100); do
    if curl -sf -o /dev/null "$u/v1/chat/completions" -H 'content-type: application/json' \
      -d '{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":4}'; then
      break
    fi
    sleep 0.2
  done
done

rss_row() {
  local row="$1"
  for pid in "${pids[@]}"; do row="$row,$(rss_mib "$pid")"; done
  echo "$row" >> "$work/rss.csv"
}
echo "when,$(IFS=,; echo "${names[*]}")" > "$work/rss.csv"
rss_row idle

echo "soak: warm-up $warmup at $clients clients" >&2
"$bin" bench --url "$joined" --model m --concurrency "$clients" --duration "$warmup" \
  --max-tokens "$tokens" --json > "$work/warmup.json"
rss_row start

echo "soak: $clients clients for $duration through ${#urls[@]} ingress pods" >&2
"$bin" bench --url "$joined" --model m --concurrency "$clients" --duration "$duration" \
  --max-tokens "$tokens" --json > "$work/report.json" &
bench=$!
minute=0
while kill -0 "$bench" 2>/dev/null; do
  for _ in $(seq 1 60); do
    kill -0 "$bench" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$bench" 2>/dev/null; then
    minute=$((minute + 1))
    rss_row "${minute}m"
  fi
done
wait "$bench"
rss_row end

echo "== cortex bench: $clients clients, $duration, ${#urls[@]} ingress pods, $neurons sim neurons ($tokens tokens at $rate tok/s each)"
cat "$work/report.json"
echo "== resident memory (MiB)"
column -t -s, "$work/rss.csv" 2>/dev/null || cat "$work/rss.csv"
