"""The float64 reference shared by the native kernel tests (test_native_matmul.py, test_native_sparse.py).

Weights are quantized and dequantized with gguf-py (llama.cpp's own Python code), so the reference shares no code
with the kernels; products are then taken in float64. F32 and F16 weights multiply float32 activations, so they agree
with the reference to float rounding: |y - ref| <= 1e-5 * (|W| @ |x|), the bound used throughout, and so does every
F32, F16 and Q8_0 prompt (the float GEMM of native/src/gemm.c). The dense Q8_0 and Q4_0 decode kernels, and Q4_0
prompts, round the activations to int8 per block of 32, as llama.cpp does (native/src/kernels.h); their bound
adds |W| @ (half a step per activation), a step being the block's largest |x| / 127. The sparse Q8_0 and Q4_0
kernels (every path: native/src/sparse_int8.h) round each group of kept rows' coefficients x_j * d_j to int8, on
one scale per chunk of 4 blocks of outputs; their bound adds, per output, half a step (the largest kept coefficient
of its chunk of 16 / 127: no smaller than that of the chunk of 4 within it) times sum |q| over the kept rows
(coefficient_steps).
"""
from __future__ import annotations

import numpy as np
import gguf

from rsparse_cpp.constants import BLOCK, GGMLType

# every quantized type, by gguf-py's name; gguf-py quantizes all but the K types (random_k_blocks makes those)
QUANT = {t: gguf.GGMLQuantizationType(int(t)) for t in GGMLType if t not in (GGMLType.F32, GGMLType.F16)}
K_TYPES = (GGMLType.Q4_K, GGMLType.Q5_K, GGMLType.Q6_K)
SMOLLM2 = [(576, 576), (192, 576), (1536, 576), (576, 1536)]  # (n_out, n_in): q/o, k/v, gate/up, down
REL = 1e-5  # float32 rounding over a few thousand terms, with room to spare
# the dense decode kernels of these round activations to int8: every quantized type
INT8_ACT = tuple(t for t in QUANT if t != GGMLType.BF16)
COEF_BLOCKS = 16  # blocks of outputs per chunk in the bound: the int16 kernels' chunk, a multiple of RS_I8_CHUNK (4)
COEF_LEVELS = 127  # the sparse kernels' coefficients are int8: |k| <= 127 (native/src/sparse_int8.h)


def stored(w: np.ndarray, wtype: GGMLType) -> tuple[np.ndarray, np.ndarray]:
    """(w as the runtime stores it in wtype, contiguous and read-only like a view into the mmap; the values it
    holds, in float64). Rows are quantized along their last axis, as GGUF does."""
    if wtype == GGMLType.F32:
        out, ref = np.ascontiguousarray(w, np.float32), w.astype(np.float64)
    elif wtype == GGMLType.F16:
        out = w.astype(np.float16)
        ref = out.astype(np.float64)
    elif wtype in K_TYPES:
        out = random_k_blocks(wtype, w.shape, seed=int(np.abs(w).sum() * 1000) % 2**32)
        ref = gguf.quants.dequantize(out, QUANT[wtype]).astype(np.float64)
    else:
        out = gguf.quants.quantize(np.ascontiguousarray(w, np.float32), QUANT[wtype])
        ref = gguf.quants.dequantize(out, QUANT[wtype]).astype(np.float64)
    out = np.ascontiguousarray(out)
    out.flags.writeable = False
    return out, ref


def random_k_blocks(wtype: GGMLType, shape: tuple[int, int], seed: int) -> np.ndarray:
    """Rows of random K-type super-blocks (gguf-py dequantizes these types but does not quantize them): every byte
    random but the binary16 scales, set so that the values are of order one (Q4_K/Q5_K: d and dmin, the first four
    bytes; Q6_K: d, the last two)."""
    rng = np.random.default_rng(seed)
    block, nbytes = BLOCK[wtype]
    raw = rng.integers(0, 256, (*shape[:-1], shape[-1] // block, nbytes), dtype=np.uint8)
    scales = lambda lo, hi, n: rng.uniform(lo, hi, (*raw.shape[:-1], n)).astype(np.float16).view(np.uint8)  # noqa
    if wtype == GGMLType.Q6_K:
        raw[..., 208:210] = scales(-0.004, 0.004, 1)
    else:
        raw[..., 0:4] = scales(0.0005, 0.004, 2)
    return raw.reshape(*shape[:-1], -1)


def random_weights(wtype: GGMLType, shape: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard normal weights of `shape` (rows, row length), stored as wtype: (stored, float64 values)."""
    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return stored(w, wtype)


def half_steps(x: np.ndarray) -> np.ndarray:
    """Per activation, half the int8 step of its block of 32 (the most rounding moves it), with room for the float
    rounding of the scale (1e-4 of a half step: the stored scale is off by 2^-24 of itself, which moves each of up
    to 127 steps' worth of activation by 127 * 2^-24 < 1e-5 of a step)."""
    x64 = np.abs(x.astype(np.float64))
    amax = x64.reshape(*x64.shape[:-1], -1, 32).max(axis=-1)
    return np.repeat(0.5001 * amax / 127.0, 32, axis=-1)


def int8_blocks(x: np.ndarray) -> np.ndarray:
    """x (float32, last axis a multiple of 32) as the dense Q8_0 and Q4_0 kernels see it (native/src/quant.h,
    rs_quantize_act): each block of 32 rounded to nearest even on the step d = max |x| / 127 (in float64), d then
    kept in float32; the rounded values q * d, in float32. For references that model the kernels' activations."""
    b = x.astype(np.float64).reshape(*x.shape[:-1], -1, 32)
    amax = np.abs(b).max(axis=-1, keepdims=True)
    q = np.round(b * (127.0 / np.where(amax > 0, amax, 1.0)))  # np.round rounds halves to even
    return (q * (amax / 127.0).astype(np.float32)).reshape(x.shape).astype(np.float32)


def block_scales(stored_w: np.ndarray, wtype: GGMLType, n_cols: int) -> np.ndarray:
    """Each block's scale d (float64, (rows, n_cols / 32)) of Q8_0 or Q4_0 weights as stored (binary16 first in
    every block of 34 or 18 bytes)."""
    nbytes = {GGMLType.Q8_0: 34, GGMLType.Q4_0: 18}[wtype]
    raw = np.ascontiguousarray(stored_w).view(np.uint8).reshape(-1, n_cols // 32, nbytes)
    return raw[..., :2].copy().view(np.float16)[..., 0].astype(np.float64)


def coefficient_steps(w64: np.ndarray, d: np.ndarray, x: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The bound the sparse quantized kernels' int8 coefficients add, per output: W (n_out, n_in) float64, d
    (n_in, n_out / 32) the input-major blocks' scales, x the activations, kept the mask. The kernels share one scale
    per chunk of 16 blocks (int16) or 4 (int8), which the chunks of 16 (blocks 16c .. 16c + 15 of the row) hold
    whole: for output o in chunk c,
    0.5 * max |x_j d_jb| / 127 * sum_j |q_jo|, the max over kept j and blocks b of c, with |q_jo| = |W_oj| / |d_jb|."""
    if not kept.any():
        return np.zeros(w64.shape[0])
    dk = np.abs(d[kept])                                  # (n_kept, n_blocks); Q4_0's d may be negative
    amax = (np.abs(x.astype(np.float64)[kept])[:, None] * dk).max(axis=0)
    n_blocks = amax.size
    chunk = np.maximum.reduceat(amax, np.arange(0, n_blocks, COEF_BLOCKS))
    step = 0.5001 * np.repeat(chunk, COEF_BLOCKS)[:n_blocks] / COEF_LEVELS
    q = np.abs(w64[:, kept]) / np.repeat(np.where(dk > 0, dk, np.inf), 32, axis=1).T
    return np.repeat(step, 32) * q.sum(axis=1)


def matmul_reference(w64: np.ndarray, x: np.ndarray, int8_act: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(x W^T in float64, its rounding bound) for W (n_out, n_in) in float64 and x (..., n_in) float32;
    int8_act: the kernel rounds x to int8 blocks (dense Q8_0 and Q4_0 decode)."""
    x64 = x.astype(np.float64)
    bound = REL * (np.abs(x64) @ np.abs(w64).T) + 1e-30
    if int8_act:
        bound = bound + half_steps(x) @ np.abs(w64).T
    return x64 @ w64.T, bound


def int8_act(wtype: GGMLType, n_tok: int) -> bool:
    """Whether a dense product from the base's layout rounds the activations to int8: decode of Q8_0 and Q4_0, and
    Q4_0's prompts too (gemm.c's integer tile)."""
    return wtype in INT8_ACT and (n_tok == 1 or wtype == GGMLType.Q4_0)


def requant7(w64: np.ndarray) -> np.ndarray:
    """W (n_out, n_in, float32 values in float64) as a Q4_0 prompt from the companion's layout multiplies it
    (native/src/gemm.c, ipack_wt): each output's blocks of 32 inputs rounded to nearest even on 7 bits, with the
    scale m / 63 (m the block's largest |w|), in float32 as the kernels compute it."""
    v = w64.astype(np.float32).reshape(w64.shape[0], -1, 32)
    m = np.abs(v).max(axis=-1, keepdims=True)
    q = np.rint(v * (np.float32(63) / np.maximum(m, np.float32(1e-30))))
    return (q.astype(np.float64) * (m / np.float32(63)).astype(np.float64)).reshape(w64.shape)


def wt_reference(wt64: np.ndarray, x: np.ndarray, wtype: GGMLType) -> tuple[np.ndarray, np.ndarray]:
    """matmul_reference for the companion's layout (matmul_wt), wt (n_in, n_out) in float64: floats all through,
    but Q4_0 with n_in a multiple of 32 runs gemm.c's integer tile, on requant7's weights and int8 activations."""
    if wtype == GGMLType.Q4_0 and wt64.shape[0] % 32 == 0:
        return matmul_reference(requant7(wt64.T), x, int8_act=True)
    return matmul_reference(wt64.T, x)


def assert_within(y: np.ndarray, want: np.ndarray, bound: np.ndarray, what: str = "") -> None:
    """|y - want| <= bound everywhere; the message names the worst element relative to its bound."""
    err = np.abs(y.astype(np.float64) - want)
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(err <= bound), f"{what} at {worst}: got {y[worst]}, want {want[worst]} (bound {bound[worst]})"
