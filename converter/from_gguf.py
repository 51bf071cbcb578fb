"""A base GGUF as the converter's torch model and tokenizer, for a companion made without the HF checkpoint.

transformers reads the GGUF (`from_pretrained(folder, gguf_file=...)`): it dequantizes every tensor to float32,
undoes llama.cpp's Q/K row permutation and rebuilds the tokenizer from the tokenizer.ggml.* metadata, so the
calibration, the thresholds and the low-rank factors see exactly the weights the runtime reads from the base. What
a quantized base has already lost is lost to the companion too: an HF checkpoint, when there is one, gives the
companion's sparse-path copy the full-precision weights.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path


def load_from_gguf(base: str | Path, progress: bool = True):
    """(model, tokenizer) of the base GGUF, dequantized to float32, in eval mode. progress=False silences
    transformers' own progress bars (reading and dequantizing the tensors)."""
    base = Path(base)
    if not base.is_file():
        raise FileNotFoundError(f"{base}: no such base GGUF")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local file: nothing to fetch
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # transformers' GGUF reader draws its bar with tqdm directly, which no flag of transformers reaches: its
    # stderr is held back instead (and shown if reading fails)
    quiet = contextlib.redirect_stderr(io.StringIO()) if not progress else contextlib.nullcontext()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        with quiet as held:
            tok = AutoTokenizer.from_pretrained(str(base.parent), gguf_file=base.name)
            config = AutoConfig.from_pretrained(str(base.parent), gguf_file=base.name)
            head_dim = _head_dim(base)
            if head_dim is not None and hasattr(config, "head_dim"):
                config.head_dim = head_dim  # transformers' reader drops key_length (Qwen3 defaults it to 128)
            model = AutoModelForCausalLM.from_pretrained(str(base.parent), gguf_file=base.name, config=config,
                                                         dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as e:  # transformers' words for what it cannot read
        if held is not None:
            sys.stderr.write(held.getvalue())
        raise ValueError(f"{base}: cannot read it as a model without its HF checkpoint ({e}); pass the HF folder "
                         f"it was converted from") from None
    return model.eval(), tok


def _head_dim(base: Path) -> int | None:
    """The base's attention.key_length, where it has one (head_dim apart from hidden / heads)."""
    from rsparse_cpp.config import Config
    from rsparse_cpp.gguf_file import GGUFFile

    f = GGUFFile(base)
    cfg = Config.from_gguf(f)
    return cfg.head_dim if cfg.head_dim != cfg.n_embd // cfg.n_head else None
