"""The Python side of run_sanitized_generation.sh: drive the native library (built with ASan + UBSan, loaded through
RSPARSE_LIB) the way the runtime does, so that a sanitizer sees every kernel called from real decode steps.

1. The crafted tiny model (tests/gguf_craft.py) with its crafted companion: dense prefill, dense and sparse decode.
2. The cached default model (SmolLM2-135M-Instruct Q8_0, made by rsparse-default-model) when it is there: a few
   greedy tokens dense, and sparse when its companion lies beside it.
3. rsparse_matvec and matmul on random data for every weight type, both factor types, with and without colnorm,
   at sizes with scalar tails; each checked against a float64 numpy reference.
Prints one line per part; any sanitizer report aborts the process (the shell script checks the log too)."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from gguf_craft import tiny_companion, tiny_model  # noqa: E402
from rsparse_cpp import native  # noqa: E402
from rsparse_cpp.companion import fingerprint  # noqa: E402
from rsparse_cpp.constants import BLOCK, SPARSE_TYPES, GGMLType  # noqa: E402
from rsparse_cpp.model import Model  # noqa: E402

DEFAULT_MODEL = Path(os.environ.get("RSPARSE_CACHE", Path.home() / ".cache" / "rsparse_cpp")) \
    / "SmolLM2-135M-Instruct-q8_0.gguf"


def tiny_generation(d: Path) -> None:
    base = d / "tiny.gguf"
    base.write_bytes(tiny_model().build())
    (d / "tiny.rsparse.gguf").write_bytes(tiny_companion(fingerprint(base)).build())
    m = Model.load(base, n_ctx=32, n_threads=2)
    assert m.sparse is not None
    for sparse in (False, True):
        m.reset()
        m.sparse_enabled = sparse
        logits = m.forward([1, 2, 3, 4])  # prefill: dense
        for _ in range(6):  # decode: sparse when enabled
            logits = m.forward([int(np.argmax(logits))])
        assert np.isfinite(logits).all()
    print(f"tiny model: 4-token prefill + 6 decode steps, dense and sparse ({m.sparse.read_fraction():.2f} read)")


def default_model_generation(path: Path) -> None:
    from rsparse_cpp import Llama

    if not path.is_file():
        print(f"default model: {path} not found, skipped (rsparse-default-model makes it)")
        return
    llm = Llama(path, n_ctx=64, n_threads=2, sparse=False)
    dense = llm.create_completion("The sea is", max_tokens=6, temperature=0)["choices"][0]["text"]
    line = f"default model: 6 dense tokens {dense!r}"
    if Path(str(path)[:-len(".gguf")] + ".rsparse.gguf").is_file():
        llm = Llama(path, n_ctx=64, n_threads=2)
        sparse = llm.create_completion("The sea is", max_tokens=6, temperature=0)["choices"][0]["text"]
        line += f", 6 sparse tokens {sparse!r}"
    print(line)


def encode(w: np.ndarray, wtype: GGMLType) -> tuple[np.ndarray, np.ndarray]:
    """(the bytes the kernel reads, their dequantized float64 values) of w (rows, cols)."""
    if wtype == GGMLType.F32:
        return w.astype(np.float32), w.astype(np.float32).astype(np.float64)
    if wtype == GGMLType.F16:
        return w.astype(np.float16), w.astype(np.float16).astype(np.float64)
    if BLOCK[wtype][0] == 256:  # gguf-py does not quantize the K types: random super-blocks, small binary16 scales
        rng = np.random.default_rng(w.size)
        q = rng.integers(0, 256, (w.shape[0], w.shape[1] // 256, BLOCK[wtype][1]), dtype=np.uint8)
        scales = rng.uniform(1e-4, 1e-3, (*q.shape[:-1], 2)).astype(np.float16).view(np.uint8)
        if wtype == GGMLType.Q6_K:
            q[..., 208:210] = scales[..., :2]
        else:
            q[..., 0:4] = scales
        q = q.reshape(w.shape[0], -1)
        return q, gguf.quants.dequantize(q, gguf.GGMLQuantizationType(int(wtype))).astype(np.float64)
    q = gguf.quants.quantize(w.astype(np.float32), gguf.GGMLQuantizationType(int(wtype)))
    return q, gguf.quants.dequantize(q, gguf.GGMLQuantizationType(int(wtype))).astype(np.float64)


def assert_near(y: np.ndarray, want: np.ndarray, magnitude: np.ndarray) -> None:
    """Within 1% of sum |w| |x| per output: a smoke check (the tests hold the kernels to derived bounds), loose
    enough for the int8 activations and coefficients of the quantized kernels (about 1/254 of a block's largest)."""
    err = np.abs(y - want)
    assert (err <= 1e-2 * magnitude + 1e-6).all(), f"max error {err.max():.3g}, allowed {1e-2 * magnitude.max():.3g}"


def kernels() -> None:
    rng = np.random.default_rng(0)
    n_calls = 0
    with native.Pool(2) as pool:
        for wtype in GGMLType:
            for n_out, n_in, rank in ((32, 7, 0), (64, 45, 3), (96, 130, 17), (160, 33, 1), (33, 512, 0)):
                w = rng.normal(0, 0.1, (n_out, n_in))
                x = rng.normal(0, 1, n_in).astype(np.float32)
                if n_in % BLOCK[wtype][0] == 0:  # dense (one token and a prompt of 3): blocks along in
                    wq, w64 = encode(w, wtype)
                    y = native.matmul(pool, wtype, wq, n_out, n_in, x)
                    assert_near(y, w64 @ x, np.abs(w64) @ np.abs(x))
                    x3 = rng.normal(0, 1, (3, n_in)).astype(np.float32)
                    y3 = native.matmul(pool, wtype, wq, n_out, n_in, x3)
                    assert_near(y3, x3 @ w64.T, np.abs(x3) @ np.abs(w64.T))
                    n_calls += 2
                if wtype not in SPARSE_TYPES or n_out % BLOCK[wtype][0]:
                    continue
                wtq, wt64 = encode(w.T.copy(), wtype)  # sparse: input-channel-major, blocks along out
                for ftype in (np.float32, np.float16):
                    for colnorm in (np.linalg.norm(wt64, axis=1).astype(np.float32), None):
                        u = rng.normal(0, 0.1, (n_out, rank)).astype(ftype) if rank else None
                        vs = rng.normal(0, 0.1, (rank, n_in)).astype(ftype) if rank else None
                        score = np.abs(x) * (colnorm if colnorm is not None else 1)
                        tau = float(np.median(score))
                        y, n_kept = native.rsparse_matvec(pool, wtype, wtq, n_out, n_in, colnorm, tau, u, vs, x)
                        kept = score > np.float32(tau)
                        want = wt64[kept].T @ x[kept]
                        if rank:
                            want += u.astype(np.float64) @ (vs.astype(np.float64) @ np.where(kept, 0, x))
                        assert n_kept == kept.sum()
                        assert_near(y, want, np.abs(wt64).T @ np.abs(x) + (np.abs(u.astype(np.float64)) @ (
                            np.abs(vs.astype(np.float64)) @ np.abs(x)) if rank else 0))
                        n_calls += 1
    print(f"kernels: {n_calls} matmul/rsparse_matvec calls over {', '.join(t.name for t in GGMLType)}, "
          f"F32/F16 factors, with/without colnorm (SIMD path {native.simd_path()})")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="rsparse-sanitized-") as d:
        tiny_generation(Path(d))
    default_model_generation(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_MODEL)
    kernels()


if __name__ == "__main__":
    main()
