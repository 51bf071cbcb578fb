"""A 1B-shaped model of another family (Qwen3 by default) with random weights, for decode speed beside llama.cpp.

Speed does not depend on what the weights say, only on their shapes and types, so a random checkpoint of the
family's own transformers class stands in for a real one (no download). The default shape is Qwen3-1.7B's block
(hidden 2048, 16 query and 8 KV heads of 128, intermediate 6144) with 16 blocks instead of 28, and Qwen's vocabulary
of 151936 rows, tied as in Qwen3's small models: 1.1 B parameters, of which the embedding is 311 M and, tied, is
also the head every decode step reads. The tokenizer is SmolLM2's (49152 tokens; the rest of the rows are padding
tokens), which is all a speed run needs.

    python bench/make_random_model.py                        # qwen3, Q8_0 and Q4_0, into <cache>/random-1b
    python bench/decode.py -m ~/.cache/rsparse_cpp/random-1b/qwen3-1b-q4_0.gguf --repeats 3

Each step is skipped when its output exists.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

FAMILIES = {  # family: (transformers config class, config overrides)
    "qwen3": ("Qwen3Config", dict(hidden_size=2048, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                                  intermediate_size=6144, num_hidden_layers=16, vocab_size=151936,
                                  tie_word_embeddings=True, rope_theta=1000000.0, max_position_embeddings=4096)),
    "qwen2": ("Qwen2Config", dict(hidden_size=1536, num_attention_heads=12, num_key_value_heads=2,
                                  intermediate_size=8960, num_hidden_layers=20, vocab_size=151936,
                                  tie_word_embeddings=True, rope_theta=1000000.0, max_position_embeddings=4096)),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def _log(msg: str) -> None:
    print(f"[make_random_model] {msg}", file=sys.stderr, flush=True)


def write_random_checkpoint(family: str, dst: Path, tokenizer_src: Path, seed: int = 0) -> Path:
    """A random checkpoint of `family` in dst (safetensors), with the tokenizer files of tokenizer_src."""
    import torch
    import transformers

    cls_name, overrides = FAMILIES[family]
    cfg = getattr(transformers, cls_name)(rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=None,
                                          **overrides)
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():  # a trained model's scale: activations stay finite through every block
        for name, p in model.named_parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.02)
            else:
                p.fill_(1.0) if "norm" in name else p.normal_(0.0, 0.02)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for f in TOKENIZER_FILES:
        if (tokenizer_src / f).is_file():
            shutil.copy(tokenizer_src / f, tmp / f)
    os.replace(tmp, dst)
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="qwen3", choices=sorted(FAMILIES))
    p.add_argument("--out", type=Path, help="output folder (default <cache>/random-1b)")
    p.add_argument("--outtypes", nargs="*", default=["q8_0", "q4_0"], choices=["f32", "f16", "q8_0", "q4_0"])
    p.add_argument("--tokenizer", type=Path, help="HF folder whose tokenizer to copy (default: SmolLM2's)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from make_tiled_model import convert_bases  # beside this file
    from rsparse_converter.default_model import cache_dir, ensure_hf_checkpoint

    out = args.out or cache_dir() / "random-1b"
    out.mkdir(parents=True, exist_ok=True)
    hf = out / f"{args.family}-hf"
    if not (hf / "config.json").is_file():
        t0 = time.time()
        write_random_checkpoint(args.family, hf, args.tokenizer or ensure_hf_checkpoint())
        _log(f"random {args.family} checkpoint written to {hf} in {time.time() - t0:.0f} s")
    convert_bases(hf, out, f"{args.family}-1b", args.outtypes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
