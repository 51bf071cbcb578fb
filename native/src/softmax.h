/* softmax.h -- the softmax of attention's scores, in plain C that each SIMD path's file compiles with its own
 * instructions (kernels_simd.h and kernels_scalar.c put it in their tables): built once in attention.c, which gets
 * no SIMD flags, it ran 4 floats at a time and took 7.7% of a 1024-token prefill of the 1B-shaped model. */
#ifndef RS_SOFTMAX_H
#define RS_SOFTMAX_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* e^x for x <= 0 (a softmax's shifted scores), within a few ulp of expf, in plain arithmetic that the compiler
 * vectorizes: expf is a library call per element, and 30 layers x 9 heads x a few hundred positions of them cost
 * SmolLM2 about 1 ms a token at 384 positions. x = k ln2 + r, |r| <= ln2 / 2, k rounded by the 1.5 * 2^23 trick
 * (plain adds, vectorized without SSE4.1's round); e^r by its degree-6 Taylor polynomial (2e-8 relative); 2^k
 * built in the exponent bits. Below -87 the result is 0 (what expf would give as subnormals adds nothing to a sum
 * that holds e^0 = 1); NaN stays NaN, with k clamped so that its conversion to int stays defined. */
static inline float rs_exp_nonpositive(float x)
{
    const float big = 12582912.0f;  /* 1.5 * 2^23: v + big - big rounds v to an integer */
    float k = (x * 1.44269504f + big) - big;
    k = k > -126.0f ? k : -126.0f;
    const float r = (x - k * 0.693145752f) - k * 1.42860677e-6f;  /* ln2 in two parts */
    float p = 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = ((int32_t)k + 127) << 23;
    float two_k;
    memcpy(&two_k, &bits, sizeof two_k);
    const float e = p * two_k;  /* computed before the choice, so the choice is a select: vectorized */
    return x < -87.0f ? 0.0f : e;
}

/* s[0..n) <- softmax(scale * s[0..n)). The maximum and the sum keep 8 partial results, so that the compiler
 * vectorizes those loops too (it may not reorder one running sum). */
static inline void rs_softmax(float *s, int64_t n, float scale)
{
    float m8[8], s8[8];
    for (int j = 0; j < 8; j++)
        m8[j] = -INFINITY, s8[j] = 0.0f;
    int64_t t = 0;
    for (; t + 8 <= n; t += 8)
        for (int j = 0; j < 8; j++) {
            s[t + j] *= scale;
            m8[j] = s[t + j] > m8[j] ? s[t + j] : m8[j];
        }
    float max = -INFINITY;
    for (; t < n; t++) {
        s[t] *= scale;
        max = s[t] > max ? s[t] : max;
    }
    for (int j = 0; j < 8; j++)
        max = m8[j] > max ? m8[j] : max;
    for (t = 0; t < n; t++)
        s[t] = rs_exp_nonpositive(s[t] - max);
    for (t = 0; t + 8 <= n; t += 8)
        for (int j = 0; j < 8; j++)
            s8[j] += s[t + j];
    float sum = ((s8[0] + s8[1]) + (s8[2] + s8[3])) + ((s8[4] + s8[5]) + (s8[6] + s8[7]));
    for (; t < n; t++)
        sum += s[t];
    const float inv = 1.0f / sum;
    for (t = 0; t < n; t++)
        s[t] *= inv;
}

#endif /* RS_SOFTMAX_H */
