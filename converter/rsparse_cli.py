"""From a model and a sparsity target to a calibrated Plan, and the `rsparse-companion` command.

`build` runs the whole offline pipeline: calibration activations -> rho per linear (fixed recipe or evolutionary
search) -> tau and low-rank factors -> Plan. `rsparse-convert ... --sparsity S` (cli.py) writes the base GGUF and
its companion in one run; `rsparse-companion BASE.gguf HF_DIR --sparsity S` adds a companion to an existing base.

Method flags (the defaults are what measured lowest held-out strict perplexity on SmolLM2-135M, docs/RESULTS.md):
    --factors svd          the paper's top-r SVD of W
    --factors data-aware   rank-r factors fitted to the inputs the low-rank path actually sees
    --tau dense            the paper's thresholds, from the dense model's activations
    --tau sequential       thresholds calibrated block by block in the already-sparsified model
    --paper-faithful       = --factors svd --tau dense
    --allocation uniform   every linear skips the same fraction (the paper's budget)
    --allocation block     per-linear fractions within each block, from each linear's error on the block output
    --allocation model     the same across blocks too, errors weighted by the loss's gradient (allocate.py)
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rsparse_cpp.constants import LINEARS, GGMLType

from .search import RHO_GRID, SearchConfig

RECIPES = ("sparse-only", "uniform", "searched")
ALLOCATIONS = ("uniform", "block", "model")  # per-linear budgets (converter/allocate.py)
UNALLOCATED = "sparse-only, every linear at the target"  # the searched recipe's finalist without the allocation
UNIFORM_RHO = 0.95
SCORE_CHOICES = ("x", "wina")  # the score where rho = 1: |x|, or |x| * colnorm (WINA)
DEFAULT_FACTORS = "data-aware"
DEFAULT_TAU = "sequential"


@dataclass
class BuildConfig:
    sparsity: float
    recipe: str = "searched"
    factors: str = DEFAULT_FACTORS
    tau: str = DEFAULT_TAU
    calib_tokens: int = 2048  # tokens for tau and factors
    fit_tokens: int = 1024  # the first calibration tokens, for the search's fitness (calibration perplexity)
    val_tokens: int = 4096  # other calibration tokens, to pick the searched recipe among its finalists
    seq_len: int = 256
    search: SearchConfig = field(default_factory=SearchConfig)
    checkpoint: Path | None = None  # the search's best-so-far JSON
    calib_file: Path | None = None  # the user's calibration text (converter/calib_text.py); None: Python's docs
    score: str = "x"  # at rho == 1: "x" (|x|, the paper's and TEAL's) or "wina" (|x| * colnorm); rho < 1: always the latter
    allocation: str = "model"  # per-linear budgets: uniform, block or model (converter/allocate.py)
    alloc_tokens: int = 256  # the first calibration tokens, for the allocation's error curves


def build(model, tokenizer, cfg: BuildConfig, progress: bool = True, calib=None):
    """-> (plan, recipe_info dict, calibration provenance dict). Leaves the plan applied to `model`.
    `calib`: a Calibration of this model on the same windows, to share between several builds."""
    from .budget import model_sparsity, shapes_from_config
    from .calibrate import (Calibration, apply_plan, calibration_windows, corpus_provenance, dense_plan,
                            sequential_plan, tau_only_calibrator, validation_windows)
    from .perplexity import nll
    from .reference import rsparse_model
    from .search import Search

    if cfg.recipe not in RECIPES:
        raise ValueError(f"recipe {cfg.recipe!r}: choose one of {RECIPES}")
    t0 = time.time()
    state = rsparse_model(model)
    n_layer = len(model.model.layers)
    if cfg.calib_file is not None:
        from .calib_text import calib_file_provenance, read_calib_file

        text = read_calib_file(cfg.calib_file, tokenizer)
        source, sha = calib_file_provenance(cfg.calib_file, text)
    else:
        text = None
        source, sha = corpus_provenance("calibration")
    windows = calibration_windows(tokenizer, cfg.calib_tokens, cfg.seq_len, text)
    if calib is None:
        calib = Calibration(model, windows, max_tokens=cfg.calib_tokens, progress=progress)
    if cfg.tau not in ("dense", "sequential"):
        raise ValueError(f"tau calibration {cfg.tau!r}: choose dense or sequential")
    if cfg.score not in SCORE_CHOICES:
        raise ValueError(f"score {cfg.score!r}: choose one of {SCORE_CHOICES}")
    state.score_all = score_all = cfg.score == "wina"
    info: dict = {"recipe": cfg.recipe, "sparsity": cfg.sparsity, "factors": cfg.factors, "tau_calibration": cfg.tau,
                  "score": cfg.score, "allocation": cfg.allocation}
    from .allocate import LEVELS

    if cfg.allocation not in ALLOCATIONS:
        raise ValueError(f"allocation {cfg.allocation!r}: choose one of {ALLOCATIONS}")
    budget = cfg.sparsity  # every linear's sparsity: the target, or the allocation's per-linear values
    if cfg.allocation != "uniform" and cfg.sparsity > LEVELS[-1]:
        info["allocation"] = "uniform"  # no linear may drop more than LEVELS[-1]: nothing left to move
    elif cfg.allocation != "uniform" and cfg.sparsity > 0.0:
        from .allocate import allocate_budget

        alloc_windows = windows[:max(1, math.ceil(cfg.alloc_tokens / cfg.seq_len))]
        budget = allocate_budget(model, state, calib, alloc_windows, cfg.sparsity, cfg.allocation, score_all,
                                 progress)
        info["allocated_sparsity"] = np.round(budget, 4).tolist()
        info["alloc_tokens"] = alloc_windows.numel()

    def make_plan(rho: np.ndarray, sparsity=None):
        """tau and factors for this rho (and per-linear sparsity, default the allocation's): what the companion
        ships."""
        sparsity = budget if sparsity is None else sparsity
        if cfg.tau == "sequential":
            return sequential_plan(model, state, windows, calib, sparsity, rho, cfg.factors, target=cfg.sparsity)
        return dense_plan(calib, sparsity, rho, cfg.factors, score_all, target=cfg.sparsity)

    val_windows = None

    def validation_nll(p) -> float:
        """Mean strict NLL of plan p (applied) on calibration tokens past the calibration windows, never the
        evaluation split: how every choice fitted to calibration text is checked."""
        nonlocal val_windows
        if val_windows is None:
            val_windows = validation_windows(tokenizer, cfg.calib_tokens, cfg.val_tokens, cfg.seq_len, text)
        apply_plan(model, p)
        total, count = nll(model, state, val_windows, "strict", batch_size=4)
        return total / count

    plan = None

    if cfg.recipe == "sparse-only" or (cfg.recipe == "searched" and cfg.sparsity == 0.0):
        # at sparsity 0, rho = 1 keeps every channel: exact, nothing to search
        rho = np.ones((n_layer, len(LINEARS)))
    elif cfg.recipe == "uniform":
        rho = np.full((n_layer, len(LINEARS)), UNIFORM_RHO)
    else:
        n_fit = max(1, math.ceil(cfg.fit_tokens / cfg.seq_len))
        fit_windows = windows[:n_fit]

        def fitness(rho: np.ndarray) -> float:
            apply_plan(model, dense_plan(calib, budget, rho, cfg.factors, score_all, target=cfg.sparsity))
            if cfg.tau == "sequential":
                # thresholds re-calibrated in the sparse model on the scored windows themselves, in the same
                # forward pass: the fitness sees the sequential thresholds at the cost of a dense-tau evaluation
                for m in state.modules:
                    m.tau = None
                state.calibrate = tau_only_calibrator(budget, n_layer)
            try:
                total, count = nll(model, state, fit_windows, "strict", batch_size=len(fit_windows))
            finally:
                state.calibrate = None
            return total / count

        context = {"sparsity": cfg.sparsity, "factors": cfg.factors, "fit_tokens": cfg.fit_tokens,
                   "calib_tokens": cfg.calib_tokens, "seq_len": cfg.seq_len, "tau": cfg.tau,
                   "model": str(getattr(model.config, "_name_or_path", "")), "n_layer": n_layer,
                   "allocation": cfg.allocation}
        search = Search(fitness, n_layer, len(LINEARS), cfg.search, cfg.checkpoint, context, progress)
        _, best = search.run()
        from .search import expand

        # The fitness is a cheap stand-in on ~1k tokens, and it overfits (an earlier version's calibration gain
        # at 50% became a held-out loss; at 40% a validation score with the fitness's thresholds ranked uniform
        # above sparse-only, and held-out text did not). So the final recipe is picked among the 3 best genomes and the
        # two fixed recipes by the plan that would ship -- tau and factors built exactly as below -- scored on
        # other calibration tokens (never the evaluation split). Sparse-only is always a finalist: the searched
        # recipe falls back to it when the search gain does not carry; with an allocation, sparse-only with every
        # linear at the target is one too, so the allocation never ships where it loses on validation.
        candidates = {"sparse-only": np.ones((n_layer, len(LINEARS))),
                      "uniform": np.full((n_layer, len(LINEARS)), UNIFORM_RHO)}
        unallocated = UNALLOCATED if isinstance(budget, np.ndarray) else None
        for i, (g, _) in enumerate(search.ranked(3)):
            rho_i = expand(g, cfg.search.grid, n_layer)
            if not any(np.array_equal(rho_i, r) for r in candidates.values()):
                candidates[f"searched#{i}"] = rho_i
        validation, plans = {}, {}
        if cfg.val_tokens > 0:
            for name, r in [*candidates.items(), *([(unallocated, candidates["sparse-only"])] if unallocated else [])]:
                plans[name] = make_plan(r, cfg.sparsity if name == unallocated else None)
                validation[name] = validation_nll(plans[name])
        chosen = pick_finalist(validation, unallocated) if validation else next(
            (k for k in candidates if k.startswith("searched#")), "sparse-only")
        rho = candidates["sparse-only" if chosen == unallocated else chosen]
        plan = plans.get(chosen)
        if chosen == unallocated:
            budget = cfg.sparsity
            info["allocation"] = "uniform"
            info.pop("allocated_sparsity", None)
        info["search"] = {**json_safe(asdict(cfg.search)), "fitness": best, "initial_best": search.initial_best,
                          "evaluations": len(search.evaluated), "history": search.history,
                          "fit_tokens": cfg.fit_tokens, "val_tokens": cfg.val_tokens, "validation": validation,
                          "chosen": chosen}
    if plan is None and isinstance(budget, np.ndarray) and cfg.val_tokens > 0:
        # The allocation is fitted to calibration text as well: it ships only where it beats every linear at the
        # target on other calibration tokens by VALIDATION_MARGIN, the searched recipe's rule (on SmolLM2 at 30%
        # it won the Python docs by 0.3% and lost the license texts by 0.6%).
        scored = {"allocated": make_plan(rho), "uniform": make_plan(rho, cfg.sparsity)}
        val = info["allocation_validation"] = {name: validation_nll(p) for name, p in scored.items()}
        if beats(val["allocated"], val["uniform"]):
            plan = scored["allocated"]
        else:
            plan, budget = scored["uniform"], cfg.sparsity
            info["allocation"] = "uniform"
            info.pop("allocated_sparsity", None)
    if plan is None:
        plan = make_plan(rho)
    apply_plan(model, plan)
    info["planned_model_sparsity"] = model_sparsity(shapes_from_config(model.config), n_layer, budget, rho)
    info["rho_grid"] = list(cfg.search.grid)
    info["seconds"] = round(time.time() - t0, 1)
    provenance = {"source": source, "sha256": sha, "tokens": calib.n_tokens, "seq_len": cfg.seq_len}
    info["calibration"] = provenance
    return plan, info, provenance


# Mean validation NLL (nats per token) by which a finalist must beat sparse-only to replace it. Measured on SmolLM2
# at 40% with per-linear budgets: rho = 0.95 beat sparse-only on validation by 0.002 and lost on both held-out
# texts (19.85 against 19.62 on the Python docs, 27.93 against 27.25 on the licenses): differences that small are
# the validation text's own, and the simpler recipe generalises better.
VALIDATION_MARGIN = 0.005


def pick_finalist(validation: dict, unallocated: str | None) -> str:
    """The searched recipe's pick: the validation best, unless it beats the better of sparse-only and (with an
    allocation) sparse-only at uniform budgets, the starting points, by less than VALIDATION_MARGIN; then that one.
    So the pick never scores worse than either starting point on validation."""
    start = min((k for k in ("sparse-only", unallocated) if k in validation), key=validation.get)
    best = min(validation, key=validation.get)
    return best if beats(validation[best], validation[start]) else start


def beats(challenger: float, incumbent: float) -> bool:
    """Whether a validation NLL replaces the simpler choice's: lower by more than VALIDATION_MARGIN."""
    return incumbent - challenger > VALIDATION_MARGIN


def json_safe(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def add_rsparse_args(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group("R-Sparse companion")
    g.add_argument("--sparsity", type=float, required=required,
                   help="model-level target: fraction of block-linear weights not read per token, e.g. 0.5"
                        + ("" if required else " (writes <out>.rsparse.gguf beside the base)"))
    g.add_argument("--recipe", default="searched", choices=RECIPES,
                   help="rho per linear: sparse-only (rho=1, TEAL-like), uniform (rho=0.95) or searched (default)")
    g.add_argument("--factors", default=DEFAULT_FACTORS, choices=("svd", "data-aware"))
    g.add_argument("--tau", default=DEFAULT_TAU, choices=("dense", "sequential"), help="threshold calibration")
    g.add_argument("--paper-faithful", action="store_true",
                   help="the paper's method: --factors svd --tau dense --score x")
    g.add_argument("--score", default=BuildConfig.score, choices=SCORE_CHOICES,
                   help="channel score where rho = 1: x (|x|, the paper's and TEAL's) or wina (|x| * column norm)")
    g.add_argument("--allocation", default=BuildConfig.allocation, choices=ALLOCATIONS,
                   help="sparsity per linear: uniform (every linear the target), block (per linear within each "
                        "block, from its error on the block's output: TEAL's greedy) or model (across blocks too, "
                        "errors weighted by the loss's gradient); the model-level budget is met either way")
    g.add_argument("--calib-tokens", type=int, default=2048)
    g.add_argument("--calib-file", type=Path,
                   help="calibration text: plain UTF-8, or .jsonl chat conversations ({\"messages\": [...]} a line) "
                        "rendered with the model's chat template (default: Python's own documentation, offline)")
    g.add_argument("--fit-tokens", type=int, default=1024, help="calibration tokens scored by the search")
    g.add_argument("--val-tokens", type=int, default=BuildConfig.val_tokens,
                   help="other calibration tokens on which the search's finalists are compared (0: take its best)")
    g.add_argument("--seq-len", type=int, default=256, help="calibration window length")
    g.add_argument("--population", type=int, default=SearchConfig.population)
    g.add_argument("--generations", type=int, default=SearchConfig.generations)
    g.add_argument("--groups", type=int, default=SearchConfig.groups, help="groups of blocks sharing a rho")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--checkpoint", type=Path, help="search checkpoint JSON (default: <companion>.search.json)")
    g.add_argument("--threads", type=int, default=2, help="torch threads")
    g.add_argument("--companion-out", type=Path, help="companion path (default: <base>.rsparse.gguf)")
    g.add_argument("--companion-type", choices=("f32", "f16", "q8_0", "q4_0"),
                   help="type of the companion's copy of the block weights (default: the base's where the sparse "
                        "kernels read it, else Q8_0 for 5- and 6-bit types, Q4_0 for Q4_1 and Q4_K, F16 for BF16: "
                        "rsparse_cpp.constants.companion_type). A Q4_0 base "
                        "without its HF checkpoint loses much more to a Q4_0 companion (requantized along the other "
                        "axis) than to q8_0, which reads more bytes a kept row (docs/COMPANION.md)")


def build_config(args, companion_out: Path) -> BuildConfig:
    factors, tau = ("svd", "dense") if args.paper_faithful else (args.factors, args.tau)
    return BuildConfig(
        sparsity=args.sparsity, recipe=args.recipe, factors=factors, tau=tau, calib_tokens=args.calib_tokens,
        fit_tokens=args.fit_tokens, val_tokens=args.val_tokens, seq_len=args.seq_len,
        search=SearchConfig(population=args.population, generations=args.generations, groups=args.groups,
                            seed=args.seed, grid=RHO_GRID),
        checkpoint=args.checkpoint or companion_out.with_name(companion_out.name + ".search.json"),
        calib_file=getattr(args, "calib_file", None),
        score="x" if args.paper_faithful else args.score,
        allocation="uniform" if args.paper_faithful else args.allocation)


def base_is_q4_0(base: Path) -> bool:
    """Whether the base's block linears are Q4_0 (its first block's attn_q)."""
    from rsparse_cpp.gguf_file import GGUFFile

    t = GGUFFile(base).tensors.get("blk.0.attn_q.weight")
    return t is not None and t.type == GGMLType.Q4_0


def make_companion(base: Path, hf_dir: Path | None, args, progress: bool = True) -> Path:
    """Build and write the companion of `base` from the HF checkpoint it was converted from, or, with hf_dir None,
    from the base's own dequantized weights and tokenizer (converter/from_gguf.py)."""
    import torch

    from rsparse_cpp.companion import companion_path

    from .calibrate import load_model, load_tokenizer
    from .companion import write_companion

    torch.set_num_threads(args.threads)
    out = args.companion_out or companion_path(base)
    cfg = build_config(args, out)
    if hf_dir is None:
        from .from_gguf import load_from_gguf

        model, tok = load_from_gguf(base, progress=progress)
        if getattr(args, "companion_type", None) is None and base_is_q4_0(base):
            print("rsparse-companion: note: a Q4_0 base without its HF checkpoint gives a Q4_0 companion rounded "
                  "twice (SmolLM2: +24% strict perplexity); --companion-type q8_0 avoids that at the cost of reading "
                  "more bytes a kept row (docs/COMPANION.md)", file=sys.stderr)
    else:
        tok = load_tokenizer(hf_dir)
    if cfg.calib_file is not None:  # a bad file is refused before the model loads
        from .calib_text import read_calib_file

        read_calib_file(cfg.calib_file, tok)
    if hf_dir is not None:
        model = load_model(hf_dir)
    plan, info, provenance = build(model, tok, cfg, progress)
    ctype = getattr(args, "companion_type", None)
    write_companion(out, base, model, plan, cfg.recipe, info, provenance, progress=progress,
                    weight_type=None if ctype is None else GGMLType[ctype.upper()])
    return out


def main(argv: list[str] | None = None) -> int:
    """rsparse-companion: add an R-Sparse companion to an existing base GGUF, from the HF checkpoint it was
    converted from, or from the base alone (its weights dequantized)."""
    p = argparse.ArgumentParser(prog="rsparse-companion", description=main.__doc__)
    p.add_argument("base", type=Path, help="base GGUF (llama architecture; any type the runtime loads, K-quants "
                   "included)")
    p.add_argument("hf_dir", type=Path, nargs="?",
                   help="the HF checkpoint the base was converted from (optional: without it, the base's own "
                        "dequantized weights and tokenizer)")
    p.add_argument("--no-progress", action="store_true")
    add_rsparse_args(p, required=True)
    args = p.parse_args(argv)
    from rsparse_cpp.gguf_file import GGUFError

    from .checkpoint import CheckpointError

    if not 0.0 <= args.sparsity < 1.0:
        p.error(f"--sparsity {args.sparsity}: must be in [0, 1)")
    try:
        out = make_companion(args.base, args.hf_dir, args, progress=not args.no_progress)
    except (GGUFError, CheckpointError, ValueError, OSError) as e:
        print(f"rsparse-companion: error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
