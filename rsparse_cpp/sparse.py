"""The R-Sparse decode path: every decoder-block linear of a Model bound to the native rank-aware kernel.

For one decoded token each linear y = W x runs as (R-Sparse, Eq. 4)
    score = |x| * colnorm   (|x| where rho == 1)      m = score > tau
    y     = W[:, m] x[m] + U_r (S_r V_r^T ((1 - m) * x))
reading only the kept channels' rows of the companion's input-channel-major weights, plus the low-rank factors.
The binding is made once per Model (its run-state buffers never move), so a token costs one native call per linear.
Each call also reports how many channels it kept; `SparseDecode` sums them into the measured kept fraction.
"""
from __future__ import annotations

import numpy as np

from . import native
from .companion import Companion
from .constants import LINEARS


class KeptStats:
    """Kept-channel counters of the n_layer x 7 sparse linears of one model, and the statistics drawn from them.
    The kernel writes each call's count into n_kept[slot]; end_token adds a token's counts to the totals."""

    def __init__(self, lins: list):
        self.n_kept = np.zeros(len(lins), np.int64)  # written by the kernel, per call
        self.kept_total = np.zeros_like(self.n_kept)  # summed over sparse tokens since reset_stats()
        self.tokens = 0
        self._n_out = np.array([c.n_out for c in lins], np.int64)
        self._n_in = np.array([c.n_in for c in lins], np.int64)
        self._rank = np.array([c.rank for c in lins], np.int64)

    def end_token(self) -> None:
        """Called once per sparse token, after its forward pass: accumulate the kept counts."""
        self.kept_total += self.n_kept
        self.tokens += 1

    def reset_stats(self) -> None:
        self.kept_total[:] = 0
        self.tokens = 0

    def kept_fraction(self) -> np.ndarray:
        """(n_layer, 7): mean fraction of input channels kept per sparse token, per linear."""
        frac = self.kept_total / max(self.tokens, 1) / self._n_in
        return frac.reshape(-1, len(LINEARS))

    def read_fraction(self) -> float:
        """Fraction of the decoder-block linear parameters read per sparse token: kept rows plus the low-rank
        factors, as the converter counts it (1 - this = the measured model-level sparsity)."""
        per_token = self.kept_total / max(self.tokens, 1)
        read = (per_token * self._n_out + self._rank * (self._n_in + self._n_out)).sum()
        return float(read / (self._n_in * self._n_out).sum())


class SparseDecode(KeptStats):
    """Bound R-Sparse calls for all n_layer x 7 linears, their kept-channel counters and per-token statistics.

    `io[name]` gives, for each linear, the (input, output) run-state rows it reads and writes at batch 1."""

    def __init__(self, companion: Companion, pool: native.Pool, io: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.companion = companion
        n_layer = companion.n_layer
        lins = [companion.linear(b, name) for b in range(n_layer) for name in LINEARS]
        super().__init__(lins)
        need = max(native.sparse_scratch_bytes(c.n_in, c.rank) for c in lins)
        self._scratch = np.zeros((need + 3) // 4, np.float32)  # one scratch for all: calls run one at a time
        self.calls: list[dict[str, native.Bound]] = []
        for b in range(n_layer):
            layer = {}
            for i, name in enumerate(LINEARS):
                c = companion.linear(b, name)
                x, y = io[name]
                colnorm = None if c.rho >= 1.0 else c.colnorm  # rho = 1: plain magnitude score |x|
                layer[name] = native.bind_rsparse_matvec(
                    pool, c.weight_type, c.weight, c.n_out, c.n_in, colnorm, c.tau, c.u, c.vs, x, y,
                    self._scratch, self.n_kept, b * len(LINEARS) + i)
            self.calls.append(layer)
