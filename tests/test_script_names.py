"""Scripts under bench/ and scripts/ must not shadow an installed package: `python bench/x.py` puts bench/ first on
sys.path, so a bench/kernels.py once hid the `kernels` package that transformers imports, and
`python bench/make_tiled_model.py` failed on a fresh clone."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT_DIRS = ("bench", "scripts", "fuzz")


def installed_elsewhere(name: str) -> bool:
    """Is `name` importable from this environment with the repository's script folders off sys.path?"""
    blocked = {str(ROOT / d) for d in SCRIPT_DIRS} | {str(ROOT)}
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) not in blocked]
    try:
        return name in sys.builtin_module_names or importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a package that fails to import is still installed under that name
        return True
    finally:
        sys.path[:] = saved


@pytest.mark.parametrize("folder", SCRIPT_DIRS)
def test_no_script_shadows_an_installed_package(folder):
    assert installed_elsewhere("json") and not installed_elsewhere("bench_kernels")  # the check itself works
    scripts = sorted((ROOT / folder).glob("*.py"))
    assert scripts, f"no scripts found under {folder}/"
    clashes = [p.name for p in scripts if installed_elsewhere(p.stem)]
    assert not clashes, f"{folder}/ scripts named like installed modules (rename them): {clashes}"
