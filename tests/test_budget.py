"""Budget arithmetic: keep counts, ranks and model-level sparsity, checked against the formulas written out."""
from __future__ import annotations

import pytest

from rsparse_converter.budget import (LinearShape, block_shapes, keep_count, model_sparsity, params_read, rank_for,
                                      shapes_from_config)

# SmolLM2-135M: 9 query heads, 3 KV heads (GQA), head_dim 64
SMOL = dict(n_embd=576, n_head=9, n_head_kv=3, head_dim=64, n_ff=1536)


def test_gqa_shapes():
    s = {x.name: (x.out, x.in_) for x in block_shapes(**SMOL)}
    assert s == {"attn_q": (576, 576), "attn_k": (192, 576), "attn_v": (192, 576), "attn_output": (576, 576),
                 "ffn_gate": (1536, 576), "ffn_up": (1536, 576), "ffn_down": (576, 1536)}
    hf = dict(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64, intermediate_size=1536)
    assert shapes_from_config(hf) == block_shapes(**SMOL)


@pytest.mark.parametrize("sparsity,rho", [(0.5, 0.95), (0.3, 0.5), (0.7, 0.8), (0.5, 1.0), (0.0, 1.0)])
def test_keep_and_rank_follow_the_formula_with_true_in_out(sparsity, rho):
    for s in block_shapes(**SMOL):
        c = 1.0 - sparsity
        assert keep_count(s.in_, sparsity, rho) == round(s.in_ * c * rho)
        expected_rank = int((1 - rho) * c * s.in_ * s.out / (s.in_ + s.out) + 1e-9)
        assert rank_for(s.in_, s.out, sparsity, rho) == expected_rank
    # k/v of GQA: in 576, out 192 -> rank uses 576 * 192 / 768 = 144, not the square-matrix 288
    assert rank_for(576, 192, 0.5, 0.5) == int(0.25 * 144)
    assert rank_for(576, 576, 0.5, 0.5) == int(0.25 * 288)


def test_rank_is_zero_at_rho_one_and_never_exceeds_the_budget():
    for s in block_shapes(**SMOL):
        assert rank_for(s.in_, s.out, 0.5, 1.0) == 0
        for sparsity in (0.0, 0.3, 0.5, 0.7, 0.9):
            for rho in (0.0, 0.5, 0.9, 1.0):
                k, r = keep_count(s.in_, sparsity, rho), rank_for(s.in_, s.out, sparsity, rho)
                # the low-rank part never reads more than its share (1 - rho) * C of the weights
                assert r * (s.in_ + s.out) <= (1 - rho) * (1 - sparsity) * s.in_ * s.out + 1e-6
                assert 0 <= k <= s.in_ and 0 <= r <= min(s.in_, s.out)


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_model_sparsity_is_the_target(sparsity):
    shapes = block_shapes(**SMOL)
    total = sum(s.in_ * s.out for s in shapes)
    for rho in (1.0, 0.95, 0.7):
        read = sum(s.out * round(s.in_ * (1 - sparsity) * rho)
                   + int((1 - rho) * (1 - sparsity) * s.in_ * s.out / (s.in_ + s.out) + 1e-9) * (s.in_ + s.out)
                   for s in shapes)
        got = model_sparsity(shapes, 30, sparsity, rho)
        assert got == pytest.approx(1 - read / total)
        assert sparsity - 1e-3 <= got <= sparsity + 0.01  # rounding down ranks only ever saves a little more
    mixed = [[1.0 if (b + i) % 2 else 0.5 for i in range(7)] for b in range(4)]
    assert sparsity <= model_sparsity(shapes, 4, sparsity, mixed) <= sparsity + 0.01


def test_params_read_and_errors():
    s = LinearShape("attn_k", 192, 576)
    assert params_read(s, keep=100, rank=10) == 100 * 192 + 10 * 768
    with pytest.raises(ValueError):
        keep_count(576, 1.0, 0.5)
    with pytest.raises(ValueError):
        rank_for(576, 192, 0.5, 1.5)
