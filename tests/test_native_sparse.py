"""librsparse's R-Sparse matvec (and the dense kernels) on every SIMD path against a float64 numpy reference.

The reference is the paper's formula, y = W[:, m] x[m] + U (VS ((1 - m) x)), taken in float64 on weights quantized
and dequantized by gguf-py (llama.cpp's own Python code; tests/native_ref.py). The mask is computed as the kernel
defines it (a float32 score compared with a float32 tau), and tau is put half-way between two scores, so the kept
count is exact.
Every path this CPU runs is selected in turn with native.simd_select; RSPARSE_SIMD is checked in a subprocess.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
native = pytest.importorskip("rsparse_cpp.native")
from rsparse_cpp.constants import BLOCK, SPARSE_TYPES, GGMLType  # noqa: E402

try:
    native._load()
except native.NativeError as e:  # pragma: no cover - only without a built library
    pytest.skip(f"librsparse not built: {e}", allow_module_level=True)

from native_ref import (INT8_ACT, K_TYPES, REL, SMOLLM2, assert_within, block_scales,  # noqa: E402
                        coefficient_steps, int8_act, matmul_reference, random_weights, wt_reference)

PATHS = native.simd_paths()
FRACTIONS = (0.0, 0.1, 0.5, 0.9, 1.0)
SHAPES = {  # odd sizes: n_in never a multiple of 32 or of a vector width; n_out odd where the type allows
    GGMLType.F32: [(1, 5), (37, 45), (131, 67)] + SMOLLM2,
    GGMLType.F16: [(1, 5), (37, 45), (131, 67)] + SMOLLM2,
    GGMLType.Q4_0: [(32, 5), (96, 45), (160, 67)] + SMOLLM2,
    GGMLType.Q8_0: [(32, 5), (96, 45), (160, 67)] + SMOLLM2,
}
FACTORS = [(0, None), (8, np.float32), (5, np.float16)]  # (rank, factor dtype)
CASES = [(t, s, f) for t, shapes in SHAPES.items() for s in shapes for f in FACTORS]


@pytest.fixture(scope="module")
def pools():
    ps = {n: native.Pool(n) for n in range(1, 5)}
    yield ps
    for p in ps.values():
        p.close()


@pytest.fixture(params=PATHS)
def path(request):
    native.simd_select(request.param)
    yield request.param
    native.simd_select(None)


@functools.lru_cache(maxsize=None)
def layer(wtype: GGMLType, n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """(input-major weights as stored, read-only, row j holding input channel j's n_out weights; W as float64
    (n_out, n_in))."""
    wt, ref = random_weights(wtype, (n_in, n_out), seed=n_out * 7919 + n_in * 31 + int(wtype))
    return wt, np.ascontiguousarray(ref.T)


def scales(wtype: GGMLType, wt: np.ndarray, n_out: int):
    """The input-major blocks' scales of quantized weights (their kernels' coefficients are int8), else None."""
    return block_scales(wt, wtype, n_out) if wtype in INT8_ACT else None


def factors(n_out: int, n_in: int, rank: int, dtype, seed: int):
    if rank == 0:
        return None, None
    rng = np.random.default_rng(seed)
    U = (rng.standard_normal((n_out, rank)) * 0.3).astype(dtype)
    VS = (rng.standard_normal((rank, n_in)) * 0.3).astype(dtype)
    return U, VS


def tau_keeping(score: np.ndarray, n_keep: int) -> float:
    """A float32 tau with exactly n_keep scores above it (scores are distinct random floats)."""
    s = np.sort(score)
    if n_keep >= s.size:
        return -1.0
    if n_keep == 0:
        return float(s[-1]) + 1.0
    return float((np.float64(s[-n_keep - 1]) + np.float64(s[-n_keep])) / 2)


def reference(W64, colnorm, tau, U, VS, x, d=None):
    """(y, bound, n_kept): y in float64, the rounding bound 1e-5 * sum of |terms| (plus, given the block scales d of
    quantized weights, the int8 coefficients' rounding: native_ref.coefficient_steps), and the kept count."""
    score = np.abs(x) * colnorm if colnorm is not None else np.abs(x)  # float32, as the kernel computes it
    m = score > np.float32(tau)
    x64 = x.astype(np.float64)
    y = W64[:, m] @ x64[m]
    mag = np.abs(W64[:, m]) @ np.abs(x64[m])
    if U is not None:
        xd = np.where(m, 0.0, x64)
        U64, VS64 = U.astype(np.float64), VS.astype(np.float64)
        y = y + U64 @ (VS64 @ xd)
        mag = mag + np.abs(U64) @ (np.abs(VS64) @ np.abs(xd))
    bound = REL * mag + 1e-30
    if d is not None:
        bound = bound + coefficient_steps(W64, d, x, m)
    return y, bound, int(m.sum())


# ---- the sparse matvec on every path -----------------------------------------------------------------------------
@pytest.mark.parametrize("wtype,shape,factor", CASES,
                         ids=[f"{t.name}-{o}x{i}-r{r}" for t, (o, i), (r, _) in CASES])
def test_sparse_matches_float64(pools, path, wtype, shape, factor):
    n_out, n_in = shape
    rank, dtype = factor
    wt, W64 = layer(wtype, n_out, n_in)
    rng = np.random.default_rng(n_out + n_in + rank)
    x = rng.uniform(-2, 2, n_in).astype(np.float32)
    colnorm = rng.uniform(0.1, 3, n_in).astype(np.float32) if rank % 2 == 0 else None  # both modes
    U, VS = factors(n_out, n_in, rank, dtype, seed=n_in)
    scratch = np.empty(native.sparse_scratch_bytes(n_in, rank), np.uint8)
    score = np.abs(x) * colnorm if colnorm is not None else np.abs(x)
    for frac in FRACTIONS:
        n_keep = round(frac * n_in)
        tau = tau_keeping(score, n_keep)
        want, bound, want_kept = reference(W64, colnorm, tau, U, VS, x, scales(wtype, wt, n_out))
        assert want_kept == n_keep
        first = None
        for n_threads in range(1, 5):
            out = np.full(n_out, np.nan, np.float32)  # stale contents must be overwritten, never read
            y, kept = native.rsparse_matvec(pools[n_threads], wtype, wt, n_out, n_in, colnorm, tau, U, VS, x,
                                            out=out, scratch=scratch)
            assert y is out and kept == n_keep
            assert_within(y, want, bound, f"{path} kept {frac:.0%} threads {n_threads}")
            # With several threads the kept rows are split among them (sparse.c, split_rows), so the summation
            # order and the last bits (and, with int8 coefficients, which rows share a scale) depend on the thread
            # count; every count is within the float64 bound above, so within twice that of each other.
            if first is None:
                first = y.copy()
            else:
                assert_within(y, first.astype(np.float64), 2 * bound, f"{path} threads {n_threads} against 1")


@pytest.mark.parametrize("wtype", [GGMLType.F16, GGMLType.Q8_0])
def test_sparse_llama7b_layer(pools, path, wtype):
    """One Llama-7B-sized layer (4096 x 4096) at 50% kept with a rank-32 term, two threads."""
    n_out = n_in = 4096
    wt, W64 = layer(wtype, n_out, n_in)
    rng = np.random.default_rng(7)
    x = rng.standard_normal(n_in).astype(np.float32)
    U, VS = factors(n_out, n_in, 32, np.float16, seed=8)
    tau = tau_keeping(np.abs(x), n_in // 2)
    want, bound, want_kept = reference(W64, None, tau, U, VS, x, scales(wtype, wt, n_out))
    y, kept = native.rsparse_matvec(pools[2], wtype, wt, n_out, n_in, None, tau, U, VS, x)
    assert kept == want_kept == n_in // 2
    assert_within(y, want, bound, path)


def test_sparse_all_kept_is_dense_matvec(pools, path):
    """tau < 0 with colnorm None keeps every channel: the dense product over the input-major layout."""
    wt, W64 = layer(GGMLType.Q8_0, 192, 576)
    x = np.random.default_rng(3).standard_normal(576).astype(np.float32)
    y, kept = native.rsparse_matvec(pools[3], GGMLType.Q8_0, wt, 192, 576, None, -1.0, None, None, x)
    assert kept == 576 and y.shape == (192,) and y.dtype == np.float32
    want, bound = matmul_reference(W64, x)
    bound = bound + coefficient_steps(W64, block_scales(wt, GGMLType.Q8_0, 192), x, np.ones(576, bool))
    assert_within(y, want, bound, path)


def test_sparse_nothing_kept_is_lowrank_only(pools, path):
    wt, _ = layer(GGMLType.F16, 37, 45)
    x = np.random.default_rng(4).standard_normal(45).astype(np.float32)
    U, VS = factors(37, 45, 8, np.float32, seed=5)
    y, kept = native.rsparse_matvec(pools[2], GGMLType.F16, wt, 37, 45, None, np.inf, U, VS, x)
    assert kept == 0
    want = U.astype(np.float64) @ (VS.astype(np.float64) @ x)
    assert_within(y, want, REL * (np.abs(U) @ (np.abs(VS) @ np.abs(x))).astype(np.float64) + 1e-30, path)
    y0, kept0 = native.rsparse_matvec(pools[2], GGMLType.F16, wt, 37, 45, None, np.inf, None, None, x)
    assert kept0 == 0 and not y0.any()


# ---- the dense kernels on every path (test_native_matmul.py covers the start-up path in depth) ----------------
def dense_shapes(t: GGMLType) -> list[tuple[int, int]]:
    if t in K_TYPES:
        return [(33, 256), (7, 768), (192, 1536)]
    return ([(33, 37), (7, 300)] if BLOCK[t][0] == 1 else [(33, 96), (7, 544)]) + [(192, 576)]


DENSE = [(t, s) for t in GGMLType for s in dense_shapes(t)]


@pytest.mark.parametrize("n_tok", [1, 3, 70])
@pytest.mark.parametrize("wtype,shape", DENSE, ids=[f"{t.name}-{o}x{i}" for t, (o, i) in DENSE])
def test_dense_every_path(pools, path, wtype, shape, n_tok):
    """Decode (one token) within the float64 reference's bound (with int8 activations for Q8_0 and Q4_0); prefill
    within the float bound (Q4_0 from the base's layout: with int8 activations, the integer tile), and the scalar
    path's bits on every path, from both layouts."""
    n_out, n_in = shape
    stored, w64 = random_weights(wtype, (n_out, n_in), seed=n_out * n_in + n_tok)
    x = np.random.default_rng(n_tok).uniform(-2, 2, (n_tok, n_in)).astype(np.float32)
    y = native.matmul(pools[3], wtype, stored, n_out, n_in, x)
    assert_within(y, *matmul_reference(w64, x, int8_act=int8_act(wtype, n_tok)), path)
    if n_tok == 1 or wtype in INT8_ACT and n_out % 32 or wtype not in SPARSE_TYPES:
        return
    wt, wt64 = random_weights(wtype, (n_in, n_out), seed=n_out + n_tok)
    yt = native.matmul_wt(pools[2], wtype, wt, n_out, n_in, x)
    assert_within(yt, *wt_reference(wt64, x, wtype), path)
    native.simd_select("scalar")
    np.testing.assert_array_equal(y, native.matmul(pools[1], wtype, stored, n_out, n_in, x))
    np.testing.assert_array_equal(yt, native.matmul_wt(pools[4], wtype, wt, n_out, n_in, x))


# ---- paths -------------------------------------------------------------------------------------------------------
def test_paths_and_select():
    assert PATHS[-1] == "scalar" and len(set(PATHS)) == len(PATHS)
    assert set(PATHS) <= {"scalar", "avx2", "avxvnni", "avx512", "avx512vnni", "neon", "neondot"}
    for p in PATHS:
        native.simd_select(p)
        assert native.simd_path() == p
    native.simd_select(None)
    assert native.simd_path() == PATHS[0]
    with pytest.raises(ValueError, match="SIMD path"):
        native.simd_select("sse9")
    lib = native._load()
    assert lib.rs_simd_select(b"sse9") == lib.RS_ERR_PATH


@pytest.mark.parametrize("name", PATHS)
def test_rsparse_simd_env_forces_a_path(name):
    env = dict(os.environ, RSPARSE_SIMD=name)
    code = "from rsparse_cpp import native; print(native.simd_path())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == name


# ---- argument errors: ValueError before any C call ----------------------------------------------------------
class _NoKernels:
    def __init__(self, lib):
        self._lib = lib

    def __getattr__(self, name):
        if name == "rs_sparse_matvec":
            raise AssertionError(f"{name} was called despite a bad argument")
        return getattr(self._lib, name)


def test_sparse_bad_arguments(pools, monkeypatch):
    wt, _ = layer(GGMLType.Q8_0, 96, 45)
    x = np.ones(45, np.float32)
    cn = np.ones(45, np.float32)
    U, VS = factors(96, 45, 4, np.float32, seed=1)
    closed = native.Pool(1)
    closed.close()
    monkeypatch.setattr(native, "_lib", _NoKernels(native._load()))
    p = pools[2]

    def call(**kw):
        args = dict(pool=p, wtype=GGMLType.Q8_0, wt=wt, n_out=96, n_in=45, colnorm=cn, tau=0.5, U=U, VS=VS, x=x)
        args.update(kw)
        return native.rsparse_matvec(**args)

    bad = {
        "pool": [dict(pool=None), dict(pool=closed)],
        "wtype": [dict(wtype=4), dict(wtype="Q8_0"), dict(wtype=GGMLType.Q6_K)],
        "wt": [dict(wt=wt[:-1]), dict(n_in=44), dict(wt=wt.tobytes())],
        "n_out": [dict(n_out=0), dict(n_out=96.0)],
        "colnorm": [dict(colnorm=cn[:-1]), dict(colnorm=cn.astype(np.float64)), dict(colnorm=np.ones(90, np.float32)[::2])],
        "tau": [dict(tau="0.5"), dict(tau=None), dict(tau=True)],
        "U and VS": [dict(U=None), dict(VS=None), dict(U=U.astype(np.float16)), dict(U=U.astype(np.float64),
                                                                                       VS=VS.astype(np.float64))],
        "U must": [dict(U=U[:95].copy()), dict(U=np.ones((96, 0), np.float32), VS=np.ones((0, 45), np.float32))],
        "VS must": [dict(VS=VS[:3].copy()), dict(VS=np.ones((4, 44), np.float32))],
        "x": [dict(x=x[:-1]), dict(x=x.astype(np.float64)), dict(x=x.reshape(1, 45))],
        "out": [dict(out=np.zeros(95, np.float32)), dict(out=np.zeros(96, np.float64))],
        "scratch": [dict(scratch=np.zeros(10, np.uint8)), dict(scratch=np.zeros(4096, np.uint8)[1:])],
        "n_in": [dict(wtype=GGMLType.Q8_0, n_out=95)],
    }
    for name, kws in bad.items():
        for kw in kws:
            with pytest.raises(ValueError, match=name):
                call(**kw)
    y = np.zeros(1024, np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        call(out=y[:96], scratch=y)


def test_sparse_raw_c_calls_return_error_status(pools):
    lib, ffi = native._load(), native.ffi
    wt, x, y = np.zeros(34 * 4, np.uint8), np.ones(4, np.float32), np.zeros(32, np.float32)
    s = np.zeros(native.sparse_scratch_bytes(4, 2), np.uint8)
    pw, px, py, ps = (ffi.from_buffer(wt), ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", y),
                      ffi.from_buffer(s))
    n = ffi.new("int64_t *")
    pool = pools[2]._ptr

    def call(pool=pool, wtype=8, w=pw, n_out=32, scratch_bytes=s.nbytes, rank=0, scratch=ps):
        return lib.rs_sparse_matvec(pool, wtype, w, n_out, 4, ffi.NULL, 0.5, 0, ffi.NULL, ffi.NULL, rank, px, py, n,
                                    scratch, scratch_bytes)

    assert call() == lib.RS_OK and n[0] == 4
    assert call(pool=ffi.NULL) == lib.RS_ERR_NULL
    assert call(scratch=ffi.NULL) == lib.RS_ERR_NULL
    assert call(wtype=5) == lib.RS_ERR_TYPE
    assert call(n_out=33) == lib.RS_ERR_SHAPE
    assert call(scratch_bytes=native.sparse_scratch_bytes(4, 0) - 1) == lib.RS_ERR_SHAPE
    assert call(rank=2) == lib.RS_ERR_NULL  # factors missing
    assert call(w=pw + 1) == lib.RS_ERR_ALIGN
    assert lib.rs_sparse_scratch_bytes(0, 0) == -1 and lib.rs_sparse_scratch_bytes(4, -1) == -1


@pytest.mark.parametrize("wtype", [GGMLType.Q8_0, GGMLType.Q4_0])
def test_quantized_sparse_edge_activations(pools, path, wtype):
    """The quantized sparse kernels (int8 coefficients: native/src/sparse_int8.h) with every channel kept:
    subnormal and huge activations stay within the bound, and an inf one makes every output non-finite (NaN: its
    blocks' coefficient scale is NaN), on every thread count."""
    n_out, n_in = 96, 40
    wt, W64 = layer(wtype, n_out, n_in)
    d = scales(wtype, wt, n_out)
    x = np.random.default_rng(11).uniform(-2, 2, n_in).astype(np.float32)
    for case in (x * np.float32(1e-41 / 2), x * np.float32(1e30), np.where(np.arange(n_in) < 20, x * 1e-38, x)):
        case = case.astype(np.float32)
        want, bound, kept = reference(W64, None, -1.0, None, None, case, d)
        for n_threads in (1, 2, 3):
            y, n_kept = native.rsparse_matvec(pools[n_threads], wtype, wt, n_out, n_in, None, -1.0, None, None, case)
            assert n_kept == kept == n_in and np.isfinite(y).all()
            assert_within(y, want, bound, f"{path} threads {n_threads}")
    bad = x.copy()
    bad[7] = np.inf
    for n_threads in (1, 2):
        y, _ = native.rsparse_matvec(pools[n_threads], wtype, wt, n_out, n_in, None, -1.0, None, None, bad)
        assert not np.isfinite(y).any()
