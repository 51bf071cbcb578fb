/* sparse.c -- rs_sparse_matvec: R-Sparse's y = W[:, m] x[m] + U (VS ((1 - m) * x)) at batch 1.
 *
 * Three steps. (1) The caller's thread scores every channel and compacts the kept ones into (index, activation)
 * lists, and the dropped activations into a dense vector: a few microseconds for n_in = 11008, serial because it is
 * cheaper than a second wake-up of the pool. (2) If rank > 0, threads split the rank: z = VS xd. (3) The kept rows,
 * split one of two ways:
 *   by rows (default with several threads): each thread sums whole kept rows into its own buffer (the pool's
 *     arena), then threads split the output dimension to add U z and the buffers. A row is one contiguous read;
 *     measured on 1728 x 4608 Q8_0 (a 1B model's ffn_down) at 50% kept, weights in cache: 83 us against 111 us
 *     by outputs; a 1B-shaped model's decode, 44.2 against 38.6 tokens/s.
 *   by outputs (RSPARSE_SPARSE_SPLIT=outputs, or one thread): threads split the output dimension into slices
 *     aligned to 32 elements (whole quantization blocks); each writes its slice of U z (or zeros), then adds every
 *     kept row's slice scaled by its activation. Bit-identical for any thread count, but each thread reads only
 *     1/nth of every row: short scattered reads that run well below streaming speed.
 * The weights are read once, only for kept channels.
 *
 * rs_sparse_group runs several linears (a block's q, k and v, or gate and up: they read the same input) with one
 * pool wake-up per step for all of them instead of one per linear: on SmolLM2 a token is 210 sparse linears, whose
 * k and v are 576 x 192, too small for the threads' start and end to vanish behind their work. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "kernels.h"
#include "pool.h"
#include "sparse.h"

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
    float *partial;         /* split by rows: (nth, n_out_pad) per-thread sums, in the pool's arena */
    int64_t n_out_pad;
};

/* Step 2: z[r0..r1) = VS[r0..r1) xd. */
static void lowrank_slice(void *ctx, int ith, int nth)
{
    const struct sparse_job *j = ctx;
    int64_t r0, r1;
    rs_slice(j->rank, 1, ith, nth, &r0, &r1);
    if (r1 > r0)
        j->mm_factor(j->vs + r0 * j->vs_rb, j->vs_rb, r1 - r0, &(rs_act){.f = j->xd}, j->n_in, 1, j->z + r0, 1);
}

/* y[o0..o1) = U[o0..o1) z, or zeros without a low-rank term: where step 3 starts its sums. */
static void lowrank_out(const struct sparse_job *j, int64_t o0, int64_t o1)
{
    if (j->rank > 0) {
        j->mm_factor(j->u + o0 * j->u_rb, j->u_rb, o1 - o0, &(rs_act){.f = j->z}, j->rank, 1, j->y + o0, 1);
    } else {
        for (int64_t o = o0; o < o1; o++)
            j->y[o] = 0.0f;
    }
}

/* Thread ith's slice [o0, o1) of the outputs, set to the low-rank term; 0 when the slice is empty. */
static int begin_outputs(const struct sparse_job *j, int ith, int nth, int64_t *o0, int64_t *o1)
{
    rs_slice(j->n_out, 32, ith, nth, o0, o1);
    if (*o1 <= *o0)
        return 0;
    lowrank_out(j, *o0, *o1);
    return 1;
}

/* Step 3: y[o0..o1) = U[o0..o1) z (or 0) + sum over kept k of xk[k] * wt[idx[k]][o0..o1). */
static void output_slice(void *ctx, int ith, int nth)
{
    const struct sparse_job *j = ctx;
    int64_t o0, o1;
    if (!begin_outputs(j, ith, nth, &o0, &o1))
        return;
    j->axpy(j->wt, j->wt_rb, j->idx, j->xk, j->n_kept, o0, o1 - o0, j->y + o0);
}

/* Step 3 split by kept rows instead: thread ith sums whole rows [k0, k1) of the kept list into its own buffer. Each
 * row is then one contiguous read of row_bytes, instead of 1/nth of it per thread: short layers (out of a few
 * thousand) read their scattered rows much closer to streaming speed. */
static void rows_slice(void *ctx, int ith, int nth)
{
    const struct sparse_job *j = ctx;
    int64_t k0, k1;
    rs_slice(j->n_kept, 1, ith, nth, &k0, &k1);
    float *acc = j->partial + ith * j->n_out_pad;
    for (int64_t o = 0; o < j->n_out; o++)
        acc[o] = 0.0f;
    if (k1 > k0)
        j->axpy(j->wt, j->wt_rb, j->idx + k0, j->xk + k0, k1 - k0, 0, j->n_out, acc);
}

/* ... then y[o0..o1) = U[o0..o1) z (or 0) + the threads' sums. */
static void reduce_slice(void *ctx, int ith, int nth)
{
    const struct sparse_job *j = ctx;
    int64_t o0, o1;
    if (!begin_outputs(j, ith, nth, &o0, &o1))
        return;
    for (int t = 0; t < nth; t++) {
        const float *p = j->partial + t * j->n_out_pad;
        for (int64_t o = o0; o < o1; o++)
            j->y[o] += p[o];
    }
}

/* Rows or outputs: RSPARSE_SPARSE_SPLIT=outputs|rows forces one (for benchmarks); by default rows whenever the
 * pool has several threads, since the per-thread buffers (nth * n_out floats) stay in cache. */
static int split_rows(int nth, int64_t n_kept)
{
    static int mode = -1;  /* -1: not read yet; 0: outputs; 1: rows; 2: auto */
    if (mode < 0) {
        const char *e = getenv("RSPARSE_SPARSE_SPLIT");
        mode = e && !strcmp(e, "outputs") ? 0 : e && !strcmp(e, "rows") ? 1 : 2;
    }
    return nth > 1 && n_kept >= nth && mode != 0;
}

/* The steps of a group of jobs, each in one pool run: slice ith of every job in turn. */
struct group {
    struct sparse_job *jobs;
    int n;
};

static void group_lowrank(void *ctx, int ith, int nth)
{
    const struct group *g = ctx;
    for (int i = 0; i < g->n; i++)
        if (g->jobs[i].rank > 0)
            lowrank_slice(&g->jobs[i], ith, nth);
}

static void group_products(void *ctx, int ith, int nth)
{
    const struct group *g = ctx;
    for (int i = 0; i < g->n; i++)
        (g->jobs[i].partial ? rows_slice : output_slice)(&g->jobs[i], ith, nth);
}

static void group_reduce(void *ctx, int ith, int nth)
{
    const struct group *g = ctx;
    for (int i = 0; i < g->n; i++)
        if (g->jobs[i].partial)
            reduce_slice(&g->jobs[i], ith, nth);
}

/* Checks one linear's arguments and runs step 1 (scores, kept list, dropped vector) into its scratch. */
static int prepare(const rs_sparse_args *a, const rs_kernels *k, struct sparse_job *job)
{
    if (!a->x || !a->y || !a->scratch)
        return RS_ERR_NULL;
    const int64_t n_out = a->n_out, n_in = a->n_in, rank = a->rank;
    int64_t wt_rb;
    int st = rs_check_weights(a->wtype, a->wt, n_in, n_out, &wt_rb);
    if (st != RS_OK)
        return st;
    const int64_t need = rs_sparse_scratch_bytes(n_in, rank);
    if (need < 0 || a->scratch_bytes < need || !rs_fits(n_out, sizeof(float)))
        return RS_ERR_SHAPE;
    int64_t u_rb = 0, vs_rb = 0;
    if (rank > 0) {
        if (a->ftype != RS_TYPE_F32 && a->ftype != RS_TYPE_F16)
            return a->u && a->vs ? RS_ERR_TYPE : RS_ERR_NULL;
        if ((st = rs_check_weights(a->ftype, a->u, n_out, rank, &u_rb)) != RS_OK ||
            (st = rs_check_weights(a->ftype, a->vs, rank, n_in, &vs_rb)) != RS_OK)
            return st;
    }
    if (!rs_aligned(a->x, _Alignof(float)) || !rs_aligned(a->y, _Alignof(float)) || !rs_aligned(a->scratch, 4) ||
        (a->colnorm && !rs_aligned(a->colnorm, _Alignof(float))) ||
        (a->n_kept && !rs_aligned(a->n_kept, _Alignof(int64_t))))
        return RS_ERR_ALIGN;

    const float *x = a->x, *colnorm = a->colnorm;
    const float tau = a->tau;
    int32_t *idx = a->scratch;
    float *xk = (float *)a->scratch + n_in, *xd = xk + n_in, *z = xd + n_in;
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
    *job = (struct sparse_job){
        .k = k, .axpy = rs_axpy_for(k, a->wtype), .mm_factor = rank > 0 ? rs_mm_for(k, a->ftype) : NULL,
        .wt = a->wt, .wt_rb = wt_rb, .n_out = n_out, .n_in = n_in, .rank = rank,
        .u = a->u, .vs = a->vs, .u_rb = u_rb, .vs_rb = vs_rb,
        .idx = idx, .xk = xk, .n_kept = kept, .xd = xd, .z = z, .y = a->y,
    };
    return RS_OK;
}

int rs_sparse_group(rs_pool *pool, const rs_sparse_args *args, int n)
{
    if (!pool || !args)
        return RS_ERR_NULL;
    if (n < 1 || n > RS_SPARSE_GROUP_MAX)
        return RS_ERR_SHAPE;
    const rs_kernels *k = rs_kernels_now();
    struct sparse_job jobs[RS_SPARSE_GROUP_MAX];
    for (int i = 0; i < n; i++) {
        const int st = prepare(&args[i], k, &jobs[i]);
        if (st != RS_OK)
            return st;
    }
    struct group g = {jobs, n};
    int any_rank = 0;
    for (int i = 0; i < n; i++)
        any_rank |= jobs[i].rank > 0;
    if (any_rank)
        rs_pool_run(pool, group_lowrank, &g);
    /* Step 3: the jobs split by rows share one arena, (nth, n_out_pad) floats each, 64-byte aligned. */
    const int nth = rs_pool_n_threads(pool);
    size_t arena_floats = 0, offset[RS_SPARSE_GROUP_MAX];
    int any_rows = 0;
    for (int i = 0; i < n; i++) {
        const int64_t pad = (jobs[i].n_out + 15) / 16 * 16;
        offset[i] = SIZE_MAX;
        if (split_rows(nth, jobs[i].n_kept) && rs_fits(pad + (int64_t)arena_floats, nth * (int64_t)sizeof(float))) {
            jobs[i].n_out_pad = pad;
            offset[i] = arena_floats;
            arena_floats += (size_t)(nth * pad);
            any_rows = 1;
        }
    }
    if (any_rows) {
        float *arena = rs_pool_arena_acquire(pool, arena_floats * sizeof(float));
        if (!arena)
            return RS_ERR_NOMEM;
        for (int i = 0; i < n; i++)
            if (offset[i] != SIZE_MAX)
                jobs[i].partial = arena + offset[i];
    }
    rs_pool_run(pool, group_products, &g);
    if (any_rows) {
        rs_pool_run(pool, group_reduce, &g);
        rs_pool_arena_release(pool);
    }
    for (int i = 0; i < n; i++)
        if (args[i].n_kept)
            *args[i].n_kept = jobs[i].n_kept;
    return RS_OK;
}

int rs_sparse_matvec(rs_pool *pool, int wtype, const void *wt, int64_t n_out, int64_t n_in,
                     const float *colnorm, float tau, int ftype, const void *u, const void *vs, int64_t rank,
                     const float *x, float *y, int64_t *n_kept, void *scratch, int64_t scratch_bytes)
{
    const rs_sparse_args a = {wtype, wt, n_out, n_in, colnorm, tau, ftype, u, vs, rank, x, y, n_kept, scratch,
                              scratch_bytes};
    return rs_sparse_group(pool, &a, 1);
}
