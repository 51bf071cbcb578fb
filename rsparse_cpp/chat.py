"""Chat templates: the GGUF's tokenizer.chat_template rendered with Jinja2, as transformers renders it.

Templates come from model files, i.e. from strangers: they run in Jinja2's immutable sandbox."""
from __future__ import annotations

from functools import lru_cache

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


class ChatTemplateError(ValueError):
    """The chat template is invalid or refused the messages."""


def _raise(message: str):
    raise TemplateError(message)


@lru_cache(maxsize=8)
def _compile(template: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string(template)


def render_chat(template: str, messages: list[dict], bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True) -> str:
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise ChatTemplateError("messages must be a list of dicts, each with a 'role' (and usually 'content')")
    try:
        return _compile(template).render(messages=messages, bos_token=bos_token, eos_token=eos_token,
                                         add_generation_prompt=add_generation_prompt)
    except TemplateError as e:
        raise ChatTemplateError(f"chat template: {e}") from None
