"""Measure SmolLM2-135M held-out perplexity for every recipe and sparsity, and write docs/RESULTS.md.

    python scripts/make_results.py                       # everything (about an hour on 2 cores)
    python scripts/make_results.py --sparsities 0.5 --methods improved --recipes searched

Each row is built in-process with the same functions the commands use (rsparse_converter.rsparse_cli.build), on
an F32 model, and evaluated on the held-out split of pydoc_data.topics under both protocols. Finished rows are kept
in a state JSON (outside the repository), so an interrupted run resumes where it stopped; the markdown is rewritten
from the state after every row. The command printed with each row reproduces it through the files: a companion
written next to an F32 base, then rsparse-perplexity on it.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
# (factors, tau, allocation); None: the command's default. "improved" is the defaults before per-linear budgets
# (its rows stay valid in the state file), "allocated" the command's defaults now.
METHODS = {"paper": ("svd", "dense", "uniform"), "improved": (None, None, "uniform"), "allocated": (None, None, None)}
METHOD_FLAGS = {"paper": " --paper-faithful", "improved": " --allocation uniform", "allocated": ""}


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS between rows: glibc keeps what torch frees, and this process is
    long-lived (one run grew to 24 GB before the calibration caches were bounded)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def row_key(sparsity: float, recipe: str, method: str) -> str:
    return f"{sparsity:.2f}/{recipe}/{method}"


def command(sparsity: float, recipe: str, method: str, windows: int = 8, seq_len: int = 512) -> str:
    flag = METHOD_FLAGS[method]
    return (f"rsparse-companion smollm-f32.gguf HF --sparsity {sparsity:g} --recipe {recipe}{flag} && "
            f"rsparse-perplexity HF --companion smollm-f32.rsparse.gguf --windows {windows} --seq-len {seq_len}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hf", type=Path, help="SmolLM2 HF folder (default: rsparse-default-model --hf)")
    p.add_argument("--sparsities", default="0,0.3,0.4,0.5,0.6,0.7")
    p.add_argument("--recipes", default="sparse-only,uniform,searched")
    p.add_argument("--methods", default="paper,improved,allocated")
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--eval-seq-len", type=int, default=512)
    p.add_argument("--state", type=Path, help="results JSON (default: <cache>/results-state.json)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "RESULTS.md")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    from rsparse_converter.calibrate import (Calibration, calibration_windows, corpus_provenance, corpus_text,
                                             load_model, load_tokenizer, token_windows)
    from rsparse_converter.default_model import cache_dir, ensure_hf_checkpoint
    from rsparse_converter.perplexity import perplexity
    from rsparse_converter.reference import rsparse_model
    from rsparse_converter.rsparse_cli import DEFAULT_FACTORS, DEFAULT_TAU, BuildConfig, build

    torch.set_num_threads(args.threads)
    hf = args.hf or ensure_hf_checkpoint()
    state_path = args.state or cache_dir() / "results-state.json"
    results = json.loads(state_path.read_text()) if state_path.is_file() else {}
    model, tok = load_model(hf), load_tokenizer(hf)
    st = rsparse_model(model)
    ev = token_windows(tok, corpus_text("evaluation"), args.eval_seq_len, args.eval_windows)
    base_cfg = BuildConfig(sparsity=0.0)
    cw = calibration_windows(tok, base_cfg.calib_tokens, base_cfg.seq_len)
    calib = None

    def save():
        state_path.write_text(json.dumps(results, indent=1))
        write_markdown(args.out, results, ev, hf, DEFAULT_FACTORS, DEFAULT_TAU, corpus_provenance("evaluation")[0],
                       args.threads)

    if "dense" not in results:
        results["dense"] = {p: perplexity(model, st, ev, p, sparse=False) for p in ("strict", "paper")}
        save()
    for s in map(float, args.sparsities.split(",")):
        for method in args.methods.split(","):
            for recipe in args.recipes.split(","):
                key = row_key(s, recipe, method)
                if key in results:
                    continue
                if calib is None:
                    calib = Calibration(model, cw, max_tokens=base_cfg.calib_tokens, progress=True)
                factors, tau, allocation = METHODS[method]
                cfg = BuildConfig(sparsity=s, recipe=recipe, factors=factors or DEFAULT_FACTORS,
                                  tau=tau or DEFAULT_TAU, allocation=allocation or BuildConfig.allocation,
                                  checkpoint=cache_dir() / f"results-search-{s:.2f}-{method}.json")
                t0 = time.time()
                plan, info, _ = build(model, tok, cfg, progress=True, calib=calib)
                row = {"sparsity": s, "recipe": recipe, "method": method, "factors": cfg.factors, "tau": cfg.tau,
                       "build_s": round(time.time() - t0, 1), "planned": info["planned_model_sparsity"],
                       "search": {k: v for k, v in info.get("search", {}).items() if k != "history"}}
                exact = (plan.tau < 0).all() and (plan.rank == 0).all()  # keeps every channel: the dense model
                row["exact"] = bool(exact)
                for protocol in ("strict", "paper"):
                    if exact:
                        row[protocol], row[f"measured_{protocol}"] = results["dense"][protocol], 0.0
                        continue
                    st.track = True
                    st.reset_counts()
                    row[protocol] = perplexity(model, st, ev, protocol)
                    row[f"measured_{protocol}"] = st.measured_sparsity()
                    st.track = False
                results[key] = row
                print(json.dumps({k: v for k, v in row.items() if k != "search"}), flush=True)
                save()
                del plan
                release_freed_memory()
    save()
    return 0


def write_markdown(out: Path, results: dict, ev, hf, default_factors, default_tau, ev_source,
                   threads: int) -> None:
    from rsparse_converter.rsparse_cli import BuildConfig

    dense = results.get("dense", {})
    rows = [r for k, r in results.items() if k != "dense"]
    rows.sort(key=lambda r: (list(METHODS).index(r["method"]), r["sparsity"],
                             ["sparse-only", "uniform", "searched"].index(r["recipe"])))
    lines = [
        "# Results: SmolLM2-135M-Instruct, held-out perplexity",
        "",
        "Written by `python scripts/make_results.py` (rerun it to reproduce; it resumes from its state file).",
        f"Model: F32 weights from `{Path(hf).name}` (rsparse-default-model --hf). Evaluation: {len(ev)} windows x "
        f"{ev.shape[1]} tokens of {ev_source}; calibration uses the disjoint calibration split.",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {__import__('torch').__version__}, "
        f"{threads} torch thread(s) (the build s column); Python {sys.version.split()[0]}.",
        "",
        "Commands: `HF` is the SmolLM2 folder, `smollm-f32.gguf` is `rsparse-convert HF --outtype f32 -o smollm-f32.gguf`.",
        "",
        "Protocols: **strict** = every token sparse, every prediction scored; **paper** = only the last 10% of each "
        "window sparse, those positions scored.",
        "`sparsity` is the model-level target (fraction of decoder-block linear weights not read per token); "
        "`measured` is the same fraction measured on the held-out tokens under the strict protocol (kept channels "
        "actually seen, plus the low-rank factors).",
        "",
        f"Dense: strict ppl **{dense.get('strict', float('nan')):.3f}**, paper-protocol ppl "
        f"**{dense.get('paper', float('nan')):.3f}**.",
        "",
        f"Methods: **paper** = the paper's method (top-r SVD of W, thresholds from the dense model, every linear at "
        f"the target); **improved** = `--factors {default_factors} --tau {default_tau} --allocation uniform`; "
        f"**allocated** = the command's defaults (the same with `--allocation {BuildConfig.allocation}`: per-linear "
        f"budgets, converter/allocate.py).",
        "",
        "| method | sparsity | recipe | strict ppl | vs dense | paper-protocol ppl | measured | build s | command |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        rel = r["strict"] / dense["strict"] - 1 if dense else float("nan")
        lines.append(f"| {r['method']} | {r['sparsity']:.0%} | {r['recipe']} | {r['strict']:.3f} | {rel:+.1%} | "
                     f"{r['paper']:.3f} | {r['measured_strict']:.3f} | {r['build_s']:.0f} | "
                     f"`{command(r['sparsity'], r['recipe'], r['method'], len(ev), ev.shape[1])}`"
                     + (" (keeps every channel: the dense model, not re-run)" if r.get("exact") else "") + " |")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n" + NOTES_MARK + "\n" + notes(out))
    os.replace(tmp, out)


NOTES_MARK = "<!-- notes below are kept when the table is rewritten -->"


def notes(out: Path) -> str:
    if out.is_file() and NOTES_MARK in out.read_text():
        return out.read_text().split(NOTES_MARK, 1)[1].lstrip("\n")
    return ""


if __name__ == "__main__":
    sys.exit(main())
