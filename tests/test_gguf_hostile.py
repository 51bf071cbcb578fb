"""A corpus of crafted corrupt GGUF files, one per failure mode: each must fail with a GGUFError naming the problem.

In the spirit of llama.cpp's tests/test-gguf.cpp: counts, lengths, types, alignment, offsets and model-level
hyper-parameters are forged one at a time on top of a valid tiny model."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from gguf_craft import ARR, F32, STR, U32, U64, Craft, gstr, tiny_model
from rsparse_cpp.config import Config
from rsparse_cpp.gguf_file import GGUFError, GGUFFile
from rsparse_cpp.weights import Weights


def load(path):
    f = GGUFFile(path)
    cfg = Config.from_gguf(f)
    return f, cfg, Weights.from_gguf(f, cfg)


def test_valid_tiny_model_loads(tmp_path):
    p = tmp_path / "ok.gguf"
    p.write_bytes(tiny_model().build())
    f, cfg, w = load(p)
    assert cfg.n_embd == 32 and cfg.n_head_kv == 1 and len(w.layers) == 1
    assert w.output is w.token_embd  # tied: no output.weight


def _raw_kv(key: bytes, vtype: int, payload: bytes) -> bytes:
    return key + struct.pack("<I", vtype) + payload


def forge(kind: str) -> bytes:
    """Build the corrupt file `kind`."""
    c = tiny_model()
    if kind == "empty":
        return b""
    if kind == "truncated_header":
        return c.build()[:10]
    if kind == "bad_magic":
        c.magic = b"GGML"
    elif kind == "version_1":
        c.version = 1
    elif kind == "version_99":
        c.version = 99
    elif kind == "huge_kv_count":
        c.n_kv = 1 << 62
    elif kind == "huge_tensor_count":
        c.n_tensors = 1 << 62
    elif kind == "kv_count_past_eof":
        c.n_kv = len(c.kv) + 3
    elif kind == "huge_key_length":
        c.kv.insert(0, gstr(b"x", length=1 << 60) + b"x")
    elif kind == "key_past_eof":
        c.kv.append(gstr(b"abc", length=1000))
        return _truncate_after_kv(c)
    elif kind == "unknown_value_type":
        c.kv.insert(0, _raw_kv(gstr("weird"), 99, b"\0" * 8))
    elif kind == "huge_string_value":
        c.kv.insert(0, _raw_kv(gstr("s"), STR, struct.pack("<Q", 1 << 50)))
    elif kind == "huge_string_array":
        c.kv.insert(0, _raw_kv(gstr("a"), ARR, struct.pack("<IQ", STR, 1 << 55)))
    elif kind == "huge_numeric_array":
        c.kv.insert(0, _raw_kv(gstr("a"), ARR, struct.pack("<IQ", U32, 1 << 60)))
    elif kind == "nested_array":
        c.kv.insert(0, _raw_kv(gstr("a"), ARR, struct.pack("<IQ", ARR, 1) + struct.pack("<IQ", U32, 0)))
    elif kind == "array_unknown_type":
        c.kv.insert(0, _raw_kv(gstr("a"), ARR, struct.pack("<IQ", 77, 0)))
    elif kind == "invalid_utf8_key":
        c.kv.insert(0, _raw_kv(gstr(b"\xff\xfe"), U32, struct.pack("<I", 1)))
    elif kind == "duplicate_key":
        c.add("llama.block_count", U32, 1)
    elif kind == "alignment_not_power_of_two":
        c.add("general.alignment", U32, 48)
    elif kind == "alignment_zero":
        c.add("general.alignment", U32, 0)
    elif kind == "alignment_huge":
        c.add("general.alignment", U32, 1 << 24)
    elif kind == "alignment_wrong_type":
        c.add("general.alignment", STR, "32")
    elif kind in ("dims_zero", "dims_five", "dim_is_zero", "element_overflow", "unknown_tensor_type",
                  "unsupported_iq2_xxs", "q8_row_not_block_multiple", "q4_k_row_not_super_block",
                  "q6_k_truncated_super_block", "offset_misaligned", "offset_past_eof",
                  "overlap", "duplicate_tensor", "empty_tensor_name", "long_tensor_name"):
        _forge_tensor(c, kind)
    elif kind == "truncated_tensor_info":
        raw = c.build()
        header_end = 24 + sum(map(len, c.kv)) + sum(map(len, c.infos))
        return raw[:header_end - 5]
    else:
        raise AssertionError(kind)
    return c.build()


def _truncate_after_kv(c: Craft) -> bytes:
    raw = c.build()
    return raw[:24 + sum(map(len, c.kv))]


def _forge_tensor(c: Craft, kind: str) -> None:
    x = np.zeros(32, np.float32)
    if kind == "dims_zero":
        c.infos.append(gstr("z") + struct.pack("<I", 0) + struct.pack("<IQ", 0, 0))
    elif kind == "dims_five":
        c.infos.append(gstr("z") + struct.pack("<I", 5) + struct.pack("<5Q", 1, 1, 1, 1, 1) + struct.pack("<IQ", 0, 0))
    elif kind == "dim_is_zero":
        c.tensor("z", x, ne=[32, 0])
    elif kind == "element_overflow":
        c.tensor("z", x, ne=[1 << 32, 1 << 32, 1 << 32])
    elif kind == "unknown_tensor_type":
        c.tensor("z", x, ggml_type=99)
    elif kind == "unsupported_iq2_xxs":
        c.tensor("z", x, ggml_type=16)
    elif kind == "q8_row_not_block_multiple":
        c.tensor("z", np.zeros(34, np.uint8), ggml_type=8, ne=[33])
    elif kind == "q4_k_row_not_super_block":  # 32 elements: a whole block for Q4_0, not for Q4_K's 256
        c.tensor("z", np.zeros(144, np.uint8), ggml_type=12, ne=[32])
    elif kind == "q6_k_truncated_super_block":  # two rows of one super-block each, but the file ends mid-block
        c.tensor("z", np.zeros(210, np.uint8), ggml_type=14, ne=[256, 2])
    elif kind == "offset_misaligned":
        c.tensor("z", x, offset=4)
    elif kind == "offset_past_eof":
        c.tensor("z", x, offset=1 << 40)
    elif kind == "overlap":
        c.tensor("z", x, offset=0)
    elif kind == "duplicate_tensor":
        c.tensor("blk.0.attn_norm.weight", x)
    elif kind == "empty_tensor_name":
        c.tensor("", x)
    elif kind == "long_tensor_name":
        c.tensor("n" * 1000, x)


FILE_CASES = {
    "empty": "too small",
    "truncated_header": "too small",
    "bad_magic": "magic",
    "version_1": "unsupported GGUF version 1",
    "version_99": "unsupported GGUF version 99",
    "huge_kv_count": "kv_count",
    "huge_tensor_count": "tensor_count",
    "kv_count_past_eof": "needs|exceeds limit",
    "huge_key_length": "exceeds limit",
    "key_past_eof": "needs 1000 bytes",
    "unknown_value_type": "unknown value type 99",
    "huge_string_value": "exceeds limit",
    "huge_string_array": "cannot fit",
    "huge_numeric_array": "needs",
    "nested_array": "nested arrays",
    "array_unknown_type": "unknown array element type 77",
    "invalid_utf8_key": "not valid UTF-8",
    "duplicate_key": "duplicate key",
    "alignment_not_power_of_two": "general.alignment",
    "alignment_zero": "general.alignment",
    "alignment_huge": "general.alignment",
    "alignment_wrong_type": "general.alignment",
    "dims_zero": "0 dims",
    "dims_five": "5 dims",
    "dim_is_zero": "has a zero",
    "element_overflow": "too many elements",
    "unknown_tensor_type": "unsupported tensor type 99",
    "unsupported_iq2_xxs": "unsupported tensor type 16",
    "q8_row_not_block_multiple": "not a multiple of Q8_0's block size",
    "q4_k_row_not_super_block": "not a multiple of Q4_K's block size 256",
    "q6_k_truncated_super_block": "past the end of the file",
    "offset_misaligned": "not aligned",
    "offset_past_eof": "past the end of the file",
    "overlap": "overlaps",
    "duplicate_tensor": "duplicate tensor name",
    "empty_tensor_name": "empty tensor name",
    "long_tensor_name": "exceeds limit",
    "truncated_tensor_info": "needs",
}


@pytest.mark.parametrize("kind", sorted(FILE_CASES))
def test_corrupt_file_fails_cleanly(tmp_path, kind):
    p = tmp_path / f"{kind}.gguf"
    p.write_bytes(forge(kind))
    with pytest.raises(GGUFError, match=FILE_CASES[kind]) as e:
        load(p)
    assert str(p) in str(e.value)


MODEL_CASES = {
    # name: (tiny_model kwargs, expected message)
    "wrong_architecture": (dict(override={"general.architecture": (STR, "gpt2")}), "unsupported architecture 'gpt2'"),
    "missing_architecture": (dict(skip_kv="general.architecture"), "general.architecture: missing"),
    "missing_embedding_length": (dict(skip_kv="llama.embedding_length"), "llama.embedding_length: missing"),
    "embedding_length_is_string": (dict(override={"llama.embedding_length": (STR, "32")}), "expected int"),
    "head_count_zero": (dict(override={"llama.attention.head_count": (U32, 0)}), "outside"),
    "head_count_kv_not_divisor": (dict(override={"llama.attention.head_count_kv": (U32, 3)}), "does not divide"),
    "rms_eps_nan": (dict(override={"llama.attention.layer_norm_rms_epsilon": (F32, float("nan"))}), "outside"),
    "block_count_huge": (dict(override={"llama.block_count": (U64, 1 << 40)}), "outside"),
    "missing_tensor": (dict(skip_tensor="blk.0.ffn_up.weight"), "blk.0.ffn_up.weight: tensor missing"),
    "wrong_shape": (dict(tensor_override={"blk.0.attn_q.weight": np.zeros((16, 32), np.float32)}), "expected"),
    "norm_with_nan": (dict(tensor_override={"blk.0.attn_norm.weight": np.full(32, np.nan, np.float32)}), "NaN"),
    "tokens_not_a_list": (dict(override={"tokenizer.ggml.tokens": (U32, 7)}), "tokenizer.ggml.tokens: expected list"),
    "missing_tokens": (dict(skip_kv="tokenizer.ggml.tokens"), "tokenizer.ggml.tokens: missing"),
    "norm_not_f32": (dict(tensor_override={"output_norm.weight": np.ones(32, np.float16)}), "expected F32"),
}


@pytest.mark.parametrize("kind", sorted(MODEL_CASES))
def test_model_level_problems_fail_cleanly(tmp_path, kind):
    kwargs, message = MODEL_CASES[kind]
    p = tmp_path / f"{kind}.gguf"
    p.write_bytes(tiny_model(**kwargs).build())
    with pytest.raises(GGUFError, match=message):
        load(p)


def test_missing_file(tmp_path):
    with pytest.raises(GGUFError, match="No such file"):
        GGUFFile(tmp_path / "nope.gguf")


def test_gguf_py_written_file_reads_back(tmp_path):
    """Our reader agrees with gguf-py's writer on values, shapes and bytes."""
    import gguf

    p = tmp_path / "w.gguf"
    w = gguf.GGUFWriter(p, arch="llama")
    w.add_uint32("llama.block_count", 7)
    w.add_string("s", "héllo")
    w.add_array("arr", [1, 2, 3])
    q = gguf.quants.quantize(np.random.default_rng(0).normal(size=(4, 64)).astype(np.float32),
                             gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("q", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("f", np.arange(6, dtype=np.float16).reshape(2, 3))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = GGUFFile(p)
    assert f.fields["llama.block_count"] == 7 and f.fields["s"] == "héllo"
    assert list(f.fields["arr"]) == [1, 2, 3]
    assert f.tensors["q"].shape == (4, 64) and np.array_equal(f.tensor("q"), q)
    assert np.array_equal(f.tensor("f"), np.arange(6, dtype=np.float16).reshape(2, 3))
