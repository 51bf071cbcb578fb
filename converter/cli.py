"""rsparse-convert: HF checkpoint folder -> GGUF (and, with --sparsity, its R-Sparse companion beside it)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoint import CheckpointError
from .quantize import OUTTYPES
from .rsparse_cli import add_rsparse_args


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rsparse-convert", description=__doc__)
    p.add_argument("hf_dir", type=Path, help="Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer)")
    p.add_argument("--outfile", "-o", type=Path, help="output GGUF (default: <hf_dir>/<name>-<outtype>.gguf)")
    p.add_argument("--outtype", default="f16", choices=sorted(OUTTYPES), help="weight type (default f16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_rsparse_args(p, required=False)
    args = p.parse_args(argv)
    if args.sparsity is not None and not 0.0 <= args.sparsity < 1.0:
        p.error(f"--sparsity {args.sparsity}: must be in [0, 1)")

    from .convert import convert  # imports torch: keep `--help` fast

    out = args.outfile or args.hf_dir / f"{args.hf_dir.name}-{args.outtype}.gguf"
    try:
        if args.sparsity is not None and args.calib_file is not None:  # refused before the conversion, not after
            from .calib_text import read_calib_file
            from .calibrate import load_tokenizer

            read_calib_file(args.calib_file, load_tokenizer(args.hf_dir))
        convert(args.hf_dir, out, args.outtype, progress=not args.no_progress)
        if args.sparsity is not None:
            from .rsparse_cli import make_companion

            companion = make_companion(out, args.hf_dir, args, progress=not args.no_progress)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"rsparse-convert: error: {e}", file=sys.stderr)
        return 1
    print(out)
    if args.sparsity is not None:
        print(companion)
    return 0


if __name__ == "__main__":
    sys.exit(main())
