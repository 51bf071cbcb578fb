"""A corpus of crafted corrupt R-Sparse companions, one per failure mode: each must fail with a GGUFError naming the
companion (or the base) and the field at fault, never load and crash later in the kernel.

Companions are crafted byte by byte (tests/gguf_craft.py) for the crafted tiny base, carrying its real fingerprint,
so every case gets past the checks before the one it forges. A few cases corrupt a companion the converter wrote."""
from __future__ import annotations

import numpy as np
import pytest

from gguf_craft import ARR, F32, I32, STR, TINY_LINEARS, U32, q8_0, tiny_companion, tiny_model
from rsparse_cpp.companion import Companion, companion_path, fingerprint
from rsparse_cpp.constants import LINEARS
from rsparse_cpp.gguf_file import GGUFError

N = len(TINY_LINEARS)  # per-linear array length of a one-block companion
Q, K, DOWN = LINEARS.index("attn_q"), LINEARS.index("attn_k"), LINEARS.index("ffn_down")


def per_linear(default, at: dict[int, object], vtype: int = F32) -> tuple[int, tuple[int, list]]:
    """An override for a per-linear array: `default` everywhere but the indices in `at`."""
    return ARR, (vtype, [at.get(i, default) for i in range(N)])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The tiny base and its fingerprint."""
    p = tmp_path_factory.mktemp("hostile_companion") / "tiny.gguf"
    p.write_bytes(tiny_model().build())
    return p, fingerprint(p)


def write(base_path, craft_or_bytes) -> str:
    path = companion_path(base_path)
    path.write_bytes(craft_or_bytes if isinstance(craft_or_bytes, bytes) else craft_or_bytes.build())
    return path


def test_valid_tiny_companion_loads(base):
    p, fp = base
    write(p, tiny_companion(fp))
    c = Companion.for_base(p)
    assert c.n_layer == 1 and (c.rank == 4).all() and c.linear(0, "ffn_down").n_in == 64
    write(p, tiny_companion(fp, rank=0))
    assert Companion.for_base(p).linear(0, "attn_q").u is None


def test_negative_tau_is_keep_everything(base):
    """The converter writes tau = -1 for "keep every channel" (scores are >= 0; calibrate.quantile_tau), so a
    finite negative tau is valid; only NaN and inf are refused."""
    p, fp = base
    write(p, tiny_companion(fp, override={"rsparse.tau": per_linear(0.1, {Q: -1.0})}))
    assert Companion.for_base(p).linear(0, "attn_q").tau == -1.0


def _f16_u(shape):
    return np.zeros(shape, np.float16)


# kind -> (tiny_companion keyword arguments, the field the message must name, a regex the message must match)
CASES = {
    # identity
    "arch_llama": (dict(override={"general.architecture": (STR, "llama")}), "general.architecture",
                   "not an R-Sparse companion"),
    "arch_missing": (dict(skip_kv="general.architecture"), "general.architecture", "missing"),
    "arch_not_string": (dict(override={"general.architecture": (U32, 7)}), "general.architecture", "expected str"),
    "version_2": (dict(override={"rsparse.version": (U32, 2)}), "rsparse.version", "version 2"),
    "version_missing": (dict(skip_kv="rsparse.version"), "rsparse.version", "missing"),
    "version_string": (dict(override={"rsparse.version": (STR, "1")}), "rsparse.version", "expected int"),
    "linears_reordered": (dict(override={"rsparse.linears": (ARR, (STR, list(reversed(LINEARS))))}),
                          "rsparse.linears", "expected"),
    "linears_missing": (dict(skip_kv="rsparse.linears"), "rsparse.linears", "expected"),
    "linears_numbers": (dict(override={"rsparse.linears": (ARR, (U32, [1, 2, 3]))}), "rsparse.linears", "expected"),
    "linears_scalar": (dict(override={"rsparse.linears": (U32, 7)}), "rsparse.linears", "expected"),
    "block_count_zero": (dict(override={"rsparse.block_count": (U32, 0)}), "rsparse.block_count", "out of range"),
    "block_count_huge": (dict(override={"rsparse.block_count": (U32, 1 << 31)}), "rsparse.block_count",
                         "out of range"),
    "block_count_2_arrays_1": (dict(override={"rsparse.block_count": (U32, 2)}), "rsparse.tau",
                               "array of 14 numbers"),
    "fingerprint_missing": (dict(skip_kv="rsparse.base.fingerprint"), "rsparse.base.fingerprint", "missing"),
    "sparsity_nan": (dict(override={"rsparse.sparsity": (F32, float("nan"))}), "rsparse.sparsity", r"not in \[0, 1\]"),
    "sparsity_above_1": (dict(override={"rsparse.sparsity": (F32, 1.5)}), "rsparse.sparsity", r"not in \[0, 1\]"),
    "recipe_json_invalid": (dict(override={"rsparse.recipe.json": (STR, "{not json")}), "rsparse.recipe.json",
                            "not valid JSON"),
    "recipe_json_deep": (dict(override={"rsparse.recipe.json": (STR, "[" * 100000)}), "rsparse.recipe.json",
                         "not valid JSON"),
    # per-linear arrays
    "tau_nan": (dict(override={"rsparse.tau": per_linear(0.1, {K: float("nan")})}), "rsparse.tau",
                "blk.0.attn_k: nan"),
    "tau_inf": (dict(override={"rsparse.tau": per_linear(0.1, {K: float("inf")})}), "rsparse.tau", "inf"),
    "tau_minus_inf": (dict(override={"rsparse.tau": per_linear(0.1, {K: float("-inf")})}), "rsparse.tau", "-inf"),
    "tau_short": (dict(override={"rsparse.tau": (ARR, (F32, [0.1] * (N - 1)))}), "rsparse.tau", "array of 7"),
    "tau_strings": (dict(override={"rsparse.tau": (ARR, (STR, ["0.1"] * N))}), "rsparse.tau", "found list"),
    "tau_scalar": (dict(override={"rsparse.tau": (F32, 0.1)}), "rsparse.tau", "found float"),
    "tau_missing": (dict(skip_kv="rsparse.tau"), "rsparse.tau", "found nothing"),
    "score_missing": (dict(skip_kv="rsparse.score"), "rsparse.score", "missing"),
    "score_unknown": (dict(override={"rsparse.score": (STR, "abs_x_squared")}), "rsparse.score",
                      "'abs_x_squared': this runtime knows abs_x_colnorm, abs_x_colnorm_all"),
    "rho_negative": (dict(override={"rsparse.rho": per_linear(0.5, {Q: -0.1})}), "rsparse.rho", "blk.0.attn_q"),
    "rho_above_1": (dict(override={"rsparse.rho": per_linear(0.5, {DOWN: 1.01})}), "rsparse.rho", "blk.0.ffn_down"),
    "rho_nan": (dict(override={"rsparse.rho": per_linear(0.5, {Q: float("nan")})}), "rsparse.rho", "nan"),
    "rank_above_min_in_out": (dict(override={"rsparse.rank": per_linear(4, {K: 17}, U32)}), "rsparse.rank",
                              r"blk.0.attn_k: rank 17 > min\(in, out\)"),
    "rank_not_integer": (dict(override={"rsparse.rank": per_linear(4.0, {Q: 4.5})}), "rsparse.rank", "integer"),
    "rank_huge": (dict(override={"rsparse.rank": per_linear(4, {Q: 1 << 30}, U32)}), "rsparse.rank", "integer"),
    "keep_above_in": (dict(override={"rsparse.keep": per_linear(8, {Q: 33}, U32)}), "rsparse.keep",
                      "blk.0.attn_q: keep 33 > in 32"),
    "keep_negative": (dict(override={"rsparse.keep": per_linear(8, {Q: -1}, I32)}), "rsparse.keep", "blk.0.attn_q"),
    # tensors
    "weight_missing": (dict(skip_tensor="blk.0.attn_v.rsparse_weight"), "blk.0.attn_v.rsparse_weight",
                       "tensor missing"),
    "weight_1d": (dict(tensor_override={"blk.0.attn_v.rsparse_weight": np.zeros(32 * 16, np.float32)}),
                  "blk.0.attn_v.rsparse_weight", "expected"),
    "colnorm_missing": (dict(skip_tensor="blk.0.ffn_up.rsparse_colnorm"), "blk.0.ffn_up.rsparse_colnorm",
                        "tensor missing"),
    "colnorm_wrong_length": (dict(tensor_override={"blk.0.ffn_up.rsparse_colnorm": np.ones(31, np.float32)}),
                             "blk.0.ffn_up.rsparse_colnorm", "expected F32"),
    "colnorm_f16": (dict(tensor_override={"blk.0.ffn_up.rsparse_colnorm": np.ones(32, np.float16)}),
                    "blk.0.ffn_up.rsparse_colnorm", "expected F32"),
    "colnorm_nan": (dict(tensor_override={"blk.0.ffn_up.rsparse_colnorm":
                                          np.r_[np.ones(31), np.nan].astype(np.float32)}),
                    "blk.0.ffn_up.rsparse_colnorm", "finite"),
    "colnorm_negative": (dict(tensor_override={"blk.0.ffn_up.rsparse_colnorm": -np.ones(32, np.float32)}),
                         "blk.0.ffn_up.rsparse_colnorm", ">= 0"),
    "u_missing": (dict(skip_tensor="blk.0.attn_k.rsparse_u"), "blk.0.attn_k.rsparse_u", "tensor missing"),
    "vs_missing": (dict(skip_tensor="blk.0.attn_k.rsparse_vs"), "blk.0.attn_k.rsparse_vs", "tensor missing"),
    "u_wrong_rank": (dict(tensor_override={"blk.0.attn_k.rsparse_u": np.zeros((16, 5), np.float32)}),
                     "blk.0.attn_k.rsparse_u", r"expected F32 or F16 \(16, 4\)"),
    "vs_transposed": (dict(tensor_override={"blk.0.attn_k.rsparse_vs": np.zeros((32, 4), np.float32)}),
                      "blk.0.attn_k.rsparse_vs", r"\(4, 32\)"),
    "u_quantized": (dict(tensor_override={"blk.0.ffn_down.rsparse_u": (np.zeros((32, 34), np.uint8), 8, [32, 32])},
                         override={"rsparse.rank": per_linear(4, {DOWN: 32}, U32)}),
                    "blk.0.ffn_down.rsparse_u", "Q8_0"),
    "factor_types_differ": (dict(tensor_override={"blk.0.attn_q.rsparse_u": _f16_u((32, 4))}),
                            "blk.0.attn_q.rsparse_vs", "both must match"),
    "factors_with_rank_0": (dict(override={"rsparse.rank": per_linear(4, {Q: 0}, U32)}), "blk.0.attn_q.rsparse_u",
                            "factor tensors present but rank is 0"),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_corrupt_companion_is_refused(base, kind):
    p, fp = base
    kwargs, field, pattern = CASES[kind]
    path = write(p, tiny_companion(fp, **kwargs))
    with pytest.raises(GGUFError, match=pattern) as e:
        Companion.for_base(p)
    assert e.value.path == str(path) and field in e.value.field, (e.value.path, e.value.field)
    assert str(path) in str(e.value)


def test_base_shape_mismatch_is_refused(base):
    """The companion's weight (in, out) transposed: loads on its own, refused against the base's (out, in)."""
    p, fp = base
    w = np.zeros((16, 32), np.float32)  # attn_k's (out, in) instead of (in, out) = (32, 16)
    path = write(p, tiny_companion(fp, tensor_override={"blk.0.attn_k.rsparse_weight": w,
                                                        "blk.0.attn_k.rsparse_colnorm": np.ones(16, np.float32),
                                                        "blk.0.attn_k.rsparse_u": np.zeros((32, 4), np.float32),
                                                        "blk.0.attn_k.rsparse_vs": np.zeros((4, 16), np.float32)}))
    Companion(path)
    with pytest.raises(GGUFError, match=r"blk.0.attn_k: \(out, in\) = \(32, 16\) does not match base .*tiny.gguf"):
        Companion.for_base(p)


def test_block_count_mismatch_is_refused(base):
    """A consistent two-block companion carrying the one-block base's fingerprint."""
    p, fp = base
    path = write(p, tiny_companion(fp, n_layer=2))
    assert Companion(path).n_layer == 2
    with pytest.raises(GGUFError, match="2 blocks, base .*tiny.gguf has 1") as e:
        Companion.for_base(p)
    assert e.value.field == "rsparse.block_count"


def test_companion_of_another_base_is_refused(base, tmp_path):
    p, fp = base
    other = tmp_path / "other.gguf"
    w = np.full((32, 32), 0.01, np.float32)
    other.write_bytes(tiny_model(tensor_override={"blk.0.attn_q.weight": w}).build())  # same shapes, new weights
    write(p, tiny_companion(fp))
    with pytest.raises(GGUFError, match="made for another base file") as e:
        Companion.for_base(other, companion_path(p))
    assert e.value.field == "rsparse.base.fingerprint" and "other.gguf" in str(e.value)
    write(p, tiny_companion("v1:" + "0" * 64))  # a forged fingerprint
    with pytest.raises(GGUFError, match="made for another base file"):
        Companion.for_base(p)


def test_quantized_companion_loads_and_q8_weight_shape_is_checked(base):
    """Q8_0 weights (blocks along out) load; a Q8_0 weight whose rows are not whole blocks cannot be built."""
    p, fp = base
    rng = np.random.default_rng(0)
    write(p, tiny_companion(fp, tensor_override={"blk.0.attn_q.rsparse_weight": q8_0(rng.normal(size=(32, 32)))}))
    assert Companion.for_base(p).linear(0, "attn_q").weight.shape == (32, 34)
    raw, _, _ = q8_0(rng.normal(size=(32, 32)))
    path = write(p, tiny_companion(fp, tensor_override={"blk.0.attn_k.rsparse_weight": (raw, 8, [16, 64])}))
    with pytest.raises(GGUFError, match="not a multiple of Q8_0's block size 32") as e:
        Companion.for_base(p)
    assert e.value.path == str(path)


@pytest.mark.parametrize("cut", [0, 10, 24, 200, 0.5, -1])
def test_truncated_companion_is_refused(base, cut):
    p, fp = base
    raw = tiny_companion(fp).build()
    n = int(len(raw) * cut) if isinstance(cut, float) else (len(raw) + cut if cut < 0 else cut)
    path = write(p, raw[:n])
    with pytest.raises(GGUFError) as e:
        Companion.for_base(p)
    assert e.value.path == str(path)


def test_missing_files_are_named(base, tmp_path):
    p, fp = base
    with pytest.raises(GGUFError, match="no R-Sparse companion for .*nowhere.gguf"):
        Companion.for_base(tmp_path / "nowhere.gguf")
    path = write(p, tiny_companion(fp))
    with pytest.raises(GGUFError, match="nowhere.gguf") as e:
        Companion(path, tmp_path / "nowhere.gguf")
    assert e.value.path.endswith("nowhere.gguf")
    with pytest.raises(GGUFError, match="missing.rsparse.gguf"):
        Companion(tmp_path / "missing.rsparse.gguf")


# ---- a companion the converter wrote, corrupted ---------------------------------------------------------------
@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(base, companion bytes) made by rsparse-convert's writer for a tiny HF model."""
    from conftest import make_tiny_llama
    from rsparse_converter.calibrate import load_model, load_tokenizer
    from rsparse_converter.companion import write_companion
    from rsparse_converter.convert import convert
    from rsparse_converter.rsparse_cli import BuildConfig, build
    from rsparse_converter.search import SearchConfig

    d = make_tiny_llama(tmp_path_factory.mktemp("hostile_conv"), "mha_tied")
    model, tok = load_model(d), load_tokenizer(d)
    cfg = BuildConfig(sparsity=0.5, recipe="uniform", calib_tokens=256, fit_tokens=128, seq_len=64,
                      search=SearchConfig(population=4, generations=1, groups=2))
    plan, info, prov = build(model, tok, cfg, progress=False)
    base = convert(d, d / "m.gguf", "q8_0", progress=False)
    path = write_companion(companion_path(base), base, model, plan, "uniform", info, prov)
    return base, path.read_bytes()


def test_converter_never_writes_an_invalid_tau(converted):
    base, raw = converted
    c = Companion.for_base(base)
    assert np.isfinite(c.tau).all() and ((c.tau >= 0) | (c.tau == -1)).all()


@pytest.mark.parametrize("corruption", ["truncate_tensors", "truncate_header", "fingerprint_byte", "tau_nan"])
def test_corrupted_converter_output_is_refused(converted, corruption):
    base, raw = converted
    raw = bytearray(raw)
    if corruption == "truncate_tensors":
        raw = raw[:len(raw) - 100]
    elif corruption == "truncate_header":
        raw = raw[:raw.find(b"rsparse.tau") + 20]
    elif corruption == "fingerprint_byte":
        i = raw.find(b"v1:") + 3
        raw[i] = ord("0") if raw[i] != ord("0") else ord("1")
    elif corruption == "tau_nan":  # the first tau value: key, u32 type, u32 item type, u64 count, then the f32s
        i = raw.find(b"rsparse.tau\x09") + len("rsparse.tau") + 4 + 4 + 8
        raw[i:i + 4] = np.float32("nan").tobytes()
    path = companion_path(base).with_name("corrupt.rsparse.gguf")
    path.write_bytes(bytes(raw))
    with pytest.raises(GGUFError) as e:
        Companion.for_base(base, path)
    assert e.value.path == str(path)
