# Cortex: the two quickstart commands and a few helpers.
#   make up     bring the whole mesh up on this machine (Ctrl-C stops it)
#   make test   install what the tests need, then fmt, clippy, cargo-deny and every test

export NATS_SERVER_BIN := $(CURDIR)/.cache/bin/nats-server
export CORTEX_MODELS_DIR := $(CURDIR)/.cache/models

.PHONY: setup test up bench bench-engine bench-mesh bench-ingress bench-placement soak build-cuda gpu-bundle

setup:
	scripts/setup.sh

test: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	.cache/bin/cargo-deny --log-level error check bans licenses sources
	cargo test --workspace

# nats-server + placement + a neuron with SmolLM2 and MiniLM + ingress on 127.0.0.1:31313.
up: setup
	cargo run --release -- up

bench: setup
	cargo bench -p cortex-bus --bench stream_rtt

# Engine speed beside llama.cpp: LLAMA_BENCH=/path/to/llama-bench make bench-engine
bench-engine: setup
	cargo bench -p cortex-engine --bench speed

# The whole mesh beside llama-server on the same GGUF, 1 / 4 / 8 clients:
# LLAMA_SERVER=/path/to/llama-server make bench-mesh
bench-mesh: setup
	scripts/bench-mesh.sh

# Ingress overhead beside a direct engine call, and beside LiteLLM's proxy
# when LITELLM points at its script: LITELLM=/path/to/litellm make bench-ingress
bench-ingress: setup
	cargo bench -p cortex-ingress --bench overhead

# Placement at fleet scale: 1,000 sim neurons heartbeating each second
# (NEURONS, MODELS, KILLS, WINDOW_S change it).
bench-placement: setup
	cargo bench --bench placement_fleet

# Soak: 1,000 streaming clients through 3 ingress pods to sim neurons for
# 10 minutes; errors, p99 latencies, and RSS from start to end
# (CLIENTS, DURATION, NEURONS, TOKENS, RATE change it).
soak: setup
	cargo build --release
	scripts/soak.sh

# The CUDA build on any x86-64 Linux machine, GPU or not: CUDA 13 from PyPI
# wheels into .cache/cuda (CUDA_COMPUTE_CAP=90 by default).
build-cuda:
	scripts/cuda-setup.sh
	. .cache/cuda/env.sh && cargo build --release --features cuda

# What neuron/gpu/run.sh needs on a GPU machine, small enough to carry:
# the CUDA build of cortex and nats-server, stripped and gzipped, in target/gpu/.
gpu-bundle: build-cuda
	mkdir -p target/gpu
	strip -o target/gpu/cortex target/release/cortex
	gzip -9 -f target/gpu/cortex
	gzip -9 -c .cache/bin/nats-server > target/gpu/nats-server.gz
	ls -l target/gpu
