"""The command-line tools, run in-process on a tiny model."""
from __future__ import annotations

import pytest

from conftest import make_tiny_llama
from rsparse_converter.cli import main as convert_main
from rsparse_cpp.cli import main as rsparse_main


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    d = make_tiny_llama(tmp_path_factory.mktemp("cli"), "mha_tied")
    out = d / "tiny.gguf"
    assert convert_main([str(d), "--outtype", "q8_0", "-o", str(out), "--no-progress"]) == 0
    return out


def test_generate(tiny_gguf, capsys):
    assert rsparse_main(["-m", str(tiny_gguf), "-p", "The quick", "-n", "8", "--temp", "0", "-c", "64"]) == 0
    assert capsys.readouterr().out.startswith("The quick")


def test_chat(tiny_gguf, capsys):
    assert rsparse_main(["-m", str(tiny_gguf), "-p", "hi", "-n", "4", "--chat", "-c", "64", "--seed", "1"]) == 0


def test_errors_are_messages_not_tracebacks(tiny_gguf, tmp_path, capsys):
    assert rsparse_main(["-m", str(tmp_path / "missing.gguf")]) == 1
    assert "missing.gguf" in capsys.readouterr().err
    assert rsparse_main(["-m", str(tiny_gguf), "-p", "x", "--top-p", "0"]) == 1
    assert "top_p" in capsys.readouterr().err
    assert convert_main([str(tmp_path), "-o", str(tmp_path / "o.gguf")]) == 1
    assert "no config.json" in capsys.readouterr().err
