"""Chat templates: the GGUF's tokenizer.chat_template rendered with Jinja2 as transformers renders it.

Same environment as transformers' apply_chat_template (trim_blocks and lstrip_blocks, loop controls, a tojson that
keeps non-ASCII text, raise_exception and strftime_now), so a prompt is byte-for-byte the one the model was tuned on.
Templates come from model files, i.e. from strangers: they run in Jinja2's immutable sandbox and see only plain
JSON-like copies of the caller's data.
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Used only when the caller asks for it (render_chat(..., fallback=True)) and the GGUF has no template:
# ChatML, the format of SmolLM2, Qwen and many fine-tunes; no BOS, no default system message.
CHATML_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
                   " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
                   "{{ '<|im_start|>assistant\n' }}{% endif %}")


class ChatTemplateError(ValueError):
    """No chat template, an invalid one, or one that refused the messages."""


class _GenerationTag(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for transformers' training masks; rendering
    ignores it, but templates that use it must still parse."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message: str):
    raise TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; chat templates want the plain JSON transformers produces
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def compile_template(template: str):
    """The compiled template; ChatTemplateError if it is not valid Jinja."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols, _GenerationTag])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise ChatTemplateError(f"chat template does not compile: {e}") from None


def _plain(value, where: str = "messages"):
    """A copy made of str, int, float, bool, None, dict and list only: what a template may see."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, (str, int, float)):  # subclasses (enums, numpy scalars) may carry methods
        return (str if isinstance(value, str) else int if isinstance(value, int) else float)(value)
    if isinstance(value, dict):
        return {_plain(k, where): _plain(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return _plain(value.item(), where)
    raise ChatTemplateError(f"{where}: {type(value).__name__} values cannot be passed to a chat template")


def render_chat(template: str | None, messages: list[dict], bos_token: str = "", eos_token: str = "",
                add_generation_prompt: bool = True, *, fallback: bool = False, **extra) -> str:
    """The prompt text for `messages` ([{"role": ..., "content": ...}, ...]).

    `template`: the GGUF's tokenizer.chat_template. When it is None or empty this is an error, unless `fallback`,
    which renders CHATML_TEMPLATE instead. `extra`: further template variables (e.g. tools, documents).
    The rendered text contains special tokens as text: encode it with special=True and, since templates that
    want BOS write {{ bos_token }} themselves, without add_bos when the template already starts with it."""
    if not template:
        if not fallback:
            raise ChatTemplateError("the model has no chat template (tokenizer.chat_template); pass fallback=True "
                                    "for a ChatML prompt, or use plain completion")
        template = CHATML_TEMPLATE
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise ChatTemplateError("messages must be a list of dicts, each with a 'role' (and usually 'content')")
    variables = _plain(dict(extra), "template variables")
    try:
        return compile_template(template).render(messages=_plain(messages), bos_token=bos_token,
                                                 eos_token=eos_token, add_generation_prompt=add_generation_prompt,
                                                 **variables)
    except TemplateError as e:
        raise ChatTemplateError(f"chat template: {e}") from None
