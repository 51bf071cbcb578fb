/* sparse_int8.h -- the arithmetic of the sparse Q8_0 and Q4_0 kernels: int8 coefficients, integer sums.
 *
 * For kept row i (activation x_i) and output block b (32 outputs, weight block scale d_ib, weights q_io), the exact
 * term is x_i d_ib q_io. The kernels take the rows RS_I8_ROWS_<type> at a time (a group: kept rows k, k + 1, ... of the
 * list the kernel was given; a short last group is padded with rows of activation 0) and, per group and chunk of
 * output blocks (blocks RS_I8_CHUNK c .. RS_I8_CHUNK c + RS_I8_CHUNK - 1 of the row, counted from the row's start,
 * wherever the caller's slice starts):
 *   c_ib = x_i * d_ib                          (float32)
 *   A    = max |c_ib| over the group's rows and the chunk's blocks, at least 1e-30
 *   k_ib = round(c_ib * (127 / A))             (int8, |k| <= 127; round half to even)
 *   S    = A * (1 / 127)
 *   y_o  = fma((float)(sum_i k_ib q_io), S, y_o)   (the sum exact in int32: |sum| <= 16 * 127 * 128)
 * once per group and block, groups in list order. A chunk holding a non-finite c is done block by block (A and S
 * of each block on its own), and a block with a non-finite c gets S = NaN: its 32 outputs come out NaN, as a float
 * kernel's would. This is llama.cpp's activation precision (int8, one scale per 32 values), with the coefficient
 * of a kept row in place of an activation; rounding moves output o by at most (S / 2) * sum_i |q_io| over the
 * group's rows (tests/native_ref.py, coefficient_steps; test_native.c).
 *
 * kernels_scalar.c computes exactly this, in that order; every SIMD kernel with int8 coefficients (axpy_int8.h)
 * gives the same float results bit for bit (test_native.c checks it). Why int8: integer dot products (vpmaddubsw,
 * vpdpbusd, sdot) take 4 or 2 products per 32-bit lane where the int16 kernels' vpmaddwd took 2 per lane after a
 * widening the int8 weights do not need; docs/SPEED.md has the numbers. */
#ifndef RS_SPARSE_INT8_H
#define RS_SPARSE_INT8_H

#define RS_I8_ROWS 16      /* most kept rows sharing a coefficient scale (array sizes) */
#define RS_I8_ROWS_Q4_0 16 /* Q4_0's group: its coefficients cost as much as Q8_0's for rows half as long */
#define RS_I8_ROWS_Q8_0 8  /* Q8_0's group: with 16, AVX2 on two threads ran 15-30% slower than the int16 kernel's 8 */
#define RS_I8_CHUNK 4   /* output blocks sharing a coefficient scale. With 16, strict held-out perplexity of
                         * SmolLM2 at 50% sat 0.7-3.4% above the int16 kernels' at each thread count (1-3); with 4
                         * it interleaves with theirs (Q4_0) or overlaps them (Q8_0), for a decode 2% slower: the kernel waits on its scattered rows,
                         * not on the max and divide of its coefficients (docs/SPEED.md, 2026-12-07 b). The tests'
                         * bound takes chunks of 16 blocks (native_ref.COEF_BLOCKS, test_native.c), which hold
                         * whole chunks of 4 and so bound these too. */

/* The coefficients in C, for the paths that make them one by one (kernels_scalar.c, the reference, and
 * kernels_neon.c). A path may first define RS_I8_ROUND(v) (v rounded half to even, to int8) and RS_I8_HALF(h)
 * (binary16 bits to float, exact) with its own instructions: the results are the same bits. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "quant.h"

#ifndef RS_I8_ROUND
#define RS_I8_ROUND(v) ((int8_t)lrintf(v))  /* the default rounding mode: half to even */
#endif
#ifndef RS_I8_HALF
#define RS_I8_HALF(h) rs_fp16_to_fp32(h)
#endif

/* One scale for the coefficients c[0..n): k = round(c * 127 / A), S = A / 127 (NaN if a c is not finite). */
static inline float rs_i8_round(const float *c, int n, int8_t *k)
{
    float a = 0.0f;
    int finite = 1;
    for (int i = 0; i < n; i++) {
        finite &= isfinite(c[i]) != 0;
        a = fmaxf(a, fabsf(c[i]));
    }
    a = fmaxf(a, 1e-30f);
    const float inv = 127.0f / a;
    for (int i = 0; i < n; i++)
        k[i] = finite ? RS_I8_ROUND(c[i] * inv) : 0;
    return finite ? a * (1.0f / 127.0f) : NAN;
}

/* The coefficients of nb blocks (bsize bytes apart, from byte off, each starting with its scale d) of a group's R
 * rows, activations xs: k[j * R + i] for row i and block j, the scale s[j], and sum[j] = sum_i k (unless sum is
 * NULL). One scale for the chunk, or block by block if a c is not finite. */
static inline void rs_i8_chunk_coefficients(int R, const uint8_t *const *rows, const float *xs, int64_t off,
                                            int64_t bsize, int nb, int8_t *k, float *s, int32_t *sum)
{
    float c[RS_I8_CHUNK * RS_I8_ROWS];
    int finite = 1;
    for (int j = 0; j < nb; j++)
        for (int i = 0; i < R; i++) {
            uint16_t d;
            memcpy(&d, rows[i] + off + j * bsize, sizeof d);
            c[j * R + i] = xs[i] * RS_I8_HALF(d);
            finite &= isfinite(c[j * R + i]) != 0;
        }
    if (finite) {
        const float S = rs_i8_round(c, nb * R, k);
        for (int j = 0; j < nb; j++)
            s[j] = S;
    } else {
        for (int j = 0; j < nb; j++)
            s[j] = rs_i8_round(c + j * R, R, k + j * R);
    }
    for (int j = 0; sum && j < nb; j++) {
        int32_t t = 0;
        for (int i = 0; i < R; i++)
            t += k[j * R + i];
        sum[j] = t;
    }
}

#endif /* RS_SPARSE_INT8_H */
