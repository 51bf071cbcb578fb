"""The tokenizer rebuilt from GGUF metadata encodes exactly as the HF tokenizer it was converted from."""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
from tokenizers import Tokenizer as HFTokenizer

from conftest import make_tiny_tokenizer
from rsparse_converter.checkpoint import CheckpointError
from rsparse_converter.tokenizer import write_tokenizer
from rsparse_cpp.chat import ChatTemplateError, render_chat
from rsparse_cpp.gguf_file import GGUFFile
from rsparse_cpp.tokenizer import Tokenizer

TEXTS = [
    "Hello world", "Hello, world! How's it going?", "  leading, trailing and  double  spaces  ",
    "line\nbreaks\n\n\ttabs\r\nand CRLF", "digits 0 12 345 6789 1234567890 3.14159 -17 1e-5",
    "def f(x):\n    return x ** 2  # square\n", "https://example.com/path?q=a&b=c#frag",
    "café naïve résumé Ünïcödé", "東京タワー 你好世界 한국어", "مرحبا بالعالم", "emoji 🙂🚀👩‍👩‍👧",
    "e\u0301 combining", "ALL CAPS and MiXeD", "!!!???...,,,;;;", "", " ", "\n", "a",
    "it's we're they'll I'd", "<|im_start|>user\nhi<|im_end|>",
]


def gguf_meta(hf_dir: Path, vocab_size: int, tmp_path: Path) -> dict:
    path = tmp_path / "tok.gguf"
    w = gguf.GGUFWriter(path, arch="llama")
    write_tokenizer(w, hf_dir, vocab_size)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return GGUFFile(path).fields


def check_equal(tok: Tokenizer, ref: HFTokenizer, texts=TEXTS, roundtrip=True):
    for text in texts:
        ours = tok.encode(text, add_bos=False, special=True)
        assert ours == ref.encode(text, add_special_tokens=False).ids, text
        if roundtrip:
            assert tok.decode(ours) == text, text
            assert b"".join(tok.token_bytes(i, special=True) for i in ours).decode() == text


@pytest.mark.smollm
def test_smollm_matches_hf(smollm_hf_dir, tmp_path):
    meta = gguf_meta(smollm_hf_dir, 49152, tmp_path)
    tok = Tokenizer.from_metadata(meta)
    check_equal(tok, HFTokenizer.from_file(str(smollm_hf_dir / "tokenizer.json")))
    assert tok.eos_id == 2 and tok.token_text(tok.eos_id) == "<|im_end|>"
    # special=False: control tokens in text are just text
    assert 1 not in tok.encode("<|im_start|>", add_bos=False, special=False)
    assert tok.encode("<|im_start|>", add_bos=False, special=True) == [1]


@pytest.mark.smollm
def test_smollm_chat_template_matches_transformers(smollm_hf_dir, tmp_path):
    from transformers import AutoTokenizer

    meta = gguf_meta(smollm_hf_dir, 49152, tmp_path)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]
    ref = AutoTokenizer.from_pretrained(smollm_hf_dir).apply_chat_template(messages, tokenize=False,
                                                                          add_generation_prompt=True)
    assert render_chat(meta["tokenizer.chat_template"], messages, "<|im_start|>", "<|im_end|>") == ref


def test_tiny_byte_level_bpe(tmp_path):
    make_tiny_tokenizer(tmp_path)
    tok = Tokenizer.from_metadata(gguf_meta(tmp_path, 320, tmp_path))
    check_equal(tok, HFTokenizer.from_file(str(tmp_path / "tokenizer.json")), TEXTS[:-1])
    assert tok.vocab_size == 320  # padded with unused tokens up to the model's vocab size


def make_spm_style_tokenizer(folder: Path, vocab_size: int = 600) -> None:
    """A Llama-2-style tokenizer.json: BPE with byte fallback, "▁" for spaces, <0xXX> byte tokens after the
    specials, as Llama 2 and Mistral ship it. Trained here with `tokenizers`, so nothing is downloaded."""
    from tokenizers import decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    norm = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer_tok = HFTokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.normalizer = norm
    trainer_tok.train_from_iterator([t for t in TEXTS if t.strip()] * 20,
                                    trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False))
    trained = json.loads(trainer_tok.to_str())["model"]
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    vocab = {t: i for i, t in enumerate(specials)}
    for t in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(t, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tok = HFTokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = norm
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["add_bos_token"] = True
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))


def test_sentencepiece_style_bpe(tmp_path):
    """SentencePiece-style BPE (Llama 2, Mistral): stored as tokens + scores, merges rebuilt at run time."""
    hf_dir = tmp_path / "hf"
    make_spm_style_tokenizer(hf_dir)
    n = len(json.loads((hf_dir / "tokenizer.json").read_text())["model"]["vocab"])
    meta = gguf_meta(hf_dir, n, tmp_path)
    assert meta["tokenizer.ggml.model"] == "llama"
    tok = Tokenizer.from_metadata(meta)
    ref = HFTokenizer.from_file(str(hf_dir / "tokenizer.json"))
    texts = [t for t in TEXTS[:-1] if t.strip()] + ["zebra quokka ŋ"]  # unseen words and a byte-fallback char
    check_equal(tok, ref, texts, roundtrip=False)
    assert tok.encode("hello", add_bos=True)[0] == 1  # SentencePiece models want BOS
    assert tok.decode(tok.encode("zebra ŋ", add_bos=False)) == "zebra ŋ"


def test_unsupported_pretokenizer_is_an_error(tmp_path):
    make_tiny_tokenizer(tmp_path)
    tj = json.loads((tmp_path / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "Whitespace"}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(CheckpointError, match="unsupported pre-tokenizer"):
        gguf_meta(tmp_path, 320, tmp_path)


def test_bad_ids_and_templates():
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "ab"],
            "tokenizer.ggml.merges": ["a b"]}
    tok = Tokenizer.from_metadata(meta)
    assert tok.encode("ab", add_bos=False) == [2]
    with pytest.raises(ValueError, match="token id 7"):
        tok.decode([7])
    with pytest.raises(ValueError, match="unknown token"):
        Tokenizer.from_metadata({**meta, "tokenizer.ggml.merges": ["a zz"]})
    with pytest.raises(ValueError, match="not supported"):
        Tokenizer.from_metadata({**meta, "tokenizer.ggml.model": "bert"})
    with pytest.raises(ChatTemplateError, match="no"):
        render_chat("{{ raise_exception('no system role') }}", [{"role": "user", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="list of dicts"):
        render_chat("{{ messages }}", "not a list")
