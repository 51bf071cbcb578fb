"""One copy of the weights: with a companion, every product of a block linear reads the companion's copy (prefill,
dense decode and sparse decode: native/src/forward.c), so the base's block tensors stay mapped but never resident;
without one, Q4_0 and Q8_0 linears are multiplied from the tiles the runtime reads from the file at load.

Residency is read from the page tables of this process (/proc/self/pagemap, bit 63: the page is mapped in), not
from the page cache (which holds the base's pages anyway, since the test just wrote the file). The kernel maps up to
64 KiB around a faulting page that is in the page cache (fault-around), so reading a tensor next to a block linear
maps a little of it: the runtime reads the small tensors (norms) through the file, not the map, and the lookups of
token_embd and the head may still reach 64 KiB into a neighbour at each of their two ends."""
from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import make_tiny_llama
from rsparse_converter.convert import convert
from rsparse_cpp.constants import LINEARS
from rsparse_cpp.model import Model
from test_sparse_decode import make_companion

PAGE = os.sysconf("SC_PAGE_SIZE")
FAULT_AROUND = 64 * 1024
WIDE = dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
            intermediate_size=2048, tie_word_embeddings=False)  # block linears of 34-557 KiB in Q8_0


def resident_bytes(a: np.ndarray) -> int:
    """Bytes of the pages under array a that this process has mapped in (whole pages)."""
    addr = a.__array_interface__["data"][0]
    first, last = addr // PAGE, (addr + a.nbytes - 1) // PAGE
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(first * 8)
        entries = np.frombuffer(f.read((last - first + 1) * 8), np.uint64)
    return int((entries >> np.uint64(63)).sum()) * PAGE


def block_linears(model: Model) -> list[np.ndarray]:
    return [getattr(lw, name).data for lw in model.weights.layers for name in LINEARS]


@pytest.fixture(scope="module")
def wide_base(tmp_path_factory):
    if not os.access("/proc/self/pagemap", os.R_OK):
        pytest.skip("no /proc/self/pagemap (not Linux)")
    d = make_tiny_llama(tmp_path_factory.mktemp("mem_hf"), "wide", config=WIDE)
    base = convert(d, tmp_path_factory.mktemp("mem_out") / "wide.gguf", "q8_0", progress=False)
    make_companion(d, base, "sparse-only")
    return base


def run(model: Model) -> None:
    """Prefill, sparse decode steps where there is a companion, dense decode steps."""
    ids = np.random.default_rng(0).integers(3, model.config.n_vocab, 24)
    model.forward(ids[:20])
    for t in ids[20:22]:
        model.forward([t])
    model.sparse_enabled = False
    for t in ids[22:]:
        model.forward([t])


def test_base_block_weights_never_resident_with_a_companion(wide_base):
    model = Model.load(wide_base, n_ctx=64, n_threads=2)
    assert model.sparse is not None
    run(model)
    lins = block_linears(model)
    total, resident = sum(a.nbytes for a in lins), sum(resident_bytes(a) for a in lins)
    assert total > 40 * FAULT_AROUND
    assert resident <= 4 * FAULT_AROUND, f"{resident} of {total} bytes of the base's block linears resident"


def test_base_block_weights_resident_without_one(wide_base):
    """Without a companion the block linears are multiplied from the tiles of 16 rows made of them at load, read
    from the file (native.repack_r16), so the base's mapped copy stays out as well; the control: the same measure
    sees the mapped weights once something reads them."""
    model = Model.load(wide_base, n_ctx=64, n_threads=2, sparse=False)
    run(model)
    names = {getattr(lw, name).name for lw in model.weights.layers for name in LINEARS}
    assert names <= set(model.repacked)
    lins = block_linears(model)
    total = sum(a.nbytes for a in lins)
    assert sum(resident_bytes(a) for a in lins) <= 4 * FAULT_AROUND
    assert sum(int(a.sum(dtype=np.uint64)) for a in lins) > 0  # read through the map
    resident = sum(resident_bytes(a) for a in lins)
    assert resident >= 0.95 * total, f"{resident} of {total}"


def test_load_maps_in_what_every_step_reads(wide_base):
    """Model.load populates the companion (GGUFFile.populate, as llama.cpp populates its mapping) and makes the
    head's tiles, so the first prompt pays no page faults for them; the base's block linears stay out."""
    model = Model.load(wide_base, n_ctx=64, n_threads=2)
    if not model.sparse.companion.file.populate([]):
        pytest.skip("this kernel cannot populate a mapping (MADV_POPULATE_READ: Linux 5.14)")
    wts = [c.weight for lin in model.sparse.companion.layers for c in lin.values()]
    assert sum(resident_bytes(a) for a in wts) >= 0.99 * sum(a.nbytes for a in wts)
    assert model.weights.output.name in model.repacked  # Q8_0: the head's tiles, made at load from the file
    assert sum(resident_bytes(a) for a in block_linears(model)) <= 4 * FAULT_AROUND
