#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler (nvcc, ptxas, headers) from PyPI into a cache folder,
# and says what it did in one line on stderr. build.rs finds it there without further setup.
#
# Why pinned: installing nvidia-cuda-nvcc alone pulls 13.5 parts whose PTX a CUDA 13.0 driver
# (driver 580) cannot JIT. The first five versions together form a consistent 13.0 toolkit.
# cuobjdump and nvdisasm (for the SASS gate, tests/sass_gate.rs) have no 13.0 build on PyPI;
# 13.2 reads 13.0 cubins.
#
# Usage: scripts/install-nvcc.sh                        # installs (or reuses); prints nothing on stdout
#        CUDA_HOME="$(scripts/install-nvcc.sh --print-home)"   # prints the toolkit folder on stdout
#        eval "$(scripts/install-nvcc.sh --export)"   # sets CUDA_HOME in the current shell
# The cache folder is $CUDA_SOFTMAX_NVCC_DIR, else ~/.cache/cuda-softmax/cuda-13.0.
# build.rs looks in that default folder too, so after this script `cargo build` finds nvcc.
set -euo pipefail

dir="${CUDA_SOFTMAX_NVCC_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cuda-softmax/cuda-13.0}"
home="$dir/nvidia/cu13"
pins=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
      nvidia-cuda-cuobjdump==13.2.86 nvidia-cuda-nvdisasm==13.2.86)

case "${1:-}" in
  ""|--print-home|--export) ;;
  *) echo "usage: $0 [--print-home | --export]" >&2; exit 2 ;;
esac

if [ -x "$home/bin/nvcc" ] && [ -f "$dir/.pins" ] && [ "$(cat "$dir/.pins")" = "${pins[*]}" ]; then
  did="reusing"
else
  did="installed"
  py=$(command -v python3 || command -v python) || {
    echo "cuda-softmax: python3 with pip is needed to install nvcc from PyPI" >&2; exit 1; }
  rm -rf "$dir"
  mkdir -p "$dir"
  "$py" -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" "${pins[@]}" >&2
  echo "${pins[*]}" > "$dir/.pins"
fi

for tool in nvcc cuobjdump nvdisasm; do
  "$home/bin/$tool" --version >/dev/null || { echo "cuda-softmax: $home/bin/$tool does not run" >&2; exit 1; }
done
echo "cuda-softmax: $did the pinned CUDA 13.0 compiler (and cuobjdump/nvdisasm 13.2) in $home (build.rs finds it there)" >&2
case "${1:-}" in
  --export) echo "export CUDA_HOME='$home'" ;;
  --print-home) echo "$home" ;;
esac
