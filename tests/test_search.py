"""The evolutionary rho search: improves on its initial population, reproducible, resumable."""
from __future__ import annotations

import json

import numpy as np
import torch
import pytest

from conftest import make_tiny_llama
from rsparse_converter.search import RHO_GRID, Search, SearchConfig, expand, group_of


def quadratic(target):
    """A cheap fitness with a known optimum: rho close to `target` per (layer, linear)."""
    return lambda rho: float(((rho - target) ** 2).sum())


def test_groups_and_expand():
    assert group_of(30, 6).tolist() == [b // 5 for b in range(30)]
    assert group_of(3, 6).tolist() == [0, 1, 2]
    genome = np.array([[0] * 7, [7] * 7])
    rho = expand(genome, RHO_GRID, 4)
    assert rho.shape == (4, 7) and (rho[:2] == 0.5).all() and (rho[2:] == 1.0).all()


def test_improves_on_initial_population_and_is_reproducible():
    rng = np.random.default_rng(1)
    target = rng.choice(RHO_GRID, size=(6, 7))
    cfg = SearchConfig(population=10, generations=6, groups=6, seed=3, baselines=False)
    s = Search(quadratic(target), 6, 7, cfg, progress=False)
    genome, best = s.run()
    assert best < s.initial_best
    assert [h["best"] for h in s.history] == sorted((h["best"] for h in s.history), reverse=True)  # elitism
    genome2, best2 = Search(quadratic(target), 6, 7, cfg, progress=False).run()
    assert best2 == best and (genome2 == genome).all()


def test_baselines_are_in_the_initial_population():
    cfg = SearchConfig(population=4, generations=0, groups=2)
    seen = []
    Search(lambda rho: seen.append(rho.copy()) or 0.0, 4, 7, cfg, progress=False).run()
    assert (seen[0] == 1.0).all() and (seen[1] == 0.95).all()


def test_interrupt_keeps_the_best_and_resume_replays(tmp_path):
    target = np.full((4, 7), 0.8)
    cfg = SearchConfig(population=6, generations=3, groups=4, seed=0, baselines=False)
    ck = tmp_path / "ck.json"
    calls = []

    def flaky(rho):
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt
        return quadratic(target)(rho)

    with pytest.raises(KeyboardInterrupt):
        Search(flaky, 4, 7, cfg, checkpoint=ck, context={"sparsity": 0.5}, progress=False).run()
    saved = json.loads(ck.read_text())
    assert len(saved["evaluated"]) == 8 and np.asarray(saved["best"]["rho"]).shape == (4, 7)
    assert saved["best"]["fitness"] == min(saved["evaluated"].values())
    fresh_calls = []
    resumed = Search(lambda r: fresh_calls.append(1) or quadratic(target)(r), 4, 7, cfg, checkpoint=ck,
                     context={"sparsity": 0.5}, progress=False)
    _, best = resumed.run()
    full = Search(quadratic(target), 4, 7, cfg, progress=False)
    _, best_full = full.run()
    assert best == best_full and len(fresh_calls) == len(full.evaluated) - 8
    # another context starts afresh
    other = Search(quadratic(target), 4, 7, cfg, checkpoint=ck, context={"sparsity": 0.6}, progress=False)
    assert not other.evaluated


def test_search_on_a_tiny_model_improves_calibration_perplexity(tmp_path):
    from rsparse_converter.calibrate import load_model, load_tokenizer
    from rsparse_converter.rsparse_cli import BuildConfig, build

    d = make_tiny_llama(tmp_path / "m", "gqa_untied")
    model, tok = load_model(d), load_tokenizer(d)
    cfg = BuildConfig(sparsity=0.6, recipe="searched", factors="svd", tau="dense", calib_tokens=256, fit_tokens=128,
                      val_tokens=256, seq_len=64, search=SearchConfig(population=5, generations=2, groups=3, baselines=False),
                      checkpoint=tmp_path / "ck.json")
    plan, info, _ = build(model, tok, cfg, progress=False)
    assert info["search"]["fitness"] < info["search"]["initial_best"]
    assert json.loads((tmp_path / "ck.json").read_text())["best"]["fitness"] == info["search"]["fitness"]
    assert plan.rho.shape == (3, 7) and set(np.unique(plan.rho)) <= set(RHO_GRID)


def test_searched_recipe_is_the_validation_best_of_the_shipped_plans(tmp_path):
    """The final pick scores each finalist with the plan the companion would ship (sequential tau, data-aware
    factors), on calibration tokens the tau and factors did not see; sparse-only is always a finalist."""
    from rsparse_converter.calibrate import calibration_windows, load_model, load_tokenizer, validation_windows
    from rsparse_converter.perplexity import nll
    from rsparse_converter.reference import rsparse_model
    from rsparse_converter.rsparse_cli import BuildConfig, build

    d = make_tiny_llama(tmp_path / "m", "gqa_untied")
    model, tok = load_model(d), load_tokenizer(d)
    cfg = BuildConfig(sparsity=0.5, recipe="searched", calib_tokens=256, fit_tokens=128, val_tokens=256, seq_len=64,
                      search=SearchConfig(population=4, generations=1, groups=2), checkpoint=tmp_path / "ck.json")
    plan, info, _ = build(model, tok, cfg, progress=False)
    val = info["search"]["validation"]
    assert {"sparse-only", "uniform"} <= set(val) and len(val) >= 3
    from rsparse_converter.rsparse_cli import VALIDATION_MARGIN

    chosen = info["search"]["chosen"]
    start = min((k for k in val if k.startswith("sparse-only")), key=val.get)
    assert val[chosen] <= val[start]  # never worse than sparse-only on validation
    assert chosen == start or val[chosen] < val[start] - VALIDATION_MARGIN  # others replace it by a margin only
    if info["search"]["chosen"] == "sparse-only":
        assert (plan.rho == 1).all()
    # the shipped plan, applied as built, scores exactly what the pick saw
    vw = validation_windows(tok, cfg.calib_tokens, cfg.val_tokens, cfg.seq_len)
    total, count = nll(model, rsparse_model(model), vw, "strict", batch_size=4)
    assert abs(total / count - val[info["search"]["chosen"]]) < 1e-6
    # validation windows never overlap the tau/factor windows
    cw = calibration_windows(tok, cfg.calib_tokens, cfg.seq_len)
    assert not any(torch.equal(v, c) for v in vw for c in cw)
