"""The Llama forward pass, written as the math: RMSNorm, RoPE, GQA attention over a KV cache, SwiGLU MLP.

Every matrix product runs in the native library; the glue is numpy. `RunState` owns every buffer the forward pass
touches, allocated once for up to `n_batch` tokens, so a decode step allocates no arrays (numpy calls use `out=`).

Prefill (several tokens) runs every linear as a dense batched product over the base weights. A single-token decode
step runs each linear as one pre-bound native call: with an R-Sparse companion loaded (sparse.py) that is the
rank-aware sparse kernel over the companion's tensors, otherwise the dense kernel over the base's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import native
from .blas import single_threaded_blas
from .companion import Companion, companion_path
from .config import Config
from .constants import LINEARS
from .gguf_file import GGUFFile
from .sparse import SparseDecode
from .weights import Linear, Weights


class ContextFullError(ValueError):
    """More tokens than the KV cache holds."""


class NumericalError(FloatingPointError):
    """NaN or inf appeared in the activations."""


class RunState:
    """Activations, scratch and KV cache for one sequence. Shapes are for n_batch tokens; a step uses [:n]."""

    def __init__(self, cfg: Config, n_ctx: int, n_batch: int, weights: Weights):
        e, q, kv, hd = cfg.n_embd, cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim, cfg.head_dim
        f32 = np.float32
        self.x = np.zeros((n_batch, e), f32)  # residual stream
        self.xb = np.zeros((n_batch, e), f32)  # normed input of a block / block output
        self.ss = np.zeros((n_batch, 1), f32)  # per-token RMS
        self.q = np.zeros((n_batch, q), f32)
        self.k = np.zeros((n_batch, kv), f32)
        self.v = np.zeros((n_batch, kv), f32)
        self.attn = np.zeros((n_batch, q), f32)  # attention output, input of attn_output
        self.hb = np.zeros((n_batch, cfg.n_ff), f32)  # gate, then silu(gate) * up
        self.hb2 = np.zeros((n_batch, cfg.n_ff), f32)  # up
        self.rope_tmp = np.zeros((2, n_batch, cfg.n_head, cfg.rope_dim // 2), f32)
        # decode-only attention scratch: scores for one query against every cached key
        self.att = np.zeros((cfg.n_head_kv, cfg.n_rep, n_ctx), f32)
        self.logits = np.zeros((n_batch, cfg.n_vocab), f32)
        # KV cache: (layer, kv head, position, head_dim); one head's keys are contiguous for the q·K product
        self.key_cache = np.zeros((cfg.n_layer, cfg.n_head_kv, n_ctx, hd), f32)
        self.value_cache = np.zeros((cfg.n_layer, cfg.n_head_kv, n_ctx, hd), f32)
        self.rows = np.zeros(n_batch, np.int64)  # token ids for the embedding lookup
        # RoPE tables: llama.cpp permuted Q/K rows so that RoPE rotates adjacent pairs (2i, 2i+1)
        inv_freq = cfg.rope_theta ** (-np.arange(0, cfg.rope_dim, 2, dtype=np.float64) / cfg.rope_dim)
        if weights.rope_freqs is not None:  # llama3-style scaling stores per-frequency divisors
            inv_freq = inv_freq / weights.rope_freqs.astype(np.float64)
        angles = np.outer(np.arange(n_ctx, dtype=np.float64), inv_freq)
        self.cos = np.cos(angles).astype(f32)  # (n_ctx, rope_dim/2)
        self.sin = np.sin(angles).astype(f32)


@dataclass
class Model:
    """A loaded base GGUF (and its R-Sparse companion, if any), ready to run. `forward` advances the KV cache;
    `n_past` counts cached positions. `sparse_enabled` switches the companion's sparse decode on and off at any
    time; `sparse_prefill` makes every prompt token sparse too (fed one at a time, as decode steps)."""

    file: GGUFFile
    config: Config
    weights: Weights
    pool: native.Pool
    state: RunState
    n_ctx: int
    n_batch: int
    n_past: int = 0
    sparse: SparseDecode | None = None
    sparse_enabled: bool = False
    sparse_prefill: bool = False

    @classmethod
    def load(cls, path: str | os.PathLike, n_ctx: int = 512, n_threads: int | None = None, n_batch: int = 512,
             companion: str | os.PathLike | None = None, sparse: bool | None = None,
             sparse_prefill: bool = False) -> "Model":
        """Load a base GGUF. R-Sparse: `sparse=None` uses the companion when there is one (`companion`, or
        <model>.rsparse.gguf beside the base), `sparse=True` requires it, `sparse=False` runs densely and does not
        open it. A companion made for another base file is an error (its fingerprint names the base)."""
        f = GGUFFile(path)
        cfg = Config.from_gguf(f)
        if n_ctx <= 0:
            n_ctx = cfg.n_ctx_train
        if n_batch <= 0:
            raise ValueError(f"n_batch must be positive, got {n_batch}")
        n_batch = min(n_batch, n_ctx)
        weights = Weights.from_gguf(f, cfg)
        comp = open_companion(path, companion, sparse, sparse_prefill)
        pool = native.Pool(n_threads or min(os.cpu_count() or 1, 8))
        model = cls(f, cfg, weights, pool, RunState(cfg, n_ctx, n_batch, weights), n_ctx, n_batch)
        model._bind_decode(comp)
        model.sparse_prefill = sparse_prefill
        return model

    def _bind_decode(self, companion: Companion | None) -> None:
        """Bind the single-token step's native calls to the run state's batch-1 buffers, once."""
        s, w, cfg = self.state, self.weights, self.config
        io = {"attn_q": (s.xb[0], s.q[0]), "attn_k": (s.xb[0], s.k[0]), "attn_v": (s.xb[0], s.v[0]),
              "attn_output": (s.attn[0], s.xb[0]), "ffn_gate": (s.xb[0], s.hb[0]), "ffn_up": (s.xb[0], s.hb2[0]),
              "ffn_down": (s.hb[0], s.xb[0])}
        self._dense_calls = [{name: native.bind_matmul(self.pool, lin.type, lin.data, lin.n_out, lin.n_in, *io[name])
                              for name in LINEARS for lin in (getattr(lw, name),)} for lw in w.layers]
        self._embd_call = native.bind_get_rows(w.token_embd.type, w.token_embd.data, cfg.n_vocab, cfg.n_embd,
                                               s.rows[:1], s.x[0])
        self._output_call = native.bind_matmul(self.pool, w.output.type, w.output.data, w.output.n_out,
                                               w.output.n_in, s.xb[0], s.logits[0])
        scale = 1.0 / np.sqrt(cfg.head_dim)
        self._attention_calls = [native.bind_attention(self.pool, s.q[0], s.key_cache[li], s.value_cache[li], scale,
                                                       s.attn[0], s.att.reshape(-1)) for li in range(cfg.n_layer)]
        self.sparse = None if companion is None else SparseDecode(companion, self.pool, io)
        self.sparse_enabled = self.sparse is not None

    def reset(self) -> None:
        self.n_past = 0

    # ---- the forward pass ---------------------------------------------------------------------------------
    def forward(self, tokens, logits_all: bool = False) -> np.ndarray:
        """Run `tokens` at positions n_past.. and return logits: (n_vocab,) for the last token, or (n, n_vocab).

        Prompts longer than n_batch are processed in chunks; each chunk is one batched pass (prefill).
        The returned array is RunState's logits buffer (no allocation per token): it is overwritten by the next
        call, so copy it to keep it (logits_all=True returns a fresh array)."""
        tokens = check_tokens(tokens, self.n_past, self.n_ctx, self.config.n_vocab)
        n = len(tokens)
        out = np.empty((n, self.config.n_vocab), np.float32) if logits_all else None
        sparse, batch = step_mode(n, self.sparse_enabled, self.sparse_prefill, self.n_batch)
        with single_threaded_blas():  # numpy's BLAS threads would spin on the cores our pool needs (blas.py)
            for start in range(0, n, batch):
                chunk = tokens[start:start + batch]
                last = start + len(chunk) == n
                logits = self._step(chunk, logits_all=logits_all or not last, sparse=sparse)
                if logits_all:
                    out[start:start + len(chunk)] = logits
        return out if logits_all else logits[-1]

    def _step(self, tokens: np.ndarray, logits_all: bool, sparse: bool) -> np.ndarray:
        cfg, s, w, n, pos = self.config, self.state, self.weights, len(tokens), self.n_past
        x = s.x[:n]
        s.rows[:n] = tokens
        if n == 1:
            self._embd_call()
            # one native call per linear, bound once: sparse over the companion, or dense over the base
            calls = self.sparse.calls if sparse else self._dense_calls
        else:
            native.get_rows(w.token_embd.type, w.token_embd.data, cfg.n_vocab, cfg.n_embd, s.rows[:n], out=x)
            calls = None
        lin = self._matmul if calls is None else (lambda li, name, x, buf: calls[li][name]() or buf[:1])
        with np.errstate(over="ignore"):  # exp(-g) may overflow to inf in SiLU; the result is still exact (-0)
            for li, lw in enumerate(w.layers):
                xb = self._rmsnorm(x, lw.attn_norm, n)
                q, k, v = lin(li, "attn_q", xb, s.q), lin(li, "attn_k", xb, s.k), lin(li, "attn_v", xb, s.v)
                self._rope(q, pos, n, cfg.n_head)
                self._rope(k, pos, n, cfg.n_head_kv)
                s.key_cache[li, :, pos:pos + n] = k.reshape(n, cfg.n_head_kv, cfg.head_dim).transpose(1, 0, 2)
                s.value_cache[li, :, pos:pos + n] = v.reshape(n, cfg.n_head_kv, cfg.head_dim).transpose(1, 0, 2)
                attn = self._attention(li, q, pos, n)
                x += lin(li, "attn_output", attn, s.xb)

                xb = self._rmsnorm(x, lw.ffn_norm, n)
                gate, up = lin(li, "ffn_gate", xb, s.hb), lin(li, "ffn_up", xb, s.hb2)
                self._swiglu(gate, up)
                x += lin(li, "ffn_down", gate, s.xb)
        self.n_past += n
        if sparse:
            self.sparse.end_token()

        rows = x if logits_all else x[n - 1:n]
        xb = self._rmsnorm(rows, w.output_norm, len(rows))
        if n == 1:
            self._output_call()
            logits = s.logits[:1]
        else:
            logits = self._dense(w.output, xb, s.logits)
        if not np.isfinite(logits.sum()):  # one reduction, no temporary array
            raise NumericalError(f"NaN or inf in the logits at position {pos + n - 1}; the weights or the "
                                 f"activations overflowed")
        return logits

    # ---- the pieces, each in place on RunState buffers ----------------------------------------------------
    def _matmul(self, li: int, name: str, x: np.ndarray, buf: np.ndarray) -> np.ndarray:
        return self._dense(getattr(self.weights.layers[li], name), x, buf)

    def _dense(self, lin: Linear, x: np.ndarray, buf: np.ndarray) -> np.ndarray:
        out = buf[:len(x)]
        native.matmul(self.pool, lin.type, lin.data, lin.n_out, lin.n_in, x, out=out)
        return out

    def _rmsnorm(self, x: np.ndarray, weight: np.ndarray, n: int) -> np.ndarray:
        s = self.state
        out, ss = s.xb[:n], s.ss[:n]
        if n == 1:  # decode: one dot product instead of a reduction over a temporary (3 numpy calls, not 6)
            v = x[0]
            np.multiply(v, np.float32(1.0 / np.sqrt(float(np.dot(v, v)) / v.size + self.config.rms_eps)), out=out[0])
            out *= weight
            return out
        np.multiply(x, x, out=out)
        np.mean(out, axis=1, keepdims=True, out=ss)
        ss += self.config.rms_eps
        np.sqrt(ss, out=ss)
        np.divide(x, ss, out=out)
        out *= weight
        return out

    def _rope(self, t: np.ndarray, pos: int, n: int, n_heads: int) -> None:
        """Rotate adjacent pairs (t[2i], t[2i+1]) of the first rope_dim dims of every head by angle pos*freq_i."""
        cfg, s = self.config, self.state
        half = cfg.rope_dim // 2
        pairs = t.reshape(n, n_heads, cfg.head_dim // 2, 2)[:, :, :half]
        x0, x1 = pairs[..., 0], pairs[..., 1]
        cos, sin = s.cos[pos:pos + n, None, :], s.sin[pos:pos + n, None, :]
        t0, t1 = s.rope_tmp[0, :n, :n_heads], s.rope_tmp[1, :n, :n_heads]
        np.multiply(x0, cos, out=t0)
        np.multiply(x1, sin, out=t1)
        t0 -= t1  # new x0 = x0 cos - x1 sin
        np.multiply(x0, sin, out=t1)
        x1 *= cos
        x1 += t1  # new x1 = x0 sin + x1 cos
        x0[...] = t0

    def _attention(self, li: int, q: np.ndarray, pos: int, n: int) -> np.ndarray:
        cfg, s = self.config, self.state
        T = pos + n
        keys, values = s.key_cache[li, :, :T], s.value_cache[li, :, :T]  # (n_kv, T, hd)
        scale = np.float32(1.0 / np.sqrt(cfg.head_dim))
        out = s.attn[:n]
        if n == 1:  # decode: one native call over the cache (the prefill code below is the same math)
            self._attention_calls[li](T)
            return out
        # prefill: (n_kv, n_rep*n, hd) queries against T keys with a causal mask
        qh = q.reshape(n, cfg.n_head_kv, cfg.n_rep, cfg.head_dim).transpose(1, 2, 0, 3)
        qh = qh.reshape(cfg.n_head_kv, cfg.n_rep * n, cfg.head_dim)
        att = np.matmul(qh, keys.transpose(0, 2, 1)) * scale
        att = att.reshape(cfg.n_head_kv, cfg.n_rep, n, T)
        causal = np.arange(T)[None, :] > (pos + np.arange(n))[:, None]  # (n, T): key after query
        att[:, :, causal] = -np.inf
        att -= att.max(axis=3, keepdims=True)
        np.exp(att, out=att)
        att /= att.sum(axis=3, keepdims=True)
        o = np.matmul(att.reshape(cfg.n_head_kv, cfg.n_rep * n, T), values)  # (n_kv, n_rep*n, hd)
        out[...] = o.reshape(cfg.n_head_kv, cfg.n_rep, n, cfg.head_dim).transpose(2, 0, 1, 3).reshape(n, -1)
        return out

    @staticmethod
    def _swiglu(gate: np.ndarray, up: np.ndarray) -> None:
        """gate <- silu(gate) * up = gate * up / (1 + exp(-gate)), using `up` as scratch."""
        up *= gate
        np.negative(gate, out=gate)
        np.exp(gate, out=gate)
        gate += 1
        np.divide(up, gate, out=gate)


def check_tokens(tokens, n_past: int, n_ctx: int, n_vocab: int) -> np.ndarray:
    """The tokens of a forward call as int64, or a clear error: none, past the context, outside the vocabulary."""
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    n = len(tokens)
    if n == 0:
        raise ValueError("forward() needs at least one token")
    if n_past + n > n_ctx:
        raise ContextFullError(f"{n_past + n} tokens do not fit in the context of {n_ctx} "
                               f"({n_past} already cached, {n} new)")
    bad = (tokens < 0) | (tokens >= n_vocab)
    if bad.any():
        raise ValueError(f"token id {int(tokens[bad][0])} outside the vocabulary [0, {n_vocab})")
    return tokens


def open_companion(base_path: str | os.PathLike, companion: str | os.PathLike | None, sparse: bool | None,
                   sparse_prefill: bool) -> Companion | None:
    """The companion a model loads (Model.load's rules, shared by every backend), checked against its base."""
    if sparse is False and companion is not None:
        raise ValueError("a companion was given but sparse=False")
    if sparse_prefill and sparse is False:
        raise ValueError("sparse_prefill needs sparse decoding (sparse=False was given)")
    if sparse or (sparse is None and (companion is not None or companion_path(base_path).is_file())):
        return Companion.for_base(base_path, companion)
    return None


def step_mode(n: int, sparse_enabled: bool, sparse_prefill: bool, n_batch: int) -> tuple[bool, int]:
    """(sparse, tokens per step) for a forward call of n tokens: a single token is a decode step (sparse when a
    companion is on); a prompt is dense, in chunks of n_batch, unless sparse_prefill feeds it one token at a time."""
    sparse = sparse_enabled and (n == 1 or sparse_prefill)
    return sparse, 1 if sparse else n_batch
