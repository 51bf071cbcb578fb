/* attention.c -- rs_attention_decode: one new token's attention over the KV cache, with grouped-query heads.
 *
 * This is the decode step's glue that numpy runs slowest: a dozen small calls per layer, each a few microseconds,
 * and strided views of the cache that it copies. Here it is one call per layer; the pool splits the query heads.
 * Per query head h (KV head g = h / (n_head / n_head_kv)):
 *   s_t = scale * q_h . K[g, t]   for t < n_pos;   p = softmax(s);   out_h = sum_t p_t V[g, t] */
#include <math.h>
#include <stdint.h>

#include "attention.h"
#include "check.h"
#include "pool.h"

struct attention_job {
    const float *q, *k, *v;     /* q (n_tok, n_head, hd); k, v (n_head_kv, n_ctx, hd) */
    int64_t n_tok, n_head, n_rep, hd, n_ctx, pos, s_stride;
    float scale;
    float *out, *scratch;       /* out (n_tok, n_head, hd); scratch (n_head, s_stride >= pos + n_tok) */
};

/* Eight independent partial sums: the compiler keeps them in vector registers (a single running sum is a chain of
 * dependent adds that it may not reorder). */
static inline float dot(const float *a, const float *b, int64_t n)
{
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++)
            acc[l] += a[i + l] * b[i + l];
    float sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++)
        sum += a[i] * b[i];
    return sum;
}

/* One query head against the first n_pos cached positions of its KV head; s: (n_pos,) scores. */
static void attend(const float *q, const float *k, const float *v, int64_t n_pos, int64_t hd, float scale,
                   float *s, float *o)
{
    float max = -INFINITY;
    for (int64_t t = 0; t < n_pos; t++) {
        s[t] = dot(q, k + t * hd, hd) * scale;
        max = s[t] > max ? s[t] : max;
    }
    float sum = 0.0f;
    for (int64_t t = 0; t < n_pos; t++) {
        s[t] = expf(s[t] - max);
        sum += s[t];
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < hd; i++)
        o[i] = 0.0f;
    for (int64_t t = 0; t < n_pos; t++) {
        const float p = s[t] * inv;
        for (int64_t i = 0; i < hd; i++)
            o[i] += p * v[t * hd + i];
    }
}

/* Threads split the query heads; each runs its heads for every token (causal: token i sees pos + i + 1 keys), so a
 * head's row of scratch belongs to one thread. */
static void attention_heads(void *ctx, int ith, int nth)
{
    const struct attention_job *j = ctx;
    int64_t h0, h1;
    rs_slice(j->n_head, 1, ith, nth, &h0, &h1);
    const int64_t hd = j->hd, stride = j->n_head * hd;
    for (int64_t h = h0; h < h1; h++) {
        const int64_t g = h / j->n_rep;
        const float *k = j->k + g * j->n_ctx * hd, *v = j->v + g * j->n_ctx * hd;
        for (int64_t i = 0; i < j->n_tok; i++)
            attend(j->q + i * stride + h * hd, k, v, j->pos + i + 1, hd, j->scale, j->scratch + h * j->s_stride,
                   j->out + i * stride + h * hd);
    }
}

void rs_attention_tokens(rs_pool *pool, const float *q, const float *k_cache, const float *v_cache, int64_t n_tok,
                         int64_t n_head, int64_t n_head_kv, int64_t head_dim, int64_t n_ctx, int64_t pos,
                         float scale, float *out, float *scratch, int64_t scratch_stride)
{
    struct attention_job job = {q, k_cache, v_cache, n_tok, n_head, n_head / n_head_kv, head_dim, n_ctx, pos,
                                scratch_stride, scale, out, scratch};
    rs_pool_run(pool, attention_heads, &job);
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
    rs_attention_tokens(pool, q, k_cache, v_cache, 1, n_head, n_head_kv, head_dim, n_ctx, n_pos - 1, scale, out,
                        scratch, n_pos);
    return RS_OK;
}
