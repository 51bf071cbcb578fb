"""rs_attention_decode (single-token GQA attention over a KV cache) against a float64 numpy reference."""
from __future__ import annotations

import numpy as np
import pytest

from rsparse_cpp import native


def reference(q, k, v, n_pos, scale):
    n_kv, _, hd = k.shape
    qh = q.reshape(n_kv, -1, hd).astype(np.float64)
    s = qh @ k[:, :n_pos].astype(np.float64).transpose(0, 2, 1) * scale  # (n_kv, n_rep, n_pos)
    p = np.exp(s - s.max(axis=2, keepdims=True))
    p /= p.sum(axis=2, keepdims=True)
    return (p @ v[:, :n_pos].astype(np.float64)).reshape(q.shape)


@pytest.mark.parametrize("n_head,n_kv,hd", [(1, 1, 8), (9, 3, 64), (6, 2, 13), (32, 8, 128), (4, 4, 3)])
@pytest.mark.parametrize("n_pos", [1, 7, 100])
@pytest.mark.parametrize("threads", [1, 3])
def test_matches_reference(n_head, n_kv, hd, n_pos, threads):
    rng = np.random.default_rng(n_head * 1000 + hd + n_pos)
    n_ctx = 128
    q = rng.standard_normal((n_head, hd), np.float32)
    k = rng.standard_normal((n_kv, n_ctx, hd), np.float32)
    v = rng.standard_normal((n_kv, n_ctx, hd), np.float32)
    k[:, n_pos:] = np.nan  # positions past n_pos must never be read
    v[:, n_pos:] = np.nan
    out = np.zeros_like(q)
    scratch = np.zeros(n_head * n_ctx, np.float32)
    scale = 1.0 / np.sqrt(hd)
    with native.Pool(threads) as pool:
        call = native.bind_attention(pool, q, k, v, scale, out, scratch)
        call(n_pos)
    np.testing.assert_allclose(out, reference(q, k, v, n_pos, scale), rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_refused():
    q, out = np.zeros((4, 8), np.float32), np.zeros((4, 8), np.float32)
    k = v = np.zeros((2, 16, 8), np.float32)
    with native.Pool(1) as pool:
        call = native.bind_attention(pool, q, k, v, 0.5, out, np.zeros(64, np.float32))
        for n_pos in (0, 17, -1):
            with pytest.raises(ValueError, match="n_pos"):
                call(n_pos)
        with pytest.raises(ValueError, match="scratch"):
            native.bind_attention(pool, q, k, v, 0.5, out, np.zeros(63, np.float32))
        with pytest.raises(ValueError, match="n_head"):
            native.bind_attention(pool, np.zeros((3, 8), np.float32), k, v, 0.5, np.zeros((3, 8), np.float32),
                                  np.zeros(64, np.float32))
        with pytest.raises(ValueError, match="overlaps"):
            native.bind_attention(pool, q, k, v, 0.5, q, np.zeros(64, np.float32))
        with pytest.raises(ValueError, match="float32"):
            native.bind_attention(pool, q, k.astype(np.float64), v, 0.5, out, np.zeros(64, np.float32))
    with pytest.raises(ValueError, match="closed"):
        call(4)
    lib, ffi = native._load(), native.ffi
    buf = ffi.new("float[]", 1024)
    with native.Pool(1) as pool:
        p = pool._ptr
        assert lib.rs_attention_decode(p, ffi.NULL, buf, buf, 4, 2, 8, 16, 4, 1.0, buf, buf, 64) == lib.RS_ERR_NULL
        assert lib.rs_attention_decode(p, buf, buf, buf, 3, 2, 8, 16, 4, 1.0, buf, buf, 64) == lib.RS_ERR_SHAPE
        assert lib.rs_attention_decode(p, buf, buf, buf, 4, 2, 8, 16, 17, 1.0, buf, buf, 64) == lib.RS_ERR_SHAPE
        assert lib.rs_attention_decode(p, buf, buf, buf, 4, 2, 8, 16, 4, 1.0, buf, buf, 15) == lib.RS_ERR_SHAPE
        assert lib.rs_attention_decode(p, buf, buf, buf, 4, 2, 8, 1 << 62, 4, 1.0, buf, buf, 64) == lib.RS_ERR_SHAPE
