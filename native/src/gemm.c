/* gemm.c -- prefill: y (n_tok, n_out) = x (n_tok, n_in) W^T for two or more tokens, as a float GEMM over weights
 * dequantized a panel at a time, from either layout a model holds:
 *   rows out (the base GGUF's): w is (n_out, n_in), quantization blocks along the input channels;
 *   rows in  (the companion's rsparse_weight): w is (n_in, n_out), blocks along the outputs.
 * Only the packing differs: both become the same panels, so one register tile per SIMD path serves both.
 *
 * Why floats: dequantized Q8_0 and Q4_0 weights are exact in float (an int8 times a binary16 scale), and the
 * companion's layout has its scales along the outputs, so integer dot products over the input channels (the
 * decode kernels' int8 activations) do not apply to it. A float tile of 6 tokens x 16 outputs (AVX2) runs at about
 * 75% of the FMA peak: on an AVX2 CPU that beats llama.cpp's int8 prefill of Q8_0 and falls short of its repacked
 * Q4_0 one (0.76-0.96x, docs/SPEED.md), where an integer tile is the next step. The activations are not rounded, so
 * prefill is closer to the float64 reference than decode.
 *
 * Blocking: each thread takes a contiguous slice of the outputs. For every NC outputs and KC input channels it
 * dequantizes the weights once into a panel (NC x KC floats, 128 KiB: in L2) laid out as NC / NR strips of KC x NR,
 * then runs every tile of MR tokens against each strip (KC x NR floats, 16 KiB on AVX2: in L1). The tokens' rows are
 * read in place (a tile's MR x KC floats stay in L1 across the strips). Each output's sum runs over the input
 * channels in order, one FMA each, carried through y between panels: every thread count, path and tile position
 * gives the same bits. */
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "gemm.h"
#include "pool.h"
#include "quant.h"

#define KC RS_GEMM_KC
#define NC RS_GEMM_NC

_Static_assert(KC % RS_QK == 0 && NC % RS_QK == 0 && NC % RS_GEMM_NR_MAX == 0 && RS_GEMM_SCRATCH_FLOATS % 16 == 0,
               "panel sizes must nest");

struct gemm_job {
    const rs_kernels *k;
    int type, rows_in;
    const uint8_t *w;
    int64_t rb;              /* bytes per stored row */
    int64_t n_out, n_in, n_tok;
    const float *x;          /* token t's activations: x + t * ldx */
    float *y;                /* token t's outputs: y + t * ldy */
    int64_t ldx, ldy;
    float *arena;            /* per thread: RS_GEMM_SCRATCH_FLOATS, a panel (NC x KC) and a row buffer */
};

/* Elements [e0, e0 + n) of a stored row as floats; e0 is a multiple of the type's block. */
static void dequant(const struct gemm_job *j, const uint8_t *row, int64_t e0, int64_t n, float *out)
{
    j->k->dequant(j->type, row + (e0 > 0 ? rs_row_bytes(j->type, e0) : 0), out, n);
}

/* The panel of outputs [o0, o0 + nc) x input channels [k0, k0 + kc): strip s holds outputs o0 + s * nr .. as
 * p[(s * kc + k) * nr + j]; outputs past nc (the last strip of the matrix) are zero. */
static void pack(const struct gemm_job *j, int64_t o0, int64_t nc, int64_t k0, int64_t kc, float *p, float *buf)
{
    const int64_t nr = j->k->gemm_nr, strips = (nc + nr - 1) / nr;
    if (nc % nr)
        memset(p + (strips - 1) * kc * nr, 0, (size_t)(kc * nr) * sizeof *p);
    if (j->rows_in) {  /* a stored row is one input channel: its outputs, split over the strips */
        for (int64_t k = 0; k < kc; k++) {
            dequant(j, j->w + (k0 + k) * j->rb, o0, nc, buf);
            for (int64_t s = 0; s < strips; s++) {
                const int64_t n = nc - s * nr < nr ? nc - s * nr : nr;
                memcpy(p + (s * kc + k) * nr, buf + s * nr, (size_t)n * sizeof *p);
            }
        }
    } else {  /* a stored row is one output: its input channels go down one column of its strip */
        for (int64_t o = 0; o < nc; o++) {
            dequant(j, j->w + (o0 + o) * j->rb, k0, kc, buf);
            float *col = p + (o / nr) * kc * nr + o % nr;
            for (int64_t k = 0; k < kc; k++)
                col[k * nr] = buf[k];
        }
    }
}

/* Tokens [0, n_tok) x one strip's outputs [o, o + n), n <= nr, input channels [k0, k0 + kc). */
static void strip(const struct gemm_job *j, const float *b, int64_t o, int64_t n, int64_t k0, int64_t kc)
{
    const rs_kernels *k = j->k;
    const int mr = k->gemm_mr, nr = k->gemm_nr, load = k0 > 0;
    for (int64_t t0 = 0; t0 < j->n_tok; t0 += mr) {
        const int m = j->n_tok - t0 < mr ? (int)(j->n_tok - t0) : mr;
        const float *a[RS_GEMM_MR_MAX];
        for (int i = 0; i < mr; i++)  /* rows past the last token repeat it; their results are dropped */
            a[i] = j->x + (t0 + (i < m ? i : m - 1)) * j->ldx + k0;
        float *c = j->y + t0 * j->ldy + o;
        if (m == mr && n == nr) {
            k->gemm(a, b, kc, c, j->ldy, load);
            continue;
        }
        float tile[RS_GEMM_MR_MAX * RS_GEMM_NR_MAX];  /* a partial tile goes through a full one */
        if (load)
            for (int i = 0; i < m; i++)
                memcpy(tile + i * nr, c + i * j->ldy, (size_t)n * sizeof *tile);
        k->gemm(a, b, kc, tile, nr, load);
        for (int i = 0; i < m; i++)
            memcpy(c + i * j->ldy, tile + i * nr, (size_t)n * sizeof *tile);
    }
}

/* Outputs [o_begin, o_end) of every token, on this thread, with panel scratch. */
static void run(const struct gemm_job *j, int64_t o_begin, int64_t o_end, float *panel)
{
    float *buf = panel + NC * KC;
    const int64_t nr = j->k->gemm_nr;
    for (int64_t o0 = o_begin; o0 < o_end; o0 += NC) {
        const int64_t nc = o_end - o0 < NC ? o_end - o0 : NC;
        for (int64_t k0 = 0; k0 < j->n_in; k0 += KC) {
            const int64_t kc = j->n_in - k0 < KC ? j->n_in - k0 : KC;
            pack(j, o0, nc, k0, kc, panel, buf);
            for (int64_t s = 0; s * nr < nc; s++)
                strip(j, panel + s * kc * nr, o0 + s * nr, nc - s * nr < nr ? nc - s * nr : nr, k0, kc);
        }
    }
}

static void gemm_slice(void *ctx, int ith, int nth)
{
    const struct gemm_job *j = ctx;
    int64_t o_begin, o_end;
    rs_slice(j->n_out, RS_QK, ith, nth, &o_begin, &o_end);  /* whole blocks of the companion's rows */
    run(j, o_begin, o_end, j->arena + (int64_t)ith * RS_GEMM_SCRATCH_FLOATS);
}

int rs_gemm(rs_pool *pool, const rs_kernels *k, int type, const void *w, int64_t rb, int rows_in, int64_t n_out,
            int64_t n_in, const float *x, int64_t n_tok, float *y)
{
    const int nth = rs_pool_n_threads(pool);
    float *arena = rs_pool_arena_acquire(pool, (size_t)nth * RS_GEMM_SCRATCH_FLOATS * sizeof(float));
    if (!arena)
        return RS_ERR_NOMEM;
    struct gemm_job job = {.k = k, .type = type, .rows_in = rows_in, .w = w, .rb = rb, .n_out = n_out,
                           .n_in = n_in, .n_tok = n_tok, .x = x, .y = y, .ldx = n_in, .ldy = n_out, .arena = arena};
    rs_pool_run(pool, gemm_slice, &job);
    rs_pool_arena_release(pool);
    return RS_OK;
}

void rs_gemm_serial(const rs_kernels *k, int type, const void *w, int64_t rb, int rows_in, int64_t n_out,
                    int64_t n_in, const float *x, int64_t ldx, int64_t n_tok, float *y, int64_t ldy, float *scratch)
{
    const struct gemm_job job = {.k = k, .type = type, .rows_in = rows_in, .w = w, .rb = rb, .n_out = n_out,
                                 .n_in = n_in, .n_tok = n_tok, .x = x, .y = y, .ldx = ldx, .ldy = ldy};
    run(&job, 0, n_out, scratch);
}
