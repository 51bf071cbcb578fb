"""The converter: stock llama.cpp metadata, Q/K permutation, errors, atomic output."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rsparse_converter import convert as convert_mod
from rsparse_converter.architectures import permute_qk
from rsparse_converter.checkpoint import CheckpointError
from rsparse_converter.convert import convert
from rsparse_cpp.constants import GGMLType, Key, Tensor
from rsparse_cpp.gguf_file import GGUFFile


def test_metadata_and_tensors(tiny_llama_dir, tmp_path):
    cfg = json.loads((tiny_llama_dir / "config.json").read_text())
    f = GGUFFile(convert(tiny_llama_dir, tmp_path / "m.gguf", "q8_0", progress=False))
    a = Key.arch
    assert f.fields[Key.ARCHITECTURE] == "llama"
    assert f.fields[a(Key.EMBEDDING_LENGTH)] == cfg["hidden_size"]
    assert f.fields[a(Key.HEAD_COUNT_KV)] == cfg["num_key_value_heads"]
    assert f.fields[a(Key.BLOCK_COUNT)] == cfg["num_hidden_layers"]
    assert f.fields[Key.FILE_TYPE] == 7  # LLAMA_FTYPE_MOSTLY_Q8_0
    assert (Tensor.OUTPUT in f.tensors) == (not cfg["tie_word_embeddings"])
    assert f.tensors[Tensor.blk(Tensor.ATTN_NORM, 0)].type == GGMLType.F32
    q = f.tensors[Tensor.blk(Tensor.ATTN_Q, 0)]
    assert q.type == (GGMLType.Q8_0 if cfg["hidden_size"] % 32 == 0 else GGMLType.F16)
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}  # transformers 4 / 5
    assert (Tensor.ROPE_FREQS in f.tensors) == (rope.get("rope_type") == "llama3")


def test_qk_permutation_is_llamacpp_interleave():
    """Row j of head h in GGUF is HF row (h, j%2 half, j//2): pairs (2i, 2i+1) come from rows i and i + d/2."""
    n_head, hd = 3, 8
    w = np.arange(n_head * hd, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    p = permute_qk(w, n_head)
    for h in range(n_head):
        for i in range(hd // 2):
            assert p[h * hd + 2 * i, 0] == h * hd + i
            assert p[h * hd + 2 * i + 1, 0] == h * hd + hd // 2 + i


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match="unsupported architecture.*GPT2LMHeadModel"):
        convert(tmp_path, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_missing_folder_and_bad_outtype(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        convert(tmp_path / "nothing", tmp_path / "out.gguf")
    with pytest.raises(ValueError, match="outtype 'q5_k'"):
        convert(tmp_path, tmp_path / "out.gguf", "q5_k")


def test_unexpected_tensor_is_an_error(tiny_llama_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    import shutil

    d = tmp_path / "ckpt"
    shutil.copytree(tiny_llama_dir, d)
    state = load_file(d / "model.safetensors")
    state["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(4)
    save_file(state, d / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected tensor 'model.layers.0.self_attn.q_proj.bias'"):
        convert(d, tmp_path / "out.gguf", progress=False)
    assert not (tmp_path / "out.gguf").exists()


def test_interrupted_conversion_leaves_nothing(tiny_llama_dir, tmp_path, monkeypatch):
    """A failure half-way through writing (here a KeyboardInterrupt, as from Ctrl-C) leaves neither the output
    nor its temporary file; an existing output from an earlier run is left untouched."""
    out = tmp_path / "m.gguf"
    out.write_bytes(b"previous good file")
    calls = {"n": 0}
    real = convert_mod.encode

    def flaky(arr, ttype):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(arr, ttype)

    monkeypatch.setattr(convert_mod, "encode", flaky)
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_llama_dir, out, "f16", progress=False)
    assert out.read_bytes() == b"previous good file"
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
