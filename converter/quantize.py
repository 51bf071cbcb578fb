"""Choose each tensor's GGUF type and encode it (gguf-py's quantizers, the same block layouts llama.cpp uses)."""
from __future__ import annotations

import gguf
import numpy as np

from rsparse_cpp.constants import BLOCK, GGMLType

OUTTYPES = {"f32": GGMLType.F32, "f16": GGMLType.F16, "q8_0": GGMLType.Q8_0, "q4_0": GGMLType.Q4_0}

# general.file_type values (llama.cpp's LLAMA_FTYPE_*): they are not the tensor type numbers
FILE_TYPE = {GGMLType.F32: 0, GGMLType.F16: 1, GGMLType.Q4_0: 2, GGMLType.Q8_0: 7}


def tensor_type(data: np.ndarray, outtype: GGMLType) -> GGMLType:
    """1-D tensors (norms, rope_freqs) stay F32, as llama.cpp expects. A matrix whose rows are not whole
    quantization blocks falls back to F16, as llama.cpp's converter does."""
    if data.ndim == 1:
        return GGMLType.F32
    if data.shape[-1] % BLOCK[outtype][0]:
        return GGMLType.F16
    return outtype


def encode(data: np.ndarray, ttype: GGMLType) -> np.ndarray:
    data = np.ascontiguousarray(data, dtype=np.float32)
    if ttype == GGMLType.F32:
        return data
    if ttype == GGMLType.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType(int(ttype)))
