"""Coverage-guided fuzzing of the R-Sparse companion reader (atheris): parse and validate a companion, check it
against its base, then run every linear it accepts through the native rank-aware kernel, as a decode step would.
Loading may fail only with GGUFError; an accepted companion must run without any exception, crash or sanitizer
report.

    python fuzz/fuzz_companion.py -max_total_time=600      # 10 minutes
    python fuzz/fuzz_companion.py -atheris_runs=20000       # a short run, as CI does

Seeds are valid companions of tests/gguf_craft.py's tiny base (F32; Q8_0 weights with F16 factors; no factors),
built in memory and carrying the base's fingerprint, so mutations reach the per-linear checks and the kernel.
"""
from __future__ import annotations

import os
import sys
import tempfile

import atheris
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

with atheris.instrument_imports():
    from rsparse_cpp import native
    from rsparse_cpp.companion import Companion, fingerprint
    from rsparse_cpp.gguf_file import GGUFError

BASE = ""  # the tiny base file every input is checked against (set in main)
POOL: native.Pool | None = None
X = np.random.default_rng(0).normal(0, 1, 256).astype(np.float32)


def page_aligned(data: bytes) -> np.ndarray:
    """The bytes at a 64-byte aligned address, as a real file's mmap would be (tensor views must be aligned)."""
    buf = np.empty(len(data) + 64, np.uint8)
    off = -buf.ctypes.data % 64
    view = buf[off:off + len(data)]
    view[:] = np.frombuffer(data, np.uint8)
    return view


def one_input(data: bytes) -> None:
    try:
        c = Companion("<fuzz>", data=page_aligned(data))
        c.check_base(BASE)
    except GGUFError:
        return
    for layer in c.layers:  # what SparseDecode binds for a decode step
        for lin in layer.values():
            x = X[:lin.n_in] if lin.n_in <= X.size else np.ones(lin.n_in, np.float32)
            native.rsparse_matvec(POOL, lin.weight_type, lin.weight, lin.n_out, lin.n_in,
                                  None if lin.rho >= 1.0 else lin.colnorm, lin.tau, lin.u, lin.vs, x)


def seed_corpus(base: str) -> str:
    from gguf_craft import TINY_LINEARS, q8_0, tiny_companion

    fp = fingerprint(base)
    q8 = {}  # Q8_0 weights (blocks along out) where out is whole blocks, as the converter writes them
    rng = np.random.default_rng(2)
    for name, (n_out, n_in) in TINY_LINEARS.items():
        if n_out % 32 == 0:
            q8[f"blk.0.{name}.rsparse_weight"] = q8_0(rng.normal(0, 0.1, (n_in, n_out)))
    f16 = {f"blk.0.{name}.rsparse_{k}": rng.normal(0, 0.1, shape).astype(np.float16)
           for name, (n_out, n_in) in TINY_LINEARS.items() for k, shape in (("u", (n_out, 4)), ("vs", (4, n_in)))}
    seeds = {"f32": tiny_companion(fp), "no_factors": tiny_companion(fp, rank=0),
             "q8_f16": tiny_companion(fp, tensor_override={**q8, **f16})}
    d = tempfile.mkdtemp(prefix="companion-fuzz-seeds-")
    for name, craft in seeds.items():
        with open(os.path.join(d, name), "wb") as fh:
            fh.write(craft.build())
    return d


def main() -> None:
    global BASE, POOL
    from gguf_craft import tiny_model

    BASE = os.path.join(tempfile.mkdtemp(prefix="companion-fuzz-base-"), "tiny.gguf")
    with open(BASE, "wb") as fh:
        fh.write(tiny_model().build())
    POOL = native.Pool(1)
    argv = list(sys.argv)
    if not any(a.startswith("-artifact_prefix") for a in argv):  # crash files go to /tmp, never into the repo
        argv.insert(1, f"-artifact_prefix={tempfile.gettempdir()}/companion-fuzz-")
    if not any(not a.startswith("-") for a in argv[1:]):
        argv.append(os.environ.get("RSPARSE_FUZZ_CORPUS") or seed_corpus(BASE))
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
