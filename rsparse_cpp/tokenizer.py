"""Tokenizer rebuilt from a GGUF's own tokenizer.ggml.* metadata (no HF files at run time).

The `tokenizers` library does the work; this module rebuilds the pipeline that llama.cpp reads from the same keys:

- "gpt2": byte-level BPE with the merges stored in the file and the pre-tokenizer named by tokenizer.ggml.pre
  (the names are llama.cpp's; PRE_TOKENIZERS lists those we support). The name also implies the normalizer:
  NFC for "qwen2" (PRE_NORMALIZERS), none for the others.
- "llama": SentencePiece-style BPE with byte fallback. The file stores tokens and scores, not merges; a merge
  "a b" exists when a, b and a+b are all normal tokens, and merges with a higher-scoring result apply first
  (SentencePiece's and llama.cpp's rule). Spaces become "▁", with one prepended to each run of text when
  tokenizer.ggml.add_space_prefix is true (llama.cpp prefixes the text and every piece after a special token).

BOS: `encode(add_bos=True)` prepends BOS only when the model wants one: tokenizer.ggml.add_bos_token when the file
has it, else llama.cpp's default (true for "llama" and for the Llama-3 pre-tokenizers, false for other "gpt2").
"""
from __future__ import annotations

import codecs
import threading
from functools import lru_cache

import numpy as np
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from .constants import Key, TokenType

# Llama 3's split regex, as its tokenizer.json spells it (llama.cpp's "llama-bpe" regex says the same thing).
LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")

# Qwen2's split regex (Qwen1.5, Qwen2, Qwen2.5, Qwen3), as its tokenizer.json spells it: Llama 3's with digits
# taken one at a time (\p{N}, not \p{N}{1,3}). llama.cpp's "qwen2" regex says the same thing.
QWEN2_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
               "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")

PRE_GPT2, PRE_SMOLLM, PRE_LLAMA3, PRE_DEFAULT = "gpt-2", "smollm", "llama-bpe", "default"
PRE_QWEN2 = "qwen2"  # no ignore_merges and no BOS by default in llama.cpp, as in Qwen2's tokenizer.json
# llama.cpp treats these names as one group: Llama 3's regex, whole-word vocabulary hits win over merges
# (ignore_merges) and BOS is added by default.
LLAMA3_GROUP = frozenset({PRE_LLAMA3, "llama3", "llama-v3"})
PRE_TOKENIZERS = frozenset({PRE_GPT2, PRE_SMOLLM, PRE_QWEN2}) | LLAMA3_GROUP  # for "gpt2"; "llama" ignores it
# The normalizer (tokenizer.json's type name) each byte-level pre-tokenizer name implies; the others have none.
# llama.cpp normalizes no byte-level text, but Qwen2's tokenizer.json composes it (NFC) before splitting, and the
# model was trained on that: we do the same. The two differ only on text that is not already NFC.
PRE_NORMALIZERS = {PRE_QWEN2: "NFC"}

# Texts llama.cpp recognises as end-of-turn when the file names no tokenizer.ggml.eot_token_id; first found wins.
EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>", "<EOT>")


class TokenizerError(ValueError):
    """The GGUF's tokenizer metadata is missing, inconsistent or of an unsupported kind."""


@lru_cache(maxsize=1)
def byte_level_chars() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: stand-in character -> byte. Printable Latin-1 bytes stand for
    themselves; the other 68 bytes are given the characters from U+0100 on, in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(0x100 + k): b for k, b in enumerate(others)})
    return table


def pre_tokenizer_for(pre: str):
    """The `tokenizers` pre-tokenizer for a llama.cpp tokenizer.ggml.pre name (byte-level "gpt2" models)."""
    if pre == PRE_GPT2:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == PRE_SMOLLM:  # llama.cpp: "\p{N}" first, then GPT-2's regex
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if pre in LLAMA3_GROUP:
        return _split_then_bytes(LLAMA3_SPLIT)
    if pre == PRE_QWEN2:
        return _split_then_bytes(QWEN2_SPLIT)
    raise TokenizerError(f"{Key.TOKENIZER_PRE}: {pre!r} is not supported for byte-level BPE "
                         f"(supported: {', '.join(sorted(PRE_TOKENIZERS))})")


def _split_then_bytes(regex: str):
    """Pre-tokens split by `regex`, their bytes then mapped to GPT-2's characters (ByteLevel's own regex off)."""
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def normalizer_for(pre: str):
    """The `tokenizers` normalizer that PRE_NORMALIZERS gives a byte-level pre-tokenizer name, or None."""
    return normalizers.NFC() if PRE_NORMALIZERS.get(pre) == "NFC" else None


def spm_merges(tokens: list[str], scores, types) -> list[tuple[str, str]]:
    """SentencePiece BPE as merges: every split a|b of a normal token into two normal tokens, the merges making
    higher-scoring tokens first (ties: lower id, then the split further left)."""
    normal = {t: i for i, t in enumerate(tokens) if types[i] == TokenType.NORMAL}
    found = []
    for t, i in normal.items():
        for cut in range(1, len(t)):
            if t[:cut] in normal and t[cut:] in normal:
                found.append((-float(scores[i]), i, cut, t[:cut], t[cut:]))
    found.sort()
    return [(a, b) for *_, a, b in found]


def _ids_array(value, n: int, key: str, default: int) -> np.ndarray:
    arr = np.full(n, default, np.int64) if value is None else np.asarray(value)
    if arr.shape != (n,) or not np.issubdtype(arr.dtype, np.number):
        raise TokenizerError(f"{key}: expected {n} numbers, one per token")
    return arr


class Tokenizer:
    """Text <-> token ids for one GGUF. Build it with `Tokenizer.from_metadata(meta)`."""

    def __init__(self, hf: HFTokenizer, tokens: list[str], types: np.ndarray, kind: str, pre: str | None,
                 ids: dict[str, int | None], add_bos: bool, add_space_prefix: bool):
        self._hf, self._lock = hf, threading.Lock()
        self.tokens, self.types, self.kind, self.pre = tokens, types, kind, pre
        self.bos_id, self.eos_id, self.eot_id = ids["bos"], ids["eos"], ids["eot"]
        self.unk_id, self.pad_id = ids["unk"], ids["pad"]
        self.add_bos, self.add_space_prefix = add_bos, add_space_prefix
        self.vocab_size = len(tokens)
        self.special_ids = frozenset(int(i) for i in np.flatnonzero(types == TokenType.CONTROL))
        self._hidden = frozenset(int(i) for i in np.flatnonzero(np.isin(
            types, (TokenType.CONTROL, TokenType.UNKNOWN, TokenType.UNUSED))))  # not text unless asked for
        self._bytes = [self._raw_bytes(i) for i in range(self.vocab_size)]

    @classmethod
    def from_metadata(cls, meta: dict) -> "Tokenizer":
        """`meta`: GGUF key -> value (str, int, float, bool; list[str]; list or numpy array of numbers)."""
        def need(key):
            if key not in meta:
                raise TokenizerError(f"{key}: missing from the GGUF")
            return meta[key]

        kind = need(Key.TOKENIZER_MODEL)
        tokens = need(Key.TOKENS)
        if not isinstance(tokens, (list, tuple)) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise TokenizerError(f"{Key.TOKENS}: expected a non-empty list of strings")
        tokens, n = list(tokens), len(tokens)
        types = _ids_array(meta.get(Key.TOKEN_TYPE), n, Key.TOKEN_TYPE, TokenType.NORMAL).astype(np.int64)
        types[types == 0] = TokenType.NORMAL  # llama.cpp's "undefined"
        if ((types < TokenType.NORMAL) | (types > TokenType.BYTE)).any():
            raise TokenizerError(f"{Key.TOKEN_TYPE}: values must be llama.cpp token types 0..6")

        def token_id(key: str) -> int | None:
            v = meta.get(key)
            if v is None:
                return None
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) < n:
                raise TokenizerError(f"{key}: {v!r} is not a token id in [0, {n})")
            return int(v)

        ids = {name: token_id(key) for name, key in (("bos", Key.BOS_ID), ("eos", Key.EOS_ID), ("eot", Key.EOT_ID),
                                                     ("unk", Key.UNK_ID), ("pad", Key.PAD_ID))}
        if ids["eot"] is None:  # as llama.cpp does: a control token with a well-known end-of-turn text
            control = {tokens[i]: i for i in np.flatnonzero(types == TokenType.CONTROL)[::-1]}
            ids["eot"] = next((int(control[t]) for t in EOT_TEXTS if t in control), None)
        vocab = {t: i for i, t in enumerate(tokens)}
        pre = meta.get(Key.TOKENIZER_PRE)
        space_prefix = False
        if kind == "gpt2":
            if not isinstance(pre, str):
                raise TokenizerError(f"{Key.TOKENIZER_PRE}: missing or not a string; byte-level BPE needs the "
                                     f"pre-tokenizer's name")
            merges = need(Key.MERGES)
            if not isinstance(merges, (list, tuple)) or not all(isinstance(m, str) for m in merges):
                raise TokenizerError(f"{Key.MERGES}: expected a list of strings")
            pairs = [tuple(m.split(" ")) for m in merges]
            bad = next((m for m in pairs if len(m) != 2 or m[0] not in vocab or m[1] not in vocab), None)
            if bad is not None:
                raise TokenizerError(f"{Key.MERGES}: merge {' '.join(bad)!r} is not two known tokens")
            hf = HFTokenizer(models.BPE(vocab, pairs, ignore_merges=pre in LLAMA3_GROUP))
            hf.pre_tokenizer = pre_tokenizer_for(pre)
            normalizer = normalizer_for(pre)
            if normalizer is not None:  # older tokenizers (0.19) refuse None here
                hf.normalizer = normalizer
            hf.decoder = decoders.ByteLevel()
            default_bos = pre in LLAMA3_GROUP
        elif kind == "llama":
            scores = _ids_array(need(Key.SCORES), n, Key.SCORES, 0).astype(np.float64)
            unk = tokens[ids["unk"]] if ids["unk"] is not None else None
            hf = HFTokenizer(models.BPE(vocab, spm_merges(tokens, scores, types), unk_token=unk, fuse_unk=True,
                                        byte_fallback=True))
            space_prefix = bool(meta.get(Key.ADD_SPACE_PREFIX, True))  # llama.cpp's default for SentencePiece
            steps = [normalizers.Prepend("▁")] if space_prefix else []
            hf.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "▁")])
            default_bos = True
        else:
            raise TokenizerError(f"{Key.TOKENIZER_MODEL}: {kind!r} is not supported (supported: gpt2, llama)")
        # Control tokens are matched whole only when asked (encode(special=True)); user-defined ones always,
        # as llama.cpp does. normalized=False: they match the raw text, before spaces become "▁".
        def added(mask, special: bool) -> list[AddedToken]:
            return [AddedToken(tokens[i], special=special, normalized=False) for i in np.flatnonzero(mask) if tokens[i]]

        hf.add_special_tokens(added(np.isin(types, (TokenType.CONTROL, TokenType.UNKNOWN)), True))
        hf.add_tokens(added(types == TokenType.USER_DEFINED, False))
        add_bos = bool(meta.get(Key.ADD_BOS, default_bos))
        return cls(hf, tokens, types, kind, pre, ids, add_bos, space_prefix)

    # ---- text -> ids ----------------------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        """Token ids for `text`. `special`: control tokens written in the text (e.g. "<|im_start|>") are matched
        as themselves; else they are plain text. BOS is prepended when `add_bos` and the model wants one."""
        if not isinstance(text, str):
            raise TypeError(f"encode() takes str, not {type(text).__name__}")
        with self._lock:  # encode_special_tokens is state on the shared tokenizers object
            self._hf.encode_special_tokens = not special
            ids = self._hf.encode(text, add_special_tokens=False).ids
        if add_bos and self.add_bos and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        return ids

    # ---- ids -> text ----------------------------------------------------------------------------------------
    def token_bytes(self, token_id: int, special: bool = False) -> bytes:
        """The bytes token `token_id` stands for (a piece of UTF-8, possibly a partial character). Control, unknown
        and unused tokens give b"" unless `special`, then their text."""
        i = self._check(token_id)
        return b"" if i in self._hidden and not special else self._bytes[i]

    def token_text(self, token_id: int | None) -> str:
        """The token as written in the vocabulary ("" for None), e.g. for a chat template's bos_token."""
        return "" if token_id is None else self.tokens[self._check(token_id)]

    def decode(self, ids, skip_special: bool = False) -> str:
        """The text of `ids`; bytes that are not valid UTF-8 become U+FFFD, as in the HF tokenizers."""
        raw = b"".join(self.token_bytes(i, special=not skip_special) for i in ids)
        return self._lstrip(raw.decode("utf-8", errors="replace"))

    def _lstrip(self, text: str) -> str:
        # SentencePiece's prefix space belongs to the tokenizer, not the text (the HF decoders strip it too)
        return text[1:] if self.add_space_prefix and text.startswith(" ") else text

    def _check(self, token_id) -> int:
        if isinstance(token_id, (bool, np.bool_)) or not isinstance(token_id, (int, np.integer)) \
                or not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id!r} outside the vocabulary [0, {self.vocab_size})")
        return int(token_id)

    def _raw_bytes(self, i: int) -> bytes:
        t, ty = self.tokens[i], self.types[i]
        if ty == TokenType.BYTE and len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            return bytes([int(t[3:5], 16)])
        if ty != TokenType.NORMAL:  # control and user-defined tokens are stored as plain text
            return t.encode("utf-8")
        if self.kind == "gpt2":
            table = byte_level_chars()
            return bytes(table[c] for c in t) if all(c in table for c in t) else t.encode("utf-8")
        return t.replace("▁", " ").encode("utf-8")

    def detokenizer(self, skip_special: bool = False, at_start: bool = True) -> "Detokenizer":
        return Detokenizer(self, skip_special=skip_special, at_start=at_start)


class Detokenizer:
    """Streaming ids -> text that never splits a UTF-8 character: bytes of an incomplete character wait for the
    next token. The pieces of one stream, `flush()` included, concatenate to `decode(ids)`.

    `at_start`: the stream begins the text, so a SentencePiece prefix space is dropped as decode() drops it;
    pass False when streaming a continuation (generated tokens after a prompt), whose leading space is real."""

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False, at_start: bool = True):
        self._tok, self._special = tokenizer, not skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._strip = at_start and tokenizer.add_space_prefix

    def push(self, token_id: int) -> str:
        """Text completed by this token ("" while a character is still incomplete)."""
        return self._emit(self._utf8.decode(self._tok.token_bytes(token_id, special=self._special)))

    def flush(self) -> str:
        """End of stream: bytes of an unfinished character come out as U+FFFD."""
        return self._emit(self._utf8.decode(b"", final=True))

    def _emit(self, text: str) -> str:
        if self._strip and text:
            self._strip = False
            text = self._tok._lstrip(text)
        return text
