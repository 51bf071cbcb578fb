"""The high-level API, named as llama-cpp-python names it: `Llama(model_path).create_completion(...)`.

Results are OpenAI-style dicts (or iterators of chunks with `stream=True`)."""
from __future__ import annotations

import os
import time
import uuid
from typing import Iterator

import numpy as np

from .chat import render_chat
from .constants import Key
from .generate import generate
from .model import ContextFullError, Model
from .sampler import SamplingParams
from .tokenizer import Tokenizer


def _utf8_safe_end(buf: bytes | bytearray, end: int) -> int:
    """Largest cut <= end that does not split a UTF-8 character."""
    for back in range(1, min(4, end) + 1):
        b = buf[end - back]
        if b & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        need = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4 if b >> 3 == 0b11110 else 1
        return end if back >= need else end - back
    return end


def _stop_prefix_len(buf: bytes | bytearray, stops: list[bytes]) -> int:
    """Length of the longest tail of buf that could still grow into a stop string: held back while streaming."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(buf)), best, -1):
            if buf.endswith(s[:k]):
                best = k
                break
    return best


class Llama:
    def __init__(self, model_path: str | os.PathLike, *, n_ctx: int = 512, n_batch: int = 512,
                 n_threads: int | None = None, seed: int | None = None, verbose: bool = False,
                 companion_path: str | os.PathLike | None = None, sparse: bool | None = None,
                 sparse_prefill: bool = False, device: str = "cpu"):
        """R-Sparse: the companion <model>.rsparse.gguf beside the base (or `companion_path`) is used for
        single-token decode when present; `sparse=False` runs densely, `sparse=True` requires a companion,
        `sparse_prefill=True` makes the prompt's tokens sparse too (see Model.load). `device="cuda"` (or "cuda:N")
        runs on an NVIDIA GPU through torch and the CUDA kernel (rsparse_cpp.gpu; needs torch with CUDA and a
        build with -DRSPARSE_CUDA=ON)."""
        self.model_path = str(model_path)
        if device == "cpu":
            self.model = Model.load(model_path, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch,
                                    companion=companion_path, sparse=sparse, sparse_prefill=sparse_prefill)
        elif device.startswith("cuda"):
            from .gpu import load

            self.model = load(model_path, device=device, n_ctx=n_ctx, n_batch=n_batch, companion=companion_path,
                              sparse=sparse, sparse_prefill=sparse_prefill)
        else:
            raise ValueError(f"device {device!r}: choose 'cpu' or 'cuda' ('cuda:N')")
        self.tokenizer = Tokenizer.from_metadata(self.model.file.fields)
        self.chat_template = self.model.file.get(Key.CHAT_TEMPLATE)
        self.seed = seed
        self.verbose = verbose

    # ---- llama-cpp-python's small helpers -----------------------------------------------------------------
    def n_ctx(self) -> int:
        return self.model.n_ctx

    def tokenize(self, text: bytes | str, add_bos: bool = True, special: bool = False) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self.tokenizer.encode(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens: list[int]) -> bytes:
        return b"".join(self.tokenizer.token_bytes(t) for t in tokens)

    def eval_logits(self, tokens: list[int]) -> np.ndarray:
        """Logits for every position of `tokens` as one new sequence: (n, n_vocab)."""
        self.model.reset()
        return self.model.forward(tokens, logits_all=True)

    # ---- completions --------------------------------------------------------------------------------------
    def create_completion(self, prompt: str | list[int], max_tokens: int | None = 16, temperature: float = 0.8,
                          top_p: float = 0.95, min_p: float = 0.05, top_k: int = 40, repeat_penalty: float = 1.0,
                          stop: str | list[str] | None = None, seed: int | None = None, stream: bool = False,
                          echo: bool = False):
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty)
        tokens = self._prompt_tokens(prompt)
        chunks = self._completion_chunks(tokens, params, max_tokens, stop, seed)
        cid, created = f"cmpl-{uuid.uuid4()}", int(time.time())
        prefix = self.detokenize(tokens).decode("utf-8", errors="replace") if echo else ""

        def wrap(text, finish):
            return {"id": cid, "object": "text_completion", "created": created, "model": self.model_path,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

        if stream:
            def it():
                if prefix:
                    yield wrap(prefix, None)
                for text, finish, _ in chunks:
                    yield wrap(text, finish)
            return it()
        text, finish, n_gen = "", None, 0
        for piece, finish, n_gen in chunks:
            text += piece
        result = wrap(prefix + text, finish)
        result["usage"] = {"prompt_tokens": len(tokens), "completion_tokens": n_gen,
                           "total_tokens": len(tokens) + n_gen}
        return result

    __call__ = create_completion

    def create_chat_completion(self, messages: list[dict], temperature: float = 0.2, top_p: float = 0.95,
                               top_k: int = 40, min_p: float = 0.05, repeat_penalty: float = 1.0,
                               max_tokens: int | None = None, stop: str | list[str] | None = None,
                               seed: int | None = None, stream: bool = False):
        if not self.chat_template:
            raise ValueError(f"{self.model_path}: the GGUF has no tokenizer.chat_template; use create_completion")
        tok = self.tokenizer
        prompt = render_chat(self.chat_template, messages, bos_token=tok.token_text(tok.bos_id),
                             eos_token=tok.token_text(tok.eos_id), add_generation_prompt=True)
        bos_text = tok.token_text(tok.bos_id) if tok.bos_id is not None else None
        add_bos = not (bos_text and prompt.startswith(bos_text))  # the template may already start with BOS
        tokens = tok.encode(prompt, add_bos=add_bos, special=True)
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty)
        chunks = self._completion_chunks(tokens, params, max_tokens, stop, seed)
        cid, created = f"chatcmpl-{uuid.uuid4()}", int(time.time())
        if stream:
            def it():
                yield {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.model_path,
                       "choices": [{"index": 0, "delta": {"role": "assistant"}, "logprobs": None,
                                    "finish_reason": None}]}
                for text, finish, _ in chunks:
                    yield {"id": cid, "object": "chat.completion.chunk", "created": created,
                           "model": self.model_path,
                           "choices": [{"index": 0, "delta": {"content": text} if text else {}, "logprobs": None,
                                        "finish_reason": finish}]}
            return it()
        text, finish, n_gen = "", None, 0
        for piece, finish, n_gen in chunks:
            text += piece
        return {"id": cid, "object": "chat.completion", "created": created, "model": self.model_path,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": finish}],
                "usage": {"prompt_tokens": len(tokens), "completion_tokens": n_gen,
                          "total_tokens": len(tokens) + n_gen}}

    # ---- internals ----------------------------------------------------------------------------------------
    def _prompt_tokens(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            tokens = self.tokenizer.encode(prompt, add_bos=True, special=True)
        else:
            tokens = [int(t) for t in prompt]
        if not tokens:
            raise ValueError("empty prompt: the model has no BOS token to start from; give at least one token")
        if len(tokens) >= self.model.n_ctx:
            raise ContextFullError(f"prompt has {len(tokens)} tokens, which does not leave room to generate in the "
                             f"context window of {self.model.n_ctx} (n_ctx)")
        return tokens

    def _completion_chunks(self, tokens: list[int], params: SamplingParams, max_tokens: int | None,
                           stop: str | list[str] | None, seed: int | None) -> Iterator[tuple[str, str | None, int]]:
        """Yield (text, finish_reason or None, tokens generated so far); text never splits a UTF-8 character
        and never shows the start of a stop string that may still complete."""
        stops = [s.encode() for s in ([stop] if isinstance(stop, str) else stop or []) if s]
        budget = self.model.n_ctx - len(tokens)
        if max_tokens is None or max_tokens <= 0 or max_tokens > budget:
            max_tokens = budget
        seed = seed if seed is not None else self.seed
        rng = np.random.default_rng(seed)
        stop_ids = {t for t in (self.tokenizer.eos_id, self.tokenizer.eot_id) if t is not None}

        buf, emitted, n_gen, finish = bytearray(), 0, 0, "length"
        for token in generate(self.model, tokens, params, rng, max_tokens, stop_ids):
            n_gen += 1
            if token in stop_ids:
                finish = "stop"
                break
            buf += self.tokenizer.token_bytes(token)
            hits = [i for i in (buf.find(s, max(0, emitted - len(s))) for s in stops) if i >= 0]
            if hits:
                del buf[min(hits):]
                finish = "stop"
                break
            safe = _utf8_safe_end(buf, len(buf) - _stop_prefix_len(buf, stops))
            if safe > emitted:
                yield bytes(buf[emitted:safe]).decode("utf-8", errors="replace"), None, n_gen
                emitted = safe
        yield bytes(buf[emitted:]).decode("utf-8", errors="replace"), finish, n_gen
