"""Byte-level GGUF builder for crafted (valid or corrupt) files: every count, length and offset can be forged."""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q",
        I64: "<q", F64: "<d"}


def gstr(s: str | bytes, length: int | None = None) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b) if length is None else length) + b


def value(vtype: int, v) -> bytes:
    if vtype == STR:
        return gstr(v)
    if vtype == ARR:
        itype, items = v
        body = b"".join(value(itype, x) for x in items)
        return struct.pack("<IQ", itype, len(items)) + body
    return struct.pack(_FMT[vtype], v)


@dataclass
class Craft:
    """A GGUF under construction. `kv` holds raw encoded pairs so tests can forge anything."""

    kv: list[bytes] = field(default_factory=list)
    infos: list[bytes] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    magic: bytes = b"GGUF"
    version: int = 3
    n_kv: int | None = None
    n_tensors: int | None = None
    alignment: int = 32

    def add(self, key: str, vtype: int, v) -> "Craft":
        self.kv.append(gstr(key) + struct.pack("<I", vtype) + value(vtype, v))
        return self

    def tensor(self, name: str, arr: np.ndarray, ggml_type: int | None = None, ne: list[int] | None = None,
               offset: int | None = None) -> "Craft":
        raw = np.ascontiguousarray(arr).tobytes()
        if ggml_type is None:
            ggml_type = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}[arr.dtype]
        ne = list(reversed(arr.shape)) if ne is None else ne
        pad = -len(self.data) % self.alignment
        self.data += b"\0" * pad
        off = len(self.data) if offset is None else offset
        self.data += raw
        self.infos.append(gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
                          + struct.pack("<IQ", ggml_type, off))
        return self

    def build(self) -> bytes:
        head = self.magic + struct.pack("<IQQ", self.version,
                                        len(self.infos) if self.n_tensors is None else self.n_tensors,
                                        len(self.kv) if self.n_kv is None else self.n_kv)
        body = head + b"".join(self.kv) + b"".join(self.infos)
        body += b"\0" * (-len(body) % self.alignment)
        return body + bytes(self.data)


TINY = dict(n_embd=32, n_head=2, n_head_kv=1, n_ff=64, n_layer=1, n_vocab=8)


def tiny_model(skip_kv: str | None = None, override: dict | None = None, skip_tensor: str | None = None,
               tensor_override: dict | None = None) -> Craft:
    """A complete, loadable one-layer llama GGUF (F32 weights), with hooks to leave out or replace pieces."""
    t = TINY
    override = override or {}
    tensor_override = tensor_override or {}
    c = Craft()
    kvs = [
        ("general.architecture", STR, "llama"),
        ("llama.embedding_length", U32, t["n_embd"]),
        ("llama.block_count", U32, t["n_layer"]),
        ("llama.feed_forward_length", U32, t["n_ff"]),
        ("llama.attention.head_count", U32, t["n_head"]),
        ("llama.attention.head_count_kv", U32, t["n_head_kv"]),
        ("llama.context_length", U32, 128),
        ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        ("llama.rope.freq_base", F32, 10000.0),
        ("tokenizer.ggml.model", STR, "gpt2"),
        ("tokenizer.ggml.tokens", ARR, (STR, [chr(ord("a") + i) for i in range(t["n_vocab"])])),
    ]
    add_kvs(c, kvs, skip_kv, override)
    rng = np.random.default_rng(0)
    e, hd = t["n_embd"], t["n_embd"] // t["n_head"]
    shapes = {"token_embd.weight": (t["n_vocab"], e), "output_norm.weight": (e,),
              "blk.0.attn_norm.weight": (e,), "blk.0.attn_q.weight": (e, e),
              "blk.0.attn_k.weight": (t["n_head_kv"] * hd, e), "blk.0.attn_v.weight": (t["n_head_kv"] * hd, e),
              "blk.0.attn_output.weight": (e, e), "blk.0.ffn_norm.weight": (e,),
              "blk.0.ffn_gate.weight": (t["n_ff"], e), "blk.0.ffn_up.weight": (t["n_ff"], e),
              "blk.0.ffn_down.weight": (e, t["n_ff"])}
    for name, shape in shapes.items():
        if name == skip_tensor:
            continue
        arr = tensor_override.get(name, rng.normal(0, 0.1, shape).astype(np.float32))
        c.tensor(name, arr)
    return c


def add_kvs(c: "Craft", kvs: list, skip_kv: str | None, override: dict) -> None:
    """Add (key, type, value) entries to c, leaving out skip_kv and replacing those named in override."""
    for key, vtype, v in kvs:
        if key == skip_kv:
            continue
        if key in override:
            vtype, v = override[key]
        c.add(key, vtype, v)


TINY_LINEARS = {  # (out, in) of the seven block linears of tiny_model()
    "attn_q": (32, 32), "attn_k": (16, 32), "attn_v": (16, 32), "attn_output": (32, 32),
    "ffn_gate": (64, 32), "ffn_up": (64, 32), "ffn_down": (32, 64)}


def tiny_companion(fingerprint: str, rank: int = 4, n_layer: int = 1, skip_kv: str | None = None,
                   override: dict | None = None, skip_tensor: str | None = None,
                   tensor_override: dict | None = None) -> Craft:
    """A valid R-Sparse companion of tiny_model() (whose fingerprint is given), F32 throughout, every linear with
    low-rank factors of `rank`; hooks as in tiny_model to leave out or replace keys and tensors (a tensor_override
    value is an array, or a tuple of Craft.tensor's arguments after the name)."""
    override, tensor_override = override or {}, tensor_override or {}
    n = n_layer * len(TINY_LINEARS)
    c = Craft()
    kvs = [
        ("general.architecture", STR, "rsparse"),
        ("rsparse.version", U32, 1),
        ("rsparse.block_count", U32, n_layer),
        ("rsparse.linears", ARR, (STR, list(TINY_LINEARS))),
        ("rsparse.base.fingerprint", STR, fingerprint),
        ("rsparse.sparsity", F32, 0.5),
        ("rsparse.recipe", STR, "uniform"),
        ("rsparse.recipe.json", STR, '{"recipe": "uniform"}'),
        ("rsparse.factors", STR, "svd"),
        ("rsparse.tau.calibration", STR, "dense"),
        ("rsparse.score", STR, "abs_x_colnorm"),
        ("rsparse.tau", ARR, (F32, [0.1] * n)),
        ("rsparse.rho", ARR, (F32, [0.5] * n)),
        ("rsparse.rank", ARR, (U32, [rank] * n)),
        ("rsparse.keep", ARR, (U32, [8] * n)),
    ]
    add_kvs(c, kvs, skip_kv, override)
    rng = np.random.default_rng(1)
    for bid, (lin, (n_out, n_in)) in ((b, item) for b in range(n_layer) for item in TINY_LINEARS.items()):
        shapes = {"rsparse_weight": (n_in, n_out), "rsparse_colnorm": (n_in,)}
        if rank:
            shapes.update(rsparse_u=(n_out, rank), rsparse_vs=(rank, n_in))
        for suffix, shape in shapes.items():
            name = f"blk.{bid}.{lin}.{suffix}"
            if name == skip_tensor:
                continue
            default = rng.normal(0, 0.1, shape).astype(np.float32)
            if suffix == "rsparse_colnorm":
                default = np.abs(default) + 0.5
            t = tensor_override.get(name, default)
            if isinstance(t, tuple):
                c.tensor(name, *t)
            else:
                c.tensor(name, t)
    return c


def q8_0(w: np.ndarray) -> tuple[np.ndarray, int, list[int]]:
    """(bytes, type, ne) of w (rows, cols) as Q8_0, cols a multiple of 32: per block an f16 scale and 32 int8;
    a tensor_override value for tiny_companion."""
    rows, cols = w.shape
    blocks = w.reshape(rows, cols // 32, 32)
    scale = np.abs(blocks).max(-1, keepdims=True) / 127
    q = np.round(blocks / np.where(scale == 0, 1, scale)).astype(np.int8)
    raw = np.concatenate([scale.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=-1)
    return raw.reshape(rows, -1), 8, [cols, rows]
