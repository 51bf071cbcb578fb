/* kernels_scalar.c -- the reference kernels: plain C that every SIMD path must agree with.
 *
 * Each float dense kernel walks its row in chunks: dequantize a chunk to float once, then dot it with the same chunk
 * of every token; the quantized ones take integer block dot products with the int8 activations (kernels.h). The
 * dot keeps 8 partial sums, which both bounds the float rounding error and lets the compiler vectorize the loop
 * without -ffast-math (it may not reorder one running sum). The sparse F32 and F16 kernels add each kept row,
 * scaled by its activation, to y; the sparse Q8_0 and Q4_0 ones are the reference of the int8-coefficient
 * arithmetic that every path's integer kernels share (sparse_int8.h). */
#include <math.h>

#include "kernels.h"
#include "quant.h"
#include "softmax.h"
#include "sparse_int8.h"

/* Elements dequantized at a time: 1 KiB of floats, which stays in L1 while every token reads it. A multiple of
 * RS_QK, so quantized chunks hold whole blocks. */
#define CHUNK 256

static inline float dot_f32_run(const float *restrict a, const float *restrict b, int64_t n)
{
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++)
            s[j] += a[i + j] * b[i + j];
    float tail = 0.0f;
    for (; i < n; i++)
        tail += a[i] * b[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7])) + tail;
}

/* y[t * ys] += dot(w, x[t] + off) over a chunk of len elements, for every token. */
static inline void chunk_all_tokens(const float *restrict w, int64_t len, const float *restrict x, int64_t off,
                                    int64_t n_in, int64_t n_tok, float *restrict y, int64_t ys)
{
    for (int64_t t = 0; t < n_tok; t++)
        y[t * ys] += dot_f32_run(w, x + t * n_in + off, len);
}

static inline void zero(float *y, int64_t n_tok, int64_t ys)
{
    for (int64_t t = 0; t < n_tok; t++)
        y[t * ys] = 0.0f;
}

static void dot_f32(const void *row, const float *x, int64_t n_in, int64_t n_tok, float *y, int64_t ys)
{
    const float *w = row;
    zero(y, n_tok, ys);
    for (int64_t off = 0; off < n_in; off += CHUNK) {
        const int64_t len = n_in - off < CHUNK ? n_in - off : CHUNK;
        chunk_all_tokens(w + off, len, x, off, n_in, n_tok, y, ys);
    }
}

/* F16 and BF16: each chunk converted once into an L1 buffer, then dotted with every token. */
#define DOT_HALF(type, to_f32)                                                                               \
    static void dot_##type(const void *row, const float *x, int64_t n_in, int64_t n_tok, float *y, int64_t ys) \
    {                                                                                                        \
        const uint16_t *h = row;                                                                             \
        float w[CHUNK];                                                                                      \
        zero(y, n_tok, ys);                                                                                  \
        for (int64_t off = 0; off < n_in; off += CHUNK) {                                                    \
            const int64_t len = n_in - off < CHUNK ? n_in - off : CHUNK;                                     \
            for (int64_t i = 0; i < len; i++)                                                                \
                w[i] = to_f32(h[off + i]);                                                                   \
            chunk_all_tokens(w, len, x, off, n_in, n_tok, y, ys);                                            \
        }                                                                                                    \
    }
DOT_HALF(f16, rs_fp16_to_fp32)
DOT_HALF(bf16, rs_bf16_to_fp32)

/* Quantized weights against int8 activations: each block's 32 products summed exactly in int32 (every SIMD path
 * gets the same integer per block, however it splits it into lanes), then scaled by both block scales; 8 partial
 * sums over blocks, like dot_f32_run. */
#define DOT_Q(type, QVAL)                                                                                    \
    static float dot_##type(const block_##type *b, const int8_t *xq, const float *xd, int64_t n_in)           \
    {                                                                                                        \
        float s[8] = {0};                                                                                    \
        for (int64_t k = 0; k < n_in / RS_QK; k++) {                                                         \
            int32_t isum = 0;                                                                                \
            for (int i = 0; i < RS_QK; i++)                                                                  \
                isum += (int32_t)(QVAL) * xq[k * RS_QK + i];                                                 \
            s[k % 8] += (float)isum * (rs_fp16_to_fp32(b[k].d) * xd[k]);                                     \
        }                                                                                                    \
        return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));                            \
    }
DOT_Q(q8_0, b[k].qs[i])
DOT_Q(q4_0, ((i < RS_QK / 2 ? b[k].qs[i] & 0x0F : b[k].qs[i - RS_QK / 2] >> 4) - 8))

/* The other quantized types, block by block as rs_unpack gives them (value = scale * q + min): the block's sum of
 * q times the int8 activations exact in int32, then scale * d_x times it, plus min * d_x times the activations'
 * block sum (sum (scale q + min) x = scale sum q x + min sum x). */
static float dot_unpacked(int type, const uint8_t *row, const int8_t *xq, const float *xd, const int32_t *xs,
                          int64_t n_in)
{
    float s[8] = {0};
    for (int64_t k = 0; k < n_in / RS_QK; k++) {
        int32_t q[RS_QK], isum = 0;
        float scale, min;
        rs_unpack(type, row, k, q, &scale, &min);
        for (int i = 0; i < RS_QK; i++)
            isum += q[i] * xq[k * RS_QK + i];
        s[k % 8] += fmaf((float)isum, scale * xd[k], min * (xd[k] * (float)xs[k]));
    }
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* The dense entry points: one row at a time (float weights: each row read once for all tokens). */
#define MM(type)                                                                                             \
    static void mm_##type(const void *w, int64_t rb, int64_t n_rows, const rs_act *x, int64_t n_in,           \
                          int64_t n_tok, float *y, int64_t ys)                                               \
    {                                                                                                        \
        for (int64_t r = 0; r < n_rows; r++)                                                                 \
            dot_##type((const uint8_t *)w + r * rb, x->f, n_in, n_tok, y + r, ys);                           \
    }
MM(f32)
MM(f16)
MM(bf16)

#define MMQ(type)                                                                                            \
    static void mm_##type(const void *w, int64_t rb, int64_t n_rows, const rs_act *x, int64_t n_in,           \
                          int64_t n_tok, float *y, int64_t ys)                                               \
    {                                                                                                        \
        for (int64_t r = 0; r < n_rows; r++)                                                                 \
            for (int64_t t = 0; t < n_tok; t++)                                                              \
                y[t * ys + r] = dot_##type((const block_##type *)((const uint8_t *)w + r * rb),               \
                                           x->q + t * n_in, x->d + t * (n_in / RS_QK), n_in);                \
    }
MMQ(q8_0)
MMQ(q4_0)

#define MMU(type, TYPE)                                                                                      \
    static void mm_##type(const void *w, int64_t rb, int64_t n_rows, const rs_act *x, int64_t n_in,           \
                          int64_t n_tok, float *y, int64_t ys)                                               \
    {                                                                                                        \
        const int64_t nb = n_in / RS_QK;                                                                     \
        for (int64_t r = 0; r < n_rows; r++)                                                                 \
            for (int64_t t = 0; t < n_tok; t++)                                                              \
                y[t * ys + r] = dot_unpacked(TYPE, (const uint8_t *)w + r * rb, x->q + t * n_in, x->d + t * nb, \
                                             x->s + t * nb, n_in);                                           \
    }
MMU(q4_1, RS_TYPE_Q4_1)
MMU(q5_0, RS_TYPE_Q5_0)
MMU(q5_1, RS_TYPE_Q5_1)
MMU(q4_k, RS_TYPE_Q4_K)
MMU(q5_k, RS_TYPE_Q5_K)
MMU(q6_k, RS_TYPE_Q6_K)

/* ---- sparse: y += xk * row, for each kept row ------------------------------------------------------------ */
static inline void axpy_run(float *restrict y, float s, const float *restrict w, int64_t n)
{
    for (int64_t o = 0; o < n; o++)
        y[o] += s * w[o];
}

static inline const uint8_t *kept_row(const void *wt, int64_t rb, const int32_t *idx, int64_t k)
{
    return (const uint8_t *)wt + (int64_t)idx[k] * rb;
}

static void axpy_f32(const void *wt, int64_t rb, const int32_t *idx, const float *xk, int64_t n_kept, int64_t o0,
                     int64_t n, float *y)
{
    for (int64_t k = 0; k < n_kept; k++)
        axpy_run(y, xk[k], (const float *)kept_row(wt, rb, idx, k) + o0, n);
}

static void axpy_f16(const void *wt, int64_t rb, const int32_t *idx, const float *xk, int64_t n_kept, int64_t o0,
                     int64_t n, float *y)
{
    float w[CHUNK];
    for (int64_t k = 0; k < n_kept; k++) {
        const uint16_t *h = (const uint16_t *)kept_row(wt, rb, idx, k) + o0;
        for (int64_t off = 0; off < n; off += CHUNK) {
            const int64_t len = n - off < CHUNK ? n - off : CHUNK;
            for (int64_t i = 0; i < len; i++)
                w[i] = rs_fp16_to_fp32(h[off + i]);
            axpy_run(y + off, xk[k], w, len);
        }
    }
}

/* Q8_0 and Q4_0: int8 coefficients per group of kept rows and chunk of blocks, integer sums (sparse_int8.h, which
 * defines the arithmetic; this is its reference, and every SIMD kernel with int8 coefficients matches it bit for
 * bit). */
static int weight_q8_0(const uint8_t *block, int o) { return ((const block_q8_0 *)block)->qs[o]; }
static int weight_q4_0(const uint8_t *block, int o)
{
    const uint8_t *qs = ((const block_q4_0 *)block)->qs;
    return (o < RS_QK / 2 ? qs[o] & 0x0F : qs[o - RS_QK / 2] >> 4) - 8;
}

static void axpy_int8(int (*weight)(const uint8_t *, int), int64_t bsize, int R, const void *wt, int64_t rb,
                      const int32_t *idx, const float *xk, int64_t n_kept, int64_t o0, int64_t n, float *y)
{
    const int64_t b_first = o0 / RS_QK, n_blocks = n / RS_QK;
    for (int64_t k = 0; k < n_kept; k += R) {
        const uint8_t *rows[RS_I8_ROWS];
        float xs[RS_I8_ROWS];
        for (int i = 0; i < R; i++) {
            const int64_t kk = k + i < n_kept ? k + i : k;
            rows[i] = kept_row(wt, rb, idx, kk) + b_first * bsize;
            xs[i] = k + i < n_kept ? xk[kk] : 0.0f;
        }
        for (int64_t b0 = 0, nb; b0 < n_blocks; b0 += nb) {
            nb = RS_I8_CHUNK - (b_first + b0) % RS_I8_CHUNK;
            nb = nb < n_blocks - b0 ? nb : n_blocks - b0;
            float s[RS_I8_CHUNK];
            int8_t q[RS_I8_CHUNK * RS_I8_ROWS];
            rs_i8_chunk_coefficients(R, rows, xs, b0 * bsize, bsize, (int)nb, q, s, NULL);
            for (int j = 0; j < nb; j++) {
                float *yb = y + (b0 + j) * RS_QK;
                for (int o = 0; o < RS_QK; o++) {
                    int32_t sum = 0;
                    for (int i = 0; i < R; i++)
                        sum += q[j * R + i] * weight(rows[i] + (b0 + j) * bsize, o);
                    yb[o] = fmaf((float)sum, s[j], yb[o]);
                }
            }
        }
    }
}

#define AXPY_Q(type, TYPE)                                                                                   \
    static void axpy_##type(const void *wt, int64_t rb, const int32_t *idx, const float *xk, int64_t n_kept,  \
                            int64_t o0, int64_t n, float *y)                                                 \
    {                                                                                                        \
        axpy_int8(weight_##type, sizeof(block_##type), RS_I8_ROWS_##TYPE, wt, rb, idx, xk, n_kept, o0, n, y); \
    }
AXPY_Q(q4_0, Q4_0)
AXPY_Q(q8_0, Q8_0)

static void softmax(float *s, int64_t n, float scale) { rs_softmax(s, n, scale); }

/* ---- the prefill GEMM's register tile (kernels.h): 4 tokens x 8 outputs ------------------------------------ */
#define GEMM_MR 4
#define GEMM_NR 8

static void gemm(const float *const *a, const float *b, int64_t kc, float *c, int64_t ldc, int load)
{
    float acc[GEMM_MR][GEMM_NR];
    for (int i = 0; i < GEMM_MR; i++)
        for (int j = 0; j < GEMM_NR; j++)
            acc[i][j] = load ? c[i * ldc + j] : 0.0f;
    for (int64_t k = 0; k < kc; k++)
        for (int i = 0; i < GEMM_MR; i++)
            for (int j = 0; j < GEMM_NR; j++)
                acc[i][j] = fmaf(a[i][k], b[k * GEMM_NR + j], acc[i][j]);
    for (int i = 0; i < GEMM_MR; i++)
        for (int j = 0; j < GEMM_NR; j++)
            c[i * ldc + j] = acc[i][j];
}

/* ---- dense Q4_0 and Q8_0 in tiles of 16 rows (kernels.h: mm_q4_0_r16, mm_q8_0_r16): the reference ---------- */
/* Row r's integer sum over block b: Q4_0's nibbles (less 8 times the activations' block sum s), Q8_0's weights. */
static int32_t r16_sum_q4_0(const block_q4_0_r16 *b, int r, const int8_t *xq, int32_t s)
{
    int32_t sum = -8 * s;
    for (int u = 0; u < 4; u++)
        for (int e = 0; e < 4; e++)
            sum += (b->qs[u][r][e] & 0x0F) * xq[4 * u + e] + (b->qs[u][r][e] >> 4) * xq[16 + 4 * u + e];
    return sum;
}

static int32_t r16_sum_q8_0(const block_q8_0_r16 *b, int r, const int8_t *xq, int32_t s)
{
    (void)s;
    int32_t sum = 0;
    for (int u = 0; u < 8; u++)
        for (int e = 0; e < 4; e++)
            sum += b->qs[u][r][e] * xq[4 * u + e];
    return sum;
}

#define MM_R16(type)                                                                                         \
    static void mm_##type##_r16(const void *w, int64_t rb, int64_t n_rows, const rs_act *x, int64_t n_in,     \
                                int64_t n_tok, float *y, int64_t ys)                                         \
    {                                                                                                        \
        (void)rb;                                                                                            \
        const int64_t nb = n_in / RS_QK;                                                                     \
        const block_##type##_r16 *tiles = w;                                                                 \
        for (int64_t t = 0; t < n_tok; t++)                                                                  \
            for (int64_t g = 0; g < n_rows / RS_R16; g++) {                                                  \
                float acc[RS_R16] = {0};                                                                     \
                for (int64_t k = 0; k < nb; k++) {                                                           \
                    const block_##type##_r16 *b = &tiles[g * nb + k];                                        \
                    const float dx = x->d[t * nb + k];                                                       \
                    for (int r = 0; r < RS_R16; r++) {                                                       \
                        const int32_t sum = r16_sum_##type(b, r, x->q + t * n_in + k * RS_QK, x->s[t * nb + k]); \
                        acc[r] = fmaf((float)sum, rs_fp16_to_fp32(b->d[r]) * dx, acc[r]);                    \
                    }                                                                                        \
                }                                                                                            \
                for (int r = 0; r < RS_R16; r++)                                                             \
                    y[t * ys + g * RS_R16 + r] = acc[r];                                                     \
            }                                                                                                \
    }
MM_R16(q4_0)
MM_R16(q8_0)

/* ---- the prefill GEMM's integer tiles (kernels.h): 4 tokens x 8 outputs ---------------------------------------- */
#define IGEMM_MR 4
#define IGEMM_NR 8

static void igemm(const int8_t *const *a, const float *const *ad, const int32_t *const *as, const uint8_t *b,
                  const float *bd, int64_t nb, int32_t off, float *c, int64_t ldc, int load)
{
    float acc[IGEMM_MR][IGEMM_NR];
    for (int i = 0; i < IGEMM_MR; i++)
        for (int j = 0; j < IGEMM_NR; j++)
            acc[i][j] = load ? c[i * ldc + j] : 0.0f;
    for (int64_t k = 0; k < nb; k++) {
        const uint8_t *q = b + k * 8 * IGEMM_NR * 4;
        for (int i = 0; i < IGEMM_MR; i++) {
            const int8_t *x = a[i] + k * RS_QK;
            for (int j = 0; j < IGEMM_NR; j++) {
                int32_t sum = -off * as[i][k];
                for (int e = 0; e < RS_QK; e++)
                    sum += q[((e / 4) * IGEMM_NR + j) * 4 + e % 4] * x[e];
                acc[i][j] = fmaf((float)sum, bd[k * IGEMM_NR + j] * ad[i][k], acc[i][j]);
            }
        }
    }
    for (int i = 0; i < IGEMM_MR; i++)
        for (int j = 0; j < IGEMM_NR; j++)
            c[i * ldc + j] = acc[i][j];
}

static void requant(const float *v, int64_t ldv, int64_t nb, uint8_t *q, float *bd)
{
    for (int64_t k = 0; k < nb; k++)
        for (int j = 0; j < IGEMM_NR; j++) {
            const float *vk = v + k * RS_QK * ldv + j;
            float m = 0.0f;
            for (int e = 0; e < RS_QK; e++)
                m = fmaxf(m, fabsf(vk[e * ldv]));
            const float inv = 63.0f / fmaxf(m, 1e-30f);
            bd[k * IGEMM_NR + j] = m / 63.0f;
            for (int e = 0; e < RS_QK; e++)
                q[((k * 8 + e / 4) * IGEMM_NR + j) * 4 + e % 4] = (uint8_t)(64 + lrintf(vk[e * ldv] * inv));
        }
}

const rs_kernels rs_kernels_scalar = {
    .name = "scalar",
    .cpu_ok = NULL,
    .mm_f32 = mm_f32,
    .mm_f16 = mm_f16,
    .mm_q4_0 = mm_q4_0,
    .mm_q4_0_r16 = mm_q4_0_r16,
    .mm_q8_0_r16 = mm_q8_0_r16,
    .mm_q8_0 = mm_q8_0,
    .mm_bf16 = mm_bf16,
    .mm_q4_1 = mm_q4_1,
    .mm_q5_0 = mm_q5_0,
    .mm_q5_1 = mm_q5_1,
    .mm_q4_k = mm_q4_k,
    .mm_q5_k = mm_q5_k,
    .mm_q6_k = mm_q6_k,
    .axpy_f32 = axpy_f32,
    .axpy_f16 = axpy_f16,
    .axpy_q4_0 = axpy_q4_0,
    .axpy_q8_0 = axpy_q8_0,
    .dequant = rs_dequant_row,
    .softmax = softmax,
    .gemm = gemm,
    .gemm_mr = GEMM_MR,
    .gemm_nr = GEMM_NR,
    .igemm = igemm,
    .igemm7 = igemm,
    .requant = requant,
    .igemm_mr = IGEMM_MR,
    .igemm_nr = IGEMM_NR,
};
