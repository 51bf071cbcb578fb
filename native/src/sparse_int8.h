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
                         * SmolLM2 at 50% sat 1-3% above the int16 kernels' at every thread count; with 4 it is
                         * within their spread, and decode is no slower: the kernel waits on its scattered rows,
                         * not on the max and divide of its coefficients (docs/SPEED.md, 2026-12-07 b). The tests'
                         * bound takes chunks of 16 blocks (native_ref.COEF_BLOCKS, test_native.c), which hold
                         * whole chunks of 4 and so bound these too. */

#endif /* RS_SPARSE_INT8_H */
