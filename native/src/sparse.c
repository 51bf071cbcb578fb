/* sparse.c -- rs_sparse_matvec: R-Sparse's y = W[:, m] x[m] + U (VS ((1 - m) * x)) at batch 1.
 *
 * Three steps. (1) The caller's thread scores every channel and compacts the kept ones into (index, activation)
 * lists, and the dropped activations into a dense vector: a few microseconds for n_in = 11008, serial because it is
 * cheaper than a second wake-up of the pool. (2) If rank > 0, threads split the rank: z = VS xd. (3) Threads split
 * the output dimension into slices aligned to 32 elements (whole quantization blocks): each writes its slice of
 * U z (or zeros), then adds every kept row's slice scaled by its activation. The weights are read once, only for
 * kept channels, each row as one contiguous run per thread. */
#include <math.h>
#include <stdint.h>

#include "check.h"
#include "kernels.h"
#include "pool.h"

/* Scratch layout, in 4-byte words: idx (n_in int32), xk (n_in), xd (n_in), z (rank). */
int64_t rs_sparse_scratch_bytes(int64_t n_in, int64_t rank)
{
    if (n_in <= 0 || n_in > INT32_MAX || rank < 0 || rank > INT32_MAX)
        return -1;
    return 4 * (3 * n_in + rank);
}

struct sparse_job {
    const rs_kernels *k;
    rs_axpy_fn axpy;
    rs_mm_fn mm_factor;
    const uint8_t *wt;      /* (n_in, wt_rb) */
    int64_t wt_rb;
    int64_t n_out, n_in, rank;
    const uint8_t *u;       /* (n_out, u_rb) */
    const uint8_t *vs;      /* (rank, vs_rb) */
    int64_t u_rb, vs_rb;
    const int32_t *idx;     /* (n_kept,) kept channels, ascending */
    const float *xk;        /* (n_kept,) their activations */
    int64_t n_kept;
    const float *xd;        /* (n_in,) x with the kept channels zeroed */
    float *z;               /* (rank,) */
    float *y;               /* (n_out,) */
};

/* Step 2: z[r0..r1) = VS[r0..r1) xd. */
static void lowrank_slice(void *ctx, int ith, int nth)
{
    const struct sparse_job *j = ctx;
    int64_t r0, r1;
    rs_slice(j->rank, 1, ith, nth, &r0, &r1);
    if (r1 > r0)
        j->mm_factor(j->vs + r0 * j->vs_rb, j->vs_rb, r1 - r0, j->xd, j->n_in, 1, j->z + r0, 1);
}

/* Step 3: y[o0..o1) = U[o0..o1) z (or 0) + sum over kept k of xk[k] * wt[idx[k]][o0..o1). */
static void output_slice(void *ctx, int ith, int nth)
{
    const struct sparse_job *j = ctx;
    int64_t o0, o1;
    rs_slice(j->n_out, 32, ith, nth, &o0, &o1);
    if (o1 <= o0)
        return;
    if (j->rank > 0) {
        j->mm_factor(j->u + o0 * j->u_rb, j->u_rb, o1 - o0, j->z, j->rank, 1, j->y + o0, 1);
    } else {
        for (int64_t o = o0; o < o1; o++)
            j->y[o] = 0.0f;
    }
    j->axpy(j->wt, j->wt_rb, j->idx, j->xk, j->n_kept, o0, o1 - o0, j->y + o0);
}

int rs_sparse_matvec(rs_pool *pool, int wtype, const void *wt, int64_t n_out, int64_t n_in,
                     const float *colnorm, float tau, int ftype, const void *u, const void *vs, int64_t rank,
                     const float *x, float *y, int64_t *n_kept, void *scratch, int64_t scratch_bytes)
{
    if (!pool || !x || !y || !scratch)
        return RS_ERR_NULL;
    int64_t wt_rb;
    int st = rs_check_weights(wtype, wt, n_in, n_out, &wt_rb);
    if (st != RS_OK)
        return st;
    const int64_t need = rs_sparse_scratch_bytes(n_in, rank);
    if (need < 0 || scratch_bytes < need || !rs_fits(n_out, sizeof(float)))
        return RS_ERR_SHAPE;
    int64_t u_rb = 0, vs_rb = 0;
    if (rank > 0) {
        if (ftype != RS_TYPE_F32 && ftype != RS_TYPE_F16)
            return u && vs ? RS_ERR_TYPE : RS_ERR_NULL;
        if ((st = rs_check_weights(ftype, u, n_out, rank, &u_rb)) != RS_OK ||
            (st = rs_check_weights(ftype, vs, rank, n_in, &vs_rb)) != RS_OK)
            return st;
    }
    if (!rs_aligned(x, _Alignof(float)) || !rs_aligned(y, _Alignof(float)) || !rs_aligned(scratch, 4) ||
        (colnorm && !rs_aligned(colnorm, _Alignof(float))) || (n_kept && !rs_aligned(n_kept, _Alignof(int64_t))))
        return RS_ERR_ALIGN;

    int32_t *idx = scratch;
    float *xk = (float *)scratch + n_in, *xd = xk + n_in, *z = xd + n_in;
    /* Step 1, branch-free: every channel is written to the next slot, which only advances if it is kept. NaN
     * scores compare false: dropped. */
    int64_t kept = 0;
    for (int64_t i = 0; i < n_in; i++) {
        const float score = colnorm ? fabsf(x[i]) * colnorm[i] : fabsf(x[i]);
        const int keep = score > tau;
        idx[kept] = (int32_t)i;
        xk[kept] = x[i];
        xd[i] = keep ? 0.0f : x[i];
        kept += keep;
    }
    const rs_kernels *k = rs_kernels_now();
    struct sparse_job job = {
        .k = k, .axpy = rs_axpy_for(k, wtype), .mm_factor = rank > 0 ? rs_mm_for(k, ftype) : NULL,
        .wt = wt, .wt_rb = wt_rb, .n_out = n_out, .n_in = n_in, .rank = rank,
        .u = u, .vs = vs, .u_rb = u_rb, .vs_rb = vs_rb,
        .idx = idx, .xk = xk, .n_kept = kept, .xd = xd, .z = z, .y = y,
    };
    if (rank > 0)
        rs_pool_run(pool, lowrank_slice, &job);
    rs_pool_run(pool, output_slice, &job);
    if (n_kept)
        *n_kept = kept;
    return RS_OK;
}
