"""Where a decode step's time goes: the native forward call (rs_forward: kernels and the per-layer glue in C)
against everything Python does per token (the generate loop, check_tokens, the logits check, the sampler).

Greedy decode through rsparse_cpp.generate, as bench/decode.py runs it; the bound native call is wrapped by a
timer, so the split is measured on the same tokens. With --cprofile, cProfile's top functions of the same loop.

    python bench/profile_decode.py -m smol-q4_0.gguf --companion smol-q4_0.s50.rsparse.gguf
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--companion", help="R-Sparse companion (default: dense decode)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--gen-tokens", type=int, default=256)
    p.add_argument("--cprofile", action="store_true")
    args = p.parse_args()

    from rsparse_cpp import native
    from rsparse_cpp.generate import generate
    from rsparse_cpp.llama import Llama
    from rsparse_cpp.sampler import SamplingParams

    llm = Llama(args.model, n_ctx=args.prompt_tokens + args.gen_tokens + 8, n_threads=args.threads,
                companion_path=args.companion, sparse=args.companion is not None)
    model = llm.model
    bound, spent = getattr(model, "_forward", None), [0.0, 0]

    def timed(n, pos, sparse, logits_all):
        t = time.perf_counter()
        bound(n, pos, sparse, logits_all)
        if n == 1:
            spent[0] += time.perf_counter() - t
            spent[1] += 1

    if bound is not None:  # (an older runtime without rs_forward: the total alone)
        model._forward = timed
    prompt = list(range(10, 10 + args.prompt_tokens))
    gen = generate(model, prompt, SamplingParams(temperature=0), np.random.default_rng(0), args.gen_tokens + 1)
    next(gen)  # prefill and the first token: not timed
    prof = cProfile.Profile() if args.cprofile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    for _ in range(args.gen_tokens):
        next(gen)
    if prof:
        prof.disable()
    total = time.perf_counter() - t0
    native_s, steps = spent[0], args.gen_tokens
    print(f"# {args.model} {'companion ' + args.companion if args.companion else 'dense'}, {args.threads} threads, "
          f"simd {native.simd_path()}{', under cProfile' if prof else ''}")
    print(f"{steps} decode steps: {total / steps * 1e3:.3f} ms a token ({steps / total:.1f} tok/s); "
          f"rs_forward {native_s / steps * 1e3:.3f} ms ({native_s / total:.1%}), Python around it "
          f"{(total - native_s) / steps * 1e3:.3f} ms ({1 - native_s / total:.1%})")
    if prof:
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
