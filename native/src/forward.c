/* forward.c -- rs_forward: the whole Llama forward pass for a decode step or a prompt chunk, in one native call.
 *
 * Why here and not in numpy: a decode step of SmolLM2-135M is 30 blocks of ~20 small operations on vectors of 576
 * to 1536 floats. As numpy calls they cost more than the weights they read: cProfile put 38% of a sparse Q4_0 step
 * in Python (RoPE 10%, RMSNorm 7%, attention wrapper 7%, loop 6%, SwiGLU 2.5%). Here each of those is a loop of a
 * few microseconds on the calling thread, and only the products (rs_matmul, rs_sparse_matvec) and attention wake
 * the pool. The loop over tokens, sampling and streaming stay in Python.
 *
 * The function reads top to bottom as the math of rsparse.h's rs_forward; every buffer is the caller's (rs_state),
 * so a step allocates nothing. */
#include <math.h>
#include <stdint.h>

#include "attention.h"
#include "check.h"
#include "pool.h"
#include "sparse.h"

/* out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * w, for n rows of d values (sum of squares in double: d up to 16K);
 * out may be x. */
static void rmsnorm(float *out, const float *x, const float *w, int64_t n, int64_t d, float eps)
{
    for (int64_t t = 0; t < n; t++) {
        const float *xt = x + t * d;
        float *ot = out + t * d;
        double ss = 0.0;
        for (int64_t i = 0; i < d; i++)
            ss += (double)xt[i] * xt[i];
        const float r = (float)(1.0 / sqrt(ss / (double)d + (double)eps));
        for (int64_t i = 0; i < d; i++)
            ot[i] = xt[i] * r * w[i];
    }
}

/* Rotates pairs of each of n_heads heads of token t by its position's angles, i < rope_dim / 2: (2i, 2i + 1) of
 * llama.cpp's permuted rows, or (i, i + rope_dim / 2) of HF's (neox: Qwen's files keep HF's row order). */
static void rope(float *v, int64_t n, int64_t n_heads, int64_t head_dim, int64_t rope_dim, const float *cos_t,
                 const float *sin_t, int64_t pos, int neox)
{
    const int64_t half = rope_dim / 2, step = neox ? 1 : 2, other = neox ? half : 1;
    for (int64_t t = 0; t < n; t++) {
        const float *c = cos_t + (pos + t) * half, *s = sin_t + (pos + t) * half;
        for (int64_t h = 0; h < n_heads; h++) {
            float *p = v + (t * n_heads + h) * head_dim;
            for (int64_t i = 0; i < half; i++) {
                float *a = p + step * i, *b = a + other;
                const float x0 = *a, x1 = *b;
                *a = x0 * c[i] - x1 * s[i];
                *b = x0 * s[i] + x1 * c[i];
            }
        }
    }
}

/* y (n, n_out) += bias, per token; nothing without one. */
static void add_bias(float *y, const float *bias, int64_t n, int64_t n_out)
{
    for (int64_t t = 0; bias && t < n; t++)
        for (int64_t o = 0; o < n_out; o++)
            y[t * n_out + o] += bias[o];
}

/* k, v of n tokens (n, n_head_kv * head_dim) into the caches (n_head_kv, n_ctx, head_dim) at pos. */
static void cache_kv(const rs_model *m, const rs_block *b, const float *k, const float *v, int64_t n, int64_t pos)
{
    const int64_t hd = m->head_dim, kv = m->n_head_kv * hd;
    for (int64_t t = 0; t < n; t++)
        for (int64_t g = 0; g < m->n_head_kv; g++)
            for (int64_t i = 0; i < hd; i++) {
                b->k_cache[(g * m->n_ctx + pos + t) * hd + i] = k[t * kv + g * hd + i];
                b->v_cache[(g * m->n_ctx + pos + t) * hd + i] = v[t * kv + g * hd + i];
            }
}

/* gate <- silu(gate) * up = gate * up / (1 + exp(-gate)); exp overflows to inf for gate < -88, giving -0 exactly. */
static void swiglu(float *gate, const float *up, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        gate[i] = gate[i] * up[i] / (1.0f + expf(-gate[i]));
}

static void add(float *x, const float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] += y[i];
}

/* Linears run as one group at most: q, k and v. */
#define RS_FORWARD_GROUP 3

/* ys[i] (n, n_out) = linears first[0 .. count) of x (n, n_in), which they all read. With an R-Sparse form (a
 * companion), every product reads the companion's copy, so the base's block weights are never paged in: the
 * rank-aware kernel for a sparse token, the same kernel keeping every channel for a dense one (as one group,
 * sharing the pool's wake-ups; each linear takes a third of the scratch), the GEMM over its layout for a prompt.
 * Without one, the base's: decode's matrix-vector product, or the GEMM. */
static int linears(rs_pool *pool, const rs_linear *first, int count, const rs_state *s, int sparse, const float *x,
                   int64_t n, float *const *ys, int64_t *n_kept)
{
    int all_wt = 1;
    for (int i = 0; i < count; i++)
        all_wt &= first[i].wt != NULL;
    if (n > 1 || !all_wt) {
        for (int i = 0; i < count; i++) {
            const rs_linear *l = &first[i];
            const int st = l->wt ? rs_matmul_wt(pool, l->wtype, l->wt, l->n_out, l->n_in, x, n, ys[i])
                                 : rs_matmul(pool, l->type, l->w, l->n_out, l->n_in, x, n, ys[i]);
            if (st != RS_OK)
                return st;
            add_bias(ys[i], l->bias, n, l->n_out);
        }
        return RS_OK;
    }
    const int64_t part = s->scratch_bytes / RS_FORWARD_GROUP / 64 * 64;
    rs_sparse_args a[RS_FORWARD_GROUP] = {{0}};  /* count <= RS_FORWARD_GROUP of them are set below */
    for (int i = 0; i < count; i++) {
        const rs_linear *l = &first[i];
        a[i] = (rs_sparse_args){l->wtype, l->wt, l->n_out, l->n_in, l->colnorm, l->tau, l->ftype, l->u, l->vs,
                                l->rank, x, ys[i], n_kept ? n_kept + i : NULL, (char *)s->scratch + i * part, part};
        if (!sparse) {  /* a dense token: every channel kept (tau < 0), no low-rank term, nothing counted */
            a[i].tau = -1.0f;
            a[i].rank = 0;
            a[i].n_kept = NULL;
        }
    }
    const int st = rs_sparse_group(pool, a, count);
    for (int i = 0; st == RS_OK && i < count; i++)  /* after the sparse product: R-Sparse approximates W x alone */
        add_bias(ys[i], first[i].bias, 1, first[i].n_out);
    return st;
}

/* Does the linear have the shape (n_out, n_in), and the form the call needs? */
static int linear_ok(const rs_linear *l, int64_t n_out, int64_t n_in, int sparse)
{
    return l->n_out == n_out && l->n_in == n_in && (!sparse || l->wt);
}

static int check(const rs_model *m, const rs_state *s, const int64_t *tokens, int64_t n, int64_t pos, int sparse)
{
    if (!m->blocks || !m->output_norm || !m->rope_cos || !m->rope_sin || !s->x || !s->xb || !s->q || !s->k ||
        !s->v || !s->attn || !s->hb || !s->hb2 || !s->att || !s->logits)
        return RS_ERR_NULL;
    if (m->n_layer <= 0 || m->n_embd <= 0 || m->n_ff <= 0 || m->n_head <= 0 || m->n_head_kv <= 0 ||
        m->n_head % m->n_head_kv || m->head_dim <= 0 || m->head_dim % 2 || m->rope_dim < 0 || m->rope_dim % 2 ||
        m->rope_dim > m->head_dim || m->n_vocab <= 0 || m->n_ctx <= 0 || !rs_fits(m->n_head, m->head_dim) ||
        !rs_fits(m->n_head_kv * m->n_ctx, m->head_dim * (int64_t)sizeof(float)) ||
        !rs_fits(m->n_head, m->n_ctx * (int64_t)sizeof(float)) || !(m->rms_eps >= 0.0f))
        return RS_ERR_SHAPE;
    if (n < 1 || n > s->n_batch || pos < 0 || pos > m->n_ctx - n || (sparse && n != 1))
        return RS_ERR_SHAPE;
    const int64_t e = m->n_embd, qd = m->n_head * m->head_dim, kv = m->n_head_kv * m->head_dim, ff = m->n_ff;
    const int64_t shape[RS_N_LINEARS][2] = {{qd, e}, {kv, e}, {kv, e}, {e, qd}, {ff, e}, {ff, e}, {e, ff}};
    for (int64_t l = 0; l < m->n_layer; l++) {
        const rs_block *b = &m->blocks[l];
        if (!b->attn_norm || !b->ffn_norm || !b->k_cache || !b->v_cache)
            return RS_ERR_NULL;
        for (int i = 0; i < RS_N_LINEARS; i++)
            if (!linear_ok(&b->lin[i], shape[i][0], shape[i][1], sparse))
                return RS_ERR_SHAPE;
    }
    if (!linear_ok(&m->token_embd, m->n_vocab, e, 0) || !linear_ok(&m->output, m->n_vocab, e, 0))
        return RS_ERR_SHAPE;
    if (!tokens)
        return RS_ERR_NULL;
    for (int64_t t = 0; t < n; t++)  /* all ids first: a bad call writes nothing */
        if (tokens[t] < 0 || tokens[t] >= m->n_vocab)
            return RS_ERR_INDEX;
    return RS_OK;
}

#define TRY(call)                 \
    do {                          \
        const int st_ = (call);   \
        if (st_ != RS_OK)         \
            return st_;           \
    } while (0)

int rs_forward(rs_pool *pool, const rs_model *m, const rs_state *s, const int64_t *tokens, int64_t n, int64_t pos,
               int sparse, int logits_all)
{
    if (!pool || !m || !s)
        return RS_ERR_NULL;
    TRY(check(m, s, tokens, n, pos, sparse));
    const int64_t e = m->n_embd, ff = m->n_ff;
    const float scale = (float)(1.0 / sqrt((double)m->head_dim));

    TRY(rs_get_rows(m->token_embd.type, m->token_embd.w, m->n_vocab, e, tokens, n, s->x));
    for (int64_t l = 0; l < m->n_layer; l++) {
        const rs_block *b = &m->blocks[l];
        const rs_linear *w = b->lin;
        int64_t *kept = s->n_kept ? s->n_kept + l * RS_N_LINEARS : NULL;
#define LINEARS(i, count, x, ...) \
    TRY(linears(pool, &w[i], (count), s, sparse, (x), n, (float *const[]){__VA_ARGS__}, kept ? kept + (i) : NULL))
        /* attention */
        rmsnorm(s->xb, s->x, b->attn_norm, n, e, m->rms_eps);
        LINEARS(RS_ATTN_Q, 3, s->xb, s->q, s->k, s->v);
        if (b->q_norm)  /* every head on its own: n * heads rows of head_dim */
            rmsnorm(s->q, s->q, b->q_norm, n * m->n_head, m->head_dim, m->rms_eps);
        if (b->k_norm)
            rmsnorm(s->k, s->k, b->k_norm, n * m->n_head_kv, m->head_dim, m->rms_eps);
        if (!b->no_rope) {
            rope(s->q, n, m->n_head, m->head_dim, m->rope_dim, m->rope_cos, m->rope_sin, pos, m->rope_neox);
            rope(s->k, n, m->n_head_kv, m->head_dim, m->rope_dim, m->rope_cos, m->rope_sin, pos, m->rope_neox);
        }
        cache_kv(m, b, s->k, s->v, n, pos);
        TRY(rs_attention_tokens(pool, s->q, b->k_cache, b->v_cache, n, m->n_head, m->n_head_kv, m->head_dim,
                                m->n_ctx, pos, scale, s->attn, s->att, m->n_ctx));
        LINEARS(RS_ATTN_OUTPUT, 1, s->attn, s->xb);
        add(s->x, s->xb, n * e);
        /* SwiGLU MLP */
        rmsnorm(s->xb, s->x, b->ffn_norm, n, e, m->rms_eps);
        LINEARS(RS_FFN_GATE, 2, s->xb, s->hb, s->hb2);
        swiglu(s->hb, s->hb2, n * ff);
        LINEARS(RS_FFN_DOWN, 1, s->hb, s->xb);
        add(s->x, s->xb, n * e);
#undef LINEARS
    }
    /* the head: every token's logits, or the last one's (in row 0) */
    const int64_t first = logits_all ? 0 : n - 1, n_out = n - first;
    rmsnorm(s->xb, s->x + first * e, m->output_norm, n_out, e, m->rms_eps);
    return rs_matmul(pool, m->output.type, m->output.w, m->n_vocab, e, s->xb, n_out, s->logits);
}
