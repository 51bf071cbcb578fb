"""Which kept channels, not only how many: the sparse kernel's time against dense at 50% kept, for three patterns of
kept input channels on one layer shape.

  random     half the channels, chosen at random (what real activations look like to the kernel)
  alternate  every other channel: each kept row stands alone, between two dropped ones
  runs8      8 kept, 8 dropped, ...: kept rows in runs as long as a group of the sparse kernels (GROUP)

The three read the same number of bytes. A gap between them is the price of where the rows lie, not of how many
there are: a prefetcher that runs on past the end of a kept row reads bytes of the dropped row after it, which costs
most when every kept row stands alone. This is what chose the sparse kernels' prefetch hints (kernels_simd.h,
SPARSE_PF). On the development VM (Zen 5, 2 threads), 4096 x 11008 Q8_0, three runs per build taking turns, the
slow-bandwidth ones (three for AVX2 with L2 hints, two for the others):

  path     hints   random       alternate    runs8
  AVX2     L2      0.509-0.526  0.616-0.624  0.488-0.505
  AVX2     L1      0.450-0.467  0.563        0.407-0.423
  AVX-512  L2      0.508-0.520  0.604-0.607  0.481-0.489
  AVX-512  L1      0.425-0.438  0.524        0.409-0.420

In the one fast-phase run per build, random rows took 0.513 (L2) and 0.476 (L1) on AVX-512; AVX2 with L1 hints took
0.663 there, its arithmetic being the limit (docs/SPEED.md).

Same method as bench_kernels.py (its helpers): weights cycled through copies so they come from memory, dense and each
pattern taking turns call by call, ratios the median over rounds of sparse / dense within a round. The dense GB/s
column tells the bandwidth phase of this VM (about 35-45 GB/s in the slow one, 60-70 in the fast one). To compare two
builds of the library, run this once per build with RSPARSE_LIB pointing at each, taking turns.

    python bench/kept_patterns.py                                  # Llama-7B ffn_down, Q8_0, every path
    python bench/kept_patterns.py --shape 4096x4096 --type F16 --paths avx2
"""
from __future__ import annotations

import argparse

import numpy as np

from bench_kernels import copies, round_medians, stored  # beside this file
from rsparse_cpp import native
from rsparse_cpp.constants import GGMLType

PATTERNS = {
    "random": lambda n, rng: rng.permutation(n) < n // 2,
    "alternate": lambda n, rng: np.arange(n) % 2 == 1,
    "runs8": lambda n, rng: (np.arange(n) // 8) % 2 == 1,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="4096x11008", help="n_out x n_in (default: Llama-7B's ffn_down)")
    ap.add_argument("--type", default="Q8_0", choices=[t.name for t in (GGMLType.F16, GGMLType.Q8_0,
                                                                        GGMLType.Q4_0)])
    ap.add_argument("--paths", default=None, help="comma-separated SIMD paths (default: every one this CPU runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--stream-mb", type=int, default=256)
    args = ap.parse_args()
    n_out, n_in = (int(v) for v in args.shape.lower().split("x"))
    wtype = GGMLType[args.type]
    paths = args.paths.split(",") if args.paths else native.simd_paths()

    rng = np.random.default_rng(0)
    lib, ffi = native._load(), native.ffi
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    dense = copies(stored(w, wtype), args.stream_mb << 20)
    sparse = copies(stored(np.ascontiguousarray(w.T), wtype), args.stream_mb << 20)
    del w
    y = np.empty(n_out, np.float32)
    scratch = np.empty(native.sparse_scratch_bytes(n_in, 0) // 4, np.float32)
    n_kept = ffi.new("int64_t *")
    py, ps = ffi.from_buffer("float[]", y), ffi.from_buffer(scratch)
    pd = [ffi.from_buffer(c) for c in dense]
    pt = [ffi.from_buffer(c) for c in sparse]
    # |x| > 1 exactly on the pattern's channels, below 0.1 elsewhere: tau = 0.5 keeps the pattern
    xs = {}
    for name, make in PATTERNS.items():
        keep = make(n_in, rng)
        x = np.where(keep, 1.0 + rng.random(n_in), 0.1 * rng.random(n_in)) * rng.choice([-1.0, 1.0], n_in)
        xs[name] = x.astype(np.float32)
    px = {name: ffi.from_buffer("float[]", x) for name, x in xs.items()}
    with native.Pool(args.threads) as pool:
        print(f"{n_out} x {n_in} {wtype.name}, {args.threads} threads, 50% kept; ratio: sparse / dense time")
        print(f"{'path':8} {'dense us':>9} {'GB/s':>6} | " + " ".join(f"{p:>9}" for p in PATTERNS))
        for path in paths:
            native.simd_select(path)
            def dense_call(p):
                return lib.rs_matmul(pool._ptr, int(wtype), p, n_out, n_in, px["random"], 1, py)
            calls = {"dense": (dense_call, pd)}
            for name in PATTERNS:
                def call(p, x=px[name]):
                    return lib.rs_sparse_matvec(pool._ptr, int(wtype), p, n_out, n_in, ffi.NULL, 0.5, 0, ffi.NULL,
                                                ffi.NULL, 0, x, py, n_kept, ps, scratch.nbytes)
                calls[name] = (call, pt)
                call(pt[0])
                assert n_kept[0] == n_in // 2, (name, n_kept[0])
            med = round_medians(calls, args.reps)
            t_dense = min(med["dense"])
            ratios = {n: float(np.median(np.array(med[n]) / np.array(med["dense"]))) for n in PATTERNS}
            print(f"{path:8} {t_dense * 1e6:9.1f} {dense[0].nbytes / t_dense / 1e9:6.1f} | "
                  + " ".join(f"{ratios[n]:9.3f}" for n in PATTERNS))


if __name__ == "__main__":
    main()
