"""One class per HF architecture: hyper-parameters -> GGUF keys, HF tensor names -> GGUF tensors.

Llama, Mistral and SmolLM2 share one decoder block, so one class serves them; a new family subclasses it and
overrides the narrow hooks (`check_config`, `set_params`, `map_tensor`, `extra_tensors`) and names its GGUF family
(rsparse_cpp/families.py: what the runtime does differently, and whether Q/K rows are permuted).
"""
from __future__ import annotations

import math
import re
from typing import Iterator

import gguf
import numpy as np

from rsparse_cpp.constants import Key, Tensor
from rsparse_cpp.families import FAMILIES, Family

from .checkpoint import CheckpointError

_REGISTRY: dict[str, type["LlamaModel"]] = {}


def register(cls):
    for arch in cls.hf_archs:
        _REGISTRY[arch] = cls
    return cls


def model_for(hparams: dict) -> "LlamaModel":
    archs = hparams.get("architectures") or []
    for a in archs:
        if a in _REGISTRY:
            return _REGISTRY[a](hparams)
    raise CheckpointError(f"unsupported architecture {archs or hparams.get('model_type')!r}; "
                          f"supported: {sorted(_REGISTRY)}")


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's Q/K rows put the two halves of each rotated pair half a head apart (rotate_half); llama.cpp's kernels
    rotate adjacent rows. Interleave the halves of every head so RoPE in GGUF acts on pairs (2i, 2i+1)."""
    n_out = w.shape[0]
    return w.reshape(n_head, 2, n_out // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@register
class LlamaModel:
    hf_archs = ("LlamaForCausalLM", "MistralForCausalLM")
    gguf_arch = "llama"  # general.architecture of the file: a row of rsparse_cpp.families.FAMILIES

    _BLOCK = {
        "input_layernorm": Tensor.ATTN_NORM,
        "self_attn.q_proj": Tensor.ATTN_Q,
        "self_attn.k_proj": Tensor.ATTN_K,
        "self_attn.v_proj": Tensor.ATTN_V,
        "self_attn.o_proj": Tensor.ATTN_OUTPUT,
        "post_attention_layernorm": Tensor.FFN_NORM,
        "mlp.gate_proj": Tensor.FFN_GATE,
        "mlp.up_proj": Tensor.FFN_UP,
        "mlp.down_proj": Tensor.FFN_DOWN,
    }
    _BIAS: dict[str, str] = {}  # GGUF weight name -> its bias's, for the biases a family has
    _GLOBAL = {
        "model.embed_tokens.weight": Tensor.TOKEN_EMBD,
        "model.norm.weight": Tensor.OUTPUT_NORM,
        "lm_head.weight": Tensor.OUTPUT,
    }
    _BLOCK_RE = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")

    def __init__(self, hparams: dict):
        self.hp = hparams
        self.check_config()
        hp = hparams
        self.n_embd = hp["hidden_size"]
        self.n_layer = hp["num_hidden_layers"]
        self.n_head = hp["num_attention_heads"]
        self.n_head_kv = hp.get("num_key_value_heads") or self.n_head
        self.head_dim = hp.get("head_dim") or self.n_embd // self.n_head
        self.n_ff = hp["intermediate_size"]
        self.n_vocab = hp["vocab_size"]
        self.tied = bool(hp.get("tie_word_embeddings", False))
        self.seen: set[str] = set()

    @property
    def family(self) -> Family:
        return FAMILIES[self.gguf_arch]

    # ---- hooks --------------------------------------------------------------------------------------------
    def check_config(self) -> None:
        hp = self.hp
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            if not isinstance(hp.get(key), int) or hp[key] <= 0:
                raise CheckpointError(f"config.json: {key} = {hp.get(key)!r}, expected a positive integer")
        if hp.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"config.json: hidden_act = {hp['hidden_act']!r}; only 'silu' (SwiGLU) is supported")
        for key in ("attention_bias", "mlp_bias"):
            if hp.get(key):
                raise CheckpointError(f"config.json: {key} = true; biases are not supported for {self.hf_archs[0]}")
        if hp.get("use_sliding_window"):
            raise CheckpointError("config.json: use_sliding_window = true; sliding-window attention is not supported")
        rope = self.rope_scaling()
        if rope and rope.get("rope_type", rope.get("type", "default")) not in ("default", "llama3"):
            raise CheckpointError(f"config.json: rope scaling {rope!r}; supported: none, 'default', 'llama3'")

    def rope_scaling(self) -> dict | None:
        # transformers < 5 writes rope_scaling; >= 5 writes rope_parameters (which also holds rope_theta)
        return self.hp.get("rope_scaling") or self.hp.get("rope_parameters")

    def rope_theta(self) -> float:
        rope = self.hp.get("rope_parameters") or {}
        return float(self.hp.get("rope_theta") or rope.get("rope_theta") or 10000.0)

    def set_params(self, w: gguf.GGUFWriter) -> None:
        a = lambda key: Key.arch(key, self.gguf_arch)  # noqa: E731
        w.add_string(Key.NAME, str(self.hp.get("_name_or_path") or self.hp.get("model_type") or "llama"))
        w.add_uint32(a(Key.CONTEXT_LENGTH), int(self.hp.get("max_position_embeddings", 2048)))
        w.add_uint32(a(Key.EMBEDDING_LENGTH), self.n_embd)
        w.add_uint32(a(Key.BLOCK_COUNT), self.n_layer)
        w.add_uint32(a(Key.FEED_FORWARD_LENGTH), self.n_ff)
        w.add_uint32(a(Key.HEAD_COUNT), self.n_head)
        w.add_uint32(a(Key.HEAD_COUNT_KV), self.n_head_kv)
        w.add_float32(a(Key.RMS_EPS), float(self.hp.get("rms_norm_eps", 1e-6)))
        w.add_float32(a(Key.ROPE_FREQ_BASE), self.rope_theta())
        w.add_uint32(a(Key.ROPE_DIMENSION_COUNT), self.head_dim)
        if self.head_dim != self.n_embd // self.n_head:
            w.add_uint32(a(Key.KEY_LENGTH), self.head_dim)
            w.add_uint32(a(Key.VALUE_LENGTH), self.head_dim)
        w.add_uint32(a(Key.VOCAB_SIZE), self.n_vocab)

    def map_tensor(self, name: str, data: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        if name.endswith("rotary_emb.inv_freq"):
            return  # a buffer transformers recomputes; RoPE frequencies come from the GGUF keys
        if name in self._GLOBAL:
            if name == "lm_head.weight" and self.tied:
                return  # tied: llama.cpp reuses token_embd when output.weight is absent
            yield self._emit(self._GLOBAL[name], data)
            return
        m = self._BLOCK_RE.fullmatch(name)
        if not m or m.group(2) not in self._BLOCK or int(m.group(1)) >= self.n_layer:
            raise CheckpointError(f"unexpected tensor {name!r} {tuple(data.shape)}: not part of a "
                                  f"{self.hf_archs[0]} checkpoint we can convert")
        bid, part = int(m.group(1)), m.group(2)
        gguf_name = self._BLOCK[part]
        if m.group(3) == "bias":
            if gguf_name not in self._BIAS:
                raise CheckpointError(f"unexpected tensor {name!r}: {self.hf_archs[0]} has no bias there")
            gguf_name = self._BIAS[gguf_name]
        if self.family.permuted_qk and part in ("self_attn.q_proj", "self_attn.k_proj"):  # weights and biases
            data = permute_qk(data, self.n_head if part == "self_attn.q_proj" else self.n_head_kv)
        yield self._emit(Tensor.blk(gguf_name, bid), data)

    def extra_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        rope = self.rope_scaling()
        if rope and rope.get("rope_type", rope.get("type")) == "llama3":
            yield self._emit(Tensor.ROPE_FREQS, self.llama3_rope_freqs(rope))

    # ---- helpers ------------------------------------------------------------------------------------------
    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        e, q, kv = self.n_embd, self.n_head * self.head_dim, self.n_head_kv * self.head_dim
        shapes = {Tensor.TOKEN_EMBD: (self.n_vocab, e), Tensor.OUTPUT_NORM: (e,)}
        if not self.tied:
            shapes[Tensor.OUTPUT] = (self.n_vocab, e)
        per_block = {Tensor.ATTN_NORM: (e,), Tensor.ATTN_Q: (q, e), Tensor.ATTN_K: (kv, e), Tensor.ATTN_V: (kv, e),
                     Tensor.ATTN_OUTPUT: (e, q), Tensor.FFN_NORM: (e,), Tensor.FFN_GATE: (self.n_ff, e),
                     Tensor.FFN_UP: (self.n_ff, e), Tensor.FFN_DOWN: (e, self.n_ff)}
        if self.family.qkv_bias:
            per_block.update({Tensor.ATTN_Q_BIAS: (q,), Tensor.ATTN_K_BIAS: (kv,), Tensor.ATTN_V_BIAS: (kv,)})
        if self.family.qk_norm:
            per_block.update({Tensor.ATTN_Q_NORM: (self.head_dim,), Tensor.ATTN_K_NORM: (self.head_dim,)})
        for b in range(self.n_layer):
            for name, shape in per_block.items():
                shapes[Tensor.blk(name, b)] = shape
        return shapes

    def _emit(self, gguf_name: str, data: np.ndarray) -> tuple[str, np.ndarray]:
        expected = self.expected_shapes().get(gguf_name) if gguf_name != Tensor.ROPE_FREQS else data.shape
        if expected is None or tuple(data.shape) != tuple(expected):
            raise CheckpointError(f"{gguf_name}: shape {tuple(data.shape)}, expected {expected} from config.json")
        if not np.isfinite(data).all():
            raise CheckpointError(f"{gguf_name}: weights contain NaN or inf")
        self.seen.add(gguf_name)
        return gguf_name, data

    def check_complete(self) -> None:
        missing = sorted(set(self.expected_shapes()) - self.seen)
        if missing:
            raise CheckpointError(f"checkpoint is missing {len(missing)} tensors, e.g. {missing[:3]}")

    def llama3_rope_freqs(self, rope: dict) -> np.ndarray:
        """Per-frequency divisors d_i such that the scaled inverse frequency is inv_freq_i / d_i (Llama 3.1)."""
        factor = float(rope["factor"])
        lo, hi = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
        old_ctx = float(rope.get("original_max_position_embeddings", 8192))
        inv_freq = self.rope_theta() ** (-np.arange(0, self.head_dim, 2, dtype=np.float64) / self.head_dim)
        wavelen = 2 * math.pi / inv_freq
        smooth = np.clip((old_ctx / wavelen - lo) / (hi - lo), 0.0, 1.0)
        scaled = np.where(wavelen < old_ctx / hi, inv_freq,
                          np.where(wavelen > old_ctx / lo, inv_freq / factor,
                                   (1 - smooth) * inv_freq / factor + smooth * inv_freq))
        return (inv_freq / scaled).astype(np.float32)


@register
class Qwen2Model(LlamaModel):
    """Qwen2 and Qwen2.5: biases on q, k and v (built in: Qwen2Config has no attention_bias key); NEOX RoPE, so
    Q/K rows stay in HF's order."""
    hf_archs = ("Qwen2ForCausalLM",)
    gguf_arch = "qwen2"
    _BIAS = {Tensor.ATTN_Q: Tensor.ATTN_Q_BIAS, Tensor.ATTN_K: Tensor.ATTN_K_BIAS, Tensor.ATTN_V: Tensor.ATTN_V_BIAS}


@register
class Qwen3Model(LlamaModel):
    """Qwen3: no biases (attention_bias false), an RMSNorm over every head of q and k before RoPE; NEOX RoPE."""
    hf_archs = ("Qwen3ForCausalLM",)
    gguf_arch = "qwen3"
    _BLOCK = {**LlamaModel._BLOCK, "self_attn.q_norm": Tensor.ATTN_Q_NORM, "self_attn.k_norm": Tensor.ATTN_K_NORM}


@register
class SmolLM3Model(LlamaModel):
    """SmolLM3: Llama's block without RoPE in every fourth layer. llama.cpp fixes that step at 4, so a checkpoint
    whose no_rope_layers say otherwise cannot be written as a file llama.cpp reads the same way."""
    hf_archs = ("SmolLM3ForCausalLM",)
    gguf_arch = "smollm3"

    def check_config(self) -> None:
        super().check_config()
        n, step = self.hp["num_hidden_layers"], self.family.nope_step
        want = [int(self.family.rotates(il)) for il in range(n)]
        got = self.hp.get("no_rope_layers")
        if got is not None and [int(v) for v in got] != want:
            raise CheckpointError(f"config.json: no_rope_layers = {got}; llama.cpp's smollm3 skips RoPE in every "
                                  f"{step}th layer exactly ({want})")
