/* matmul.c -- the public entry points: argument checks, then the work split over the pool.
 *
 * Every size is checked before any memory is touched, and every byte count is checked to fit in ptrdiff_t, so a
 * wrong call returns a status instead of reading out of bounds. */
#include <stdint.h>

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
    default: return "unknown rs_status";
    }
}

/* a * b <= PTRDIFF_MAX, for a, b > 0: a byte count that pointer arithmetic can hold. */
static int fits(int64_t a, int64_t b)
{
    return a <= (int64_t)(PTRDIFF_MAX / b);
}

static int aligned(const void *p, int64_t align)
{
    return (uintptr_t)p % (uintptr_t)align == 0;
}

/* Checks a weight matrix of n_rows rows of n_in elements; on success stores the bytes per row. */
static int check_weights(int type, const void *w, int64_t n_rows, int64_t n_in, int64_t *row_bytes)
{
    if (!w)
        return RS_ERR_NULL;
    if (!rs_type_ok(type))
        return RS_ERR_TYPE;
    const int64_t rb = rs_row_bytes(type, n_in);
    if (n_rows <= 0 || rb < 0 || !fits(n_rows, rb) || !fits(n_in, sizeof(float)))
        return RS_ERR_SHAPE;
    if (!aligned(w, rs_type_align(type)))
        return RS_ERR_ALIGN;
    *row_bytes = rb;
    return RS_OK;
}

struct matmul_job {
    rs_dot_fn dot;
    const uint8_t *w;   /* (n_out, row_bytes) */
    int64_t row_bytes;
    int64_t n_out, n_in, n_tok;
    const float *x;     /* (n_tok, n_in) */
    float *y;           /* (n_tok, n_out) */
};

/* Slice ith of nth gets a contiguous range of output rows, sizes differing by at most one; written without
 * n_out * ith, which could overflow. */
static void matmul_slice(void *ctx, int ith, int nth)
{
    const struct matmul_job *j = ctx;
    const int64_t base = j->n_out / nth, extra = j->n_out % nth;
    const int64_t r0 = base * ith + (ith < extra ? ith : extra);
    const int64_t r1 = r0 + base + (ith < extra ? 1 : 0);
    for (int64_t r = r0; r < r1; r++)
        j->dot(j->w + r * j->row_bytes, j->x, j->n_in, j->n_tok, j->y + r, j->n_out);
}

int rs_matmul(rs_pool *pool, int type, const void *w, int64_t n_out, int64_t n_in,
              const float *x, int64_t n_tok, float *y)
{
    if (!pool || !x || !y)
        return RS_ERR_NULL;
    int64_t rb;
    const int st = check_weights(type, w, n_out, n_in, &rb);
    if (st != RS_OK)
        return st;
    if (n_tok <= 0 || !fits(n_out, sizeof(float)) || !fits(n_tok, n_in * (int64_t)sizeof(float)) ||
        !fits(n_tok, n_out * (int64_t)sizeof(float)))
        return RS_ERR_SHAPE;
    if (!aligned(x, _Alignof(float)) || !aligned(y, _Alignof(float)))
        return RS_ERR_ALIGN;
    struct matmul_job job = {rs_dot_for(type), w, rb, n_out, n_in, n_tok, x, y};
    rs_pool_run(pool, matmul_slice, &job);
    return RS_OK;
}

int rs_get_rows(int type, const void *w, int64_t n_rows_total, int64_t n_in,
                const int64_t *rows, int64_t n, float *out)
{
    if (!rows || !out)
        return RS_ERR_NULL;
    int64_t rb;
    const int st = check_weights(type, w, n_rows_total, n_in, &rb);
    if (st != RS_OK)
        return st;
    if (n <= 0 || !fits(n, n_in * (int64_t)sizeof(float)))
        return RS_ERR_SHAPE;
    if (!aligned(rows, _Alignof(int64_t)) || !aligned(out, _Alignof(float)))
        return RS_ERR_ALIGN;
    for (int64_t i = 0; i < n; i++)  /* all indices first: a bad call writes nothing */
        if (rows[i] < 0 || rows[i] >= n_rows_total)
            return RS_ERR_INDEX;
    const uint8_t *base = w;
    for (int64_t i = 0; i < n; i++)
        rs_dequant_row(type, base + rows[i] * rb, out + i * n_in, n_in);
    return RS_OK;
}
