"""Stock llama.cpp (llama-cpp-python built from PyPI) loads our GGUF and agrees with our runtime."""
from __future__ import annotations

import numpy as np
import pytest

from llamacpp_tools import reference_llama
from rsparse_cpp.generate import generate
from rsparse_cpp.llama import Llama
from rsparse_cpp.sampler import SamplingParams

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of the test extra")

pytestmark = [pytest.mark.llamacpp, pytest.mark.smollm, pytest.mark.slow]

PROMPT = b"Here is a short story about a robot who learns to paint:"


def greedy_ours(path, prompt_tokens, n, sparse=None):
    llm = Llama(path, n_ctx=256, n_threads=2, sparse=sparse)
    return list(generate(llm.model, prompt_tokens, SamplingParams(temperature=0), np.random.default_rng(0), n))


def greedy_llamacpp(path, prompt_tokens, n):
    ref = reference_llama(path, n_ctx=256, n_threads=2, logits_all=False)
    out = []
    for t in ref.generate(prompt_tokens, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        out.append(int(t))
        if len(out) == n:
            break
    return out, ref


def test_llamacpp_same_greedy_tokens_f32(smollm_gguf):
    path = smollm_gguf("f32")
    ours_llm = Llama(path, n_ctx=256)
    prompt = ours_llm.tokenize(PROMPT, add_bos=True)
    ref_tokens, ref = greedy_llamacpp(path, prompt, 32)
    # llama.cpp's own tokenizer, reading our tokenizer metadata, agrees with ours
    assert ref.tokenize(PROMPT, add_bos=True) == prompt
    assert greedy_ours(path, prompt, 32) == ref_tokens


@pytest.mark.parametrize("outtype", ["f16", "q8_0", "q4_0"])
def test_llamacpp_loads_quantized(smollm_gguf, outtype):
    """llama.cpp quantizes activations for its quantized dot products, so exact token equality over many steps is
    not expected; the first greedy tokens must agree."""
    path = smollm_gguf(outtype)
    llm = Llama(path, n_ctx=256)
    prompt = llm.tokenize(PROMPT, add_bos=True)
    ref_tokens, _ = greedy_llamacpp(path, prompt, 4)
    assert greedy_ours(path, prompt, 4)[:2] == ref_tokens[:2]
