"""Two or more builds of the native library, side by side on the same decode: ms per step over one fixed token
sequence (teacher-forced, not generated), in alternating rounds, each run in its own subprocess.

Why fixed tokens: with a companion, a step's cost depends on how many channels its activations keep, and those
depend on what came before. Greedy generation lets two builds that round differently (or a different thread split)
wander onto different token paths, and then they no longer do the same work: on the 1B-shaped Q4_0 model one build
read 591 kept rows a linear against the other's 451 over 128 generated tokens, and looked 16-20% slower while its
kernels were as fast per row. Every build here sees the same tokens, so it does the same work (up to the few
channels whose score sits right on tau).

    cmake -S . -B /tmp/before && cmake --build /tmp/before -j2   # one build per variant, e.g. per commit
    python bench/ab_libs.py -m tiled-1b-q4_0.gguf --companion tiled-1b-q4_0.s50-sparse-only.rsparse.gguf \\
        /tmp/before/native/librsparse.so build/native/librsparse.so
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run_one(model: str, companion: str | None, threads: int, n_tokens: int, text: str) -> float:
    """In the child process: ms per decode step over the first n_tokens of text after a 4-token prefill."""
    from rsparse_cpp.llama import Llama

    llm = Llama(model, n_ctx=n_tokens + 16, n_threads=threads, companion_path=companion,
                sparse=companion is not None)
    tokens = llm.tokenize(Path(text).read_bytes())[: n_tokens + 4]
    if len(tokens) < n_tokens + 4:
        raise SystemExit(f"{text} has only {len(tokens)} tokens; need {n_tokens + 4}")
    model_ = llm.model
    model_.forward(tokens[:4])
    t = time.perf_counter()
    for tok in tokens[4:]:
        model_.forward([tok])
    return 1e3 * (time.perf_counter() - t) / n_tokens


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("libs", nargs="+", help="librsparse.so paths; the first is the baseline of the ratios")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--companion")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=160, help="decode steps per run")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--text", default=str(Path(__file__).resolve().parent.parent / "README.md"),
                   help="where the fixed tokens come from")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(run_one(args.model, args.companion, args.threads, args.tokens, args.text))
        return 0
    times: dict[str, list[float]] = {lib: [] for lib in args.libs}
    for r in range(args.rounds):
        for lib in args.libs:
            env = dict(os.environ, RSPARSE_LIB=lib)
            cmd = [sys.executable, __file__, "--child", "1", "-m", args.model, "--threads", str(args.threads),
                   "--tokens", str(args.tokens), "--text", args.text, lib]
            if args.companion:
                cmd += ["--companion", args.companion]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            times[lib].append(float(out.split()[-1]))
        print(f"# round {r}: " + ", ".join(f"{t[-1]:.3f}" for t in times.values()), flush=True)
    base = statistics.median(times[args.libs[0]])
    print("| library | median ms/step | vs first |\n| --- | ---: | ---: |")
    for lib, t in times.items():
        print(f"| {lib} | {statistics.median(t):.3f} | {statistics.median(t) / base:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
