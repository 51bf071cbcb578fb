/* kernels.h -- the table of inner kernels, one table per SIMD path; dispatch.c picks one at start-up.
 *
 * Adding a path: write kernels_<name>.c defining `const rs_kernels rs_kernels_<name>` (entries it does not
 * implement may stay NULL and fall back to scalar), add it to the PATHS list in dispatch.c, and add the file with
 * its own compile flags (and -DRS_HAVE_<NAME>) in native/CMakeLists.txt. Every SIMD kernel is tested against the
 * scalar one, which is the truth. */
#ifndef RS_KERNELS_H
#define RS_KERNELS_H

#include <stdint.h>

/* One weight row against n_tok activation vectors:
 *   row: one row of n_in elements in the kernel's weight type (rs_row_bytes(type, n_in) bytes)
 *   x:   (n_tok, n_in) float32
 *   y:   y[t * y_stride] = dot(row, x[t]) for t in [0, n_tok); overwritten, not accumulated
 * The row is read (and dequantized) once for all tokens: that is what makes prefill cheaper than n_tok decodes.
 * Quantized weights are dequantized to float; activations are never quantized. */
typedef void (*rs_dot_fn)(const void *row, const float *x, int64_t n_in, int64_t n_tok, float *y, int64_t y_stride);

typedef struct rs_kernels {
    const char *name;       /* what rs_simd_path() reports, and what RSPARSE_SIMD selects */
    int (*cpu_ok)(void);    /* can this CPU run these kernels? NULL: always */
    rs_dot_fn dot_f32;      /* any entry may be NULL: the scalar kernel is used instead */
    rs_dot_fn dot_f16;
    rs_dot_fn dot_q4_0;
    rs_dot_fn dot_q8_0;
} rs_kernels;

extern const rs_kernels rs_kernels_scalar;
extern const rs_kernels rs_kernels_avx2;    /* defined only when built with RS_HAVE_AVX2 */
extern const rs_kernels rs_kernels_avx512;  /* ... RS_HAVE_AVX512 */
extern const rs_kernels rs_kernels_neon;    /* ... RS_HAVE_NEON */

/* The dot kernel of the path chosen at start-up for this weight type; NULL for an unknown type. */
rs_dot_fn rs_dot_for(int type);

#endif /* RS_KERNELS_H */
