"""The sampler against direct computations of what each parameter means."""
from __future__ import annotations

import numpy as np
import pytest

from rsparse_cpp.sampler import SamplingParams, apply_repeat_penalty, sample


def draws(logits, params, n=4000, seed=0, recent=None):
    rng = np.random.default_rng(seed)
    return np.bincount([sample(logits, params, rng, recent) for _ in range(n)], minlength=len(logits))


def test_greedy_is_argmax():
    logits = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    assert sample(logits, SamplingParams(temperature=0), np.random.default_rng(0)) == int(np.argmax(logits))
    assert sample(logits, SamplingParams(temperature=5.0, top_k=1), np.random.default_rng(0)) == int(np.argmax(logits))


def test_plain_sampling_follows_softmax():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    counts = draws(logits, SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0))
    freq = counts / counts.sum()
    assert np.abs(freq - [0.5, 0.3, 0.15, 0.05]).max() < 0.03


def test_temperature_sharpens():
    logits = np.log(np.array([0.6, 0.4], np.float32))
    counts = draws(logits, SamplingParams(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0))
    expected = np.array([0.36, 0.16]) / 0.52  # p^(1/T) renormalised
    assert abs(counts[0] / counts.sum() - expected[0]) < 0.03


def test_top_p_keeps_smallest_prefix_reaching_mass():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    counts = draws(logits, SamplingParams(temperature=1.0, top_k=0, top_p=0.8, min_p=0.0))
    assert counts[2] == 0 and counts[3] == 0 and counts[0] > 0 and counts[1] > 0


def test_top_k_and_min_p():
    logits = np.log(np.array([0.4, 0.3, 0.2, 0.1], np.float32))
    assert set(np.nonzero(draws(logits, SamplingParams(temperature=1.0, top_k=2, top_p=1.0, min_p=0.0)))[0]) == {0, 1}
    # min_p=0.4: keep p >= 0.16 -> tokens 0, 1, 2
    kept = np.nonzero(draws(logits, SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.4)))[0]
    assert set(kept) == {0, 1, 2}


def test_seed_reproducible():
    logits = np.random.default_rng(1).normal(size=500).astype(np.float32)
    p = SamplingParams(temperature=1.0)
    a = [sample(logits, p, np.random.default_rng(42)) for _ in range(5)]
    b = [sample(logits, p, np.random.default_rng(42)) for _ in range(5)]
    assert a == b


def test_repeat_penalty():
    logits = np.array([2.0, 1.9, -1.0], np.float32)
    out = apply_repeat_penalty(logits, [0, 2], 2.0)
    assert np.allclose(out, [1.0, 1.9, -2.0])
    assert logits[0] == 2.0  # caller's logits untouched
    assert sample(logits, SamplingParams(temperature=0, repeat_penalty=2.0), np.random.default_rng(0), [0]) == 1


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(temperature=float("nan")), dict(top_p=0.0),
                                 dict(top_p=1.5), dict(min_p=-0.1), dict(repeat_penalty=0.0),
                                 dict(repeat_last_n=-1)])
def test_invalid_parameters_rejected(bad):
    with pytest.raises(ValueError, match="invalid sampling parameter"):
        SamplingParams(**bad)
