"""Decode steps of several configurations of one base, alternating token by token in one process: dense, and each
companion. Per-step medians and their ratios to dense; no llama.cpp (bench/decode.py has it).

Why alternate: on a shared VM the speed drifts by 2x within minutes; configurations timed one after another in
separate rounds see different machines, while steps interleaved one by one see the same drift. All configurations
decode the same fixed token sequence (teacher-forced), so each does the same work whatever the others do.

    python bench/step_ab.py -m smol-q4_0.gguf --companion smol-q4_0.s50.rsparse.gguf --companion other.rsparse.gguf
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True, help="base GGUF")
    p.add_argument("--companion", action="append", default=[], help="companion GGUF (repeatable)")
    p.add_argument("--steps", type=int, default=512, help="decode steps per configuration")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="of the token ids decoded")
    args = p.parse_args()
    from rsparse_cpp.model import Model

    n_ctx = args.steps + 16
    models = {"dense": Model.load(args.model, n_ctx=n_ctx, n_threads=args.threads, sparse=False)}
    for c in args.companion:
        models[os.path.basename(c)] = Model.load(args.model, n_ctx=n_ctx, n_threads=args.threads, companion=c)
    vocab = models["dense"].config.n_vocab
    toks = np.random.default_rng(args.seed).integers(min(100, vocab - 1), vocab, args.steps + 8).tolist()
    for m in models.values():
        m.reset()
        m.forward(toks[:8])
    times: dict[str, list[float]] = {k: [] for k in models}
    for t in toks[8:]:
        for k, m in models.items():
            t0 = time.perf_counter()
            m.forward([t])
            times[k].append(time.perf_counter() - t0)
    dense = float(np.median(times["dense"]))
    print(f"# {os.path.basename(args.model)}, {args.steps} steps each, {args.threads} threads, alternating")
    print("| configuration | median ms/step | vs dense |")
    print("| --- | ---: | ---: |")
    for k, v in times.items():
        med = float(np.median(v))
        print(f"| {k} | {med * 1e3:.3f} | {med / dense:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
