"""Decode and prefill speed: our dense runtime vs llama-cpp-python on the same GGUF, side by side in one run.

Each runtime runs in its own subprocess (so peak RSS is its own), alternating, best of --repeats. Both go through
their own generate loop with greedy sampling, so Python overhead on both sides is counted.

    python bench/decode.py                       # default model (SmolLM2-135M), q8_0 and q4_0
    python bench/decode.py -m model.gguf --threads 2 --prompt-tokens 256 --gen-tokens 128
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

PROMPT_TEXT = ("The history of computing is a story of memory: how fast numbers can be moved from where they are "
               "stored to where they are used. ")


def prompt_tokens(tokenize, n: int) -> list[int]:
    toks = tokenize(PROMPT_TEXT.encode() * (n // 10 + 1))
    return toks[:n]


def worker(kind: str, model: str, threads: int, n_prompt: int, n_gen: int) -> dict:
    if kind == "ours":
        import numpy as np

        from rsparse_cpp.generate import generate
        from rsparse_cpp.llama import Llama
        from rsparse_cpp.sampler import SamplingParams

        llm = Llama(model, n_ctx=n_prompt + n_gen + 8, n_threads=threads)
        prompt = prompt_tokens(lambda b: llm.tokenize(b, add_bos=True), n_prompt)
        gen = generate(llm.model, prompt, SamplingParams(temperature=0), np.random.default_rng(0), n_gen + 1)
    else:
        import llama_cpp

        llm = llama_cpp.Llama(model, n_ctx=n_prompt + n_gen + 8, n_threads=threads, n_threads_batch=threads,
                              n_batch=512, verbose=False)
        prompt = prompt_tokens(lambda b: llm.tokenize(b, add_bos=True), n_prompt)
        gen = llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True)
    t0 = time.perf_counter()
    next(gen)  # prefill + first token
    t1 = time.perf_counter()
    for _ in range(n_gen):
        next(gen)
    t2 = time.perf_counter()
    return {"prefill_tps": len(prompt) / (t1 - t0), "decode_tps": n_gen / (t2 - t1),
            "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that across exec from the parent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def run_worker(kind, args, model) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "-m", model, "--threads", str(args.threads),
           "--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", action="append", help="GGUF file(s); default: SmolLM2-135M q8_0 and q4_0")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", choices=["ours", "llamacpp"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model[0], args.threads, args.prompt_tokens, args.gen_tokens)))
        return 0

    models = args.model
    if not models:
        from rsparse_converter.default_model import ensure_default_gguf

        models = [str(ensure_default_gguf(t)) for t in ("q8_0", "q4_0")]
    from rsparse_cpp import native

    print(f"# machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"threads={args.threads} simd={native.simd_path()}")
    print(f"# prompt {args.prompt_tokens} tokens, {args.gen_tokens} generated, greedy, best of {args.repeats}")
    header = (f"{'model':<40} {'runtime':<12} {'prefill tok/s':>14} {'decode tok/s':>13} {'decode GB/s':>12} "
              f"{'peak RSS MB':>12}")
    print(header)
    for model in models:
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for kind in ("ours", "llamacpp"):  # alternate, so drift on a noisy machine hits both
                r = run_worker(kind, args, model)
                b = best.setdefault(kind, r)
                for k in ("prefill_tps", "decode_tps"):
                    b[k] = max(b[k], r[k])
                b["peak_rss_mb"] = min(b["peak_rss_mb"], r["peak_rss_mb"])
        gb = os.path.getsize(model) / 1e9  # every weight byte is read once per decoded token
        for kind, r in best.items():
            print(f"{os.path.basename(model):<40} {kind:<12} {r['prefill_tps']:>14.1f} {r['decode_tps']:>13.1f} "
                  f"{r['decode_tps'] * gb:>12.1f} {r['peak_rss_mb']:>12.0f}")
        o, l = best["ours"], best["llamacpp"]
        print(f"{os.path.basename(model):<40} {'ours/llama':<12} {o['prefill_tps'] / l['prefill_tps']:>14.2f} "
              f"{o['decode_tps'] / l['decode_tps']:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
