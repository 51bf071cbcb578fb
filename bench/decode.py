"""Decode speed, side by side in one run: llama-cpp-python dense, our dense, and our R-Sparse decode at each
companion's sparsity, all on the same base GGUF (so the same weight type).

Each configuration runs in its own subprocess (peak RSS is its own), round-robin over --repeats rounds so drift on
a noisy machine hits all of them alike; the table gives each one's median round. After the generation each one
also prefills a long prompt (--long-prompt-tokens, 1024) alone from an empty cache. The memory read bandwidth is
measured before every round (numpy, one process per thread: bench_kernels.memory_bandwidth) and printed beside
the table: on a VM it moves by 2x within minutes, so only ratios from one run mean anything. Every runtime goes through its own
generate loop with greedy sampling, so Python overhead is counted on both sides. Prefill is dense everywhere.

Companions are found beside each base: <stem>.s30.rsparse.gguf, <stem>.s50.rsparse.gguf, ... (the number is the
model-level sparsity in percent) and <stem>.rsparse.gguf; or name them with --companion.

    python bench/decode.py -m smol-q8_0.gguf -m smol-q4_0.gguf          # 256-token prompt, 128 generated
    python bench/decode.py -m tiled-1b-q8_0.gguf --repeats 5 --no-llamacpp
"""
from __future__ import annotations

import argparse
import glob
import importlib.metadata
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time

PROMPT_TEXT = ("The history of computing is a story of memory: how fast numbers can be moved from where they are "
               "stored to where they are used. ")


def prompt_tokens(tokenize, n: int) -> list[int]:
    toks = tokenize(PROMPT_TEXT.encode() * (n // 10 + 1))
    return toks[:n]


def worker(kind: str, model: str, companion: str | None, threads: int, n_prompt: int, n_gen: int,
           n_long: int) -> dict:
    stats = {}
    n_ctx = max(n_prompt + n_gen, n_long) + 8
    if kind == "ours":
        import numpy as np

        from rsparse_cpp.generate import generate
        from rsparse_cpp.llama import Llama
        from rsparse_cpp.sampler import SamplingParams

        llm = Llama(model, n_ctx=n_ctx, n_threads=threads, companion_path=companion,
                    sparse=companion is not None)
        prompt = prompt_tokens(lambda b: llm.tokenize(b, add_bos=True), n_prompt)
        gen = generate(llm.model, prompt, SamplingParams(temperature=0), np.random.default_rng(0), n_gen + 1)
    else:
        import llama_cpp

        llm = llama_cpp.Llama(model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                              n_batch=512, verbose=False)
        prompt = prompt_tokens(lambda b: llm.tokenize(b, add_bos=True), n_prompt)
        gen = llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True)
    t0 = time.perf_counter()
    next(gen)  # prefill + first token
    t1 = time.perf_counter()
    for _ in range(n_gen):
        next(gen)
    t2 = time.perf_counter()
    if kind == "ours" and llm.model.sparse is not None:
        sp = llm.model.sparse
        stats = {"read_fraction": sp.read_fraction(), "kept_channels": float(sp.kept_fraction().mean()),
                 "sparse_tokens": sp.tokens}
    if n_long:  # a long prompt alone, from an empty cache: prefill only (the logits of its last token)
        long_prompt = (prompt * (n_long // len(prompt) + 1))[:n_long]
        if kind == "ours":
            llm.model.reset()
            t3 = time.perf_counter()
            llm.model.forward(long_prompt)
        else:
            llm.reset()
            t3 = time.perf_counter()
            llm.eval(long_prompt)
        stats["prefill_long_tps"] = n_long / (time.perf_counter() - t3)
    return {"prefill_tps": len(prompt) / (t1 - t0), "decode_tps": n_gen / (t2 - t1), "peak_rss_mb": peak_rss_mb(),
            **stats}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that across exec from the parent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def run_worker(kind: str, companion: str | None, args, model: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "-m", model, "--threads", str(args.threads),
           "--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens),
           "--long-prompt-tokens", str(args.long_prompt_tokens)]
    if companion:
        cmd += ["--companion", companion]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        why = f"the {kind} run on {model} failed (exit status {out.returncode})"
        if kind == "llamacpp" and out.returncode < 0:
            why += (": llama-cpp-python crashed. Built on a CPU with AMX (Intel Xeon since Sapphire Rapids), "
                    "llama.cpp's AMX matmul crashes on these models' shapes (ggml_backend_amx_mul_mat); rebuild it "
                    f"without AMX ({NO_AMX.replace('VERSION', importlib.metadata.version('llama-cpp-python'))}) or "
                    "pass --no-llamacpp")
        raise SystemExit(f"{why}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


NO_AMX = ("CMAKE_ARGS=\"-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' -DCMAKE_CXX_FLAGS='-mno-amx-tile "
          "-mno-amx-int8 -mno-amx-bf16'\" pip install --force-reinstall --no-deps --no-binary llama-cpp-python "
          "llama-cpp-python==VERSION")


def companions_beside(model: str) -> list[tuple[str, str]]:
    """[(label, path)] of the companions next to a base, by sparsity."""
    stem = model[:-len(".gguf")] if model.endswith(".gguf") else model
    found = []
    for path in glob.glob(glob.escape(stem) + ".s*.rsparse.gguf"):
        m = re.search(r"\.s(\d+)(?:-([\w-]+))?\.rsparse\.gguf$", path)
        if m:
            found.append((int(m.group(1)), f"rsparse {m.group(1)}%" + (f" {m.group(2)}" if m.group(2) else ""), path))
    if os.path.exists(stem + ".rsparse.gguf"):
        found.append((-1, "rsparse", stem + ".rsparse.gguf"))
    return [(label, path) for _, label, path in sorted(found)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", action="append", required=True, help="base GGUF file(s)")
    p.add_argument("--companion", action="append", default=[],
                   help="LABEL=PATH of a companion for the (single) model; default: those found beside it")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--long-prompt-tokens", type=int, default=1024,
                   help="also time the prefill of a prompt this long, alone (0: skip)")
    p.add_argument("--repeats", type=int, default=3, help="rounds; each configuration's median is reported")
    p.add_argument("--no-llamacpp", action="store_true", help="skip llama-cpp-python")
    p.add_argument("--worker", choices=["ours", "llamacpp"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        comp = args.companion[0] if args.companion else None
        print(json.dumps(worker(args.worker, args.model[0], comp, args.threads, args.prompt_tokens,
                                args.gen_tokens, args.long_prompt_tokens)))
        return 0

    from bench_kernels import memory_bandwidth  # beside this file
    from rsparse_cpp import native

    print(f"# machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()} "
          f"threads={args.threads} simd={native.simd_path()} load={os.getloadavg()[0]:.2f}")
    print(f"# prompt {args.prompt_tokens} tokens (dense prefill), {args.gen_tokens} generated, greedy, "
          f"median of {args.repeats} rounds")
    print("# read = fraction of decoder-block linear weights read per decoded token (kept rows + low-rank factors);"
          " kept = mean fraction of input channels kept")
    long = args.long_prompt_tokens
    print(f"# prefill {long} = a {long}-token prompt alone, from an empty cache; the last three columns are ratios "
          f"to llama-cpp-python's (prefill {args.prompt_tokens} / {long}, peak RSS)")
    print(f"| {'model':<28} | {'runtime':<22} | {'decode tok/s':>12} | {'vs our dense':>12} | {'vs llama.cpp':>12} | "
          f"{'prefill tok/s':>13} | {'peak RSS MB':>11} | {'read':>5} | {'kept':>5} | {f'prefill {long}':>12} | "
          f"{'prefill vs llama.cpp':>20} | {'RSS vs llama.cpp':>16} |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for model in args.model:
        if args.companion:
            comps = [tuple(c.split("=", 1)) if "=" in c else (os.path.basename(c), c) for c in args.companion]
        else:
            comps = companions_beside(model)
        configs = ([] if args.no_llamacpp else [("llama-cpp-python", "llamacpp", None)]) + \
            [("ours dense", "ours", None)] + [(f"ours {label}", "ours", path) for label, path in comps]
        rounds: dict[str, list[dict]] = {}
        bandwidth = []
        for _ in range(args.repeats):
            bandwidth.append(memory_bandwidth(args.threads) / 1e9)
            for name, kind, comp in configs:
                rounds.setdefault(name, []).append(run_worker(kind, comp, args, model))
        med = {name: {k: statistics.median(r[k] for r in rs) if isinstance(rs[0][k], float) else rs[0][k]
                       for k in rs[0]} for name, rs in rounds.items()}
        print(f"# {os.path.basename(model)}: memory read bandwidth before each round "
              f"{', '.join(f'{b:.1f}' for b in bandwidth)} GB/s ({args.threads} processes, numpy)")
        ours = med["ours dense"]["decode_tps"]
        ref = med.get("llama-cpp-python")  # None with --no-llamacpp
        for name, _, _ in configs:
            r = med[name]
            vs_llama = f"{r['decode_tps'] / ref['decode_tps']:.2f}" if ref else "-"
            read = f"{r['read_fraction']:.3f}" if "read_fraction" in r else "1"
            kept = f"{r['kept_channels']:.3f}" if "kept_channels" in r else "1"
            pre_long = f"{r['prefill_long_tps']:.1f}" if "prefill_long_tps" in r else "-"
            pre_vs = (f"{r['prefill_tps'] / ref['prefill_tps']:.2f}" + (
                f" / {r['prefill_long_tps'] / ref['prefill_long_tps']:.2f}" if "prefill_long_tps" in r else "")
                if ref else "-")
            rss_vs = f"{r['peak_rss_mb'] / ref['peak_rss_mb']:.2f}" if ref else "-"
            print(f"| {os.path.basename(model):<28} | {name:<22} | {r['decode_tps']:>12.1f} | "
                  f"{r['decode_tps'] / ours:>12.2f} | {vs_llama:>12} | {r['prefill_tps']:>13.1f} | "
                  f"{r['peak_rss_mb']:>11.0f} | {read:>5} | {kept:>5} | {pre_long:>12} | {pre_vs:>20} | "
                  f"{rss_vs:>16} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
