#!/bin/sh
# On a machine with an NVIDIA GPU: builds the CUDA R-Sparse kernel and its check program with nvcc, checks it
# against a float64 host reference and times it against the GPU's copy bandwidth. One run, a few minutes.
# Usage: native/cuda/check.sh [build dir]     (CUDA_ARCH=90 by default: H100/H200; e.g. CUDA_ARCH=80 for A100)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
command -v nvcc >/dev/null 2>&1 || { echo "check.sh: nvcc not found" >&2; exit 2; }
out=${1:-$(mktemp -d)}
arch=${CUDA_ARCH:-90}
nvcc -std=c++17 -O3 -arch=sm_"$arch" -I"$here/../include" -I"$here" "$here/sparse.cu" "$here/check.cu" \
    -o "$out/rsparse_cuda_check"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
"$out/rsparse_cuda_check"
