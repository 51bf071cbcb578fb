"""rs_forward, the one native call per step (native/src/forward.c): its checks, on the Python side and in C.
Its arithmetic is tested against transformers and the float64 R-Sparse reference by test_model.py and
test_sparse_decode.py, which run every forward pass through it."""
from __future__ import annotations

import numpy as np
import pytest

from rsparse_converter.convert import convert
from rsparse_cpp import native
from rsparse_cpp.model import Model


@pytest.fixture(scope="module")
def model(tiny_llama_dir, tmp_path_factory):
    path = convert(tiny_llama_dir, tmp_path_factory.mktemp("fwd") / "m.gguf", "q8_0", progress=False)
    return Model.load(path, n_ctx=16, n_threads=2, n_batch=4)


def test_bound_call_refuses_what_does_not_fit(model):
    fwd = model._forward
    for n, pos, sparse in ((0, 0, False), (5, 0, False), (2, 15, False), (1, 16, False), (1, -1, False),
                           (1, 0, True)):  # no companion: no sparse form
        with pytest.raises(ValueError):
            fwd(n, pos, sparse, False)


def test_c_side_checks_every_call(model):
    """The raw C call, past the Python checks: bad token ids and sizes give a status, and write nothing."""
    lib, fwd, s = native._load(), model._forward, model.state
    ids = native.ffi.new("int64_t[]", [1, model.config.n_vocab])
    before = (s.x.copy(), s.key_cache.copy(), s.logits.copy())
    assert lib.rs_forward(model.pool._ptr, fwd._model, fwd._state, ids, 2, 0, 0, 0) == lib.RS_ERR_INDEX
    ids[1] = -1
    assert lib.rs_forward(model.pool._ptr, fwd._model, fwd._state, ids, 2, 0, 0, 0) == lib.RS_ERR_INDEX
    assert all(np.array_equal(a, b) for a, b in zip(before, (s.x, s.key_cache, s.logits)))
    ids[1] = 2
    for n, pos, sparse in ((5, 0, 0), (0, 0, 0), (2, 15, 0), (1, 0, 1)):
        assert lib.rs_forward(model.pool._ptr, fwd._model, fwd._state, ids, n, pos, sparse, 0) == lib.RS_ERR_SHAPE
    assert lib.rs_forward(native.ffi.NULL, fwd._model, fwd._state, ids, 1, 0, 0, 0) == lib.RS_ERR_NULL
    assert lib.rs_forward(model.pool._ptr, fwd._model, fwd._state, native.ffi.NULL, 1, 0, 0, 0) == lib.RS_ERR_NULL
    assert lib.rs_forward(model.pool._ptr, fwd._model, fwd._state, ids, 2, 0, 0, 1) == lib.RS_OK


def test_bind_checks_shapes(model):
    """bind_forward refuses a run state or a weight that does not match the model's sizes."""
    s, w, cfg = model.state, model.weights, model.config

    def dense(lin):
        return lin.type, lin.data, lin.n_out, lin.n_in

    def bind(**change):
        state = dict(x=s.x, xb=s.xb, q=s.q, attn=s.attn, k=s.k, v=s.v, hb=s.hb, hb2=s.hb2, att=s.att,
                     logits=s.logits, tokens=s.tokens)
        blocks = [{"attn_norm": lw.attn_norm, "ffn_norm": lw.ffn_norm, "k_cache": s.key_cache[i],
                   "v_cache": s.value_cache[i], "dense": [dense(getattr(lw, n)) for n in
                                                          ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
                                                           "ffn_up", "ffn_down")], "sparse": [None] * 7}
                  for i, lw in enumerate(w.layers)]
        dims = dict(n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_ff=cfg.n_ff, n_head=cfg.n_head,
                    n_head_kv=cfg.n_head_kv, head_dim=cfg.head_dim, rope_dim=cfg.rope_dim, n_vocab=cfg.n_vocab,
                    n_ctx=model.n_ctx, rms_eps=cfg.rms_eps)
        for k, v in change.items():
            if k in state:
                state[k] = v
            elif k == "swap_qk":
                blocks[0]["dense"][0], blocks[0]["dense"][3] = blocks[0]["dense"][3], blocks[0]["dense"][0]
            elif k in ("bias", "q_norm", "k_norm"):  # what a family adds (families.py)
                blocks[0][k] = v
            else:
                dims[k] = v
        return native.bind_forward(model.pool, dims, blocks, dense(w.token_embd), w.output_norm, dense(w.output),
                                   s.cos, s.sin, state)

    bind()  # as Model.load binds it
    with pytest.raises(ValueError, match="hb"):
        bind(hb=np.zeros((4, cfg.n_ff - 1), np.float32))
    with pytest.raises(ValueError, match="att"):
        bind(att=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="overlap"):
        bind(hb2=s.hb)
    with pytest.raises(ValueError, match="shape"):
        bind(swap_qk=True) if cfg.n_head * cfg.head_dim != cfg.n_embd else bind(n_ff=cfg.n_ff + 1)
    with pytest.raises(ValueError, match="blocks"):
        bind(n_layer=cfg.n_layer + 1)
    with pytest.raises(ValueError):
        bind(rms_eps=float("nan"))
    qd = cfg.n_head * cfg.head_dim
    bind(bias=[np.zeros(qd, np.float32)] + [None] * 6, q_norm=np.ones(cfg.head_dim, np.float32))
    with pytest.raises(ValueError, match="bias"):
        bind(bias=[np.zeros(qd + 1, np.float32)] + [None] * 6)
    with pytest.raises(ValueError, match="k_norm"):
        bind(k_norm=np.ones(cfg.head_dim + 2, np.float32))
    with pytest.raises(ValueError):
        bind(bias=[np.zeros(qd, np.float64)] + [None] * 6)


def test_prefill_then_decode_equals_one_prefill(model):
    """The same tokens through one batched prefill and through prefill + single steps give the same logits, within
    decode's int8 rounding of the activations (this Q8_0 model's decode kernels; prefill is float): on these tiny
    random models a whole int8 step moves the logits by up to 2% of the largest (test_model.py)."""
    tokens = [3, 7, 11, 5, 2, 9]
    model.reset()
    whole = model.forward(tokens, logits_all=True)
    model.reset()
    model.forward(tokens[:3])
    steps = np.stack([model.forward([t]).copy() for t in tokens[3:]])
    assert np.abs(steps - whole[3:]).max() <= 2e-2 * np.abs(whole).max()
