"""The R-Sparse decode path: every decoder-block linear of a Model bound to the native rank-aware kernel.

For one decoded token each linear y = W x runs as (R-Sparse, Eq. 4)
    score = |x| * colnorm   (|x| where rho == 1, unless rsparse.score is abs_x_colnorm_all)   m = score > tau
    y     = W[:, m] x[m] + U_r (S_r V_r^T ((1 - m) * x))
reading only the kept channels' rows of the companion's input-channel-major weights, plus the low-rank factors.
rs_forward (model.py) runs them all in one native call per token; each linear reports how many channels it kept,
and `SparseDecode` sums those counts into the measured kept fraction.
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
    """The companion's R-Sparse form of all n_layer x 7 linears, as rs_forward takes them, with the kept-channel
    counters it writes and their per-token statistics, and the scratch the sparse linears share (three at a time)."""

    def __init__(self, companion: Companion):
        self.companion = companion
        lins = [companion.linear(b, name) for b in range(companion.n_layer) for name in LINEARS]
        super().__init__(lins)
        need = native.forward_scratch_bytes(max(native.sparse_scratch_bytes(c.n_in, c.rank) for c in lins))
        self.scratch = np.zeros(need // 4, np.float32)

    def linear_args(self, bid: int, name: str) -> tuple:
        """(wtype, wt, colnorm, tau, U, VS) of one linear: rs_sparse_matvec's weights and threshold."""
        c = self.companion.linear(bid, name)
        colnorm = c.colnorm if c.weighted else None  # else the plain magnitude score |x|
        return c.weight_type, c.weight, colnorm, c.tau, c.u, c.vs
