"""Calibration: text, dense activations at every linear's input, tau quantiles, column norms, float64 SVDs, and the
`Plan` (tau, rho, factors of every linear) they produce.

Text: `pydoc_data.topics`, the help texts shipped inside every CPython (about 460 k characters of English prose
and code). Nothing is downloaded. Topics are split by position in sorted key order: every 4th topic is held out
for evaluation, the rest is calibration, so the two never share a sentence. Or the user's own text (--calib-file,
converter/calib_text.py), which then serves for calibration and validation both.

Activations are sampled, not stored whole: a fixed random subset of at most `max_tokens` calibration tokens
(seeded) is kept per input site, so memory is bounded by max_tokens * (3 n_embd + n_ff) floats per block whatever
the calibration size. attn_q/k/v share one input, ffn_gate/up another, so a block has four sites.
"""
from __future__ import annotations

import hashlib
import math
import sys
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from rsparse_cpp.constants import LINEARS

from .budget import keep_count, per_linear, rank_for
from .reference import SparseState, iter_linears, rsparse_linear

SITE = {"attn_q": "attn_in", "attn_k": "attn_in", "attn_v": "attn_in", "attn_output": "attn_output_in",
        "ffn_gate": "ffn_in", "ffn_up": "ffn_in", "ffn_down": "ffn_down_in"}
SPLITS = ("calibration", "evaluation")
# Ridge added to the dropped inputs' second-moment matrix, relative to its mean diagonal: with fewer calibration
# tokens than input channels (ffn_down) the matrix is singular; the ridge also pulls the fit towards plain SVD.
DATA_AWARE_RIDGE = 1e-2


# ---- text -----------------------------------------------------------------------------------------------------
def corpus_text(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split {split!r}: choose one of {SPLITS}")
    from pydoc_data.topics import topics

    keys = sorted(topics)
    held_out = split == "evaluation"
    return "\n\n".join(topics[k].strip() for i, k in enumerate(keys) if (i % 4 == 3) == held_out)


def corpus_provenance(split: str) -> tuple[str, str]:
    """(description, sha256 of the text): the text changes with the Python version, the hash says which."""
    text = corpus_text(split)
    desc = f"pydoc_data.topics of Python {sys.version.split()[0]}, split {split} (topic index % 4 {'==' if split == 'evaluation' else '!='} 3)"
    return desc, hashlib.sha256(text.encode()).hexdigest()


def load_tokenizer(hf_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(hf_dir))


def load_model(hf_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()


def token_windows(tokenizer, text: str, seq_len: int, n_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of `seq_len` tokens from the start of `text`: (n, seq_len) int64."""
    chars = len(text) if n_windows is None else n_windows * seq_len * 8
    while True:  # tokenize only as much text as the windows need (the corpus is ~100 k tokens)
        ids = tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
        if chars >= len(text) or len(ids) > n_windows * seq_len:
            break
        chars *= 2
    n = len(ids) // seq_len if n_windows is None else min(n_windows, len(ids) // seq_len)
    if n < 1:
        raise ValueError(f"text has {len(ids)} tokens, fewer than one window of {seq_len}")
    return torch.tensor(ids[:n * seq_len], dtype=torch.long).reshape(n, seq_len)


# ---- statistics -----------------------------------------------------------------------------------------------
def quantile_tau(score: torch.Tensor, keep_fraction: float) -> float:
    """tau such that a fraction `keep_fraction` of the scores is > tau (the (1 - keep) quantile).

    tau lies halfway between two distinct scores, the largest dropped and the smallest kept, never on a score. At
    the first block's input the activation depends on the token alone, so each (token, channel) score recurs
    exactly at every occurrence of the token, in calibration (runs of equal scores) and later in use. A tau equal
    to such a score is a tie that float32 rounding (ours against PyTorch's) decides, the same way for every
    occurrence. Measured on SmolLM2 at 50%: moving tau by 1e-6 relative moved held-out strict perplexity by 1%.
    When the quantile falls inside a run of equal scores, the whole run is kept or dropped, whichever lands
    nearer the target count."""
    flat = score.reshape(-1)  # order statistics are exact in the scores' own type; only the midpoint is float64
    n = flat.numel()
    n_drop = n - round(keep_fraction * n)
    if n_drop <= 0:
        return -1.0  # scores are >= 0: keep everything
    if n_drop >= n:
        return float(flat.max())
    below = float(torch.kthvalue(flat, n_drop).values)  # the largest dropped score
    above = float(torch.kthvalue(flat, n_drop + 1).values)  # the smallest kept one
    if below < above:
        return 0.5 * (below + above)
    v = below  # inside a run of equal scores: put tau just under it or just over it
    lower, higher = flat[flat < v], flat[flat > v]
    drop_under, drop_over = lower.numel(), n - higher.numel()  # scores dropped by either choice
    under = 0.5 * (float(lower.max()) + v) if drop_under else -1.0
    over = 0.5 * (v + float(higher.min())) if drop_over < n else v
    return under if abs(drop_under - n_drop) < abs(drop_over - n_drop) else over


def quantile_taus(score: torch.Tensor, keep_fractions) -> list[float]:
    """quantile_tau for several keep fractions of the same scores, from one sort (the allocation's error curves ask
    for twenty levels of every linear; one sort costs about five kthvalue pairs). Where the quantile falls between
    two distinct scores, the midpoint from the sorted scores; otherwise quantile_tau itself decides."""
    srt = score.reshape(-1).sort().values
    n = srt.numel()
    taus = []
    for keep in keep_fractions:
        n_drop = n - round(keep * n)
        if 0 < n_drop < n and srt[n_drop - 1] < srt[n_drop]:
            taus.append(0.5 * (float(srt[n_drop - 1]) + float(srt[n_drop])))
        else:  # keep all, drop all, or inside a run of equal scores: quantile_tau's rules
            taus.append(quantile_tau(score, keep))
    return taus


def svd_factors(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's factors: U_r (out, r) and S_r V_r^T (r, in), from a float64 SVD."""
    return u[:, :rank].float(), (s[:rank, None] * vh[:rank]).float()


def data_aware_factors(w: torch.Tensor, x_dropped: torch.Tensor, rank: int,
                       ridge: float = DATA_AWARE_RIDGE) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-r A B minimising sum_t ||W x_t - A B x_t||^2 over the dropped inputs x_t (rows of x_dropped).

    With M = E[x x^T] = L L^T the error is ||(W - A B) L||_F^2, minimised by A B = P_r P_r^T W where P_r are the
    top-r left singular vectors of W L (Eckart-Young on W L). So U = P_r and vs = P_r^T W: no inverse needed.
    P_r comes from an eigen-decomposition in the smaller of the two dimensions (at most 576 on SmolLM2 instead of
    an SVD of a 1536-wide matrix): W M W^T (out x out) when out <= in, else (W L)^T (W L) (in x in).
    """
    w64, x64 = w.double(), x_dropped.double()
    n = max(1, x64.shape[0])
    scale = float((x64 * x64).sum()) / n / w64.shape[1]  # mean diagonal of M
    if not scale > 0:  # nothing dropped on calibration data: fall back to the plain SVD of W
        u, s, vh = torch.linalg.svd(w64, full_matrices=False)
        return svd_factors(u, s, vh, rank)
    out, in_ = w64.shape
    if out <= in_:
        y = x64 @ w64.T  # (n, out)
        gram = y.T @ y / n + ridge * scale * (w64 @ w64.T)  # W (M + ridge I) W^T
        _, vecs = torch.linalg.eigh(gram)
        p = vecs[:, -rank:].flip(1)
    else:
        m = x64.T @ x64 / n
        m.diagonal().add_(ridge * scale)
        g = w64 @ torch.linalg.cholesky(m)  # (out, in)
        vals, vecs = torch.linalg.eigh(g.T @ g)
        q, sig = vecs[:, -rank:].flip(1), vals[-rank:].flip(0).clamp_min(1e-300).sqrt()
        p = g @ q / sig
    return p.float(), (p.T @ w64).float()


def _tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


class BoundedCache:
    """A dict that forgets its least recently used entries once their tensors pass `limit` bytes (one entry always
    stays). The search revisits the same (sparsity, rho) grid values, so a cache pays; unbounded, a process that
    builds many recipes kept every factor it ever made (a results run grew to 24 GB and was killed)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.bytes = 0
        self._d: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, key, make):
        if key in self._d:
            self._d.move_to_end(key)
            return self._d[key]
        value = make()
        self._d[key] = value
        self.bytes += _tensor_bytes(value)
        while self.bytes > self.limit and len(self._d) > 1:
            _, old = self._d.popitem(last=False)
            self.bytes -= _tensor_bytes(old)
        return value


class Calibration:
    """Dense-model statistics for every linear: sampled input activations, column norms, float64 SVDs (and the
    factors made from them), the last two in caches of at most `cache_bytes` each."""

    def __init__(self, model, windows: torch.Tensor, max_tokens: int = 2048, batch_size: int = 4, seed: int = 0,
                 progress: bool = False, cache_bytes: int = 2 << 30):
        self.model = model
        self.n_layer = len(model.model.layers)
        n_win, seq_len = windows.shape
        total = n_win * seq_len
        gen = torch.Generator().manual_seed(seed)
        pick = torch.randperm(total, generator=gen)[:max_tokens].sort().values if total > max_tokens else None
        self.n_tokens = total if pick is None else len(pick)
        self.seq_len = seq_len
        self.acts: dict[tuple[int, str], list[torch.Tensor] | torch.Tensor] = {}
        self._svd = BoundedCache(cache_bytes)
        self._cache = BoundedCache(cache_bytes)
        self.weights = {(b, n): m.weight.detach() for b, n, m in iter_linears(model)}
        self.colnorm = {k: w.double().norm(dim=0) for k, w in self.weights.items()}  # (in,) float64

        offset = [0]
        hooks = []
        for bid, name, module in iter_linears(model):
            if name not in ("attn_q", "attn_output", "ffn_gate", "ffn_down"):
                continue  # the other linears share these inputs
            key = (bid, SITE[name])
            self.acts[key] = []

            def hook(_mod, args, key=key):
                x = args[0].reshape(-1, args[0].shape[-1])
                if pick is not None:
                    lo = offset[0]
                    sel = pick[(pick >= lo) & (pick < lo + x.shape[0])] - lo
                    x = x[sel]
                self.acts[key].append(x.detach().float().clone())

            hooks.append(module.register_forward_pre_hook(hook))
        state = getattr(next(iter_linears(model))[2], "state", None)
        mode = state.mode if state else None
        if state:
            state.mode = "dense"
        try:
            from tqdm import tqdm

            with torch.no_grad():
                for i in tqdm(range(0, n_win, batch_size), desc="calibrate", disable=not progress, leave=False):
                    chunk = windows[i:i + batch_size]
                    model.model(chunk)  # the decoder only: no logits needed
                    offset[0] += chunk.numel()
        finally:
            for h in hooks:
                h.remove()
            if state:
                state.mode = mode
        self.acts = {k: torch.cat(v) for k, v in self.acts.items()}

    def inputs(self, bid: int, name: str) -> torch.Tensor:
        return self.acts[(bid, SITE[name])]  # (n_tokens, in) float32

    def score(self, bid: int, name: str, rho: float, score_all: bool = False) -> torch.Tensor:
        """|x| * colnorm, or |x| alone where rho == 1 unless score_all (WINA's score there too)."""
        x = self.inputs(bid, name).abs()
        return x if rho >= 1.0 and not score_all else x * self.colnorm[(bid, name)].float()

    def tau(self, bid: int, name: str, sparsity: float, rho: float, score_all: bool = False) -> float:
        return quantile_tau(self.score(bid, name, rho, score_all), (1.0 - sparsity) * rho)

    def taus(self, bid: int, name: str, sparsities, rho: float, score_all: bool = False) -> list[float]:
        """tau at several sparsities, from one sort of the scores."""
        return quantile_taus(self.score(bid, name, rho, score_all), [(1.0 - s) * rho for s in sparsities])

    def svd(self, bid: int, name: str):
        return self._svd.get((bid, name), lambda: torch.linalg.svd(self.weights[(bid, name)].double(),
                                                                   full_matrices=False))

    def linear_plan(self, bid: int, name: str, sparsity: float, rho: float, factors: str, score_all: bool = False):
        """(tau, u, vs) for one linear at one (sparsity, rho), cached: the search revisits the same grid values."""
        return self._cache.get((bid, name, sparsity, rho, factors, score_all),
                               lambda: self._make_plan(bid, name, sparsity, rho, factors, score_all))

    def _make_plan(self, bid: int, name: str, sparsity: float, rho: float, factors: str, score_all: bool):
        w = self.weights[(bid, name)]
        out, in_ = w.shape
        tau = self.tau(bid, name, sparsity, rho, score_all)
        rank = rank_for(in_, out, sparsity, rho)
        u = vs = None
        if rank:
            if factors == "svd":
                u, vs = svd_factors(*self.svd(bid, name), rank)
            else:
                x = self.inputs(bid, name)
                u, vs = data_aware_factors(w, x * (self.score(bid, name, rho, score_all) <= tau), rank)
        return tau, u, vs


# ---- plans ----------------------------------------------------------------------------------------------------
FACTORS = ("svd", "data-aware")
TAU_MODES = ("dense", "sequential")


@dataclass
class Plan:
    """Everything the reference model and the companion need: per (block, linear) tau, rho, keep, rank, factors,
    and the sparsity each linear was given (all equal to the model-level target unless allocated, allocate.py)."""

    sparsity: float  # the model-level target
    rho: np.ndarray  # (n_layer, 7) float
    tau: np.ndarray  # (n_layer, 7) float
    keep: np.ndarray  # (n_layer, 7) int, nominal
    rank: np.ndarray  # (n_layer, 7) int
    factors: str = "svd"
    tau_mode: str = "dense"
    score_all: bool = False  # |x| * colnorm at rho == 1 too (the companion's rsparse.score abs_x_colnorm_all)
    budget: np.ndarray | None = None  # (n_layer, 7) per-linear sparsity; None: `sparsity` everywhere
    u: dict = field(default_factory=dict)  # (bid, linear index) -> (out, rank) float32
    vs: dict = field(default_factory=dict)  # (bid, linear index) -> (rank, in) float32


def empty_plan(model, sparsity, rho: np.ndarray, factors: str, tau_mode: str, target: float | None = None) -> Plan:
    """`sparsity`: the model-level float, or an (n_layer, 7) allocation whose model-level value is `target`."""
    n_layer = len(model.model.layers)
    budget = per_linear(sparsity, n_layer)
    rho = np.asarray(rho, dtype=np.float64).reshape(n_layer, len(LINEARS))
    keep = np.zeros(rho.shape, dtype=np.int64)
    rank = np.zeros(rho.shape, dtype=np.int64)
    for bid, name, m in iter_linears(model):
        i = LINEARS.index(name)
        out, in_ = m.weight.shape
        keep[bid, i] = keep_count(in_, budget[bid, i], rho[bid, i])
        rank[bid, i] = rank_for(in_, out, budget[bid, i], rho[bid, i])
    uniform = isinstance(sparsity, (int, float))
    return Plan(float(sparsity) if uniform else float(target), rho, np.zeros(rho.shape), keep, rank, factors,
                tau_mode, budget=None if uniform else budget)


def dense_plan(calib: Calibration, sparsity, rho: np.ndarray, factors: str = "svd", score_all: bool = False,
               target: float | None = None) -> Plan:
    """The paper's calibration: every tau (and data-aware factor) from the dense model's activations.
    `sparsity`: model-level float, or a per-linear allocation with its model-level `target`."""
    if factors not in FACTORS:
        raise ValueError(f"factors {factors!r}: choose one of {FACTORS}")
    plan = empty_plan(calib.model, sparsity, rho, factors, "dense", target)
    plan.score_all = score_all
    budget = per_linear(sparsity, calib.n_layer)
    for bid, name, _ in iter_linears(calib.model):
        i = LINEARS.index(name)
        tau, u, vs = calib.linear_plan(bid, name, float(budget[bid, i]), float(plan.rho[bid, i]), factors,
                                       score_all)
        plan.tau[bid, i] = tau
        if u is not None:
            plan.u[(bid, i)], plan.vs[(bid, i)] = u, vs
    return plan


def sequential_plan(model, state: SparseState, windows: torch.Tensor, calib: Calibration, sparsity,
                    rho: np.ndarray, factors: str = "svd", target: float | None = None) -> Plan:
    """Beyond the paper: tau (and data-aware factors) of each linear from its input in the model whose earlier
    linears are already sparse, so every linear keeps its targeted fraction in the sparse model. One forward pass
    over `windows`: each linear calibrates itself on first use, in execution order.
    `sparsity`: model-level float, or a per-linear allocation with its model-level `target`."""
    plan = empty_plan(model, sparsity, rho, factors, "sequential", target)
    plan.score_all = state.score_all  # the reference's linears score with it (reference.py)
    budget = per_linear(sparsity, len(model.model.layers))

    def calibrate(lin, x, score):
        i = LINEARS.index(lin.name)
        tau = quantile_tau(score, (1.0 - budget[lin.bid, i]) * lin.rho)
        u, vs = lin.u, lin.vs
        if lin.rank and factors == "data-aware":
            u, vs = data_aware_factors(lin.weight.detach(), x * (score <= tau), lin.rank)
        plan.tau[lin.bid, i] = tau
        if u is not None:
            plan.u[(lin.bid, i)], plan.vs[(lin.bid, i)] = u, vs
        lin.set(tau, lin.rho, u, vs)

    for bid, name, _ in iter_linears(model):
        i = LINEARS.index(name)
        r = float(plan.rho[bid, i])
        u = vs = None
        rank = int(plan.rank[bid, i])
        if rank and factors == "data-aware":
            # placeholders of the right shape: calibrate() replaces them before first use, so the float64 SVD
            # of every weight (the svd branch's factors) would be computed and thrown away
            out, in_ = calib.weights[(bid, name)].shape
            u, vs = torch.zeros(out, rank), torch.zeros(rank, in_)
        elif rank:
            u, vs = svd_factors(*calib.svd(bid, name), rank)
        rsparse_linear(model, bid, name).set(None, r, u, vs)
    saved = state.mode, state.calibrate
    state.mode, state.calibrate = "strict", calibrate
    try:
        with torch.no_grad():
            model.model(windows)
    finally:
        state.mode, state.calibrate = saved
    return plan


def tau_only_calibrator(sparsity, n_layer: int):
    """A SparseState.calibrate hook that sets only tau (factors stay), from the input the linear sees.
    `sparsity`: model-level float or (n_layer, 7) allocation."""
    budget = per_linear(sparsity, n_layer)

    def calibrate(lin, x, score):
        lin.tau = quantile_tau(score, (1.0 - budget[lin.bid, LINEARS.index(lin.name)]) * lin.rho)

    return calibrate


def apply_plan(model, plan: Plan) -> None:
    for bid, name, _ in iter_linears(model):
        i = LINEARS.index(name)
        rsparse_linear(model, bid, name).set(float(plan.tau[bid, i]), float(plan.rho[bid, i]),
                                             plan.u.get((bid, i)), plan.vs.get((bid, i)))


def validation_windows(tokenizer, skip_tokens: int, n_tokens: int, seq_len: int, text: str | None = None) -> torch.Tensor:
    """ceil(n_tokens / seq_len) windows of the calibration text past its first `skip_tokens` (those calibrate tau
    and factors), spread evenly over the rest of the text: many topics rather than the few that happen to follow.
    `text`: the user's (--calib-file), or None for the calibration split. Never the evaluation split."""
    n = max(1, math.ceil(n_tokens / seq_len))
    skip = math.ceil(skip_tokens / seq_len)
    rest = token_windows(tokenizer, corpus_text("calibration") if text is None else text, seq_len)[skip:]
    if len(rest) == 0:
        raise ValueError(f"the calibration text has no tokens left after the first {skip_tokens}, which calibrate "
                         f"tau and the factors: the search's finalists are compared on what follows (give more "
                         f"text, or --val-tokens 0)")
    pick = np.unique(np.linspace(0, len(rest) - 1, min(n, len(rest))).round().astype(np.int64))
    return rest[torch.from_numpy(pick)]


def calibration_windows(tokenizer, n_tokens: int, seq_len: int, text: str | None = None) -> torch.Tensor:
    """The first ceil(n_tokens / seq_len) windows of the calibration text (`text`, or the calibration split)."""
    return token_windows(tokenizer, corpus_text("calibration") if text is None else text, seq_len,
                         math.ceil(n_tokens / seq_len))
