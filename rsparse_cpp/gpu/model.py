"""model.py's decode loop on torch tensors: weights, KV cache and activations live on `device` ("cuda" or "cpu").

The math is model.py's, op for op (RMSNorm, RoPE on adjacent pairs, GQA attention, SwiGLU), so the logits agree
with the numpy Model to float32 rounding. Prefill and dense decode multiply by the weights dequantized to float32 on
the device (by the native library's own dequantizer, so the values are exactly the ones the CPU kernels use): one
cuBLAS GEMM per linear, at 4 bytes a weight. As in the native Model, those are the companion's weights when one is
loaded (its rsparse_weight, W^T quantized along the outputs) and the base's otherwise, so the base's block weights
are never read with a companion. R-Sparse decode reads the companion through one of two interchangeable sparse
linears:
  "kernel"  the CUDA kernel rs_cuda_sparse_matvec over the companion's tensors copied to the GPU as they are in the
            file (quantized rows of the kept channels: the bytes whose reading sparsity saves);
  "torch"   the same semantics in torch ops over the companion dequantized to float32: any device; the reference
            the kernel is tested against, and what device="cpu" runs.
torch is imported on first use: the rest of the runtime does not need it.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

from .. import native
from ..companion import Companion
from ..config import Config
from ..constants import LINEARS
from ..gguf_file import GGUFFile
from ..model import NumericalError, check_tokens, open_companion, step_mode
from ..sparse import KeptStats
from ..weights import Weights
from . import native_cuda


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("the torch backend (rsparse_cpp.gpu) needs PyTorch: pip install torch "
                          "(a CUDA build of it for device='cuda')") from None
    return torch


def _device(name: str):
    if not isinstance(name, str) or name.split(":")[0] not in ("cuda", "cpu"):
        raise ValueError(f"device must be 'cuda', 'cuda:N' or 'cpu', got {name!r}")
    torch = _torch()
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r}, but torch {torch.__version__} sees no CUDA device "
                           f"(a CPU-only build, no driver, or CUDA_VISIBLE_DEVICES hides the GPU)")
    return torch.device(name)


def _put(a: np.ndarray, device):
    """A tensor on `device` holding a copy of `a` (a read-only view of the mapped file is never aliased)."""
    if not (a.flags.writeable and a.flags.c_contiguous):
        a = np.array(a)
    return _torch().from_numpy(a).to(device)


def dequantize(lin_type, data: np.ndarray, n_rows: int, n_cols: int) -> np.ndarray:
    """(n_rows, n_cols) float32 from a weight stored as GGUF rows of n_cols elements of lin_type."""
    return native.get_rows(lin_type, data, n_rows, n_cols, np.arange(n_rows, dtype=np.int64))


class TorchSparse(KeptStats):
    """R-Sparse decode for every decoder-block linear, with SparseDecode's statistics (sparse.py).

    impl "kernel" needs a CUDA device and librsparse_cuda; "torch" runs anywhere. `count_kept` (chosen at load)
    records the kept channels of every call: free with "torch" on the CPU, one stream synchronization per linear
    with "kernel" (so off by default there; `tokens` then stays 0 and the statistics are empty)."""

    def __init__(self, companion: Companion, device, impl: str, count_kept: bool | None = None):
        torch = _torch()
        if impl not in ("kernel", "torch"):
            raise ValueError(f"impl must be 'kernel' or 'torch', got {impl!r}")
        if impl == "kernel" and device.type != "cuda":
            raise ValueError(f"the CUDA kernel needs a CUDA device, got {device}")
        self.companion, self.impl, self.device = companion, impl, device
        self._count = impl == "torch" if count_kept is None else bool(count_kept)
        lins = [companion.linear(b, name) for b in range(companion.n_layer) for name in LINEARS]
        super().__init__(lins)  # n_kept: per call, written by the kernel or by __call__
        put = lambda a: _put(a, device)  # noqa: E731
        self._linears = []
        if impl == "kernel":
            need = max(native_cuda.scratch_bytes(c.n_out, c.n_in, c.rank) for c in lins)
            scratch = torch.empty(need, dtype=torch.uint8, device=device)  # shared: calls run one at a time
            for slot, c in enumerate(lins):
                colnorm = put(c.colnorm) if c.weighted else None  # else the plain magnitude score |x|
                u, vs = (put(c.u), put(c.vs)) if c.rank else (None, None)
                self._linears.append(native_cuda.BoundSparse(
                    int(c.weight_type), put(c.weight.view(np.uint8)), c.n_out, c.n_in, colnorm, c.tau, u, vs,
                    c.rank, scratch, self.n_kept if self._count else None, slot))
        else:
            for c in lins:
                self._linears.append((
                    put(dequantize(c.weight_type, c.weight, c.n_in, c.n_out)),  # wt (in, out): row j = channel j
                    put(c.colnorm) if c.weighted else None,
                    float(np.float32(c.tau)),  # the kernels compare in float32
                    put(c.u.astype(np.float32)) if c.rank else None,  # (out, rank)
                    put(c.vs.astype(np.float32)) if c.rank else None))  # (rank, in)

    def dense_weight(self, slot: int):
        """W^T (n_in, n_out) of linear `slot` in float32 on the device, for dense products: the "torch" linear's
        own tensor (no second copy), or the companion's weight dequantized for the "kernel" one."""
        if self.impl == "torch":
            return self._linears[slot][0]
        c = self.companion.linear(slot // len(LINEARS), LINEARS[slot % len(LINEARS)])
        return _put(dequantize(c.weight_type, c.weight, c.n_in, c.n_out), self.device)

    def __call__(self, slot: int, x, stream: int):
        """y (1, n_out) = the R-Sparse product of linear `slot` (bid * 7 + LINEARS index) with x (1, n_in)."""
        if self.impl == "kernel":
            y = x.new_empty((1, int(self._n_out[slot])))
            self._linears[slot].call(x, y, stream)
            return y
        wt, colnorm, tau, u, vs = self._linears[slot]
        x = x[0]
        score = x.abs() if colnorm is None else x.abs() * colnorm
        kept = score > tau
        y = x[kept] @ wt[kept]  # only the kept channels' rows of W^T
        if u is not None:
            y = y + u @ (vs @ x.masked_fill(kept, 0.0))  # U (VS ((1 - m) * x))
        if self._count:
            self.n_kept[slot] = int(kept.sum())
        return y[None]

    # ---- statistics, as SparseDecode's ------------------------------------------------------------------
    @property
    def count_kept(self) -> bool:
        return self._count

    def end_token(self) -> None:
        if self._count:
            super().end_token()


class TorchModel:
    """A loaded base GGUF (and its companion) on a torch device, with Model's interface: forward, n_past,
    reset, sparse_enabled, sparse_prefill, file, config, n_ctx. forward returns numpy logits (a fresh array)."""

    def __init__(self, file: GGUFFile, config: Config, weights: Weights, device, n_ctx: int, n_batch: int,
                 sparse: TorchSparse | None):
        torch = _torch()
        self.file, self.config, self.device, self.n_ctx, self.n_batch = file, config, device, n_ctx, n_batch
        self.n_past, self.sparse, self.sparse_enabled, self.sparse_prefill = 0, sparse, sparse is not None, False
        cfg = config
        put = lambda a: _put(a, device)  # noqa: E731
        dense = lambda lin: put(dequantize(lin.type, lin.data, lin.n_out, lin.n_in))  # noqa: E731 (out, in)
        self.token_embd = dense(weights.token_embd)
        self.output = self.token_embd if weights.output is weights.token_embd else dense(weights.output)
        self.output_norm = put(weights.output_norm)
        # block linears as W^T (n_in, n_out): the companion's when there is one (model.py's rule), else the base's
        # transposed view (cuBLAS takes it as it is)
        self.layers = [{"attn_norm": put(lw.attn_norm), "ffn_norm": put(lw.ffn_norm),
                        **{name: sparse.dense_weight(li * len(LINEARS) + i) if sparse is not None
                           else dense(getattr(lw, name)).T for i, name in enumerate(LINEARS)},
                        # what the family adds (families.py), None where it has nothing
                        "bias": {name: put(lw.bias(name)) for name in LINEARS if lw.bias(name) is not None},
                        "q_norm": None if lw.attn_q_norm is None else put(lw.attn_q_norm),
                        "k_norm": None if lw.attn_k_norm is None else put(lw.attn_k_norm),
                        "rope": cfg.family.rotates(li)}
                       for li, lw in enumerate(weights.layers)]
        # KV cache (layer, kv head, position, head_dim), as model.py's RunState
        shape = (cfg.n_layer, cfg.n_head_kv, n_ctx, cfg.head_dim)
        self.key_cache = torch.zeros(shape, dtype=torch.float32, device=device)
        self.value_cache = torch.zeros(shape, dtype=torch.float32, device=device)
        # RoPE tables in float64, rounded once to float32: the same numbers as RunState's
        inv_freq = cfg.rope_theta ** (-np.arange(0, cfg.rope_dim, 2, dtype=np.float64) / cfg.rope_dim)
        if weights.rope_freqs is not None:
            inv_freq = inv_freq / weights.rope_freqs.astype(np.float64)
        angles = np.outer(np.arange(n_ctx, dtype=np.float64), inv_freq)
        self.cos, self.sin = put(np.cos(angles).astype(np.float32)), put(np.sin(angles).astype(np.float32))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cuda", n_ctx: int = 512, n_batch: int = 512,
             companion: str | os.PathLike | None = None, sparse: bool | None = None, sparse_prefill: bool = False,
             impl: str | None = None, count_kept: bool | None = None) -> "TorchModel":
        """As Model.load (the same companion rules), on `device`. `impl` picks the sparse linear: "kernel" (the
        default on CUDA) or "torch" (the default, and the only choice, on the CPU)."""
        dev = _device(device)
        f = GGUFFile(path)
        cfg = Config.from_gguf(f)
        n_ctx = cfg.n_ctx_train if n_ctx <= 0 else n_ctx
        if n_batch <= 0:
            raise ValueError(f"n_batch must be positive, got {n_batch}")
        weights = Weights.from_gguf(f, cfg)
        comp, sp = open_companion(path, companion, sparse, sparse_prefill), None
        if comp is not None:
            sp = TorchSparse(comp, dev, impl or ("kernel" if dev.type == "cuda" else "torch"), count_kept)
        model = cls(f, cfg, weights, dev, n_ctx, min(n_batch, n_ctx), sp)
        model.sparse_prefill = sparse_prefill
        return model

    def reset(self) -> None:
        self.n_past = 0

    def forward(self, tokens, logits_all: bool = False) -> np.ndarray:
        """Model.forward: logits (n_vocab,) of the last token, or (n, n_vocab) with logits_all."""
        tokens = check_tokens(tokens, self.n_past, self.n_ctx, self.config.n_vocab)
        n = len(tokens)
        sparse, batch = step_mode(n, self.sparse_enabled, self.sparse_prefill, self.n_batch)
        out, torch = [], _torch()
        # the CUDA library launches on its runtime's current device: make it this model's (cuda:N)
        on_device = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        with torch.inference_mode(), on_device:
            for start in range(0, n, batch):
                chunk = tokens[start:start + batch]
                last = start + len(chunk) == n
                logits = self._step(chunk, logits_all, sparse)
                if logits_all or last:
                    out.append(logits)
        logits = np.concatenate(out) if logits_all else out[-1][-1]
        if not np.isfinite(logits.sum()):
            raise NumericalError(f"NaN or inf in the logits at position {self.n_past - 1}; the weights or the "
                                 f"activations overflowed")
        return logits

    def _step(self, tokens: np.ndarray, logits_all: bool, sparse_step: bool) -> np.ndarray:
        torch = _torch()
        cfg, n, pos = self.config, len(tokens), self.n_past
        sparse = self.sparse if sparse_step else None
        stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0

        def lin(li: int, name: str, x):
            y = x @ self.layers[li][name] if sparse is None else sparse(li * len(LINEARS) + LINEARS.index(name), x,
                                                                          stream)  # W^T, or the R-Sparse product
            bias = self.layers[li]["bias"].get(name)
            return y if bias is None else y + bias

        x = self.token_embd[torch.tensor(tokens, device=self.device)]  # (n, n_embd)
        for li, lw in enumerate(self.layers):
            xb = self._rmsnorm(x, lw["attn_norm"])
            q, k, v = lin(li, "attn_q", xb), lin(li, "attn_k", xb), lin(li, "attn_v", xb)
            if lw["q_norm"] is not None:  # Qwen3: every head on its own
                q = self._rmsnorm(q.reshape(-1, cfg.head_dim), lw["q_norm"]).reshape(n, -1)
                k = self._rmsnorm(k.reshape(-1, cfg.head_dim), lw["k_norm"]).reshape(n, -1)
            if lw["rope"]:
                q, k = self._rope(q, pos, cfg.n_head), self._rope(k, pos, cfg.n_head_kv)
            self.key_cache[li, :, pos:pos + n] = k.view(n, cfg.n_head_kv, cfg.head_dim).transpose(0, 1)
            self.value_cache[li, :, pos:pos + n] = v.view(n, cfg.n_head_kv, cfg.head_dim).transpose(0, 1)
            x = x + lin(li, "attn_output", self._attention(li, q, pos))
            xb = self._rmsnorm(x, lw["ffn_norm"])
            gate, up = lin(li, "ffn_gate", xb), lin(li, "ffn_up", xb)
            x = x + lin(li, "ffn_down", up * gate / (1 + torch.exp(-gate)))  # SwiGLU: silu(gate) * up
        self.n_past += n
        if sparse is not None:
            sparse.end_token()
        rows = x if logits_all else x[n - 1:]
        return (self._rmsnorm(rows, self.output_norm) @ self.output.T).cpu().numpy()

    def _rmsnorm(self, x, weight):
        return x / (x * x).mean(dim=1, keepdim=True).add_(self.config.rms_eps).sqrt_() * weight

    def _rope(self, t, pos: int, n_heads: int):
        """Rotate pairs of the first rope_dim dims of every head by angle pos*freq_i: adjacent (t[2i], t[2i+1]) of
        llama.cpp's permuted rows, or (t[i], t[i + rope_dim/2]) of HF's (the family's rope_neox)."""
        torch, cfg, n = _torch(), self.config, t.shape[0]
        half = cfg.rope_dim // 2
        cos, sin = self.cos[pos:pos + n, None, :], self.sin[pos:pos + n, None, :]
        if cfg.family.rope_neox:
            heads = t.reshape(n, n_heads, cfg.head_dim).clone()
            x0, x1 = heads[:, :, :half], heads[:, :, half:2 * half]
            heads[:, :, :half], heads[:, :, half:2 * half] = x0 * cos - x1 * sin, x0 * sin + x1 * cos
            return heads.view(n, -1)
        pairs = t.reshape(n, n_heads, cfg.head_dim // 2, 2).clone()
        x0, x1 = pairs[:, :, :half, 0], pairs[:, :, :half, 1]
        rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
        pairs[:, :, :half] = rotated
        return pairs.view(n, -1)

    def _attention(self, li: int, q, pos: int):
        """Causal GQA attention of n queries at positions pos.. against the cache's first pos + n keys."""
        torch, cfg, n = _torch(), self.config, q.shape[0]
        T = pos + n
        keys, values = self.key_cache[li, :, :T], self.value_cache[li, :, :T]  # (n_kv, T, hd)
        qh = q.view(n, cfg.n_head_kv, cfg.n_rep, cfg.head_dim).permute(1, 2, 0, 3)
        qh = qh.reshape(cfg.n_head_kv, cfg.n_rep * n, cfg.head_dim)
        att = (qh @ keys.transpose(1, 2)) * float(1.0 / np.sqrt(cfg.head_dim))  # (n_kv, n_rep * n, T)
        if n > 1:
            qpos = pos + torch.arange(n, device=q.device)
            causal = torch.arange(T, device=q.device)[None, :] > qpos[:, None]  # (n, T): key after query
            att = att.view(cfg.n_head_kv, cfg.n_rep, n, T).masked_fill(causal, float("-inf"))
            att = att.view(cfg.n_head_kv, cfg.n_rep * n, T)
        o = torch.softmax(att, dim=-1) @ values  # (n_kv, n_rep * n, hd)
        return o.view(cfg.n_head_kv, cfg.n_rep, n, cfg.head_dim).permute(2, 0, 1, 3).reshape(n, -1)


load = TorchModel.load
