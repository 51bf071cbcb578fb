"""Model families: what a decoder block of each GGUF architecture does beyond Llama's, in one table.

Every family here is a Llama block (RMSNorm, GQA attention with RoPE, SwiGLU MLP, the same seven linears) with a
few switches, named after llama.cpp's general.architecture and read the way llama.cpp reads those files:

    llama    Llama 1-3, Mistral, SmolLM2: Q/K rows permuted by the converter, RoPE on adjacent pairs.
    qwen2    Qwen2, Qwen2.5: biases on q, k and v; RoPE on pairs half a head apart (HF's rotate_half, llama.cpp's
             NEOX), so the converter leaves Q/K rows in HF's order.
    qwen3    Qwen3: no biases; an RMSNorm over each head of q and of k (attn_q_norm, attn_k_norm: head_dim
             weights) before RoPE; NEOX RoPE.
    smollm3  SmolLM3: Llama's block, but every fourth block (il + 1 divisible by 4) has no RoPE (llama.cpp fixes
             the step at 4; the converter refuses a checkpoint with another pattern).

A new family is a row of FAMILIES (and, when it brings a new kind of tensor, its handling in weights.py, the native
forward pass and the converter's architectures.py).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str            # general.architecture, and the prefix of its hyper-parameter keys
    rope_neox: bool      # RoPE rotates (i, i + rope_dim / 2); else (2i, 2i + 1) of llama.cpp's permuted Q/K rows
    qkv_bias: bool       # blk.N.attn_{q,k,v}.bias, added after the product
    qk_norm: bool        # blk.N.attn_{q,k}_norm.weight: RMSNorm of every head of q and k, before RoPE
    nope_step: int = 0   # block il skips RoPE when (il + 1) % nope_step == 0; 0: every block rotates

    @property
    def permuted_qk(self) -> bool:
        """Whether the GGUF's attn_q/attn_k rows are in llama.cpp's permutation (converter.permute_qk)."""
        return not self.rope_neox

    def rotates(self, bid: int) -> bool:
        return not self.nope_step or (bid + 1) % self.nope_step != 0


FAMILIES = {f.name: f for f in (
    Family("llama", rope_neox=False, qkv_bias=False, qk_norm=False),
    Family("qwen2", rope_neox=True, qkv_bias=True, qk_norm=False),
    Family("qwen3", rope_neox=True, qkv_bias=False, qk_norm=True),
    Family("smollm3", rope_neox=False, qkv_bias=False, qk_norm=False, nope_step=4),
)}

