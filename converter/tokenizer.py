"""HF tokenizer folder -> llama.cpp's tokenizer.ggml.* metadata and tokenizer.chat_template.

Two families, told apart by tokenizer.json:

- byte-level BPE, "gpt2" (SmolLM2, Llama 3, Qwen2/2.5/3): tokens and merges as they are; tokenizer.ggml.pre names
  the pre-tokenizer the way llama.cpp does (gpt-2, smollm, llama-bpe, qwen2). A pre-tokenizer we cannot name is an
  error: a wrong name would make llama.cpp and our runtime split text differently from the model's training. The
  name also stands for the normalizer (NFC for qwen2, none for the others), so any other normalizer is an error too.
- SentencePiece-style BPE with byte fallback, "llama" (Llama 2, Mistral): stored as llama.cpp stores a
  tokenizer.model, tokens with scores and <0xXX> byte tokens, no merges. A token's score is minus the rank of the
  first merge that makes it, so "merge into the higher-scoring token first" (llama.cpp's rule, and our runtime's)
  replays the HF merge order.

The runtime half is rsparse_cpp.tokenizer; tests/test_tokenizer.py checks that the two agree with the HF tokenizer.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import gguf

from rsparse_cpp.chat import ChatTemplateError, compile_template
from rsparse_cpp.constants import TokenType
from rsparse_cpp.tokenizer import (EOT_TEXTS, LLAMA3_GROUP, LLAMA3_SPLIT, PRE_DEFAULT, PRE_GPT2, PRE_LLAMA3,
                                   PRE_NORMALIZERS, PRE_QWEN2, PRE_SMOLLM, QWEN2_SPLIT)

from .checkpoint import CheckpointError

BYTE_TOKEN = re.compile(r"<0x[0-9A-F]{2}>")


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _steps(node: dict | None) -> list[dict]:
    """The steps of a normalizer, pre-tokenizer or post-processor, Sequences flattened."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        children = next((node[k] for k in ("pretokenizers", "normalizers", "processors") if k in node), [])
        return [step for child in children for step in _steps(child)]
    return [node]


def _describe(node: dict | None) -> str:
    """A short readable name for an error message: Sequence[Digits(individual_digits=True), ByteLevel(...)]."""
    if not node:
        return "none"
    if node.get("type") == "Sequence":
        return "Sequence[" + ", ".join(_describe(s) for s in _steps(node)) + "]"
    args = ", ".join(f"{k}={v!r}" for k, v in node.items() if k != "type")
    return f"{node.get('type')}({args})"


def tokenizer_kind(tj: dict) -> tuple[str, str]:
    """(tokenizer.ggml.model, tokenizer.ggml.pre) for a parsed tokenizer.json; ValueError when unsupported."""
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"tokenizer model {model.get('type')!r} is not supported (only BPE)")
    pre, norm = _steps(tj.get("pre_tokenizer")), _steps(tj.get("normalizer"))
    kinds, norm_kinds = [p.get("type") for p in pre], [n.get("type") for n in norm]
    if model.get("byte_fallback"):  # SentencePiece style: spaces become "▁" in a normalizer or a Metaspace
        metaspace_ok = kinds == [] or (kinds == ["Metaspace"] and pre[0].get("replacement", "▁") == "▁")
        spaces_ok = norm_kinds in ([], ["Replace"], ["Prepend", "Replace"]) and all(
            n.get("prepend") == "▁" if n.get("type") == "Prepend"
            else (n.get("pattern") or {}).get("String") == " " and n.get("content") == "▁" for n in norm)
        if not (metaspace_ok and spaces_ok):
            raise ValueError(f"unsupported SentencePiece-style pipeline: pre-tokenizer "
                             f"{_describe(tj.get('pre_tokenizer'))}, normalizer {_describe(tj.get('normalizer'))}")
        return "llama", PRE_DEFAULT
    name = _byte_level_pre(pre)
    if name is None:
        raise ValueError(f"unsupported pre-tokenizer {_describe(tj.get('pre_tokenizer'))}: known are ByteLevel "
                         f"(gpt-2), Sequence[Digits(individual_digits), ByteLevel] (smollm), Llama 3's Split regex + "
                         f"ByteLevel (llama-bpe), Qwen2's Split regex + ByteLevel (qwen2), and SentencePiece-style "
                         f"BPE with byte fallback")
    # The runtime rebuilds the normalizer from the pre-tokenizer's name alone (llama.cpp applies none at all).
    want = PRE_NORMALIZERS.get(name)
    if norm_kinds != ([want] if want else []):
        raise ValueError(f"unsupported normalizer {_describe(tj.get('normalizer'))} for byte-level BPE with the "
                         f"{name} pre-tokenizer (expected {want or 'none'})")
    # Only llama.cpp's Llama 3 group takes a pre-token found in the vocabulary whole (ignore_merges); a file that
    # asks for it under another name would encode differently (Qwen2's own files say "ignore_merges": false).
    if model.get("ignore_merges") and name not in LLAMA3_GROUP:
        raise ValueError(f"ignore_merges with the {name} pre-tokenizer is not supported (llama.cpp merges there)")
    return "gpt2", name


def _byte_level_pre(pre: list[dict]) -> str | None:
    """llama.cpp's tokenizer.ggml.pre name for a byte-level BPE's pre-tokenizer steps; None when it has none."""
    kinds = [p.get("type") for p in pre]
    if any(p.get("add_prefix_space", False) for p in pre if p.get("type") == "ByteLevel"):
        return None  # llama.cpp never prefixes a space in byte-level BPE
    if kinds == ["ByteLevel"] and pre[0].get("use_regex", True):
        return PRE_GPT2
    if kinds == ["Digits", "ByteLevel"] and pre[0].get("individual_digits") and pre[1].get("use_regex", True):
        return PRE_SMOLLM
    if (kinds == ["Split", "ByteLevel"] and pre[0].get("behavior") == "Isolated" and not pre[0].get("invert")
            and not pre[1].get("use_regex", True)):
        # only these regexes, as written: whether another one splits text the same way is not ours to guess
        return {LLAMA3_SPLIT: PRE_LLAMA3, QWEN2_SPLIT: PRE_QWEN2}.get((pre[0].get("pattern") or {}).get("Regex"))
    return None


def cfg_text(cfg: dict, name: str, default: str | None = None) -> str | None:
    """A special token's text in tokenizer_config.json (a string, or an AddedToken dict)."""
    v = cfg.get(name, default)
    v = v.get("content") if isinstance(v, dict) else v
    return v if isinstance(v, str) else default


def _template_adds(tj: dict) -> tuple[str | None, str | None]:
    """The special tokens tokenizer.json's post-processor puts before and after a single sequence."""
    for step in _steps(tj.get("post_processor")):
        if step.get("type") == "TemplateProcessing":
            single = step.get("single") or []
            first = (single[0] if single else {}).get("SpecialToken", {}).get("id")
            last = (single[-1] if single else {}).get("SpecialToken", {}).get("id")
            return first, last
    return None, None


def _merge_pairs(model: dict) -> list[tuple[str, str]]:
    pairs = []
    for m in model.get("merges", []):
        pair = tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
        if len(pair) != 2:
            raise ValueError(f"merge {m!r} is not two tokens")
        pairs.append(pair)
    return pairs


def read_chat_template(hf_dir: Path, cfg: dict) -> str | None:
    """chat_template.jinja (what transformers saves now, and prefers), else tokenizer_config.json's
    "chat_template" (a string, or named templates of which llama.cpp uses "default"), else chat_template.json."""
    jinja = hf_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = cfg.get("chat_template") or _load_json(hf_dir / "chat_template.json").get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    if template is not None and not isinstance(template, str):
        raise CheckpointError(f"{hf_dir}: chat_template is neither a string nor a list of named templates")
    return template or None


def write_tokenizer(writer: gguf.GGUFWriter, hf_dir: Path, vocab_size: int) -> None:
    """Add the tokenizer of the HF checkpoint in `hf_dir` to `writer`; `vocab_size`: the model's embedding rows
    (tokens beyond the tokenizer's are written as unused "[PAD{i}]")."""
    hf_dir = Path(hf_dir)
    tj = _load_json(hf_dir / "tokenizer.json")
    if not tj:
        raise CheckpointError(f"{hf_dir}: no tokenizer.json (a fast tokenizer is required)")
    cfg = _load_json(hf_dir / "tokenizer_config.json")
    try:
        kind, pre = tokenizer_kind(tj)
        merges = _merge_pairs(tj["model"])
    except ValueError as e:
        raise CheckpointError(f"{hf_dir / 'tokenizer.json'}: {e}") from None

    # ---- the vocabulary: model tokens, then added tokens (which win when both name an id) -------------------
    vocab: dict[str, int] = dict(tj["model"].get("vocab", {}))
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    vocab.update({content: t["id"] for content, t in added.items()})
    bad = next((i for i in vocab.values() if not isinstance(i, int) or not 0 <= i < vocab_size), None)
    if bad is not None:
        raise CheckpointError(f"{hf_dir}: token id {bad!r} does not fit the model's {vocab_size} embeddings")
    tokens, types = [f"[PAD{i}]" for i in range(vocab_size)], [TokenType.UNUSED] * vocab_size
    seen: dict[int, str] = {}
    for text, i in vocab.items():
        if i in seen:
            raise CheckpointError(f"{hf_dir / 'tokenizer.json'}: tokens {seen[i]!r} and {text!r} share id {i}")
        seen[i] = tokens[i] = text
        if text in added:
            special = added[text].get("special")
            types[i] = TokenType.CONTROL if special else TokenType.USER_DEFINED
            if kind == "llama" and special and text == cfg_text(cfg, "unk_token", tj["model"].get("unk_token")):
                types[i] = TokenType.UNKNOWN  # as llama.cpp's own SentencePiece conversion marks <unk>
        elif kind == "llama" and BYTE_TOKEN.fullmatch(text):
            types[i] = TokenType.BYTE
        else:
            types[i] = TokenType.NORMAL

    writer.add_tokenizer_model(kind)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    if kind == "gpt2":
        writer.add_token_merges([f"{a} {b}" for a, b in merges])
        writer.add_add_space_prefix(False)
    else:
        writer.add_token_scores(_spm_scores(tokens, types, vocab, merges))
        writer.add_add_space_prefix(_spm_space_prefix(tj))

    # ---- special ids and whether encoding adds BOS/EOS ------------------------------------------------------
    gen = {**_load_json(hf_dir / "config.json"), **_load_json(hf_dir / "generation_config.json")}

    def special_id(name: str) -> int | None:
        i = vocab.get(cfg_text(cfg, f"{name}_token"))
        if i is None:  # the model's configs give ids (eos may be a list: the first is the main one)
            i = gen.get(f"{name}_token_id")
            i = i[0] if isinstance(i, list) and i else i
        return i if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size else None

    ids = {name: special_id(name) for name in ("bos", "eos", "unk", "pad")}
    if ids["unk"] is None and tj["model"].get("unk_token") in vocab:
        ids["unk"] = vocab[tj["model"]["unk_token"]]
    control = {tokens[i]: i for i in range(vocab_size) if types[i] == TokenType.CONTROL}
    ids["eot"] = next((control[t] for t in EOT_TEXTS if t in control), None)
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id),
                      ("eot", writer.add_eot_token_id)):
        if ids[name] is not None:
            add(ids[name])

    # tokenizer.json's post-processor is what the HF tokenizer does; tokenizer_config.json's add_*_token, when
    # present, overrides it (transformers' Llama tokenizers rebuild the post-processor from it, and llama.cpp's
    # converter reads it the same way).
    first, last = _template_adds(tj)
    for name, token, add in (("bos", first, writer.add_add_bos_token), ("eos", last, writer.add_add_eos_token)):
        flag = cfg.get(f"add_{name}_token")
        if not isinstance(flag, bool):
            flag = token is not None and ids[name] is not None and token == tokens[ids[name]]
        add(flag and ids[name] is not None)

    template = read_chat_template(hf_dir, cfg)
    if template:
        try:
            compile_template(template)
        except ChatTemplateError as e:
            raise CheckpointError(f"{hf_dir}: {e}") from None
        writer.add_chat_template(template)


def _spm_scores(tokens: list[str], types: list[int], vocab: dict[str, int],
                merges: list[tuple[str, str]]) -> list[float]:
    scores = [0.0] * len(tokens)
    made = set()
    for rank, (a, b) in enumerate(merges):
        i = vocab.get(a + b)
        if i is not None and i not in made:
            made.add(i)
            scores[i] = -float(rank + 1)
    # A normal token no merge makes should merge last: below every merge rank.
    for i, t in enumerate(tokens):
        if types[i] == TokenType.NORMAL and len(t) > 1 and i not in made:
            scores[i] = -float(len(merges) + 1)
    return scores


def _spm_space_prefix(tj: dict) -> bool:
    if any(n.get("type") == "Prepend" for n in _steps(tj.get("normalizer"))):
        return True
    for p in _steps(tj.get("pre_tokenizer")):
        if p.get("type") == "Metaspace":  # older files say add_prefix_space, newer ones prepend_scheme
            return p.get("prepend_scheme", "always" if p.get("add_prefix_space", True) else "never") != "never"
    return False
