/* quant.h -- weight storage formats, written once: ggml's block layouts and fp16 <-> fp32.
 *
 * Everything here is little-endian, like GGUF files. */
#ifndef RS_QUANT_H
#define RS_QUANT_H

#include <stdint.h>
#include <string.h>

#include "rsparse.h"

#define RS_QK 32  /* elements per block of Q4_0 and Q8_0 */

/* value[i] = qs[i] * d */
typedef struct {
    uint16_t d;          /* fp16 scale */
    int8_t qs[RS_QK];
} block_q8_0;

/* value[i] = ((qs[i] & 0xF) - 8) * d and value[i + 16] = ((qs[i] >> 4) - 8) * d, for i in [0, 16): element i and
 * element i + 16 share a byte, which lets SIMD code unpack both halves of a block with one mask and one shift. */
typedef struct {
    uint16_t d;          /* fp16 scale */
    uint8_t qs[RS_QK / 2];
} block_q4_0;

/* Q4_0 in tiles of 16 rows (RS_TYPE_Q4_0_R16, rsparse.h): one record per tile and block of 32 inputs. */
#define RS_R16 16
typedef struct {
    uint16_t d[RS_R16];                  /* row r's fp16 scale */
    uint8_t qs[4][RS_R16][4];            /* [t][r]: bytes 4t..4t+3 of row r's block_q4_0.qs */
} block_q4_0_r16;

/* Row r (0..15) of tile record b as a block_q4_0. */
static inline void rs_r16_block(const block_q4_0_r16 *b, int r, block_q4_0 *out)
{
    out->d = b->d[r];
    for (int t = 0; t < 4; t++)
        memcpy(out->qs + 4 * t, b->qs[t][r], 4);
}

_Static_assert(sizeof(block_q8_0) == 34, "block_q8_0 must match ggml's 34-byte layout");
_Static_assert(sizeof(block_q4_0_r16) == 16 * 18, "a tile record holds 16 Q4_0 blocks");

/* Q8_0 in tiles of 16 rows (RS_TYPE_Q8_0_R16): one record per tile and block of 32 inputs. */
typedef struct {
    uint16_t d[RS_R16];
    int8_t qs[8][RS_R16][4];             /* [t][r]: weights 4t..4t+3 of row r */
} block_q8_0_r16;
_Static_assert(sizeof(block_q8_0_r16) == 16 * 34, "a tile record holds 16 Q8_0 blocks");

static inline void rs_r16_block_q8(const block_q8_0_r16 *b, int r, block_q8_0 *out)
{
    out->d = b->d[r];
    for (int t = 0; t < 8; t++)
        memcpy(out->qs + 4 * t, b->qs[t][r], 4);
}
_Static_assert(sizeof(block_q4_0) == 18, "block_q4_0 must match ggml's 18-byte layout");

/* The other types llama.cpp's quantizer writes for its common presets (Q4_K_M, Q5_K_M, Q6_K: a "Q4_K_M" file mixes
 * Q4_K, Q6_K and, for rows that are not whole super-blocks, Q5_0 and Q8_0). Read only, never written by us. Every
 * block of 32 elements (of a super-block, for the K types) is, exactly,
 *     value[e] = scale * q[e] + min
 * with small integers q (rs_unpack below): the dense kernels multiply the q with int8 activations in integers and
 * apply scale and min once per block of 32 (min times the activations' block sum). */

/* value[i] = (qs[i] & 0xF) * d + m, value[i + 16] = (qs[i] >> 4) * d + m */
typedef struct {
    uint16_t d, m;
    uint8_t qs[RS_QK / 2];
} block_q4_1;

/* Q4_0's nibbles with a fifth bit: element e's is bit e of qh (little-endian); value = (q - 16) * d */
typedef struct {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[RS_QK / 2];
} block_q5_0;

/* value = q * d + m, q as Q5_0's */
typedef struct {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[RS_QK / 2];
} block_q5_1;

#define RS_QK_K 256  /* elements per super-block of the K types */

/* Eight blocks of 32, each with a 6-bit scale and min (rs_k_scales): value = d * sc * q - dmin * m. The 256
 * nibbles come in four runs of 32 bytes: run r's low nibbles are block 2r, its high nibbles block 2r + 1. */
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qs[RS_QK_K / 2];
} block_q4_K;

/* Q4_K plus a fifth bit: element i of block b has bit b of qh[i]. */
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[RS_QK_K / 8];
    uint8_t qs[RS_QK_K / 2];
} block_q5_K;

/* 6-bit q, value = d * scales[e / 16] * (q - 32). Per half of 128: element l + 32 j (l < 32, j < 4) has low bits
 * from ql[l + 32 (j % 2)] (low nibble for j < 2, high for j >= 2) and high bits (qh[l] >> 2 j) & 3. */
typedef struct {
    uint8_t ql[RS_QK_K / 2];
    uint8_t qh[RS_QK_K / 4];
    int8_t scales[RS_QK_K / 16];
    uint16_t d;
} block_q6_K;

_Static_assert(sizeof(block_q4_1) == 20 && sizeof(block_q5_0) == 22 && sizeof(block_q5_1) == 24,
               "the 32-element blocks must match ggml's layouts");
_Static_assert(sizeof(block_q4_K) == 144 && sizeof(block_q5_K) == 176 && sizeof(block_q6_K) == 210,
               "the K blocks must match ggml's layouts");

/* The eight 6-bit scales and mins of a Q4_K / Q5_K super-block from its 12 bytes s, on 32-bit words: bytes 0-3 hold
 * scales 0-3 (low 6 bits), bytes 4-7 mins 0-3; scale 4 + k is byte 8 + k's low nibble under byte k's top two bits,
 * min 4 + k byte 8 + k's high nibble under byte 4 + k's top two bits. Shifting a word moves a neighbour's bits in,
 * which the masks take out. (Block by block, with branches, this took most of a Q4_K decode: kernels_simd.h.) */
static inline void rs_k_scales(const uint8_t *s, uint8_t sc[8], uint8_t m[8])
{
    uint32_t w[3], out[2];
    memcpy(w, s, sizeof w);
    const uint32_t low6 = 0x3F3F3F3Fu, low4 = 0x0F0F0F0Fu, top2 = 0x03030303u;
    out[0] = w[0] & low6;
    out[1] = (w[2] & low4) | ((w[0] >> 6) & top2) << 4;
    memcpy(sc, out, sizeof out);
    out[0] = w[1] & low6;
    out[1] = ((w[2] >> 4) & low4) | ((w[1] >> 6) & top2) << 4;
    memcpy(m, out, sizeof out);
}

static inline float rs_f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, sizeof f); return f; }
static inline uint32_t rs_bits_from_f32(float f) { uint32_t u; memcpy(&u, &f, sizeof u); return u; }

/* IEEE binary16 -> binary32, exact for every input (subnormals, inf, NaN with its payload). Written as three
 * candidates blended with all-ones/all-zeros masks on signed 32-bit values, not branches or ternaries (which gcc 12
 * keeps as control flow): loops over it then vectorize even with plain SSE2, which has signed compares and
 * int -> float conversion but no unsigned ones. F16 decode ran 2x faster for it. */
static inline float rs_fp16_to_fp32(uint16_t h)
{
    const int32_t mag = h & 0x7FFF;
    /* Normal: rebias the exponent from 15 to 127 and widen the mantissa from 10 to 23 bits. */
    const int32_t normal = (mag << 13) + ((127 - 15) << 23);
    /* Inf/NaN: all-ones exponent, mantissa (the NaN payload) kept. */
    const int32_t special = 0x7F800000 | ((mag & 0x3FF) << 13);
    /* Zero/subnormal: mantissa * 2^-24, exact in float. */
    const int32_t tiny = (int32_t)rs_bits_from_f32((float)mag * 0x1p-24f);
    const int32_t is_special = -(int32_t)(mag >= 0x7C00), is_normal = -(int32_t)(mag >= 0x0400);  /* 0 or ~0 */
    const int32_t bits = (special & is_special) | (normal & is_normal & ~is_special) | (tiny & ~is_normal);
    return rs_f32_from_bits(((uint32_t)(h & 0x8000) << 16) | (uint32_t)bits);
}

/* binary32 -> binary16, rounding to nearest even; overflow gives inf, NaN stays NaN (quiet). */
uint16_t rs_fp32_to_fp16(float f);

/* Known weight type? */
int rs_type_ok(int type);

/* A type of the input-channel-major layout (rs_matmul_wt, the sparse kernels): F32, F16, Q8_0, Q4_0. */
int rs_type_wt_ok(int type);

/* Elements per block: 1 for F32/F16/BF16, 256 for the K types, 32 for the other quantized ones; 0 if unknown. */
int64_t rs_type_block(int type);

/* Block k of 32 elements of a row of a quantized type other than Q4_0 and Q8_0 (whose kernels read their blocks
 * directly) as value[e] = scale * q[e] + min: q exact small integers (|q| <= 4096: Q6_K's carries its 8-bit
 * sub-scale), scale and min exact products of the stored fp16 numbers. */
void rs_unpack(int type, const void *row, int64_t k, int32_t *q /* (32,) */, float *scale, float *min);

/* BF16 -> float: the top half of the float's bits. */
static inline float rs_bf16_to_fp32(uint16_t h) { return rs_f32_from_bits((uint32_t)h << 16); }

/* Alignment the kernels need for a row pointer of this type (its widest scalar): 4 for F32, 2 otherwise. */
int64_t rs_type_align(int type);

/* Dequantizes one row of n elements (n a multiple of the block size; not checked here). */
void rs_dequant_row(int type, const void *row, float *out, int64_t n);

/* Activations for the quantized-weight dense kernels: each block of 32 rounded to int8 against its own scale, as
 * llama.cpp rounds them (its Q8_0 activations),
 *   q[i] = round(x[i] / d[k]), d[k] = max |x| over block k / 127   (so |q| <= 127),   s[k] = sum of block k's q,
 * which lets a kernel take a block's 32 products as integer dot-product instructions (vpmaddubsw, vpdpbusd, sdot)
 * on bytes, with no widening of the weights. s[k] lets a kernel multiply unsigned bytes (Q4_0's nibbles, 0..15) by
 * the signed activations and subtract the offset once per block: sum (n - 8) x = sum n x - 8 s. The rounding error
 * of an activation is at most d[k] / 2, 1/254 of its block's largest one. A block holding a NaN or an infinity gets
 * d = NaN (and q = 0, s = 0), so the product is NaN, as it would be in float. n is a multiple of 32 (not checked
 * here); the result depends on x alone, so every path and thread sees the same. */
void rs_quantize_act(const float *x, int64_t n, int8_t *q, float *d, int32_t *s);

/* One block each; inline because the kernels call them in their inner loops. */
static inline void rs_dequant_q8_0(const block_q8_0 *b, float *out /* (32,) */)
{
    const float d = rs_fp16_to_fp32(b->d);
    for (int i = 0; i < RS_QK; i++)
        out[i] = (float)b->qs[i] * d;
}

/* Two loops, not one writing out[i] and out[i + 16]: GCC vectorizes these and kept that one scalar (a 256-token
 * prefill from the companion's layout spent 18% of its time here, 1B-shaped Q4_0). */
static inline void rs_dequant_q4_0(const block_q4_0 *b, float *out /* (32,) */)
{
    const float d = rs_fp16_to_fp32(b->d);
    for (int i = 0; i < RS_QK / 2; i++)
        out[i] = (float)((int)(b->qs[i] & 0x0F) - 8) * d;
    for (int i = 0; i < RS_QK / 2; i++)
        out[i + RS_QK / 2] = (float)((int)(b->qs[i] >> 4) - 8) * d;
}

/* The types in tiles of 16 rows (rs_repack_q4_0_r16, rs_repack_q8_0_r16). */
static inline int rs_type_tiled(int type) { return type == RS_TYPE_Q4_0_R16 || type == RS_TYPE_Q8_0_R16; }

/* Inputs [e0, e0 + n) of row r of a tiled matrix w of n_in inputs a row (e0, n multiples of 32), exactly. */
static inline void rs_dequant_tiled(int type, const void *w, int64_t n_in, int64_t r, int64_t e0, int64_t n,
                                    float *out)
{
    const int64_t nb = n_in / RS_QK, tile = r / RS_R16 * nb;
    for (int64_t k = e0 / RS_QK; k < (e0 + n) / RS_QK; k++) {
        float *o = out + (k * RS_QK - e0);
        if (type == RS_TYPE_Q4_0_R16) {
            block_q4_0 b;
            rs_r16_block(&((const block_q4_0_r16 *)w)[tile + k], (int)(r % RS_R16), &b);
            rs_dequant_q4_0(&b, o);
        } else {
            block_q8_0 b;
            rs_r16_block_q8(&((const block_q8_0_r16 *)w)[tile + k], (int)(r % RS_R16), &b);
            rs_dequant_q8_0(&b, o);
        }
    }
}

#endif /* RS_QUANT_H */
