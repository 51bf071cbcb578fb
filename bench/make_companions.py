"""Companions for the decode benchmark: one calibration per sparsity, written for several bases at once.

A plan (tau, rho, factors) depends on the HF checkpoint, not on the base's weight type, so the same plan is written
beside every base given (F32, Q8_0, Q4_0 ...), each companion tied to its own base by fingerprint, as
<stem>.s<percent>[-<recipe>].rsparse.gguf: the names bench/decode.py looks for.

    python bench/make_companions.py HF_DIR smol-q8_0.gguf smol-q4_0.gguf --sparsity 0.3 0.5 0.7 --recipe sparse-only
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("hf_dir", type=Path)
    p.add_argument("bases", type=Path, nargs="+", help="base GGUFs converted from hf_dir")
    p.add_argument("--sparsity", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.6, 0.7])
    p.add_argument("--recipe", default="sparse-only", choices=("sparse-only", "uniform", "searched"))
    p.add_argument("--tag", action="store_true", help="add the recipe to the file name (-<recipe>)")
    p.add_argument("--calib-tokens", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import torch

    from rsparse_converter.calibrate import Calibration, calibration_windows, load_model, load_tokenizer
    from rsparse_converter.companion import write_companion
    from rsparse_converter.rsparse_cli import BuildConfig, build
    from rsparse_converter.reference import rsparse_model

    torch.set_num_threads(args.threads)
    model, tok = load_model(args.hf_dir), load_tokenizer(args.hf_dir)
    rsparse_model(model)
    cfg0 = BuildConfig(sparsity=0.5, recipe=args.recipe, calib_tokens=args.calib_tokens)
    calib = Calibration(model, calibration_windows(tok, cfg0.calib_tokens, cfg0.seq_len), max_tokens=cfg0.calib_tokens)
    for s in args.sparsity:
        t0 = time.time()
        cfg = BuildConfig(sparsity=s, recipe=args.recipe, calib_tokens=args.calib_tokens)
        plan, info, prov = build(model, tok, cfg, progress=False, calib=calib)
        for base in args.bases:
            stem = base.name[:-len(".gguf")] if base.name.endswith(".gguf") else base.name
            tag = f"-{args.recipe}" if args.tag else ""
            out = base.with_name(f"{stem}.s{round(s * 100)}{tag}.rsparse.gguf")
            write_companion(out, base, model, plan, args.recipe, info, prov, progress=False)
            print(out, flush=True)
        print(f"# sparsity {s}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
