"""Bad user input meets a clear error (or, for text, llama.cpp's behaviour), never a traceback from deep inside:
special-looking text, empty and oversized prompts, invalid sampling values, NaN in the activations, missing files.
(An unsupported converter architecture is tested in test_convert.py, a missing checkpoint in test_cli.py.)"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import make_tiny_llama
from rsparse_converter.convert import convert
from rsparse_cpp.cli import main as rsparse_main
from rsparse_cpp.gguf_file import GGUFError, GGUFFile
from rsparse_cpp.llama import Llama
from rsparse_cpp.model import ContextFullError, NumericalError


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    d = make_tiny_llama(tmp_path_factory.mktemp("bad_input"), "gqa_untied")
    return convert(d, d / "m.gguf", "f32", progress=False)


@pytest.fixture(scope="module")
def llm(tiny_gguf):
    return Llama(tiny_gguf, n_ctx=64, n_threads=2, seed=0)


# ---- text -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["<|not_a_token|>", "hi <|im_start|> there", "< s>", "</s", "<|endoftext|"])
def test_unknown_special_looking_text_is_plain_text(llm, tiny_gguf, text):
    """llama.cpp matches only the vocabulary's own special tokens (with special=True); any other text that looks
    like one is tokenized as plain text. Checked against llama.cpp itself on the same file."""
    got = llm.tokenize(text, add_bos=False, special=True)
    assert got == llm.tokenize(text, add_bos=False, special=False)
    assert llm.detokenize(got).decode() == text
    assert not set(got) & {llm.tokenizer.bos_id, llm.tokenizer.eos_id}
    llama_cpp = pytest.importorskip("llama_cpp")
    ref = llama_cpp.Llama(str(tiny_gguf), vocab_only=True, verbose=False)
    assert got == ref.tokenize(text.encode(), add_bos=False, special=True)


def test_known_special_tokens_are_matched_only_when_asked(llm):
    eos = llm.tokenizer.eos_id
    assert llm.tokenize("a</s>", add_bos=False, special=True)[-1] == eos
    assert eos not in llm.tokenize("a</s>", add_bos=False, special=False)


def test_special_looking_prompt_generates(llm):
    r = llm.create_completion("<|not_a_token|> The quick", max_tokens=4, temperature=0)
    assert r["usage"]["completion_tokens"] >= 1


def test_empty_prompt(llm):
    """This vocabulary adds no BOS (as llama.cpp reads it), so "" has no token to start from: a clear error."""
    assert llm.tokenize("") == []
    for prompt in ("", []):
        with pytest.raises(ValueError, match="empty prompt"):
            llm.create_completion(prompt)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.create_completion([-1])


def test_prompt_longer_than_the_context(llm):
    with pytest.raises(ContextFullError, match=r"\d+ tokens, which does not leave room to generate in the context "
                                               r"window of 64 \(n_ctx\)"):
        llm.create_completion("word " * 100)
    with pytest.raises(ContextFullError, match="context window of 64"):
        llm.create_completion(list(range(3, 3 + 64)))
    with pytest.raises(ContextFullError):  # also through the chat path
        llm.create_chat_completion([{"role": "user", "content": "word " * 100}])


def test_context_full_in_the_cli(tiny_gguf, capsys):
    assert rsparse_main(["-m", str(tiny_gguf), "-p", "word " * 100, "-c", "32"]) == 1
    assert "context window of 32" in capsys.readouterr().err


# ---- sampling -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [
    dict(temperature=-0.5), dict(temperature=float("inf")), dict(temperature="0.7"), dict(temperature=None),
    dict(top_p=1.01), dict(top_p=-0.1), dict(top_p=float("nan")), dict(top_k=2.5),
    dict(top_k=True), dict(min_p=1.5), dict(min_p=float("nan")), dict(repeat_penalty=-1.0),
    dict(repeat_penalty=float("nan")),
])
def test_invalid_sampling_values(llm, bad):
    (name, value), = bad.items()
    with pytest.raises(ValueError, match=f"invalid sampling parameter {name}=.*: must be"):
        llm.create_completion("The quick", max_tokens=2, **bad)
    with pytest.raises(ValueError, match=f"invalid sampling parameter {name}="):
        llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=2, **bad)


def test_boundary_sampling_values_are_valid(llm):
    """The documented 'off' values: temperature 0 (greedy), top_k 0, top_p 1, min_p 0."""
    r = llm.create_completion("The quick", max_tokens=2, temperature=0, top_k=0, top_p=1.0, min_p=0.0)
    assert llm.create_completion("The quick", max_tokens=2, top_k=-1, seed=0)["usage"]["completion_tokens"] == 2
    assert r["usage"]["completion_tokens"] == 2


def test_invalid_sampling_in_the_cli(tiny_gguf, capsys):
    assert rsparse_main(["-m", str(tiny_gguf), "-p", "x", "--temp", "-1"]) == 1
    assert "temperature" in capsys.readouterr().err
    assert rsparse_main(["-m", str(tiny_gguf), "-p", "x", "--top-p", "1.5"]) == 1
    assert "top_p" in capsys.readouterr().err


# ---- numerics -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nan_gguf(tiny_gguf, tmp_path_factory):
    """The tiny model with one NaN planted in an F32 weight that the loader does not (and need not) scan."""
    info = GGUFFile(tiny_gguf).tensors["blk.0.ffn_down.weight"]
    raw = bytearray(tiny_gguf.read_bytes())
    raw[info.offset:info.offset + 4] = np.float32("nan").tobytes()
    path = tmp_path_factory.mktemp("nan") / "nan.gguf"
    path.write_bytes(bytes(raw))
    return path


def test_nan_in_the_activations(nan_gguf, capsys):
    llm = Llama(nan_gguf, n_ctx=64, n_threads=2)
    with pytest.raises(NumericalError, match="NaN or inf in the logits at position"):
        llm.create_completion("The quick", max_tokens=2)
    assert rsparse_main(["-m", str(nan_gguf), "-p", "The quick", "-n", "2"]) == 1
    assert "NaN or inf in the logits" in capsys.readouterr().err


# ---- files ----------------------------------------------------------------------------------------------------
def test_missing_files_are_named(tiny_gguf, tmp_path, capsys):
    with pytest.raises(GGUFError, match="nowhere.gguf: file: No such file"):
        Llama(tmp_path / "nowhere.gguf")
    with pytest.raises(GGUFError, match="nowhere.rsparse.gguf"):
        Llama(tiny_gguf, companion_path=tmp_path / "nowhere.rsparse.gguf")
    with pytest.raises(GGUFError, match="no R-Sparse companion for .*m.gguf"):
        Llama(tiny_gguf, sparse=True)
    assert rsparse_main(["-m", str(tiny_gguf), "--companion", str(tmp_path / "c.rsparse.gguf")]) == 1
    assert "c.rsparse.gguf" in capsys.readouterr().err
    assert rsparse_main(["-m", str(tiny_gguf), "--perplexity", str(tmp_path / "text.txt")]) == 1
    assert "text.txt" in capsys.readouterr().err


def test_a_directory_or_a_non_gguf_is_named(tmp_path):
    with pytest.raises(GGUFError, match=f"{tmp_path}"):
        Llama(tmp_path)
    (tmp_path / "notes.txt").write_text("not a model at all, but long enough for a header")
    with pytest.raises(GGUFError, match="notes.txt: magic"):
        Llama(tmp_path / "notes.txt")
