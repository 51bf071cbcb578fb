"""rsparse-inspect: print a companion's per-layer rho, rank, kept fraction and sizes, and draw them as a PNG (with
the allocation: the fraction of each linear's weights read per token, kept columns plus factors)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from rsparse_cpp.constants import LINEARS


def summary(c) -> tuple[list[str], float]:
    """Lines of the per-layer table, and the planned model-level sparsity (from keep and rank)."""
    lines = [f"{'blk':>3} {'linear':12} {'out':>5} {'in':>5} {'rho':>5} {'keep':>5} {'kept':>6} {'rank':>5} "
             f"{'tau':>10} {'weight':>10} {'factors':>9}  type"]
    read = total = 0
    for b in range(c.n_layer):
        for name in LINEARS:
            lin = c.linear(b, name)
            fbytes = 0 if lin.rank == 0 else lin.u.nbytes + lin.vs.nbytes
            lines.append(f"{b:>3} {name:12} {lin.n_out:>5} {lin.n_in:>5} {lin.rho:5.2f} {lin.keep:>5} "
                         f"{lin.keep / lin.n_in:6.1%} {lin.rank:>5} {lin.tau:10.4g} {lin.weight.nbytes:>10} "
                         f"{fbytes:>9}  {lin.weight_type.name}")
            read += lin.keep * lin.n_out + lin.rank * (lin.n_in + lin.n_out)
            total += lin.n_in * lin.n_out
    return lines, 1.0 - read / total


def draw(c, png: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    layers = np.arange(c.n_layer)
    fig, axes = plt.subplots(4, 1, figsize=(9, 12), sharex=True)
    for i, name in enumerate(LINEARS):
        lins = [c.linear(b, name) for b in layers]
        kept = [lin.keep / lin.n_in for lin in lins]
        read = [(lin.keep * lin.n_out + lin.rank * (lin.n_in + lin.n_out)) / (lin.n_in * lin.n_out) for lin in lins]
        axes[0].plot(layers, c.rho[:, i], marker="o", label=name)
        axes[1].plot(layers, c.rank[:, i], marker="o", label=name)
        axes[2].plot(layers, kept, marker="o", label=name)
        axes[3].plot(layers, read, marker="o", label=name)
    axes[3].axhline(1.0 - c.sparsity, color="k", lw=0.8, ls="--")  # the model-level budget
    for ax, label in zip(axes, ("rho", "rank", "kept fraction (nominal)", "weights read (allocation)")):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(ncol=4, fontsize=8)
    axes[3].set_xlabel("block")
    fig.suptitle(f"{c.path.name}: {c.recipe}, sparsity {c.sparsity:.0%}, allocation "
                 f"{c.recipe_info.get('allocation', 'uniform')}, factors {c.factors}, tau {c.tau_calibration}")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rsparse-inspect", description=__doc__)
    p.add_argument("companion", type=Path, help="<model>.rsparse.gguf")
    p.add_argument("--png", type=Path, help="plot path (default: <companion>.png)")
    p.add_argument("--no-png", action="store_true")
    args = p.parse_args(argv)
    from rsparse_cpp.companion import Companion
    from rsparse_cpp.gguf_file import GGUFError

    try:
        c = Companion(args.companion)
    except GGUFError as e:
        print(f"rsparse-inspect: error: {e}", file=sys.stderr)
        return 1
    lines, planned = summary(c)
    info = c.recipe_info
    print(f"{c.path}: recipe {c.recipe}, target sparsity {c.sparsity:.3f}, planned {planned:.4f}, "
          f"allocation {info.get('allocation', 'uniform')}, factors {c.factors}, tau {c.tau_calibration}")
    print(f"base fingerprint {c.base_fingerprint}  ({c.file.get('rsparse.base.file')})")
    print(f"calibration: {c.file.get('rsparse.calibration.source')}, {c.file.get('rsparse.calibration.tokens')} "
          f"tokens; search: {info.get('search', {}).get('fitness', '-')}")
    print("\n".join(lines))
    if not args.no_png:
        png = args.png or args.companion.with_name(args.companion.name + ".png")
        if draw(c, png):
            print(f"plot: {png}")
        else:
            print("no plot: matplotlib is not installed (pip install matplotlib to get the PNG)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
