"""librsparse's matmul, matmul_wt and get_rows against an independent float64 reference.

The reference (tests/native_ref.py): weights quantized and dequantized by gguf-py, the product taken in float64,
every type within float rounding, |y - ref| <= 1e-5 * (|W| @ |x|), plus the int8 rounding of the activations for
Q8_0 and Q4_0 decode (one token) and for Q4_0 prefill (gemm.c's integer tile), whose companion-layout prefill
also requantizes the weights to 7 bits (native_ref.requant7). Other prefill is a float GEMM of the dequantized
weights.
"""
from __future__ import annotations

import functools
import re
import threading
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
native = pytest.importorskip("rsparse_cpp.native")
from rsparse_cpp.constants import SPARSE_TYPES, GGMLType  # noqa: E402

try:
    native._load()
except native.NativeError as e:  # pragma: no cover - only without a built library
    pytest.skip(f"librsparse not built: {e}", allow_module_level=True)

from native_ref import (INT8_ACT, K_TYPES, SMOLLM2, assert_within, int8_act, matmul_reference,  # noqa: E402
                        random_weights, wt_reference)

HEADER = Path(__file__).resolve().parents[1] / "native" / "include" / "rsparse.h"
SHAPES = {
    GGMLType.F32: [(1, 5), (7, 37), (33, 37), (7, 32)] + SMOLLM2,
    GGMLType.F16: [(1, 5), (7, 37), (33, 37), (7, 32)] + SMOLLM2,
    GGMLType.Q4_0: [(1, 32), (7, 96), (33, 32), (33, 96)] + SMOLLM2,
    GGMLType.Q8_0: [(1, 32), (7, 96), (33, 32), (33, 96)] + SMOLLM2,
    GGMLType.BF16: [(1, 5), (7, 37), (33, 37)] + SMOLLM2,
    **{t: [(1, 32), (7, 96), (33, 96)] + SMOLLM2 for t in (GGMLType.Q4_1, GGMLType.Q5_0, GGMLType.Q5_1)},
    **{t: [(1, 256), (7, 512), (33, 256), (576, 1536), (192, 1536)] for t in K_TYPES},
}
CASES = [(t, s) for t, shapes in SHAPES.items() for s in shapes]


@functools.lru_cache(maxsize=None)
def weights(wtype: GGMLType, n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """(stored (n_out, n_in) weights as the runtime sees them, read-only; their float64 values)."""
    return random_weights(wtype, (n_out, n_in), seed=n_out * 1000 + n_in * 10 + int(wtype))


def activations(n_tok: int, n_in: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, (n_tok, n_in)).astype(np.float32)


def assert_close(y: np.ndarray, w64: np.ndarray, x: np.ndarray, wtype: GGMLType) -> None:
    """Decode of Q8_0 and Q4_0, and Q4_0's prompts, round the activations to int8; every other product is float all
    through."""
    assert_within(y, *matmul_reference(w64, x, int8_act=int8_act(wtype, 1 if x.ndim == 1 else x.shape[0])))


@pytest.fixture(scope="module")
def pools():
    ps = {n: native.Pool(n) for n in range(1, 5)}
    yield ps
    for p in ps.values():
        p.close()


# ---- matmul ------------------------------------------------------------------------------------------------
# The companion's layout (matmul_wt): wt is W transposed, (n_in, n_out), quantized along the outputs.
WT_CASES = [(t, s) for t in SPARSE_TYPES for s in [(32, 5), (37, 7), (64, 33), (96, 1)] + SMOLLM2
            if t in (GGMLType.F32, GGMLType.F16) or s[0] % 32 == 0]
ALL_CASES = [("w", t, s) for t, s in CASES] + [("wt", t, s) for t, s in WT_CASES]


@pytest.mark.parametrize("n_threads", [1, 2, 3, 4])
@pytest.mark.parametrize("n_tok", [1, 2, 7])
@pytest.mark.parametrize("layout,wtype,shape", ALL_CASES,
                         ids=[f"{lay}-{t.name}-{o}x{i}" for lay, t, (o, i) in ALL_CASES])
def test_matmul_matches_float64(pools, layout, wtype, shape, n_tok, n_threads):
    n_out, n_in = shape
    x = activations(n_tok, n_in)
    out = np.full((n_tok, n_out), np.nan, np.float32)  # stale contents must be overwritten, never read
    if layout == "w":
        w, w64 = weights(wtype, n_out, n_in)
        y = native.matmul(pools[n_threads], wtype, w, n_out, n_in, x, out=out)
        assert_close(y, w64, x, wtype)
    else:  # always the GEMM, whatever n_tok (Q4_0: the integer tile on weights requantized to 7 bits)
        wt, wt64 = weights(wtype, n_in, n_out)
        y = native.matmul_wt(pools[n_threads], wtype, wt, n_out, n_in, x, out=out)
        assert_within(y, *wt_reference(wt64, x, wtype), f"{wtype.name} {shape} n_tok {n_tok}")
    assert y is out


R16_SHAPES = [(16, 32), (48, 96), (576, 576), (1536, 576), (576, 1536)]
R16_CASES = [(t, s) for t in (GGMLType.Q4_0, GGMLType.Q8_0) for s in R16_SHAPES]


@pytest.mark.parametrize("n_threads", [1, 2, 3, 4])
@pytest.mark.parametrize("wtype,shape", R16_CASES, ids=[f"{t.name}-{o}x{i}" for t, (o, i) in R16_CASES])
def test_tiles_of_16_rows(pools, wtype, shape, n_threads):
    """Q4_0 and Q8_0 repacked into tiles of 16 rows (what the runtime multiplies): within the float64 bound for
    decode and prefill on every SIMD path, decode the scalar path's bits; prefill Q4_0's or Q8_0's own bits (and,
    Q4_0, each token's decode the bits of its prefill: one integer GEMM arithmetic); rows looked up as the type's."""
    n_out, n_in = shape
    w, w64 = weights(wtype, n_out, n_in)
    ttype, r = native.repack_r16(wtype, w, n_out, n_in)
    assert r.nbytes == w.nbytes and r.ctypes.data % 64 == 0 and not np.array_equal(r, w.reshape(-1))
    x = activations(3, n_in, seed=n_threads)
    pool = pools[n_threads]
    before = native.simd_path()
    try:
        native.simd_select("scalar")
        want = [native.matmul(pool, ttype, r, n_out, n_in, x[t]) for t in range(3)]
        for path in native.simd_paths():
            native.simd_select(path)
            pre = native.matmul(pool, ttype, r, n_out, n_in, x)
            assert_within(pre, *matmul_reference(w64, x, int8_act=int8_act(wtype, 3)), f"{path} prefill")
            assert np.array_equal(pre, native.matmul(pool, wtype, w, n_out, n_in, x))
            for t in range(3):
                y = native.matmul(pool, ttype, r, n_out, n_in, x[t])
                assert_within(y, *matmul_reference(w64, x[t], int8_act=True), f"{path} decode")
                assert np.array_equal(y, want[t]), path
                if wtype == GGMLType.Q4_0:
                    assert np.array_equal(y, pre[t]), path
    finally:
        native.simd_select(before)
    rows = np.array([0, n_out - 1, n_out // 3], np.int64)
    assert np.array_equal(native.get_rows(ttype, r, n_out, n_in, rows), native.get_rows(wtype, w, n_out, n_in, rows))


def test_tiles_refuse_rows_not_in_tiles(pools):
    w, _ = weights(GGMLType.Q4_0, 33, 32)
    with pytest.raises(ValueError, match="multiple of 16"):
        native.repack_r16(GGMLType.Q4_0, w, 33, 32)
    with pytest.raises(native.NativeError, match="multiple of the block size|size"):
        native.matmul(pools[1], native.Q4_0_R16, w, 33, 32, activations(1, 32)[0])
    with pytest.raises(ValueError, match="only Q4_0 and Q8_0"):
        native.repack_r16(GGMLType.F16, w, 33, 32)


@pytest.mark.parametrize("wtype", list(GGMLType))
def test_matmul_1d_equals_one_token_and_allocates(pools, wtype):
    n_out, n_in = 33, 256 if wtype in K_TYPES else 96
    w, w64 = weights(wtype, n_out, n_in)
    x = activations(1, n_in, seed=3)
    y1 = native.matmul(pools[2], wtype, w, n_out, n_in, x[0])
    y2 = native.matmul(pools[2], int(wtype), w, n_out, n_in, x)
    assert y1.shape == (n_out,) and y2.shape == (1, n_out) and y1.dtype == np.float32
    np.testing.assert_array_equal(y1, y2[0])
    assert_close(y2, w64, x, wtype)


@pytest.mark.parametrize("wtype", list(GGMLType))
def test_matmul_prefill_rows_independent_of_batch_and_threads(pools, wtype):
    """Each token's row of a prefill is the same bits whatever the batch around it and the thread count (every
    output is one in-order sum), and within decode's int8 rounding of what decode gives that token."""
    n_out, n_in = 192, 1536 if wtype in K_TYPES else 576
    w, w64 = weights(wtype, n_out, n_in)
    x = activations(7, n_in, seed=5)
    batch = native.matmul(pools[3], wtype, w, n_out, n_in, x)
    for t in range(6):
        pair = native.matmul(pools[1 + t % 4], wtype, w, n_out, n_in, np.ascontiguousarray(x[t:t + 2]))
        np.testing.assert_array_equal(batch[t:t + 2], pair)
        decode = native.matmul(pools[1], wtype, w, n_out, n_in, x[t])
        want, bound = matmul_reference(w64, x[t], int8_act=wtype in INT8_ACT)
        assert_within(decode, batch[t].astype(np.float64), 2 * bound, f"decode against prefill, token {t}")


@pytest.mark.parametrize("wtype", INT8_ACT)
def test_int8_activations_edge_blocks(pools, wtype):
    """Quantized decode rounds activations to int8 per block of 32 (native/src/kernels.h). A block holding NaN
    or inf makes every output NaN, as float arithmetic would make it NaN or inf (prefill: NaN or inf); all-zero,
    subnormal and huge blocks stay within the bound, in decode and in prefill."""
    n_out, n_in = 33, 512 if wtype in K_TYPES else 160
    w, w64 = weights(wtype, n_out, n_in)
    x = activations(4, n_in, seed=9)
    x[0, 32:64] = 0.0
    x[1, 64:96] = np.float32(1e-41)    # subnormal: 127 / amax overflows float32
    x[1, 96:128] *= np.float32(1e30)   # huge next to small blocks
    x[2, :32] = np.float32(3e38) * np.sign(x[2, :32])
    y = native.matmul(pools[2], wtype, w, n_out, n_in, x)
    assert np.isfinite(y[:2]).all()
    assert_close(y[:2], w64, x[:2], wtype)
    assert np.isfinite(y[3]).all()
    for t in range(2):
        assert_close(native.matmul(pools[1], wtype, w, n_out, n_in, x[t]), w64, x[t], wtype)
    for bad in (np.nan, np.inf, -np.inf):
        xb = x[3].copy()
        xb[100] = bad
        assert np.isnan(native.matmul(pools[2], wtype, w, n_out, n_in, xb)).all()
        xb2 = np.stack([x[0], xb])
        y2 = native.matmul(pools[2], wtype, w, n_out, n_in, xb2)
        assert np.isfinite(y2[0]).all() and not np.isfinite(y2[1]).any()


# ---- matmul_wt: the same product from the companion's input-channel-major layout ----------------------------
@pytest.mark.parametrize("wtype", [GGMLType.F32, GGMLType.F16])
def test_matmul_wt_equals_matmul_bit_for_bit(pools, wtype):
    """Float weights are the same values in either layout, and both layouts pack the same panels: the same bits."""
    n_out, n_in = 150, 577
    w, _ = weights(wtype, n_out, n_in)
    wt = np.ascontiguousarray(w.T)
    x = activations(9, n_in, seed=12)
    np.testing.assert_array_equal(native.matmul_wt(pools[2], wtype, wt, n_out, n_in, x),
                                  native.matmul(pools[3], wtype, w, n_out, n_in, x))


def test_matmul_wt_checks_its_layout(pools):
    wt, _ = weights(GGMLType.Q8_0, 64, 96)  # (n_in 64, n_out 96)
    with pytest.raises(ValueError, match="wt has .* 32 rows of Q8_0"):
        native.matmul_wt(pools[1], GGMLType.Q8_0, wt, 96, 32, activations(2, 32))
    with pytest.raises(ValueError, match="x must have shape"):
        native.matmul_wt(pools[1], GGMLType.Q8_0, wt, 96, 64, activations(2, 96))
    with pytest.raises(ValueError, match="n_out = 20 is not a valid row length"):  # outputs not whole blocks
        native.matmul_wt(pools[1], GGMLType.Q8_0, np.zeros((4, 34), np.uint8), 20, 4, activations(1, 4))


def test_matmul_into_slice_of_run_state_buffer(pools):
    """The decode loop passes out=buf[:n] of a buffer sized for the largest batch."""
    w, w64 = weights(GGMLType.Q4_0, 33, 96)
    buf = np.zeros((16, 33), np.float32)
    x = activations(3, 96, seed=7)
    y = native.matmul(pools[2], GGMLType.Q4_0, w, 33, 96, x, out=buf[:3])
    assert np.shares_memory(y, buf)
    assert_close(buf[:3], w64, x, GGMLType.Q4_0)
    assert not buf[3:].any()


def test_matmul_reads_weights_in_place(pools):
    """A read-only buffer (like a mmap) is used as is: changing the bytes underneath changes the result."""
    raw = bytearray(np.ones((4, 32), np.float32).tobytes())
    w = np.frombuffer(raw, np.float32).reshape(4, 32)
    x = np.ones(32, np.float32)
    assert native.matmul(pools[1], GGMLType.F32, w, 4, 32, x).tolist() == [32.0] * 4
    raw[:4] = np.float32(3.0).tobytes()
    assert native.matmul(pools[1], GGMLType.F32, w, 4, 32, x)[0] == 34.0


def test_matmul_shared_pool_from_two_threads(pools):
    w, w64 = weights(GGMLType.Q8_0, 576, 576)
    xs = [activations(2, 576, seed=s) for s in (11, 12)]
    results, errors = [None, None], []

    def run(i):
        try:
            for _ in range(20):
                results[i] = native.matmul(pools[2], GGMLType.Q8_0, w, 576, 576, xs[i])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in (0, 1):
        assert_close(results[i], w64, xs[i], GGMLType.Q8_0)


# ---- get_rows -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("wtype", list(GGMLType))
def test_get_rows_equals_dequantized_rows(wtype):
    n_rows, n_in = 50, 256 if wtype in K_TYPES else 96
    w, w64 = weights(wtype, n_rows, n_in)
    rows = np.array([0, 49, 3, 3, 17], np.int64)
    out = np.full((5, n_in), np.nan, np.float32)
    y = native.get_rows(wtype, w, n_rows, n_in, rows, out=out)
    assert y is out
    np.testing.assert_array_equal(y, w64[rows].astype(np.float32))  # dequantization is exact in float32


def test_get_rows_every_fp16_bit_pattern():
    """Subnormals, infinities and NaN payloads convert exactly as numpy converts them."""
    w = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(2048, 32)
    y = native.get_rows(GGMLType.F16, w, 2048, 32, np.arange(2048, dtype=np.int64))
    np.testing.assert_array_equal(y.view(np.uint32), w.astype(np.float32).view(np.uint32))


# ---- argument errors: ValueError before any C call ----------------------------------------------------------
class _NoKernels:
    """Stands in for the library: lets the cheap queries through, fails any kernel call."""

    def __init__(self, lib):
        self._lib = lib

    def __getattr__(self, name):
        if name in ("rs_matmul", "rs_get_rows"):
            raise AssertionError(f"{name} was called despite a bad argument")
        return getattr(self._lib, name)


@pytest.fixture
def no_kernels(monkeypatch):
    monkeypatch.setattr(native, "_lib", _NoKernels(native._load()))


def _bad_matmul_calls(pool):
    w8, _ = weights(GGMLType.Q8_0, 7, 96)
    w4, _ = weights(GGMLType.Q4_0, 7, 96)
    wf, _ = weights(GGMLType.F32, 7, 37)
    w7, _ = weights(GGMLType.F32, 7, 7)
    x = activations(2, 96)
    wide = np.zeros((7, 192), np.uint8)
    out = np.zeros((2, 7), np.float32)
    readonly = np.zeros((2, 7), np.float32)
    readonly.flags.writeable = False
    closed = native.Pool(1)
    closed.close()
    return {
        "x float64": ("x", lambda: native.matmul(pool, GGMLType.Q8_0, w8, 7, 96, x.astype(np.float64))),
        "x non-contiguous": ("x", lambda: native.matmul(pool, GGMLType.Q8_0, w8, 7, 96,
                                                         np.zeros((2, 192), np.float32)[:, ::2])),
        "x transposed": ("x", lambda: native.matmul(pool, GGMLType.Q8_0, w8, 7, 96, np.zeros((96, 2), np.float32).T)),
        "x wrong n_in": ("x", lambda: native.matmul(pool, GGMLType.Q8_0, w8, 7, 96, x[:, :64].copy())),
        "x 3-D": ("x", lambda: native.matmul(pool, GGMLType.Q8_0, w8, 7, 96, x.reshape(1, 2, 96))),
        "x no tokens": ("x", lambda: native.matmul(pool, GGMLType.Q8_0, w8, 7, 96, x[:0])),
        "x list": ("x", lambda: native.matmul(pool, GGMLType.Q8_0, w8, 7, 96, x.tolist())),
        "w one byte short": ("w", lambda: native.matmul(pool, GGMLType.Q8_0, w8.reshape(-1)[:-1], 7, 96, x)),
        "w of another type": ("w", lambda: native.matmul(pool, GGMLType.Q8_0, w4, 7, 96, x)),
        "w non-contiguous": ("w", lambda: native.matmul(pool, GGMLType.Q8_0, wide[:, ::2], 7, 96, x)),
        "w wrong n_out": ("w", lambda: native.matmul(pool, GGMLType.Q8_0, w8, 8, 96, x)),
        "w bytes": ("w", lambda: native.matmul(pool, GGMLType.Q8_0, w8.tobytes(), 7, 96, x)),
        "Q4_0 n_in % 32": ("n_in", lambda: native.matmul(pool, GGMLType.Q4_0, w4, 7, 33, x[:, :33].copy())),
        "n_in 0": ("n_in", lambda: native.matmul(pool, GGMLType.F32, wf, 7, 0, x)),
        "n_out -1": ("n_out", lambda: native.matmul(pool, GGMLType.F32, wf, -1, 37, x)),
        "n_out float": ("n_out", lambda: native.matmul(pool, GGMLType.F32, wf, 7.0, 37, x)),
        "wtype 4": ("wtype", lambda: native.matmul(pool, 4, w8, 7, 96, x)),
        "wtype str": ("wtype", lambda: native.matmul(pool, "Q8_0", w8, 7, 96, x)),
        "wtype bool": ("wtype", lambda: native.matmul(pool, True, w8, 7, 96, x)),
        "out float64": ("out", lambda: native.matmul(pool, GGMLType.Q8_0, w8, 7, 96, x, out=out.astype(np.float64))),
        "out shape": ("out", lambda: native.matmul(pool, GGMLType.Q8_0, w8, 7, 96, x, out=out[:1])),
        "out 1-D for 2 tokens": ("out", lambda: native.matmul(pool, GGMLType.Q8_0, w8, 7, 96, x, out=out[0])),
        "out read-only": ("out", lambda: native.matmul(pool, GGMLType.Q8_0, w8, 7, 96, x, out=readonly)),
        "out non-contiguous": ("out", lambda: native.matmul(pool, GGMLType.Q8_0, w8, 7, 96, x,
                                                             out=np.zeros((7, 2), np.float32).T)),
        "out overlaps x": ("out", lambda: native.matmul(pool, GGMLType.F32, w7, 7, 7, out, out=out)),
        "pool closed": ("pool", lambda: native.matmul(closed, GGMLType.Q8_0, w8, 7, 96, x)),
        "pool None": ("pool", lambda: native.matmul(None, GGMLType.Q8_0, w8, 7, 96, x)),
    }


@pytest.mark.parametrize("case", list(_bad_matmul_calls(None)))
def test_matmul_bad_argument_raises_valueerror(pools, no_kernels, case):
    name, call = _bad_matmul_calls(pools[1])[case]
    with pytest.raises(ValueError, match=name):
        call()


def test_get_rows_bad_arguments(no_kernels):
    w, _ = weights(GGMLType.Q8_0, 7, 96)
    rows = np.array([1, 2], np.int64)
    bad = {
        "rows": [rows.astype(np.int32), rows.reshape(1, 2), rows[:0], [1, 2], np.zeros(4, np.int64)[::2]],
        "out": [np.zeros((2, 95), np.float32), np.zeros((2, 96), np.float64)],
    }
    for name, values in bad.items():
        for v in values:
            args = (rows, v) if name == "out" else (v, None)
            with pytest.raises(ValueError, match=name):
                native.get_rows(GGMLType.Q8_0, w, 7, 96, *args)
    with pytest.raises(ValueError, match="w"):
        native.get_rows(GGMLType.Q8_0, w, 8, 96, rows)
    with pytest.raises(ValueError, match="n_in"):
        native.get_rows(GGMLType.Q4_0, w, 7, 40, rows)


def test_get_rows_index_out_of_range_is_native_error():
    w, _ = weights(GGMLType.Q8_0, 7, 96)
    out = np.zeros((2, 96), np.float32)
    for bad in (7, -1):
        with pytest.raises(native.NativeError, match="out of range"):
            native.get_rows(GGMLType.Q8_0, w, 7, 96, np.array([0, bad], np.int64), out=out)
        assert not out.any()  # nothing written before the check failed


def test_row_bytes_and_simd_path():
    assert native.row_bytes(GGMLType.F32, 5) == 20
    assert native.row_bytes(GGMLType.F16, 5) == 10
    assert native.row_bytes(GGMLType.Q4_0, 576) == 18 * 18
    assert native.row_bytes(GGMLType.Q8_0, 64) == 68
    for wtype, n in ((GGMLType.Q4_0, 33), (GGMLType.Q8_0, 16)):
        with pytest.raises(ValueError, match="n_in"):
            native.row_bytes(wtype, n)
    with pytest.raises(ValueError, match="n"):
        native.row_bytes(GGMLType.F32, 0)
    assert native.simd_path() in ("scalar", "avx2", "avxvnni", "avx512", "avx512vnni", "neon", "neondot")


# ---- the raw C functions: bad sizes give a status, never a crash --------------------------------------------
def test_raw_c_calls_return_error_status(pools):
    lib, ffi = native._load(), native.ffi
    w = np.zeros(34 * 8, np.uint8)
    x = np.zeros(64, np.float32)
    y = np.zeros(64, np.float32)
    rows = np.array([0, 9], np.int64)
    pw, px, py = ffi.from_buffer(w), ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", y)
    pr = ffi.from_buffer("int64_t[]", rows)
    pool = pools[2]._ptr
    huge = 1 << 62
    calls = {
        "valid": (lib.RS_OK, lambda: lib.rs_matmul(pool, 8, pw, 2, 64, px, 1, py)),
        "NULL pool": (lib.RS_ERR_NULL, lambda: lib.rs_matmul(ffi.NULL, 8, pw, 2, 64, px, 1, py)),
        "NULL w": (lib.RS_ERR_NULL, lambda: lib.rs_matmul(pool, 8, ffi.NULL, 2, 64, px, 1, py)),
        "NULL y": (lib.RS_ERR_NULL, lambda: lib.rs_matmul(pool, 8, pw, 2, 64, px, 1, ffi.NULL)),
        "type 5": (lib.RS_ERR_TYPE, lambda: lib.rs_matmul(pool, 5, pw, 2, 64, px, 1, py)),
        "Q4_0 n_in 33": (lib.RS_ERR_SHAPE, lambda: lib.rs_matmul(pool, 2, pw, 2, 33, px, 1, py)),
        "n_out 0": (lib.RS_ERR_SHAPE, lambda: lib.rs_matmul(pool, 8, pw, 0, 64, px, 1, py)),
        "n_in -32": (lib.RS_ERR_SHAPE, lambda: lib.rs_matmul(pool, 8, pw, 2, -32, px, 1, py)),
        "n_tok 0": (lib.RS_ERR_SHAPE, lambda: lib.rs_matmul(pool, 8, pw, 2, 64, px, 0, py)),
        "n_out * row_bytes overflows": (lib.RS_ERR_SHAPE, lambda: lib.rs_matmul(pool, 8, pw, huge, 64, px, 1, py)),
        "n_tok * n_in overflows": (lib.RS_ERR_SHAPE, lambda: lib.rs_matmul(pool, 0, pw, 1, 8, px, huge, py)),
        "misaligned w": (lib.RS_ERR_ALIGN, lambda: lib.rs_matmul(pool, 0, pw + 2, 1, 8, px, 1, py)),
        "get_rows index": (lib.RS_ERR_INDEX, lambda: lib.rs_get_rows(8, pw, 8, 32, pr, 2, py)),
        "get_rows n 0": (lib.RS_ERR_SHAPE, lambda: lib.rs_get_rows(8, pw, 8, 32, pr, 0, py)),
        "get_rows n_in 33": (lib.RS_ERR_SHAPE, lambda: lib.rs_get_rows(8, pw, 8, 33, pr, 1, py)),
        "get_rows NULL out": (lib.RS_ERR_NULL, lambda: lib.rs_get_rows(8, pw, 8, 32, pr, 1, ffi.NULL)),
    }
    got = {name: call() for name, (_, call) in calls.items()}
    assert got == {name: want for name, (want, _) in calls.items()}
    assert lib.rs_row_bytes(2, 33) == -1 and lib.rs_row_bytes(9, 32) == -1
    assert lib.rs_pool_create(0) == ffi.NULL and lib.rs_pool_create(lib.RS_MAX_THREADS + 1) == ffi.NULL
    for status in range(-8, 2):
        assert ffi.string(lib.rs_strerror(status))


def test_cdef_mirrors_header():
    """Every function and enum value the header declares is in the binding, with the same signature."""

    def norm(decls: str) -> set[str]:
        decls = re.sub(r"^\s*#.*$", "", decls, flags=re.M)  # preprocessor lines
        return {re.sub(r"\s+", " ", d).replace("( ", "(").strip() for d in decls.split(";") if "(" in d}

    header = HEADER.read_text()
    public = " ".join(m for m in re.findall(r"^RS_API\s+(.*?;)", header, re.S | re.M))
    assert norm(public) and norm(public) <= norm(native.CDEF)
    for name, value in re.findall(r"\b(RS_(?:TYPE|OK|ERR)\w*)\s*=\s*(-?\d+)", header):
        assert getattr(native._load(), name) == int(value), name
    assert int(re.search(r"#define RS_MAX_THREADS (\d+)", header).group(1)) == native._load().RS_MAX_THREADS

    def structs(decls: str) -> dict[str, str]:
        decls = re.sub(r"/\*.*?\*/", "", decls, flags=re.S)
        return {name: re.sub(r"\s+", " ", body).strip()
                for body, name in re.findall(r"typedef struct \w+ \{(.*?)\} (\w+);", decls, re.S)}

    assert structs(header) == structs(native.CDEF)  # the same fields in the same order: the same layout


# ---- Pool and loader ----------------------------------------------------------------------------------------
def test_pool_lifecycle():
    with native.Pool(3) as p:
        assert p.n_threads == 3 and not p.closed
        assert native._load().rs_pool_n_threads(p._ptr) == 3
    assert p.closed
    p.close()  # twice is fine
    q = native.Pool(2)
    finalizer = q._free
    del q
    assert not finalizer.alive  # freed when garbage-collected
    for bad in (0, -1, 257, 1.5, "2", None):
        with pytest.raises(ValueError, match="n_threads"):
            native.Pool(bad)


def test_loader_lists_every_path_tried(monkeypatch, tmp_path):
    garbage = tmp_path / "librsparse.so"
    garbage.write_bytes(b"not a shared library")
    missing = tmp_path / "nowhere" / "librsparse.so"
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "candidate_paths", lambda: [missing, garbage])
    with pytest.raises(native.NativeError) as e:
        native.simd_path()
    assert str(missing) in str(e.value) and str(garbage) in str(e.value)


def test_loader_search_order(monkeypatch, tmp_path):
    monkeypatch.setenv(native.ENV_LIB, str(tmp_path / "mine.so"))
    paths = native.candidate_paths()
    package = Path(native.__file__).resolve().parent
    assert paths[0] == tmp_path / "mine.so"
    assert paths[1] == package / "lib" / "librsparse.so"
    assert paths[2] == package / "lib" / "librsparse.dylib"
