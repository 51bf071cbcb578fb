"""Teacher-forced perplexity of the runtime, as the converter's reference (converter/perplexity.py) defines it.

    strict  every token sparse: each window runs token by token through the decode path, every prediction scored
    paper   the paper's protocol: the first 90% of each window is a dense prefill, the last 10% are sparse decode
            steps that attend to it; only the predictions made at those positions are scored
    dense   `model.sparse_enabled = False` first: the same positions, every linear dense

A window of n tokens scores the predictions made at positions [first, n - 1) of tokens [first + 1, n).
"""
from __future__ import annotations

import math

import numpy as np

from .model import Model

PROTOCOLS = ("strict", "paper")
PAPER_FRACTION = 0.1


def paper_start(n_pos: int, fraction: float = PAPER_FRACTION) -> int:
    """First sparse (and scored) position of a window under the paper's protocol."""
    return n_pos - max(1, int(round(n_pos * fraction)))


def _nll(logits: np.ndarray, target: int) -> float:
    m = float(logits.max())
    return m + math.log(float(np.exp(logits - m).sum())) - float(logits[target])


def window_nll(model: Model, tokens, protocol: str = "strict") -> tuple[float, int]:
    """(sum of negative log-likelihoods, predictions scored) for one window, from an empty KV cache."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: choose one of {PROTOCOLS}")
    tokens = [int(t) for t in tokens]
    n = len(tokens)
    if n < 2:
        raise ValueError(f"a window needs at least 2 tokens, got {n}")
    first = paper_start(n) if protocol == "paper" else 0
    model.reset()
    if first:
        saved, model.sparse_enabled = model.sparse_enabled, False  # the paper's dense prefix
        try:
            model.forward(tokens[:first])
        finally:
            model.sparse_enabled = saved
    total = 0.0
    for i in range(first, n - 1):  # one decode step per scored position: sparse when the model is
        total += _nll(model.forward(tokens[i:i + 1]), tokens[i + 1])
    return total, n - 1 - first


def perplexity(model: Model, windows, protocol: str = "strict") -> float:
    """exp(mean NLL) over `windows` (a sequence of token-id sequences)."""
    total = count = 0
    for w in windows:
        t, c = window_nll(model, w, protocol)
        total, count = total + t, count + c
    return math.exp(total / count)
