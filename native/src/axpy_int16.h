/* axpy_int16.h -- AVX-512's sparse Q4_0 kernel, with int16 coefficients: the loop (axpy_int16_avx512.h defines its
 * primitives and instantiates AXPY_INT16(q4_0, 8, Q4_ROWS)). AVX2 and AVX-VNNI moved to int8 coefficients
 * (axpy_int8.h, sparse_int8.h); AVX-512 keeps these until 512-bit int8 kernels are measured against them on an
 * AVX-512 CPU. The primitives:
 *   iacc                        one block's int32 sums (32 outputs, lanes in the path's own order)
 *   acc_init(acc, v)            every sum set to v
 *   group_coefficients(rows, xs, rowp, off, cq, s, sum)
 *                               one block's coefficients (declared below)
 *   chunk_coefficients(rows, xs, rowp, off, bsize, nb, cq, s, sum)
 *                               nb blocks from byte off of the group's rows: for block j, cq[j * rows + i] =
 *                               round(xs[i] * d_i / S_j) in int16, s[j] = S_j (NaN if one of its coefficients is not
 *                               finite), and sum[j] = sum_i cq (skipped when sum is NULL); a path may make it
 *                               each_block_coefficients below
 *   pair_q8_0(a, b, pair, acc), pair_q4_0(...)
 *                               rows a and b of a block, their coefficients packed in pair (a's in the low half),
 *                               summed into acc with vpmaddwd
 *   add_block(acc, s, y)        y[0..32) += s * acc, in output order
 *   Q8_ROWS, Q4_ROWS            kept rows per group (8 or 16)
 * and scales8 (scales8_x86.h), which both use.
 * Why int16 coefficients at all: the float kernel's two float operations a weight held it below memory speed.
 * Rounding moves each output by at most (S / 2) * sum |q_i| over the group's rows
 * (tests/native_ref.py, coefficient_steps).
 *
 * The coefficients of a chunk of COEF_BLOCKS blocks (blocks 16c .. 16c + 15 of the row, wherever the thread's
 * slice starts, so that the tests know which blocks share a scale) are made in a loop of their own before those
 * blocks' rows are read: made beside the multiply-adds, their long dependent chain (max, divide, round) held the
 * loop to the float kernel's speed. */
#ifndef RS_AXPY_INT16_H
#define RS_AXPY_INT16_H

#include "scales8_x86.h"

#define COEF_BLOCKS 16  /* blocks whose coefficients are made at a time: 16 x (32 + 8) bytes, in L1; the tests'
                         * bound (native_ref.COEF_BLOCKS, test_native.c) knows this number */

/* One block's coefficients for the group's rows: cq[i] = round(xs[i] * d_i / S) in int16, S (NaN if a coefficient
 * is not finite) and sum(cq); each path defines it after including this file. */
static inline void group_coefficients(int n_rows, const float *xs, const uint8_t *const *rows, int64_t off,
                                      int16_t *cq, float *s, int32_t *sum);

/* chunk_coefficients' results, block by block: each block on its own scale. */
static inline void each_block_coefficients(int n_rows, const float *xs, const uint8_t *const *rows, int64_t off,
                                           int64_t bsize, int nb, int16_t *cq, float *s, int32_t *sum)
{
    int32_t unused;
    for (int j = 0; j < nb; j++)
        group_coefficients(n_rows, xs, rows, off + j * bsize, cq + j * n_rows, &s[j], sum ? &sum[j] : &unused);
}


/* y[0..n) += sum_k xk[k] * wt[idx[k]][o0 ..), as kernels_simd.h's axpy_*, ROWS kept rows at a time;
 * `offset` is 8 for Q4_0, 0 for Q8_0. Rows `AHEAD` groups on are prefetched as the kernel goes. */
#define AXPY_INT16(type, offset, ROWS)                                                                       \
    static void axpy_int16_##type(const void *wt, int64_t rb, const int32_t *idx, const float *xk,            \
                                  int64_t n_kept, int64_t o0, int64_t n, float *y)                          \
    {                                                                                                        \
        const int64_t bsize = (int64_t)sizeof(block_##type), n_blocks = n / RS_QK;                         \
        int16_t cq[COEF_BLOCKS][ROWS];                                                                       \
        float s[COEF_BLOCKS];                                                                                \
        int32_t sum[COEF_BLOCKS];                                                                            \
        for (int64_t k = 0; k < n_kept; k += ROWS) {                                                         \
            const uint8_t *rows[ROWS], *next[ROWS];                                                          \
            float xs[ROWS];                                                                                  \
            group_rows(wt, rb, idx, xk, n_kept, k, ROWS, o0 / RS_QK * bsize, rows, next, xs);                \
            for (int64_t b0 = 0, nb; b0 < n_blocks; b0 += nb) {                                             \
                nb = min64(COEF_BLOCKS - (o0 / RS_QK + b0) % COEF_BLOCKS, n_blocks - b0);                    \
                chunk_coefficients(ROWS, xs, rows, b0 * bsize, bsize, (int)nb, cq[0], s, (offset) ? sum : NULL);  \
                for (int j = 0; j < nb; j++) {                                                               \
                    const int64_t off = (b0 + j) * bsize;                                                    \
                    prefetch_rows(next, ROWS, off);                                                          \
                    iacc acc;                                                                                \
                    acc_init(&acc, (offset) ? -(offset) * sum[j] : 0);                                       \
                    for (int p = 0; p < (ROWS) / 2; p++) {                                                   \
                        int32_t pair;                                                                        \
                        memcpy(&pair, &cq[j][2 * p], sizeof pair);                                           \
                        pair_##type((const block_##type *)(rows[2 * p] + off),                               \
                                    (const block_##type *)(rows[2 * p + 1] + off), pair, &acc);              \
                    }                                                                                        \
                    add_block(&acc, s[j], y + (b0 + j) * RS_QK);                                             \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }
#endif /* RS_AXPY_INT16_H */
