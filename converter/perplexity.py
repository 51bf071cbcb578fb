"""Teacher-forced perplexity of the reference model, dense or with R-Sparse semantics.

Protocols:
    strict  every token sparse; every prediction in each window is scored
    paper   the paper's protocol: in each window only the last 10% of the positions are sparse (a dense prefix
            that the sparse tokens attend to), and only the predictions made at those positions are scored
The dense number for a protocol scores the same positions with every linear dense.

`rsparse-perplexity HF_DIR [--companion FILE] [--protocol strict|paper|both] [--text FILE]` measures a companion
written by the converter (or the dense model without one) on a text file, by default the held-out split of the
calibration corpus.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from .reference import SparseState, paper_start

PROTOCOLS = ("strict", "paper")


def nll(model, state: SparseState, windows: torch.Tensor, protocol: str = "strict", sparse: bool = True,
        batch_size: int = 1, progress: bool = False) -> tuple[float, int]:
    """(sum of negative log-likelihoods, tokens scored) over `windows` (n, seq_len)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: choose one of {PROTOCOLS}")
    from tqdm import tqdm

    seq_len = windows.shape[1]
    first = paper_start(seq_len, state.paper_fraction) if protocol == "paper" else 0
    saved = state.mode
    state.mode = (protocol if sparse else "dense")
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for i in tqdm(range(0, len(windows), batch_size), desc=f"ppl {protocol}", disable=not progress,
                          leave=False):
                ids = windows[i:i + batch_size]
                hidden = model.model(ids).last_hidden_state[:, first:-1]  # positions whose next token is scored
                logits = model.lm_head(hidden).float()
                target = ids[:, first + 1:]
                total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                               reduction="sum"))
                count += target.numel()
    finally:
        state.mode = saved
    return total, count


def perplexity(model, state: SparseState, windows: torch.Tensor, protocol: str = "strict", sparse: bool = True,
               batch_size: int = 1, progress: bool = False) -> float:
    total, count = nll(model, state, windows, protocol, sparse, batch_size, progress)
    return math.exp(total / count)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rsparse-perplexity", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("hf_dir", type=Path, help="the HF checkpoint the base GGUF was converted from")
    p.add_argument("--companion", type=Path, help="companion GGUF (<model>.rsparse.gguf); without it: dense only")
    p.add_argument("--base", type=Path, help="base GGUF to check the companion's fingerprint against")
    p.add_argument("--protocol", default="both", choices=[*PROTOCOLS, "both"])
    p.add_argument("--text", type=Path, help="UTF-8 text file (default: the held-out split of pydoc_data.topics)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--windows", type=int, default=16, help="at most this many windows (default 16)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-dense", action="store_true", help="skip the dense reference numbers")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    from rsparse_cpp.companion import Companion
    from rsparse_cpp.gguf_file import GGUFError

    from .calibrate import corpus_text, load_model, load_tokenizer, token_windows
    from .reference import apply_companion, rsparse_model

    try:
        model, tok = load_model(args.hf_dir), load_tokenizer(args.hf_dir)
        text = args.text.read_text(encoding="utf-8") if args.text else corpus_text("evaluation")
        windows = token_windows(tok, text, args.seq_len, args.windows)
        state = apply_companion(model, Companion(args.companion, args.base)) if args.companion else rsparse_model(model)
    except (GGUFError, OSError, ValueError) as e:
        print(f"rsparse-perplexity: error: {e}", file=sys.stderr)
        return 1
    print(f"# {len(windows)} windows x {args.seq_len} tokens from {args.text or 'pydoc_data.topics (evaluation split)'}")
    for protocol in (PROTOCOLS if args.protocol == "both" else (args.protocol,)):
        if not args.no_dense:
            print(f"{protocol:7s} dense    ppl {perplexity(model, state, windows, protocol, sparse=False):.4f}")
        if args.companion:
            state.track = True
            state.reset_counts()
            ppl = perplexity(model, state, windows, protocol, progress=True)
            print(f"{protocol:7s} rsparse  ppl {ppl:.4f}  measured model-level sparsity "
                  f"{state.measured_sparsity():.4f}")
            state.track = False
    return 0


if __name__ == "__main__":
    sys.exit(main())
