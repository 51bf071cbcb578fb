/* quant.c -- row sizes, row dequantization, fp32 -> fp16 (the per-element direction lives inline in quant.h) and
 * the repacking of Q4_0 into tiles of 16 rows. */
#include "quant.h"

#include <math.h>
#include <stddef.h>

uint16_t rs_fp32_to_fp16(float f)
{
    const uint32_t x = rs_bits_from_f32(f);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t mag = x & 0x7FFFFFFFu;

    if (mag >= 0x7F800000u)  /* inf, or NaN: keep the top payload bits and force the quiet bit so it stays NaN */
        return sign | 0x7C00u | (mag > 0x7F800000u ? (uint16_t)(0x200u | ((mag >> 13) & 0x3FFu)) : 0u);
    if (mag >= 0x477FF000u)  /* >= 65520 = halfway between 65504 (max half) and 2^16: rounds to inf */
        return sign | 0x7C00u;
    if (mag >= 0x38800000u) {  /* >= 2^-14: normal half. Add just under half an ulp plus the ulp's parity (RNE). */
        const uint32_t r = mag + 0x0FFFu + ((mag >> 13) & 1u);
        return sign | (uint16_t)((r - ((127u - 15u) << 23)) >> 13);
    }
    if (mag <= 0x33000000u)  /* <= 2^-25, half the smallest subnormal: rounds (to even) to zero */
        return sign;
    /* Subnormal half: the result is round(|f| * 2^24). |f| = m * 2^(e - 150) with the implicit bit in m, so
     * |f| * 2^24 = m >> (126 - e); shift is in [14, 24] here. A carry into 0x400 gives the smallest normal, as it
     * should. */
    const uint32_t e = mag >> 23;
    const uint32_t m = (mag & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126u - e;
    const uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    return sign | (uint16_t)(q + (rem > half || (rem == half && (q & 1u))));
}

void rs_quantize_act(const float *x, int64_t n, int8_t *q, float *d, int32_t *s)
{
    for (int64_t k = 0; k < n / RS_QK; k++) {
        const float *xb = x + k * RS_QK;
        int8_t *qb = q + k * RS_QK;
        float amax = 0.0f;
        for (int i = 0; i < RS_QK; i++) {  /* NaN compares false here; the isfinite check below catches it */
            const float a = fabsf(xb[i]);
            amax = a > amax ? a : amax;
        }
        int finite = 1;
        for (int i = 0; i < RS_QK; i++)
            finite &= isfinite(xb[i]) != 0;
        s[k] = 0;
        if (!finite || amax == 0.0f) {
            d[k] = finite ? 0.0f : NAN;
            for (int i = 0; i < RS_QK; i++)
                qb[i] = 0;
            continue;
        }
        /* In double: 127 / amax overflows float when amax is tiny. |x * inv| <= 127 (plus rounding, which stays
         * below 127.5), so the result fits int8 and never reaches -128: the kernels' sign tricks rely on that
         * (kernels_avx2.c). Adding and subtracting 1.5 * 2^52 rounds to nearest even in plain arithmetic, with no
         * libm call per element (lrint is one). */
        const double inv = 127.0 / amax, round = 0x1.8p52;
        d[k] = (float)(amax / 127.0);
        int32_t sum = 0;
        for (int i = 0; i < RS_QK; i++) {
            qb[i] = (int8_t)(int32_t)(((double)xb[i] * inv + round) - round);
            sum += qb[i];
        }
        s[k] = sum;
    }
}

int rs_type_ok(int type)
{
    return rs_type_block(type) > 0;
}

int rs_type_wt_ok(int type)
{
    return type == RS_TYPE_F32 || type == RS_TYPE_F16 || type == RS_TYPE_Q4_0 || type == RS_TYPE_Q8_0;
}

int64_t rs_type_block(int type)
{
    switch (type) {
    case RS_TYPE_F32:
    case RS_TYPE_F16:
    case RS_TYPE_BF16: return 1;
    case RS_TYPE_Q4_0:
    case RS_TYPE_Q4_0_R16:
    case RS_TYPE_Q4_1:
    case RS_TYPE_Q5_0:
    case RS_TYPE_Q5_1:
    case RS_TYPE_Q8_0:
    case RS_TYPE_Q8_0_R16: return RS_QK;
    case RS_TYPE_Q4_K:
    case RS_TYPE_Q5_K:
    case RS_TYPE_Q6_K: return RS_QK_K;
    default: return 0;
    }
}

int64_t rs_type_align(int type)
{
    return type == RS_TYPE_F32 ? 4 : 2;
}

static int64_t block_bytes(int type)
{
    switch (type) {
    case RS_TYPE_F32: return 4;
    case RS_TYPE_F16:
    case RS_TYPE_BF16: return 2;
    case RS_TYPE_Q4_0:
    case RS_TYPE_Q4_0_R16: return (int64_t)sizeof(block_q4_0);  /* a sixteenth of a tile record, per row */
    case RS_TYPE_Q4_1: return (int64_t)sizeof(block_q4_1);
    case RS_TYPE_Q5_0: return (int64_t)sizeof(block_q5_0);
    case RS_TYPE_Q5_1: return (int64_t)sizeof(block_q5_1);
    case RS_TYPE_Q8_0:
    case RS_TYPE_Q8_0_R16: return (int64_t)sizeof(block_q8_0);
    case RS_TYPE_Q4_K: return (int64_t)sizeof(block_q4_K);
    case RS_TYPE_Q5_K: return (int64_t)sizeof(block_q5_K);
    case RS_TYPE_Q6_K: return (int64_t)sizeof(block_q6_K);
    default: return -1;
    }
}

int64_t rs_row_bytes(int type, int64_t n)
{
    const int64_t block = rs_type_block(type), bytes = block_bytes(type);
    if (block <= 0 || n <= 0 || n % block != 0 || n / block > INT64_MAX / bytes)
        return -1;
    return n / block * bytes;
}

/* Q4_0's nibble order (element i low nibble of byte i, element i + 16 its high nibble) plus Q5's fifth bits. */
static void nibbles16(const uint8_t *qs, const uint8_t *qh, int32_t *q)
{
    uint32_t h = 0;
    if (qh)
        memcpy(&h, qh, sizeof h);
    for (int i = 0; i < RS_QK / 2; i++) {
        q[i] = (int32_t)((qs[i] & 0x0F) | (((h >> i) & 1u) << 4));
        q[i + RS_QK / 2] = (int32_t)((qs[i] >> 4) | (((h >> (i + 16)) & 1u) << 4));
    }
}

void rs_unpack(int type, const void *row, int64_t k, int32_t *q, float *scale, float *min)
{
    *min = 0.0f;
    switch (type) {
    case RS_TYPE_Q4_1: {
        const block_q4_1 *b = (const block_q4_1 *)row + k;
        nibbles16(b->qs, NULL, q);
        *scale = rs_fp16_to_fp32(b->d);
        *min = rs_fp16_to_fp32(b->m);
        break;
    }
    case RS_TYPE_Q5_0: {
        const block_q5_0 *b = (const block_q5_0 *)row + k;
        nibbles16(b->qs, b->qh, q);
        for (int i = 0; i < RS_QK; i++)
            q[i] -= 16;
        *scale = rs_fp16_to_fp32(b->d);
        break;
    }
    case RS_TYPE_Q5_1: {
        const block_q5_1 *b = (const block_q5_1 *)row + k;
        nibbles16(b->qs, b->qh, q);
        *scale = rs_fp16_to_fp32(b->d);
        *min = rs_fp16_to_fp32(b->m);
        break;
    }
    case RS_TYPE_Q4_K:
    case RS_TYPE_Q5_K: {
        const int j = (int)(k % 8);
        const uint8_t *qs, *qh = NULL, *scales;
        uint16_t d, dmin;
        if (type == RS_TYPE_Q4_K) {
            const block_q4_K *b = (const block_q4_K *)row + k / 8;
            qs = b->qs, scales = b->scales, d = b->d, dmin = b->dmin;
        } else {
            const block_q5_K *b = (const block_q5_K *)row + k / 8;
            qs = b->qs, qh = b->qh, scales = b->scales, d = b->d, dmin = b->dmin;
        }
        uint8_t sc[8], m[8];
        rs_k_scales(scales, sc, m);
        for (int i = 0; i < RS_QK; i++)
            q[i] = (int32_t)(((qs[(j / 2) * 32 + i] >> (4 * (j % 2))) & 0x0F) | (qh ? ((qh[i] >> j) & 1) << 4 : 0));
        *scale = rs_fp16_to_fp32(d) * (float)sc[j];
        *min = -(rs_fp16_to_fp32(dmin) * (float)m[j]);
        break;
    }
    case RS_TYPE_Q6_K: {
        const block_q6_K *b = (const block_q6_K *)row + k / 8;
        const int half = (int)(k % 8) / 4, j = (int)(k % 4);  /* block k is element run j of its half */
        const uint8_t *ql = b->ql + 64 * half + 32 * (j % 2), *qh = b->qh + 32 * half;
        const int8_t *sc = b->scales + 8 * half + 2 * j;
        for (int i = 0; i < RS_QK; i++)
            q[i] = sc[i / 16] * ((((ql[i] >> (4 * (j / 2))) & 0x0F) | (((qh[i] >> (2 * j)) & 3) << 4)) - 32);
        *scale = rs_fp16_to_fp32(b->d);
        break;
    }
    default:
        break;
    }
}

void rs_dequant_row(int type, const void *row, float *out, int64_t n)
{
    switch (type) {
    case RS_TYPE_F32:
        memcpy(out, row, (size_t)n * sizeof(float));
        break;
    case RS_TYPE_F16: {
        const uint16_t *h = row;
        for (int64_t i = 0; i < n; i++)
            out[i] = rs_fp16_to_fp32(h[i]);
        break;
    }
    case RS_TYPE_BF16: {
        const uint16_t *h = row;
        for (int64_t i = 0; i < n; i++)
            out[i] = rs_bf16_to_fp32(h[i]);
        break;
    }
    case RS_TYPE_Q4_0: {
        const block_q4_0 *b = row;
        for (int64_t k = 0; k < n / RS_QK; k++)
            rs_dequant_q4_0(&b[k], out + k * RS_QK);
        break;
    }
    case RS_TYPE_Q8_0: {
        const block_q8_0 *b = row;
        for (int64_t k = 0; k < n / RS_QK; k++)
            rs_dequant_q8_0(&b[k], out + k * RS_QK);
        break;
    }
    default:
        /* scale * q is exact (at most 24 significant bits), so this is ggml's value: one rounding, of the sum */
        for (int64_t k = 0; k < n / RS_QK; k++) {
            int32_t q[RS_QK];
            float scale, min;
            rs_unpack(type, row, k, q, &scale, &min);
            for (int i = 0; i < RS_QK; i++)
                out[k * RS_QK + i] = (float)q[i] * scale + min;
        }
        break;
    }
}

/* Rows of blocks (bsize bytes, a binary16 scale first) into tiles of 16 rows: scales, then groups of 4 bytes. */
static int repack_r16(int type, const void *src, int64_t n_rows, int64_t n_in, void *dst)
{
    if (!src || !dst)
        return RS_ERR_NULL;
    const int64_t rb = rs_row_bytes(type, n_in);
    if (rb < 0 || n_rows <= 0 || n_rows % RS_R16 != 0 || n_rows > PTRDIFF_MAX / rb)
        return RS_ERR_SHAPE;
    if ((uintptr_t)src % 2 != 0 || (uintptr_t)dst % 2 != 0)
        return RS_ERR_ALIGN;
    const int64_t nb = n_in / RS_QK, bsize = rb / nb, qbytes = bsize - 2, rec = RS_R16 * bsize;
    uint8_t *out = dst;
    for (int64_t g = 0; g < n_rows / RS_R16; g++)
        for (int r = 0; r < RS_R16; r++) {
            const uint8_t *row = (const uint8_t *)src + (g * RS_R16 + r) * rb;
            for (int64_t k = 0; k < nb; k++) {
                uint8_t *t = out + (g * nb + k) * rec;
                memcpy(t + 2 * r, row + k * bsize, 2);
                for (int64_t u = 0; u < qbytes / 4; u++)
                    memcpy(t + 2 * RS_R16 + 4 * (u * RS_R16 + r), row + k * bsize + 2 + 4 * u, 4);
            }
        }
    return RS_OK;
}

int rs_repack_q4_0_r16(const void *src, int64_t n_rows, int64_t n_in, void *dst)
{
    return repack_r16(RS_TYPE_Q4_0, src, n_rows, n_in, dst);
}

int rs_repack_q8_0_r16(const void *src, int64_t n_rows, int64_t n_in, void *dst)
{
    return repack_r16(RS_TYPE_Q8_0, src, n_rows, n_in, dst);
}
