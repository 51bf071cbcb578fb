"""The Llama forward pass (RMSNorm, RoPE, GQA attention over a KV cache, SwiGLU MLP), bound once to the native
library's rs_forward: a decode step or a prompt chunk is one native call (native/src/forward.c reads as the math).

`RunState` owns every buffer the forward pass touches, allocated once for up to `n_batch` tokens, so a step
allocates nothing. Prefill (several tokens) runs every linear as one dense product over the base weights; a
single-token decode step runs each through the rank-aware sparse kernel over the companion's tensors when an R-Sparse
companion is loaded and enabled (sparse.py), otherwise through the dense kernel over the base's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import native
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
        self.xb = np.zeros((n_batch, e), f32)  # normed input of a block / a linear's output
        self.q = np.zeros((n_batch, q), f32)  # rotated queries
        self.k = np.zeros((n_batch, kv), f32)
        self.v = np.zeros((n_batch, kv), f32)
        self.attn = np.zeros((n_batch, q), f32)  # attention output, input of attn_output
        self.hb = np.zeros((n_batch, cfg.n_ff), f32)  # gate, then silu(gate) * up
        self.hb2 = np.zeros((n_batch, cfg.n_ff), f32)  # up
        self.att = np.zeros((cfg.n_head, n_ctx), f32)  # attention scores of one query per head
        self.logits = np.zeros((n_batch, cfg.n_vocab), f32)
        # KV cache: (layer, kv head, position, head_dim); one head's keys are contiguous for the q·K product
        self.key_cache = np.zeros((cfg.n_layer, cfg.n_head_kv, n_ctx, hd), f32)
        self.value_cache = np.zeros((cfg.n_layer, cfg.n_head_kv, n_ctx, hd), f32)
        self.tokens = np.zeros(n_batch, np.int64)  # the step's token ids
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
        model._populate(comp)
        return model

    def _populate(self, companion: Companion | None) -> None:
        """Map in now what every step reads, as llama.cpp does at load, so the first prompt does not pay a page
        fault per 4 KiB: the block linears (the companion's copy when there is one: the base's then stay
        unread) and the head, unless they were read into tiles of 16 rows (_bind_decode). Token embeddings are
        looked up a row at a time, and fault in as used."""
        w = self.weights
        names = [w.output.name]
        if companion is None:
            names += [getattr(lw, n).name for lw in w.layers for n in LINEARS]
        else:
            companion.file.populate()
        self.file.populate([n for n in names if n not in self.repacked])  # a repacked copy is resident already

    def _bind_decode(self, companion: Companion | None) -> None:
        """Bind rs_forward to the weights, the companion's sparse forms and the run state's buffers, once."""
        s, w, cfg = self.state, self.weights, self.config
        self.sparse = None if companion is None else SparseDecode(companion)
        self.sparse_enabled = self.sparse is not None

        # Q4_0 and Q8_0 products read the weights repacked into tiles of 16 rows (native.repack_r16), which the dense
        # kernels read 16 rows at a time; the copy is read from the file, not through the map, so the base's
        # pages never become resident beside it. Only what is multiplied: the block linears unless a companion
        # holds them (then the base's stay unread), and the head; token embeddings that are not the head are
        # looked up a row at a time from the map.
        self.repacked: dict[str, tuple[int, np.ndarray]] = {}

        def dense(lin: Linear, read: bool = True) -> tuple:
            if read and int(lin.type) in native.TILED and lin.n_out % 16 == 0:
                if lin.name not in self.repacked:
                    self.repacked[lin.name] = native.repack_r16(lin.type, self.file.tensor_copy(lin.name),
                                                                lin.n_out, lin.n_in)
                return (*self.repacked[lin.name], lin.n_out, lin.n_in)
            return lin.type, lin.data, lin.n_out, lin.n_in

        fam = cfg.family
        blocks = [{"attn_norm": lw.attn_norm, "ffn_norm": lw.ffn_norm, "k_cache": s.key_cache[li],
                   "v_cache": s.value_cache[li],
                   "dense": [dense(getattr(lw, name), read=companion is None) for name in LINEARS],
                   "sparse": [self.sparse.linear_args(li, name) if self.sparse else None for name in LINEARS],
                   "bias": [lw.bias(name) for name in LINEARS], "q_norm": lw.attn_q_norm,
                   "k_norm": lw.attn_k_norm, "no_rope": not fam.rotates(li)}
                  for li, lw in enumerate(w.layers)]
        dims = dict(n_layer=cfg.n_layer, n_embd=cfg.n_embd, n_ff=cfg.n_ff, n_head=cfg.n_head,
                    n_head_kv=cfg.n_head_kv, head_dim=cfg.head_dim, rope_dim=cfg.rope_dim, n_vocab=cfg.n_vocab,
                    n_ctx=self.n_ctx, rms_eps=cfg.rms_eps, rope_neox=fam.rope_neox)
        state = dict(x=s.x, xb=s.xb, q=s.q, attn=s.attn, k=s.k, v=s.v, hb=s.hb, hb2=s.hb2, att=s.att,
                     logits=s.logits, tokens=s.tokens)
        if self.sparse:
            state.update(scratch=self.sparse.scratch, n_kept=self.sparse.n_kept)
        head = dense(w.output)
        embd = head if w.token_embd is w.output else dense(w.token_embd, read=False)
        self._forward = native.bind_forward(self.pool, dims, blocks, embd, w.output_norm, head, s.cos, s.sin, state)

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
        for start in range(0, n, batch):
            chunk = tokens[start:start + batch]
            # a chunk before the last computes its last token's logits only (one row of the head, not n_batch)
            logits = self._step(chunk, logits_all=logits_all, sparse=sparse)
            if logits_all:
                out[start:start + len(chunk)] = logits
        return out if logits_all else logits[-1]

    def _step(self, tokens: np.ndarray, logits_all: bool, sparse: bool) -> np.ndarray:
        """One native forward call over a chunk: the logits of every token (logits_all) or of the last one."""
        n, pos = len(tokens), self.n_past
        self.state.tokens[:n] = tokens
        self._forward(n, pos, sparse, logits_all)
        self.n_past += n
        if sparse:
            self.sparse.end_token()
        logits = self.state.logits[:n if logits_all else 1]
        if not np.isfinite(logits.sum()):  # one reduction, no temporary array
            raise NumericalError(f"NaN or inf in the logits at position {pos + n - 1}; the weights or the "
                                 f"activations overflowed")
        return logits


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
