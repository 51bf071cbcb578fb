"""Write the companion GGUF `<model>.rsparse.gguf` (the offline half; rsparse_cpp/companion.py reads it).

Layout choices:
- The sparse-path weight is W transposed, (in, out), so the kept input channels are whole rows: a token that keeps
  k channels reads k contiguous rows. It is stored in the base's weight type (quantization blocks now run along
  the output dimension; a row that is not whole blocks falls back to F16, as the base's converter does).
- U_r and S_r V_r^T are F32 when the base is F32 (the runtime must match the reference to 1e-4 there), else F16:
  they are read every token like the weights, F16 halves those bytes, and its 1e-3 relative rounding is below
  the quantization error of a Q8_0/Q4_0 base.
- Rows of the attn_q/attn_k outputs follow the base's permute_qk order, in the weight and in U_r, so the runtime
  applies its RoPE to the output as it does for the base's own Q/K.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import gguf
import numpy as np

from rsparse_cpp.companion import fingerprint
from rsparse_cpp.constants import (COMPANION_ARCH, COMPANION_VERSION, LINEARS, GGMLType, Key, RSparseKey,
                                   RSparseTensor, Tensor, companion_type)
from rsparse_cpp.config import Config
from rsparse_cpp.gguf_file import GGUFFile

from .architectures import permute_qk
from .atomic import atomic_gguf
from .calibrate import Plan
from .quantize import encode, tensor_type


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of permute_qk: llama.cpp's row order back to HF's."""
    n_out = w.shape[0]
    return w.reshape(n_head, n_out // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantize(data: np.ndarray, ttype: GGMLType, shape: tuple[int, ...]) -> np.ndarray:
    if ttype in (GGMLType.F32, GGMLType.F16):
        return np.asarray(data, dtype=np.float32).reshape(shape)
    return gguf.quants.dequantize(np.asarray(data), gguf.GGMLQuantizationType(int(ttype))).reshape(shape)


def write_companion(out_path: str | os.PathLike, base_path: str | os.PathLike, model, plan: Plan, recipe: str,
                    recipe_info: dict, calibration: dict, progress: bool = False,
                    weight_type: GGMLType | None = None) -> Path:
    """Write the companion of `base_path` for the transformers `model` it was converted from.
    `calibration`: {"source", "sha256", "tokens", "seq_len"}. `weight_type`: the sparse-path copy's type (default:
    each linear's type in the base)."""
    from .reference import iter_linears

    base = GGUFFile(base_path)
    cfg = Config.from_gguf(base)  # the base's own keys, whatever its family, checked
    fam, n_layer, n_head, n_head_kv = cfg.family, cfg.n_layer, cfg.n_head, cfg.n_head_kv
    if n_layer != len(model.model.layers) or plan.rho.shape != (n_layer, len(LINEARS)):
        raise ValueError(f"{base_path}: {n_layer} blocks, model/plan have {len(model.model.layers)}/{plan.rho.shape}")
    base_fp = fingerprint(base_path)

    out_path = Path(out_path)
    with atomic_gguf(out_path, COMPANION_ARCH, progress) as w:
        w.add_string(Key.NAME, str(base.get(Key.NAME, base_path.name if isinstance(base_path, Path) else base_path)))
        w.add_uint32(RSparseKey.VERSION, COMPANION_VERSION)
        w.add_uint32(RSparseKey.BLOCK_COUNT, n_layer)
        w.add_array(RSparseKey.LINEARS, list(LINEARS))
        w.add_string(RSparseKey.BASE_FINGERPRINT, base_fp)
        w.add_string(RSparseKey.BASE_FILE, Path(base_path).name)
        w.add_float32(RSparseKey.SPARSITY, float(plan.sparsity))
        w.add_string(RSparseKey.RECIPE, recipe)
        w.add_string(RSparseKey.RECIPE_JSON, json.dumps(recipe_info, sort_keys=True))
        w.add_string(RSparseKey.FACTORS, plan.factors)
        w.add_string(RSparseKey.TAU_CALIBRATION, plan.tau_mode)
        w.add_string(RSparseKey.SCORE, "abs_x_colnorm_all" if plan.score_all else "abs_x_colnorm")
        w.add_string(RSparseKey.CALIB_SOURCE, str(calibration["source"]))
        w.add_string(RSparseKey.CALIB_SHA256, str(calibration["sha256"]))
        w.add_uint32(RSparseKey.CALIB_TOKENS, int(calibration["tokens"]))
        w.add_uint32(RSparseKey.CALIB_SEQ_LEN, int(calibration["seq_len"]))
        arr = lambda key, vals, t: w.add_key_value(key, list(vals), gguf.GGUFValueType.ARRAY, sub_type=t)  # noqa: E731
        arr(RSparseKey.TAU, plan.tau.reshape(-1).astype(float), gguf.GGUFValueType.FLOAT32)
        arr(RSparseKey.RHO, plan.rho.reshape(-1).astype(float), gguf.GGUFValueType.FLOAT32)
        arr(RSparseKey.RANK, plan.rank.reshape(-1).astype(int).tolist(), gguf.GGUFValueType.UINT32)
        arr(RSparseKey.KEEP, plan.keep.reshape(-1).astype(int).tolist(), gguf.GGUFValueType.UINT32)

        for bid, name, module in iter_linears(model):
            i = LINEARS.index(name)
            base_info = base.tensors.get(Tensor.blk(f"blk.{{bid}}.{name}.weight", bid))
            weight = module.weight.detach().float().numpy()  # (out, in), HF row order
            if base_info is None or base_info.shape != weight.shape:
                raise ValueError(f"{base_path}: blk.{bid}.{name}.weight is "
                                 f"{None if base_info is None else base_info.shape}, model has {weight.shape}")
            u = plan.u.get((bid, i))
            u = None if u is None else u.detach().float().numpy()
            if fam.permuted_qk and name in ("attn_q", "attn_k"):  # the base's row order
                heads = n_head if name == "attn_q" else n_head_kv
                weight = permute_qk(weight, heads)
                u = None if u is None else permute_qk(u, heads)
            wt = np.ascontiguousarray(weight.T)  # (in, out)
            wtype = tensor_type(wt, companion_type(base_info.type) if weight_type is None else weight_type)
            name_of = lambda tmpl: RSparseTensor.blk(tmpl, bid, name)  # noqa: E731
            w.add_tensor(name_of(RSparseTensor.WEIGHT), encode(wt, wtype),
                         raw_dtype=gguf.GGMLQuantizationType(int(wtype)))
            if u is not None:
                ftype = GGMLType.F32 if base_info.type == GGMLType.F32 else GGMLType.F16
                vs = plan.vs[(bid, i)].detach().float().numpy()
                for tmpl, arr in ((RSparseTensor.U, u), (RSparseTensor.VS, vs)):
                    w.add_tensor(name_of(tmpl), encode(arr, ftype), raw_dtype=gguf.GGMLQuantizationType(int(ftype)))
            w.add_tensor(name_of(RSparseTensor.COLNORM), module.colnorm.detach().float().numpy().copy())
    return out_path
