"""Config: the model's hyper-parameters, read from GGUF keys and checked for sane ranges."""
from __future__ import annotations

from dataclasses import dataclass

from .constants import Key
from .families import FAMILIES, Family
from .gguf_file import GGUFError, GGUFFile


@dataclass(frozen=True)
class Config:
    n_vocab: int
    n_embd: int  # {arch}.embedding_length (llama.embedding_length, qwen3.embedding_length, ...)
    n_layer: int  # {arch}.block_count
    n_ff: int  # {arch}.feed_forward_length
    n_head: int
    n_head_kv: int
    head_dim: int  # llama.attention.key_length, default n_embd / n_head
    n_ctx_train: int  # llama.context_length
    rms_eps: float
    rope_theta: float
    rope_dim: int  # llama.rope.dimension_count: how many dims of each head are rotated
    arch: str = "llama"  # general.architecture: the family (families.py), and the prefix of the keys above

    @property
    def family(self) -> Family:
        return FAMILIES[self.arch]

    @property
    def n_rep(self) -> int:
        """Query heads per KV head (GQA)."""
        return self.n_head // self.n_head_kv

    @classmethod
    def from_gguf(cls, f: GGUFFile) -> "Config":
        arch = f.get_str(Key.ARCHITECTURE)
        if arch not in FAMILIES:
            raise GGUFError(f.path, Key.ARCHITECTURE,
                            f"unsupported architecture {arch!r} (supported: {', '.join(FAMILIES)})")

        def i(key, default=None, lo=1, hi=1 << 24):
            k = Key.arch(key, arch)
            v = f.require(k, int) if default is None or k in f.fields else default
            if not lo <= v <= hi:
                raise GGUFError(f.path, k, f"{v} outside [{lo}, {hi}]")
            return v

        def fl(key, default, lo, hi):
            k = Key.arch(key, arch)
            v = f.require(k, float) if k in f.fields else default
            if not lo <= v <= hi:  # also refuses NaN
                raise GGUFError(f.path, k, f"{v} outside [{lo}, {hi}]")
            return float(v)

        n_embd = i(Key.EMBEDDING_LENGTH)
        n_head = i(Key.HEAD_COUNT, hi=4096)
        n_head_kv = i(Key.HEAD_COUNT_KV, default=n_head, hi=4096)
        if n_head % n_head_kv:
            raise GGUFError(f.path, Key.arch(Key.HEAD_COUNT_KV, arch),
                            f"{n_head_kv} does not divide head_count {n_head}")
        head_dim = i(Key.KEY_LENGTH, default=n_embd // n_head, hi=4096)
        if Key.arch(Key.VALUE_LENGTH, arch) in f.fields and i(Key.VALUE_LENGTH, hi=4096) != head_dim:
            raise GGUFError(f.path, Key.arch(Key.VALUE_LENGTH, arch), "must equal key_length")
        if head_dim % 2:
            raise GGUFError(f.path, Key.arch(Key.KEY_LENGTH, arch), f"head dim {head_dim} is odd; RoPE needs pairs")
        rope_dim = i(Key.ROPE_DIMENSION_COUNT, default=head_dim, hi=head_dim)
        if rope_dim % 2:
            raise GGUFError(f.path, Key.arch(Key.ROPE_DIMENSION_COUNT, arch), f"{rope_dim} is odd")
        tokens = f.require(Key.TOKENS, list)
        n_vocab = i(Key.VOCAB_SIZE, default=len(tokens), hi=1 << 22)
        return cls(
            n_vocab=n_vocab,
            n_embd=n_embd,
            n_layer=i(Key.BLOCK_COUNT, hi=1024),
            n_ff=i(Key.FEED_FORWARD_LENGTH),
            n_head=n_head,
            n_head_kv=n_head_kv,
            head_dim=head_dim,
            n_ctx_train=i(Key.CONTEXT_LENGTH, default=2048, hi=1 << 24),
            rms_eps=fl(Key.RMS_EPS, 1e-5, 1e-12, 1e-1),
            rope_theta=fl(Key.ROPE_FREQ_BASE, 10000.0, 1.0, 1e12),
            rope_dim=rope_dim,
            arch=arch,
        )
