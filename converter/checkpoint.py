"""Read a Hugging Face checkpoint folder: config.json and tensors (safetensors or PyTorch .bin, sharded or not)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np


class CheckpointError(ValueError):
    """The HF checkpoint folder is missing files or holds something we cannot convert."""


def load_config(hf_dir: Path) -> dict:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{hf_dir}: no config.json (is this a Hugging Face checkpoint folder?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _weight_files(hf_dir: Path) -> list[Path]:
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = hf_dir / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [hf_dir / s for s in shards]
        if (hf_dir / single).is_file():
            return [hf_dir / single]
    raise CheckpointError(f"{hf_dir}: no model.safetensors or pytorch_model.bin (sharded or not)")


def iter_tensors(hf_dir: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (HF name, float32 numpy array), one shard in memory at a time."""
    import torch

    for path in _weight_files(Path(hf_dir)):
        if not path.is_file():
            raise CheckpointError(f"{path}: shard listed in the index is missing")
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name).to(torch.float32).numpy()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            for name, t in state.items():
                yield name, t.to(torch.float32).numpy()
