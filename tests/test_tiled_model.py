"""bench/make_tiled_model.py: the tiled model computes the source model's function (transformers as the reference)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import make_tiny_llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

_SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "make_tiled_model.py"
_spec = importlib.util.spec_from_file_location("make_tiled_model", _SCRIPT)
tiling = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiling)


def _logits(hf_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits[0].double()


@pytest.mark.parametrize("name,k", [("gqa_untied", 3), ("mha_tied", 2), ("odd_sizes", 3)])
def test_tiled_logits_equal_source(tmp_path, name, k):
    src = make_tiny_llama(tmp_path / "src", name)
    dst = tiling.write_tiled_checkpoint(src, tmp_path / "tiled", k)
    cfg, tiled_cfg = (json.loads((d / "config.json").read_text()) for d in (src, dst))
    assert tiled_cfg["hidden_size"] == k * cfg["hidden_size"]
    assert tiled_cfg["intermediate_size"] == k * cfg["intermediate_size"]
    assert tiled_cfg["num_attention_heads"] == k * cfg["num_attention_heads"]
    assert tiled_cfg["num_key_value_heads"] == k * cfg["num_key_value_heads"]
    assert tiled_cfg["tie_word_embeddings"] is False
    assert (dst / "tokenizer.json").is_file()

    ids = torch.randint(0, cfg["vocab_size"], (1, 12), generator=torch.Generator().manual_seed(0))
    ref, out = _logits(src, ids), _logits(dst, ids)
    assert torch.allclose(out, ref, rtol=0, atol=1e-4 * float(ref.abs().max()))
    assert tiling.check_same_function(src, dst, "The quick brown fox") < 1e-4


def test_gqa_copies_map_onto_copies():
    # q head c*n_head + i must read kv head c*n_kv + i // n_rep: copy c of the kv head head i used
    n_head, n_kv, k = 9, 3, 3
    n_rep = n_head // n_kv
    for c in range(k):
        for i in range(n_head):
            assert (c * n_head + i) // n_rep == c * n_kv + i // n_rep


def test_tile_tensor_blocks():
    w = torch.arange(6.0).reshape(2, 3)
    t = tiling.tile_tensor("model.layers.0.mlp.up_proj.weight", w, 3)
    assert t.shape == (6, 9)
    for r in range(3):
        for c in range(3):
            assert torch.equal(t[2 * r:2 * r + 2, 3 * c:3 * c + 3], w / 3)
    h = torch.randn(3, dtype=torch.float64)
    assert torch.allclose(t.double() @ h.repeat(3), (w.double() @ h).repeat(3))
    with pytest.raises(ValueError, match="no tiling rule"):
        tiling.tile_tensor("model.layers.0.self_attn.rotary.inv_freq", w, 3)


def test_companion_names_parse_as_bench_decode_expects():
    import re

    name = tiling.companion_name(Path("/x/tiled-1b-q8_0.gguf"), 0.5, "sparse-only").name
    assert name == "tiled-1b-q8_0.s50-sparse-only.rsparse.gguf"
    m = re.search(r"\.s(\d+)(?:-([\w-]+))?\.rsparse\.gguf$", name)  # bench/decode.py's pattern
    assert m and m.groups() == ("50", "sparse-only")
