"""The one front door for GGUF files: parse, validate, memory-map.

gguf-py's reader trusts the file (crafted counts and offsets give IndexError or huge allocations), so the runtime
parses the header itself, checking every count, length and offset against the bytes actually present before it
uses them. Tensor data is never copied: tensors are numpy views into one read-only mmap.

Layout (GGUF v3, little-endian): magic, version u32, n_tensors u64, n_kv u64, n_kv key/value pairs, n_tensors
tensor infos (name, n_dims u32, ne[n_dims] u64 innermost first, type u32, offset u64), padding to the alignment,
then the data section; tensor offsets are relative to its start.
"""
from __future__ import annotations

import mmap
import os
import stat
import sys
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .constants import BLOCK, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLType, Key

MAX_DIMS = 4
MAX_ALIGNMENT = 1 << 16
MAX_STRING = 1 << 24  # 16 MiB: a chat template is a few KiB; nothing legitimate comes near this
MAX_NAME = 256  # llama.cpp's GGML_MAX_NAME is 64; leave room, refuse absurd ones
MAX_ELEMENTS = 1 << 40
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14; Python names it from 3.13 on


class GGUFError(ValueError):
    """A GGUF file is malformed, hostile, or not what the runtime needs. The message names file, field and value."""

    def __init__(self, path: str | os.PathLike, field: str, problem: str):
        self.path, self.field, self.problem = str(path), field, problem
        super().__init__(f"{path}: {field}: {problem}")


# value type id -> (struct format, numpy dtype); 8 = string, 9 = array
_SCALARS = {
    0: ("<B", np.uint8), 1: ("<b", np.int8), 2: ("<H", np.uint16), 3: ("<h", np.int16),
    4: ("<I", np.uint32), 5: ("<i", np.int32), 6: ("<f", np.float32), 7: ("<?", np.bool_),
    10: ("<Q", np.uint64), 11: ("<q", np.int64), 12: ("<d", np.float64),
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (outermost first): ne reversed
    type: GGMLType
    offset: int  # absolute offset in the file
    nbytes: int


class _Cursor:
    """Bounds-checked little-endian reads over a buffer."""

    def __init__(self, buf, path):
        self.buf, self.pos, self.path, self.end = buf, 0, path, len(buf)

    def need(self, n: int, field: str) -> None:
        if n < 0 or self.pos + n > self.end:
            raise GGUFError(self.path, field, f"needs {n} bytes at offset {self.pos}, file has {self.end}")

    def scalar(self, fmt: str, field: str):
        size = struct.calcsize(fmt)
        self.need(size, field)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def string(self, field: str, limit: int = MAX_STRING) -> str:
        n = self.scalar("<Q", field)
        if n > limit:
            raise GGUFError(self.path, field, f"string length {n} exceeds limit {limit}")
        self.need(n, field)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GGUFError(self.path, field, f"string is not valid UTF-8 ({e.reason} at byte {e.start})") from None

    def value(self, vtype: int, field: str):
        if vtype in _SCALARS:
            v = self.scalar(_SCALARS[vtype][0], field)
            return bool(v) if vtype == 7 else v
        if vtype == _STRING:
            return self.string(field)
        if vtype == _ARRAY:
            itype = self.scalar("<I", field + " (array type)")
            if itype == _ARRAY:
                raise GGUFError(self.path, field, "nested arrays are not supported")
            n = self.scalar("<Q", field + " (array length)")
            if itype in _SCALARS:
                dtype = np.dtype(_SCALARS[itype][1])
                # a crafted length must not make us allocate: it has to fit in the bytes left
                self.need(n * dtype.itemsize if n <= self.end else self.end + 1, field)
                arr = np.frombuffer(self.buf, dtype=dtype.newbyteorder("<"), count=n, offset=self.pos).copy()
                self.pos += n * dtype.itemsize
                return arr
            if itype == _STRING:
                if n * 8 > self.end - self.pos:  # each string needs at least its u64 length
                    raise GGUFError(self.path, field, f"array of {n} strings cannot fit in the file")
                return [self.string(f"{field}[{i}]") for i in range(n)]
            raise GGUFError(self.path, field, f"unknown array element type {itype}")
        raise GGUFError(self.path, field, f"unknown value type {vtype}")


class GGUFFile:
    """A validated, memory-mapped GGUF file: `.fields` (key -> value) and `.tensors` (name -> TensorInfo)."""

    def __init__(self, path: str | os.PathLike, data: bytes | None = None):
        """Open and validate `path`; with `data`, parse those bytes instead (fuzzing, tests) and use `path` only
        as the name in messages."""
        self.path = Path(path)
        if data is not None:
            self._mmap = data
        else:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError as e:
                raise GGUFError(self.path, "file", e.strerror or str(e)) from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):  # a directory, a FIFO, a device: nothing we can map
                    raise GGUFError(self.path, "file", "not a regular file")
                if st.st_size < 24:
                    raise GGUFError(self.path, "header", f"file is {st.st_size} bytes, too small for a GGUF header")
                try:
                    self._mmap = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
                except OSError as e:
                    raise GGUFError(self.path, "file", f"cannot be memory-mapped ({e.strerror or e})") from None
            finally:
                os.close(fd)
        self.size = len(self._mmap)
        if self.size < 24:
            raise GGUFError(self.path, "header", f"file is {self.size} bytes, too small for a GGUF header")
        self.fields: dict[str, object] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._parse()

    # ---- parsing ------------------------------------------------------------------------------------------
    def _parse(self) -> None:
        c = _Cursor(memoryview(self._mmap), self.path)
        if bytes(c.buf[:4]) != GGUF_MAGIC:
            raise GGUFError(self.path, "magic", f"expected b'GGUF', found {bytes(c.buf[:4])!r}")
        c.pos = 4
        version = c.scalar("<I", "version")
        if version not in (2, 3):
            raise GGUFError(self.path, "version", f"unsupported GGUF version {version} (supported: 2, 3)")
        n_tensors = c.scalar("<Q", "tensor_count")
        n_kv = c.scalar("<Q", "kv_count")
        # every kv needs >= 12 bytes, every tensor info >= 24: refuse counts the file cannot hold before looping
        if n_kv * 12 > size_left(c):
            raise GGUFError(self.path, "kv_count", f"{n_kv} key/value pairs cannot fit in {self.size} bytes")
        if n_tensors * 24 > size_left(c):
            raise GGUFError(self.path, "tensor_count", f"{n_tensors} tensors cannot fit in {self.size} bytes")

        for i in range(n_kv):
            key = c.string(f"kv[{i}].key", limit=MAX_NAME * 4)
            if key in self.fields:
                raise GGUFError(self.path, key, "duplicate key")
            vtype = c.scalar("<I", f"{key} (type)")
            self.fields[key] = c.value(vtype, key)

        alignment = self.fields.get(Key.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment <= 0 \
                or alignment & (alignment - 1) or alignment > MAX_ALIGNMENT:
            raise GGUFError(self.path, Key.ALIGNMENT, f"{alignment!r} is not a power of two in [1, {MAX_ALIGNMENT}]")

        infos = []
        for i in range(n_tensors):
            name = c.string(f"tensor[{i}].name", limit=MAX_NAME)
            if not name:
                raise GGUFError(self.path, f"tensor[{i}].name", "empty tensor name")
            n_dims = c.scalar("<I", f"{name}.n_dims")
            if not 1 <= n_dims <= MAX_DIMS:
                raise GGUFError(self.path, f"{name}.n_dims", f"{n_dims} dims (must be 1..{MAX_DIMS})")
            ne = [c.scalar("<Q", f"{name}.ne[{d}]") for d in range(n_dims)]
            raw_type = c.scalar("<I", f"{name}.type")
            offset = c.scalar("<Q", f"{name}.offset")
            infos.append((name, ne, raw_type, offset))

        data_start = -(-c.pos // alignment) * alignment
        if data_start > self.size:
            raise GGUFError(self.path, "data section", f"starts at {data_start}, past the end of the file ({self.size})")
        spans = []
        for name, ne, raw_type, offset in infos:
            if name in self.tensors:
                raise GGUFError(self.path, name, "duplicate tensor name")
            try:
                ttype = GGMLType(raw_type)
            except ValueError:
                supported = ", ".join(t.name for t in GGMLType)
                raise GGUFError(self.path, f"{name}.type", f"unsupported tensor type {raw_type} (supported: {supported})") from None
            if any(d < 1 for d in ne):
                raise GGUFError(self.path, f"{name}.ne", f"dimension {ne} has a zero")
            n_elem = 1
            for d in ne:
                n_elem *= d
                if n_elem > MAX_ELEMENTS:
                    raise GGUFError(self.path, f"{name}.ne", f"{ne} has too many elements")
            block, block_bytes = BLOCK[ttype]
            if ne[0] % block:
                raise GGUFError(self.path, f"{name}.ne[0]", f"{ne[0]} is not a multiple of {ttype.name}'s block size {block}")
            nbytes = n_elem // block * block_bytes
            if offset % alignment:
                raise GGUFError(self.path, f"{name}.offset", f"{offset} is not aligned to {alignment}")
            start = data_start + offset
            if start + nbytes > self.size:
                raise GGUFError(self.path, f"{name}.offset",
                                f"data [{start}, {start + nbytes}) runs past the end of the file ({self.size})")
            spans.append((start, start + nbytes, name))
            self.tensors[name] = TensorInfo(name, tuple(reversed(ne)), ttype, start, nbytes)
        spans.sort()
        for (s0, e0, n0), (s1, _, n1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise GGUFError(self.path, f"{n1}.offset", f"data overlaps tensor {n0}")
        self.data_start = data_start

    # ---- access -------------------------------------------------------------------------------------------
    @property
    def architecture(self) -> str:
        return self.get_str(Key.ARCHITECTURE)

    def get(self, key: str, default=None):
        return self.fields.get(key, default)

    def require(self, key: str, kind: type | tuple[type, ...]):
        if key not in self.fields:
            raise GGUFError(self.path, key, "missing")
        v = self.fields[key]
        if kind in (int, float) and isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, bool) and kind is not bool and kind != (bool,):
            raise GGUFError(self.path, key, f"expected {getattr(kind, '__name__', kind)}, found bool")
        if kind is float and isinstance(v, int):
            v = float(v)
        if not isinstance(v, kind):
            raise GGUFError(self.path, key, f"expected {getattr(kind, '__name__', kind)}, found {type(v).__name__}")
        return v

    def get_str(self, key: str) -> str:
        return self.require(key, str)

    def tensor(self, name: str) -> np.ndarray:
        """A read-only zero-copy view. F32/F16: shaped like the tensor; quantized: (rows, row_bytes) uint8."""
        info = self.tensors.get(name)
        if info is None:
            raise GGUFError(self.path, name, "tensor missing")
        if info.type in (GGMLType.F32, GGMLType.F16):
            dtype = np.float32 if info.type == GGMLType.F32 else np.float16
            return np.frombuffer(self._mmap, dtype=dtype, count=info.nbytes // np.dtype(dtype).itemsize,
                                 offset=info.offset).reshape(info.shape)
        block, block_bytes = BLOCK[info.type]
        rows = info.nbytes // (info.shape[-1] // block * block_bytes)
        return np.frombuffer(self._mmap, dtype=np.uint8, count=info.nbytes, offset=info.offset).reshape(rows, -1)

    def populate(self, names=None) -> bool:
        """Map in the pages of these tensors (all of the file: None) now, in one system call per tensor, rather
        than one page fault at a time on first use, as llama.cpp populates its mapping at load. Pages stay
        evictable (no lock). False where the kernel cannot (before Linux 5.14, other systems): pages then fault
        in on first use, as before."""
        if not isinstance(self._mmap, mmap.mmap) or not sys.platform.startswith("linux"):
            return False
        spans = ([(0, self.size)] if names is None
                 else [(self.tensors[n].offset, self.tensors[n].nbytes) for n in names])
        try:
            for offset, nbytes in spans:
                start = offset // mmap.PAGESIZE * mmap.PAGESIZE
                if nbytes > 0:
                    self._mmap.madvise(MADV_POPULATE_READ, start, offset + nbytes - start)
        except (OSError, ValueError):
            return False
        return True

    def tensor_copy(self, name: str) -> np.ndarray:
        """A copy of a small tensor, read from the file rather than through the map: touching the map would fault
        in its neighbours' pages too (the kernel maps up to 64 KiB around a faulting page), and with a companion
        the block weights around the norms must stay unread (not resident)."""
        view = self.tensor(name)
        if not isinstance(self._mmap, mmap.mmap):
            return view.copy()
        info = self.tensors[name]
        out = np.empty(info.nbytes, np.uint8)  # read straight into the array: no transient copies of a large head
        got, buf = 0, memoryview(out)
        with open(self.path, "rb") as fh:
            while got < info.nbytes:
                n = os.preadv(fh.fileno(), [buf[got:]], info.offset + got)
                if n <= 0:
                    raise GGUFError(self.path, name, f"file shrank while reading: {got} of {info.nbytes} bytes")
                got += n
        return out.view(view.dtype).reshape(view.shape)

    def close(self) -> None:
        # views may still point into the map; let the GC close it once they are gone
        self._mmap = None


def size_left(c: _Cursor) -> int:
    return c.end - c.pos
