"""The reference R-Sparse linear and model against float64 numpy formulas and transformers, and calibration."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_tiny_llama
from rsparse_converter.calibrate import (Calibration, corpus_text, dense_plan, load_model, load_tokenizer,
                                         sequential_plan, token_windows, data_aware_factors, quantile_tau)
from rsparse_converter.reference import RSparseLinear, SparseState, iter_linears, paper_start, rsparse_model
from rsparse_cpp.constants import LINEARS


def numpy_rsparse(w, x, colnorm, tau, rho, u, vs):
    """y = W[:, m] x[m] + U (VS ((1 - m) x)), m = score > tau, in float64."""
    w, x = w.astype(np.float64), x.astype(np.float64)
    score = np.abs(x) if rho >= 1 else np.abs(x) * colnorm
    m = score > tau
    y = np.where(m, x, 0) @ w.T
    if u is not None:
        y += (np.where(m, 0, x) @ vs.T.astype(np.float64)) @ u.T.astype(np.float64)
    return y


def make_linear(out=24, in_=40, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(in_, out, bias=False)
    return lin, RSparseLinear(lin, SparseState(mode="strict"), 0, "attn_q")


def test_equals_wx_when_nothing_is_dropped():
    lin, r = make_linear()
    x = torch.randn(3, 5, 40)
    r.set(-1.0, 0.7)  # every score > -1: every channel kept
    torch.testing.assert_close(r(x), lin(x), rtol=0, atol=0)


def test_equals_wx_with_full_rank_whatever_is_dropped():
    lin, r = make_linear()
    u, s, vh = torch.linalg.svd(lin.weight.detach().double(), full_matrices=False)
    x = torch.randn(4, 7, 40, dtype=torch.float64)
    r.double()
    r.weight = lin.weight.double()
    for tau in (0.0, 0.3, float("inf")):  # some, about half, all channels dropped
        r.set(tau, 0.5, u, s[:, None] * vh)
        torch.testing.assert_close(r(x), x @ lin.weight.double().T, rtol=1e-10, atol=1e-10)


def test_matches_numpy_formula_partial_rank():
    lin, r = make_linear(seed=1)
    w = lin.weight.detach().numpy()
    u, s, vh = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    x = torch.randn(2, 6, 40)
    for rho, rank in ((0.8, 5), (1.0, 0)):
        uu = torch.from_numpy(u[:, :rank]).float() if rank else None
        vs = torch.from_numpy(s[:rank, None] * vh[:rank]).float() if rank else None
        r.set(0.4, rho, uu, vs)
        want = numpy_rsparse(w, x.numpy(), np.linalg.norm(w.astype(np.float64), axis=0), 0.4, rho,
                             None if uu is None else uu.numpy(), None if vs is None else vs.numpy())
        np.testing.assert_allclose(r(x).detach().numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = make_tiny_llama(tmp_path_factory.mktemp("ref"), "gqa_untied")
    model, tok = load_model(d), load_tokenizer(d)
    reference = load_model(d)  # untouched transformers model
    state = rsparse_model(model)
    windows = token_windows(tok, corpus_text("calibration"), 64, 8)
    return d, model, reference, state, windows, Calibration(model, windows, max_tokens=384)


def test_dense_mode_is_the_transformers_model(tiny):
    _, model, reference, state, windows, _ = tiny
    state.mode = "dense"
    with torch.no_grad():
        torch.testing.assert_close(model(windows[:2]).logits, reference(windows[:2]).logits, rtol=0, atol=0)
    assert len(state.modules) == 7 * len(model.model.layers)


def test_paper_protocol_keeps_the_prefix_dense(tiny):
    _, model, reference, state, windows, calib = tiny
    from rsparse_converter.calibrate import apply_plan

    apply_plan(model, dense_plan(calib, 0.6, np.full((3, 7), 0.9)))
    ids = windows[:1]
    state.mode = "paper"
    start = paper_start(ids.shape[1], 0.1)
    with torch.no_grad():
        paper, dense = model(ids).logits, reference(ids).logits
        state.mode = "strict"
        strict = model(ids).logits
    torch.testing.assert_close(paper[:, :start], dense[:, :start], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(paper[:, start:], dense[:, start:], atol=1e-3)
    assert not torch.allclose(strict[:, :start], dense[:, :start], atol=1e-3)


@pytest.mark.parametrize("sparsity,rho", [(0.5, 1.0), (0.5, 0.9), (0.7, 0.6)])
def test_tau_gives_the_intended_kept_fraction(tiny, sparsity, rho):
    _, model, _, _, _, calib = tiny
    for bid, name, _ in iter_linears(model):
        tau = calib.tau(bid, name, sparsity, rho)
        kept = float((calib.score(bid, name, rho) > tau).float().mean())
        assert kept == pytest.approx((1 - sparsity) * rho, abs=0.02), (bid, name)


def test_calibration_caches_are_bounded_and_recompute_the_same(tiny):
    """The factor and SVD caches forget their oldest entries past their byte budget (one entry always stays); an
    evicted plan is made again, equal to the first."""
    from rsparse_converter.calibrate import BoundedCache, dense_plan

    made = []
    cache = BoundedCache(limit=3 * 40)
    for i in [0, 1, 2, 3, 3, 1, 0]:
        cache.get(i, lambda i=i: made.append(i) or torch.zeros(10))
    assert made == [0, 1, 2, 3, 0] and len(cache) == 3 and cache.bytes == 120
    cache.get(9, lambda: torch.zeros(100))  # bigger than the budget: kept alone
    assert len(cache) == 1 and cache.bytes == 400

    _, model, _, _, windows, calib = tiny
    small = Calibration(model, windows, max_tokens=384, cache_bytes=1)
    rho = np.full((3, 7), 0.7)
    for factors in ("svd", "data-aware"):
        want = dense_plan(calib, 0.5, rho, factors)
        got = [dense_plan(small, 0.5, rho, factors) for _ in range(2)]  # the second pass recomputes
        assert len(small._cache) == 1 and len(small._svd) <= 1
        for plan in got:
            np.testing.assert_array_equal(plan.tau, want.tau)
            for key in want.u:
                torch.testing.assert_close(plan.u[key], want.u[key], rtol=0, atol=0)
                torch.testing.assert_close(plan.vs[key], want.vs[key], rtol=0, atol=0)


def test_sequential_tau_keeps_the_target_in_the_sparse_model(tiny):
    _, model, _, state, windows, calib = tiny
    rho = np.full((3, 7), 0.9)
    plan = sequential_plan(model, state, windows[:6], calib, 0.5, rho, "data-aware")
    assert plan.tau_mode == "sequential" and np.isfinite(plan.tau).all()
    from rsparse_converter.calibrate import apply_plan

    apply_plan(model, plan)
    state.mode, state.track = "strict", True
    state.reset_counts()
    with torch.no_grad():
        model.model(windows[:6])
    state.track = False
    for m in state.modules:
        assert m.kept / m.tokens / m.in_features == pytest.approx(0.5 * 0.9, abs=0.02), (m.bid, m.name)
    assert state.measured_sparsity() == pytest.approx(0.5, abs=0.02)


def test_data_aware_factors_beat_svd_on_their_data():
    torch.manual_seed(0)
    w = torch.randn(32, 48, dtype=torch.float64)
    x = torch.randn(400, 48, dtype=torch.float64) * torch.linspace(0.1, 3, 48)  # anisotropic inputs
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    a, b = data_aware_factors(w, x, 6, ridge=1e-6)
    err_da = (x @ (w - a.double() @ b.double()).T).norm()
    err_svd = (x @ (w - u[:, :6] @ (s[:6, None] * vh[:6])).T).norm()
    assert err_da < 0.95 * err_svd
    # full rank reproduces W
    a, b = data_aware_factors(w, x, 32)
    torch.testing.assert_close(a.double() @ b.double(), w, rtol=1e-4, atol=1e-4)


def test_quantile_tau_edges():
    score = torch.arange(100, dtype=torch.float32)
    assert quantile_tau(score, 1.0) < 0  # keep everything
    assert float((score > quantile_tau(score, 0.25)).float().mean()) == 0.25
    assert float((score > quantile_tau(score, 0.0)).float().mean()) == 0.0


def test_quantile_tau_lies_between_scores():
    """tau is the midpoint of the largest dropped and the smallest kept score, never a score itself: a score met
    again exactly (the first block's input depends on the token alone) must not sit on the threshold, where float
    rounding would decide it."""
    score = torch.rand(4096, generator=torch.Generator().manual_seed(0))
    for keep in (0.1, 0.5, 0.9):
        tau = quantile_tau(score, keep)
        s = score.sort().values
        n_drop = 4096 - round(keep * 4096)
        assert s[n_drop - 1] < tau < s[n_drop]
        assert tau == pytest.approx(0.5 * float(s[n_drop - 1] + s[n_drop]), rel=1e-12)
        # a tiny relative change of every score (rounding) leaves the mask as it was
        for eps in (1e-6, -1e-6):
            assert torch.equal(score * (1 + eps) > tau, score > tau)
    # runs of equal scores (a token met many times): the run is kept or dropped whole, nearer the target
    runs = torch.tensor([1.0] * 10 + [2.0] * 50 + [3.0] * 40)
    assert 2.0 < quantile_tau(runs, 0.5) < 3.0  # keep 40 rather than 90 (the target is 50)
    assert 1.0 < quantile_tau(runs, 0.8) < 2.0  # keep 90 rather than 40 (the target is 80)
    assert quantile_tau(torch.full((10,), 2.0), 0.5) in (-1.0, 2.0)  # one run: keep all or none


@pytest.mark.smollm
def test_smollm_sequential_tau_hits_the_budget(smollm_hf_dir):
    """On SmolLM2 the thresholds keep the targeted fraction of channels in the sparse model (strict, calibration
    tokens), and sparsity costs perplexity but not absurdly much."""
    from rsparse_converter.calibrate import apply_plan
    from rsparse_converter.perplexity import perplexity

    torch.set_num_threads(2)
    model, tok = load_model(smollm_hf_dir), load_tokenizer(smollm_hf_dir)
    state = rsparse_model(model)
    windows = token_windows(tok, corpus_text("calibration"), 128, 4)
    calib = Calibration(model, windows, max_tokens=512)
    plan = sequential_plan(model, state, windows, calib, 0.5, np.ones((30, 7)), "svd")
    apply_plan(model, plan)
    state.track = True
    state.reset_counts()
    sparse = perplexity(model, state, windows[:2], "strict")
    state.track = False
    assert state.measured_sparsity() == pytest.approx(0.5, abs=0.02)
    dense = perplexity(model, state, windows[:2], "strict", sparse=False)
    assert dense < sparse < 4 * dense
