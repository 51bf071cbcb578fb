"""numpy's BLAS kept to one thread while a forward pass runs.

Prefill attention is a few numpy matmuls. With numpy's OpenBLAS free to use every core, its threads busy-wait
after each call and take the cores our own pool then needs for the next linear: measured on the 1B-shaped model
(2 cores), prefill of 256 tokens took 4.0 s, and 2.4 s with OPENBLAS_NUM_THREADS=1. Setting that variable only
works before numpy loads, so this finds the OpenBLAS that numpy loaded and sets its thread count through its own
C API for the length of a call (threadpoolctl does the same, as a dependency we do not need).
"""
from __future__ import annotations

import ctypes
import contextlib
import sys
import threading

# The exported setters and getters of the OpenBLAS builds numpy ships (scipy-openblas, 64-bit ints or not) and of
# a system OpenBLAS.
_NAMES = [("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
          ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
          ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
          ("openblas_set_num_threads", "openblas_get_num_threads")]

_api: tuple | None | bool = False  # False: not looked up yet; None: no OpenBLAS found


def _loaded_openblas() -> list[str]:
    """Paths of the loaded shared libraries whose name says OpenBLAS (Linux: /proc/self/maps)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if ".so" in p)


def _lookup():
    import numpy  # noqa: F401  (its BLAS must be loaded to be found)

    for path in _loaded_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in _NAMES:
            setter, getter = getattr(lib, set_name, None), getattr(lib, get_name, None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
                return setter, getter
    return None


_lock = threading.Lock()
_depth = 0      # forward passes inside the block now, across threads
_saved = 1      # the thread count the first of them found


@contextlib.contextmanager
def single_threaded_blas():
    """Within the block numpy's OpenBLAS (if that is its BLAS) runs on one thread. Blocks may overlap across
    threads (two models decoding at once): the first to enter saves the count, the last to leave restores it."""
    global _api, _depth, _saved
    with _lock:
        if _api is False:
            _api = _lookup() if sys.platform.startswith("linux") else None
        if _api is not None:
            if _depth == 0:
                _saved = _api[1]()
                if _saved > 1:
                    _api[0](1)
            _depth += 1
    try:
        yield
    finally:
        with _lock:
            if _api is not None:
                _depth -= 1
                if _depth == 0 and _saved > 1:
                    _api[0](_saved)
