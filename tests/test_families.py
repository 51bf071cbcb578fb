"""Model families beyond Llama (rsparse_cpp/families.py): Qwen2 (q/k/v biases), Qwen3 (per-head q/k RMSNorm) and
SmolLM3 (no RoPE in every fourth block), from tiny random checkpoints built here with transformers' own classes.

For each: the converted F32 file gives transformers' logits within 1e-4 (prefill and token by token), llama.cpp
loads the same file and agrees, and a 50% companion's sparse decode equals the converter's reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_tiny_tokenizer, widen_random_init
from rsparse_converter.checkpoint import CheckpointError
from rsparse_converter.convert import convert
from rsparse_cpp.constants import Key, Tensor
from rsparse_cpp.families import FAMILIES
from rsparse_cpp.gguf_file import GGUFError, GGUFFile
from rsparse_cpp.model import Model

# name: (transformers config class, its overrides). Odd head counts, GQA, head_dim apart from hidden / heads,
# tied and untied embeddings; smollm3 with 5 blocks so that block 3 has no RoPE and block 4 has it again.
FAMILY_CONFIGS = {
    "qwen2_tied": ("Qwen2Config", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                       num_hidden_layers=2, intermediate_size=96, tie_word_embeddings=True)),
    "qwen2_odd": ("Qwen2Config", dict(hidden_size=60, num_attention_heads=5, num_key_value_heads=1,
                                      num_hidden_layers=2, intermediate_size=88, tie_word_embeddings=False)),
    "qwen3": ("Qwen3Config", dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=2, head_dim=16,
                                  num_hidden_layers=3, intermediate_size=80, tie_word_embeddings=True)),
    "qwen3_untied": ("Qwen3Config", dict(hidden_size=64, num_attention_heads=3, num_key_value_heads=3, head_dim=24,
                                         num_hidden_layers=2, intermediate_size=96, tie_word_embeddings=False)),
    "smollm3": ("SmolLM3Config", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                      num_hidden_layers=5, intermediate_size=96, tie_word_embeddings=True)),
}
GGUF_ARCH = {"qwen2_tied": "qwen2", "qwen2_odd": "qwen2", "qwen3": "qwen3", "qwen3_untied": "qwen3",
             "smollm3": "smollm3"}


def make_tiny_family(folder, name: str, seed: int = 0):
    import transformers

    cls_name, overrides = FAMILY_CONFIGS[name]
    make_tiny_tokenizer(folder)
    cfg = getattr(transformers, cls_name)(vocab_size=320, rms_norm_eps=1e-5, max_position_embeddings=256,
                                          bos_token_id=1, eos_token_id=2, pad_token_id=None, **overrides)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    widen_random_init(model)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=sorted(FAMILY_CONFIGS))
def family_model(request, tmp_path_factory):
    d = make_tiny_family(tmp_path_factory.mktemp(f"fam_{request.param}"), request.param)
    out = tmp_path_factory.mktemp(f"fam_{request.param}_out")
    return request.param, d, convert(d, out / f"{request.param}.gguf", "f32", progress=False)


def hf_logits(hf_dir, ids: list[int]) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def prompt(n: int = 24) -> list[int]:
    return torch.randint(3, 320, (n,), generator=torch.Generator().manual_seed(5)).tolist()


def test_file_is_what_llamacpp_expects(family_model):
    name, _, path = family_model
    f = GGUFFile(path)
    arch = GGUF_ARCH[name]
    assert f.get_str(Key.ARCHITECTURE) == arch
    assert f.require(Key.arch(Key.BLOCK_COUNT, arch), int) == FAMILY_CONFIGS[name][1]["num_hidden_layers"]
    fam = FAMILIES[arch]
    for t in (Tensor.ATTN_Q_BIAS, Tensor.ATTN_K_BIAS, Tensor.ATTN_V_BIAS):
        assert (Tensor.blk(t, 0) in f.tensors) == fam.qkv_bias
    for t in (Tensor.ATTN_Q_NORM, Tensor.ATTN_K_NORM):
        assert (Tensor.blk(t, 0) in f.tensors) == fam.qk_norm


@pytest.mark.parametrize("threads", [1, 3])
def test_logits_match_transformers(family_model, threads):
    _, d, path = family_model
    ids = prompt()
    want = hf_logits(d, ids)
    model = Model.load(path, n_ctx=64, n_threads=threads)
    assert rel_err(model.forward(ids, logits_all=True), want) < 1e-4  # prefill: the GEMM
    model.reset()
    steps = np.stack([model.forward(ids[i:i + 1]).copy() for i in range(len(ids))])  # decode, token by token
    assert rel_err(steps, want) < 1e-4


def test_llamacpp_loads_it_and_agrees(family_model):
    pytest.importorskip("llama_cpp")
    from llamacpp_tools import reference_llama

    _, d, path = family_model
    ids = prompt(16)
    ref = reference_llama(path, n_ctx=64, n_threads=2, logits_all=True)
    ref.eval(ids)
    theirs = np.array(ref.scores[:len(ids)], np.float64)
    want = hf_logits(d, ids)
    assert rel_err(theirs, want) < 1e-3  # llama.cpp's own float arithmetic: the file means the same to it
    assert (theirs.argmax(-1) == want.argmax(-1)).mean() >= 0.9


def test_companion_sparse_decode_matches_reference(family_model, tmp_path):
    from test_sparse_decode import assert_matches_reference, make_companion, reference

    from rsparse_cpp.companion import Companion

    name, d, base = family_model
    base = base.rename(tmp_path / base.name)  # a companion of its own beside it
    path = make_companion(d, base, "uniform")  # rho = 0.95: the low-rank term too
    model = Model.load(base, n_ctx=128, n_threads=2, sparse_prefill=True)
    assert model.sparse is not None
    ref, _ = reference(d, Companion(path, base), "strict")
    ids = torch.randint(3, 320, (1, 32), generator=torch.Generator().manual_seed(2))
    assert_matches_reference(model, ref, ids)
    assert 0.2 < 1 - model.sparse.read_fraction() < 0.8


def test_smollm3_with_another_nope_pattern_is_refused(tmp_path):
    d = make_tiny_family(tmp_path / "s3", "smollm3")
    import json

    cfg = json.loads((d / "config.json").read_text())
    cfg["no_rope_layers"] = [1, 0, 1, 1, 1]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="no_rope_layers"):
        convert(d, tmp_path / "x.gguf", "f32", progress=False)
    assert not (tmp_path / "x.gguf").exists()


def test_unknown_architecture_and_stray_family_tensor(tmp_path):
    """A file of an architecture outside families.py, or a Llama file carrying a Qwen2 bias (which a Llama block
    would silently leave out), is a clear error that names it."""
    from gguf_craft import STR, tiny_model

    other = tmp_path / "gemma.gguf"
    other.write_bytes(tiny_model(override={"general.architecture": (STR, "gemma")}).build())
    with pytest.raises(GGUFError, match="unsupported architecture 'gemma'"):
        Model.load(other, n_ctx=32)
    c = tiny_model()
    c.tensor("blk.0.attn_q.bias", np.zeros(32, np.float32))
    stray = tmp_path / "stray.gguf"
    stray.write_bytes(c.build())
    with pytest.raises(GGUFError, match="attn_q.bias.*not part of a 'llama' model"):
        Model.load(stray, n_ctx=32)


@pytest.mark.parametrize("name", ["qwen2_tied", "qwen3", "smollm3"])
def test_readme_commands(name, tmp_path, capsys):
    """rsparse-convert (with --sparsity: base and companion) then rsparse -m, as the README gives them; dense, the
    greedy tokens are llama.cpp's for the same file and prompt."""
    from rsparse_converter.cli import main as convert_main
    from rsparse_cpp.cli import main as rsparse_main
    from rsparse_cpp.llama import Llama

    d = make_tiny_family(tmp_path / "hf", name)
    out = tmp_path / f"{name}-q8_0.gguf"
    assert convert_main([str(d), "--outtype", "q8_0", "-o", str(out), "--no-progress", "--sparsity", "0.5",
                         "--recipe", "sparse-only", "--calib-tokens", "256", "--seq-len", "64"]) == 0
    assert out.with_suffix(".rsparse.gguf").is_file()
    capsys.readouterr()
    assert rsparse_main(["-m", str(out), "-p", "The quick", "-n", "8", "--temp", "0", "-c", "64"]) == 0
    assert capsys.readouterr().out.strip()
    llama_cpp = pytest.importorskip("llama_cpp")
    from test_llamacpp_interop import greedy_llamacpp, greedy_ours

    ids = Llama(str(out), n_ctx=64, sparse=False).tokenize(b"The quick")
    theirs, ref = greedy_llamacpp(out, ids, 8)  # generate(), token ids: create_completion's text is bytes of a
    assert ids == ref.tokenize(b"The quick")    # random model, which the two libraries cut differently
    assert greedy_ours(out, ids, 8, sparse=False) == theirs


@pytest.mark.parametrize("name", ["qwen2_odd", "qwen3", "smollm3"])
def test_companion_from_the_gguf_alone(name, tmp_path):
    """rsparse-companion BASE without the HF folder reads the base through transformers' GGUF loader: for Qwen2
    and Qwen3 (rows not permuted, biases, q/k norms) the F32 base gives the same thresholds and weights as the HF
    folder; transformers cannot read smollm3 files, which is a clear error naming the way out."""
    from rsparse_converter.rsparse_cli import main as companion_main
    from rsparse_cpp.companion import Companion

    d = make_tiny_family(tmp_path / "hf", name)
    base = convert(d, tmp_path / "t.gguf", "f32", progress=False)
    small = ["--calib-tokens", "128", "--seq-len", "32", "--recipe", "sparse-only", "--val-tokens", "0",
             "--no-progress"]
    from_hf, alone = tmp_path / "hf.rsparse.gguf", tmp_path / "alone.rsparse.gguf"
    assert companion_main([str(base), str(d), "--sparsity", "0.5", "--companion-out", str(from_hf), *small]) == 0
    if name == "smollm3":
        assert companion_main([str(base), "--sparsity", "0.5", "--companion-out", str(alone), *small]) == 1
        assert not alone.exists()
        return
    assert companion_main([str(base), "--sparsity", "0.5", "--companion-out", str(alone), *small]) == 0
    a, b = Companion(from_hf, base), Companion(alone, base)
    np.testing.assert_allclose(b.tau, a.tau, rtol=1e-5)
    for name_ in ("attn_q", "attn_k", "ffn_down"):
        np.testing.assert_array_equal(b.linear(0, name_).weight, a.linear(0, name_).weight)


@pytest.mark.parametrize("template", ["Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B", "HuggingFaceTB-SmolLM3-3B"])
def test_real_chat_templates_render_as_transformers_does(template):
    """The families' own chat templates (as llama.cpp's tests keep them, from llama-cpp-python's source
    distribution: tests/llamacpp_tools.py) through our renderer give transformers' text."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import llamacpp_tools
    from transformers.utils.chat_template_utils import render_jinja_template

    from rsparse_cpp.chat import render_chat

    try:
        text = llamacpp_tools.chat_template(llama_cpp.__version__, template)
    except OSError as e:
        pytest.skip(f"llama-cpp-python's source distribution: {e}")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2? ünïcødé 東京"}]
    for gen in (True, False):
        want = render_jinja_template(conversations=[msgs], chat_template=text, add_generation_prompt=gen)[0][0]
        assert render_chat(text, msgs, add_generation_prompt=gen) == want
