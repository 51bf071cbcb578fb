"""The tokenizer the converter writes and the runtime rebuilds encodes exactly as the HF tokenizer it came from.

Every check goes converter -> GGUF file -> gguf-py's reader -> runtime Tokenizer, and compares with an independent
reference: the `tokenizers` pipeline in tokenizer.json, SentencePiece itself, transformers' apply_chat_template.
"""
from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import gguf
import numpy as np
import pytest
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer

from conftest import TINY_CORPUS, make_tiny_tokenizer
from rsparse_converter.tokenizer import tokenizer_kind, write_tokenizer
from rsparse_cpp.chat import CHATML_TEMPLATE, ChatTemplateError, render_chat
from rsparse_cpp.constants import Key, TokenType
from rsparse_cpp.tokenizer import Detokenizer, Tokenizer

TEXTS = [
    "Hello world", "Hello, world! How's it going?", "  leading, trailing and  double  spaces  ", "   ",
    "line\nbreaks\n\n\ttabs\r\nand CRLF\n", "digits 0 12 345 6789 1234567890 3.14159 -17 1e-5 2024-01-31 x2y",
    "def f(x):\n    return x ** 2  # square\n\tpass", "https://example.com/path?q=a&b=c#frag",
    "café naïve résumé Ünïcödé Ångström", "東京タワー 你好世界 한국어", "مرحبا بالعالم", "emoji 🙂🚀👩‍👩‍👧 🇫🇷",
    "e\u0301 combining a\u0308\u0301", "ALL CAPS and MiXeD", "!!!???...,,,;;;", "", " ", "\n", "a",
    "it's we're they'll I'd IT'S", 'JSON: {"a": [1, 2.5, null]}', "\u00a0nbsp and\u3000ideographic", "zero\u200bwidth",
    "x  12 in  2024\n  42",  # spaces before digits: where SmolLM2's digit split differs from GPT-2's regex
]
WITH_SPECIALS = ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "text<|im_end|>more", "<tool> call"]
# Llama 3's split regex as its tokenizer.json spells it (typed here, not imported from the code under test).
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen2's (Qwen1.5 to Qwen3), likewise typed here: Llama 3's with one digit per pre-token.
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SAMPLES = [
    "The year 2024 had 366 days, and 1234567 is written digit by digit: 3.14159, -0.5e10, v2.5.1, x86_64",
    "Déjà vu in São Paulo: naïve café, Zürich, Ærøskøbing, façade, Ñandú",
    "中文分词测试：我爱北京天安门。日本語のテキスト、カタカナ。한국어 문장입니다.",
    "Ελληνικά: Καλημέρα κόσμε! Русский текст тоже. עברית וعربي",
    "emoji 🙂🚀 👩‍💻 🇯🇵 ❤️‍🔥 and 🧑🏽‍🚀!",
    "mixed\twhitespace \n\n  indented\r\n\t\tand\u3000wide  \n \n\n\n   end",
    "e\u0301 and A\u030a and \u1e9b\u0323 compose under NFC; \ufb01 and \u2460 do not (NFKC would)",
    "I'M sure it'S THEY'LL we'Ve",
]
QWEN2_CODE = ('import torch\n\n\ndef fib(n: int) -> int:\n    """The n-th Fibonacci number."""\n    a, b = 0, 1\n'
              '    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n\n'
              'print({"n": 10, "fib": fib(10)})  # 55\n'
              '#include <stdio.h>\nint main(void) { printf("%d\\n", 1 << 20); return 0; }\n\t// tab-indented\r\n')


# ---- helpers: write the tokenizer into a tiny GGUF, read it back with gguf-py ----------------------------------
def read_meta(path: Path) -> dict:
    """GGUF key -> Python value, the shape the runtime takes: str/int/float/bool, list[str], numpy arrays."""
    meta = {}
    for name, field in gguf.GGUFReader(path).fields.items():
        if name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            if field.types[1] == gguf.GGUFValueType.STRING:
                meta[name] = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
            else:
                meta[name] = np.concatenate([field.parts[i] for i in field.data]) if field.data else np.array([])
        elif vtype == gguf.GGUFValueType.STRING:
            meta[name] = bytes(field.parts[field.data[0]]).decode("utf-8")
        else:
            meta[name] = field.parts[field.data[0]][0].item()
    return meta


def write_gguf(hf_dir: Path, vocab_size: int, path: Path, hparams: bool = False) -> Path:
    """A GGUF holding only the tokenizer (and, for llama.cpp's vocab-only loader, a few hyper-parameters)."""
    w = gguf.GGUFWriter(path, arch="llama")
    if hparams:
        for key, v in ((Key.CONTEXT_LENGTH, 64), (Key.EMBEDDING_LENGTH, 64), (Key.BLOCK_COUNT, 1),
                       (Key.FEED_FORWARD_LENGTH, 64), (Key.HEAD_COUNT, 4)):
            w.add_uint32(Key.arch(key), v)
        w.add_float32(Key.arch(Key.RMS_EPS), 1e-5)
    write_tokenizer(w, hf_dir, vocab_size)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def gguf_meta(hf_dir: Path, vocab_size: int, tmp_path: Path) -> dict:
    return read_meta(write_gguf(hf_dir, vocab_size, tmp_path / "tok.gguf"))


def check_matches(tok: Tokenizer, ref: HFTokenizer, texts, roundtrip: bool = True) -> None:
    for text in texts:
        ids = tok.encode(text, add_bos=False, special=True)
        assert ids == ref.encode(text, add_special_tokens=False).ids, text
        assert tok.encode(text) == ref.encode(text, add_special_tokens=True).ids, text  # BOS as HF adds it
        if roundtrip:
            assert tok.decode(ids) == text, text
        detok = Detokenizer(tok)
        pieces = [detok.push(i) for i in ids] + [detok.flush()]
        assert "".join(pieces) == tok.decode(ids), text
        if roundtrip:
            assert "\ufffd" not in "".join(pieces)  # no character was ever split across pieces


# ---- (a) SmolLM2 -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm_meta(smollm_hf_dir, tmp_path_factory):
    return gguf_meta(smollm_hf_dir, 49152, tmp_path_factory.mktemp("smollm_tok"))


@pytest.mark.smollm
def test_smollm_matches_hf(smollm_hf_dir, smollm_meta):
    assert smollm_meta[Key.TOKENIZER_MODEL] == "gpt2" and smollm_meta[Key.TOKENIZER_PRE] in ("gpt-2", "smollm")
    tok = Tokenizer.from_metadata(smollm_meta)
    check_matches(tok, HFTokenizer.from_file(str(smollm_hf_dir / "tokenizer.json")), TEXTS + WITH_SPECIALS)
    assert tok.vocab_size == 49152 and not tok.add_bos
    assert (tok.bos_id, tok.eos_id, tok.eot_id) == (1, 2, 2) and tok.token_text(tok.eos_id) == "<|im_end|>"
    assert {0, 1, 2} <= tok.special_ids
    # special=False: control tokens written in the text are just text
    assert tok.encode("<|im_start|>", add_bos=False, special=True) == [1]
    assert 1 not in tok.encode("<|im_start|>", add_bos=False, special=False)
    assert tok.decode([1, 2], skip_special=True) == "" and tok.token_bytes(1) == b""


@pytest.mark.smollm
def test_smollm_chat_template_matches_transformers(smollm_hf_dir, smollm_meta):
    from transformers import AutoTokenizer

    ref = AutoTokenizer.from_pretrained(smollm_hf_dir)
    template = smollm_meta[Key.CHAT_TEMPLATE]
    for messages in ([{"role": "user", "content": "Hi there"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2? 東京 🙂"}]):
        for gen in (True, False):
            want = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert render_chat(template, messages, "<|im_start|>", "<|im_end|>", add_generation_prompt=gen) == want


# ---- (b) tiny tokenizers trained here ------------------------------------------------------------------------------
def make_byte_level(folder: Path, style: str) -> Path:
    """A byte-level BPE with the pre-tokenizer of GPT-2, SmolLM2 or Llama 3, saved as a transformers folder."""
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=style != "llama-bpe")
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = {
        "gpt-2": byte_level,
        "smollm": pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level]),
        "llama-bpe": pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
                                              byte_level]),
    }[style]
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>"]
    tok.train_from_iterator(TINY_CORPUS + TEXTS * 3, trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if style == "llama-bpe":  # Llama 3 prefers whole-word vocabulary hits and adds BOS
        tj = json.loads(tok.to_str())
        tj["model"]["ignore_merges"] = True
        tok = HFTokenizer.from_str(json.dumps(tj))
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    tok.add_tokens([AddedToken("<tool>", special=False, normalized=False)])  # user-defined: always matched
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|im_end|>")
    fast.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("style", ["gpt-2", "smollm", "llama-bpe"])
def test_byte_level_bpe(tmp_path, style):
    hf_dir = make_byte_level(tmp_path / "hf", style)
    ref = HFTokenizer.from_file(str(hf_dir / "tokenizer.json"))
    n = ref.get_vocab_size(with_added_tokens=True)
    meta = gguf_meta(hf_dir, n + 7, tmp_path)  # the model has 7 more embeddings than the tokenizer has tokens
    assert meta[Key.TOKENIZER_PRE] == style and meta[Key.ADD_BOS] == (style == "llama-bpe")
    tok = Tokenizer.from_metadata(meta)
    check_matches(tok, ref, TEXTS + WITH_SPECIALS)
    assert tok.vocab_size == n + 7 and meta[Key.TOKENS][-1] == f"[PAD{n + 6}]"
    assert meta[Key.TOKEN_TYPE][-1] == TokenType.UNUSED
    tool = ref.token_to_id("<tool>")
    assert meta[Key.TOKEN_TYPE][tool] == TokenType.USER_DEFINED and tool not in tok.special_ids
    assert tok.encode("<tool>", add_bos=False, special=False) == [tool]  # user-defined tokens are always whole


def make_qwen2(folder: Path) -> Path:
    """A Qwen2-style tokenizer as transformers' Qwen2 tokenizer class saves it: byte-level BPE trained here on a
    multilingual and code corpus, NFC normalizer, Qwen2's split regex then ByteLevel, ChatML specials, no BOS."""
    from transformers import PreTrainedTokenizerFast, Qwen2TokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok = HFTokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    # Trained on Llama 3's split, so the vocabulary holds multi-digit tokens: then only the pre-tokenizer keeps
    # Qwen2's numbers to one token per digit, and a wrong regex shows in the ids.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
                                                 byte_level])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TINY_CORPUS + TEXTS * 3 + (QWEN2_SAMPLES + [QWEN2_CODE]) * 3, trainers.BpeTrainer(
        vocab_size=900, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated"),
                                                 byte_level])
    tok.add_tokens([AddedToken("<tool>", special=False, normalized=False)])  # like Qwen2.5's <tool_call>
    trained = folder.parent / f"{folder.name}-trained"
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                            pad_token="<|endoftext|>").save_pretrained(trained)
    Qwen2TokenizerFast.from_pretrained(trained).save_pretrained(folder)  # what Qwen's checkpoints ship
    return folder


def test_qwen2_bpe(tmp_path):
    """Qwen2/2.5/3: llama.cpp's "qwen2" pre-tokenizer (digits one by one), NFC first as tokenizer.json says, merges
    not ignored, no BOS. Our runtime encodes as transformers' Qwen2 tokenizer does and decodes back to the text."""
    from transformers import AutoTokenizer

    qwen2_module = pytest.importorskip("transformers.models.qwen2.tokenization_qwen2")
    assert getattr(qwen2_module, "PRETOKENIZE_REGEX", QWEN2_REGEX) == QWEN2_REGEX  # our typed copy is Qwen2's
    hf_dir = make_qwen2(tmp_path / "hf")
    tj = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert tj["normalizer"] == {"type": "NFC"} and not tj["model"].get("ignore_merges")  # as in Qwen's own files
    assert tokenizer_kind(tj) == ("gpt2", "qwen2")
    ref = AutoTokenizer.from_pretrained(hf_dir)
    assert "Qwen2" in type(ref).__name__
    meta = gguf_meta(hf_dir, len(ref), tmp_path)
    assert meta[Key.TOKENIZER_PRE] == "qwen2" and not meta[Key.ADD_BOS] and Key.BOS_ID not in meta
    tok = Tokenizer.from_metadata(meta)
    assert (tok.eos_id, tok.eot_id, tok.pad_id) == (2, 2, 0) and not tok.add_bos
    for text in QWEN2_SAMPLES + [QWEN2_CODE] + TEXTS + WITH_SPECIALS:
        ids = tok.encode(text, add_bos=False)
        assert ids == ref.encode(text, add_special_tokens=False) == tok.encode(text), text
        nfc = unicodedata.normalize("NFC", text)
        assert tok.decode(ids) == nfc == ref.decode(ids, skip_special_tokens=False,
                                                    clean_up_tokenization_spaces=False), text
    assert {"12", "123"} <= set(ref.get_vocab())  # so Llama 3's regex would give 123|456|7 here
    assert tok.encode("1234567", add_bos=False) == [ref.convert_tokens_to_ids(d) for d in "1234567"]
    assert tok.encode("cafe\u0301 A\u030a", add_bos=False) == tok.encode("café Å", add_bos=False)
    assert tok.encode("<tool>x", add_bos=False, special=False)[0] == ref.convert_tokens_to_ids("<tool>")
    # the rest of check_matches (streaming detokenizer, no split characters) on the texts NFC leaves alone
    texts = [t for t in QWEN2_SAMPLES + [QWEN2_CODE] + TEXTS + WITH_SPECIALS if unicodedata.is_normalized("NFC", t)]
    check_matches(tok, HFTokenizer.from_file(str(hf_dir / "tokenizer.json")), texts)


def test_qwen2_follows_the_merges(tmp_path):
    """Qwen2's tokenizer.json ("ignore_merges": false) and llama.cpp's qwen2 apply the merges even to a pre-token
    found whole in the vocabulary: "abc" is "ab" + "c" here (Llama 3's llama-bpe would take "abc")."""
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()) + ["ab", "bc", "abc"])}
    tok = HFTokenizer(models.BPE(vocab, [("a", "b"), ("b", "c"), ("a", "bc")], ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(tmp_path)
    ref = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert ref.encode("abc").ids == [vocab["ab"], vocab["c"]]
    meta = gguf_meta(tmp_path, len(vocab), tmp_path)
    assert meta[Key.TOKENIZER_PRE] == "qwen2"
    check_matches(Tokenizer.from_metadata(meta), ref, ["abc", "xabc abc", "ab c", "bc abc's", "abc123"])


def test_llama_bpe_prefers_whole_words(tmp_path):
    """Llama 3's tokenizer.json (ignore_merges) and llama.cpp's llama-bpe take a pre-token found in the vocabulary
    whole, even where the merges would split it: "abc" is one token here, although the merges make "ab" + "c"."""
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()) + ["ab", "bc", "abc"])}
    tok = HFTokenizer(models.BPE(vocab, [("a", "b"), ("b", "c"), ("a", "bc")], ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(tmp_path)
    ref = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert ref.encode("abc").ids == [vocab["abc"]] and ref.encode("xabc").ids == [vocab["x"], vocab["ab"], vocab["c"]]
    tok = Tokenizer.from_metadata(gguf_meta(tmp_path, len(vocab), tmp_path))
    check_matches(tok, ref, ["abc", "xabc abc", "ab c", "bc abc's"])


def test_tiny_tokenizer_of_the_test_models(tmp_path):
    """The tokenizer conftest gives every tiny test model (gpt-2 style, special tokens, chat template)."""
    make_tiny_tokenizer(tmp_path)
    tok = Tokenizer.from_metadata(gguf_meta(tmp_path, 320, tmp_path))
    check_matches(tok, HFTokenizer.from_file(str(tmp_path / "tokenizer.json")), TEXTS)


def spm_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A Llama-2-style SentencePiece BPE (byte fallback, identity normalisation, dummy prefix) trained here, and
    the HF folder transformers converts it to. Returns (tokenizer.model, HF folder)."""
    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")  # transformers reads the .model file with protobuf
    from transformers import LlamaTokenizerFast

    src = tmp_path / "spm"
    src.mkdir()
    (tmp_path / "corpus.txt").write_text("\n".join(TINY_CORPUS + [t for t in TEXTS if t.strip()] * 3))
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "corpus.txt"), model_prefix=str(src / "tokenizer"), vocab_size=420, model_type="bpe",
        byte_fallback=True, character_coverage=0.99, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, minloglevel=2)
    (src / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    hf_dir = tmp_path / "hf"
    LlamaTokenizerFast.from_pretrained(src).save_pretrained(hf_dir)
    return src / "tokenizer.model", hf_dir


def test_sentencepiece_bpe(tmp_path):
    """Llama 2 / Mistral style: stored as tokens + scores; the runtime's merges reproduce SentencePiece."""
    import sentencepiece as spm

    model_file, hf_dir = spm_folder(tmp_path)
    meta = gguf_meta(hf_dir, 420, tmp_path)
    assert meta[Key.TOKENIZER_MODEL] == "llama" and meta[Key.ADD_SPACE_PREFIX]
    assert meta[Key.TOKEN_TYPE][0] == TokenType.UNKNOWN and meta[Key.TOKEN_TYPE][3] == TokenType.BYTE
    tok = Tokenizer.from_metadata(meta)
    sp = spm.SentencePieceProcessor(model_file=str(model_file))
    texts = TEXTS + ["zebra quokka ŋ Ꙭ"]  # unseen words and characters that need byte fallback
    for text in texts:
        assert tok.encode(text, add_bos=False) == sp.encode(text), text
    # transformers' conversion (Metaspace, prepend_scheme="first") adds no "▁" before text that already starts
    # with a space; SentencePiece and llama.cpp always do, and so do we.
    check_matches(tok, HFTokenizer.from_file(str(hf_dir / "tokenizer.json")), [t for t in texts if t[:1] != " "])


def make_spm_style(folder: Path, vocab_size: int = 600) -> Path:
    """A Llama-2-style tokenizer.json built with `tokenizers` alone (no sentencepiece needed): BPE with byte
    fallback, "▁" for spaces via Prepend + Replace, <0xXX> byte tokens after the specials, as Llama 2 ships it."""
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
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)
    return folder


def test_sentencepiece_style_tokenizer_json(tmp_path):
    hf_dir = make_spm_style(tmp_path / "hf")
    ref = HFTokenizer.from_file(str(hf_dir / "tokenizer.json"))
    meta = gguf_meta(hf_dir, ref.get_vocab_size(), tmp_path)
    assert meta[Key.TOKENIZER_MODEL] == "llama" and meta[Key.ADD_BOS] and not meta[Key.ADD_EOS]
    tok = Tokenizer.from_metadata(meta)
    check_matches(tok, ref, TEXTS + ["zebra quokka ŋ", "<s>hi</s> there"], roundtrip=False)
    for text in TEXTS + ["zebra ŋ"]:
        assert tok.decode(tok.encode(text)) == ref.decode(ref.encode(text).ids, skip_special_tokens=False), text
        assert tok.decode(tok.encode(text, add_bos=False)) == text


@pytest.mark.llamacpp
@pytest.mark.parametrize("style", ["gpt-2", "smollm", "llama-bpe", "qwen2", "spm-style", "sentencepiece"])
def test_llamacpp_reads_our_metadata_alike(tmp_path, style):
    """llama.cpp's own tokenizer, loading the metadata we wrote, gives the same ids as our runtime."""
    llama_cpp = pytest.importorskip("llama_cpp")
    if style == "sentencepiece":
        hf_dir = spm_folder(tmp_path)[1]
    elif style == "qwen2":
        hf_dir = make_qwen2(tmp_path / "hf")
    else:
        hf_dir = make_spm_style(tmp_path / "hf") if style == "spm-style" else make_byte_level(tmp_path / "hf", style)
    n = HFTokenizer.from_file(str(hf_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    path = write_gguf(hf_dir, n, tmp_path / "vocab.gguf", hparams=True)
    ours = Tokenizer.from_metadata(read_meta(path))
    ref = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    texts = TEXTS + WITH_SPECIALS + (QWEN2_SAMPLES + [QWEN2_CODE] if style == "qwen2" else [])
    for text in texts:
        # llama.cpp normalizes no byte-level text; we apply Qwen2's NFC as its tokenizer.json does
        theirs = unicodedata.normalize("NFC", text) if style == "qwen2" else text
        for bos in (True, False):
            assert ours.encode(text, add_bos=bos) == ref.tokenize(theirs.encode(), add_bos=bos, special=True), text


# ---- (c) chat templates ------------------------------------------------------------------------------------------
RICH_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(n=0) %}{% for m in messages %}"
    "{% if m['role'] == 'system' and not loop.first %}{{ raise_exception('system must come first') }}{% endif %}"
    "{% if m['role'] == 'tool' %}{% continue %}{% endif %}{% set ns.n = ns.n + 1 %}"
    "[{{ ns.n }}|{{ m['role'] }}]\n  {{ m['content'] | trim }}{% if m.meta is defined %} {{ m.meta | tojson }}"
    "{% endif %}{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}[assistant]\n{% endif %}")


def test_chat_rendering_matches_transformers(tmp_path):
    from transformers import AutoTokenizer

    make_tiny_tokenizer(tmp_path)  # saves a chat template with the tokenizer
    meta = gguf_meta(tmp_path, 320, tmp_path)
    ref = AutoTokenizer.from_pretrained(tmp_path)
    messages = [{"role": "system", "content": "  Be brief. "}, {"role": "user", "content": "Héllo <b>&</b>",
                                                                 "meta": {"lang": "ελληνικά", "n": [1, 2.5]}},
                {"role": "tool", "content": "skipped"}, {"role": "assistant", "content": "Hi!"}]
    for template in (meta[Key.CHAT_TEMPLATE], RICH_TEMPLATE):
        for gen in (True, False):
            want = ref.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=gen)
            assert render_chat(template, messages, "<s>", "</s>", add_generation_prompt=gen) == want
    with pytest.raises(ChatTemplateError, match="system must come first"):
        render_chat(RICH_TEMPLATE, messages[1:] + messages[:1])


def test_chat_without_template():
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(ChatTemplateError, match="no chat template"):
        render_chat(None, messages)
    assert render_chat("", messages, fallback=True) == render_chat(CHATML_TEMPLATE, messages) \
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ChatTemplateError, match="list of dicts"):
        render_chat(CHATML_TEMPLATE, "not a list")
    with pytest.raises(ChatTemplateError, match="compile"):
        render_chat("{% for %}", messages)
    with pytest.raises(ChatTemplateError):  # the sandbox holds
        render_chat("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}", messages)


# ---- (d) what the converter and the runtime refuse -----------------------------------------------------------------
@pytest.mark.parametrize("pre, named", [
    ({"type": "Whitespace"}, "Whitespace"),
    ({"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}, "add_prefix_space"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated",
                                             "invert": False}, {"type": "ByteLevel", "use_regex": False}]}, "Split"),
])
def test_unsupported_pretokenizer_is_an_error(tmp_path, pre, named):
    make_tiny_tokenizer(tmp_path)
    tj = json.loads((tmp_path / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = pre
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(ValueError, match=f"unsupported pre-tokenizer .*{named}"):
        gguf_meta(tmp_path, 320, tmp_path)


def split_pre(regex: str) -> dict:
    """tokenizer.json's pre_tokenizer for a Split regex then ByteLevel, as Llama 3's and Qwen2's files spell it."""
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}


QWEN2_PRE = split_pre(QWEN2_REGEX)


@pytest.mark.parametrize("normalizer, pre, ignore_merges, result", [
    ({"type": "NFC"}, QWEN2_PRE, False, ("gpt2", "qwen2")),  # Qwen2's tokenizer.json, as shipped
    ({"type": "NFC"}, QWEN2_PRE, None, ("gpt2", "qwen2")),  # older files lack ignore_merges
    # The runtime applies NFC for "qwen2" and nothing else: any other normalizer would encode differently.
    (None, QWEN2_PRE, False, "unsupported normalizer none for byte-level BPE with the qwen2 pre-tokenizer"),
    ({"type": "NFKC"}, QWEN2_PRE, False, r"unsupported normalizer NFKC\(\) .*\(expected NFC\)"),
    ({"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]}, QWEN2_PRE, False,
     "unsupported normalizer Sequence"),
    ({"type": "NFC"}, {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, False,
     r"unsupported normalizer NFC\(\) .*gpt-2 pre-tokenizer \(expected none\)"),
    # llama.cpp's qwen2 merges as the merges say; only the Llama 3 group takes whole-word vocabulary hits.
    ({"type": "NFC"}, QWEN2_PRE, True, "ignore_merges with the qwen2 pre-tokenizer is not supported"),
    (None, split_pre(LLAMA3_REGEX), True, ("gpt2", "llama-bpe")),  # the one regex difference: \p{N}{1,3}
])
def test_byte_level_normalizer_and_merges(normalizer, pre, ignore_merges, result):
    model = {"type": "BPE", "vocab": {}, "merges": []}
    if ignore_merges is not None:
        model["ignore_merges"] = ignore_merges
    tj = {"model": model, "normalizer": normalizer, "pre_tokenizer": pre}
    if isinstance(result, tuple):
        assert tokenizer_kind(tj) == result
    else:
        with pytest.raises(ValueError, match=result):
            tokenizer_kind(tj)


def test_converter_reads_the_configs(tmp_path):
    """tokenizer_config.json's add_bos_token overrides the post-processor; named chat templates give "default";
    ids come from generation_config.json when tokenizer_config.json names no token; the vocabulary must fit."""
    make_tiny_tokenizer(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg.pop("eos_token", None)
    cfg.update(add_bos_token=True, chat_template=[{"name": "tool_use", "template": "T"},
                                                  {"name": "default", "template": "{{ messages[0]['content'] }}"}])
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    (tmp_path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, 0]}))
    meta = gguf_meta(tmp_path, 320, tmp_path)
    assert meta[Key.ADD_BOS] and meta[Key.CHAT_TEMPLATE] == "{{ messages[0]['content'] }}"
    assert meta[Key.EOS_ID] == 2 and Tokenizer.from_metadata(meta).encode("a")[0] == meta[Key.BOS_ID]
    with pytest.raises(ValueError, match="does not fit the model.s 300 embeddings"):
        gguf_meta(tmp_path, 300, tmp_path)
    cfg["chat_template"] = "{% if %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not compile"):
        gguf_meta(tmp_path, 320, tmp_path)


def test_runtime_refuses_bad_metadata():
    meta = {Key.TOKENIZER_MODEL: "gpt2", Key.TOKENIZER_PRE: "gpt-2", Key.TOKENS: ["a", "b", "ab"],
            Key.MERGES: ["a b"]}
    tok = Tokenizer.from_metadata(meta)
    assert tok.encode("ab", add_bos=False) == [2] and tok.decode([2, 0]) == "aba"
    for bad in (7, -1, 2.0, None):
        with pytest.raises(ValueError, match=f"token id {bad!r}"):
            tok.decode([bad])
        with pytest.raises(ValueError, match=f"token id {bad!r}"):
            tok.token_bytes(bad)
    cases = {"is not two known tokens": {Key.MERGES: ["a zz"]}, "not supported": {Key.TOKENIZER_MODEL: "bert"},
             "'default' is not supported": {Key.TOKENIZER_PRE: "default"}, "is not a token id": {Key.BOS_ID: 3},
             "one per token": {Key.TOKEN_TYPE: [1, 1]}, "non-empty list of strings": {Key.TOKENS: []}}
    for message, change in cases.items():
        with pytest.raises(ValueError, match=message):
            Tokenizer.from_metadata({**meta, **change})
    with pytest.raises(ValueError, match="tokenizer.ggml.pre: missing or not a string"):
        Tokenizer.from_metadata({k: v for k, v in meta.items() if k != Key.TOKENIZER_PRE})


def test_our_key_names_are_gguf_pys():
    """The converter writes through gguf-py's named methods; the runtime reads our constants: they must agree."""
    t = gguf.Keys.Tokenizer
    pairs = [(Key.TOKENIZER_MODEL, t.MODEL), (Key.TOKENIZER_PRE, t.PRE), (Key.TOKENS, t.LIST),
             (Key.TOKEN_TYPE, t.TOKEN_TYPE), (Key.SCORES, t.SCORES), (Key.MERGES, t.MERGES), (Key.BOS_ID, t.BOS_ID),
             (Key.EOS_ID, t.EOS_ID), (Key.UNK_ID, t.UNK_ID), (Key.PAD_ID, t.PAD_ID), (Key.EOT_ID, t.EOT_ID),
             (Key.ADD_BOS, t.ADD_BOS), (Key.ADD_EOS, t.ADD_EOS), (Key.ADD_SPACE_PREFIX, t.ADD_PREFIX),
             (Key.CHAT_TEMPLATE, t.CHAT_TEMPLATE)]
    assert [ours for ours, _ in pairs] == [theirs for _, theirs in pairs]
