"""--calib-file (converter/calib_text.py): the user's calibration text, plain or JSONL chats rendered with the
model's chat template, refused with a clear error when it cannot be used, before any model is loaded or file
written."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import make_tiny_llama, make_tiny_tokenizer

from rsparse_converter.calib_text import CalibFileError, read_calib_file

from rsparse_cpp.gguf_file import GGUFFile
from rsparse_cpp.constants import RSparseKey

CHATS = [{"messages": [{"role": "user", "content": "How do I read a file?"},
                       {"role": "assistant", "content": "Open it and read it."}]},
         [{"role": "user", "content": "Hello there"}]]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("tok")
    make_tiny_tokenizer(d)
    return AutoTokenizer.from_pretrained(str(d))


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_plain_text_as_it_is(tmp_path, tokenizer):
    text = "Une phrase en français.\nA second line.\n"
    assert read_calib_file(write(tmp_path / "c.txt", text.encode()), tokenizer) == text


def test_jsonl_chats_rendered_with_the_template(tmp_path, tokenizer):
    lines = "\n".join(json.dumps(c) for c in CHATS) + "\n\n"
    got = read_calib_file(write(tmp_path / "chats.jsonl", lines.encode()), tokenizer)
    want = "\n\n".join(tokenizer.apply_chat_template(c["messages"] if isinstance(c, dict) else c, tokenize=False)
                       for c in CHATS)
    assert got == want and "<s>user: How do I read a file?</s>" in got and "<s>assistant: Open it" in got


@pytest.mark.parametrize("name,data,message", [
    ("empty.txt", b"", "is empty"),
    ("blank.txt", b"  \n\t\n", "is empty"),
    ("bin.txt", b"text\x00\x01\x02", "binary data (a NUL byte at offset 4)"),
    ("latin1.txt", "caf\u00e9".encode("latin-1"), "not UTF-8 text (byte offset 3)"),
    ("bad.jsonl", b'{"messages": [{"role": "user", "content": "a"}]}\n{"messages": [\n', "bad.jsonl:2: not JSON"),
    ("text.jsonl", b'{"text": "plain"}\n', "text.jsonl:1: expected a conversation"),
    ("empty_list.jsonl", b"[]\n", "empty_list.jsonl:1: expected a conversation"),
    ("role.jsonl", b'[{"role": "user", "content": 3}]\n', "role.jsonl:1: message 0 needs a string"),
    ("nothing.jsonl", b"\n\n  \n", "is empty"),
])
def test_unusable_files_are_refused(tmp_path, tokenizer, name, data, message):
    with pytest.raises(CalibFileError) as e:
        read_calib_file(write(tmp_path / name, data), tokenizer)
    assert message in str(e.value) and name in str(e.value)


def test_missing_file_and_no_template(tmp_path, tokenizer):
    with pytest.raises(CalibFileError, match="cannot read the calibration file"):
        read_calib_file(tmp_path / "missing.txt", tokenizer)
    saved, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        with pytest.raises(CalibFileError, match="has none; pass plain text"):
            read_calib_file(write(tmp_path / "c.jsonl", json.dumps(CHATS[1]).encode()), tokenizer)
    finally:
        tokenizer.chat_template = saved


def test_companion_from_calib_file(tmp_path, capsys):
    """rsparse-companion --calib-file calibrates on that text and records it; a bad file fails before anything is
    loaded or written; rsparse-convert --sparsity refuses it before converting."""
    from rsparse_converter.cli import main as convert_main
    from rsparse_converter.rsparse_cli import main as companion_main

    d = make_tiny_llama(tmp_path / "hf", "mha_tied")
    small = ["--calib-tokens", "128", "--seq-len", "32", "--recipe", "sparse-only", "--val-tokens", "0",
             "--no-progress"]
    base = tmp_path / "t.gguf"
    assert convert_main([str(d), "--outtype", "f32", "-o", str(base)]) == 0
    chats = "\n".join(json.dumps(CHATS[i % 2]) for i in range(40))
    calib = write(tmp_path / "chats.jsonl", chats.encode())
    out = tmp_path / "t.rsparse.gguf"
    assert companion_main([str(base), str(d), "--sparsity", "0.5", "--calib-file", str(calib), *small]) == 0
    f = GGUFFile(out)
    from transformers import AutoTokenizer

    text = read_calib_file(calib, AutoTokenizer.from_pretrained(str(d)))
    assert f.get_str(RSparseKey.CALIB_SOURCE) == "--calib-file chats.jsonl (JSONL conversations rendered with the chat template)"
    assert f.get_str(RSparseKey.CALIB_SHA256) == hashlib.sha256(text.encode()).hexdigest()
    capsys.readouterr()

    bad = write(tmp_path / "bad.txt", b"\x00\x01")
    out2 = tmp_path / "t2.rsparse.gguf"
    assert companion_main([str(base), str(d), "--sparsity", "0.5", "--calib-file", str(bad),
                           "--companion-out", str(out2), *small]) == 1
    assert "bad.txt: binary data" in capsys.readouterr().err and not out2.exists()
    base2 = tmp_path / "u.gguf"
    assert convert_main([str(d), "--outtype", "f32", "-o", str(base2), "--sparsity", "0.5", "--calib-file", str(bad),
                         *small]) == 1
    assert "bad.txt: binary data" in capsys.readouterr().err and not base2.exists()
