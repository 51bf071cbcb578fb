"""A 1B-parameter Llama with real-looking weights for the decode benchmark: SmolLM2's layers tiled k times.

SmolLM2-135M is so small that per-token overheads hide the matrix work that dominates on real 1B-8B models. Tiling
keeps its trained weights (their activation statistics, which R-Sparse feeds on) at a 1B shape, and computes exactly
the same function when the hidden state is replicated k times, [h, h, ..., h]:

    linear W (out, in)   -> (k out, k in), every block W / k      (sum of k copies of (W / k) h = W h, replicated)
    embedding E (V, d)   -> [E, E, ..., E] along d                (the replicated input; not divided)
    RMSNorm g (d,)       -> [g, ..., g]                           (rms([h, ..., h]) = rms(h))
    lm_head (V, d)       -> [E / k, ..., E / k], untied           (sum over copies = E h)
    heads n_head, n_kv   -> k n_head, k n_kv; head_dim unchanged

q = [q, ..., q] puts copy c of head i at head c n_head + i, and likewise copy c of kv head j at c n_kv + j. GQA maps
q head H to kv head H // n_rep with n_rep unchanged: (c n_head + i) // n_rep = c n_kv + i // n_rep, copy c of the
kv head that head i used. With k = 3 on SmolLM2: hidden 1728, 27 heads, 9 kv heads, intermediate 4608, 30 layers,
1.13 B parameters (embedding and lm_head included).

Then the tiled checkpoint is converted (Q8_0 and Q4_0 bases) and calibrated once, with one Calibration shared by
every sparsity, into companions named <base stem>.s<percent>-<recipe>.rsparse.gguf beside each base (the names
bench/decode.py looks for). Everything lands in <cache>/tiled-1b (RSPARSE_CACHE, else ~/.cache/rsparse_cpp); each
step is skipped when its output exists.

    python bench/make_tiled_model.py --check                 # tile SmolLM2, verify logits, convert, calibrate
    python bench/make_tiled_model.py --src HF_DIR --k 2 --out DIR --outtypes q8_0 --sparsity 0.5 --recipe uniform
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "tokenizer.model", "vocab.json", "merges.txt")


def _log(msg: str) -> None:
    print(f"[make_tiled_model] {msg}", file=sys.stderr, flush=True)


# ---- tiling ---------------------------------------------------------------------------------------------------
def tile_config(config: dict, k: int) -> dict:
    """The HF config.json of the k-times tiled model."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or config["num_attention_heads"]
    tiled = dict(config)
    tiled.update(hidden_size=k * config["hidden_size"], intermediate_size=k * config["intermediate_size"],
                 num_attention_heads=k * config["num_attention_heads"], num_key_value_heads=k * n_kv,
                 head_dim=head_dim, tie_word_embeddings=False)
    tiled["_model_name_or_path"] = f"{config.get('_model_name_or_path', 'model')} tiled x{k}"
    return tiled


def tile_tensor(name: str, t, k: int):
    """One HF tensor of the source model -> the tiled model's tensor of the same name (float32)."""
    t = t.float()
    if name.endswith("_proj.weight"):  # every linear of a block: (out, in) -> (k out, k in) of W / k blocks
        return (t / k).repeat(k, k)
    if name.endswith("_proj.bias"):  # outputs are replicated, so is a bias (not divided)
        return t.repeat(k)
    if name.endswith("embed_tokens.weight"):  # (V, d) -> (V, k d)
        return t.repeat(1, k)
    if name.endswith("lm_head.weight"):  # (V, d) -> (V, k d): the k copies of h sum back to E h
        return (t / k).repeat(1, k)
    if name.endswith("norm.weight"):
        return t.repeat(k)
    raise ValueError(f"{name}: no tiling rule for this tensor (shape {tuple(t.shape)})")


def tile_state(src: Path, k: int) -> dict:
    """{name: tiled float32 tensor} for every tensor of the checkpoint in `src`; lm_head made untied."""
    from safetensors import safe_open

    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{src}: no *.safetensors")
    state = {}
    embed = None
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                t = f.get_tensor(name)
                if name.endswith("embed_tokens.weight"):
                    embed = t
                state[name] = tile_tensor(name, t, k)
    if "lm_head.weight" not in state:  # tied source: the untied head is the tiled embedding / k
        if embed is None:
            raise ValueError(f"{src}: neither lm_head.weight nor model.embed_tokens.weight")
        state["lm_head.weight"] = tile_tensor("lm_head.weight", embed, k)
    return state


def write_tiled_checkpoint(src: Path, dst: Path, k: int) -> Path:
    """Tile the HF checkpoint `src` into the HF checkpoint folder `dst` (safetensors shards, tokenizer copied)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = tile_config(json.loads((src / "config.json").read_text()), k)
    tmp = dst.with_name(dst.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        hf_config = AutoConfig.from_pretrained(str(tmp))
        with torch.device("meta"):  # no random init of 1B parameters: the tiled tensors are assigned below
            model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(tile_state(src, k), strict=False, assign=True)
        missing = [m for m in missing if "rotary_emb" not in m]
        if missing or unexpected:
            raise ValueError(f"tiled state does not match the model: missing {missing}, unexpected {unexpected}")
        model.save_pretrained(tmp, max_shard_size="1GB")
        del model
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def check_same_function(src: Path, tiled: Path, text: str = "The capital of France is Paris, and") -> float:
    """Max |logits difference| between the source and the tiled model on `text` (float32), relative to the
    logits' max |value|. Loads the two models one after the other."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(src))(text, return_tensors="pt")["input_ids"]
    logits = []
    for path in (src, tiled):
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        with torch.no_grad():
            logits.append(model(ids).logits[0].double())
        del model
    diff = float((logits[0] - logits[1]).abs().max())
    scale = float(logits[0].abs().max())
    _log(f"check on {ids.shape[1]} tokens: max |logits diff| {diff:.3g} (max |logit| {scale:.3g}, "
         f"relative {diff / scale:.3g}); same argmax: {bool((logits[0].argmax(-1) == logits[1].argmax(-1)).all())}")
    return diff / scale


# ---- conversion and companions --------------------------------------------------------------------------------
def convert_bases(hf: Path, out: Path, stem: str, outtypes: list[str]) -> list[Path]:
    """out/<stem>-<type>.gguf for each type, converted from hf unless there already; printed as they come."""
    from rsparse_converter.convert import convert

    bases = []
    for outtype in outtypes:
        base = out / f"{stem}-{outtype}.gguf"
        if not base.is_file():
            t0 = time.time()
            convert(hf, base, outtype, progress=False)
            _log(f"{base.name}: {base.stat().st_size / 1e6:.0f} MB, converted in {time.time() - t0:.0f} s")
        bases.append(base)
        print(base, flush=True)
    return bases


def companion_name(base: Path, sparsity: float, recipe: str) -> Path:
    """<stem>.s<percent>-<recipe>.rsparse.gguf: the names bench/decode.py parses (sparsity and recipe)."""
    stem = base.name[:-len(".gguf")] if base.name.endswith(".gguf") else base.name
    return base.with_name(f"{stem}.s{round(sparsity * 100)}-{recipe}.rsparse.gguf")


def _placeholder_svd(w):
    """Zero 'SVD' factors of the right shapes. sequential_plan seeds every linear with the top-r SVD of W, which
    the data-aware fit replaces before the linear first runs; on the tiled model those float64 SVDs would cost
    ~20 min on 2 cores and ~4 GB of cache for factors never used."""
    import torch

    out, in_ = w.shape
    m = min(out, in_)
    return (torch.zeros(out, m, dtype=torch.float64), torch.zeros(m, dtype=torch.float64),
            torch.zeros(m, in_, dtype=torch.float64))


def make_companions(hf_dir: Path, bases: list[Path], sparsities: list[float], recipe: str, calib_tokens: int,
                    tau: str, factors: str, threads: int) -> list[Path]:
    """One Calibration of the tiled model, one plan per sparsity, written beside every base."""
    import torch

    from rsparse_converter.calibrate import Calibration, calibration_windows, load_model, load_tokenizer
    from rsparse_converter.companion import write_companion
    from rsparse_converter.reference import rsparse_model
    from rsparse_converter.rsparse_cli import BuildConfig, build

    todo = [s for s in sparsities if not all(companion_name(b, s, recipe).is_file() for b in bases)]
    written = [companion_name(b, s, recipe) for s in sparsities if s not in todo for b in bases]
    if not todo:
        return written
    torch.set_num_threads(threads)
    model, tok = load_model(hf_dir), load_tokenizer(hf_dir)
    rsparse_model(model)
    t0 = time.time()
    cfg0 = BuildConfig(sparsity=todo[0], recipe=recipe, factors=factors, tau=tau, calib_tokens=calib_tokens)
    calib = Calibration(model, calibration_windows(tok, cfg0.calib_tokens, cfg0.seq_len),
                        max_tokens=cfg0.calib_tokens, progress=False)
    _log(f"calibration activations ({calib_tokens} tokens): {time.time() - t0:.0f} s")
    if tau == "sequential" and factors == "data-aware":
        calib.svd = lambda bid, name: _placeholder_svd(calib.weights[(bid, name)])
    for s in todo:
        t0 = time.time()
        cfg = BuildConfig(sparsity=s, recipe=recipe, factors=factors, tau=tau, calib_tokens=calib_tokens)
        plan, info, provenance = build(model, tok, cfg, progress=False, calib=calib)
        t1 = time.time()
        for base in bases:
            out = companion_name(base, s, recipe)
            write_companion(out, base, model, plan, recipe, info, provenance, progress=False)
            written.append(out)
            print(out, flush=True)
        _log(f"sparsity {s}: plan {t1 - t0:.0f} s, {len(bases)} companions written in {time.time() - t1:.0f} s")
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", type=Path, help="source HF checkpoint (default: the default model's, SmolLM2-135M)")
    p.add_argument("--k", type=int, default=3, help="tiling factor (default 3: a 1.1B model from SmolLM2-135M)")
    p.add_argument("--out", type=Path, help="output folder (default <cache>/tiled-1b)")
    p.add_argument("--name", default="tiled-1b", help="file name stem of the GGUFs")
    p.add_argument("--check", action="store_true", help="verify that the tiled model's logits equal the source's")
    p.add_argument("--outtypes", nargs="*", default=["q8_0", "q4_0"], choices=["f32", "f16", "q8_0", "q4_0"])
    p.add_argument("--sparsity", type=float, nargs="*", default=[0.3, 0.4, 0.5, 0.6, 0.7])
    # sparse-only (rho = 1, sequential tau) by default: about 1.5 min per sparsity for both bases on 2 cores before
    # per-linear budgets; with the allocation and its validation (converter/allocate.py) 12 min for 0.5 alone (an
    # Intel Xeon VM, 2026-12-08: calibration 9 s, the rest the allocation's error curves). The
    # uniform recipe's data-aware factors (a float64 eigh and 1728-4608-wide products per linear) did not finish one
    # sparsity in 20 min on 2 shared cores (about 30 CPU-min estimated); the searched recipe would take hours
    p.add_argument("--recipe", default="sparse-only", choices=["sparse-only", "uniform", "searched"])
    p.add_argument("--tau", default="sequential", choices=["dense", "sequential"])
    p.add_argument("--factors", default="data-aware", choices=["svd", "data-aware"])
    p.add_argument("--calib-tokens", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from rsparse_converter.default_model import cache_dir, ensure_hf_checkpoint

    src = args.src or ensure_hf_checkpoint()
    out = args.out or cache_dir() / "tiled-1b"
    out.mkdir(parents=True, exist_ok=True)
    hf = out / "hf"
    t0 = time.time()
    if not (hf / "config.json").is_file():
        write_tiled_checkpoint(src, hf, args.k)
        _log(f"tiled checkpoint x{args.k} written to {hf} in {time.time() - t0:.0f} s")
    if args.check:
        t0 = time.time()
        rel = check_same_function(src, hf)
        _log(f"check: {time.time() - t0:.0f} s")
        if not rel < 1e-4:
            _log(f"FAILED: relative logits difference {rel:.3g} >= 1e-4")
            return 1

    bases = convert_bases(hf, out, args.name, args.outtypes)
    if bases and args.sparsity:
        make_companions(hf, bases, args.sparsity, args.recipe, args.calib_tokens, args.tau, args.factors,
                        args.threads)
    for path in sorted(out.glob("*.gguf")):
        _log(f"{path} ({path.stat().st_size / 2**30:.2f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
