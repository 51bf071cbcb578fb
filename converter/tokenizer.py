"""HF tokenizer (tokenizer.json + tokenizer_config.json) -> llama.cpp's tokenizer.ggml.* metadata.

Two families: byte-level BPE ("gpt2": SmolLM2, Llama 3) keeps its merges; SentencePiece-style BPE with byte
fallback ("llama": Llama 2, Mistral) is stored as llama.cpp expects it, tokens with scores, where a token's score is
minus (1 + the rank of the merge that makes it) (the runtime rebuilds the merges from those scores).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import gguf

from rsparse_cpp.constants import Key, TokenType

from .checkpoint import CheckpointError

LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _flatten(node: dict | None) -> list[dict]:
    if not node:
        return []
    if node.get("type") == "Sequence":
        key = "pretokenizers" if "pretokenizers" in node else "normalizers" if "normalizers" in node else "decoders"
        return [n for child in node.get(key, []) for n in _flatten(child)]
    return [node]


def detect_family(tj: dict) -> tuple[str, str]:
    """(tokenizer.ggml.model, tokenizer.ggml.pre) for a tokenizer.json; ValueError for anything else."""
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(f"tokenizer model {model.get('type')!r} is not supported (only BPE)")
    pre = _flatten(tj.get("pre_tokenizer"))
    kinds = [p.get("type") for p in pre]
    if model.get("byte_fallback") or "Metaspace" in kinds:
        return "llama", "default"
    if kinds == ["ByteLevel"] and pre[0].get("use_regex", True):
        return "gpt2", "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and pre[0].get("individual_digits") and pre[1].get("use_regex", True):
        return "gpt2", "smollm"
    if kinds == ["Split", "ByteLevel"] and pre[0].get("pattern", {}).get("Regex") == LLAMA3_SPLIT:
        return "gpt2", "llama-bpe"
    raise ValueError(f"unsupported pre-tokenizer {tj.get('pre_tokenizer')!r}: known are gpt-2, smollm, "
                     f"llama-bpe (byte-level) and SentencePiece-style")


def _adds_bos(tj: dict, cfg: dict, bos: str | None) -> bool:
    if "add_bos_token" in cfg:
        return bool(cfg["add_bos_token"])
    post = tj.get("post_processor") or {}
    for p in _flatten(post) if post.get("type") == "Sequence" else [post]:
        if p.get("type") == "TemplateProcessing":
            first = (p.get("single") or [{}])[0]
            return "SpecialToken" in first and first["SpecialToken"].get("id") == bos
    return False


def write_tokenizer(w: gguf.GGUFWriter, hf_dir: Path, vocab_size: int) -> None:
    hf_dir = Path(hf_dir)
    tj = _load_json(hf_dir / "tokenizer.json")
    if not tj:
        raise CheckpointError(f"{hf_dir}: no tokenizer.json (a fast tokenizer is required)")
    cfg = _load_json(hf_dir / "tokenizer_config.json")
    try:
        family, pre = detect_family(tj)
    except ValueError as e:
        raise CheckpointError(f"{hf_dir / 'tokenizer.json'}: {e}") from None

    vocab: dict[str, int] = dict(tj["model"]["vocab"])
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    for content, t in added.items():
        vocab[content] = t["id"]
    n = max(vocab_size, max(vocab.values()) + 1)
    tokens, types = [f"[PAD{i}]" for i in range(n)], [TokenType.UNUSED] * n
    for text, i in vocab.items():
        tokens[i] = text
        if text in added:
            types[i] = TokenType.CONTROL if added[text].get("special") else TokenType.USER_DEFINED
        elif family == "llama" and re.fullmatch(r"<0x[0-9A-F]{2}>", text):
            types[i] = TokenType.BYTE
        elif family == "llama" and text == tj["model"].get("unk_token"):
            types[i] = TokenType.UNKNOWN
        else:
            types[i] = TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]

    w.add_string(Key.TOKENIZER_MODEL, family)
    w.add_string(Key.TOKENIZER_PRE, pre)
    w.add_array(Key.TOKENS, tokens)
    w.add_array(Key.TOKEN_TYPE, [int(t) for t in types])
    if family == "gpt2":
        w.add_array(Key.MERGES, merges)
    else:  # SentencePiece style: score = -rank of the merge producing the token, 0 for base symbols
        scores = [0.0] * n
        for rank, m in reversed(list(enumerate(merges))):  # the lowest rank making a token wins
            merged = m.replace(" ", "")
            if merged in vocab:
                scores[vocab[merged]] = -float(rank + 1)
        w.add_array(Key.SCORES, scores)
        normalizers = [x.get("type") for x in _flatten(tj.get("normalizer"))]
        pre_nodes = _flatten(tj.get("pre_tokenizer"))
        space_prefix = "Prepend" in normalizers or any(
            p.get("type") == "Metaspace" and p.get("prepend_scheme", "always") != "never" for p in pre_nodes)
        w.add_bool(Key.ADD_SPACE_PREFIX, space_prefix)

    def special_id(name: str) -> int | None:
        tok = cfg.get(name)
        tok = tok.get("content") if isinstance(tok, dict) else tok
        return vocab.get(tok) if tok else None

    ids = {Key.BOS_ID: special_id("bos_token"), Key.EOS_ID: special_id("eos_token"),
           Key.UNK_ID: special_id("unk_token"), Key.PAD_ID: special_id("pad_token")}
    for key, i in ids.items():
        if i is not None:
            w.add_uint32(key, i)
    bos_text = tokens[ids[Key.BOS_ID]] if ids[Key.BOS_ID] is not None else None
    w.add_bool(Key.ADD_BOS, _adds_bos(tj, cfg, bos_text))
    w.add_bool(Key.ADD_EOS, bool(cfg.get("add_eos_token", False)))

    template = cfg.get("chat_template")
    if isinstance(template, list):  # several named templates: llama.cpp uses the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    if not template and (hf_dir / "chat_template.jinja").is_file():
        template = (hf_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if template:
        w.add_string(Key.CHAT_TEMPLATE, template)
