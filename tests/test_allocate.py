"""Per-linear budgets (converter/allocate.py): the allocation meets the model-level budget, is optimal for the
summed error curves, and ships where it wins on validation."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from conftest import make_tiny_llama
from rsparse_converter.allocate import LEVELS, allocate, error_curves, linear_params
from rsparse_converter.calibrate import quantile_tau, quantile_taus


def random_curves(rng, n_layer, n_lin, convex: bool) -> np.ndarray:
    steps = rng.random((n_layer, n_lin, len(LEVELS) - 1)) * rng.random((n_layer, n_lin, 1)) * 10
    if convex:
        steps.sort(axis=-1)  # growing increments: a convex curve
    return np.concatenate([np.zeros((n_layer, n_lin, 1)), np.cumsum(steps, axis=-1)], axis=-1)


@pytest.mark.parametrize("scope", ["block", "model"])
@pytest.mark.parametrize("convex", [True, False])
def test_allocation_meets_the_budget_exactly(scope, convex):
    rng = np.random.default_rng(0)
    params = rng.integers(100, 5000, size=(5, 7)).astype(float)
    err = random_curves(rng, 5, 7, convex)
    for target in (0.0, 0.1, 0.37, 0.5, 0.7, 0.95):
        s = allocate(err, params, target, scope)
        assert s.shape == (5, 7) and (s >= 0).all() and (s <= LEVELS[-1] + 1e-12).all()
        sums = (s * params).sum(1) / params.sum(1) if scope == "block" else [(s * params).sum() / params.sum()]
        assert np.allclose(sums, target, atol=1e-9)


def test_allocation_takes_the_cheapest_linear_first():
    params = np.ones((1, 7))
    err = np.tile(np.asarray(LEVELS) * 10.0, (1, 7, 1))
    err[0, 3] = 0.0  # dropping attn_output's channels costs nothing on these curves
    s = allocate(err, params, 0.95 / 7, "model")
    assert s[0, 3] == pytest.approx(0.95) and np.allclose(np.delete(s[0], 3), 0.0)
    err[0, 3] = np.asarray(LEVELS) * 1.0  # cheaper, not free: goes all the way before the others start
    assert allocate(err, params, 0.95 / 7, "model")[0, 3] == pytest.approx(0.95)


def test_allocation_is_optimal_for_convex_curves():
    """On grid budgets, no combination of levels that meets the budget has a smaller summed error."""
    rng = np.random.default_rng(1)
    levels = (0.0, 0.25, 0.5, 0.75)
    params = np.ones((1, 3))
    for _ in range(20):
        steps = np.sort(rng.random((1, 3, 3)) * rng.random((1, 3, 1)), axis=-1)
        err = np.concatenate([np.zeros((1, 3, 1)), np.cumsum(steps, axis=-1)], axis=-1)
        for target in (0.25, 0.5):
            s = allocate(err, params, target, "model", levels)
            got = sum(np.interp(s[0, i], levels, err[0, i]) for i in range(3))
            best = min(sum(err[0, i, k] for i, k in enumerate(c)) for c in itertools.product(range(4), repeat=3)
                       if abs(sum(levels[k] for k in c) - 3 * target) < 1e-9)
            assert got <= best + 1e-12


def test_allocation_refuses_what_no_linear_can_drop():
    with pytest.raises(ValueError, match="outside"):
        allocate(np.zeros((1, 7, len(LEVELS))), np.ones((1, 7)), 0.97, "model")
    with pytest.raises(ValueError, match="scope"):
        allocate(np.zeros((1, 7, len(LEVELS))), np.ones((1, 7)), 0.5, "layer")


def test_quantile_taus_equal_quantile_tau_ties_included():
    g = torch.Generator().manual_seed(0)
    for trial in range(100):
        n = int(torch.randint(1, 300, (1,), generator=g))
        x = (torch.randint(0, 6, (n,), generator=g).float() if trial % 2 else torch.rand(n, generator=g))
        keeps = [0.0, 0.05, 0.3, 0.5, 0.77, 0.95, 1.0]
        assert quantile_taus(x, keeps) == [quantile_tau(x, k) for k in keeps]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from rsparse_converter.calibrate import load_model, load_tokenizer

    d = make_tiny_llama(tmp_path_factory.mktemp("alloc"), "gqa_untied")
    return d, load_model(d), load_tokenizer(d)


def test_error_curves_start_at_zero_and_grow(tiny):
    from rsparse_converter.calibrate import Calibration, calibration_windows
    from rsparse_converter.reference import iter_linears, rsparse_model

    _, model, tok = tiny
    state = rsparse_model(model)
    windows = calibration_windows(tok, 256, 64)
    calib = Calibration(model, windows, max_tokens=256)
    before = [(m.tau, m.rho) for _, _, m in iter_linears(model)]
    for fisher in (False, True):
        err = error_curves(model, state, calib, windows[:2], fisher)
        assert err.shape == (3, 7, len(LEVELS)) and (err[..., 0] == 0).all() and (err[..., 1:] > 0).all()
        # dropping nine tenths of the channels costs more than dropping one tenth, for every linear
        assert (err[..., LEVELS.index(0.9)] > err[..., LEVELS.index(0.1)]).all()
    assert [(m.tau, m.rho) for _, _, m in iter_linears(model)] == before and state.mode == "dense"


@pytest.mark.parametrize("recipe", ["sparse-only", "uniform"])
def test_allocated_build_meets_the_budget_on_calibration_tokens(tiny, recipe):
    """The plan's nominal budget is the target, and so is the fraction actually read on the calibration tokens
    (sequential tau), within 1%; the linears are not all given the same sparsity."""
    from rsparse_converter.calibrate import calibration_windows
    from rsparse_converter.perplexity import nll
    from rsparse_converter.reference import rsparse_model
    from rsparse_converter.rsparse_cli import BuildConfig, build

    _, model, tok = tiny
    cfg = BuildConfig(sparsity=0.5, recipe=recipe, calib_tokens=256, seq_len=64, allocation="model", val_tokens=0)
    plan, info, _ = build(model, tok, cfg, progress=False)  # val_tokens 0: the allocation ships unvalidated
    alloc = np.asarray(info["allocated_sparsity"])
    assert info["allocation"] == "model" and alloc.shape == (3, 7) and alloc.std() > 0.02
    assert np.allclose(plan.budget, alloc, atol=1e-4) and plan.sparsity == 0.5
    assert abs(info["planned_model_sparsity"] - 0.5) < 0.01
    state = rsparse_model(model)
    state.track = True
    state.reset_counts()
    nll(model, state, calibration_windows(tok, 256, 64), "strict", batch_size=4)
    state.track = False
    assert abs(state.measured_sparsity() - 0.5) < 0.01


def test_searched_allocation_never_loses_to_the_unallocated_start_on_validation(tiny, tmp_path):
    from rsparse_converter.rsparse_cli import UNALLOCATED, BuildConfig, build
    from rsparse_converter.search import SearchConfig

    _, model, tok = tiny
    cfg = BuildConfig(sparsity=0.5, recipe="searched", calib_tokens=256, fit_tokens=128, val_tokens=256, seq_len=64,
                      search=SearchConfig(population=4, generations=1, groups=2), checkpoint=tmp_path / "ck.json",
                      allocation="model")
    plan, info, _ = build(model, tok, cfg, progress=False)
    val = info["search"]["validation"]
    assert UNALLOCATED in val and "sparse-only" in val
    assert val[info["search"]["chosen"]] <= min(val[UNALLOCATED], val["sparse-only"])
    if info["search"]["chosen"] == UNALLOCATED:
        assert plan.budget is None and info["allocation"] == "uniform"
    else:
        assert plan.budget is not None and info["allocation"] == "model"


@pytest.mark.parametrize("recipe", ["sparse-only", "uniform"])
def test_allocation_ships_only_with_a_validation_margin(tiny, recipe):
    """With validation tokens, the allocation replaces every linear at the target only when it wins on them by
    VALIDATION_MARGIN; the companion then says which it shipped."""
    from rsparse_converter.rsparse_cli import VALIDATION_MARGIN, BuildConfig, build

    _, model, tok = tiny
    cfg = BuildConfig(sparsity=0.5, recipe=recipe, calib_tokens=256, seq_len=64, allocation="model", val_tokens=256)
    plan, info, _ = build(model, tok, cfg, progress=False)
    val = info["allocation_validation"]
    if val["uniform"] - val["allocated"] > VALIDATION_MARGIN:
        assert info["allocation"] == "model" and plan.budget is not None and "allocated_sparsity" in info
    else:
        assert info["allocation"] == "uniform" and plan.budget is None and "allocated_sparsity" not in info


def test_paper_faithful_keeps_the_papers_uniform_budget():
    import argparse

    from rsparse_converter.rsparse_cli import add_rsparse_args, build_config

    p = argparse.ArgumentParser()
    add_rsparse_args(p, required=True)
    from pathlib import Path

    assert build_config(p.parse_args(["--sparsity", "0.5"]), Path("c.gguf")).allocation == "model"
    assert build_config(p.parse_args(["--sparsity", "0.5", "--paper-faithful"]), Path("c.gguf")).allocation == "uniform"
    assert build_config(p.parse_args(["--sparsity", "0.5", "--allocation", "block"]), Path("c.gguf")).allocation == "block"


def test_linear_params_are_true_shapes(tiny):
    _, model, _ = tiny
    p = linear_params(model)
    cfg = model.config
    kv = cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    assert p[0, 1] == kv * cfg.hidden_size and p[0, 6] == cfg.hidden_size * cfg.intermediate_size


def test_pick_finalist_prefers_the_starting_point_within_the_margin():
    from rsparse_converter.rsparse_cli import UNALLOCATED, VALIDATION_MARGIN, pick_finalist

    m = VALIDATION_MARGIN
    assert pick_finalist({"sparse-only": 3.0, "uniform": 3.0 - m / 2}, None) == "sparse-only"
    assert pick_finalist({"sparse-only": 3.0, "uniform": 3.0 - 2 * m}, None) == "uniform"
    val = {"sparse-only": 3.0, UNALLOCATED: 3.0 - m / 4, "searched#0": 3.0 - m / 2}
    assert pick_finalist(val, UNALLOCATED) == UNALLOCATED  # the better starting point, never beaten by a margin
    val["searched#0"] = 3.0 - 2 * m
    assert pick_finalist(val, UNALLOCATED) == "searched#0"
