"""Kernel benchmark: dense vs R-Sparse matrix-vector time per layer shape, weight type and SIMD path.

For SmolLM2-135M and Llama-7B layer shapes and each weight type it prints, per SIMD path: the dense decode time
(rs_matmul on the standard (n_out, n_in) layout; Q4_0 and Q8_0 in tiles of 16 rows, as the runtime multiplies them)
with its achieved GB/s against this machine's memory read bandwidth, measured in the same run right before and after each row and path (numpy dot over 1 GiB, one process per
pool thread, all at once; the larger of the two; a row during which it moved by over 15% is measured again, up to
3 times, and marked ~ if it never held still); then the sparse time (rs_sparse_matvec, rank 0, rho = 1: keep
|x_j| > tau, tau from a quantile of |x|) at kept fractions 90% .. 10%, as a ratio to dense. Then prefill (n_tok
tokens through one 4096 x 4096 layer, from the base's layout and from the companion's) per path, in GFLOP/s, and the
issue's targets on Llama-7B shapes.

Beside each row, the sparse kernel's own speed with its rows in cache ("cached", GB/s of kept rows: the first
channels of the layer, a few MiB of them kept, read over and over) and what that speed allows at best at 50% kept
("floor": the time to read the layer's kept half at the cached speed, over the dense time). Where the floor is above
a target, the kernel's arithmetic, not its memory access, is what misses it.

Every weight matrix is cycled through enough copies (>= --stream-mb in all: 256 MiB, or twice the last-level cache
where that is larger) that it comes from memory, not from the last-level cache, as in a real decode step;
consecutive calls never read the same copy. Each call is timed alone. In
a round, dense and every kept fraction take turns call by call, 200 calls each; a time is the median call of the
best round, a ratio the median over rounds of sparse / dense within a round, so both sides of a ratio see the same
machine load (the machine is shared, and on a VM the memory bandwidth itself changes from one second to the next).
Kernels are called through the raw cffi functions, so the Python argument checks do not count.

    python bench/bench_kernels.py                      # everything, 2 threads
    python bench/bench_kernels.py --models llama7b --types F16,Q8_0 --paths avx2
"""
from __future__ import annotations

import argparse
import glob
import multiprocessing as mp
import os
import platform
import time

import numpy as np

import gguf
from rsparse_cpp import native
from rsparse_cpp.constants import GGMLType

MODELS = {
    # (layer name, n_out, n_in)
    "smollm2": [("q/o", 576, 576), ("k/v", 192, 576), ("gate/up", 1536, 576), ("down", 576, 1536)],
    "llama7b": [("q/k/v/o", 4096, 4096), ("gate/up", 11008, 4096), ("down", 4096, 11008)],
}
FRACTIONS = (0.9, 0.7, 0.5, 0.3, 0.1)
TARGETS = {"dense_bw": 0.70, 0.5: 0.6, 0.3: 0.4}  # the "Done when", Llama-7B shapes, F16 and Q8_0


# ---- memory bandwidth: numpy reads, one process per pool thread -------------------------------------------------
def _reader(nbytes: int, barrier, out, reps: int) -> None:
    a = np.ones(nbytes // 4, np.float32)
    a.dot(a)  # touch every page before timing
    spans = []
    for _ in range(reps):
        barrier.wait()
        t0 = time.perf_counter()
        a.dot(a)
        spans.append((t0, time.perf_counter()))
    out.put(spans)


def memory_bandwidth(n_procs: int, nbytes: int = 1 << 30, reps: int = 5) -> float:
    """Best aggregate read bandwidth (bytes/s) of n_procs processes each reading its own nbytes at the same time."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n_procs), ctx.Queue()
    procs = [ctx.Process(target=_reader, args=(nbytes // n_procs, barrier, out, reps)) for _ in range(n_procs)]
    for p in procs:
        p.start()
    spans = [out.get() for _ in procs]
    for p in procs:
        p.join()
    best = min(max(s[r][1] for s in spans) - min(s[r][0] for s in spans) for r in range(reps))
    return nbytes // n_procs * n_procs / best


# ---- weights -------------------------------------------------------------------------------------------------------
def stored(w: np.ndarray, wtype: GGMLType) -> np.ndarray:
    if wtype == GGMLType.F32:
        return np.ascontiguousarray(w)
    if wtype == GGMLType.F16:
        return w.astype(np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(w), gguf.GGMLQuantizationType[wtype.name])


def last_level_cache() -> int:
    """Bytes of the largest CPU cache Linux reports (0 elsewhere). Some server parts hold hundreds of MiB (480 MiB of
    L3 on the Xeon VM of docs/SPEED.md 2026-12-08), enough to keep 256 MiB of weight copies in cache."""
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        if text.rstrip("KMG").isdigit():
            sizes.append(int(text.rstrip("KMG")) * unit)
    return max(sizes, default=0)


def copies(a: np.ndarray, stream_bytes: int) -> list[np.ndarray]:
    return [a] + [a.copy() for _ in range(max(1, -(-stream_bytes // a.nbytes)) - 1)] if a.nbytes else [a]


def round_medians(calls: dict, reps: int, min_calls: int = 200) -> dict:
    """Per configuration, the median seconds per call in each of `reps` rounds. calls maps a name to (call,
    pointers). Within a round the configurations take turns call by call (each call timed alone, cycling through
    the weight copies), so a ratio of two configurations from one round compares them under the same
    machine load, milliseconds apart. The median ignores the calls that another process's time slice interrupted."""
    clock = time.perf_counter
    for call, pointers in calls.values():
        call(pointers[0])
    n = max(min_calls, max(len(pointers) for _, pointers in calls.values()))
    medians = {name: [] for name in calls}
    for _ in range(reps):
        times = {name: [] for name in calls}
        for i in range(n):
            for c, (name, (call, pointers)) in enumerate(calls.items()):
                # consecutive calls take consecutive copies, even when configurations share one list of copies:
                # a copy the previous call just read would come partly from the last-level cache
                p = pointers[(i * len(calls) + c) % len(pointers)]
                t0 = clock()
                call(p)
                times[name].append(clock() - t0)
        for name in calls:
            medians[name].append(float(np.median(times[name])))
    return medians


def best_time(call, pointers: list, reps: int, min_calls: int = 200) -> float:
    """Seconds per call: the best round's median (the least disturbed round)."""
    return min(round_medians({"x": (call, pointers)}, reps, min_calls)["x"])


# ---- one layer shape ---------------------------------------------------------------------------------------------
def bench_layer(pool, n_out: int, n_in: int, wtype: GGMLType, paths: list[str], args, rng) -> list[dict]:
    lib, ffi = native._load(), native.ffi
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    dense = copies(stored(w, wtype), args.stream_mb << 20)
    dtype = int(wtype)
    if int(wtype) in native.TILED and n_out % 16 == 0:  # what the runtime multiplies: tiles of 16 rows
        dtype = native.TILED[int(wtype)]
        dense = [native.repack_r16(wtype, c, n_out, n_in)[1] for c in dense]
    sparse = copies(stored(np.ascontiguousarray(w.T), wtype), args.stream_mb << 20)
    del w
    x = rng.standard_normal(n_in).astype(np.float32)
    y = np.empty(n_out, np.float32)
    scratch = np.empty(native.sparse_scratch_bytes(n_in, 0) // 4, np.float32)
    n_kept = ffi.new("int64_t *")
    px, py, ps = ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", y), ffi.from_buffer(scratch)
    pd = [ffi.from_buffer(c) for c in dense]
    pt = [ffi.from_buffer(c) for c in sparse]
    taus = {f: float(np.quantile(np.abs(x), 1 - f)) for f in args.fractions}

    rows = []
    for path in paths:
        native.simd_select(path)
        calls = {"dense": (lambda p: lib.rs_matmul(pool._ptr, dtype, p, n_out, n_in, px, 1, py), pd)}
        for f, tau in taus.items():
            def call(p, tau=tau):
                return lib.rs_sparse_matvec(pool._ptr, int(wtype), p, n_out, n_in, ffi.NULL, tau, 0, ffi.NULL,
                                            ffi.NULL, 0, px, py, n_kept, ps, scratch.nbytes)
            calls[f] = (call, pt)
        cached_gbs = cached_speed(pool, wtype, pt[0], sparse[0].nbytes // n_in, n_out, n_in, px, py, ps,
                                  scratch.nbytes, x, args.reps)
        # The bandwidth is measured right before and right after (on a VM it moves by 2x within minutes); when the
        # two differ by more than 15% the machine changed phase during the row, so its %bw means little: the row
        # is measured again, up to 3 times in all, and marked '~' if it never held still.
        for _ in range(3):
            before = memory_bandwidth(args.threads)
            med = round_medians(calls, args.reps)
            after = memory_bandwidth(args.threads)
            bw, steady = max(before, after), abs(before - after) <= 0.15 * max(before, after)
            if steady:
                break
        t_dense = min(med["dense"])
        # Each ratio: the median over rounds of (sparse / dense) within a round, both timed minutes apart at most.
        ratios = {f: float(np.median(np.array(med[f]) / np.array(med["dense"]))) for f in taus}
        kept = {}
        floor = kept_bytes = None
        for f in taus:
            calls[f][0](pt[0])
            kept[f] = n_kept[0] / n_in
            if f == 0.5:
                kept_bytes = n_kept[0] * (sparse[0].nbytes // n_in)
        if kept_bytes is not None:
            floor = kept_bytes / (cached_gbs * 1e9) / t_dense
        rows.append(dict(path=path, dense_s=t_dense, gbs=dense[0].nbytes / t_dense / 1e9, ratios=ratios, kept=kept,
                         bw=bw, bw_moved=None if steady else (before, after), cached_gbs=cached_gbs, floor=floor))
    return rows


def cached_speed(pool, wtype, p, rb, n_out, n_in, px, py, ps, scratch_bytes, x, reps) -> float:
    """GB/s of kept rows the sparse kernel reads when they are already in cache: the kernel's arithmetic speed.
    The layer's first channels, half of them kept, read over and over; measured at two sizes (about 2 and 6 MiB
    kept, in cache on any CPU with an L3) and taken as the difference, so the fixed cost of a call (waking the
    pool, clearing and adding up the per-thread sums over all n_out outputs) drops out."""
    lib, ffi = native._load(), native.ffi
    n_kept = ffi.new("int64_t *")
    points = []
    for kept_bytes in (2 << 20, 6 << 20):
        n_sub = max(2, min(n_in, 2 * kept_bytes // rb))
        tau = float(np.quantile(np.abs(x[:n_sub]), 0.5))

        def call(w, n_sub=n_sub, tau=tau):
            return lib.rs_sparse_matvec(pool._ptr, int(wtype), w, n_out, n_sub, ffi.NULL, tau, 0, ffi.NULL, ffi.NULL,
                                        0, px, py, n_kept, ps, scratch_bytes)
        t = best_time(call, [p], reps, min_calls=50)
        points.append((n_kept[0] * rb, t))
    (b0, t0), (b1, t1) = points
    return (b1 - b0) / (t1 - t0) / 1e9 if t1 > t0 and b1 > b0 else b1 / t1 / 1e9


def bench_prefill(pool, n_out: int, n_in: int, wtype: GGMLType, n_tok: int, paths: list[str], reps: int, rng):
    """{(path, layout): seconds} of one prompt's product: rs_matmul on the base's layout (n_out, n_in) and
    rs_matmul_wt on the companion's (n_in, n_out), the same GEMM (native/src/gemm.c) after different packing."""
    lib, ffi = native._load(), native.ffi
    w = stored(rng.standard_normal((n_out, n_in)).astype(np.float32), wtype)
    wt = stored(rng.standard_normal((n_in, n_out)).astype(np.float32), wtype)
    x = rng.standard_normal((n_tok, n_in)).astype(np.float32)
    y = np.empty((n_tok, n_out), np.float32)
    pw, pwt = ffi.from_buffer(w), ffi.from_buffer(wt)
    px, py = ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", y)
    times = {}
    for path in paths:
        native.simd_select(path)
        times[path, "base"] = best_time(
            lambda p: lib.rs_matmul(pool._ptr, int(wtype), p, n_out, n_in, px, n_tok, py), [pw], reps, min_calls=3)
        times[path, "companion"] = best_time(
            lambda p: lib.rs_matmul_wt(pool._ptr, int(wtype), p, n_out, n_in, px, n_tok, py), [pwt], reps,
            min_calls=3)
    return times


def floor_text(r: dict) -> str:
    return f"{r['floor']:5.2f}" if r["floor"] is not None else f"{'-':>5s}"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="smollm2,llama7b")
    ap.add_argument("--types", default="F16,Q8_0,Q4_0,F32")
    ap.add_argument("--paths", default=None, help="comma-separated SIMD paths (default: every one this CPU runs)")
    ap.add_argument("--fractions", default=",".join(str(f) for f in FRACTIONS))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--stream-mb", type=int, default=None,
                    help="MiB of weights cycled through per measurement (default: 256, or twice the last-level "
                         "cache where that is larger)")
    ap.add_argument("--prefill-tokens", type=int, default=256)
    ap.add_argument("--no-prefill", action="store_true")
    args = ap.parse_args()
    args.fractions = [float(f) for f in args.fractions.split(",")]
    paths = args.paths.split(",") if args.paths else native.simd_paths()
    for p in paths:
        if p not in native.simd_paths():
            raise SystemExit(f"path {p!r} is not runnable here (runnable: {native.simd_paths()})")
    types = [GGMLType[t] for t in args.types.split(",")]
    rng = np.random.default_rng(0)

    bw1 = memory_bandwidth(1)
    bw = memory_bandwidth(args.threads) if args.threads > 1 else bw1
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; pool threads: {args.threads}; SIMD paths: {paths}")
    print(f"memory read bandwidth (numpy dot over 1 GiB, best of 5): {bw1 / 1e9:.1f} GB/s with 1 process, "
          f"{bw / 1e9:.1f} GB/s with {args.threads} at once")
    print(f"%bw: against the {args.threads}-process bandwidth measured again right before and right after each "
          "row's measurement, the larger of the two (bw column): on a VM it moves by 2x within minutes; a row whose "
          "two differ by over 15% is measured again, up to 3 times, and marked ~ if they never agree")
    print("dense: rs_matmul, (n_out, n_in) layout, one token; sparse: rs_sparse_matvec, input-major, rank 0, rho = 1")
    if args.stream_mb is None:
        args.stream_mb = max(256, 2 * (last_level_cache() >> 20))
    print(f"weights cycled through {args.stream_mb} MiB of copies; times: median call of the best of {args.reps} "
          "rounds; ratios: median over rounds of sparse / dense, taking turns call by call\n")
    head = " ".join(f"{int(f * 100):>5d}%" for f in args.fractions)
    print(f"{'model':8s} {'layer':8s} {'n_out x n_in':>12s} {'type':5s} {'path':7s} {'dense us':>9s} {'GB/s':>6s} "
          f"{'bw':>5s} {'%bw':>4s} | sparse/dense at kept {head} | {'cached':>6s} {'floor':>5s}")
    results = []
    with native.Pool(args.threads) as pool:
        for model in filter(None, args.models.split(",")):  # --models "": prefill only
            for layer, n_out, n_in in MODELS[model]:
                for wtype in types:
                    for r in bench_layer(pool, n_out, n_in, wtype, paths, args, rng):
                        r.update(model=model, layer=layer, n_out=n_out, n_in=n_in, type=wtype.name)
                        results.append(r)
                        ratios = " ".join(f"{r['ratios'][f]:6.2f}" for f in args.fractions)
                        print(f"{model:8s} {layer:8s} {n_out:>5d}x{n_in:<6d} {wtype.name:5s} {r['path']:7s} "
                              f"{r['dense_s'] * 1e6:9.1f} {r['gbs']:6.1f} {r['bw'] / 1e9:5.1f} "
                              f"{r['gbs'] * 1e9 / r['bw'] * 100:4.0f}{'~' if r['bw_moved'] else ' '}| {'':22s}{ratios} | "
                              f"{r['cached_gbs']:6.1f} {floor_text(r)}", flush=True)

        if not args.no_prefill:
            n_tok = args.prefill_tokens
            print(f"\nprefill: {n_tok} tokens, 4096 x 4096, base layout (rs_matmul) and companion layout "
                  f"(rs_matmul_wt): ms, GFLOP/s")
            for wtype in types:
                t = bench_prefill(pool, 4096, 4096, wtype, n_tok, paths, max(2, args.reps // 2), rng)
                cells = "  ".join(f"{p} {lay} {s * 1e3:7.2f} ms {2 * 4096 * 4096 * n_tok / s / 1e9:6.1f}"
                                  for (p, lay), s in t.items())
                print(f"  {wtype.name:5s} {cells}", flush=True)

    print("\ntargets (Llama-7B shapes, F16 and Q8_0): dense >= 70% of bandwidth, sparse <= 0.6x dense at 50% kept, "
          "<= 0.4x at 30%")
    for path in paths:
        rows = [r for r in results if r["model"] == "llama7b" and r["type"] in ("F16", "Q8_0") and r["path"] == path]
        if not rows:
            continue
        misses = []
        for r in rows:
            name = f"{r['type']} {r['n_out']}x{r['n_in']}"
            if r["gbs"] * 1e9 < TARGETS["dense_bw"] * r["bw"]:
                moved = (f" (the bandwidth moved during the row: {r['bw_moved'][0] / 1e9:.0f} -> "
                         f"{r['bw_moved'][1] / 1e9:.0f} GB/s)" if r["bw_moved"] else "")
                misses.append(f"{name} dense {r['gbs'] * 1e9 / r['bw']:.0%} of bandwidth{moved}")
            for f in (0.5, 0.3):
                if f in r["ratios"] and r["ratios"][f] > TARGETS[f]:
                    why = (f" (floor {r['floor']:.2f}x: the kernel reads cached rows at {r['cached_gbs']:.0f} GB/s)"
                           if f == 0.5 and r["floor"] is not None and r["floor"] > TARGETS[f] else "")
                    misses.append(f"{name} {f:.0%} kept: {r['ratios'][f]:.2f}x dense{why}")
        print(f"  {path:7s} {'all met' if not misses else 'MISSED: ' + '; '.join(misses)}")


if __name__ == "__main__":
    main()
