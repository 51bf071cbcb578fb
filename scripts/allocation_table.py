"""Strict held-out perplexity of sparse-only companions with every linear at the target against per-linear budgets
(--allocation block / model), at several sparsities, on two held-out texts: the Python documentation's evaluation
split and English legal prose of another domain (Debian's common licenses). Prints a markdown table.

    python scripts/allocation_table.py HF_DIR [--sparsity 0.3,0.4,0.5,0.6,0.7] [--windows 8]

Each row is built as `rsparse-companion BASE HF_DIR --sparsity S --recipe sparse-only --allocation A` builds it
(sequential tau, data-aware factors; rho = 1 needs none) and scored as rsparse-perplexity scores it; the error
curves are measured once and shared by every sparsity.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

LICENSES = ("GPL-3", "GFDL-1.3", "Apache-2.0")


def licenses_text() -> str:
    d = Path("/usr/share/common-licenses")
    missing = [n for n in LICENSES if not (d / n).is_file()]
    if missing:
        raise SystemExit(f"allocation_table: {d} lacks {missing} (Debian's base-files ships them)")
    return "".join((d / n).read_text(encoding="utf-8") for n in LICENSES)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("hf_dir", type=Path)
    p.add_argument("--sparsity", default="0.3,0.4,0.5,0.6,0.7")
    p.add_argument("--allocations", default="uniform,block,model")
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--score", default="x", choices=("x", "wina"), help="the channel score at rho = 1 (--score)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from rsparse_converter.allocate import allocate, error_curves, linear_params
    from rsparse_converter.calibrate import (Calibration, apply_plan, calibration_windows, corpus_text, load_model,
                                            load_tokenizer, sequential_plan, token_windows)
    from rsparse_converter.perplexity import perplexity
    from rsparse_converter.reference import rsparse_model
    from rsparse_converter.rsparse_cli import BuildConfig

    cfg = BuildConfig(sparsity=0.5)
    model, tok = load_model(args.hf_dir), load_tokenizer(args.hf_dir)
    state = rsparse_model(model)
    state.score_all = score_all = args.score == "wina"
    windows = calibration_windows(tok, cfg.calib_tokens, cfg.seq_len)
    calib = Calibration(model, windows, max_tokens=cfg.calib_tokens)
    texts = {"Python docs": token_windows(tok, corpus_text("evaluation"), args.seq_len, args.windows),
             "licenses": token_windows(tok, licenses_text(), args.seq_len, args.windows)}
    dense = {k: perplexity(model, state, w, "strict", sparse=False, batch_size=4) for k, w in texts.items()}
    alloc_windows = windows[:max(1, -(-cfg.alloc_tokens // cfg.seq_len))]
    curves = {}
    for a in args.allocations.split(","):
        if a != "uniform":
            t0 = time.time()
            curves[a] = error_curves(model, state, calib, alloc_windows, fisher=a == "model", score_all=score_all)
            print(f"# error curves ({a}): {time.time() - t0:.0f} s", file=sys.stderr)
    params = linear_params(model)
    n_layer = len(params)
    print(f"{args.windows} windows x {args.seq_len} tokens, strict protocol; sparse-only (rho = 1), score {args.score}, "
          f"sequential tau; "
          f"allocation from {alloc_windows.numel()} calibration tokens")
    print("| sparsity | allocation | " + " | ".join(f"{k} (dense {v:.2f})" for k, v in dense.items()) + " |")
    print("| ---: | --- |" + " ---: |" * len(texts))
    for s in map(float, args.sparsity.split(",")):
        for a in args.allocations.split(","):
            budget = s if a == "uniform" else allocate(curves[a], params, s, a)
            plan = sequential_plan(model, state, windows, calib, budget, np.ones((n_layer, 7)), cfg.factors, target=s)
            apply_plan(model, plan)
            cells = []
            for k, w in texts.items():
                state.track = True
                state.reset_counts()
                ppl = perplexity(model, state, w, "strict", batch_size=4)
                state.track = False
                cells.append(f"{ppl:.2f} ({ppl / dense[k] - 1:+.1%}; read {1 - state.measured_sparsity():.3f})")
            print(f"| {s:.0%} | {a} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
