/* sparse.c -- rs_sparse_matvec: R-Sparse's y = W[:, m] x[m] + U (VS ((1 - m) * x)) at batch 1.
 *
 * Three steps: (1) score every channel, listing the kept ones as (index, activation) and zeroing them in a copy of
 * x (xd, the dropped activations); (2) if rank > 0, z = VS xd; (3) the kept rows' sum plus U z. Two ways to split
 * them over the pool's threads:
 *   by rows (default with several threads): each thread takes a slice of the input channels and does all three
 *     steps for its channels alone -- scores them, lists its kept rows, sums them into its own buffer (the pool's
 *     arena) and its share of z, VS[:, slice] xd[slice] -- in one pool run; a second run splits the outputs to add
 *     U (sum of the z shares) and the buffers. A kept row is one contiguous read, and nothing runs serially between
 *     the runs. Measured on 1728 x 4608 Q8_0 (a 1B model's ffn_down) at 50% kept, weights in cache: 83 us against
 *     111 us by outputs; a 1B-shaped model's decode, 44.2 against 38.6 tokens/s (with step 1 serial then). Step 1
 *     in the threads instead of before them: decode 7% faster on the 1B-shaped Q4_0 model, 16% on SmolLM2 Q4_0
 *     with its low-rank terms (docs/SPEED.md, 2026-12-07 b).
 *   by outputs (RSPARSE_SPARSE_SPLIT=outputs, or one thread): the caller's thread does step 1 for every channel,
 *     the threads split the rank for step 2, then the output dimension into slices aligned to 32 elements (whole
 *     quantization blocks) for step 3: each writes its slice of U z (or zeros), then adds every kept row's slice
 *     scaled by its activation. Bit-identical for any thread count, but each thread reads only 1/nth of every row:
 *     short scattered reads that run well below streaming speed.
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
    rs_axpy_fn axpy;
    rs_mm_fn mm_factor;
    const uint8_t *wt;      /* (n_in, wt_rb) */
    int64_t wt_rb;
    int64_t n_out, n_in, rank;
    const uint8_t *u;       /* (n_out, u_rb) */
    const uint8_t *vs;      /* (rank, vs_rb) */
    int64_t u_rb, vs_rb;
    const float *x, *colnorm;
    float tau;
    int32_t *idx;           /* (n_in,) kept channels, ascending (split by rows: thread ith's from its first channel) */
    float *xk;              /* (n_in,) their activations, likewise */
    int64_t n_kept;
    float *xd;              /* (n_in,) x with the kept channels zeroed */
    float *z;               /* split by outputs: (rank,) */
    float *y;               /* (n_out,) */
    float *partial;         /* split by rows: (nth, n_out_pad) per-thread sums, in the pool's arena */
    int64_t n_out_pad;
    /* split by rows, where each thread scores its own channels: */
    int64_t *kept;          /* (nth,) each thread's kept rows */
    float *zp;              /* (2 nth, rank_pad): each thread's share of z, then each thread's sum of the shares */
    int64_t rank_pad;
    int64_t f_bytes;        /* bytes of one element of U and VS (F32 or F16) */
};

/* Step 2: z[r0..r1) = VS[r0..r1) xd. */
static void lowrank_slice(struct sparse_job *j, int ith, int nth)
{
    if (j->rank == 0)
        return;
    int64_t r0, r1;
    rs_slice(j->rank, 1, ith, nth, &r0, &r1);
    if (r1 > r0)
        j->mm_factor(j->vs + r0 * j->vs_rb, j->vs_rb, r1 - r0, &(rs_act){.f = j->xd}, j->n_in, 1, j->z + r0, 1);
}

/* y[o0..o1) = U[o0..o1) z, or zeros without a low-rank term: where step 3 starts its sums. */
static void lowrank_out(const struct sparse_job *j, const float *z, int64_t o0, int64_t o1)
{
    if (j->rank > 0) {
        j->mm_factor(j->u + o0 * j->u_rb, j->u_rb, o1 - o0, &(rs_act){.f = z}, j->rank, 1, j->y + o0, 1);
    } else {
        for (int64_t o = o0; o < o1; o++)
            j->y[o] = 0.0f;
    }
}

/* Thread ith's slice [o0, o1) of the outputs, set to the low-rank term; 0 when the slice is empty. */
static int begin_outputs(const struct sparse_job *j, const float *z, int ith, int nth, int64_t *o0, int64_t *o1)
{
    rs_slice(j->n_out, 32, ith, nth, o0, o1);
    if (*o1 <= *o0)
        return 0;
    lowrank_out(j, z, *o0, *o1);
    return 1;
}

/* Step 3: y[o0..o1) = U[o0..o1) z (or 0) + sum over kept k of xk[k] * wt[idx[k]][o0..o1). */
static void output_slice(struct sparse_job *j, int ith, int nth)
{
    int64_t o0, o1;
    if (!begin_outputs(j, j->z, ith, nth, &o0, &o1))
        return;
    j->axpy(j->wt, j->wt_rb, j->idx, j->xk, j->n_kept, o0, o1 - o0, j->y + o0);
}

/* ... then y[o0..o1) = U[o0..o1) z (or 0) + the threads' sums. */
static void reduce_slice(struct sparse_job *j, int ith, int nth)
{
    float *z = NULL;
    if (j->rank > 0) {  /* z = the threads' shares, summed in thread order, into this thread's own copy */
        z = j->zp + (nth + ith) * j->rank_pad;
        for (int64_t r = 0; r < j->rank; r++)
            z[r] = 0.0f;
        for (int t = 0; t < nth; t++)
            for (int64_t r = 0; r < j->rank; r++)
                z[r] += j->zp[t * j->rank_pad + r];
    }
    int64_t o0, o1;
    if (!begin_outputs(j, z, ith, nth, &o0, &o1))
        return;
    for (int t = 0; t < nth; t++) {
        const float *p = j->partial + t * j->n_out_pad;
        for (int64_t o = o0; o < o1; o++)
            j->y[o] += p[o];
    }
}

/* Rows or outputs: RSPARSE_SPARSE_SPLIT=outputs|rows forces one (for benchmarks); by default rows whenever the
 * pool has several threads, since the per-thread buffers (nth * n_out floats) stay in cache. */
static int split_rows(int nth)
{
    static int mode = -1;  /* -1: not read yet; 0: outputs; 1: rows; 2: auto */
    if (mode < 0) {
        const char *e = getenv("RSPARSE_SPARSE_SPLIT");
        mode = e && !strcmp(e, "outputs") ? 0 : e && !strcmp(e, "rows") ? 1 : 2;
    }
    return nth > 1 && mode != 0;
}

/* Checks one linear's arguments and sets up its job over its scratch. */
static int prepare(const rs_sparse_args *a, const rs_kernels *k, struct sparse_job *job)
{
    if (!a->x || !a->y || !a->scratch)
        return RS_ERR_NULL;
    const int64_t n_out = a->n_out, n_in = a->n_in, rank = a->rank;
    int64_t wt_rb;
    int st = rs_check_weights(a->wtype, a->wt, n_in, n_out, &wt_rb);
    if (st != RS_OK)
        return st;
    if (!rs_type_wt_ok(a->wtype))
        return RS_ERR_TYPE;  /* a type that runs dense only: no kernel reads it by input channel */
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

    int32_t *idx = a->scratch;
    float *xk = (float *)a->scratch + n_in, *xd = xk + n_in, *z = xd + n_in;
    *job = (struct sparse_job){
        .axpy = rs_axpy_for(k, a->wtype), .mm_factor = rank > 0 ? rs_mm_for(k, a->ftype) : NULL,
        .wt = a->wt, .wt_rb = wt_rb, .n_out = n_out, .n_in = n_in, .rank = rank,
        .u = a->u, .vs = a->vs, .u_rb = u_rb, .vs_rb = vs_rb,
        .idx = idx, .xk = xk, .xd = xd, .z = z, .y = a->y,
        .f_bytes = a->ftype == RS_TYPE_F16 ? 2 : 4, .x = a->x, .colnorm = a->colnorm, .tau = a->tau,
    };
    return RS_OK;
}

/* Step 1 on channels [c0, c1): the kept ones listed from idx[c0], xk[c0] on, xd[c0..c1) the dropped activations;
 * returns how many were kept. Branch-free: every channel is written to the next slot, which only advances if it
 * is kept. NaN scores compare false: dropped, unless tau < 0, which keeps every channel (a dense product, NaN
 * included, so it reaches the output as it would in any dense product). */
static int64_t score_channels(const struct sparse_job *j, int64_t c0, int64_t c1)
{
    const float *x = j->x, *colnorm = j->colnorm;
    const float tau = j->tau;
    const int keep_all = tau < 0.0f;
    int32_t *idx = j->idx + c0;
    float *xk = j->xk + c0, *xd = j->xd;
    int64_t kept = 0;
    for (int64_t i = c0; i < c1; i++) {
        const float score = colnorm ? fabsf(x[i]) * colnorm[i] : fabsf(x[i]);
        const int keep = keep_all | (score > tau);
        idx[kept] = (int32_t)i;
        xk[kept] = x[i];
        xd[i] = keep ? 0.0f : x[i];
        kept += keep;
    }
    return kept;
}

/* Split by rows, in one pool run: thread ith scores its slice of the channels, adds its share of z (VS's columns
 * of those channels times their dropped activations) and sums its kept rows into its own buffer. */
static void rows_slice(struct sparse_job *j, int ith, int nth)
{
    int64_t c0, c1;
    rs_slice(j->n_in, 32, ith, nth, &c0, &c1);
    const int64_t kept = j->kept[ith] = score_channels(j, c0, c1);
    if (j->rank > 0) {
        float *zs = j->zp + ith * j->rank_pad;
        if (c1 > c0)
            j->mm_factor(j->vs + c0 * j->f_bytes, j->vs_rb, j->rank, &(rs_act){.f = j->xd + c0}, c1 - c0, 1, zs, 1);
        else
            for (int64_t r = 0; r < j->rank; r++)
                zs[r] = 0.0f;
    }
    float *acc = j->partial + ith * j->n_out_pad;
    for (int64_t o = 0; o < j->n_out; o++)
        acc[o] = 0.0f;
    if (kept)
        j->axpy(j->wt, j->wt_rb, j->idx + c0, j->xk + c0, kept, 0, j->n_out, acc);
}

/* One step of a group of jobs in one pool run: slice ith of every job in turn. */
struct group {
    struct sparse_job *jobs;
    int n;
    void (*step)(struct sparse_job *j, int ith, int nth);
};

static void group_step(void *ctx, int ith, int nth)
{
    const struct group *g = ctx;
    for (int i = 0; i < g->n; i++)
        g->step(&g->jobs[i], ith, nth);
}

static void run_step(rs_pool *pool, struct group *g, void (*step)(struct sparse_job *, int, int))
{
    g->step = step;
    rs_pool_run(pool, group_step, g);
}

/* Split by rows: each job's arena part, in floats (64-byte multiples): the threads' sums (nth, n_out_pad), their
 * kept counts (nth int64), their z shares and sums (2 nth, rank_pad). Sets the job's pointers if base is given. */
static int64_t rows_arena(struct sparse_job *j, int nth, float *base)
{
    const int64_t n_out_pad = (j->n_out + 15) / 16 * 16, rank_pad = (j->rank + 15) / 16 * 16;
    const int64_t kept_floats = (2 * (int64_t)nth + 15) / 16 * 16;
    if (base) {
        j->n_out_pad = n_out_pad;
        j->rank_pad = rank_pad;
        j->partial = base;
        j->kept = (int64_t *)(base + nth * n_out_pad);
        j->zp = base + nth * n_out_pad + kept_floats;
    }
    return nth * n_out_pad + kept_floats + 2 * nth * rank_pad;
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
    struct group g = {jobs, n, NULL};
    const int nth = rs_pool_n_threads(pool);
    if (split_rows(nth)) {
        /* the jobs' arena parts, one after the other (sizes bounded by n_out, rank and nth, all checked) */
        int64_t floats = 0;
        for (int i = 0; i < n; i++)
            floats += rows_arena(&jobs[i], nth, NULL);
        float *arena = rs_fits(floats, sizeof(float)) ? rs_pool_arena_acquire(pool, (size_t)floats * sizeof(float))
                                                      : NULL;
        if (!arena)
            return RS_ERR_NOMEM;
        for (int i = 0; i < n; i++)
            arena += rows_arena(&jobs[i], nth, arena);
        run_step(pool, &g, rows_slice);
        run_step(pool, &g, reduce_slice);
        for (int i = 0; i < n; i++) {
            jobs[i].n_kept = 0;
            for (int t = 0; t < nth; t++)
                jobs[i].n_kept += jobs[i].kept[t];
        }
        rs_pool_arena_release(pool);
    } else {
        int any_rank = 0;
        for (int i = 0; i < n; i++) {
            jobs[i].n_kept = score_channels(&jobs[i], 0, jobs[i].n_in);
            any_rank |= jobs[i].rank > 0;
        }
        if (any_rank)
            run_step(pool, &g, lowrank_slice);
        run_step(pool, &g, output_slice);
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
