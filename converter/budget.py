"""Budget arithmetic: how many input channels a linear keeps and which rank its low-rank path gets.

Model-level sparsity s is the fraction of decoder-block linear weight parameters *not* read per decoded token.
A linear y = W x with W (out, in) reads `keep * out` parameters on its sparse path (the kept columns of W) and
`rank * (in + out)` on its low-rank path (U_r and V_r S_r). Each linear gets the budget C = 1 - s of its own
in * out parameters, split by rho (R-Sparse, Sec. 4):
    keep = in * C * rho                          (exact channels)
    rank = (1 - rho) * C * in * out / (in + out) (what is left, spent on factors)
so every linear, and therefore the model, reads a fraction C of its weights whatever rho is. rho = 1 is plain
magnitude sparsity (the TEAL-like baseline).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rsparse_cpp.constants import LINEARS


@dataclass(frozen=True)
class LinearShape:
    name: str  # one of LINEARS
    out: int
    in_: int


def block_shapes(n_embd: int, n_head: int, n_head_kv: int, head_dim: int, n_ff: int) -> tuple[LinearShape, ...]:
    """The seven linears of one decoder block with their true (out, in): GQA makes attn_k/attn_v narrower."""
    q, kv = n_head * head_dim, n_head_kv * head_dim
    dims = {"attn_q": (q, n_embd), "attn_k": (kv, n_embd), "attn_v": (kv, n_embd), "attn_output": (n_embd, q),
            "ffn_gate": (n_ff, n_embd), "ffn_up": (n_ff, n_embd), "ffn_down": (n_embd, n_ff)}
    return tuple(LinearShape(name, *dims[name]) for name in LINEARS)


def shapes_from_config(hp) -> tuple[LinearShape, ...]:
    """Same, from an HF config (dict or transformers config object)."""
    get = hp.get if isinstance(hp, dict) else (lambda k, d=None: getattr(hp, k, d))
    n_embd, n_head = get("hidden_size"), get("num_attention_heads")
    return block_shapes(n_embd, n_head, get("num_key_value_heads") or n_head,
                        get("head_dim") or n_embd // n_head, get("intermediate_size"))


def keep_count(in_: int, sparsity: float, rho: float) -> int:
    """Nominal kept input channels: in * C * rho, C = 1 - sparsity."""
    check(sparsity, rho)
    return min(in_, round(in_ * (1.0 - sparsity) * rho))


def rank_for(in_: int, out: int, sparsity: float, rho: float) -> int:
    """Rank of the low-rank path, (1 - rho) * C * in * out / (in + out), rounded down so the budget is never
    exceeded, and at most min(in, out). A small epsilon absorbs float error in (1 - rho) for grid values."""
    check(sparsity, rho)
    r = math.floor((1.0 - rho) * (1.0 - sparsity) * in_ * out / (in_ + out) + 1e-9)
    return max(0, min(r, in_, out))


def params_read(shape: LinearShape, keep: int, rank: int) -> int:
    return keep * shape.out + rank * (shape.in_ + shape.out)


def model_sparsity(shapes: tuple[LinearShape, ...], n_layer: int, sparsity, rho) -> float:
    """Model-level sparsity actually planned: 1 - (parameters read) / (all block-linear parameters).
    `sparsity` and `rho` are floats (uniform) or (n_layer, 7) nested sequences (per linear)."""
    read = total = 0
    for b in range(n_layer):
        for i, s in enumerate(shapes):
            r = rho if isinstance(rho, (int, float)) else rho[b][i]
            sp = sparsity if isinstance(sparsity, (int, float)) else float(sparsity[b][i])
            read += params_read(s, keep_count(s.in_, sp, r), rank_for(s.in_, s.out, sp, r))
            total += s.in_ * s.out
    return 1.0 - read / total


def per_linear(sparsity, n_layer: int) -> np.ndarray:
    """The (n_layer, 7) sparsity of every linear: a model-level float (every linear the same, the paper's budget)
    or an allocation (converter/allocate.py), checked."""
    s = np.broadcast_to(np.asarray(sparsity, dtype=np.float64), (n_layer, len(LINEARS))).copy()
    if not np.all((s >= 0.0) & (s < 1.0)):  # NaN fails this too
        raise ValueError(f"per-linear sparsity must lie in [0, 1): got {s.min()} .. {s.max()}")
    return s


def check(sparsity: float, rho: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity {sparsity!r} must be in [0, 1)")
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho {rho!r} must be in [0, 1]")
