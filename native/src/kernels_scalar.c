/* kernels_scalar.c -- the reference kernels: plain C that every SIMD path must agree with.
 *
 * Each kernel walks its row in chunks: dequantize a chunk to float once, then dot it with the same chunk of every
 * token. The dot keeps 8 partial sums, which both bounds the float rounding error and lets the compiler vectorize
 * the loop without -ffast-math (it may not reorder one running sum). */
#include "kernels.h"
#include "quant.h"

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

static void dot_f16(const void *row, const float *x, int64_t n_in, int64_t n_tok, float *y, int64_t ys)
{
    const uint16_t *h = row;
    float w[CHUNK];
    zero(y, n_tok, ys);
    for (int64_t off = 0; off < n_in; off += CHUNK) {
        const int64_t len = n_in - off < CHUNK ? n_in - off : CHUNK;
        for (int64_t i = 0; i < len; i++)
            w[i] = rs_fp16_to_fp32(h[off + i]);
        chunk_all_tokens(w, len, x, off, n_in, n_tok, y, ys);
    }
}

static void dot_q4_0(const void *row, const float *x, int64_t n_in, int64_t n_tok, float *y, int64_t ys)
{
    const block_q4_0 *b = row;
    float w[CHUNK];
    zero(y, n_tok, ys);
    for (int64_t off = 0; off < n_in; off += CHUNK) {
        const int64_t len = n_in - off < CHUNK ? n_in - off : CHUNK;
        for (int64_t k = 0; k < len / RS_QK; k++)
            rs_dequant_q4_0(&b[off / RS_QK + k], w + k * RS_QK);
        chunk_all_tokens(w, len, x, off, n_in, n_tok, y, ys);
    }
}

static void dot_q8_0(const void *row, const float *x, int64_t n_in, int64_t n_tok, float *y, int64_t ys)
{
    const block_q8_0 *b = row;
    float w[CHUNK];
    zero(y, n_tok, ys);
    for (int64_t off = 0; off < n_in; off += CHUNK) {
        const int64_t len = n_in - off < CHUNK ? n_in - off : CHUNK;
        for (int64_t k = 0; k < len / RS_QK; k++)
            rs_dequant_q8_0(&b[off / RS_QK + k], w + k * RS_QK);
        chunk_all_tokens(w, len, x, off, n_in, n_tok, y, ys);
    }
}

const rs_kernels rs_kernels_scalar = {
    .name = "scalar",
    .cpu_ok = NULL,
    .dot_f32 = dot_f32,
    .dot_f16 = dot_f16,
    .dot_q4_0 = dot_q4_0,
    .dot_q8_0 = dot_q8_0,
};
