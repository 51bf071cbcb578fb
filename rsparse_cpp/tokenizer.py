"""Tokenizer built from the GGUF's own tokenizer.ggml.* metadata (no HF files at run time).

The `tokenizers` library does the work; this module only rebuilds the pipeline llama.cpp describes: byte-level BPE
with a named pre-tokenizer ("gpt2"), or SentencePiece-style BPE with byte fallback ("llama"), whose merges are
recovered from the token scores (a merge a+b exists when a, b and ab are all tokens; higher score merges first).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from .constants import Key, TokenType

LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


class TokenizerError(ValueError):
    """The GGUF's tokenizer metadata is missing, inconsistent or of an unsupported kind."""


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable stand-in character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _pre_tokenizer(pre: str):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("gpt-2", "default"):
        return byte_level
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre == "llama-bpe":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    raise TokenizerError(f"unsupported tokenizer.ggml.pre {pre!r} (supported: gpt-2, smollm, llama-bpe, default)")


def _spm_merges(tokens: list[str], scores, types) -> list[tuple[str, str]]:
    vocab = {t: i for i, t in enumerate(tokens)}
    found = []
    for i, t in enumerate(tokens):
        if types[i] != TokenType.NORMAL or len(t) < 2:
            continue
        for cut in range(1, len(t)):
            a, b = t[:cut], t[cut:]
            if a in vocab and b in vocab:
                found.append((-float(scores[i]), i, a, b))
    found.sort()
    return [(a, b) for _, _, a, b in found]


class Tokenizer:
    def __init__(self, hf: HFTokenizer, tokens: list[str], types, kind: str, bos_id, eos_id, eot_id, add_bos: bool):
        self._hf, self.tokens, self.types, self.kind = hf, tokens, types, kind
        self.bos_id, self.eos_id, self.eot_id, self.add_bos = bos_id, eos_id, eot_id, add_bos
        self.vocab_size = len(tokens)
        self.special_ids = frozenset(i for i, t in enumerate(types) if t == TokenType.CONTROL)
        self._bytes = [self._token_bytes(i) for i in range(self.vocab_size)]

    @classmethod
    def from_metadata(cls, meta: dict) -> "Tokenizer":
        def need(key):
            if key not in meta:
                raise TokenizerError(f"{key}: missing from the GGUF")
            return meta[key]

        kind = need(Key.TOKENIZER_MODEL)
        tokens = list(need(Key.TOKENS))
        n = len(tokens)
        types = np.asarray(meta.get(Key.TOKEN_TYPE, np.full(n, TokenType.NORMAL)), dtype=np.int64)
        if len(types) != n:
            raise TokenizerError(f"{Key.TOKEN_TYPE}: {len(types)} entries for {n} tokens")

        def tid(key):
            v = meta.get(key)
            if v is None:
                return None
            if not isinstance(v, (int, np.integer)) or not 0 <= int(v) < n:
                raise TokenizerError(f"{key}: {v!r} is not a token id in [0, {n})")
            return int(v)

        bos, eos, eot, unk = tid(Key.BOS_ID), tid(Key.EOS_ID), tid(Key.EOT_ID), tid(Key.UNK_ID)
        vocab = {t: i for i, t in enumerate(tokens)}
        if kind == "gpt2":
            merges = [tuple(m.split(" ", 1)) for m in need(Key.MERGES)]
            bad = next((m for m in merges if len(m) != 2 or m[0] not in vocab or m[1] not in vocab), None)
            if bad is not None:
                raise TokenizerError(f"{Key.MERGES}: merge {' '.join(bad)!r} uses an unknown token")
            hf = HFTokenizer(models.BPE(vocab, merges, fuse_unk=False))
            hf.pre_tokenizer = _pre_tokenizer(meta.get(Key.TOKENIZER_PRE, "gpt-2"))
            hf.decoder = decoders.ByteLevel()
            add_bos = bool(meta.get(Key.ADD_BOS, False))
        elif kind == "llama":
            scores = np.asarray(need(Key.SCORES), dtype=np.float64)
            if len(scores) != n:
                raise TokenizerError(f"{Key.SCORES}: {len(scores)} entries for {n} tokens")
            unk_tok = tokens[unk] if unk is not None else None
            hf = HFTokenizer(models.BPE(vocab, _spm_merges(tokens, scores, types), unk_token=unk_tok,
                                        fuse_unk=True, byte_fallback=True))
            norms = [normalizers.Replace(" ", "▁")]
            if meta.get(Key.ADD_SPACE_PREFIX, True):
                norms.insert(0, normalizers.Prepend("▁"))
            hf.normalizer = normalizers.Sequence(norms)
            hf.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                            decoders.Strip(" ", 1, 0)])
            add_bos = bool(meta.get(Key.ADD_BOS, True))
        else:
            raise TokenizerError(f"{Key.TOKENIZER_MODEL}: {kind!r} is not supported (supported: gpt2, llama)")
        specials = [AddedToken(tokens[i], special=True, normalized=False) for i in range(n)
                    if types[i] in (TokenType.CONTROL, TokenType.USER_DEFINED)]
        hf.add_special_tokens(specials)
        return cls(hf, tokens, types, kind, bos, eos, eot, add_bos)

    # ---- text <-> ids ---------------------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        """`special`: match control tokens written in the text (e.g. "<|im_start|>"); else they are plain text.
        BOS is prepended when `add_bos` and the GGUF says this model wants one (tokenizer.ggml.add_bos_token)."""
        self._hf.encode_special_tokens = not special
        ids = self._hf.encode(text, add_special_tokens=False).ids
        if add_bos and self.add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids, skip_special: bool = False) -> str:
        self._check(ids)
        return b"".join(self.token_bytes(i, special=not skip_special) for i in ids).decode("utf-8", errors="replace") \
            if self.kind == "gpt2" else self._hf.decode(list(ids), skip_special_tokens=skip_special)

    def token_text(self, i: int | None) -> str:
        """The token as written in the vocabulary ("" for None)."""
        if i is None:
            return ""
        self._check([i])
        return self.tokens[i]

    def token_bytes(self, i: int, special: bool = False) -> bytes:
        """The bytes token i stands for, for streaming; control tokens give b"" unless `special`."""
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} outside the vocabulary [0, {self.vocab_size})")
        if self.types[i] == TokenType.CONTROL:
            return self.tokens[i].encode() if special else b""
        return self._bytes[i]

    def _token_bytes(self, i: int) -> bytes:
        t, ty = self.tokens[i], self.types[i]
        if ty in (TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNUSED):
            return t.encode()
        if self.kind == "gpt2":
            table = _byte_decoder()
            return bytes(table[c] for c in t) if all(c in table for c in t) else t.encode()
        if ty == TokenType.BYTE:
            return bytes([int(t[3:5], 16)])
        return t.replace("▁", " ").encode()

    def _check(self, ids) -> None:
        for i in ids:
            if not 0 <= int(i) < self.vocab_size:
                raise ValueError(f"token id {i} outside the vocabulary [0, {self.vocab_size})")
