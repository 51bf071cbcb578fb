"""The mechanical cffi binding of librsparse_cuda (native/cuda/rsparse_cuda.h), ABI mode like native.py.

Arguments are torch CUDA tensors, passed by data_ptr(); the kernel runs on the stream given as a raw cudaStream_t
(torch.cuda.current_stream().cuda_stream). `bind_sparse_matvec` checks everything once, at load; the decode loop
then pays only the pointer casts of x and y. No model logic here.

The library is loaded on first use, from the first of these that loads:
  1. $RSPARSE_CUDA_LIB (a file path)
  2. the folder of $RSPARSE_LIB (a CMake build puts both libraries in build/native/)
  3. <rsparse_cpp>/lib/librsparse_cuda.so: where a wheel built with -DRSPARSE_CUDA=ON installs it
  4. <each sys.path entry>/rsparse_cpp/lib/librsparse_cuda.so
  5. <repo>/build*/**/librsparse_cuda.so, newest first: a developer's CMake build
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
from cffi import FFI

from .. import native
from ..constants import GGMLType

# Mirrors native/cuda/rsparse_cuda.h.
CDEF = """
int64_t rs_cuda_scratch_bytes(int64_t n_out, int64_t n_in, int64_t rank);
int rs_cuda_sparse_matvec(int wtype, const void *wt, int64_t n_out, int64_t n_in, const float *colnorm, float tau,
                          int ftype, const void *u, const void *vs, int64_t rank, const float *x, float *y,
                          int64_t *n_kept, void *scratch, int64_t scratch_bytes, void *stream);
"""

ffi = FFI()
ffi.cdef(CDEF)

LIB_NAME = "librsparse_cuda.so"
RS_ERR_CUDA = -5  # RS_ERR_THREADS, which the CUDA library returns for any CUDA error
ENV_LIB = "RSPARSE_CUDA_LIB"
_lib = None
_load_lock = threading.Lock()


def candidate_paths() -> list[Path]:
    """Every path the loader tries, in order (see the module docstring)."""
    paths = [Path(os.environ[ENV_LIB])] if os.environ.get(ENV_LIB) else []
    if os.environ.get(native.ENV_LIB):
        paths.append(Path(os.environ[native.ENV_LIB]).parent / LIB_NAME)
    package = Path(__file__).resolve().parent.parent
    paths.append(package / "lib" / LIB_NAME)
    paths += [Path(entry or ".") / "rsparse_cpp" / "lib" / LIB_NAME for entry in sys.path]
    found = [p for build in package.parent.glob("build*") if build.is_dir() for p in build.rglob(LIB_NAME)]
    paths += sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
    unique, seen = [], set()
    for p in paths:
        if os.path.abspath(p) not in seen:
            seen.add(os.path.abspath(p))
            unique.append(p)
    return unique


def load():
    global _lib
    with _load_lock:
        if _lib is None:
            tried = []
            for path in candidate_paths():
                try:
                    _lib = ffi.dlopen(str(path))
                    break
                except OSError as e:
                    tried.append(f"{path} ({'no such file' if not path.is_file() else e})")
            else:
                raise native.NativeError(f"{LIB_NAME} not found. Build it with cmake -DRSPARSE_CUDA=ON (needs nvcc) "
                                         f"or set {ENV_LIB}. Tried:\n  " + "\n  ".join(tried))
    return _lib


def available() -> bool:
    try:
        load()
        return True
    except native.NativeError:
        return False


def scratch_bytes(n_out: int, n_in: int, rank: int) -> int:
    need = load().rs_cuda_scratch_bytes(n_out, n_in, rank)
    if need < 0:
        raise ValueError(f"no CUDA sparse matvec for (n_out, n_in, rank) = ({n_out}, {n_in}, {rank})")
    return need


def _tensor(name: str, t, device, dtype, nbytes: int | None = None) -> None:
    if t.device != device or t.dtype != dtype or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous {dtype} tensor on {device}, got {t.dtype} on {t.device}"
                         f"{'' if t.is_contiguous() else ', not contiguous'}")
    if nbytes is not None and t.numel() * t.element_size() != nbytes:
        raise ValueError(f"{name} has {t.numel() * t.element_size()} bytes, expected {nbytes}")


class BoundSparse:
    """rs_cuda_sparse_matvec with every argument but x, y and the stream checked and frozen.

    `call(x, y, stream)`: x (n_in,) and y (n_out,) contiguous float32 on the device, stream a raw cudaStream_t
    (an int). If the binding was given `n_kept` (an int64 numpy array) and a slot, the call waits for the stream
    and writes the kept count there; otherwise it only enqueues the four kernels."""

    __slots__ = ("_fn", "_args", "_scratch", "_keep", "_f32", "_dev", "n_in", "n_out")

    def __init__(self, wtype: int, wt, n_out: int, n_in: int, colnorm, tau: float, u, vs, rank: int, scratch,
                 n_kept=None, slot: int = 0):
        import torch

        lib, dev = load(), wt.device
        _tensor("wt", wt, dev, torch.uint8, n_in * native.row_bytes(wtype, n_out))
        if colnorm is not None:
            _tensor("colnorm", colnorm, dev, torch.float32, 4 * n_in)
        ftype = int(GGMLType.F32)
        if rank:
            ftype = {torch.float32: int(GGMLType.F32), torch.float16: int(GGMLType.F16)}.get(u.dtype)
            if ftype is None or vs.dtype != u.dtype:
                raise ValueError(f"u and vs must both be float32 or float16, got {u.dtype} and {vs.dtype}")
            _tensor("u", u, dev, u.dtype, n_out * rank * u.element_size())
            _tensor("vs", vs, dev, u.dtype, rank * n_in * u.element_size())
        need = scratch_bytes(n_out, n_in, rank)
        _tensor("scratch", scratch, dev, torch.uint8)
        if scratch.numel() < need:
            raise ValueError(f"scratch has {scratch.numel()} bytes, the call needs {need}")
        kept = ffi.NULL
        if n_kept is not None:
            if n_kept.dtype != np.int64 or n_kept.ndim != 1 or not (n_kept.flags.writeable and 0 <= slot < n_kept.size):
                raise ValueError(f"n_kept must be a writable 1-D int64 array holding slot {slot}")
            kept = ffi.cast("int64_t *", n_kept.ctypes.data) + slot
        p = lambda t: ffi.NULL if t is None else ffi.cast("void *", t.data_ptr())  # noqa: E731
        self._fn = lib.rs_cuda_sparse_matvec
        self._args = (int(wtype), p(wt), n_out, n_in, ffi.cast("float *", p(colnorm)), float(tau), ftype, p(u),
                      p(vs), rank)
        self._scratch = (kept, p(scratch), scratch.numel())
        self._keep = (wt, colnorm, u, vs, scratch, n_kept)  # the pointers above stay valid while these live
        self.n_in, self.n_out, self._f32, self._dev = n_in, n_out, torch.float32, wt.get_device()

    def call(self, x, y, stream: int) -> None:
        if (x.numel() != self.n_in or y.numel() != self.n_out or x.dtype != self._f32 or y.dtype != self._f32
                or not (x.is_contiguous() and y.is_contiguous()) or x.get_device() != self._dev
                or y.get_device() != self._dev):
            raise ValueError(f"x and y must be contiguous float32 on cuda:{self._dev}, of {self.n_in} and "
                             f"{self.n_out} values; got {x.dtype}{tuple(x.shape)} on {x.device} and "
                             f"{y.dtype}{tuple(y.shape)} on {y.device}")
        status = self._fn(*self._args, ffi.cast("float *", x.data_ptr()), ffi.cast("float *", y.data_ptr()),
                          *self._scratch, ffi.cast("void *", stream))
        if status == RS_ERR_CUDA:
            raise native.NativeError("rs_cuda_sparse_matvec: a CUDA launch or runtime error (status -5): is the "
                                     "driver new enough for the CUDA version the library was built with, and the "
                                     "GPU's architecture among RSPARSE_CUDA_ARCHS?")
        if status:
            native._check(status, "rs_cuda_sparse_matvec")
