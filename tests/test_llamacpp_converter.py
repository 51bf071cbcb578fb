"""GGUF files made entirely by llama.cpp's own tools: its converter script (convert_hf_to_gguf.py, from
llama-cpp-python's source distribution: tests/llamacpp_tools.py) on the default model's HF checkpoint, then its
quantizer. Our runtime reads them as it reads our own conversion: the same tokens, the same F32 logits bit for bit,
and a companion built from the file alone."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from rsparse_cpp.llama import Llama

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of the test extra")

pytestmark = [pytest.mark.llamacpp, pytest.mark.smollm, pytest.mark.slow]

TEXT = "Here is a short story about a robot who learns to paint: def f(x): return x**2  # naïve café 日本語"


@pytest.fixture(scope="module")
def llamacpp_f32(smollm_hf_dir, tmp_path_factory):
    import llamacpp_tools

    d = tmp_path_factory.mktemp("llamacpp_convert")
    try:
        tools = llamacpp_tools.converter(llama_cpp.__version__, d)
    except OSError as e:  # offline, and no RSPARSE_LLAMACPP_SDIST: nothing to run the converter from
        pytest.skip(f"llama-cpp-python's source distribution is not at hand: {e}")
    return llamacpp_tools.convert(tools, smollm_hf_dir, d / "smol-llamacpp-f32.gguf")


def test_llamacpp_converter_output_equals_ours(llamacpp_f32, smollm_gguf):
    theirs, ours = Llama(llamacpp_f32, n_ctx=128, n_threads=2), Llama(smollm_gguf("f32"), n_ctx=128, n_threads=2)
    tokens = theirs.tokenize(TEXT.encode(), add_bos=True)
    assert tokens == ours.tokenize(TEXT.encode(), add_bos=True)
    np.testing.assert_array_equal(theirs.model.forward(tokens, logits_all=True),
                                  ours.model.forward(tokens, logits_all=True))
    chat = [{"role": "user", "content": "Hi"}]
    assert (theirs.create_chat_completion(chat, max_tokens=8, temperature=0)["choices"][0]["message"] ==
            ours.create_chat_completion(chat, max_tokens=8, temperature=0)["choices"][0]["message"])


def test_llamacpp_converted_then_quantized_runs_with_a_companion(llamacpp_f32, tmp_path):
    """llama.cpp's converter, then its quantizer to Q4_K_M, then a companion from that file alone: decode runs
    sparse and its first greedy tokens are the dense ones'."""
    from rsparse_converter.rsparse_cli import main as companion_main

    path = tmp_path / "smol-q4_k_m.gguf"
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert llama_cpp.llama_model_quantize(str(llamacpp_f32).encode(), str(path).encode(), ctypes.byref(p)) == 0
    assert companion_main([str(path), "--sparsity", "0.5", "--recipe", "sparse-only", "--calib-tokens", "256",
                           "--no-progress"]) == 0
    sparse = Llama(path, n_ctx=128, n_threads=2)
    assert sparse.model.sparse_enabled
    dense = Llama(path, n_ctx=128, n_threads=2, sparse=False)
    out = [llm.create_completion(TEXT, max_tokens=4, temperature=0)["choices"][0]["text"] for llm in (sparse, dense)]
    assert out[0] and out[0].split()[0] == out[1].split()[0]
