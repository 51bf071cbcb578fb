"""The companion GGUF: written by the converter, read back by the runtime, tied to its base by fingerprint."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from conftest import make_tiny_llama
from rsparse_converter.architectures import permute_qk
from rsparse_converter.calibrate import load_model, load_tokenizer
from rsparse_converter.companion import dequantize, unpermute_qk, write_companion
from rsparse_converter.convert import convert
from rsparse_converter.reference import apply_companion, iter_linears, rsparse_model
from rsparse_converter.rsparse_cli import BuildConfig, build
from rsparse_converter.search import SearchConfig
from rsparse_cpp.companion import Companion, companion_path, fingerprint
from rsparse_cpp.constants import LINEARS, GGMLType, RSparseTensor
from rsparse_cpp.gguf_file import GGUFError, GGUFFile

SMALL = dict(calib_tokens=256, fit_tokens=128, val_tokens=256, seq_len=64,
             search=SearchConfig(population=4, generations=1, groups=2))


@pytest.fixture(scope="module", params=["gqa_untied", "odd_sizes"])
def built(request, tmp_path_factory):
    """(hf_dir, model with the plan applied, plan, info, provenance), uniform recipe at 50%."""
    d = make_tiny_llama(tmp_path_factory.mktemp(f"comp_{request.param}"), request.param)
    model, tok = load_model(d), load_tokenizer(d)
    plan, info, prov = build(model, tok, BuildConfig(sparsity=0.5, recipe="uniform", **SMALL), progress=False)
    return d, model, plan, info, prov


@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
def test_round_trip(built, tmp_path, outtype):
    d, model, plan, info, prov = built
    base = convert(d, tmp_path / "m.gguf", outtype, progress=False)
    out = write_companion(companion_path(base), base, model, plan, "uniform", info, prov)
    assert out.name == "m.rsparse.gguf"
    c = Companion.for_base(base)
    assert c.recipe == "uniform" and c.sparsity == pytest.approx(0.5) and c.factors == plan.factors
    assert c.recipe_info["planned_model_sparsity"] == pytest.approx(info["planned_model_sparsity"])
    np.testing.assert_allclose(c.tau, plan.tau, rtol=1e-6)
    np.testing.assert_allclose(c.rho, plan.rho, rtol=1e-6)
    np.testing.assert_array_equal(c.rank, plan.rank)
    np.testing.assert_array_equal(c.keep, plan.keep)
    base_file = GGUFFile(base)
    n_head, n_kv = model.config.num_attention_heads, model.config.num_key_value_heads
    for bid, name, m in iter_linears(model):
        lin, i = c.linear(bid, name), LINEARS.index(name)
        w = m.weight.detach().numpy()
        heads = {"attn_q": n_head, "attn_k": n_kv}.get(name)
        w_gguf = permute_qk(w, heads) if heads else w  # the base's row order
        base_type = base_file.tensors[f"blk.{bid}.{name}.weight"].type
        assert lin.weight_type == (base_type if lin.n_out % 32 == 0 or base_type == GGMLType.F32 else GGMLType.F16)
        got = dequantize(lin.weight, lin.weight_type, (lin.n_in, lin.n_out))
        tol = 0 if lin.weight_type == GGMLType.F32 else np.abs(w).max() / 64
        np.testing.assert_allclose(got, w_gguf.T, atol=tol, rtol=0)
        np.testing.assert_allclose(lin.colnorm, np.linalg.norm(w.astype(np.float64), axis=0), rtol=1e-5)
        if lin.rank:
            u = plan.u[(bid, i)].numpy()
            ftol = 0 if outtype == "f32" else 2e-3 * np.abs(u).max()
            np.testing.assert_allclose(np.asarray(lin.u, np.float32), permute_qk(u, heads) if heads else u, atol=ftol)
            np.testing.assert_allclose(np.asarray(lin.vs, np.float32), plan.vs[(bid, i)].numpy(),
                                       atol=0 if outtype == "f32" else 2e-3 * float(plan.vs[(bid, i)].abs().max()))
        else:
            assert lin.u is None
    for name in c.file.tensors:
        assert not name.endswith((".lora_a", ".lora_b"))
    assert {n.split(".", 2)[2] for n in c.file.tensors} >= {RSparseTensor.WEIGHT.split(".", 2)[2].format(linear="attn_q")}


def test_reference_from_companion_matches_in_memory_plan(built, tmp_path):
    d, model, plan, info, prov = built
    base = convert(d, tmp_path / "m.gguf", "f32", progress=False)
    path = write_companion(companion_path(base), base, model, plan, "uniform", info, prov)
    ids = torch.randint(0, model.config.vocab_size, (1, 48))
    state = model.model.layers[0].self_attn.q_proj.state
    state.mode = "strict"
    with torch.no_grad():
        want = model(ids).logits
    fresh = load_model(d)
    st = apply_companion(fresh, Companion(path, base))
    st.mode = "strict"
    with torch.no_grad():
        got = fresh(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    state.mode = "dense"


def test_unpermute_inverts_permute():
    w = np.arange(6 * 16 * 3, dtype=np.float32).reshape(96, 3)
    np.testing.assert_array_equal(unpermute_qk(permute_qk(w, 6), 6), w)


def test_wrong_base_is_refused_naming_both_files(built, tmp_path):
    d, model, plan, info, prov = built
    base = convert(d, tmp_path / "a.gguf", "f32", progress=False)
    other = convert(d, tmp_path / "b.gguf", "q8_0", progress=False)
    path = write_companion(tmp_path / "a.rsparse.gguf", base, model, plan, "uniform", info, prov)
    assert fingerprint(base) == fingerprint(shutil.copy(base, tmp_path / "copy.gguf"))
    assert fingerprint(base) != fingerprint(other)
    with pytest.raises(GGUFError) as e:
        Companion(path, other)
    assert "a.rsparse.gguf" in str(e.value) and "b.gguf" in str(e.value)
    with pytest.raises(GGUFError, match="no R-Sparse companion"):
        Companion.for_base(other)
    with pytest.raises(GGUFError, match="not an R-Sparse companion"):
        Companion(base)


def test_fingerprint_sees_a_changed_weight(tmp_path):
    d = make_tiny_llama(tmp_path / "m", "mha_tied")
    base = convert(d, tmp_path / "m.gguf", "f32", progress=False)
    fp = fingerprint(base)
    info = GGUFFile(base).tensors["blk.0.attn_q.weight"]
    raw = bytearray(base.read_bytes())
    raw[info.offset] ^= 0xFF  # first byte of a tensor: inside the sampled span
    (tmp_path / "edited.gguf").write_bytes(bytes(raw))
    assert fingerprint(tmp_path / "edited.gguf") != fp


def test_commands(tmp_path, capsys):
    """rsparse-convert --sparsity writes base + companion; rsparse-companion, inspect and perplexity use them."""
    from rsparse_converter.cli import main as convert_main
    from rsparse_converter.inspect import main as inspect_main
    from rsparse_converter.perplexity import main as ppl_main
    from rsparse_converter.rsparse_cli import main as companion_main

    d = make_tiny_llama(tmp_path / "hf", "mha_tied")
    small = ["--calib-tokens", "256", "--fit-tokens", "128", "--seq-len", "64", "--population", "3",
             "--generations", "1", "--groups", "1", "--no-progress"]
    base = tmp_path / "t.gguf"
    assert convert_main([str(d), "--outtype", "f32", "-o", str(base), "--sparsity", "0.5", *small]) == 0
    assert (tmp_path / "t.rsparse.gguf").is_file() and (tmp_path / "t.rsparse.gguf.search.json").is_file()
    assert Companion.for_base(base).recipe == "searched"
    out = tmp_path / "t2.rsparse.gguf"
    assert companion_main([str(base), str(d), "--sparsity", "0.4", "--recipe", "sparse-only", "--paper-faithful",
                           "--companion-out", str(out), *small]) == 0
    c = Companion(out, base)
    assert (c.rho == 1).all() and (c.rank == 0).all() and c.tau_calibration == "dense" and c.factors == "svd"
    capsys.readouterr()
    assert inspect_main([str(out), "--png", str(tmp_path / "p.png")]) == 0
    text = capsys.readouterr().out
    assert "sparse-only" in text and "ffn_down" in text and ("plot:" in text or "matplotlib is not installed" in text)
    assert ppl_main([str(d), "--companion", str(out), "--base", str(base), "--seq-len", "64", "--windows", "2"]) == 0
    text = capsys.readouterr().out
    assert "strict  rsparse" in text and "paper   dense" in text
    assert companion_main([str(tmp_path / "missing.gguf"), str(d), "--sparsity", "0.5", *small]) == 1
    assert "missing.gguf" in capsys.readouterr().err
