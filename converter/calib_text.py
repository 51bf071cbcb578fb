"""--calib-file: the user's own calibration text, in place of the offline Python documentation.

A plain text file (UTF-8) is used as it is. A `.jsonl` file holds one chat conversation a line, either
{"messages": [{"role": ..., "content": ...}, ...]} or the list of messages itself (the two shapes chat datasets use);
each is rendered with the model's own chat template, so the calibration activations are those of the chats the model
will serve, and conversations are joined by a blank line. Anything else is refused with the file, line and reason:
an empty file, binary data, text that is not UTF-8, a line that is not JSON or not a conversation, or conversations
for a tokenizer without a chat template.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


class CalibFileError(ValueError):
    """The calibration file cannot be used; the message names the file (and line) and why."""


def _messages(obj, where: str) -> list[dict]:
    messages = obj.get("messages") if isinstance(obj, dict) else obj
    if not isinstance(messages, list) or not messages:
        raise CalibFileError(f"{where}: expected a conversation: a non-empty list of messages, or an object with "
                             f"one under \"messages\"")
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise CalibFileError(f"{where}: message {i} needs a string \"role\" and a string \"content\"")
    return messages


def read_calib_file(path: str | Path, tokenizer) -> str:
    """The calibration text of `path` (plain text, or JSONL conversations rendered with `tokenizer`'s template)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CalibFileError(f"{path}: cannot read the calibration file ({e.strerror})") from None
    if not raw.strip():
        raise CalibFileError(f"{path}: the calibration file is empty")
    nul = raw.find(b"\0")
    if nul >= 0:
        raise CalibFileError(f"{path}: binary data (a NUL byte at offset {nul}), not text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CalibFileError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    if path.suffix.lower() != ".jsonl":
        return text
    if not getattr(tokenizer, "chat_template", None):
        raise CalibFileError(f"{path}: JSONL conversations are rendered with the model's chat template, and this "
                             f"model's tokenizer has none; pass plain text instead")
    rendered = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CalibFileError(f"{path}:{n}: not JSON ({e.msg} at column {e.colno})") from None
        rendered.append(tokenizer.apply_chat_template(_messages(obj, f"{path}:{n}"), tokenize=False))
    return "\n\n".join(rendered)


def calib_file_provenance(path: str | Path, text: str) -> tuple[str, str]:
    """(description, sha256 of the text the calibration used): what the companion records of its source."""
    kind = "JSONL conversations rendered with the chat template" if Path(path).suffix.lower() == ".jsonl" else "text"
    return f"--calib-file {Path(path).name} ({kind})", hashlib.sha256(text.encode()).hexdigest()
