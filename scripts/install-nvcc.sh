#!/usr/bin/env bash
# Installs the pinned CUDA compilers from PyPI into a cache folder (no root), and says what it
# did on stderr. build.rs finds them there without further setup. Two sets:
#
# - The default image's toolchain, for drivers >= 525 (CUDA 12.0): NVRTC 12.0 (C++ -> PTX ISA
#   8.0, the newest ISA a 525 driver can JIT), ptxas 12.9 (PTX -> SASS for sm_75..sm_120),
#   nvFatbin 12.9 (one fatbin) and the CUDA 12.0 fp16/bf16 headers. No CUDA 12.x nvcc is on
#   PyPI; build.rs drives these libraries itself. Folder: $CUDA_SOFTMAX_CU12_DIR, else
#   ~/.cache/cuda-softmax/cuda-12-nvrtc.
# - CUDA 13.0 nvcc (for users who want it: CUDA_HOME=<printed folder>, image for drivers >= 580;
#   and for candle's own kernels in the CI example), with cuobjdump/nvdisasm 13.2 for the SASS
#   gate (tests/sass_gate.rs; 13.2 reads both sets' cubins). Why pinned: nvidia-cuda-nvcc alone
#   pulls 13.5 parts whose PTX a CUDA 13.0 driver cannot JIT. Folder: $CUDA_SOFTMAX_NVCC_DIR,
#   else ~/.cache/cuda-softmax/cuda-13.0.
#
# Usage: scripts/install-nvcc.sh                        # installs (or reuses); prints nothing on stdout
#        CUDA_HOME="$(scripts/install-nvcc.sh --print-home)"   # prints the CUDA 13.0 folder on stdout
#        eval "$(scripts/install-nvcc.sh --export)"   # sets CUDA_HOME to it in the current shell
# Setting CUDA_HOME (or NVCC) makes build.rs use that nvcc instead of the 12.x toolchain.
set -euo pipefail

cache="${XDG_CACHE_HOME:-$HOME/.cache}/cuda-softmax"
dir="${CUDA_SOFTMAX_NVCC_DIR:-$cache/cuda-13.0}"
cu12="${CUDA_SOFTMAX_CU12_DIR:-$cache/cuda-12-nvrtc}"
# (build/toolchain12.rs reads these paths inside $cu12/nvidia.)
cu12_pins=(nvidia-cuda-nvrtc-cu12==12.0.140 nvidia-cuda-runtime-cu12==12.0.146
           nvidia-cuda-nvcc-cu12==12.9.86 nvidia-nvfatbin-cu12==12.9.82)
home="$dir/nvidia/cu13"
pins=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
      nvidia-cuda-cuobjdump==13.2.86 nvidia-cuda-nvdisasm==13.2.86)

case "${1:-}" in
  ""|--print-home|--export) ;;
  *) echo "usage: $0 [--print-home | --export]" >&2; exit 2 ;;
esac

py=""
pip_install() {  # pip_install FOLDER PINS...: a fresh FOLDER holding exactly PINS
  local folder="$1"; shift
  py=${py:-$(command -v python3 || command -v python)} || {
    echo "cuda-softmax: python3 with pip is needed to install the CUDA compilers from PyPI" >&2; exit 1; }
  rm -rf "$folder"
  mkdir -p "$folder"
  "$py" -m pip install --quiet --disable-pip-version-check --no-deps --target "$folder" "$@" >&2
  echo "$*" > "$folder/.pins"
}
installed() {  # installed FOLDER PINS...: FOLDER holds exactly PINS
  local folder="$1"; shift
  [ -f "$folder/.pins" ] && [ "$(cat "$folder/.pins")" = "$*" ]
}

did="reusing"
if ! { [ -x "$home/bin/nvcc" ] && installed "$dir" "${pins[@]}"; }; then
  did="installed"
  pip_install "$dir" "${pins[@]}"
fi
if ! { [ -x "$cu12/nvidia/cuda_nvcc/bin/ptxas" ] && installed "$cu12" "${cu12_pins[@]}"; }; then
  did="installed"
  pip_install "$cu12" "${cu12_pins[@]}"
fi

for tool in nvcc cuobjdump nvdisasm; do
  "$home/bin/$tool" --version >/dev/null || { echo "cuda-softmax: $home/bin/$tool does not run" >&2; exit 1; }
done
"$cu12/nvidia/cuda_nvcc/bin/ptxas" --version >/dev/null || {
  echo "cuda-softmax: $cu12/nvidia/cuda_nvcc/bin/ptxas does not run" >&2; exit 1; }
for lib in cuda_nvrtc/lib/libnvrtc.so.12 nvfatbin/lib/libnvfatbin.so.12 cuda_runtime/include/cuda_fp16.h; do
  [ -f "$cu12/nvidia/$lib" ] || { echo "cuda-softmax: $cu12/nvidia/$lib is missing" >&2; exit 1; }
done
echo "cuda-softmax: $did the pinned CUDA 12 toolchain (NVRTC 12.0, ptxas 12.9, nvFatbin 12.9) in $cu12," \
  "which build.rs uses for the default image (drivers >= 525), and CUDA 13.0 nvcc (cuobjdump/nvdisasm 13.2) in $home" >&2
case "${1:-}" in
  --export) echo "export CUDA_HOME='$home'" ;;
  --print-home) echo "$home" ;;
esac
