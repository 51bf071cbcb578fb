"""HF checkpoint folder -> stock GGUF that llama.cpp loads (its architecture keys and tensor names, Q/K rows as it
expects them, tokenizer)."""
from __future__ import annotations

import os
from pathlib import Path

import gguf

from rsparse_cpp.constants import GGMLType, Key

from .architectures import model_for
from .atomic import atomic_gguf
from .checkpoint import iter_tensors, load_config
from .quantize import FILE_TYPE, OUTTYPES, encode, tensor_type
from .tokenizer import write_tokenizer


def convert(hf_dir: str | os.PathLike, out_path: str | os.PathLike, outtype: str = "f16",
            progress: bool = True) -> Path:
    """Convert the checkpoint in `hf_dir` to `out_path` (written atomically). Returns the output path."""
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    if outtype.lower() not in OUTTYPES:
        raise ValueError(f"outtype {outtype!r} not supported; choose one of {sorted(OUTTYPES)}")
    otype = OUTTYPES[outtype.lower()]
    model = model_for(load_config(hf_dir))

    with atomic_gguf(out_path, model.gguf_arch, progress) as w:
        model.set_params(w)
        w.add_uint32(Key.FILE_TYPE, FILE_TYPE[otype])
        w.add_uint32(Key.QUANT_VERSION, gguf.GGML_QUANT_VERSION)
        write_tokenizer(w, hf_dir, model.n_vocab)
        for hf_name, data in iter_tensors(hf_dir):
            for name, arr in model.map_tensor(hf_name, data):
                ttype = tensor_type(arr, otype)
                w.add_tensor(name, encode(arr, ttype), raw_dtype=gguf.GGMLQuantizationType(int(ttype)))
        for name, arr in model.extra_tensors():
            w.add_tensor(name, encode(arr, GGMLType.F32))
        model.check_complete()
    return out_path
