#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (nvcc, ptxas, headers) from PyPI into a cache folder
# and prints the CUDA_HOME to use on its last line of stdout.
#
# Why pinned: installing nvidia-cuda-nvcc alone pulls 13.5 parts whose PTX a CUDA 13.0 driver
# (driver 580) cannot JIT. These five versions together form a consistent 13.0 toolkit.
#
# Usage: scripts/install-nvcc.sh            # installs (or reuses) and prints CUDA_HOME
#        eval "$(scripts/install-nvcc.sh --export)"   # sets CUDA_HOME in the current shell
# The cache folder is $CUDA_SOFTMAX_NVCC_DIR, else ~/.cache/cuda-softmax/cuda-13.0.
# build.rs looks in that default folder too, so after this script `cargo build` finds nvcc.
set -euo pipefail

dir="${CUDA_SOFTMAX_NVCC_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cuda-softmax/cuda-13.0}"
home="$dir/nvidia/cu13"
pins=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)

if [ -x "$home/bin/nvcc" ] && [ -f "$dir/.pins" ] && [ "$(cat "$dir/.pins")" = "${pins[*]}" ]; then
  echo "cuda-softmax: reusing the pinned CUDA 13.0 compiler in $dir" >&2
else
  echo "cuda-softmax: installing the pinned CUDA 13.0 compiler into $dir" >&2
  py=$(command -v python3 || command -v python) || {
    echo "cuda-softmax: python3 with pip is needed to install nvcc from PyPI" >&2; exit 1; }
  rm -rf "$dir"
  mkdir -p "$dir"
  "$py" -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" "${pins[@]}" >&2
  echo "${pins[*]}" > "$dir/.pins"
fi

"$home/bin/nvcc" --version >/dev/null || { echo "cuda-softmax: $home/bin/nvcc does not run" >&2; exit 1; }
if [ "${1:-}" = "--export" ]; then
  echo "export CUDA_HOME='$home'"
else
  echo "$home"
fi
