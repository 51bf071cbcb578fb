"""scripts/pareto.py's table and figure from a state of measurements (the measuring itself takes hours: not here)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pareto():
    spec = importlib.util.spec_from_file_location("pareto_script", ROOT / "scripts" / "pareto.py")
    mod = importlib.util.module_from_spec(spec)
    saved = sys.path[:]
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path[:] = saved
    return mod


def test_outputs_from_state(pareto, tmp_path):
    results = {"q/dense": {"Python docs": 17.22, "licenses": 24.92}}
    for m, base in (("paper", 30.0), ("teal", 25.0), ("default", 21.0)):
        for s in (0.3, 0.5):
            results[f"q/{m}/{s:.2f}"] = {"Python docs": base * s * 2, "licenses": base * s * 3, "budget": []}
    results["s/tiled-1b-q4_0.gguf"] = {"llama.cpp": {"decode_tps": 25.0, "read": 1.0},
                                       "dense": {"decode_tps": 26.0, "read": 1.0},
                                       "default/0.50": {"decode_tps": 36.0, "read": 0.51},
                                       "bandwidth_gbs": [30.1, 28.4]}
    pareto.write_outputs(results, ["q4_0"], [0.3, 0.5], list(pareto.METHODS), tmp_path)
    md = (tmp_path / "PARETO.md").read_text()
    assert "| q4_0 | llama.cpp dense | 0% | 25.0 | 1.00 |" in md
    assert "| q4_0 | default (`--recipe sparse-only`) | 50% | 36.0 | 1.44 | 0.510 | 21.00 | 31.50 |" in md
    assert "teal" not in md.split("| --- |")[-1]  # a method without a speed measurement has no row
    assert "30.1, 28.4" in md
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "pareto.png").stat().st_size > 10_000
