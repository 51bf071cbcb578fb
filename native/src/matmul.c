/* matmul.c -- the dense entry points (and rs_strerror): argument checks, then decode's matrix-vector product split
 * over the pool, or the prompt's GEMM (gemm.c). */
#include <stdint.h>

#include "check.h"
#include "gemm.h"
#include "kernels.h"
#include "pool.h"
#include "quant.h"

const char *rs_strerror(int status)
{
    switch (status) {
    case RS_OK: return "success";
    case RS_ERR_NULL: return "a required pointer is NULL";
    case RS_ERR_TYPE: return "unknown weight type";
    case RS_ERR_SHAPE: return "a size is <= 0, too large, or not a multiple of the block size";
    case RS_ERR_NOMEM: return "out of memory";
    case RS_ERR_THREADS: return "thread count out of range or thread creation failed";
    case RS_ERR_ALIGN: return "a pointer is not aligned for its element type";
    case RS_ERR_INDEX: return "a row index is out of range";
    case RS_ERR_PATH: return "unknown SIMD path, or one this CPU cannot run";
    default: return "unknown rs_status";
    }
}

struct matmul_job {
    rs_mm_fn mm;
    const uint8_t *w;   /* (n_out, row_bytes) */
    int64_t row_bytes;
    int64_t n_out, n_in;
    rs_act x;           /* what the kernel reads: x.f, the caller's activations, or those rounded to int8 blocks,
                         * x.q, x.d and x.s (kernels.h), in the pool's arena */
    float *y;           /* (n_out,) */
    int64_t unit;       /* rows a slice is a multiple of */
};

/* Slice ith of nth gets a contiguous range of output rows (whole tiles of 16 for the tiled types, whose tile g starts
 * at row 16 g's byte offset, g * 16 * row_bytes). */
static void matmul_slice(void *ctx, int ith, int nth)
{
    const struct matmul_job *j = ctx;
    int64_t r0, r1;
    rs_slice(j->n_out, j->unit, ith, nth, &r0, &r1);
    if (r1 > r0)
        j->mm(j->w + r0 * j->row_bytes, j->row_bytes, r1 - r0, &j->x, j->n_in, 1, j->y + r0, j->n_out);
}

/* The checks both products share: w holds n_rows stored rows of row_len elements (rs_matmul: n_out rows of n_in,
 * rs_matmul_wt: n_in rows of n_out); x (n_tok, n_in) and y (n_tok, n_out) fit and are aligned. Stores the row
 * bytes. */
static int check_product(const rs_pool *pool, int type, const void *w, int64_t n_rows, int64_t row_len,
                         int64_t n_out, int64_t n_in, const float *x, int64_t n_tok, const float *y, int64_t *rb)
{
    if (!pool || !x || !y)
        return RS_ERR_NULL;
    const int st = rs_check_weights(type, w, n_rows, row_len, rb);
    if (st != RS_OK)
        return st;
    if (n_tok <= 0 || !rs_fits(n_out, sizeof(float)) || !rs_fits(n_in, sizeof(float)) ||
        !rs_fits(n_tok, n_in * (int64_t)sizeof(float)) || !rs_fits(n_tok, n_out * (int64_t)sizeof(float)))
        return RS_ERR_SHAPE;
    if (!rs_aligned(x, _Alignof(float)) || !rs_aligned(y, _Alignof(float)))
        return RS_ERR_ALIGN;
    return RS_OK;
}

int rs_matmul(rs_pool *pool, int type, const void *w, int64_t n_out, int64_t n_in,
              const float *x, int64_t n_tok, float *y)
{
    int64_t rb;
    const int st = check_product(pool, type, w, n_out, n_in, n_out, n_in, x, n_tok, y, &rb);
    if (st != RS_OK)
        return st;
    const rs_kernels *k = rs_kernels_now();
    if (n_tok > 1)
        return rs_gemm(pool, k, type, w, rb, 0, n_out, n_in, x, n_tok, y);
    struct matmul_job job = {.mm = rs_mm_for(k, type), .w = w, .row_bytes = rb, .n_out = n_out, .n_in = n_in,
                             .x = {.f = x}, .y = y, .unit = rs_type_tiled(type) ? RS_R16 : 1};
    if (rs_type_block(type) == 1) {  /* F32, F16, BF16: the float activations as they are */
        rs_pool_run(pool, matmul_slice, &job);
        return RS_OK;
    }
    /* n_in is a multiple of 32 here (rs_check_weights). Each part starts 64-byte aligned (the arena does), so the
     * scales and sums stay aligned for any n_in. Rounding one token takes a few microseconds: less than waking the
     * pool for it. */
    const size_t q_bytes = ((size_t)n_in + 63) / 64 * 64, nb = (size_t)(n_in / RS_QK);
    const size_t d_bytes = (nb * sizeof(float) + 63) / 64 * 64;
    void *arena = rs_pool_arena_acquire(pool, q_bytes + d_bytes + nb * sizeof(int32_t));
    if (!arena)
        return RS_ERR_NOMEM;
    int8_t *xq = arena;
    float *xd = (float *)((char *)arena + q_bytes);
    int32_t *xs = (int32_t *)((char *)arena + q_bytes + d_bytes);
    rs_quantize_act(x, n_in, xq, xd, xs);
    job.x = (rs_act){.q = xq, .d = xd, .s = xs};
    rs_pool_run(pool, matmul_slice, &job);
    rs_pool_arena_release(pool);
    return RS_OK;
}

int rs_matmul_wt(rs_pool *pool, int type, const void *wt, int64_t n_out, int64_t n_in, const float *x,
                 int64_t n_tok, float *y)
{
    int64_t rb;
    const int st = check_product(pool, type, wt, n_in, n_out, n_out, n_in, x, n_tok, y, &rb);
    if (st != RS_OK)
        return st;
    if (!rs_type_wt_ok(type))
        return RS_ERR_TYPE;
    return rs_gemm(pool, rs_kernels_now(), type, wt, rb, 1, n_out, n_in, x, n_tok, y);
}

int rs_get_rows(int type, const void *w, int64_t n_rows_total, int64_t n_in,
                const int64_t *rows, int64_t n, float *out)
{
    if (!rows || !out)
        return RS_ERR_NULL;
    int64_t rb;
    const int st = rs_check_weights(type, w, n_rows_total, n_in, &rb);
    if (st != RS_OK)
        return st;
    if (n <= 0 || !rs_fits(n, n_in * (int64_t)sizeof(float)))
        return RS_ERR_SHAPE;
    if (!rs_aligned(rows, _Alignof(int64_t)) || !rs_aligned(out, _Alignof(float)))
        return RS_ERR_ALIGN;
    for (int64_t i = 0; i < n; i++)  /* all indices first: a bad call writes nothing */
        if (rows[i] < 0 || rows[i] >= n_rows_total)
            return RS_ERR_INDEX;
    const uint8_t *base = w;
    for (int64_t i = 0; i < n; i++) {
        if (!rs_type_tiled(type))
            rs_dequant_row(type, base + rows[i] * rb, out + i * n_in, n_in);
        else
            rs_dequant_tiled(type, w, n_in, rows[i], 0, n_in, out + i * n_in);
    }
    return RS_OK;
}
