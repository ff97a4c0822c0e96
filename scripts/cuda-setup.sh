#!/usr/bin/env bash
# A CUDA 13 toolkit from PyPI wheels, so `cargo build --release --features
# cuda` works on a machine with no CUDA and no GPU (issue 8). Installs into
# .cache/cuda/ (git-ignored) and writes .cache/cuda/env.sh with CUDA_ROOT,
# CUDA_COMPUTE_CAP, PATH and LIBRARY_PATH for the build:
#
#   scripts/cuda-setup.sh && . .cache/cuda/env.sh && cargo build --release --features cuda
#   (or: make build-cuda; CUDA_COMPUTE_CAP=80|86|89|90|120 picks the GPU generation)
#
# The versions are pinned as a set: unpinned, pip takes a newer nvvm whose
# PTX the 13.0 ptxas and drivers refuse. The wheels are unpacked into one
# tree (pip would skip a --target that already has nvidia/cu13). candle
# links the CUDA libraries, so the link needs unversioned libcudart.so,
# libcublas.so, libcublasLt.so, libcurand.so, libnvrtc.so, and a libcuda.so
# (the driver) — here a stub with soname libcuda.so.1 that defines every
# function of cuda.h; at run time the GPU host's driver provides the real one.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$root/.cache/cuda"
tree="$cache/root"
cuda="$tree/nvidia/cu13"
compute_cap="${CUDA_COMPUTE_CAP:-90}"

wheels=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cuda-cccl==13.0.85"
  "nvidia-cublas==13.0.2.14"
  "nvidia-curand==10.4.0.35"
  "nvidia-cuda-nvrtc==13.0.88"
)

stamp="$cache/.installed-$(printf '%s ' "${wheels[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  mkdir -p "$cache/wheels"
  echo "cuda-setup: downloading the CUDA 13.0 wheels from PyPI" >&2
  python3 -m pip download --quiet --no-deps --disable-pip-version-check \
    -d "$cache/wheels" "${wheels[@]}" >&2
  rm -rf "$tree"
  mkdir -p "$tree"
  python3 - "$tree" "$cache/wheels" "${wheels[@]}" <<'PY'
import glob, os, sys, zipfile
tree, folder, *pins = sys.argv[1:]
for pin in pins:
    name, version = pin.split("==")
    pattern = os.path.join(folder, f"{name.replace('-', '_')}-{version}-*.whl")
    matches = glob.glob(pattern)
    if not matches:
        sys.exit(f"cuda-setup: no wheel for {pin}")
    with zipfile.ZipFile(matches[0]) as z:
        for member in z.namelist():
            if member.startswith("nvidia/") and not member.endswith("/"):
                z.extract(member, tree)
PY
  chmod +x "$cuda"/bin/* "$cuda"/nvvm/bin/*
  # The build links these by their unversioned names.
  for lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
    ln -sf "$lib" "$cuda/lib/${lib%.so.*}.so"
  done
  # A libcuda.so stub: every driver function cuda.h declares (after its
  # _v2 renames), doing nothing; only the link needs it.
  mkdir -p "$cache/stubs"
  gcc -E -P -I "$cuda/include" "$cuda/include/cuda.h" 2>/dev/null \
    | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' (' | sort -u \
    | awk '{ printf "void %s(void) {}\n", $1 }' > "$cache/stubs/libcuda.c"
  gcc -shared -fPIC -o "$cache/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$cache/stubs/libcuda.c"
  ln -sf libcuda.so "$cache/stubs/libcuda.so.1"
  rm -rf "$cache/wheels"
  touch "$stamp"
fi

cat > "$cache/env.sh" <<EOF
# Written by scripts/cuda-setup.sh: the environment of a CUDA build.
export CUDA_ROOT="$cuda"
export CUDA_PATH="$cuda"
export CUDA_COMPUTE_CAP="$compute_cap"
export PATH="$cuda/bin:\$PATH"
export LIBRARY_PATH="$cuda/lib:$cache/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
EOF
echo "cuda-setup: CUDA 13.0 in $cuda (compute capability $compute_cap); . .cache/cuda/env.sh before cargo build --features cuda" >&2
