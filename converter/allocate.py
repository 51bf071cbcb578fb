"""Per-linear budgets: how much of each linear to skip under one model-level budget (--allocation).

The paper gives every linear the same budget C = 1 - s. Linears differ in how much their block's output (and the
model's loss) suffers from dropping channels, so the same number of skipped weights costs less spread unevenly.
Here, from calibration data of the dense model:

1. Error curves. For every linear alone (the others dense) and every level s in LEVELS, the block's output with
   that linear keeping a fraction 1 - s of its channels (tau from the dense model's calibration scores, as the
   paper's thresholds), compared with the dense block's output:
       e(s) = mean over tokens of  sum_c  w_c (y_c(s) - y_c)^2
   With --allocation block, w = 1: TEAL's measure, the block's output error (Liu et al. 2024, "Training-free
   activation sparsity", Sec. 4.2). With --allocation model, w_c is the mean squared gradient of the calibration
   loss with respect to the block's output channel c: a diagonal Fisher weight that puts every block's error in
   the one currency of the loss, so blocks can trade budget with each other.
2. Allocation. Minimise the sum of the errors subject to the budget (parameters skipped = s * in * out summed
   over the scope: each block for `block`, the whole model for `model`). Each curve is replaced by its lower
   convex hull and the hull segments are taken cheapest first (error per skipped parameter) until the budget is
   met, the last one partially: the greedy step that TEAL takes, with exact budgets.

Why each linear alone rather than TEAL's path (which re-measures every linear after each greedy step): the path
costs a block forward per linear per step (hundreds per block), the curves one per linear per level. Interactions
inside a block (a sparse q changes what o sees) are left to the thresholds, which `--tau sequential` calibrates in
the model as allocated, and to the validation that picks among recipes.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from rsparse_cpp.constants import LINEARS

from .budget import shapes_from_config
from .reference import SparseState, decoder_layers, iter_linears, rsparse_linear

LEVELS = tuple(round(0.05 * k, 2) for k in range(20))  # 0 .. 0.95: a linear never drops more than 95%


# ---- the dense model's blocks: their inputs, and the loss's weight on their outputs ---------------------------
def _detached(v):
    if isinstance(v, torch.Tensor):
        return v.detach()
    if isinstance(v, (tuple, list)):
        return type(v)(_detached(x) for x in v)
    return v


def block_io(model, windows: torch.Tensor, fisher: bool):
    """[(args, kwargs, output, weight)] per decoder block, from one dense pass over `windows`: what each block was
    called with and returned, and (fisher) the mean squared gradient of the summed next-token loss with respect to
    its output channels, else ones. Only activations get gradients: the weights are frozen for the pass."""
    layers = decoder_layers(model)
    calls: list = [None] * len(layers)
    outs: list = [None] * len(layers)
    hooks = []
    for b, layer in enumerate(layers):
        def pre(_m, args, kwargs, b=b):
            calls[b] = (_detached(args), _detached(kwargs))

        def post(_m, _args, _kwargs, out, b=b):
            h = out[0] if isinstance(out, tuple) else out
            if fisher:
                h.retain_grad()
            outs[b] = h

        hooks.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
        hooks.append(layer.register_forward_hook(post, with_kwargs=True))
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        with torch.set_grad_enabled(fisher):
            embeds = model.model.embed_tokens(windows).detach().requires_grad_(fisher)
            hidden = model.model(inputs_embeds=embeds, use_cache=False).last_hidden_state
            if fisher:
                logits = model.lm_head(hidden[:, :-1]).float()
                F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1),
                                reduction="sum").backward()
    finally:
        for h in hooks:
            h.remove()
        for p, req in frozen:
            p.requires_grad_(req)
    result = []
    for b in range(len(layers)):
        out = outs[b].detach()
        if fisher:
            g = outs[b].grad.reshape(-1, out.shape[-1]).double()
            weight = (g * g).mean(0)
        else:
            weight = torch.ones(out.shape[-1], dtype=torch.float64)
        result.append((*calls[b], out, weight))
    return result


@contextmanager
def _saved_linears(model, state: SparseState):
    """Every linear's (tau, rho, u, vs) and the state's mode, restored on exit."""
    saved = [(m, m.tau, m.rho, m.u, m.vs) for _, _, m in iter_linears(model)]
    mode, calibrate = state.mode, state.calibrate
    try:
        yield
    finally:
        for m, tau, rho, u, vs in saved:
            m.set(tau, rho, u, vs)
        state.mode, state.calibrate = mode, calibrate


def error_curves(model, state: SparseState, calib, windows: torch.Tensor, fisher: bool,
                 levels=LEVELS, score_all: bool = False, progress: bool = False) -> np.ndarray:
    """(n_layer, 7, len(levels)) float64: e(s) of every linear alone (module docstring), levels[0] must be 0."""
    if levels[0] != 0.0:
        raise ValueError("the first level must be 0 (the dense linear)")
    from tqdm import tqdm

    io = block_io(model, windows, fisher)
    layers = decoder_layers(model)
    err = np.zeros((len(layers), len(LINEARS), len(levels)))
    with _saved_linears(model, state), torch.no_grad():
        state.mode, state.calibrate = "strict", None
        for _, _, m in iter_linears(model):
            m.set(float("-inf"), 1.0)  # keep every channel: the dense product
        for b in tqdm(range(len(layers)), desc="allocate", disable=not progress, leave=False):
            args, kwargs, y0, weight = io[b]
            w = weight.float()
            for i, name in enumerate(LINEARS):
                lin = rsparse_linear(model, b, name)
                for k, tau in enumerate(calib.taus(b, name, levels[1:], 1.0, score_all), start=1):
                    lin.set(tau, 1.0)
                    out = layers[b](*args, **kwargs)
                    d = (out[0] if isinstance(out, tuple) else out) - y0
                    err[b, i, k] = float((d * d * w).sum()) / (d.numel() // d.shape[-1])
                lin.set(float("-inf"), 1.0)
    return err


# ---- the allocation -------------------------------------------------------------------------------------------
def _hull(x: np.ndarray, y: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of the points (x, y), x increasing, from the first point to the last."""
    h: list[int] = []
    for k in range(len(x)):
        while len(h) >= 2:
            a, b = h[-2], h[-1]
            # b lies on or above the chord from a to k: not on the lower hull
            if (y[b] - y[a]) * (x[k] - x[a]) >= (y[k] - y[a]) * (x[b] - x[a]):
                h.pop()
            else:
                break
        h.append(k)
    return h


def allocate(err: np.ndarray, params: np.ndarray, target: float, scope: str, levels=LEVELS) -> np.ndarray:
    """(n_layer, 7) per-linear sparsity minimising the summed error curves `err` (n_layer, 7, L) subject to:
    sum(s * params) = target * sum(params) over each block (scope "block") or the whole model ("model").
    `params` (n_layer, 7): in * out of every linear."""
    if scope not in ("block", "model"):
        raise ValueError(f"allocation scope {scope!r}: choose block or model")
    levels = np.asarray(levels, dtype=np.float64)
    if not 0.0 <= target <= levels[-1]:
        raise ValueError(f"sparsity {target} is outside what a linear can drop here (0 .. {levels[-1]})")
    n_layer, n_lin = params.shape
    s = np.zeros((n_layer, n_lin))
    groups = [[(b, i) for i in range(n_lin)] for b in range(n_layer)] if scope == "block" else \
        [[(b, i) for b in range(n_layer) for i in range(n_lin)]]
    for group in groups:
        segments = []  # (error per skipped parameter, b, i, level from, level to)
        for b, i in group:
            x = levels * params[b, i]
            y = np.maximum.accumulate(np.maximum(err[b, i], 0.0))  # dropping more never helps: monotone
            h = _hull(x, y)
            for a, c in zip(h, h[1:]):
                segments.append(((y[c] - y[a]) / (x[c] - x[a]), b, i, levels[a], levels[c]))
        segments.sort(key=lambda t: (t[0], t[3]))  # a convex curve's own segments come out in order
        need = target * sum(params[b, i] for b, i in group)
        for _, b, i, lo, hi in segments:
            if need <= 0:
                break
            step = min(hi - lo, need / params[b, i])
            s[b, i] = lo + step
            need -= step * params[b, i]
    return s


def linear_params(model) -> np.ndarray:
    """(n_layer, 7): in * out of every linear (budget.py's true shapes, GQA included)."""
    return np.tile([s.in_ * s.out for s in shapes_from_config(model.config)], (len(decoder_layers(model)), 1))


def allocate_budget(model, state: SparseState, calib, windows: torch.Tensor, sparsity: float, scope: str,
                    score_all: bool = False, progress: bool = False) -> np.ndarray:
    """The (n_layer, 7) per-linear sparsity for `scope` (block or model) at model-level `sparsity`."""
    err = error_curves(model, state, calib, windows, fisher=scope == "model", score_all=score_all,
                       progress=progress)
    return allocate(err, linear_params(model), sparsity, scope)
