"""Weights: zero-copy views into the mapped GGUF, each checked against the shape the Config implies."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import Config
from .constants import GGMLType, Tensor
from .gguf_file import GGUFError, GGUFFile


@dataclass(frozen=True)
class Linear:
    """y = W x with W stored as GGUF does: n_out rows of n_in elements (ne = [n_in, n_out])."""

    name: str
    type: GGMLType
    data: np.ndarray  # F32/F16: (n_out, n_in); quantized: (n_out, row_bytes) uint8
    n_out: int
    n_in: int


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: np.ndarray  # (n_embd,) f32
    attn_q: Linear  # (n_head*head_dim, n_embd); rows permuted by llama.cpp for interleaved RoPE (not qwen's)
    attn_k: Linear  # (n_head_kv*head_dim, n_embd); same permutation
    attn_v: Linear  # (n_head_kv*head_dim, n_embd)
    attn_output: Linear  # (n_embd, n_head*head_dim)
    ffn_norm: np.ndarray  # (n_embd,) f32
    ffn_gate: Linear  # (n_ff, n_embd)
    ffn_up: Linear  # (n_ff, n_embd)
    ffn_down: Linear  # (n_embd, n_ff)
    # what some families add (families.py), None elsewhere:
    attn_q_bias: np.ndarray | None = None  # (n_head*head_dim,) f32, qwen2; in the rows' order, like attn_q
    attn_k_bias: np.ndarray | None = None  # (n_head_kv*head_dim,) f32
    attn_v_bias: np.ndarray | None = None  # (n_head_kv*head_dim,) f32
    attn_q_norm: np.ndarray | None = None  # (head_dim,) f32, qwen3: RMSNorm weights of every q head
    attn_k_norm: np.ndarray | None = None  # (head_dim,) f32, of every k head

    def bias(self, name: str) -> np.ndarray | None:
        """The bias added after linear `name` (a LINEARS name), or None."""
        return getattr(self, f"{name}_bias", None)


@dataclass(frozen=True)
class Weights:
    token_embd: Linear  # (n_vocab, n_embd): rows are looked up, not multiplied
    layers: tuple[LayerWeights, ...]
    output_norm: np.ndarray  # (n_embd,) f32
    output: Linear  # (n_vocab, n_embd); token_embd itself when embeddings are tied
    rope_freqs: np.ndarray | None  # (rope_dim/2,) f32 frequency divisors (llama3 rope scaling), or None

    @classmethod
    def from_gguf(cls, f: GGUFFile, cfg: Config) -> "Weights":
        def linear(name: str, n_out: int, n_in: int) -> Linear:
            info = f.tensors.get(name)
            if info is None:
                raise GGUFError(f.path, name, "tensor missing")
            if info.shape != (n_out, n_in):
                raise GGUFError(f.path, name, f"shape {info.shape}, expected {(n_out, n_in)} from the hyper-parameters")
            return Linear(name, info.type, f.tensor(name), n_out, n_in)

        def vector(name: str, n: int) -> np.ndarray:
            info = f.tensors.get(name)
            if info is None:
                raise GGUFError(f.path, name, "tensor missing")
            if info.shape != (n,) or info.type != GGMLType.F32:
                raise GGUFError(f.path, name, f"{info.type.name}{info.shape}, expected F32{(n,)}")
            v = f.tensor_copy(name)  # not through the map (GGUFFile.tensor_copy)
            if not np.isfinite(v).all():
                raise GGUFError(f.path, name, "contains NaN or inf")
            return v

        def extra(name: str, n: int, wanted: bool) -> np.ndarray | None:
            """A tensor the family has (required) or does not (refused: it would change the results unread)."""
            if wanted:
                return vector(name, n)
            if name in f.tensors:
                raise GGUFError(f.path, name, f"not part of a {cfg.arch!r} model (families.py)")
            return None

        e, q, kv = cfg.n_embd, cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim
        fam = cfg.family
        layers = []
        for b in range(cfg.n_layer):
            t = lambda name: Tensor.blk(name, b)  # noqa: E731
            layers.append(LayerWeights(
                attn_norm=vector(t(Tensor.ATTN_NORM), e),
                attn_q=linear(t(Tensor.ATTN_Q), q, e),
                attn_k=linear(t(Tensor.ATTN_K), kv, e),
                attn_v=linear(t(Tensor.ATTN_V), kv, e),
                attn_output=linear(t(Tensor.ATTN_OUTPUT), e, q),
                ffn_norm=vector(t(Tensor.FFN_NORM), e),
                ffn_gate=linear(t(Tensor.FFN_GATE), cfg.n_ff, e),
                ffn_up=linear(t(Tensor.FFN_UP), cfg.n_ff, e),
                ffn_down=linear(t(Tensor.FFN_DOWN), e, cfg.n_ff),
                attn_q_bias=extra(t(Tensor.ATTN_Q_BIAS), q, fam.qkv_bias),
                attn_k_bias=extra(t(Tensor.ATTN_K_BIAS), kv, fam.qkv_bias),
                attn_v_bias=extra(t(Tensor.ATTN_V_BIAS), kv, fam.qkv_bias),
                attn_q_norm=extra(t(Tensor.ATTN_Q_NORM), cfg.head_dim, fam.qk_norm),
                attn_k_norm=extra(t(Tensor.ATTN_K_NORM), cfg.head_dim, fam.qk_norm),
            ))
        token_embd = linear(Tensor.TOKEN_EMBD, cfg.n_vocab, e)
        output = linear(Tensor.OUTPUT, cfg.n_vocab, e) if Tensor.OUTPUT in f.tensors else token_embd
        rope_freqs = vector(Tensor.ROPE_FREQS, cfg.rope_dim // 2) if Tensor.ROPE_FREQS in f.tensors else None
        return cls(token_embd, tuple(layers), vector(Tensor.OUTPUT_NORM, e), output, rope_freqs)
