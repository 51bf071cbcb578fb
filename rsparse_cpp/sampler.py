"""Sampling: a pure function of the logits, the parameters, the recent tokens and a seeded RNG.

The order follows llama.cpp's default chain as llama-cpp-python sets it up: repeat penalty, top-k, top-p, min-p,
then temperature, then a draw. Temperature <= 0 is greedy argmax (after the repeat penalty).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40  # <= 0: no limit (llama.cpp's convention; -1 is common)
    top_p: float = 0.95  # 1.0: off
    min_p: float = 0.05  # 0.0: off
    repeat_penalty: float = 1.0  # 1.0: off
    repeat_last_n: int = 64  # how many recent tokens the penalty looks at

    def __post_init__(self):
        real = lambda v: isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)  # noqa: E731
        count = lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0  # noqa: E731
        checks = {  # name -> (valid, what a valid value is); comparisons with NaN are False, so NaN fails
            "temperature": (real(self.temperature) and math.isfinite(self.temperature) and self.temperature >= 0,
                            "a finite number >= 0 (0: greedy)"),
            "top_k": (isinstance(self.top_k, (int, np.integer)) and not isinstance(self.top_k, bool),
                      "an int (<= 0: no limit)"),
            "top_p": (real(self.top_p) and 0.0 < self.top_p <= 1.0, "in (0, 1] (1: off)"),
            "min_p": (real(self.min_p) and 0.0 <= self.min_p <= 1.0, "in [0, 1] (0: off)"),
            "repeat_penalty": (real(self.repeat_penalty) and math.isfinite(self.repeat_penalty)
                               and self.repeat_penalty > 0, "a finite number > 0 (1: off)"),
            "repeat_last_n": (count(self.repeat_last_n), "an int >= 0"),
        }
        for name, (ok, valid) in checks.items():
            if not ok:
                raise ValueError(f"invalid sampling parameter {name}={getattr(self, name)!r}: must be {valid}")


def apply_repeat_penalty(logits: np.ndarray, recent: list[int], penalty: float) -> np.ndarray:
    """CTRL-style penalty as llama.cpp applies it: positive logits divided, negative ones multiplied."""
    if penalty == 1.0 or not recent:
        return logits
    logits = logits.copy()
    ids = np.unique(np.asarray(recent, dtype=np.int64))
    vals = logits[ids]
    logits[ids] = np.where(vals > 0, vals / penalty, vals * penalty)
    return logits


def sample(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator,
           recent: list[int] | None = None) -> int:
    """Pick the next token id from (n_vocab,) logits."""
    if params.repeat_last_n and recent:
        logits = apply_repeat_penalty(logits, recent[-params.repeat_last_n:], params.repeat_penalty)
    if params.temperature <= 0:
        return int(np.argmax(logits))

    n = logits.shape[0]
    if 0 < params.top_k < n:
        idx = np.argpartition(-logits, params.top_k - 1)[:params.top_k]
    else:
        idx = np.arange(n)
    idx = idx[np.argsort(-logits[idx], kind="stable")]  # candidates, most likely first
    cand = logits[idx].astype(np.float64)

    probs = np.exp(cand - cand[0])
    probs /= probs.sum()
    keep = len(idx)
    if params.top_p < 1.0:  # smallest prefix whose mass reaches top_p
        keep = min(keep, int(np.searchsorted(np.cumsum(probs), params.top_p)) + 1)
    if params.min_p > 0.0:  # drop tokens less likely than min_p times the best one
        keep = min(keep, max(1, int(np.count_nonzero(probs >= params.min_p * probs[0]))))
    idx, cand = idx[:keep], cand[:keep]

    scaled = (cand - cand[0]) / params.temperature
    p = np.exp(scaled)
    p /= p.sum()
    return int(idx[rng.choice(keep, p=p)])
