"""Files made by llama.cpp's own quantizer, in the presets people download: our dense runtime loads them and agrees
with llama.cpp on the same file.

The files come from `llama_cpp.llama_model_quantize` (llama-cpp-python's binding of llama.cpp's quantizer) applied to
our F32 conversion. llama.cpp's converter script (convert_hf_to_gguf.py) is not used: llama-cpp-python vendors it in
its source distribution only, and its installed package does not ship it. A preset is a mix of types: where a row is
not a whole number of 256-element super-blocks, llama.cpp falls back to the older 32-element types (SmolLM2's
576-wide rows: a "Q4_K_M" file is mostly Q5_0).

Closeness to the F32 model is measured as the RMS difference of the logits over a held-out text, teacher-forced,
for our prefill (a float GEMM of the dequantized weights), our decode (one token at a time: int8 activations per
block of 32) and llama.cpp (its own int8 activations: per 32 or, for the K types, per 256).
"""
from __future__ import annotations

import collections
import ctypes

import numpy as np
import pytest

from llamacpp_tools import reference_llama
from rsparse_cpp.constants import GGMLType
from rsparse_cpp.gguf_file import GGUFFile
from rsparse_cpp.llama import Llama

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of the test extra")

pytestmark = [pytest.mark.llamacpp]

# preset -> the types llama.cpp writes for it (block linears, with their fallbacks) besides F32 and Q8_0
PRESETS = {"Q4_K_M": {"Q4_K", "Q6_K"}, "Q5_K_M": {"Q5_K", "Q6_K"}, "Q6_K": {"Q6_K"}, "BF16": {"BF16"},
           "Q4_1": {"Q4_1"}, "Q5_0": {"Q5_0"}, "Q5_1": {"Q5_1"}}


def quantize(src, out, preset: str):
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{preset}")
    p.nthread = 2
    assert llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(p)) == 0
    return out


def type_counts(path) -> dict[str, int]:
    return dict(collections.Counter(t.type.name for t in GGUFFile(path).tensors.values()))


def ours(path, tokens, decode: bool) -> np.ndarray:
    model = Llama(path, n_ctx=len(tokens) + 1, n_threads=2).model
    if not decode:
        return model.forward(tokens, logits_all=True).copy()
    return np.stack([model.forward([t]).copy() for t in tokens])


def llamacpp(path, tokens) -> np.ndarray:
    ref = reference_llama(path, n_ctx=len(tokens) + 1, n_batch=len(tokens), n_threads=2, logits_all=True)
    ref.eval(tokens)
    return np.array(ref.scores[:len(tokens)], np.float32)


def rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2)))


# ---- a tiny random model whose rows are whole super-blocks: every K type in play, fast ---------------------------
@pytest.fixture(scope="module")
def tiny_f32(tmp_path_factory):
    from conftest import make_tiny_llama
    from rsparse_converter.convert import convert

    d = tmp_path_factory.mktemp("tiny_k")
    make_tiny_llama(d, "k", seed=3, config=dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                                                  num_hidden_layers=2, intermediate_size=512,
                                                  tie_word_embeddings=False))
    return convert(d, d / "tiny-f32.gguf", "f32", progress=False)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_tiny_quantized_by_llamacpp_runs_and_agrees(tiny_f32, tmp_path, preset):
    path = quantize(tiny_f32, tmp_path / f"tiny-{preset}.gguf", preset)
    types = type_counts(path)
    assert PRESETS[preset] & set(types), types  # the preset's own types are there to test
    tokens = list(np.random.default_rng(0).integers(3, 300, 48))
    f32 = ours(tiny_f32, tokens, decode=False)
    ref = llamacpp(path, tokens)
    for decode in (False, True):
        got = ours(path, tokens, decode)
        # as close to F32 as llama.cpp is, with room for the different activation rounding of decode
        # as close to F32 as llama.cpp is (measured: 0.80-1.004x of its RMS), with room for the different
        # activation rounding of decode; nearer to llama.cpp than either is to F32 (0.09-0.62x); the argmax agrees
        # at 0.85-1.0 of the positions (a random model's logits have near-ties)
        assert rms(got, f32) <= (1.3 if decode else 1.05) * rms(ref, f32) + 1e-4, (preset, decode, types)
        assert rms(got, ref) <= rms(ref, f32) + 1e-4, (preset, decode, types)
        assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= 0.75, (preset, decode, types)


def test_unsupported_type_names_tensor_and_supported_set(tiny_f32, tmp_path):
    """IQ types need an importance matrix to quantize, so a file of one is forged: Q4_0's bytes relabelled IQ4_NL
    (type 20, same 18-byte block) in one tensor's info."""
    path = quantize(tiny_f32, tmp_path / "tiny-q4_0.gguf", "Q4_0")
    f = GGUFFile(path)
    info = f.tensors["blk.0.attn_k.weight"]
    assert info.type == GGMLType.Q4_0
    raw = bytearray(path.read_bytes())
    name = info.name.encode()
    at = raw.index(len(name).to_bytes(8, "little") + name) + 8 + len(name)
    n_dims = int.from_bytes(raw[at:at + 4], "little")
    type_at = at + 4 + 8 * n_dims
    assert int.from_bytes(raw[type_at:type_at + 4], "little") == int(GGMLType.Q4_0)
    raw[type_at:type_at + 4] = (20).to_bytes(4, "little")
    bad = tmp_path / "tiny-iq4_nl.gguf"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"blk\.0\.attn_k\.weight\.type: unsupported tensor type 20 \(supported: "
                                         r"F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, BF16\)"):
        Llama(bad, n_ctx=16)


def test_nan_scale_in_a_k_block_is_a_clear_error(tiny_f32, tmp_path):
    """A NaN scale in one super-block makes that row NaN: the forward pass says so, it does not return garbage."""
    from rsparse_cpp.model import NumericalError

    path = quantize(tiny_f32, tmp_path / "tiny-q4_k.gguf", "Q4_K_M")
    f = GGUFFile(path)
    name = next(n for n, t in f.tensors.items() if t.type == GGMLType.Q4_K and n.startswith("blk.0."))
    raw = bytearray(path.read_bytes())
    raw[f.tensors[name].offset:f.tensors[name].offset + 2] = np.float16(np.nan).tobytes()  # d of the first block
    del f
    path.write_bytes(bytes(raw))
    llm = Llama(path, n_ctx=16)
    with pytest.raises(NumericalError, match="NaN or inf"):
        llm.model.forward([5, 6, 7])
    llm.model.reset()
    with pytest.raises(NumericalError, match="NaN or inf"):
        llm.model.forward([5])


# ---- SmolLM2 in each preset: llama.cpp's numbers on the default model --------------------------------------------
@pytest.mark.smollm
@pytest.mark.slow
@pytest.mark.parametrize("preset", ["Q4_K_M", "Q5_K_M", "Q6_K", "BF16"])
def test_smollm_quantized_by_llamacpp(smollm_gguf, tmp_path, preset):
    """Measured on this text (64 tokens of the evaluation split), RMS to F32 ours prefill / decode / llama.cpp:
    see docs/SPEED.md; top-1 agreement with llama.cpp 0.89-1.0 across presets and texts (the Q8_0 file, where the
    arithmetic is the same, 0.91-0.98: SmolLM2's near-ties)."""
    from rsparse_converter.calibrate import corpus_text

    f32_path = smollm_gguf("f32")
    path = quantize(f32_path, tmp_path / f"smol-{preset}.gguf", preset)
    llm = Llama(f32_path, n_ctx=80)
    tokens = llm.tokenize(corpus_text("evaluation")[:2000].encode(), add_bos=True)[:64]
    f32 = ours(f32_path, tokens, decode=False)
    ref = llamacpp(path, tokens)
    prefill, decode = ours(path, tokens, False), ours(path, tokens, True)
    assert rms(prefill, f32) <= rms(ref, f32)
    assert rms(decode, f32) <= 1.3 * rms(ref, f32)
    assert np.mean(prefill.argmax(-1) == ref.argmax(-1)) >= 0.85
    assert np.mean(decode.argmax(-1) == ref.argmax(-1)) >= 0.85
