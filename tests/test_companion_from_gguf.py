"""rsparse-companion BASE without the HF checkpoint (converter/from_gguf.py): the base's dequantized weights and
its own tokenizer, and --companion-type for the sparse-path copy."""
from __future__ import annotations

from conftest import make_tiny_llama


def test_companion_without_hf_checkpoint(tmp_path, capsys):
    """rsparse-companion BASE alone: the base's dequantized weights and its own tokenizer. From an F32 base they are
    the HF weights exactly, so the thresholds equal those of a companion made from the HF folder; from Q8_0 the
    companion loads, matches its base and decodes sparsely."""
    import numpy as np

    from rsparse_converter.cli import main as convert_main
    from rsparse_converter.rsparse_cli import main as companion_main
    from rsparse_cpp.companion import Companion
    from rsparse_cpp.model import Model

    d = make_tiny_llama(tmp_path / "hf", "gqa_untied")
    small = ["--calib-tokens", "128", "--seq-len", "32", "--recipe", "sparse-only", "--val-tokens", "0",
             "--no-progress"]
    base = tmp_path / "t.gguf"
    assert convert_main([str(d), "--outtype", "f32", "-o", str(base)]) == 0
    from_hf, alone = tmp_path / "hf.rsparse.gguf", tmp_path / "alone.rsparse.gguf"
    assert companion_main([str(base), str(d), "--sparsity", "0.5", "--companion-out", str(from_hf), *small]) == 0
    assert companion_main([str(base), "--sparsity", "0.5", "--companion-out", str(alone), *small]) == 0
    a, b = Companion(from_hf, base), Companion(alone, base)
    np.testing.assert_allclose(b.tau, a.tau, rtol=1e-6)
    for name in ("attn_q", "attn_k", "ffn_down"):
        np.testing.assert_array_equal(b.linear(0, name).weight, a.linear(0, name).weight)

    q8 = tmp_path / "t8.gguf"
    assert convert_main([str(d), "--outtype", "q8_0", "-o", str(q8)]) == 0
    assert companion_main([str(q8), "--sparsity", "0.5", *small]) == 0
    model = Model.load(q8, n_ctx=64, n_threads=2)
    assert model.sparse is not None
    model.forward([1, 2, 3])
    for t in range(4, 12):
        assert np.isfinite(model.forward([t])).all()
    assert 0.2 < 1 - model.sparse.read_fraction() < 0.8

    # --companion-type; a Q4_0 base alone gets a note on what its Q4_0 companion loses
    from rsparse_cpp.constants import GGMLType

    q4 = tmp_path / "t4.gguf"
    assert convert_main([str(d), "--outtype", "q4_0", "-o", str(q4)]) == 0
    capsys.readouterr()
    assert companion_main([str(q4), "--sparsity", "0.5", *small]) == 0
    assert "note: a Q4_0 base without its HF checkpoint" in capsys.readouterr().err
    c8 = tmp_path / "t4.q8.rsparse.gguf"
    assert companion_main([str(q4), "--sparsity", "0.5", "--companion-type", "q8_0", "--companion-out", str(c8),
                           *small]) == 0
    assert "note:" not in capsys.readouterr().err
    assert Companion(c8, q4).linear(0, "attn_q").weight_type == GGMLType.Q8_0
    assert Companion(tmp_path / "t4.rsparse.gguf", q4).linear(0, "attn_q").weight_type == GGMLType.Q4_0
