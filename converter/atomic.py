"""Atomic output: write to a temporary file beside the target, rename over it only when complete.

A conversion that fails, is interrupted (Ctrl-C, SIGTERM, a full disk) or crashes leaves no half-written file
under the final name; the temporary file is removed on any exception."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import gguf


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_gguf(path: str | os.PathLike, arch: str, progress: bool = False) -> Iterator[gguf.GGUFWriter]:
    """A GGUFWriter to fill with KV pairs and tensors; on a clean exit the header, KV data and tensors are written
    (gguf-py's writer only accepts them in that order) and the file is renamed into place. An exception inside the
    block writes nothing and leaves no file: the base converter and the companion writer share this sequence."""
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(tmp, arch=arch)
        try:
            yield w
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file(progress=progress)
        finally:
            w.close()
