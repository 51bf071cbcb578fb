"""Every GGUF key and tensor name rsparse.cpp reads or writes, in one table.

Stock names follow llama.cpp (so that llama.cpp loads our base files unchanged); `rsparse.*` names belong to the
companion file. The converter imports this module; the runtime never imports the converter.
"""
from __future__ import annotations

import enum

ARCH = "llama"  # general.architecture of Llama-family base files (families.py: the others)
COMPANION_ARCH = "rsparse"  # general.architecture of the companion file
COMPANION_SUFFIX = ".rsparse.gguf"  # <model>.gguf -> <model>.rsparse.gguf

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
GGUF_DEFAULT_ALIGNMENT = 32


class GGMLType(enum.IntEnum):
    """Weight types we read and write; numbers are ggml's, so files stay interchangeable."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    BF16 = 30


# ggml type -> (elements per block, bytes per block). A Q4_0 block: fp16 scale + 16 bytes of nibbles;
# a Q8_0 block: fp16 scale + 32 int8; the others' layouts: native/src/quant.h.
BLOCK = {
    GGMLType.F32: (1, 4),
    GGMLType.F16: (1, 2),
    GGMLType.Q4_0: (32, 18),
    GGMLType.Q4_1: (32, 20),
    GGMLType.Q5_0: (32, 22),
    GGMLType.Q5_1: (32, 24),
    GGMLType.Q8_0: (32, 34),
    GGMLType.Q4_K: (256, 144),
    GGMLType.Q5_K: (256, 176),
    GGMLType.Q6_K: (256, 210),
    GGMLType.BF16: (1, 2),
}

# The types we write (rsparse-convert --outtype) and the types of a companion's sparse-path copy, which the
# input-channel-major kernels read (native/src/quant.h: rs_type_wt_ok). Every type above runs dense.
WRITE_TYPES = (GGMLType.F32, GGMLType.F16, GGMLType.Q8_0, GGMLType.Q4_0)
SPARSE_TYPES = WRITE_TYPES


def companion_type(base_type: GGMLType) -> GGMLType:
    """The default type of a companion's sparse-path copy of a base linear of base_type: the same where the sparse
    kernels read it; otherwise the nearest they read at no fewer bits per weight, except that 4.5-5 bit types
    (Q4_1, Q4_K) go to Q4_0 rather than double their bytes: BF16 -> F16 (exact for weights in F16's range),
    Q5_0, Q5_1, Q5_K, Q6_K -> Q8_0, Q4_1, Q4_K -> Q4_0."""
    if base_type in SPARSE_TYPES:
        return base_type
    if base_type == GGMLType.BF16:
        return GGMLType.F16
    return GGMLType.Q4_0 if base_type in (GGMLType.Q4_1, GGMLType.Q4_K) else GGMLType.Q8_0


class Key:
    """Metadata keys. `{arch}` is filled with general.architecture."""

    ARCHITECTURE = "general.architecture"
    NAME = "general.name"
    FILE_TYPE = "general.file_type"
    ALIGNMENT = "general.alignment"
    QUANT_VERSION = "general.quantization_version"

    CONTEXT_LENGTH = "{arch}.context_length"
    EMBEDDING_LENGTH = "{arch}.embedding_length"
    BLOCK_COUNT = "{arch}.block_count"
    FEED_FORWARD_LENGTH = "{arch}.feed_forward_length"
    HEAD_COUNT = "{arch}.attention.head_count"
    HEAD_COUNT_KV = "{arch}.attention.head_count_kv"
    RMS_EPS = "{arch}.attention.layer_norm_rms_epsilon"
    KEY_LENGTH = "{arch}.attention.key_length"
    VALUE_LENGTH = "{arch}.attention.value_length"
    ROPE_DIMENSION_COUNT = "{arch}.rope.dimension_count"
    ROPE_FREQ_BASE = "{arch}.rope.freq_base"
    VOCAB_SIZE = "{arch}.vocab_size"

    TOKENIZER_MODEL = "tokenizer.ggml.model"
    TOKENIZER_PRE = "tokenizer.ggml.pre"
    TOKENS = "tokenizer.ggml.tokens"
    TOKEN_TYPE = "tokenizer.ggml.token_type"
    SCORES = "tokenizer.ggml.scores"
    MERGES = "tokenizer.ggml.merges"
    BOS_ID = "tokenizer.ggml.bos_token_id"
    EOS_ID = "tokenizer.ggml.eos_token_id"
    UNK_ID = "tokenizer.ggml.unknown_token_id"
    PAD_ID = "tokenizer.ggml.padding_token_id"
    EOT_ID = "tokenizer.ggml.eot_token_id"
    ADD_BOS = "tokenizer.ggml.add_bos_token"
    ADD_EOS = "tokenizer.ggml.add_eos_token"
    ADD_SPACE_PREFIX = "tokenizer.ggml.add_space_prefix"
    CHAT_TEMPLATE = "tokenizer.chat_template"

    @staticmethod
    def arch(key: str, arch: str = ARCH) -> str:
        return key.format(arch=arch)


class TokenType(enum.IntEnum):
    """llama.cpp's token attribute numbers (tokenizer.ggml.token_type)."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


class Tensor:
    """Tensor names. `{bid}` is the block (layer) index."""

    TOKEN_EMBD = "token_embd.weight"
    OUTPUT_NORM = "output_norm.weight"
    OUTPUT = "output.weight"
    ROPE_FREQS = "rope_freqs.weight"

    ATTN_NORM = "blk.{bid}.attn_norm.weight"
    ATTN_Q = "blk.{bid}.attn_q.weight"
    ATTN_K = "blk.{bid}.attn_k.weight"
    ATTN_V = "blk.{bid}.attn_v.weight"
    ATTN_OUTPUT = "blk.{bid}.attn_output.weight"
    FFN_NORM = "blk.{bid}.ffn_norm.weight"
    FFN_GATE = "blk.{bid}.ffn_gate.weight"
    FFN_UP = "blk.{bid}.ffn_up.weight"
    FFN_DOWN = "blk.{bid}.ffn_down.weight"
    # beyond Llama (families.py): Qwen2's q/k/v biases, Qwen3's per-head q/k RMSNorm weights
    ATTN_Q_BIAS = "blk.{bid}.attn_q.bias"
    ATTN_K_BIAS = "blk.{bid}.attn_k.bias"
    ATTN_V_BIAS = "blk.{bid}.attn_v.bias"
    ATTN_Q_NORM = "blk.{bid}.attn_q_norm.weight"
    ATTN_K_NORM = "blk.{bid}.attn_k_norm.weight"

    @staticmethod
    def blk(name: str, bid: int) -> str:
        return name.format(bid=bid)


# The seven linears of a decoder block that R-Sparse sparsifies, by their short GGUF names.
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


# ---- the companion file (<model>.rsparse.gguf): R-Sparse data for every sparsified linear -------------------
COMPANION_VERSION = 1


class RSparseKey:
    """Companion metadata keys. Per-linear scalars are arrays indexed [bid * len(LINEARS) + LINEARS.index(name)]."""

    VERSION = "rsparse.version"  # u32, COMPANION_VERSION
    BLOCK_COUNT = "rsparse.block_count"  # u32, the base's llama.block_count
    LINEARS = "rsparse.linears"  # [str], the order of the per-linear arrays (LINEARS)
    BASE_FINGERPRINT = "rsparse.base.fingerprint"  # str, rsparse_cpp.companion.fingerprint(base)
    BASE_FILE = "rsparse.base.file"  # str, the base's file name when the companion was written (informational)
    SPARSITY = "rsparse.sparsity"  # f32, model-level target: fraction of block-linear parameters not read per token
    RECIPE = "rsparse.recipe"  # str: sparse-only | uniform | searched
    RECIPE_JSON = "rsparse.recipe.json"  # str, the full recipe (rho grid, search settings, fitness) as JSON
    FACTORS = "rsparse.factors"  # str: svd (the paper's top-r SVD of W) | data-aware
    TAU_CALIBRATION = "rsparse.tau.calibration"  # str: dense (the paper's) | sequential
    SCORE = "rsparse.score"  # str: one of SCORES
    CALIB_SOURCE = "rsparse.calibration.source"  # str, text source and split
    CALIB_SHA256 = "rsparse.calibration.sha256"  # str, sha256 of the calibration text
    CALIB_TOKENS = "rsparse.calibration.tokens"  # u32, calibration tokens used for tau and factors
    CALIB_SEQ_LEN = "rsparse.calibration.seq_len"  # u32
    TAU = "rsparse.tau"  # [f32], threshold on the score per linear
    RHO = "rsparse.rho"  # [f32], share of the budget kept as exact channels per linear
    RANK = "rsparse.rank"  # [u32], low-rank rank per linear (0: no factor tensors)
    KEEP = "rsparse.keep"  # [u32], nominal kept input channels per linear (round(in * C * rho))


class RSparseTensor:
    """Companion tensor names (numpy shapes; GGUF ne is reversed). None ends in .lora_a/.lora_b, which gguf-py and
    llama.cpp treat as LoRA adapters. Rows of attn_q/attn_k outputs follow the base's Q/K permutation (permute_qk)."""

    WEIGHT = "blk.{bid}.{linear}.rsparse_weight"  # (in, out) in the base's weight type, blocks along out
    U = "blk.{bid}.{linear}.rsparse_u"  # (out, rank) F32 or F16
    VS = "blk.{bid}.{linear}.rsparse_vs"  # (rank, in): V_r^T scaled by S_r, F32 or F16
    COLNORM = "blk.{bid}.{linear}.rsparse_colnorm"  # (in,) F32: ||W[:, j]||_2

    @staticmethod
    def blk(name: str, bid: int, linear: str) -> str:
        return name.format(bid=bid, linear=linear)


# rsparse.score: the channel score the thresholds compare. abs_x_colnorm: |x| * colnorm, and |x| alone where
# rho == 1 (plain magnitude sparsity, the paper's and TEAL's); abs_x_colnorm_all: |x| * colnorm on every linear
# (at rho == 1 too: WINA's weight-informed score).
SCORES = ("abs_x_colnorm", "abs_x_colnorm_all")
