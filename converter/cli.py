"""rsparse-convert: HF checkpoint folder -> GGUF."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .checkpoint import CheckpointError
from .quantize import OUTTYPES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rsparse-convert", description=__doc__)
    p.add_argument("hf_dir", type=Path, help="Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer)")
    p.add_argument("--outfile", "-o", type=Path, help="output GGUF (default: <hf_dir>/<name>-<outtype>.gguf)")
    p.add_argument("--outtype", default="f16", choices=sorted(OUTTYPES), help="weight type (default f16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)

    from .convert import convert  # imports torch: keep `--help` fast

    out = args.outfile or args.hf_dir / f"{args.hf_dir.name}-{args.outtype}.gguf"
    try:
        convert(args.hf_dir, out, args.outtype, progress=not args.no_progress)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"rsparse-convert: error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
