"""rsparse: generate text from a GGUF model (flags named as llama.cpp's llama-cli names them)."""
from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rsparse", description=__doc__)
    p.add_argument("-m", "--model", required=True, help="base GGUF file")
    p.add_argument("-p", "--prompt", default="Once upon a time", help="prompt text (the user message with --chat)")
    p.add_argument("-n", "--n-predict", type=int, default=128, help="tokens to generate (<= 0: until the context is full)")
    p.add_argument("-c", "--ctx-size", type=int, default=2048, help="context size (0: the model's)")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads for the native kernels")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--temp", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("-s", "--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--stats", action="store_true", help="print timing (and R-Sparse kept fraction) to stderr")
    g = p.add_argument_group("R-Sparse")
    g.add_argument("--companion", help="companion GGUF (default: <model>.rsparse.gguf beside the model, if present)")
    g.add_argument("--dense", action="store_true", help="ignore the companion: decode densely")
    g.add_argument("--sparse-prefill", action="store_true", help="sparsify the prompt's tokens too")
    g.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N (an NVIDIA GPU, through torch)")
    g.add_argument("--perplexity", metavar="FILE",
                   help="instead of generating: teacher-forced perplexity of FILE in windows of --ctx-size tokens")
    g.add_argument("--ppl-protocol", choices=("strict", "paper"), default="strict",
                   help="strict: every token sparse; paper: only the last 10%% of each window (default strict)")
    g.add_argument("--ppl-windows", type=int, default=0, help="at most this many windows (0: all)")
    args = p.parse_args(argv)

    from .gguf_file import GGUFError
    from .llama import Llama
    from .model import NumericalError

    try:
        llm = Llama(args.model, n_ctx=args.ctx_size, n_threads=args.threads, seed=args.seed,
                    companion_path=args.companion, sparse=False if args.dense else None,
                    sparse_prefill=args.sparse_prefill, device=args.device)
        if args.perplexity:
            return _perplexity(llm, args)
        sampling = dict(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                        repeat_penalty=args.repeat_penalty, stop=args.stop, max_tokens=args.n_predict, stream=True)
        t0 = time.perf_counter()
        n = 0
        if args.chat:
            for chunk in llm.create_chat_completion([{"role": "user", "content": args.prompt}], **sampling):
                text = chunk["choices"][0]["delta"].get("content", "")
                n += bool(text)
                print(text, end="", flush=True)
        else:
            print(args.prompt, end="", flush=True)
            for chunk in llm.create_completion(args.prompt, **sampling):
                n += 1
                print(chunk["choices"][0]["text"], end="", flush=True)
        print()
        if args.stats:
            dt = time.perf_counter() - t0
            print(f"[rsparse] {n} chunks in {dt:.2f} s", file=sys.stderr)
            _print_sparse_stats(llm)
    # RuntimeError: no CUDA, NativeError; NumericalError (not a ValueError): NaN or inf in the logits
    except (GGUFError, ValueError, OSError, ImportError, RuntimeError, NumericalError) as e:
        print(f"rsparse: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0


def _print_sparse_stats(llm) -> None:
    sp = llm.model.sparse
    if sp is None or not llm.model.sparse_enabled:
        print("[rsparse] dense decode (no R-Sparse companion)", file=sys.stderr)
    elif sp.tokens:
        print(f"[rsparse] R-Sparse {sp.companion.path.name}: {sp.tokens} sparse tokens, "
              f"{sp.read_fraction():.3f} of the block-linear weights read per token "
              f"(mean kept channels {sp.kept_fraction().mean():.3f})", file=sys.stderr)


def _perplexity(llm, args) -> int:
    from pathlib import Path

    from .perplexity import perplexity

    text = Path(args.perplexity).read_text(encoding="utf-8")
    ids = llm.tokenize(text, add_bos=False)
    n = llm.n_ctx()
    windows = [ids[i:i + n] for i in range(0, len(ids) - n + 1, n)]
    if args.ppl_windows > 0:
        windows = windows[:args.ppl_windows]
    if not windows:
        raise ValueError(f"{args.perplexity}: {len(ids)} tokens, fewer than one window of --ctx-size {n}")
    mode = "dense" if not llm.model.sparse_enabled else args.ppl_protocol
    t0 = time.perf_counter()
    ppl = perplexity(llm.model, windows, args.ppl_protocol)
    print(f"perplexity ({mode}, {len(windows)} windows x {n} tokens): {ppl:.4f}")
    if args.stats:
        print(f"[rsparse] {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        _print_sparse_stats(llm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
