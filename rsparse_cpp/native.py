"""The mechanical cffi binding of librsparse (native/include/rsparse.h), in ABI mode: no compiler at install time.

Each wrapper checks dtype, contiguity, shape and sizes right before its call and raises ValueError naming the
argument; the C side checks again and returns a status, which `_check` turns into NativeError. No model logic here.

The library is loaded on first use, from the first of these that loads:
  1. $RSPARSE_LIB (a file path)
  2. <this package>/lib/librsparse.so (.dylib): where the wheel installs it
  3. <each sys.path entry>/rsparse_cpp/lib/librsparse.so (.dylib): editable installs
  4. <repo>/build/**/librsparse.so (.dylib), newest first: a developer's CMake build
"""
from __future__ import annotations

import os
import sys
import threading
import warnings
import weakref
from pathlib import Path

import numpy as np
from cffi import FFI

from .constants import SPARSE_TYPES, GGMLType

# Mirrors native/include/rsparse.h (tests/test_native_matmul.py checks that every RS_API function is here).
CDEF = """
typedef enum rs_type {
    RS_TYPE_F32 = 0,
    RS_TYPE_F16 = 1,
    RS_TYPE_Q4_0 = 2,
    RS_TYPE_Q4_1 = 3,
    RS_TYPE_Q5_0 = 6,
    RS_TYPE_Q5_1 = 7,
    RS_TYPE_Q8_0 = 8,
    RS_TYPE_Q4_K = 12,
    RS_TYPE_Q5_K = 13,
    RS_TYPE_Q6_K = 14,
    RS_TYPE_BF16 = 30,
    RS_TYPE_Q4_0_R16 = 258,
    RS_TYPE_Q8_0_R16 = 264,
} rs_type;

typedef enum rs_status {
    RS_OK = 0,
    RS_ERR_NULL = -1,
    RS_ERR_TYPE = -2,
    RS_ERR_SHAPE = -3,
    RS_ERR_NOMEM = -4,
    RS_ERR_THREADS = -5,
    RS_ERR_ALIGN = -6,
    RS_ERR_INDEX = -7,
    RS_ERR_PATH = -8,
} rs_status;

#define RS_MAX_THREADS 256

const char *rs_strerror(int status);
int64_t rs_row_bytes(int type, int64_t n);

typedef struct rs_pool rs_pool;
rs_pool *rs_pool_create(int n_threads);
void rs_pool_free(rs_pool *pool);
int rs_pool_n_threads(const rs_pool *pool);

int rs_matmul(rs_pool *pool, int type, const void *w, int64_t n_out, int64_t n_in,
              const float *x, int64_t n_tok, float *y);
int rs_matmul_wt(rs_pool *pool, int type, const void *wt, int64_t n_out, int64_t n_in,
                 const float *x, int64_t n_tok, float *y);
int rs_get_rows(int type, const void *w, int64_t n_rows_total, int64_t n_in,
                const int64_t *rows, int64_t n, float *out);
int rs_repack_q4_0_r16(const void *src, int64_t n_rows, int64_t n_in, void *dst);
int rs_repack_q8_0_r16(const void *src, int64_t n_rows, int64_t n_in, void *dst);
int64_t rs_sparse_scratch_bytes(int64_t n_in, int64_t rank);
int rs_sparse_matvec(rs_pool *pool, int wtype, const void *wt, int64_t n_out, int64_t n_in,
                     const float *colnorm, float tau, int ftype, const void *u, const void *vs, int64_t rank,
                     const float *x, float *y, int64_t *n_kept, void *scratch, int64_t scratch_bytes);
const char *rs_simd_path(void);
const char *rs_simd_paths(void);
int rs_simd_select(const char *name);
int rs_attention_decode(rs_pool *pool, const float *q, const float *k_cache, const float *v_cache,
                        int64_t n_head, int64_t n_head_kv, int64_t head_dim, int64_t n_ctx, int64_t n_pos,
                        float scale, float *out, float *scratch, int64_t scratch_floats);

typedef struct rs_linear {
    int type;
    const void *w;
    int64_t n_out, n_in;
    const void *wt;
    int wtype;
    const float *colnorm;
    float tau;
    int ftype;
    const void *u, *vs;
    int64_t rank;
    const float *bias;
} rs_linear;

enum { RS_ATTN_Q, RS_ATTN_K, RS_ATTN_V, RS_ATTN_OUTPUT, RS_FFN_GATE, RS_FFN_UP, RS_FFN_DOWN, RS_N_LINEARS };

typedef struct rs_block {
    const float *attn_norm, *ffn_norm;
    rs_linear lin[7];
    float *k_cache, *v_cache;
    const float *q_norm, *k_norm;
    int no_rope;
} rs_block;

typedef struct rs_model {
    int64_t n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, rope_dim, n_vocab, n_ctx;
    float rms_eps;
    int rope_neox;
    const rs_block *blocks;
    rs_linear token_embd;
    const float *output_norm;
    rs_linear output;
    const float *rope_cos, *rope_sin;
} rs_model;

typedef struct rs_state {
    int64_t n_batch;
    float *x;
    float *xb;
    float *q, *attn;
    float *k, *v;
    float *hb, *hb2;
    float *att;
    float *logits;
    void *scratch;
    int64_t scratch_bytes;
    int64_t *n_kept;
} rs_state;

int rs_forward(rs_pool *pool, const rs_model *m, const rs_state *s, const int64_t *tokens, int64_t n,
               int64_t pos, int sparse, int logits_all);
"""

ffi = FFI()
ffi.cdef(CDEF)

LIB_NAMES = ("librsparse.so", "librsparse.dylib")
ENV_LIB = "RSPARSE_LIB"

_lib = None
_load_lock = threading.Lock()
# Not ggml types: Q4_0 and Q8_0 rows in tiles of 16 (repack_r16), the dense decode kernels' own layouts.
Q4_0_R16, Q8_0_R16 = 258, 264
TILED = {int(GGMLType.Q4_0): Q4_0_R16, int(GGMLType.Q8_0): Q8_0_R16}
_TYPES = frozenset(int(t) for t in GGMLType) | set(TILED.values())
_SPARSE = frozenset(int(t) for t in SPARSE_TYPES)
_F32 = np.dtype(np.float32)
_F16 = np.dtype(np.float16)
_I64 = np.dtype(np.int64)
_FACTOR_TYPES = {_F32: int(GGMLType.F32), _F16: int(GGMLType.F16)}


class NativeError(RuntimeError):
    """librsparse could not be loaded, or one of its calls returned an error status."""


# ---- loading -------------------------------------------------------------------------------------------------
def candidate_paths() -> list[Path]:
    """Every path the loader tries, in order (see the module docstring)."""
    paths = []
    if os.environ.get(ENV_LIB):
        paths.append(Path(os.environ[ENV_LIB]))
    package = Path(__file__).resolve().parent
    paths += [package / "lib" / name for name in LIB_NAMES]
    for entry in sys.path:
        paths += [Path(entry or ".") / "rsparse_cpp" / "lib" / name for name in LIB_NAMES]
    build = package.parent / "build"
    if build.is_dir():
        found = [p for name in LIB_NAMES for p in build.rglob(name) if p.is_file()]
        paths += sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
    unique, seen = [], set()
    for p in paths:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _load():
    global _lib
    if _lib is not None:
        return _lib
    with _load_lock:
        if _lib is None:
            tried = []
            for path in candidate_paths():
                if not path.is_file():
                    tried.append(f"{path} (no such file)")
                    continue
                try:
                    lib = ffi.dlopen(str(path))
                except OSError as e:
                    tried.append(f"{path} ({e})")
                    continue
                if tried and os.environ.get(ENV_LIB):
                    warnings.warn(f"{ENV_LIB} did not load ({tried[0]}); using {path}", RuntimeWarning,
                                  stacklevel=3)
                _lib = lib
                break
            else:
                raise NativeError("librsparse not found. Build it (pip install ., or cmake -S . -B build && "
                                  f"cmake --build build) or set {ENV_LIB}. Tried:\n  " + "\n  ".join(tried))
    return _lib


def _check(status: int, func: str) -> None:
    if status != 0:
        text = ffi.string(_load().rs_strerror(status)).decode()
        raise NativeError(f"{func}: {text} (status {status})")


# ---- argument checks -------------------------------------------------------------------------------------
def _int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _type_name(wtype: int) -> str:
    tiled = {t: f"{GGMLType(b).name}_R16" for b, t in TILED.items()}
    return tiled[wtype] if wtype in tiled else GGMLType(wtype).name


def _wtype(wtype) -> int:
    if isinstance(wtype, bool) or not isinstance(wtype, (int, np.integer)) or int(wtype) not in _TYPES:
        raise ValueError(f"wtype must be one of {', '.join(f'{t.name}={int(t)}' for t in GGMLType)}, got {wtype!r}")
    return int(wtype)


def _wt_type(wtype) -> int:
    """A type of the input-channel-major layout (matmul_wt, the sparse kernels)."""
    wtype = _wtype(wtype)
    if wtype not in _SPARSE:
        raise ValueError(f"wtype {_type_name(wtype)} runs dense only: the input-channel-major layout takes "
                         f"{', '.join(t.name for t in SPARSE_TYPES)}")
    return wtype


def _row_bytes(lib, wtype: int, n_in: int, name: str = "n_in") -> int:
    rb = lib.rs_row_bytes(wtype, n_in)
    if rb < 0:
        raise ValueError(f"{name} = {n_in} is not a valid row length for {_type_name(wtype)} "
                         f"(quantized rows hold whole blocks of 32)")
    return rb


def _array(name: str, a, dtype: np.dtype | None = None, writable: bool = False) -> None:
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(a).__name__}")
    if dtype is not None and a.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (strides {a.strides} for shape {a.shape})")
    if not a.flags.aligned:
        raise ValueError(f"{name} is not aligned for {a.dtype}")
    if writable and not a.flags.writeable:
        raise ValueError(f"{name} must be writable")


def _weights(w, wtype: int, n_rows: int, row_bytes: int, name: str = "w") -> None:
    _array(name, w)
    if w.nbytes != n_rows * row_bytes:
        raise ValueError(f"{name} has {w.nbytes} bytes, but {n_rows} rows of {_type_name(wtype)} take "
                         f"{n_rows} * {row_bytes} = {n_rows * row_bytes}")


def _output(out, shape: tuple[int, ...], x) -> np.ndarray:
    if out is None:
        return np.empty(shape, _F32)
    _array("out", out, _F32, writable=True)
    if out.shape != shape:
        raise ValueError(f"out must have shape {shape}, got {out.shape}")
    if np.may_share_memory(out, x):
        raise ValueError("out overlaps the input")
    return out


def _pool(pool) -> None:
    if not isinstance(pool, Pool):
        raise ValueError(f"pool must be a Pool, got {type(pool).__name__}")
    if pool._ptr is None:
        raise ValueError("pool is closed")


def _vector(name: str, a, n: int) -> None:
    _array(name, a, _F32)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")


# ---- the API ----------------------------------------------------------------------------------------------
class Pool:
    """The native thread pool (n_threads - 1 workers plus the caller), created once and reused by every call.

    Frees its threads on close(), on leaving a `with` block, or when garbage-collected. Do not close a pool while
    another thread is inside a call that uses it."""

    def __init__(self, n_threads: int):
        lib = _load()
        n = _int("n_threads", n_threads)
        if n > lib.RS_MAX_THREADS:
            raise ValueError(f"n_threads must be <= {lib.RS_MAX_THREADS}, got {n}")
        ptr = lib.rs_pool_create(n)
        if ptr == ffi.NULL:
            raise NativeError(f"rs_pool_create({n}): {ffi.string(lib.rs_strerror(lib.RS_ERR_THREADS)).decode()}")
        self.n_threads = n
        self._ptr = ptr
        self._free = weakref.finalize(self, lib.rs_pool_free, ptr)

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def close(self) -> None:
        self._ptr = None
        self._free()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Pool(n_threads={self.n_threads}{', closed' if self.closed else ''})"


def row_bytes(wtype: int, n: int) -> int:
    """Bytes taken by n elements of type wtype (n a multiple of 32 for quantized types)."""
    lib = _load()
    return _row_bytes(lib, _wtype(wtype), _int("n", n))


def matmul(pool: Pool, wtype: int, w: np.ndarray, n_out: int, n_in: int, x: np.ndarray,
           out: np.ndarray | None = None) -> np.ndarray:
    """out = x W^T.

    w:   (n_out, n_in) weights of type wtype, any dtype, C-contiguous, n_out * row_bytes(wtype, n_in) bytes;
         passed by pointer (a memory-mapped view stays uncopied)
    x:   (n_in,) or (n_tok, n_in) float32, C-contiguous
    out: (n_out,) or (n_tok, n_out) float32, C-contiguous; allocated when None. Returns out."""
    return _product(pool, wtype, w, n_out, n_in, x, out, rows_in=False)


def matmul_wt(pool: Pool, wtype: int, wt: np.ndarray, n_out: int, n_in: int, x: np.ndarray,
              out: np.ndarray | None = None) -> np.ndarray:
    """out = x W^T from W stored input-channel-major (the companion's rsparse_weight, rsparse_matvec's wt):
    wt is (n_in, n_out), n_in * row_bytes(wtype, n_out) bytes. Otherwise as matmul."""
    return _product(pool, wtype, wt, n_out, n_in, x, out, rows_in=True)


def _product(pool: Pool, wtype: int, w: np.ndarray, n_out: int, n_in: int, x: np.ndarray, out: np.ndarray | None,
             rows_in: bool) -> np.ndarray:
    """matmul (rows_in False: w holds n_out rows of n_in) or matmul_wt (True: n_in rows of n_out)."""
    lib = _load()
    _pool(pool)
    wtype, n_out, n_in = (_wt_type if rows_in else _wtype)(wtype), _int("n_out", n_out), _int("n_in", n_in)
    if rows_in:
        _weights(w, wtype, n_in, _row_bytes(lib, wtype, n_out, "n_out"), "wt")
    else:
        _weights(w, wtype, n_out, _row_bytes(lib, wtype, n_in))
    _array("x", x, _F32)
    if x.ndim == 1 and x.shape[0] == n_in:
        n_tok, shape = 1, (n_out,)
    elif x.ndim == 2 and x.shape[1] == n_in and x.shape[0] >= 1:
        n_tok, shape = x.shape[0], (x.shape[0], n_out)
    else:
        raise ValueError(f"x must have shape ({n_in},) or (n_tok >= 1, {n_in}), got {x.shape}")
    out = _output(out, shape, x)
    func = lib.rs_matmul_wt if rows_in else lib.rs_matmul
    _check(func(pool._ptr, wtype, ffi.from_buffer(w), n_out, n_in, ffi.from_buffer("float[]", x), n_tok,
                ffi.from_buffer("float[]", out, require_writable=True)), "rs_matmul_wt" if rows_in else "rs_matmul")
    return out


def get_rows(wtype: int, w: np.ndarray, n_rows_total: int, n_in: int, rows: np.ndarray,
             out: np.ndarray | None = None) -> np.ndarray:
    """out[i] = dequantized row rows[i] of w.

    w:    (n_rows_total, n_in) of type wtype, as for matmul
    rows: (n,) int64, C-contiguous, each in [0, n_rows_total) (checked in C: NativeError otherwise)
    out:  (n, n_in) float32, C-contiguous; allocated when None. Returns out."""
    lib = _load()
    wtype, n_rows_total, n_in = _wtype(wtype), _int("n_rows_total", n_rows_total), _int("n_in", n_in)
    _weights(w, wtype, n_rows_total, _row_bytes(lib, wtype, n_in))
    _array("rows", rows, _I64)
    if rows.ndim != 1 or rows.shape[0] < 1:
        raise ValueError(f"rows must have shape (n >= 1,), got {rows.shape}")
    out = _output(out, (rows.shape[0], n_in), rows)
    _check(lib.rs_get_rows(wtype, ffi.from_buffer(w), n_rows_total, n_in, ffi.from_buffer("int64_t[]", rows),
                           rows.shape[0], ffi.from_buffer("float[]", out, require_writable=True)), "rs_get_rows")
    return out


def repack_r16(wtype: int, w: np.ndarray, n_rows: int, n_in: int) -> tuple[int, np.ndarray]:
    """Q4_0 or Q8_0 weights (n_rows, n_in) repacked into tiles of 16 rows (rsparse.h: rs_repack_q4_0_r16,
    rs_repack_q8_0_r16), which the dense kernels read 16 rows at a time: (the tiled type, a new 64-byte aligned
    uint8 array of the same size). n_rows must be a multiple of 16."""
    lib = _load()
    wtype, n_rows, n_in = _wtype(wtype), _int("n_rows", n_rows), _int("n_in", n_in)
    if wtype not in TILED:
        raise ValueError(f"wtype {_type_name(wtype)}: only Q4_0 and Q8_0 have tiles")
    rb = _row_bytes(lib, wtype, n_in)
    _weights(w, wtype, n_rows, rb)
    if n_rows % 16:
        raise ValueError(f"n_rows = {n_rows}: tiles of 16 rows need a multiple of 16")
    raw = np.empty(n_rows * rb + 64, np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start:start + n_rows * rb]
    fn = lib.rs_repack_q4_0_r16 if wtype == int(GGMLType.Q4_0) else lib.rs_repack_q8_0_r16
    _check(fn(ffi.from_buffer(w), n_rows, n_in, ffi.from_buffer(out, require_writable=True)), "rs_repack_r16")
    return TILED[wtype], out


def sparse_scratch_bytes(n_in: int, rank: int = 0) -> int:
    """Bytes of scratch rsparse_matvec needs for n_in input channels and the given rank."""
    return int(_load().rs_sparse_scratch_bytes(_int("n_in", n_in), _int("rank", rank, 0)))


def rsparse_matvec(pool: Pool, wtype: int, wt: np.ndarray, n_out: int, n_in: int, colnorm: np.ndarray | None,
                   tau: float, U: np.ndarray | None, VS: np.ndarray | None, x: np.ndarray,
                   out: np.ndarray | None = None, scratch: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """One R-Sparse linear at batch 1: keep channel j when |x_j| * colnorm_j > tau (|x_j| > tau when colnorm is
    None, the rho = 1 mode), then out = W[:, kept] x[kept] + U (VS x[dropped]). Returns (out, number kept).

    wt:      (n_in, n_out) weights of type wtype stored input-channel-major (one row per input channel,
             quantization blocks along the output dimension: n_in * row_bytes(wtype, n_out) bytes), C-contiguous
    colnorm: (n_in,) float32, or None
    U, VS:   (n_out, rank) and (rank, n_in), both float32 or both float16, C-contiguous; or both None (no low-rank
             term)
    x:       (n_in,) float32;  out: (n_out,) float32, allocated when None
    scratch: any C-contiguous writable array of at least sparse_scratch_bytes(n_in, rank) bytes, kept by the caller
             (the run state) so that a call allocates nothing; allocated when None."""
    lib = _load()
    _pool(pool)
    wtype, n_out, n_in = _wt_type(wtype), _int("n_out", n_out), _int("n_in", n_in)
    _weights(wt, wtype, n_in, _row_bytes(lib, wtype, n_out), "wt")
    if colnorm is not None:
        _vector("colnorm", colnorm, n_in)
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.integer, np.floating)):
        raise ValueError(f"tau must be a real number, got {type(tau).__name__} {tau!r}")
    if (U is None) != (VS is None):
        raise ValueError("U and VS must both be given or both be None")
    rank, ftype, pu, pvs = 0, int(GGMLType.F32), ffi.NULL, ffi.NULL
    if U is not None:
        _array("U", U)
        _array("VS", VS)
        if U.dtype not in _FACTOR_TYPES or VS.dtype != U.dtype:
            raise ValueError(f"U and VS must both be float32 or both float16, got {U.dtype} and {VS.dtype}")
        if U.ndim != 2 or U.shape[0] != n_out or U.shape[1] < 1:
            raise ValueError(f"U must have shape ({n_out}, rank >= 1), got {U.shape}")
        rank = U.shape[1]
        if VS.shape != (rank, n_in):
            raise ValueError(f"VS must have shape ({rank}, {n_in}), got {VS.shape}")
        ftype, pu, pvs = _FACTOR_TYPES[U.dtype], ffi.from_buffer(U), ffi.from_buffer(VS)
    _vector("x", x, n_in)
    out = _output(out, (n_out,), x)
    need = lib.rs_sparse_scratch_bytes(n_in, rank)
    if need < 0:
        raise ValueError(f"n_in = {n_in} and rank = {rank} are too large")
    if scratch is None:
        scratch = np.empty(need // 4, np.float32)
    else:
        _array("scratch", scratch, writable=True)
        if scratch.nbytes < need or scratch.ctypes.data % 4:
            raise ValueError(f"scratch must hold {need} bytes at a 4-byte aligned address, got {scratch.nbytes} "
                             f"bytes at {scratch.ctypes.data:#x}")
        if np.may_share_memory(scratch, x) or np.may_share_memory(scratch, out):
            raise ValueError("scratch overlaps x or out")
    n_kept = ffi.new("int64_t *")
    _check(lib.rs_sparse_matvec(pool._ptr, wtype, ffi.from_buffer(wt), n_out, n_in,
                                ffi.NULL if colnorm is None else ffi.from_buffer("float[]", colnorm), float(tau),
                                ftype, pu, pvs, rank, ffi.from_buffer("float[]", x),
                                ffi.from_buffer("float[]", out, require_writable=True), n_kept,
                                ffi.from_buffer(scratch, require_writable=True), scratch.nbytes),
           "rs_sparse_matvec")
    return out, int(n_kept[0])


def simd_paths() -> list[str]:
    """The SIMD paths this build and CPU can run, fastest first (scalar always last)."""
    return ffi.string(_load().rs_simd_paths()).decode().split(",")


def simd_select(name: str | None = None) -> None:
    """Use the named SIMD path from now on (None: the fastest), in this whole process: for tests and benchmarks."""
    if name is not None and name not in simd_paths():
        raise ValueError(f"SIMD path {name!r} is not one of {simd_paths()} (built and runnable here)")
    _check(_load().rs_simd_select(ffi.NULL if name is None else name.encode()), "rs_simd_select")


def simd_path() -> str:
    """The kernel path chosen at start-up: "scalar", "avx2", "avxvnni", "avx512", "avx512vnni", "neon" or "neondot"."""
    return ffi.string(_load().rs_simd_path()).decode()


# ---- bound calls: the decode loop's fast path ---------------------------------------------------------------
class Bound:
    """One native call with every argument checked once and frozen: `bound()` runs it with no argument checks,
    conversions or allocations (about a microsecond of Python), reading and writing the same buffers each time. It
    keeps its arrays (and the pool) alive; calling it after the pool closed raises."""

    __slots__ = ("_fn", "_args", "_pool", "_name", "_keep")

    def __init__(self, name: str, fn, args: tuple, pool: "Pool | None", keep: tuple):
        self._name, self._fn, self._args, self._pool, self._keep = name, fn, args, pool, keep

    def __call__(self) -> None:
        if self._pool is not None and self._pool._ptr is None:
            raise ValueError(f"{self._name}: pool is closed")
        status = self._fn(*self._args)
        if status:
            _check(status, self._name)


class BoundAttention(Bound):
    """rs_attention_decode bound to one layer's cache and the run state's buffers; called with n_pos."""

    __slots__ = ()

    def __call__(self, n_pos: int) -> None:
        if self._pool._ptr is None:
            raise ValueError(f"{self._name}: pool is closed")
        if not 1 <= n_pos <= self._args[7]:
            raise ValueError(f"n_pos {n_pos} outside [1, {self._args[7]}]")
        a = self._args
        status = self._fn(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], n_pos, a[8], a[9], a[10], a[11])
        if status:
            _check(status, self._name)


def bind_attention(pool: Pool, q: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, scale: float,
                   out: np.ndarray, scratch: np.ndarray) -> BoundAttention:
    """Single-token attention (rs_attention_decode) as a bound call: q (n_head, head_dim) [any shape holding
    n_head * head_dim], k_cache and v_cache (n_head_kv, n_ctx, head_dim), out like q, scratch >= n_head * n_ctx
    floats. All float32, C-contiguous."""
    lib = _load()
    _pool(pool)
    for name, a in (("k_cache", k_cache), ("v_cache", v_cache)):
        _array(name, a, _F32)
        if a.ndim != 3:
            raise ValueError(f"{name} must be (n_head_kv, n_ctx, head_dim), got {a.shape}")
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache {k_cache.shape} and v_cache {v_cache.shape} differ")
    n_head_kv, n_ctx, hd = k_cache.shape
    _array("q", q, _F32)
    _array("out", out, _F32, writable=True)
    _array("scratch", scratch, _F32, writable=True)
    n_head = q.size // hd
    if q.size % hd or n_head % n_head_kv or out.size != q.size:
        raise ValueError(f"q ({q.shape}) and out ({out.shape}) must hold n_head * {hd} values, n_head a multiple "
                         f"of {n_head_kv}")
    if scratch.size < n_head * n_ctx:
        raise ValueError(f"scratch must hold {n_head} * {n_ctx} floats, got {scratch.size}")
    if any(np.may_share_memory(out, a) for a in (q, k_cache, v_cache, scratch)):
        raise ValueError("out overlaps an input or the scratch")
    args = (pool._ptr, ffi.from_buffer("float[]", q), ffi.from_buffer("float[]", k_cache),
            ffi.from_buffer("float[]", v_cache), n_head, n_head_kv, hd, n_ctx, float(scale),
            ffi.from_buffer("float[]", out, require_writable=True),
            ffi.from_buffer("float[]", scratch, require_writable=True), scratch.size)
    return BoundAttention("rs_attention_decode", lib.rs_attention_decode, args, pool,
                          (q, k_cache, v_cache, out, scratch))


# ---- the forward pass: one call per decode step or prompt chunk ---------------------------------------------------
class BoundForward:
    """rs_forward bound to one model's weights and one run state's buffers, every argument checked once here.
    `bound(n, pos, sparse, logits_all)` runs the n token ids already written to `tokens[:n]` (the int64 buffer given
    to bind_forward); the logits land in the `logits` buffer. About a microsecond of Python per call."""

    __slots__ = ("_fn", "_pool", "_model", "_state", "_tokens", "_n_batch", "_n_ctx", "_has_sparse", "_keep")

    def __init__(self, fn, pool, model, state, tokens, n_batch, n_ctx, has_sparse, keep):
        self._fn, self._pool, self._model, self._state, self._tokens = fn, pool, model, state, tokens
        self._n_batch, self._n_ctx, self._has_sparse, self._keep = n_batch, n_ctx, has_sparse, keep

    def __call__(self, n: int, pos: int, sparse: bool, logits_all: bool) -> None:
        if self._pool._ptr is None:
            raise ValueError("rs_forward: pool is closed")
        if not 1 <= n <= self._n_batch or not 0 <= pos <= self._n_ctx - n:
            raise ValueError(f"rs_forward: {n} tokens at position {pos} do not fit (n_batch {self._n_batch}, "
                             f"n_ctx {self._n_ctx})")
        if sparse and (n != 1 or not self._has_sparse):
            raise ValueError("rs_forward: sparse steps take one token and need every linear's R-Sparse form")
        status = self._fn(self._pool._ptr, self._model, self._state, self._tokens, n, pos, int(sparse),
                          int(logits_all))
        if status:
            _check(status, "rs_forward")


def forward_scratch_bytes(linear_bytes: int) -> int:
    """rs_state.scratch for sparse linears needing at most linear_bytes each: q, k and v run at once, each on its own
    64-byte aligned third."""
    return 3 * ((linear_bytes + 63) // 64 * 64)


def _rank(U: np.ndarray | None) -> int:
    """The rank of a low-rank factor U (n_out, rank); 0 for none."""
    return 0 if U is None else U.shape[1]


def _linear_struct(lib, pool: Pool, dst, dense: tuple, sparse: tuple | None, keep: list,
                   bias: np.ndarray | None = None) -> None:
    """Fill an rs_linear: dense = (wtype, w, n_out, n_in) in rs_matmul's layout; sparse = (wtype, wt, colnorm, tau,
    U, VS) in rs_sparse_matvec's (checked by one real call, as bind_rsparse_matvec does), or None; bias (n_out,)
    f32 or None."""
    wtype, w, n_out, n_in = dense
    wtype, n_out, n_in = _wtype(wtype), _int("n_out", n_out), _int("n_in", n_in)
    _weights(w, wtype, n_out, _row_bytes(lib, wtype, n_in))
    dst.type, dst.w, dst.n_out, dst.n_in = wtype, ffi.from_buffer(w), n_out, n_in
    keep.append(w)
    dst.bias = ffi.NULL
    if bias is not None:
        _array("bias", bias, _F32)
        if bias.shape != (n_out,):
            raise ValueError(f"bias must have shape {(n_out,)}, got {bias.shape}")
        dst.bias = ffi.from_buffer("float[]", bias)
        keep.append(bias)
    dst.wt = ffi.NULL
    if sparse is None:
        return
    swtype, wt, colnorm, tau, U, VS = sparse
    rsparse_matvec(pool, swtype, wt, n_out, n_in, colnorm, tau, U, VS, np.zeros(n_in, np.float32))
    dst.wtype, dst.wt, dst.tau = int(swtype), ffi.from_buffer(wt), float(tau)
    dst.colnorm = ffi.NULL if colnorm is None else ffi.from_buffer("float[]", colnorm)
    dst.rank, dst.ftype, dst.u, dst.vs = 0, int(GGMLType.F32), ffi.NULL, ffi.NULL
    if U is not None:
        dst.rank, dst.ftype, dst.u, dst.vs = U.shape[1], _FACTOR_TYPES[U.dtype], ffi.from_buffer(U), ffi.from_buffer(VS)
    keep += [wt, colnorm, U, VS]


def bind_forward(pool: Pool, dims: dict, blocks: list[dict], token_embd: tuple, output_norm: np.ndarray,
                 output: tuple, rope_cos: np.ndarray, rope_sin: np.ndarray, state: dict) -> BoundForward:
    """rs_forward (native/include/rsparse.h) as a bound call.

    dims:   n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, rope_dim, n_vocab, n_ctx (ints), rms_eps (float),
            rope_neox (bool, default False: families.py)
    blocks: per block {"attn_norm", "ffn_norm": (n_embd,) f32, "k_cache", "v_cache": (n_head_kv, n_ctx, head_dim)
            f32, "dense": 7 tuples (wtype, w, n_out, n_in), "sparse": 7 tuples (wtype, wt, colnorm, tau, U, VS) or
            None}, linears in rs_block order (q, k, v, o, gate, up, down); optionally "bias": 7 (n_out,) f32 or
            None, "q_norm", "k_norm": (head_dim,) f32 or None, "no_rope": bool
    token_embd, output: (wtype, w, n_vocab, n_embd);  rope_cos, rope_sin: (n_ctx, rope_dim / 2) f32
    state:  x, xb (n_batch, n_embd); q, attn (n_batch, q_dim); k, v (n_batch, kv_dim); hb, hb2 (n_batch, n_ff);
            att (>= n_head * n_ctx floats); logits (n_batch, n_vocab); tokens (n_batch,) int64; and, when every
            block has its sparse form, scratch (>= forward_scratch_bytes of the widest linear's) and n_kept
            (n_layer * 7,) int64. All C-contiguous and writable."""
    lib = _load()
    _pool(pool)
    ints = ("n_layer", "n_embd", "n_ff", "n_head", "n_head_kv", "head_dim", "rope_dim", "n_vocab", "n_ctx")
    d = {k: _int(k, dims[k], 0 if k == "rope_dim" else 1) for k in ints}
    eps = float(dims["rms_eps"])
    if not eps >= 0.0:
        raise ValueError(f"rms_eps must be >= 0, got {eps}")
    if d["n_head"] % d["n_head_kv"] or d["head_dim"] % 2 or d["rope_dim"] % 2 or d["rope_dim"] > d["head_dim"]:
        raise ValueError(f"inconsistent head sizes: {d}")
    if len(blocks) != d["n_layer"]:
        raise ValueError(f"{len(blocks)} blocks for n_layer = {d['n_layer']}")
    e, ff, ctx = d["n_embd"], d["n_ff"], d["n_ctx"]
    qd, kv = d["n_head"] * d["head_dim"], d["n_head_kv"] * d["head_dim"]
    keep: list = []

    def vec(name, a, shape):
        _array(name, a, _F32)
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
        keep.append(a)
        return ffi.from_buffer("float[]", a)

    def buf(name, a, shape):
        _array(name, a, _F32, writable=True)
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
        keep.append(a)
        return ffi.from_buffer("float[]", a, require_writable=True)

    has_sparse = all(s is not None for b in blocks for s in b["sparse"])
    shapes = [(qd, e), (kv, e), (kv, e), (e, qd), (ff, e), (ff, e), (e, ff)]
    cblocks = ffi.new("rs_block[]", d["n_layer"])
    for i, b in enumerate(blocks):
        cb = cblocks[i]
        cb.attn_norm, cb.ffn_norm = vec("attn_norm", b["attn_norm"], (e,)), vec("ffn_norm", b["ffn_norm"], (e,))
        cb.k_cache = buf("k_cache", b["k_cache"], (d["n_head_kv"], ctx, d["head_dim"]))
        cb.v_cache = buf("v_cache", b["v_cache"], (d["n_head_kv"], ctx, d["head_dim"]))
        biases = b.get("bias") or [None] * 7
        for j, (dense, sparse, bias) in enumerate(zip(b["dense"], b["sparse"], biases, strict=True)):
            if tuple(dense[2:4]) != shapes[j]:
                raise ValueError(f"block {i} linear {j}: shape {tuple(dense[2:4])}, expected {shapes[j]}")
            _linear_struct(lib, pool, cb.lin[j], dense, sparse if has_sparse else None, keep, bias)
        for name in ("q_norm", "k_norm"):
            a = b.get(name)
            setattr(cb, name, ffi.NULL if a is None else vec(name, a, (d["head_dim"],)))
        cb.no_rope = int(bool(b.get("no_rope", False)))
    cm = ffi.new("rs_model *")
    for k in ints:
        setattr(cm, k, d[k])
    cm.rms_eps, cm.blocks, cm.rope_neox = eps, cblocks, int(bool(dims.get("rope_neox", False)))
    for name, lin in (("token_embd", token_embd), ("output", output)):
        if tuple(lin[2:4]) != (d["n_vocab"], e):
            raise ValueError(f"{name}: shape {tuple(lin[2:4])}, expected {(d['n_vocab'], e)}")
        _linear_struct(lib, pool, getattr(cm, name), lin, None, keep)
    cm.output_norm = vec("output_norm", output_norm, (e,))
    half = d["rope_dim"] // 2
    cm.rope_cos, cm.rope_sin = vec("rope_cos", rope_cos, (ctx, half)), vec("rope_sin", rope_sin, (ctx, half))

    tokens = state["tokens"]
    _array("tokens", tokens, _I64, writable=True)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be (n_batch,), got {tokens.shape}")
    nb = tokens.shape[0]
    cs = ffi.new("rs_state *")
    cs.n_batch = nb
    for name, width in (("x", e), ("xb", e), ("q", qd), ("attn", qd), ("k", kv), ("v", kv), ("hb", ff),
                        ("hb2", ff), ("logits", d["n_vocab"])):
        setattr(cs, name, buf(name, state[name], (nb, width)))
    att = state["att"]
    _array("att", att, _F32, writable=True)
    if att.size < d["n_head"] * ctx:
        raise ValueError(f"att must hold n_head * n_ctx = {d['n_head'] * ctx} floats, got {att.size}")
    cs.att = ffi.from_buffer("float[]", att, require_writable=True)
    keep.append(att)
    cs.scratch, cs.scratch_bytes, cs.n_kept = ffi.NULL, 0, ffi.NULL
    if has_sparse:
        scratch, n_kept = state["scratch"], state["n_kept"]
        need = forward_scratch_bytes(max(sparse_scratch_bytes(b["dense"][j][3], _rank(b["sparse"][j][4]))
                                         for b in blocks for j in range(7)))
        _array("scratch", scratch, writable=True)
        if scratch.nbytes < need or scratch.ctypes.data % 4:
            raise ValueError(f"scratch must hold {need} bytes at a 4-byte aligned address, got {scratch.nbytes}")
        _array("n_kept", n_kept, _I64, writable=True)
        if n_kept.shape != (d["n_layer"] * 7,):
            raise ValueError(f"n_kept must have shape ({d['n_layer'] * 7},), got {n_kept.shape}")
        cs.scratch, cs.scratch_bytes = ffi.from_buffer(scratch, require_writable=True), scratch.nbytes
        cs.n_kept = ffi.from_buffer("int64_t[]", n_kept, require_writable=True)
        keep += [scratch, n_kept]
    arrays = [state[k] for k in ("x", "xb", "q", "attn", "k", "v", "hb", "hb2", "att", "logits")]
    arrays += [b[c] for b in blocks for c in ("k_cache", "v_cache")]
    for i, a in enumerate(arrays):
        if any(np.may_share_memory(a, o) for o in arrays[i + 1:]):
            raise ValueError("the run state's buffers overlap")
    ctokens = ffi.from_buffer("int64_t[]", tokens)
    keep += [tokens, cblocks]
    return BoundForward(lib.rs_forward, pool, cm, cs, ctokens, nb, ctx, has_sparse, keep)
