/* quant.c -- row sizes, row dequantization and fp32 -> fp16 (the per-element direction lives inline in quant.h). */
#include "quant.h"

#include <math.h>

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
    return type == RS_TYPE_F32 || type == RS_TYPE_F16 || type == RS_TYPE_Q4_0 || type == RS_TYPE_Q8_0;
}

int64_t rs_type_block(int type)
{
    switch (type) {
    case RS_TYPE_F32:
    case RS_TYPE_F16: return 1;
    case RS_TYPE_Q4_0:
    case RS_TYPE_Q8_0: return RS_QK;
    default: return 0;
    }
}

int64_t rs_type_align(int type)
{
    return type == RS_TYPE_F32 ? 4 : 2;
}

int64_t rs_row_bytes(int type, int64_t n)
{
    int64_t block_bytes;
    switch (type) {
    case RS_TYPE_F32: block_bytes = 4; break;
    case RS_TYPE_F16: block_bytes = 2; break;
    case RS_TYPE_Q4_0: block_bytes = (int64_t)sizeof(block_q4_0); break;
    case RS_TYPE_Q8_0: block_bytes = (int64_t)sizeof(block_q8_0); break;
    default: return -1;
    }
    const int64_t block = rs_type_block(type);
    if (n <= 0 || n % block != 0 || n / block > INT64_MAX / block_bytes)
        return -1;
    return n / block * block_bytes;
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
        break;
    }
}
