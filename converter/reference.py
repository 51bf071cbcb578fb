"""The reference R-Sparse linear (PyTorch): the ground truth the runtime's kernels are compared with.

For y = W x with W (out, in), per token (R-Sparse, arXiv 2504.19449, Eq. 4):
    score = |x| * colnorm           (|x| alone where rho == 1: plain magnitude sparsity; WINA's |x| * colnorm there
                                     too with SparseState.score_all)
    m     = score > tau             (tau: one scalar per linear)
    y     = W[:, m] x[m] + U_r (S_r V_r^T ((1 - m) * x))
U_r is (out, rank) and `vs` = S_r V_r^T is (rank, in). With rank 0 the second term is absent.

`rsparse_model` swaps the seven linears of every decoder block of a transformers Llama model for this module; one
`SparseState` object shared by all of them selects the mode:
    dense   y = W x (the model unchanged)
    strict  every token sparse
    paper   only the last `paper_fraction` of the positions of each window sparse (the paper's protocol: a dense
            prefix, then sparse tokens that attend to it)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from rsparse_cpp.constants import LINEARS

# GGUF short name -> attribute path inside a transformers LlamaDecoderLayer
HF_LINEAR = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}
MODES = ("dense", "strict", "paper")


@dataclass
class SparseState:
    """Shared by every RSparseLinear of one model."""

    mode: str = "dense"
    paper_fraction: float = 0.1
    track: bool = False  # count kept channels (for the measured model-level sparsity)
    # set during sequential calibration: called as calibrate(linear, x2d, score2d) when linear.tau is None
    calibrate: Callable | None = None
    modules: list = field(default_factory=list)
    score_all: bool = False  # |x| * colnorm at rho == 1 too (rsparse.score abs_x_colnorm_all, WINA's score)

    def reset_counts(self) -> None:
        for m in self.modules:
            m.kept, m.tokens = 0, 0

    def measured_sparsity(self) -> float:
        """1 - (parameters read) / (block-linear parameters), averaged over the sparse tokens seen while tracking."""
        read = total = 0.0
        for m in self.modules:
            if m.tokens:
                read += m.kept / m.tokens * m.out_features + m.rank * (m.in_features + m.out_features)
                total += m.in_features * m.out_features
        return 1.0 - read / total if total else 0.0


def paper_start(n_pos: int, fraction: float) -> int:
    """First sparse position of a window under the paper's protocol (at least one sparse position)."""
    return n_pos - max(1, int(round(n_pos * fraction)))


class RSparseLinear(nn.Module):
    def __init__(self, linear: nn.Linear, state: SparseState, bid: int, name: str):
        super().__init__()
        self.weight = linear.weight  # (out, in), shared with the original module
        self.bias = linear.bias  # Qwen2's q, k and v: added after the product, which alone R-Sparse approximates
        self.out_features, self.in_features = self.weight.shape
        self.state, self.bid, self.name = state, bid, name
        self.register_buffer("colnorm", self.weight.detach().double().norm(dim=0).float(), persistent=False)  # (in,)
        self.tau: float | None = float("-inf")  # keep everything until calibrated
        self.rho = 1.0
        self.rank = 0
        self.u: torch.Tensor | None = None  # (out, rank)
        self.vs: torch.Tensor | None = None  # (rank, in)
        self.kept, self.tokens = 0, 0

    def set(self, tau: float | None, rho: float, u: torch.Tensor | None = None, vs: torch.Tensor | None = None):
        rank = 0 if u is None else u.shape[1]
        if u is not None and (u.shape != (self.out_features, rank) or vs is None or vs.shape != (rank, self.in_features)):
            raise ValueError(f"blk.{self.bid}.{self.name}: factors {tuple(u.shape)} x "
                             f"{None if vs is None else tuple(vs.shape)} do not fit W {tuple(self.weight.shape)}")
        self.tau, self.rho, self.rank = tau, float(rho), rank
        self.u = None if u is None else u.to(self.weight.dtype).contiguous()
        self.vs = None if vs is None else vs.to(self.weight.dtype).contiguous()

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs() if self.rho >= 1.0 and not self.state.score_all else x.abs() * self.colnorm

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., n_pos, in)
        st = self.state
        if st.mode == "dense":
            return F.linear(x, self.weight, self.bias)
        score = self.score(x)
        if self.tau is None:
            if st.calibrate is None:
                raise RuntimeError(f"blk.{self.bid}.{self.name}: tau is not calibrated")
            st.calibrate(self, x.reshape(-1, self.in_features), score.reshape(-1, self.in_features))
        keep = score > self.tau
        if st.mode == "paper":
            keep[..., :paper_start(x.shape[-2], st.paper_fraction), :] = True
        if st.track:
            sparse_pos = keep[..., paper_start(x.shape[-2], st.paper_fraction):, :] if st.mode == "paper" else keep
            self.kept += int(sparse_pos.sum())
            self.tokens += sparse_pos.numel() // self.in_features
        xs = torch.where(keep, x, 0.0)
        y = F.linear(xs, self.weight)
        if self.rank:
            y = y + F.linear(F.linear(x - xs, self.vs), self.u)
        return y if self.bias is None else y + self.bias


def decoder_layers(model) -> nn.ModuleList:
    return model.model.layers


def iter_linears(model) -> Iterator[tuple[int, str, nn.Module]]:
    """(block index, GGUF short name, module) for the seven linears of every block, in LINEARS order."""
    for bid, layer in enumerate(decoder_layers(model)):
        for name in LINEARS:
            yield bid, name, layer.get_submodule(HF_LINEAR[name])


def rsparse_model(model, state: SparseState | None = None) -> SparseState:
    """Swap the seven linears of every block of `model` (in place) for RSparseLinear; returns the shared state.
    Calling it again on a swapped model returns the existing state."""
    existing = [m for _, _, m in iter_linears(model) if isinstance(m, RSparseLinear)]
    if existing:
        return existing[0].state
    state = state or SparseState()
    for bid, name, lin in list(iter_linears(model)):
        parent_path, attr = HF_LINEAR[name].rsplit(".", 1)
        module = RSparseLinear(lin, state, bid, name)
        setattr(decoder_layers(model)[bid].get_submodule(parent_path), attr, module)
        state.modules.append(module)
    return state


def rsparse_linear(model, bid: int, name: str) -> RSparseLinear:
    m = decoder_layers(model)[bid].get_submodule(HF_LINEAR[name])
    if not isinstance(m, RSparseLinear):
        raise TypeError("call rsparse_model(model) first")
    return m


def apply_companion(model, companion) -> SparseState:
    """Load tau, rho and factors of a companion file (rsparse_cpp.companion.Companion) into the reference model;
    sparse-path weights are the companion's own (dequantized, Q/K rows un-permuted back to HF order), so the
    reference computes what the runtime computes from those files."""
    import numpy as np

    from .companion import dequantize, unpermute_qk

    from .architectures import model_for

    state = rsparse_model(model)
    cfg = model.config
    permuted = model_for(cfg.to_dict()).family.permuted_qk  # the base's Q/K row order (rsparse_cpp/families.py)
    n_head, n_head_kv = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
    for bid, name, m in iter_linears(model):
        c = companion.linear(bid, name)
        if (c.n_out, c.n_in) != tuple(m.weight.shape):
            raise ValueError(f"{companion.path}: blk.{bid}.{name} is ({c.n_out}, {c.n_in}), model has "
                             f"{tuple(m.weight.shape)}")
        w = dequantize(c.weight, c.weight_type, (c.n_in, c.n_out)).T  # (out, in)
        u = None if c.rank == 0 else np.asarray(c.u, dtype=np.float32)
        if permuted and name in ("attn_q", "attn_k"):
            heads = n_head if name == "attn_q" else n_head_kv
            w = unpermute_qk(w, heads)
            u = None if u is None else unpermute_qk(u, heads)
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
        m.colnorm = torch.from_numpy(np.asarray(c.colnorm, dtype=np.float32).copy())
        state.score_all = companion.score == "abs_x_colnorm_all"
        m.set(float(c.tau), float(c.rho), None if u is None else torch.from_numpy(np.array(u, dtype=np.float32)),
              None if u is None else torch.from_numpy(np.asarray(c.vs, dtype=np.float32).copy()))
    return state
