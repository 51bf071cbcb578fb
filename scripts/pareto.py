"""The picture a user decides from: strict held-out perplexity against decode speed, per method and sparsity, with
llama.cpp's dense decode of the same files as the reference. Writes docs/pareto.png and docs/PARETO.md.

    python scripts/pareto.py                                 # Q4_0 and Q8_0, 30-70%, three methods (about 2 h)
    python scripts/pareto.py --types q4_0 --sparsities 0.3,0.5,0.7

Speed: decode tokens/s of the 1B-shaped model of bench/make_tiled_model.py (SmolLM2's layers tiled 3 times, made
first if missing), 2 threads, bench/decode.py's measurement (256-token prompt, 128 generated, each configuration in
its own process, round-robin, median of --repeats rounds), every method's companion beside llama-cpp-python's and
our dense decode of the same base file. Quality: strict held-out perplexity (every token sparse, 8 windows of 512)
on the Python documentation's evaluation split and on English legal prose of another domain (Debian's licenses),
of SmolLM2-135M built with the same method (the converter's float reference). The tiled model computes the same
function as SmolLM2, so the same method keeps the same channels on both: SmolLM2 gives the quality cheaply, the
1B shape the speed that per-token overheads would hide on a 135M model.

Methods (each at every sparsity):
    paper    the paper's method: rho 0.95 on every linear, top-r SVD factors, thresholds from the dense model,
             every linear at the target (`--paper-faithful --recipe uniform`; the paper then searches rho, which
             moves little of the speed and takes hours on the 1B shape)
    teal     sparse only, |x| scores, every linear at the target (`--recipe sparse-only --allocation uniform`):
             the TEAL-like baseline
    default  sparse only with per-linear budgets (`--recipe sparse-only`, rsparse-default-model's), built as the
             command builds it: the budgets ship only where they beat every linear at the target on validation
On the 1B shape the per-linear budgets are SmolLM2's (the same fractions of the same linears, tiled), and the paper
method's low-rank factors are zeros of the right rank and type: only their shapes cost time, and their float64 SVDs
would take half an hour there. Finished measurements are kept in a state JSON (outside the repository), so a rerun
resumes, and the figure and table are rewritten from it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))

METHODS = ("paper", "teal", "default")
FLAGS = {"paper": "--paper-faithful --recipe uniform", "teal": "--recipe sparse-only --allocation uniform",
         "default": "--recipe sparse-only"}
PAPER_RHO = 0.95
TEXTS = ("Python docs", "licenses")


def _log(msg: str) -> None:
    print(f"[pareto] {msg}", file=sys.stderr, flush=True)


def plan_for(method: str, model, state, windows, calib, sparsity: float, budget=None):
    """The method's plan on `model` (applied); budget: a per-linear allocation (default's), None for uniform."""
    import numpy as np

    from rsparse_converter.calibrate import apply_plan, dense_plan, sequential_plan

    n_layer = len(model.model.layers)
    if method == "paper":
        plan = dense_plan(calib, sparsity, np.full((n_layer, 7), PAPER_RHO), "svd")
    else:
        plan = sequential_plan(model, state, windows, calib, sparsity if budget is None else budget,
                               np.ones((n_layer, 7)), "data-aware", target=sparsity)
    apply_plan(model, plan)
    return plan


def quality(results: dict, sparsities, methods, windows_n: int, threads: int) -> Iterator[None]:
    """SmolLM2's strict held-out perplexity per method and sparsity (and dense), and default's per-linear budgets
    where it ships them; yields after each row (for the caller to save)."""
    todo = [(m, s) for s in sparsities for m in methods if f"q/{m}/{s:.2f}" not in results]
    if not todo and "q/dense" in results:
        return
    import torch

    from allocation_table import licenses_text
    from rsparse_converter.calibrate import (Calibration, calibration_windows, corpus_text, load_model,
                                            load_tokenizer, token_windows)
    from rsparse_converter.default_model import ensure_hf_checkpoint
    from rsparse_converter.perplexity import perplexity
    from rsparse_converter.reference import rsparse_model
    from rsparse_converter.rsparse_cli import BuildConfig, build

    torch.set_num_threads(threads)
    hf = ensure_hf_checkpoint()
    cfg = BuildConfig(sparsity=0.5)
    model, tok = load_model(hf), load_tokenizer(hf)
    state = rsparse_model(model)
    windows = calibration_windows(tok, cfg.calib_tokens, cfg.seq_len)
    calib = Calibration(model, windows, max_tokens=cfg.calib_tokens)
    texts = {"Python docs": token_windows(tok, corpus_text("evaluation"), 512, windows_n),
             "licenses": token_windows(tok, licenses_text(), 512, windows_n)}
    if "q/dense" not in results:
        results["q/dense"] = {k: perplexity(model, state, w, "strict", sparse=False, batch_size=4)
                              for k, w in texts.items()}
    for m, s in todo:
        t0 = time.time()
        row = {}
        if m == "default":  # the command's own build: the allocation ships only where it validates (rsparse_cli)
            plan, info, _ = build(model, tok, BuildConfig(sparsity=s, recipe="sparse-only"), progress=False,
                                  calib=calib)
            row["allocation"] = info["allocation"]
            if plan.budget is not None:
                row["budget"] = plan.budget.tolist()
        else:
            plan_for(m, model, state, windows, calib, s)
        for k, w in texts.items():
            state.track = True
            state.reset_counts()
            row[k] = perplexity(model, state, w, "strict", batch_size=4)
            row[f"read {k}"] = 1 - state.measured_sparsity()
            state.track = False
        results[f"q/{m}/{s:.2f}"] = row
        _log(f"quality {m} {s:.0%}: {row['Python docs']:.2f} / {row['licenses']:.2f} ({time.time() - t0:.0f} s)")
        yield


def companion_path(base: Path, method: str, s: float) -> Path:
    """In a folder of their own: bench/decode.py picks up every companion beside a base."""
    return base.parent / "pareto" / f"{base.name[:-len('.gguf')]}.s{round(s * 100)}-{method}.rsparse.gguf"


def companions(results: dict, bases: list[Path], hf: Path, sparsities, methods, threads: int) -> None:
    """The 1B-shaped model's companions for every method and sparsity, beside each base."""
    import numpy as np
    import torch

    from make_tiled_model import _placeholder_svd
    from rsparse_converter.calibrate import Calibration, calibration_windows, load_model, load_tokenizer
    from rsparse_converter.companion import write_companion
    from rsparse_converter.reference import rsparse_model

    todo = [(m, s) for s in sparsities for m in methods
            if not all(companion_path(b, m, s).is_file() for b in bases)]
    if not todo:
        return
    for b in bases:
        companion_path(b, methods[0], 0.5).parent.mkdir(exist_ok=True)
    torch.set_num_threads(threads)
    model, tok = load_model(hf), load_tokenizer(hf)
    state = rsparse_model(model)
    windows = calibration_windows(tok, 512, 256)
    calib = Calibration(model, windows, max_tokens=512)
    calib.svd = lambda bid, name: _placeholder_svd(calib.weights[(bid, name)])  # zeros: only their shapes cost
    for m, s in todo:
        t0 = time.time()
        budget = results[f"q/{m}/{s:.2f}"].get("budget")
        plan = plan_for(m, model, state, windows, calib, s, None if budget is None else np.array(budget))
        info = {"recipe": "uniform" if m == "paper" else "sparse-only", "pareto_method": m, "sparsity": s}
        prov = {"source": "calibration split", "sha256": "", "tokens": 512, "seq_len": 256}
        for b in bases:
            write_companion(companion_path(b, m, s), b, model, plan, info["recipe"], info, prov)
        _log(f"1B companions {m} {s:.0%}: {time.time() - t0:.0f} s")


def speed(results: dict, base: Path, sparsities, methods, repeats: int, threads: int) -> None:
    """bench/decode.py's measurement of llama.cpp dense, ours dense and every companion of `base`, round-robin."""
    from decode import run_worker

    from bench_kernels import memory_bandwidth

    key = f"s/{base.name}"
    configs = [("llama.cpp", "llamacpp", None), ("dense", "ours", None)] + \
        [(f"{m}/{s:.2f}", "ours", str(companion_path(base, m, s))) for s in sparsities for m in methods]
    if all(c[0] in results.get(key, {}) for c in configs):
        return
    todo, results[key] = configs, {}  # every configuration of a base in the same run: ratios from one run only
    args = argparse.Namespace(threads=threads, prompt_tokens=256, gen_tokens=128, long_prompt_tokens=0)
    rounds: dict[str, list[dict]] = {}
    bandwidth = []
    for r in range(repeats):
        bandwidth.append(memory_bandwidth(threads) / 1e9)
        for name, kind, comp in todo:
            rounds.setdefault(name, []).append(run_worker(kind, comp, args, str(base)))
        _log(f"{base.name}: round {r + 1}/{repeats} ({bandwidth[-1]:.1f} GB/s)")
    out = results.setdefault(key, {})
    for name, rs in rounds.items():
        out[name] = {"decode_tps": statistics.median(x["decode_tps"] for x in rs),
                     "read": statistics.median(x.get("read_fraction", 1.0) for x in rs)}
    out.setdefault("bandwidth_gbs", []).extend(round(b, 1) for b in bandwidth)


def write_outputs(results: dict, types, sparsities, methods, out_dir: Path) -> None:
    dense = results.get("q/dense")
    if not dense:
        return
    shipped = ", ".join(f"{k[len('q/default/'):]}: {v['allocation']} budgets" for k, v in sorted(results.items())
                        if k.startswith("q/default/") and "allocation" in v)
    lines = ["# Speed against quality: the 1B-shaped model's decode, SmolLM2's strict held-out perplexity", "",
             "Written by `python scripts/pareto.py` (rerun it to reproduce; it resumes from its state file). "
             "docs/pareto.png is the same numbers. Decode tok/s: 2 threads, 256-token prompt, 128 generated, "
             "median of the rounds (bench/decode.py's measurement); perplexity: strict, 8 windows x 512 tokens "
             "(Python docs: pydoc_data's evaluation split; licenses: Debian's GPL-3, GFDL-1.3, Apache-2.0).", "",
             f"Dense perplexity: Python docs {dense['Python docs']:.2f}, licenses {dense['licenses']:.2f}.", "",
             "Methods (scripts/pareto.py's docstring has the details): **paper** = rho 0.95 on every linear, SVD "
             "factors, thresholds from the dense model, every linear at the target (the paper without its rho "
             "search; on the 1B shape its factors are zeros of the right rank and type, which cost the same time); "
             "**teal** = sparse only, |x| scores, every linear at the target; **default** = sparse only as "
             "`rsparse-companion --recipe sparse-only` builds it, per-linear budgets where they validate "
             f"({shipped or '-'}). "
             "Speed: the 1B-shaped model (SmolLM2 tiled 3x, the same function) with each method's companion at "
             "that sparsity; quality: SmolLM2-135M with the same method. `read` is the fraction of block-linear "
             "weights read per token measured during the speed run's generation. Where default ships uniform "
             "budgets it is teal's plan, measured twice: the two rows' speeds show the run's noise.", "",
             "| base | method | sparsity | decode tok/s | vs llama.cpp | read | ppl Python docs | ppl licenses |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for t in types:
        sp = results.get(f"s/tiled-1b-{t}.gguf", {})
        ref = sp.get("llama.cpp", {}).get("decode_tps")
        for name in ("llama.cpp", "dense"):
            if name in sp:
                v = sp[name]["decode_tps"]
                who = "ours" if name == "dense" else name
                lines.append(f"| {t} | {who} dense | 0% | {v:.1f} | {v / ref:.2f} | 1 | {dense['Python docs']:.2f} | "
                             f"{dense['licenses']:.2f} |")
        for m in methods:
            for s in sparsities:
                q, v = results.get(f"q/{m}/{s:.2f}"), sp.get(f"{m}/{s:.2f}")
                if q and v:
                    lines.append(f"| {t} | {m} (`{FLAGS[m]}`) | {s:.0%} | {v['decode_tps']:.1f} | "
                                 f"{v['decode_tps'] / ref:.2f} | {v['read']:.3f} | {q['Python docs']:.2f} | "
                                 f"{q['licenses']:.2f} |")
        if sp.get("bandwidth_gbs"):
            lines.append(f"| {t} | memory bandwidth before the rounds (GB/s) | | "
                         f"{', '.join(map(str, sp['bandwidth_gbs']))} | | | | |")
    (out_dir / "PARETO.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib
    except ImportError:
        _log("matplotlib is not installed (pip install matplotlib): docs/PARETO.md written, no figure")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(types), figsize=(6.5 * len(types), 5), squeeze=False)
    colors = {"paper": "tab:red", "teal": "tab:gray", "default": "tab:blue"}
    for ax, t in zip(axes[0], types):
        sp = results.get(f"s/tiled-1b-{t}.gguf", {})
        for text, style in zip(TEXTS, ("-o", "--s")):
            for m in methods:
                pts = [(sp[f"{m}/{s:.2f}"]["decode_tps"], results[f"q/{m}/{s:.2f}"][text], s) for s in sparsities
                       if f"{m}/{s:.2f}" in sp and f"q/{m}/{s:.2f}" in results]
                if not pts:
                    continue
                ax.plot([p[0] for p in pts], [p[1] / dense[text] for p in pts], style, color=colors[m],
                        label=f"{m}, {text}", alpha=1.0 if text == TEXTS[0] else 0.6)
                if text == TEXTS[0]:
                    for x, y, s in pts:
                        ax.annotate(f"{s:.0%}", (x, y / dense[text]), textcoords="offset points",
                                    xytext=(4, 4), fontsize=7, color=colors[m])
        for name, color in (("llama.cpp", "black"), ("dense", "tab:green")):
            if name in sp:
                ax.axvline(sp[name]["decode_tps"], color=color, linestyle=":",
                           label=f"{'llama.cpp' if name == 'llama.cpp' else 'ours'} dense")
        ax.set_yscale("log")
        ax.set_xlabel("decode tokens/s, 1B-shaped model, 2 threads")
        ax.set_ylabel("strict held-out perplexity / dense perplexity")
        ax.set_title(f"{t.upper()}: lower right is better")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "pareto.png", dpi=110)
    _log(f"wrote {out_dir / 'pareto.png'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--types", default="q4_0,q8_0")
    p.add_argument("--sparsities", default="0.3,0.4,0.5,0.6,0.7")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--state", type=Path, help="state JSON (default: <cache>/pareto-state.json)")
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    args = p.parse_args(argv)
    from rsparse_converter.default_model import cache_dir

    types = args.types.split(",")
    sparsities = [float(s) for s in args.sparsities.split(",")]
    methods = args.methods.split(",")
    if unknown := set(methods) - set(METHODS):
        raise SystemExit(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    state_path = args.state or cache_dir() / "pareto-state.json"
    results = json.loads(state_path.read_text()) if state_path.is_file() else {}

    def save():
        tmp = state_path.with_name(state_path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1))
        os.replace(tmp, state_path)
        write_outputs(results, types, sparsities, methods, args.out)

    for _ in quality(results, sparsities, methods, args.windows, args.threads):
        save()
    save()
    tiled = cache_dir() / "tiled-1b"
    bases = [tiled / f"tiled-1b-{t}.gguf" for t in types]
    if not all(b.is_file() for b in bases):  # the tiled checkpoint and its bases, as make_tiled_model makes them
        import subprocess

        subprocess.run([sys.executable, str(ROOT / "bench" / "make_tiled_model.py"), "--outtypes", *types,
                        "--sparsity"], check=True)
    companions(results, bases, tiled / "hf", sparsities, methods, args.threads)
    for b in bases:
        speed(results, b, sparsities, methods, args.repeats, args.threads)
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
