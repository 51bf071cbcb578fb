/* attention.c -- causal attention over the KV cache with grouped-query heads: rs_attention_decode (one new token)
 * and rs_attention_tokens (a run of new tokens, for the forward pass).
 *
 * Per query head h (KV head g = h / (n_head / n_head_kv)) and new token i at position pos + i:
 *   s_t = scale * q_ih . K[g, t]   for t <= pos + i;   p = softmax(s);   out_ih = sum_t p_t V[g, t]
 * The pool splits the query heads. The products run on the SIMD path's F32 kernels (kernels.h): for one token, the
 * scores of a KV group's heads are one product with the cached keys (each key read once for the group) and each
 * output a sum of value rows (the sparse kernel with every row kept; as a plain C loop it was built for SSE2 only,
 * and SmolLM2's decode at 300 positions took 24% longer, docs/SPEED.md); for a prompt, both are GEMMs on the
 * linears' tiles (gemm.c), a block of tokens at a time, each block against the keys its last token sees. */
#include <stdint.h>

#include "attention.h"
#include "check.h"
#include "gemm.h"
#include "kernels.h"
#include "pool.h"

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

#define TB 64  /* a prompt's tokens per block of scores: TB x (pos + n) floats per thread */

struct attention_job {
    rs_mm_fn mm;                /* the F32 kernels of the path in use */
    rs_axpy_fn axpy;
    const int32_t *iota;        /* one token: 0, 1, ..., pos (the value rows, all kept) */
    const float *q, *k, *v;     /* q (n_tok, n_head, hd); k, v (n_head_kv, n_ctx, hd) */
    int64_t n_tok, n_head, n_rep, hd, n_ctx, pos, s_stride;
    float scale;
    float *out;                 /* (n_tok, n_head, hd) */
    float *scratch;             /* one token: (n_head, s_stride >= pos + 1) scores; a prompt: per thread, the
                                 * buffers of prompt_head, `per_thread` floats apart */
    int64_t per_thread, s_block;
    const rs_kernels *kern;
};

/* One token, query heads [h, h + n) of one KV group: their scores against the n_pos cached keys in one product (the
 * heads' queries are adjacent in q, so they are n tokens to the kernel, and each key row is read once for all of
 * them; within a path the kernel gives each head the bits it would give it alone), then per head the softmax and
 * the weighted sum of the value rows on the path's F32 sparse kernel with every row kept (idx: 0 .. n_pos - 1). */
static void token_heads(const struct attention_job *j, int64_t h, int64_t n, const float *k, const float *v,
                        int64_t n_pos)
{
    const int64_t hd = j->hd;
    float *s = j->scratch + h * j->s_stride;
    j->mm(k, hd * (int64_t)sizeof(float), n_pos, &(rs_act){.f = j->q + h * hd}, hd, n, s, j->s_stride);
    for (int64_t i = 0; i < n; i++) {
        float *o = j->out + (h + i) * hd;
        j->kern->softmax(s + i * j->s_stride, n_pos, j->scale);
        for (int64_t d = 0; d < hd; d++)
            o[d] = 0.0f;
        j->axpy(v, hd * (int64_t)sizeof(float), j->iota, s + i * j->s_stride, n_pos, 0, hd, o);
    }
}

/* A prompt, one head, TB tokens at a time: S = Q K^T over the keys the block's last token sees (pos + i1 of them:
 * the causal triangle costs only the block's half-filled edge), row i's softmax over its own pos + i + 1 keys (the
 * rest zeroed), then out = S V. Both products run on gemm.c's tiles, reading q, K and V where they are (V is the
 * input-major layout of rs_matmul_wt: a key per row). buf holds TB * (pos + n) floats, then the GEMM's scratch. */
static void prompt_head(const struct attention_job *j, int64_t h, const float *k, const float *v, float *buf)
{
    const int64_t n = j->n_tok, hd = j->hd, row = j->n_head * hd, rb = hd * (int64_t)sizeof(float);
    float *s = buf, *gemm_scratch = buf + j->s_block;
    for (int64_t i0 = 0; i0 < n; i0 += TB) {
        const int64_t nb = min64(TB, n - i0), keys = j->pos + i0 + nb;
        rs_gemm_serial(j->kern, RS_TYPE_F32, k, rb, 0, keys, hd, j->q + i0 * row + h * hd, row, nb, s, keys,
                       gemm_scratch);
        for (int64_t i = 0; i < nb; i++) {
            const int64_t seen = j->pos + i0 + i + 1;
            j->kern->softmax(s + i * keys, seen, j->scale);
            for (int64_t t = seen; t < keys; t++)
                s[i * keys + t] = 0.0f;
        }
        rs_gemm_serial(j->kern, RS_TYPE_F32, v, rb, 1, hd, keys, s, keys, nb, j->out + i0 * row + h * hd, row,
                       gemm_scratch);
    }
}

static void attention_heads(void *ctx, int ith, int nth)
{
    const struct attention_job *j = ctx;
    int64_t h0, h1;
    rs_slice(j->n_head, 1, ith, nth, &h0, &h1);
    const int64_t hd = j->hd;
    for (int64_t h = h0, n; h < h1; h += n) {
        const int64_t g = h / j->n_rep;
        const float *k = j->k + g * j->n_ctx * hd, *v = j->v + g * j->n_ctx * hd;
        n = j->n_tok == 1 ? min64((g + 1) * j->n_rep, h1) - h : 1;  /* one token: the slice's heads of group g */
        if (j->n_tok == 1)
            token_heads(j, h, n, k, v, j->pos + 1);
        else
            prompt_head(j, h, k, v, j->scratch + ith * j->per_thread);
    }
}

int rs_attention_tokens(rs_pool *pool, const float *q, const float *k_cache, const float *v_cache, int64_t n_tok,
                        int64_t n_head, int64_t n_head_kv, int64_t head_dim, int64_t n_ctx, int64_t pos,
                        float scale, float *out, float *scratch, int64_t scratch_stride)
{
    const rs_kernels *kern = rs_kernels_now();
    struct attention_job job = {rs_mm_for(kern, RS_TYPE_F32), rs_axpy_for(kern, RS_TYPE_F32), NULL, q, k_cache,
                                v_cache, n_tok, n_head, n_head / n_head_kv, head_dim, n_ctx, pos, scratch_stride,
                                scale, out, scratch, 0, 0, kern};
    if (n_tok == 1) {
        if (pos >= INT32_MAX)  /* value rows are listed as int32 */
            return RS_ERR_SHAPE;
        int32_t *iota = rs_pool_arena_acquire(pool, (size_t)(pos + 1) * sizeof(int32_t));
        if (!iota)
            return RS_ERR_NOMEM;
        for (int64_t t = 0; t <= pos; t++)
            iota[t] = (int32_t)t;
        job.iota = iota;
        rs_pool_run(pool, attention_heads, &job);
        rs_pool_arena_release(pool);
        return RS_OK;
    }
    /* a prompt: per thread, a block of scores and the GEMM's scratch in the pool's arena (sizes bounded by the
     * callers' checks of n_ctx) */
    job.s_block = (TB * (pos + n_tok) + 15) / 16 * 16;  /* 64-byte aligned GEMM scratch after it */
    job.per_thread = job.s_block + RS_GEMM_SCRATCH_FLOATS;
    const size_t bytes = (size_t)(rs_pool_n_threads(pool) * job.per_thread) * sizeof(float);
    if (!rs_fits(rs_pool_n_threads(pool), job.per_thread * (int64_t)sizeof(float)) ||
        !(job.scratch = rs_pool_arena_acquire(pool, bytes)))
        return RS_ERR_NOMEM;
    rs_pool_run(pool, attention_heads, &job);
    rs_pool_arena_release(pool);
    return RS_OK;
}

int rs_attention_decode(rs_pool *pool, const float *q, const float *k_cache, const float *v_cache, int64_t n_head,
                        int64_t n_head_kv, int64_t head_dim, int64_t n_ctx, int64_t n_pos, float scale, float *out,
                        float *scratch, int64_t scratch_floats)
{
    if (!pool || !q || !k_cache || !v_cache || !out || !scratch)
        return RS_ERR_NULL;
    if (n_head <= 0 || n_head_kv <= 0 || n_head % n_head_kv || head_dim <= 0 || n_ctx <= 0 || n_pos <= 0 ||
        n_pos > n_ctx || !rs_fits(head_dim, sizeof(float)) || !rs_fits(n_head, head_dim * (int64_t)sizeof(float)) ||
        !rs_fits(n_head_kv, n_ctx) || !rs_fits(n_pos, sizeof(float)) || !rs_fits(n_head_kv * n_ctx, head_dim * (int64_t)sizeof(float)) ||
        !rs_fits(n_head, n_pos * (int64_t)sizeof(float)) || scratch_floats < n_head * n_pos)
        return RS_ERR_SHAPE;
    if (!rs_aligned(q, _Alignof(float)) || !rs_aligned(k_cache, _Alignof(float)) ||
        !rs_aligned(v_cache, _Alignof(float)) || !rs_aligned(out, _Alignof(float)) ||
        !rs_aligned(scratch, _Alignof(float)))
        return RS_ERR_ALIGN;
    /* score rows n_pos apart: the caller's scratch need only hold n_head * n_pos floats */
    return rs_attention_tokens(pool, q, k_cache, v_cache, 1, n_head, n_head_kv, head_dim, n_ctx, n_pos - 1, scale,
                               out, scratch, n_pos);
}
