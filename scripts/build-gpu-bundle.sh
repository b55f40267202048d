#!/usr/bin/env bash
# Builds, on a machine with Rust, the release binaries that scripts/gpu-check.sh runs on a GPU
# machine (which has a driver and CUDA tools but no Rust), into gpu-bundle/ (git-ignored).
#   scripts/build-gpu-bundle.sh                        # for H100/H200 (sm_90), the lent GPUs
#   CUDA_COMPUTE_CAP=all scripts/build-gpu-bundle.sh   # the full image (sm_75..sm_120 + PTX)
# The sm_90-only image keeps the bundle well under the device tool's 64 MiB carry limit; it builds
# in its own target directory so that the normal build is not invalidated.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${CUDA_COMPUTE_CAP:-90}" = all ]; then
  unset CUDA_COMPUTE_CAP
else
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/gpu-bundle-build}"
if [ -z "${CUDA_HOME:-}" ] && ! command -v nvcc >/dev/null; then
  CUDA_HOME="$(scripts/install-nvcc.sh --print-home)"
  export CUDA_HOME
fi
out=gpu-bundle
rm -rf "$out" && mkdir -p "$out"

# Test and bench executables: cargo prints their paths as JSON artifacts.
list=$(cargo test --release --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["kind"]==["test"]:
        print(m["target"]["name"], m["executable"])')
# Only what gpu-check.sh runs (the device tool carries at most 64 MiB).
echo "$list" | while read -r name exe; do
  case "$name" in softmax_gpu|cuda_image) cp "$exe" "$out/test-$name" ;; esac
done
bench=$(cargo bench --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["kind"]==["bench"]:
        print(m["executable"])')
cp "$bench" "$out/bench-softmax"
cargo build --release --bin cuda-softmax --bin driver-probe
cp "$CARGO_TARGET_DIR/release/cuda-softmax" "$CARGO_TARGET_DIR/release/driver-probe" "$out/"

# The static model's predicted fraction of a copy per sweep shape (tests/sass_gate.rs), for
# gpu-check.sh to print beside the measured table.
cargo test --release --test sass_gate plans_keep_enough_loads_in_flight -- --nocapture 2>/dev/null |
  grep -E '^(dtype|f32|f16|bf16) ' > "$out/predicted.txt" || true

strip "$out"/* 2>/dev/null || true
# The GPU machine's glibc may be older than this one's: report the newest symbol version needed.
need=$(for f in "$out"/*; do objdump -T "$f" 2>/dev/null; done | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -n1)
echo "gpu-bundle/ (image for ${CUDA_COMPUTE_CAP:-all architectures}): $(cd "$out" && echo *)"
echo "newest glibc symbol needed: ${need:-none} (the GPU machines need 2.34 at most)"
du -sh "$out"
