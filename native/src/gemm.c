/* gemm.c -- prefill: y (n_tok, n_out) = x (n_tok, n_in) W^T for two or more tokens, a panel of weights at a time,
 * from either layout a model holds:
 *   rows out (the base GGUF's): w is (n_out, n_in), quantization blocks along the input channels;
 *   rows in  (the companion's rsparse_weight): w is (n_in, n_out), blocks along the outputs.
 *
 * Two forms. F32, F16 and Q8_0 run as a float GEMM: panels dequantized (exact floats), a float register tile per
 * path (AVX2: 6 tokens x 16 outputs, about 75% of the FMA peak), the activations as they are; both layouts become
 * the same panels. Q4_0 runs as an integer GEMM, as llama.cpp runs it: the activations rounded to int8 per block of
 * 32 once per call (rs_quantize_act, decode's rounding), the weights packed as bytes, and a register tile of byte
 * dot products (vpmaddubsw, vpdpbusd, sdot), each block's sum exact in integers and then scaled into a float chain
 * (kernels.h: igemm). From the base's layout the bytes are Q4_0's own nibbles; from the companion's, whose scales
 * run along the outputs, each output's block of 32 inputs is requantized to 7 bits on one scale (ipack_wt, igemm7).
 * On AVX2 the integer tile multiplies 32 byte pairs per instruction against the float tile's 8 FMAs: 256 tokens
 * through a 2048 x 2048 Q4_0 layer ran at 127-131 GFLOP/s on one thread against 73 for the float tile
 * (docs/SPEED.md). Q8_0 stays float: its bytes times int8 activations overflow vpmaddubsw's int16 pairs, and the
 * float tile already beats llama.cpp's Q8_0 prefill here.
 *
 * Blocking: each thread takes a contiguous slice of the outputs. For every NC outputs and KC input channels it
 * packs the weights once into a panel (floats: NC x KC, 128 KiB, in L2; bytes: a quarter of that) laid out as
 * strips of the tile's width, then runs every tile of tokens against each strip (in L1). The tokens' rows are read
 * in place. Each output's sum runs over the input channels (or their blocks) in order, carried through y between
 * panels: every thread count, path and tile position gives the same bits. */
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
_Static_assert(RS_GEMM_SCRATCH_FLOATS >= KC * NC + (KC > NC ? KC : NC) && KC * NC % 64 == 0,
               "scratch for the float panel and its row buffer, or the integer panel after the requantized floats");

struct gemm_job {
    const rs_kernels *k;
    int type, rows_in;
    int integer;             /* Q4_0: an integer tile on x rounded to int8 (xq), not the float one */
    const uint8_t *w;
    int64_t rb;              /* bytes per stored row */
    int64_t n_out, n_in, n_tok;
    const float *x;          /* token t's activations: x + t * ldx */
    rs_act xq;               /* integer: token t's at xq.q + t * n_in, its block scales and sums at t * (n_in / 32) */
    float *y;                /* token t's outputs: y + t * ldy */
    int64_t ldx, ldy;
    float *arena;            /* per thread: RS_GEMM_SCRATCH_FLOATS, a panel (NC x KC) and a row buffer */
};

/* Elements [e0, e0 + n) of a stored row as floats; e0 is a multiple of the type's block. */
static void dequant(const struct gemm_job *j, const uint8_t *row, int64_t e0, int64_t n, float *out)
{
    j->k->dequant(j->type, row + (e0 > 0 ? rs_row_bytes(j->type, e0) : 0), out, n);
}

/* A hint to bring the panel of outputs [o0, o0 + nc) x input channels [k0, k0 + kc) into L2 while the one before
 * it is multiplied. Its rows are short pieces of long stored rows (the companion's: 72 bytes of Q4_0 every 1152
 * for 2048 outputs), which the hardware prefetcher did not fetch ahead: packing waited on each row in turn (perf,
 * 256 tokens through 2048 x 2048 Q4_0 from the companion's layout, one thread: dequantizing took 12% of the
 * samples, 7% with the hints). */
static void prefetch_panel(const struct gemm_job *j, int64_t o0, int64_t nc, int64_t k0, int64_t kc)
{
    const int64_t rows = j->rows_in ? kc : nc, first = j->rows_in ? k0 : o0, e0 = j->rows_in ? o0 : k0;
    const int64_t from = e0 > 0 ? rs_row_bytes(j->type, e0) : 0, len = rs_row_bytes(j->type, j->rows_in ? nc : kc);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *p = j->w + (first + r) * j->rb + from;
        for (int64_t b = 0; b < len; b += 64)
            __builtin_prefetch(p + b, 0, 2);
        __builtin_prefetch(p + len - 1, 0, 2);
    }
}

/* The next panel after (o0, k0) in run's and irun's order, if any: prefetched. */
static void prefetch_next(const struct gemm_job *j, int64_t o0, int64_t o_end, int64_t k0)
{
    const int64_t k_next = j->n_in - k0 - KC, o_next = o_end - o0 - NC;  /* what is left after this panel */
    if (k_next > 0)
        prefetch_panel(j, o0, o_end - o0 < NC ? o_end - o0 : NC, k0 + KC, k_next < KC ? k_next : KC);
    else if (o_next > 0)
        prefetch_panel(j, o0 + NC, o_next < NC ? o_next : NC, 0, j->n_in < KC ? j->n_in : KC);
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
            if (rs_type_tiled(j->type))  /* Q8_0 in tiles of 16 rows: the row's blocks copied out */
                rs_dequant_tiled(j->type, j->w, j->n_in, o0 + o, k0, kc, buf);
            else
                dequant(j, j->w + (o0 + o) * j->rb, k0, kc, buf);
            float *col = p + (o / nr) * kc * nr + o % nr;
            for (int64_t k = 0; k < kc; k++)
                col[k * nr] = buf[k];
        }
    }
}

/* A partial tile (m tokens, n outputs, fewer than the tile's) goes through a full one, part (nr wide): c's values
 * in first where the chain goes on from an earlier panel, the tile's out after. */
static void part_in(float *part, int nr, const float *c, int64_t ldc, int m, int64_t n, int load)
{
    if (load)
        for (int i = 0; i < m; i++)
            memcpy(part + i * nr, c + i * ldc, (size_t)n * sizeof *part);
}

static void part_out(float *c, int64_t ldc, const float *part, int nr, int m, int64_t n)
{
    for (int i = 0; i < m; i++)
        memcpy(c + i * ldc, part + i * nr, (size_t)n * sizeof *part);
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
        float part[RS_GEMM_MR_MAX * RS_GEMM_NR_MAX];
        part_in(part, nr, c, j->ldy, m, n, load);
        k->gemm(a, b, kc, part, nr, load);
        part_out(c, j->ldy, part, nr, m, n);
    }
}

/* ---- the integer form: Q4_0 ---------------------------------------------------------------------------------- */
/* The integer tiles' panel of outputs [o0, o0 + nc) x input channels [k0, k0 + kc): strip s (nr outputs) holds,
 * for each block of 32 inputs, its weight bytes in kernels.h's order at p + s * (kc / 32) * 8 * nr * 4 and its
 * scales at pd + s * (kc / 32) * nr.
 * Rows out (the base's, or its tiles of 16 rows): the nibbles as they are, with the blocks' own scales (igemm);
 * outputs past nc get zero weights and scales. */
static void ipack(const struct gemm_job *j, int64_t o0, int64_t nc, int64_t k0, int64_t kc, uint8_t *p, float *pd)
{
    const int64_t nr = j->k->igemm_nr, nbk = kc / RS_QK, strips = (nc + nr - 1) / nr;
    for (int64_t s = 0; s < strips; s++)
        for (int64_t c = 0; c < nr; c++) {
            uint8_t *q = p + s * nbk * 8 * nr * 4 + c * 4;
            float *d = pd + s * nbk * nr + c;
            const int64_t o = s * nr + c, row = o0 + o, nb = j->n_in / RS_QK;
            const block_q4_0 *b = o < nc ? (const block_q4_0 *)(j->w + row * j->rb) + k0 / RS_QK : NULL;
            const block_q4_0_r16 *t = o < nc ? (const block_q4_0_r16 *)j->w + row / RS_R16 * nb + k0 / RS_QK : NULL;
            for (int64_t k = 0; k < nbk; k++, q += 8 * nr * 4) {
                block_q4_0 tb;
                const block_q4_0 *bk = b ? &b[k] : NULL;
                if (bk && j->type == RS_TYPE_Q4_0_R16) {  /* tiles of 16 rows: the row's block copied out */
                    rs_r16_block(&t[k], (int)(row % RS_R16), &tb);
                    bk = &tb;
                }
                d[k * nr] = bk ? rs_fp16_to_fp32(bk->d) : 0.0f;
                for (int g = 0; g < 4; g++) {  /* bytes 4g.. hold elements 4g.. (low nibbles), 16 + 4g.. (high) */
                    uint32_t v = 0;
                    if (bk)
                        memcpy(&v, bk->qs + 4 * g, sizeof v);
                    const uint32_t lo = v & 0x0F0F0F0Fu, hi = (v >> 4) & 0x0F0F0F0Fu;
                    memcpy(q + g * nr * 4, &lo, sizeof lo);
                    memcpy(q + (4 + g) * nr * 4, &hi, sizeof hi);
                }
            }
        }
}

/* Rows in (the companion's): its blocks run along the outputs, one scale per input channel and 32 outputs, so a
 * block of 32 inputs of one output has 32 scales, and an integer sum over the inputs cannot carry them. The panel
 * is dequantized (exact floats, in fv: kc rows of NC) and each output's 32 inputs requantized to 7 bits on one
 * scale (igemm7; the path's requant): an added error of at most 1/126 of that block's largest weight, under a
 * tenth of Q4_0's own (1/16 of its block's largest). nc is a multiple of 32 (the thread slices and the companion's
 * rows are), so of nr. */
static void ipack_wt(const struct gemm_job *j, int64_t o0, int64_t nc, int64_t k0, int64_t kc, uint8_t *p,
                     float *pd, float *fv)
{
    const int64_t nr = j->k->igemm_nr, nbk = kc / RS_QK;
    for (int64_t k = 0; k < kc; k++)
        dequant(j, j->w + (k0 + k) * j->rb, o0, nc, fv + k * NC);
    for (int64_t s = 0; s * nr < nc; s++)
        j->k->requant(fv + s * nr, NC, nbk, p + s * nbk * 8 * nr * 4, pd + s * nbk * nr);
}

/* Tokens [0, n_tok) x one strip's outputs [o, o + n), n <= nr, the blocks of [k0, k0 + kc). */
static void istrip(const struct gemm_job *j, const uint8_t *b, const float *bd, int64_t o, int64_t n, int64_t k0,
                   int64_t kc)
{
    const rs_kernels *k = j->k;
    const rs_igemm_fn tile = j->rows_in ? k->igemm7 : k->igemm;
    const int32_t off = j->rows_in ? 64 : 8;
    const int mr = k->igemm_mr, nr = k->igemm_nr, load = k0 > 0;
    const int64_t nb = j->n_in / RS_QK, kb = k0 / RS_QK;
    for (int64_t t0 = 0; t0 < j->n_tok; t0 += mr) {
        const int m = j->n_tok - t0 < mr ? (int)(j->n_tok - t0) : mr;
        const int8_t *a[RS_GEMM_MR_MAX];
        const float *ad[RS_GEMM_MR_MAX];
        const int32_t *as[RS_GEMM_MR_MAX];
        for (int i = 0; i < mr; i++) {  /* rows past the last token repeat it; their results are dropped */
            const int64_t t = t0 + (i < m ? i : m - 1);
            a[i] = j->xq.q + t * j->n_in + k0;
            ad[i] = j->xq.d + t * nb + kb;
            as[i] = j->xq.s + t * nb + kb;
        }
        float *c = j->y + t0 * j->ldy + o;
        if (m == mr && n == nr) {
            tile(a, ad, as, b, bd, kc / RS_QK, off, c, j->ldy, load);
            continue;
        }
        float part[RS_GEMM_MR_MAX * RS_GEMM_NR_MAX];
        part_in(part, nr, c, j->ldy, m, n, load);
        tile(a, ad, as, b, bd, kc / RS_QK, off, part, nr, load);
        part_out(c, j->ldy, part, nr, m, n);
    }
}

/* Slice ith of the tokens rounded to int8 blocks, for the integer tile. */
static void quantize_slice(void *ctx, int ith, int nth)
{
    const struct gemm_job *j = ctx;
    int64_t t0, t1;
    rs_slice(j->n_tok, 1, ith, nth, &t0, &t1);
    const int64_t nb = j->n_in / RS_QK;
    for (int64_t t = t0; t < t1; t++)
        rs_quantize_act(j->x + t * j->ldx, j->n_in, (int8_t *)j->xq.q + t * j->n_in, (float *)j->xq.d + t * nb,
                        (int32_t *)j->xq.s + t * nb);
}

/* ---- the panel loop ------------------------------------------------------------------------------------------- */
/* Outputs [o_begin, o_end) of every token, on this thread. scratch holds, for the float form, the panel and then a
 * row buffer; for the integer form, the requantized floats (the companion's layout only), the panel's bytes and
 * then its scales. */
static void run(const struct gemm_job *j, int64_t o_begin, int64_t o_end, float *scratch)
{
    float *buf = scratch + NC * KC, *pd = scratch + NC * KC + NC * KC / 4;
    uint8_t *bytes = (uint8_t *)(scratch + NC * KC);
    const int64_t nr = j->integer ? j->k->igemm_nr : j->k->gemm_nr;
    for (int64_t o0 = o_begin; o0 < o_end; o0 += NC) {
        const int64_t nc = o_end - o0 < NC ? o_end - o0 : NC;
        for (int64_t k0 = 0; k0 < j->n_in; k0 += KC) {
            const int64_t kc = j->n_in - k0 < KC ? j->n_in - k0 : KC, nbk = kc / RS_QK;
            if (!j->integer)
                pack(j, o0, nc, k0, kc, scratch, buf);
            else if (j->rows_in)
                ipack_wt(j, o0, nc, k0, kc, bytes, pd, scratch);
            else
                ipack(j, o0, nc, k0, kc, bytes, pd);
            prefetch_next(j, o0, o_end, k0);
            for (int64_t s = 0; s * nr < nc; s++) {
                const int64_t o = o0 + s * nr, n = nc - s * nr < nr ? nc - s * nr : nr;
                if (j->integer)
                    istrip(j, bytes + s * nbk * 8 * nr * 4, pd + s * nbk * nr, o, n, k0, kc);
                else
                    strip(j, scratch + s * kc * nr, o, n, k0, kc);
            }
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
    /* Q4_0 takes the integer tiles where the inputs come in whole blocks of 32 for rs_quantize_act: always in the
     * base's layout (its rows are blocks of inputs), in the companion's wherever n_in allows (every model's). */
    const int integer = (type == RS_TYPE_Q4_0 || type == RS_TYPE_Q4_0_R16) && n_in % RS_QK == 0;
    /* The integer form's activations follow the threads' scratch: int8 rows, then block scales and sums (n_in is a
     * multiple of 32 for Q4_0), each part 64-byte aligned. */
    const size_t scratch = (size_t)nth * RS_GEMM_SCRATCH_FLOATS * sizeof(float);
    const size_t q_bytes = integer ? ((size_t)(n_tok * n_in) + 63) / 64 * 64 : 0;
    const size_t nbt = integer ? (size_t)(n_tok * (n_in / RS_QK)) : 0, d_bytes = (nbt * sizeof(float) + 63) / 64 * 64;
    char *arena = rs_pool_arena_acquire(pool, scratch + q_bytes + d_bytes + nbt * sizeof(int32_t));
    if (!arena)
        return RS_ERR_NOMEM;
    struct gemm_job job = {.k = k, .type = type, .rows_in = rows_in, .integer = integer, .w = w, .rb = rb,
                           .n_out = n_out, .n_in = n_in, .n_tok = n_tok, .x = x, .y = y, .ldx = n_in, .ldy = n_out,
                           .arena = (float *)arena};
    if (integer) {
        job.xq = (rs_act){.q = (int8_t *)(arena + scratch), .d = (float *)(arena + scratch + q_bytes),
                          .s = (int32_t *)(arena + scratch + q_bytes + d_bytes)};
        rs_pool_run(pool, quantize_slice, &job);
    }
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
