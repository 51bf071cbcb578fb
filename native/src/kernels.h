/* kernels.h -- the table of inner kernels, one table per SIMD path; dispatch.c picks one at start-up.
 *
 * Adding a path: write kernels_<name>.c defining `const rs_kernels rs_kernels_<name>` (entries it does not
 * implement may stay NULL and come from the next path down dispatch.c's list that the CPU runs, scalar last), add
 * it to the PATHS list in dispatch.c, and add the file with its own compile flags (and -DRS_HAVE_<NAME>) in
 * native/CMakeLists.txt. Every SIMD kernel is tested against the scalar one, which is the truth, and against a
 * float64 reference. The x86 and ARM paths share one body, kernels_simd.h, written against a handful of vector
 * primitives that each path file defines.
 *
 * Activations. F32, F16 and BF16 weights multiply the float activations. The dense decode kernels of the quantized
 * types multiply their integer weights with the activations rounded to int8 per block of 32 (rs_quantize_act, done
 * once per call by matmul.c, llama.cpp's precision for Q8_0 and Q4_0; for the K types llama.cpp rounds per 256, we
 * keep 32): a block's 32 products are exact integer dot products on bytes, then one float multiply-add by the two
 * scales (plus, for types with a min, min times the activations' block sum), within the activations' rounding (half
 * a step, 1/254 of the block's largest) of the exact product of the dequantized weights. The sparse kernels give
 * each kept row one float activation; the Q8_0 and Q4_0 ones then round each group of rows' (16, or 8 for Q8_0)
 * activation-times-scale to int8 per chunk of blocks and sum the rows in integers (sparse_int8.h; every path gives
 * the same bits). Prompts (two or more tokens, either layout)
 * run through gemm.c: every type but Q4_0 as panels of weights dequantized to float (dequant) times the float
 * activations, one register tile (gemm) at a time; Q4_0 as packed weight bytes against the activations rounded to
 * int8 (igemm, igemm7 and requant for the companion's layout). */
#ifndef RS_KERNELS_H
#define RS_KERNELS_H

#include <stdint.h>

/* The activations of a dense call, as the weight type needs them: token t's are f + t * n_in (F32, F16, BF16
 * weights), or q + t * n_in with block scales d + t * (n_in / 32) and block sums s + t * (n_in / 32) (the quantized
 * types: rs_quantize_act). */
typedef struct rs_act {
    const float *f;
    const int8_t *q;
    const float *d;
    const int32_t *s;
} rs_act;

/* Dense rows against tokens (the standard (n_out, n_in) layout):
 *   w: (n_rows, n_in) in the kernel's weight type, rows rb bytes apart
 *   x: (n_tok, n_in) activations (rs_act)
 *   y: y[t * ys + r] = dot(row r, x[t]) for r in [0, n_rows), t in [0, n_tok); overwritten, not accumulated
 * Within one path, the value written for (r, t) does not depend on n_rows, n_tok or the position of the row in
 * the call: prefill gives each token bit for bit what decode gives it. */
typedef void (*rs_mm_fn)(const void *w, int64_t rb, int64_t n_rows, const rs_act *x, int64_t n_in, int64_t n_tok,
                         float *y, int64_t ys);

/* Sparse accumulation over kept input channels (the input-channel-major layout of rs_sparse_matvec):
 *   wt:  rows of n_out elements in the kernel's weight type, rb bytes apart; quantization blocks run along the row
 *   idx: (n_kept,) row numbers; xk: (n_kept,) their activations
 *   y:   y[o] += sum_k xk[k] * wt[idx[k]][o0 + o] for o in [0, n)
 * o0 is a multiple of 32 (a block boundary for quantized types); so is n, unless o0 + n ends the row. The Q8_0 and
 * Q4_0 kernels compute sparse_int8.h's arithmetic (int8 coefficients), the same bits on every path. */
typedef void (*rs_axpy_fn)(const void *wt, int64_t rb, const int32_t *idx, const float *xk, int64_t n_kept,
                           int64_t o0, int64_t n, float *y);

/* One register tile of the prefill GEMM (gemm.c): for i < gemm_mr, j < gemm_nr,
 *   c[i * ldc + j] = (load ? c[i * ldc + j] : 0) + sum_k a[i][k] * b[k * gemm_nr + j],  k in [0, kc)
 * a: gemm_mr pointers to token rows (float activations); b: a packed panel of kc x gemm_nr dequantized weights,
 * 64-byte aligned. The sum runs k = 0, 1, ... in turn, one fused multiply-add each, so every path, thread count
 * and tile position gives the same bits. */
typedef void (*rs_gemm_fn)(const float *const *a, const float *b, int64_t kc, float *c, int64_t ldc, int load);

/* n elements of a stored row of `type` from row (a block boundary) as floats: the exact values (rs_dequant_row's),
 * in the path's instructions, for the GEMM's panels. */
typedef void (*rs_dequant_fn)(int type, const void *row, float *out, int64_t n);

/* The integer tile of the prefill GEMM (gemm.c), against the activations rounded to int8 per block of 32
 * (rs_quantize_act, as decode's): for i < igemm_mr, j < igemm_nr,
 *   c[i * ldc + j] = load ? c[i * ldc + j] : 0, then for each block b = 0, 1, .. nb - 1 in turn
 *   c[i * ldc + j] = fmaf((float)(sum_e q[b][e][j] * a[i][32 b + e] - off * as[i][b]), bd[b * nr + j] * ad[i][b], c)
 * a, ad, as: the tokens' int8 activations, block scales and block sums, from the panel's first block; q[b][e][j]
 * the unsigned weight byte of input e of block b for output j, packed by groups of four inputs: the byte of
 * (b, e, j) at b_[((b * 8 + e / 4) * igemm_nr + j) * 4 + e % 4]; off the bias those bytes carry; bd the weights'
 * block scales. The block's sum is an exact integer, so every path, thread count and tile position gives the same
 * bits. Two tiles: igemm for bytes of at most 15 (Q4_0's nibbles, off 8: AVX2 keeps a block's sums in int16) and
 * igemm7 for bytes of at most 127 (the companion's Q4_0 requantized to 7 bits, off 64: sums in int32). */
typedef void (*rs_igemm_fn)(const int8_t *const *a, const float *const *ad, const int32_t *const *as,
                            const uint8_t *b, const float *bd, int64_t nb, int32_t off, float *c, int64_t ldc,
                            int load);

/* One strip of a companion panel requantized for igemm7: v holds rows k = 0 .. 32 nb - 1 of igemm_nr floats, row k
 * at v + k * ldv (the exact dequantized weights, input-major). Per output j and block b of 32 rows, with m the
 * block's largest |v|: bd[b * nr + j] = m / 63, and the byte of (b, e, j) in igemm's order is
 * 64 + round_nearest_even(v * (63 / max(m, 1e-30))), in 1 .. 127. */
typedef void (*rs_requant_fn)(const float *v, int64_t ldv, int64_t nb, uint8_t *q, float *bd);

#define RS_GEMM_MR_MAX 16
#define RS_GEMM_NR_MAX 64

typedef struct rs_kernels {
    const char *name;       /* what rs_simd_path() reports, and what RSPARSE_SIMD selects */
    int (*cpu_ok)(void);    /* can this CPU run these kernels? NULL: always */
    rs_mm_fn mm_f32;        /* any entry may be NULL: the next runnable path's is used instead (dispatch.c) */
    rs_mm_fn mm_f16;
    rs_mm_fn mm_q4_0;
    rs_mm_fn mm_q8_0;
    rs_mm_fn mm_q4_0_r16;   /* Q4_0 in tiles of 16 rows (rsparse.h: rs_repack_q4_0_r16): w is tile 0's first record,
                             * n_rows a multiple of 16, rb Q4_0's row bytes. Per row, block by block in order,
                             * acc = fma((float)(sum_e n_e q_e - 8 s), d_w * d_x, acc) from acc = 0: the integer
                             * GEMM's arithmetic (igemm), so decode and prefill give the same bits on every path */
    rs_mm_fn mm_q8_0_r16;   /* Q8_0 in tiles of 16 rows, likewise: acc = fma((float)(sum_e q_e x_e), d_w * d_x, acc),
                             * the same bits on every path (prefill is Q8_0's float GEMM) */
    rs_mm_fn mm_bf16;       /* the types of llama.cpp's other presets (dense only); AVX-512 leaves the quantized */
    rs_mm_fn mm_q4_1;       /* ones NULL and takes AVX-VNNI's or AVX2's, whose 32-byte blocks its 64-byte */
    rs_mm_fn mm_q5_0;       /* registers would hold in pairs */
    rs_mm_fn mm_q5_1;
    rs_mm_fn mm_q4_k;
    rs_mm_fn mm_q5_k;
    rs_mm_fn mm_q6_k;
    rs_axpy_fn axpy_f32;
    rs_axpy_fn axpy_f16;
    rs_axpy_fn axpy_q4_0;
    rs_axpy_fn axpy_q8_0;
    rs_dequant_fn dequant;
    void (*softmax)(float *s, int64_t n, float scale);  /* s <- softmax(scale * s): softmax.h */
    rs_gemm_fn gemm;        /* NULL: the scalar tile (with the scalar gemm_mr, gemm_nr) */
    int gemm_mr, gemm_nr;   /* its tile: tokens x outputs, at most RS_GEMM_MR_MAX x RS_GEMM_NR_MAX */
    rs_igemm_fn igemm;      /* NULL: the scalar integer tiles (with their igemm_mr, igemm_nr) and requant */
    rs_igemm_fn igemm7;
    rs_requant_fn requant;
    int igemm_mr, igemm_nr; /* likewise bounded; igemm_nr divides 32 */
} rs_kernels;

extern const rs_kernels rs_kernels_scalar;
extern const rs_kernels rs_kernels_avx2;    /* defined only when built with RS_HAVE_AVX2 */
extern const rs_kernels rs_kernels_avxvnni; /* ... RS_HAVE_AVXVNNI */
extern const rs_kernels rs_kernels_avx512;  /* ... RS_HAVE_AVX512 */
extern const rs_kernels rs_kernels_avx512vnni; /* ... RS_HAVE_AVX512VNNI */
extern const rs_kernels rs_kernels_neon;    /* ... RS_HAVE_NEON */
extern const rs_kernels rs_kernels_neondot; /* ... RS_HAVE_NEONDOT */

/* The kernel table in use (every entry filled); never NULL. Read once per public call, so a call runs on one path
 * even if rs_simd_select changes it meanwhile. */
const rs_kernels *rs_kernels_now(void);

rs_mm_fn rs_mm_for(const rs_kernels *k, int type);      /* NULL for an unknown type */
rs_axpy_fn rs_axpy_for(const rs_kernels *k, int type);  /* NULL for an unknown type */

#endif /* RS_KERNELS_H */
