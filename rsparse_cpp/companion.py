"""The companion file `<model>.rsparse.gguf`: R-Sparse data beside a stock base GGUF (the runtime half; the
converter's `companion.py` writes it).

Per decoder-block linear y = W x, W (out, in):
    rsparse_weight  (in, out)   W transposed, in the base's weight type: row j is input channel j, so the sparse
                                path reads only the rows of kept channels; quantization blocks run along out
    rsparse_u       (out, rank) U_r                        F32 for an F32 base, else F16
    rsparse_vs      (rank, in)  S_r V_r^T (or data-aware)  same type as rsparse_u
    rsparse_colnorm (in,)       ||W[:, j]||_2              F32
and the metadata arrays rsparse.tau / rho / rank / keep, indexed [bid * 7 + LINEARS.index(name)]. Rows of
attn_q/attn_k outputs (rsparse_weight columns, rsparse_u rows) are in the base's permuted Q/K order.
Semantics: score = |x| * colnorm (|x| alone where rho == 1, unless rsparse.score says abs_x_colnorm_all),
kept = score > tau, y = W[:, kept] x[kept] + U (VS ((1 - kept) * x)).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .constants import (COMPANION_ARCH, COMPANION_SUFFIX, COMPANION_VERSION, LINEARS, SCORES, SPARSE_TYPES, GGMLType,
                        Key, RSparseKey, RSparseTensor, Tensor)
from .config import Config
from .gguf_file import GGUFError, GGUFFile

FINGERPRINT_SAMPLE = 4096  # bytes hashed at the start, middle and end of every tensor


def fingerprint(base_path: str | os.PathLike) -> str:
    """A cheap identity for a GGUF file, even a multi-GB one: sha256 of the size, the whole header (metadata and
    tensor infos) and 3 x 4 KiB samples of every tensor's data. Any re-conversion changes the metadata or the
    sampled bytes; reading it costs a few MB whatever the file size."""
    f = GGUFFile(base_path)
    h = hashlib.sha256(b"rsparse-fingerprint-v1\0")
    h.update(f.size.to_bytes(8, "little"))
    h.update(f._mmap[:f.data_start])
    for info in sorted(f.tensors.values(), key=lambda t: t.offset):
        h.update(info.name.encode() + b"\0")
        n = info.nbytes
        for start in sorted({0, max(0, n // 2 - FINGERPRINT_SAMPLE // 2), max(0, n - FINGERPRINT_SAMPLE)}):
            h.update(f._mmap[info.offset + start:info.offset + min(n, start + FINGERPRINT_SAMPLE)])
    return "v1:" + h.hexdigest()


def _describe(v) -> str:
    if isinstance(v, np.ndarray):
        return f"{v.dtype} array of {v.size}"
    return "nothing" if v is None else type(v).__name__


def companion_path(base_path: str | os.PathLike) -> Path:
    """<dir>/<model>.gguf -> <dir>/<model>.rsparse.gguf"""
    base_path = Path(base_path)
    stem = base_path.name[:-len(".gguf")] if base_path.name.endswith(".gguf") else base_path.name
    return base_path.with_name(stem + COMPANION_SUFFIX)


@dataclass(frozen=True)
class CompanionLinear:
    bid: int
    name: str  # one of LINEARS
    n_out: int
    n_in: int
    weight: np.ndarray  # (in, out): F32/F16 view, or (in, row_bytes) uint8 for quantized types
    weight_type: GGMLType
    u: np.ndarray | None  # (out, rank) view, None when rank == 0
    vs: np.ndarray | None  # (rank, in) view
    colnorm: np.ndarray  # (in,) f32 view
    tau: float
    rho: float
    rank: int
    keep: int  # nominal kept channels
    weighted: bool  # the score is |x| * colnorm (rho < 1, or rsparse.score abs_x_colnorm_all); else |x|


class Companion:
    """A validated companion file. `Companion(path, base_path)` also checks that it was made for that base.
    Every failure raises GGUFError naming the file and the field. tau may be negative: the converter writes -1 for
    "keep every channel" (scores are >= 0), so only finiteness is required of it."""

    def __init__(self, path: str | os.PathLike, base_path: str | os.PathLike | None = None, *,
                 data: bytes | None = None):
        """With `data`, parse those bytes instead of the file (fuzzing, tests); `path` names it in messages."""
        self.path = Path(path)
        self.file = f = GGUFFile(self.path, data=data)
        arch = f.get_str(Key.ARCHITECTURE)
        if arch != COMPANION_ARCH:
            raise GGUFError(f.path, Key.ARCHITECTURE, f"{arch!r}: not an R-Sparse companion (expected {COMPANION_ARCH!r})")
        version = f.require(RSparseKey.VERSION, int)
        if version != COMPANION_VERSION:
            raise GGUFError(f.path, RSparseKey.VERSION, f"version {version}, this runtime reads {COMPANION_VERSION}")
        linears = f.get(RSparseKey.LINEARS)
        if not isinstance(linears, list) or linears != list(LINEARS):
            raise GGUFError(f.path, RSparseKey.LINEARS, f"{linears!r}, expected {list(LINEARS)}")
        self.n_layer = f.require(RSparseKey.BLOCK_COUNT, int)
        if not 1 <= self.n_layer <= 4096:
            raise GGUFError(f.path, RSparseKey.BLOCK_COUNT, f"{self.n_layer} is out of range")
        self.base_fingerprint = f.get_str(RSparseKey.BASE_FINGERPRINT)
        self.sparsity = f.require(RSparseKey.SPARSITY, float)
        if not 0.0 <= self.sparsity <= 1.0:  # NaN fails this too
            raise GGUFError(f.path, RSparseKey.SPARSITY, f"{self.sparsity} is not in [0, 1]")
        self.recipe = f.get_str(RSparseKey.RECIPE)
        self.factors = f.get_str(RSparseKey.FACTORS)
        self.tau_calibration = f.get_str(RSparseKey.TAU_CALIBRATION)
        self.score = f.get_str(RSparseKey.SCORE)
        if self.score not in SCORES:
            raise GGUFError(f.path, RSparseKey.SCORE, f"{self.score!r}: this runtime knows {', '.join(SCORES)}")
        try:
            self.recipe_info = json.loads(f.get_str(RSparseKey.RECIPE_JSON))
        except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; deep nesting recurses
            raise GGUFError(f.path, RSparseKey.RECIPE_JSON, f"not valid JSON ({type(e).__name__}: {e})") from None
        n = self.n_layer * len(LINEARS)
        arrays = {}
        for key, lo, hi, integral in ((RSparseKey.TAU, -np.inf, np.inf, False), (RSparseKey.RHO, 0.0, 1.0, False),
                                      (RSparseKey.RANK, 0, 1 << 20, True), (RSparseKey.KEEP, 0, 1 << 24, True)):
            a = f.get(key)
            if not isinstance(a, np.ndarray) or a.shape != (n,) or a.dtype.kind not in "iuf":
                raise GGUFError(f.path, key, f"expected an array of {n} numbers (block_count x {len(LINEARS)}), "
                                f"found {_describe(a)}")
            a = a.astype(np.float64)
            bad = ~(np.isfinite(a) & (a >= lo) & (a <= hi))
            if integral:
                bad |= np.isfinite(a) & (a != np.floor(a))
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                raise GGUFError(f.path, key, f"blk.{j // len(LINEARS)}.{LINEARS[j % len(LINEARS)]}: {a[j]} is not "
                                f"{'an integer' if integral else 'a finite number'} in [{lo}, {hi}]")
            arrays[key] = a.reshape(self.n_layer, len(LINEARS))
        self.tau, self.rho = arrays[RSparseKey.TAU], arrays[RSparseKey.RHO]
        self.rank, self.keep = arrays[RSparseKey.RANK].astype(np.int64), arrays[RSparseKey.KEEP].astype(np.int64)
        self.layers = tuple({name: self._linear(b, i, name) for i, name in enumerate(LINEARS)}
                            for b in range(self.n_layer))
        if base_path is not None:
            self.check_base(base_path)

    def _linear(self, bid: int, i: int, name: str) -> CompanionLinear:
        f = self.file
        t = lambda tmpl: RSparseTensor.blk(tmpl, bid, name)  # noqa: E731

        def info(tname: str):
            if tname not in f.tensors:
                raise GGUFError(f.path, tname, "tensor missing")
            return f.tensors[tname]

        w = info(t(RSparseTensor.WEIGHT))
        if len(w.shape) != 2:
            raise GGUFError(f.path, w.name, f"shape {w.shape}, expected (in, out)")
        if w.type not in SPARSE_TYPES:
            raise GGUFError(f.path, w.name, f"type {w.type.name}: the sparse kernels read "
                            f"{', '.join(t.name for t in SPARSE_TYPES)}")
        n_in, n_out = w.shape
        cn = info(t(RSparseTensor.COLNORM))
        if cn.shape != (n_in,) or cn.type != GGMLType.F32:
            raise GGUFError(f.path, cn.name, f"{cn.type.name}{cn.shape}, expected F32{(n_in,)}")
        colnorm = f.tensor(cn.name)
        if not (np.isfinite(colnorm) & (colnorm >= 0)).all():  # a norm: NaN would make every score fail tau
            raise GGUFError(f.path, cn.name, "column norms must be finite and >= 0")
        rank = int(self.rank[bid, i])
        u = vs = None
        if rank:
            if rank > min(n_in, n_out):
                raise GGUFError(f.path, RSparseKey.RANK, f"blk.{bid}.{name}: rank {rank} > min(in, out) of ({n_in}, {n_out})")
            ui, vi = info(t(RSparseTensor.U)), info(t(RSparseTensor.VS))
            for ti, shape in ((ui, (n_out, rank)), (vi, (rank, n_in))):
                if ti.shape != shape or ti.type not in (GGMLType.F32, GGMLType.F16):
                    raise GGUFError(f.path, ti.name, f"{ti.type.name}{ti.shape}, expected F32 or F16 {shape}")
            if vi.type != ui.type:  # the kernel takes one factor type
                raise GGUFError(f.path, vi.name, f"{vi.type.name}, but {ui.name} is {ui.type.name}: both must match")
            u, vs = f.tensor(ui.name), f.tensor(vi.name)
        elif t(RSparseTensor.U) in f.tensors or t(RSparseTensor.VS) in f.tensors:
            raise GGUFError(f.path, t(RSparseTensor.U), "factor tensors present but rank is 0")
        if int(self.keep[bid, i]) > n_in:
            raise GGUFError(f.path, RSparseKey.KEEP, f"blk.{bid}.{name}: keep {self.keep[bid, i]} > in {n_in}")
        return CompanionLinear(bid, name, n_out, n_in, f.tensor(w.name), w.type, u, vs, colnorm,
                               float(self.tau[bid, i]), float(self.rho[bid, i]), rank, int(self.keep[bid, i]),
                               bool(self.rho[bid, i] < 1.0 or self.score == "abs_x_colnorm_all"))

    def linear(self, bid: int, name: str) -> CompanionLinear:
        return self.layers[bid][name]

    def check_base(self, base_path: str | os.PathLike) -> None:
        """The companion must have been made for this exact base file (fingerprint), with matching shapes."""
        fp = fingerprint(base_path)
        if fp != self.base_fingerprint:
            raise GGUFError(self.path, RSparseKey.BASE_FINGERPRINT,
                            f"made for another base file (fingerprint {self.base_fingerprint[:19]}...), not for "
                            f"{base_path} (fingerprint {fp[:19]}...); rebuild it with rsparse-companion {base_path} HF_DIR")
        base = GGUFFile(base_path)
        n_layer = Config.from_gguf(base).n_layer  # {arch}.block_count, whatever the base's family
        if n_layer != self.n_layer:
            raise GGUFError(self.path, RSparseKey.BLOCK_COUNT, f"{self.n_layer} blocks, base {base_path} has {n_layer}")
        for b in range(self.n_layer):
            for name in LINEARS:
                bt = base.tensors.get(Tensor.blk(f"blk.{{bid}}.{name}.weight", b))
                c = self.layers[b][name]
                if bt is None or bt.shape != (c.n_out, c.n_in):
                    raise GGUFError(self.path, f"blk.{b}.{name}", f"(out, in) = ({c.n_out}, {c.n_in}) does not match "
                                    f"base {base_path}: {None if bt is None else bt.shape}")

    @classmethod
    def for_base(cls, base_path: str | os.PathLike, path: str | os.PathLike | None = None) -> "Companion":
        """The companion beside `base_path` (or at `path`), checked against it."""
        path = Path(path) if path else companion_path(base_path)
        if not path.is_file():
            raise GGUFError(path, "file", f"no R-Sparse companion for {base_path} (make one with rsparse-companion)")
        return cls(path, base_path)
