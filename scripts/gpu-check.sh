#!/usr/bin/env bash
# Runs on a GPU machine, from the repository root, with gpu-bundle/ from
# scripts/build-gpu-bundle.sh. Needs no Rust. Steps (each with a time limit, ~5 min in all):
#   0. driver-probe --exercise: the real driver exports every function the crate checks for, and
#      every API path that reaches the driver runs;
#   1. the GPU correctness suite (CS_REQUIRE_GPU=1: a skip is a failure) and the image checks;
#   2. compute-sanitizer memcheck and racecheck over every entry point;
#   3. the main job: self-check and the bandwidth table against a device-to-device copy;
#   4. torch on the sweep's shapes, when PyTorch is installed, for comparison (torch.csv);
#   5. `cuda-softmax sweep`: every op x dtype x column, with torch's numbers, to $OUT/sweep
#      (CSV, JSON and an SVG plot per op).
# Prints a summary last. Exit status is non-zero if any step failed.
set -u
cd "$(dirname "$0")/.." || exit 2
b=gpu-bundle
# Under the device tool, keep the whole output as a file too (the reply carries only its end).
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
  exec > >(tee "$OUT/gpu-check.log") 2>&1
fi
[ -x "$b/test-softmax_gpu" ] || { echo "no $b/: run scripts/build-gpu-bundle.sh on the build machine first"; exit 2; }
summary=()
step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2; shift 2
  echo; echo "=== $name"
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  summary+=("$(printf '%-34s %s (%ss)' "$name" "$([ $rc -eq 0 ] && echo PASS || echo "FAIL rc=$rc")" $((SECONDS - t0)))")
}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1 | head -3

export CS_REQUIRE_GPU=1
step "driver probe (every driver path)" 60 "$b/driver-probe" --exercise
step "GPU correctness suite" 150 "$b/test-softmax_gpu" --test-threads=1
step "image checks" 30 "$b/test-cuda_image"
if command -v compute-sanitizer >/dev/null; then
  step "memcheck (every entry point)" 120 compute-sanitizer --tool memcheck --error-exitcode 1 \
    "$b/test-softmax_gpu" gpu_every_entry_point_loads --test-threads=1
  step "racecheck (every entry point)" 120 compute-sanitizer --tool racecheck --error-exitcode 1 \
    "$b/test-softmax_gpu" gpu_every_entry_point_loads --test-threads=1
else
  summary+=("compute-sanitizer                  SKIPPED (not installed)")
fi
if [ -s "$b/predicted.txt" ]; then
  echo; echo "=== predicted (static model, tests/sass_gate.rs): fraction of a device-to-device copy"
  cat "$b/predicted.txt"
fi
step "main job (self-check + bandwidth)" 120 "$b/cuda-softmax"
results=${OUT:-gpu-results}
mkdir -p "$results"
torch_arg=()
if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  step "torch on the sweep's shapes" 150 python3 scripts/torch_softmax_bandwidth.py --sweep \
    --csv "$results/torch.csv"
  [ -s "$results/torch.csv" ] && torch_arg=(--torch "$results/torch.csv")
fi
step "sweep (CSV, JSON, plots)" 240 "$b/cuda-softmax" sweep --out "$results/sweep" ${torch_arg[@]+"${torch_arg[@]}"}

echo; echo "=== summary"
printf '%s\n' "${summary[@]}"
! printf '%s\n' "${summary[@]}" | grep -q FAIL
