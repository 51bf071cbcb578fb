"""The decode loop: prefill the prompt in one batched pass, then one token at a time."""
from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from .model import Model
from .sampler import SamplingParams, sample


def prefill(model: Model, tokens: list[int]) -> np.ndarray:
    """Start a new sequence: run the whole prompt at once (dense) and return the last token's logits."""
    model.reset()
    return model.forward(tokens)


def decode_one(model: Model, token: int) -> np.ndarray:
    """Append one token to the sequence and return the next-token logits."""
    return model.forward((token,))


def generate(model: Model, prompt: list[int], params: SamplingParams, rng: np.random.Generator,
             max_tokens: int, stop_ids: Iterable[int] = ()) -> Iterator[int]:
    """Yield sampled tokens until a stop id (yielded too), `max_tokens`, or a full context."""
    stop_ids = frozenset(stop_ids)
    history = list(prompt)
    logits = prefill(model, prompt)
    for i in range(max_tokens):
        token = sample(logits, params, rng, history)
        history.append(token)
        yield token
        if token in stop_ids or i + 1 == max_tokens or model.n_past >= model.n_ctx:
            return
        logits = decode_one(model, token)
