/* kernels_simd.h -- the body of every SIMD path, written once against a few vector primitives.
 *
 * Included by kernels_avx2.c, kernels_avx512.c and kernels_neon.c after they define, for their vector type:
 *   VL                      floats per vector (4, 8 or 16: it divides a quantization block of 32)
 *   MR                      rows a dense decode step streams at once
 *   NT                      F32/F16 products of several tokens (attention's heads): MR rows x NT tokens in registers
 *   GEMM_MR, GEMM_NV        the prefill GEMM's register tile: GEMM_MR tokens x GEMM_NV vectors of outputs
 *   vf                      the vector type
 *   vf_zero() vf_load(p) vf_store(p, v) vf_set1(s) vf_fma(a, b, c) (= a * b + c)
 *   vf_hsum(v)              sum of the lanes, in a fixed order
 *   vf_load_f16(p)          VL binary16 -> float (exact)
 *   vf_load_bf16(p)         VL bfloat16 -> float (exact)
 *   vf_load_i8(p)           VL int8 -> float             } only for the generic sparse Q8_0 / Q4_0 kernels: a path
 *   vf_load_q4(p, hi)       VL nibbles of bytes p[0..VL) } with its own (AXPY_Q8_0_FN, AXPY_Q4_0_FN) needs none
 *                           (low ones, or high ones if hi) minus 8 -> float
 *   QB                      quantization blocks per integer step: 1, or 2 where one register holds 64 bytes
 *   vq                      QB blocks' 32 bytes each, in one register (or several)
 *   vq_load_q8(b, n)        the int8 weights of the n <= QB Q8_0 blocks from b (a missing block's bytes are 0)
 *   vq_load_q4(b, n)        the nibbles of n Q4_0 blocks as bytes 0..15, in element order (element i is the low
 *                           nibble of byte i, element i + 16 its high nibble)
 *   xa                      one token's int8 activations for one step, with what the dots need of the block sums
 *   xa_q8(q, s, n)          } from n blocks' activations q and block sums s (rs_quantize_act); missing blocks
 *   xa_q4(q, s, n)          } are 0, and contribute 0 to the dots
 *   vf_dot_q8(w, x)         int8 weights times x: each block's 32 products summed in int32 (exactly the integer
 *                           the scalar kernel sums) over the block's VL / QB lanes, the same lanes for any w and x,
 *                           as floats (exact: every lane is far below 2^24)
 *   vf_dot_q4(n, x)         the same for nibbles n: the block's sum of (n - 8) x
 *   vf_wscale(d0, d1)       the binary16 weight scales of a step's blocks, each in its block's lanes (d1: QB 2)
 *   vf_xscale(xd, n)        the activation scales of n blocks, likewise (a missing block's are 0)
 *   half_to_float(h)        one binary16 -> float (exact), in one instruction where the CPU has one
 *   vf_half_set1(h)         the same in every lane
 *   vf_mul(a, b)            a * b
 *   prefetch(p)             a read hint for the cache line holding p, into L1
 *   IGEMM_MR, IGEMM_NV      the prefill GEMM's integer tile (Q4_0): IGEMM_MR tokens x IGEMM_NV vectors of VL outputs
 *   vw                      four bytes each of VL outputs (lane j: output j's bytes), from vw_load(p); or one
 *                           token's four activation bytes in every lane, from vw_bcast4(p)
 *   vs, vs_zero()           a block's running integer sums, one per output lane
 *   vs_dot(s, w, x)         s plus, per lane, w's four bytes (unsigned, at most 15) times x's (signed); eight of
 *                           these (a block) must not overflow whatever s holds them in
 *   vs_float(s, off)        per lane, the sum minus off, as floats (exact)
 *   vs_dot_wide, vs_float_wide  the same for weight bytes of at most 127 (igemm7)
 *   vw_lo4(w), vw_hi4(w)    the low and the high nibble of every byte of w, as bytes 0..15 (mm_q4_0_r16)
 *   vs_dot_q8(s, w, x)      vs_dot for signed weight bytes (-128..127; mm_q8_0_r16), summed into int32
 *   vs_float_q8(s, xs)      its sums as floats (exact), xs the activations' block sum (for a bias the dot adds)
 *   vf_absmax(m, v) vf_max(a, b) vf_div(a, b)   max(m, |v|), max(a, b), a / b (IEEE, for finite inputs)
 *   vw_store_q7(p, r0, r1, r2, r3)  rounds four vectors to the nearest integer (ties to even), adds 64 and
 *                           stores them as bytes, lane j's four (r0's first) at p + 4 j
 *   VK, vk                  (optional) 32 bytes: a block of llama.cpp's other quantized types (Q4_1 .. Q6_K),
 *   vk_x vk_nib16 vk_nib32  their weights and activations; without them those types come from the next path
 *   vk_bits32 vk_hi vk_sub  that has them (dispatch.c). See "the other quantized types" below and kernels_avx2.c.
 *   vk_dot_u vk_dot_s2 vf_u8 (VL bytes -> floats)
 *   PATH                    the path's name token (avx2, ...): the file defines `const rs_kernels rs_kernels_##PATH`
 *   CPU_OK                  its cpu_ok function, or NULL when every CPU of the architecture runs it
 * Loads never read past the VL elements asked for, so a kernel never touches memory beyond its rows.
 *
 * Dense (standard (n_out, n_in) layout), F32 and F16. Decode (one token) streams MR rows at once, converting in
 * registers: one vector accumulator per row, so the rows are independent FMA chains and share each load of x.
 * Several tokens (attention scores a KV group's query heads in one call; model prompts go through gemm.c instead)
 * run as a small GEMM: MR rows are converted chunk by chunk into an L1 buffer and multiplied with NT tokens at a time
 * from a tile of tokens small enough to stay in cache. Both orders give every (row, token) the same arithmetic --
 * acc = fma(w[e..e+VL), x[e..e+VL), acc) for e = 0, VL, ... in turn, then the leftover elements one by one with
 * fmaf, then hsum(acc) + leftover -- so the tile equals decode bit for bit.
 *
 * Dense Q8_0 and Q4_0 take int8 activations (kernels.h): per step of QB blocks, acc = fma(dot(blocks, x),
 * d_w * d_x, acc), the dot exact in integers. Converting each int8 weight to float and scaling it cost two float
 * operations a weight, which capped decode below memory speed (AVX2: ~25 GB/s a thread from L2); int16 activations
 * took about half the instructions, but Q4_0's nibbles still had to be widened to int16. With int8 activations the
 * bytes go straight into byte dot products (vpmaddubsw, vpdpbusd, sdot): Q4_0's unsigned nibbles multiply the
 * signed activations directly, and the -8 offset costs one integer add per block and row (or none, folded into
 * vpdpbusd's accumulator), from the block sums rs_quantize_act keeps. They serve decode only: prompts run through
 * gemm.c, whose register tiles (gemm, igemm, igemm7) and panel packers (dequant, requant) are also defined here.
 *
 * Sparse (input-channel-major layout). Each kept channel's row slice is scaled by its activation and added to y,
 * GROUP rows per pass over the slice of y (which stays in L1), while later groups' rows are prefetched: the rows
 * are scattered, so the hardware prefetcher cannot guess them. */
#ifndef RS_KERNELS_SIMD_H
#define RS_KERNELS_SIMD_H

#include <math.h>
#include <stdalign.h>
#include <string.h>

#include "kernels.h"
#include "quant.h"
#include "softmax.h"

/* Tuning knobs (each may be overridden with -D for an experiment; bench/bench_kernels.py measures the effect). */
#define KC 512               /* F32/F16 tiles: elements of a row converted at a time (MR x KC floats in L1) */
#define TILE_BYTES (1 << 20) /* F32/F16 tiles: bytes of activations per token tile: fits L2 on most laptops */
#define TMAX 64              /* F32/F16 tiles: most tokens per tile (bounds the accumulator buffer) */
#ifndef GROUP
#define GROUP 8              /* sparse: kept rows added per pass over y (4 and 16: see below) */
#endif
#ifndef AHEAD
#define AHEAD 2              /* sparse: prefetch this many groups ahead */
#endif
#ifndef SPARSE_PF
#define SPARSE_PF prefetch   /* sparse hint target: L1 (L2 hints left Q8_0 at 50% kept 10% slower, see below) */
#endif
/* Sparse tuning, measured on a 2-vCPU Zen 5 VM (Llama-7B shapes, 2 threads, 50% and 30% kept), none beyond the
 * noise unless said: AHEAD 1/2/4; 8 independent FMA chains per step (64 or 128 outputs) instead of
 * the 32-output step; two partial sums per vector; an in-lane byte shuffle for int8 -> float (AVX2). Faster: L1
 * hints instead of L2 ones (prefetcht0 for prefetcht1), for Q8_0 and Q4_0 from memory: at 50% kept, 4096 x 11008
 * Q8_0 0.587 -> 0.516 of the dense time (AVX2; AVX-512 0.567 -> 0.512), 4096 x 4096 0.561 -> 0.495, 30% kept 0.364
 * -> 0.318; F16 unchanged (C harness, 4 alternating runs each, slow-bandwidth phase). Kept rows that are isolated
 * cost the most (every other row kept: 0.61 against 0.51 for runs of 8), so the L2 hints let some prefetcher run
 * on past the ends of kept rows. Slower: hints only at the head of each row (1.2x the time for F16, 1.45x for
 * Q8_0: the hardware prefetcher does not cover short row pieces, the hints must), hints a fixed distance ahead in
 * the rows being read, running on into the next group (1.5x for Q8_0), and a chunk's hints issued all at once
 * (one per cache line) rather than one per row and block, and GROUP 16 (F16 at 50% kept in the fast-bandwidth
 * phase: 0.76 against 0.67 of the dense time). Mixed: GROUP 4 (F16 0.50 against 0.54 of dense at 50%
 * kept in the slow-bandwidth phase, but no better in the fast one, and the AVX-512 float Q8_0 kernel 4-22% slower).
 * Not kept either: L2 hints for a group further on beside the L1 ones (AVX2 Q8_0 0.71 -> 0.79-0.84 of dense in the
 * fast phase: its arithmetic is the limit, and hints are instructions), and each group starting 1 KiB further into
 * its rows than the last (F16 rows of 8 KiB: better on 4 KiB pages, no better on AVX2 and worse on AVX-512 with the
 * huge pages that decode's file mappings get). docs/SPEED.md has the numbers. */
#ifndef PF_DIST
#define PF_DIST 2048         /* dense decode: bytes ahead of each row's read position (Q8_0 out of cache: 17 ->
                              * 40 GB/s on Zen 5 with 2 threads; quantized rows defeat the hardware prefetcher) */
#endif
#ifndef DENSE_PF
#define DENSE_PF prefetch    /* dense decode hint target */
#endif

_Static_assert(RS_QK % VL == 0 && KC % RS_QK == 0 && TMAX % NT == 0, "tile sizes must nest");

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* ---- weights, VL at a time: element e (a multiple of VL) of a row -------------------------------------------- */
static inline vf w_f32(const uint8_t *row, int64_t e) { return vf_load((const float *)row + e); }
static inline vf w_f16(const uint8_t *row, int64_t e) { return vf_load_f16((const uint16_t *)row + e); }
static inline vf w_bf16(const uint8_t *row, int64_t e) { return vf_load_bf16((const uint16_t *)row + e); }

/* Scalar element e of an F32, F16 or BF16 row: the leftover elements past the last whole vector. */
static inline float w_elem(int type, const uint8_t *row, int64_t e)
{
    if (type == RS_TYPE_F32)
        return ((const float *)row)[e];
    const uint16_t h = ((const uint16_t *)row)[e];
    return type == RS_TYPE_F16 ? half_to_float(h) : rs_bf16_to_fp32(h);
}

/* ---- dense decode: MR rows against one token ---------------------------------------------------------------- */
/* acc[i] over every whole vector of row i; ends with the leftover and the sum. `rows` may repeat a row (padding). */
static inline void finish_rows(int type, const uint8_t *const *rows, const vf *acc, const float *x, int64_t nv,
                               int64_t n_in, int n_valid, float *y)
{
    for (int i = 0; i < n_valid; i++) {
        float tail = 0.0f;
        for (int64_t e = nv; e < n_in; e++)
            tail = fmaf(w_elem(type, rows[i], e), x[e], tail);
        y[i] = vf_hsum(acc[i]) + tail;
    }
}

/* Rows r .. r + MR - 1, the missing ones past n_rows replaced by the last row (computed, never stored). */
static inline int pick_rows(const uint8_t *w, int64_t rb, int64_t r, int64_t n_rows, const uint8_t **rows)
{
    for (int i = 0; i < MR; i++)
        rows[i] = w + min64(r + i, n_rows - 1) * rb;
    return (int)min64(MR, n_rows - r);
}

/* The rows of a decode group are streamed together, PF_DIST bytes ahead of where each one is read; near a row's
 * end the hint goes to the same place in the row MR further on, which the next group will read (the MR rows of a
 * group are adjacent, so running off the end of row i would only touch row i + 1, already being read). A hint
 * never faults, even past the matrix. */
static inline void prefetch_ahead(const uint8_t *row, int64_t off, int64_t rb)
{
    off += PF_DIST;
    DENSE_PF(row + (off < rb ? off : off + (MR - 1) * rb));
}

#define DECODE_FLOAT(type, TYPE, ebytes)                                                                           \
    static void decode_##type(const uint8_t *w, int64_t rb, int64_t n_rows, const float *x, int64_t n_in,     \
                              float *y)                                                                      \
    {                                                                                                        \
        const int64_t nv = n_in / VL * VL;                                                                   \
        for (int64_t r = 0; r < n_rows; r += MR) {                                                           \
            const uint8_t *rows[MR];                                                                         \
            const int n_valid = pick_rows(w, rb, r, n_rows, rows);                                           \
            vf acc[MR];                                                                                      \
            for (int i = 0; i < MR; i++)                                                                     \
                acc[i] = vf_zero();                                                                          \
            for (int64_t e = 0; e < nv; e += VL) {                                                           \
                const vf xv = vf_load(x + e);                                                                \
                for (int i = 0; i < MR; i++) {                                                               \
                    if ((e * (ebytes)) % 64 == 0)                                                            \
                        prefetch_ahead(rows[i], e * (ebytes), rb);                                           \
                    acc[i] = vf_fma(w_##type(rows[i], e), xv, acc[i]);                                       \
                }                                                                                            \
            }                                                                                                \
            finish_rows(TYPE, rows, acc, x, nv, n_in, n_valid, y + r);                                       \
        }                                                                                                    \
    }
DECODE_FLOAT(f32, RS_TYPE_F32, 4)
DECODE_FLOAT(f16, RS_TYPE_F16, 2)
DECODE_FLOAT(bf16, RS_TYPE_BF16, 2)

/* One step's products with int8 activations, and its scales d_w * d_x: decode and prefill build both from these
 * same operations, so each (row, token) gets the same bits either way. */
static inline vf dot_q8_0(const block_q8_0 *b, int n, xa x) { return vf_dot_q8(vq_load_q8(b, n), x); }
static inline vf dot_q4_0(const block_q4_0 *b, int n, xa x) { return vf_dot_q4(vq_load_q4(b, n), x); }
/* The weights' scales of the n blocks from b (never reading a block past the n). */
#define WSCALE(b, n) vf_wscale((b)[0].d, (n) > 1 ? (b)[(n) - 1].d : 0)

/* ---- dense, quantized weights: MR rows against one token's int8 activations ----------------------------------- */
/* Blocks k .. k + n - 1 of the MR rows into acc. */
#define STEP_QUANT(type)                                                                                     \
    static inline void step_##type(const uint8_t *const *rows, int64_t rb, const rs_act *x, int64_t k, int n, \
                                   vf *acc)                                                                  \
    {                                                                                                        \
        const xa xv = xa_##type(x->q + k * RS_QK, x->s + k, n);                                              \
        const vf xsc = vf_xscale(x->d + k, n);                                                               \
        for (int i = 0; i < MR; i++) {                                                                       \
            const block_##type *b = (const block_##type *)rows[i] + k;                                       \
            for (int j = 0; j < QB; j++)                                                                     \
                prefetch_ahead(rows[i], (k + j) * (int64_t)sizeof(block_##type), rb);                        \
            acc[i] = vf_fma(dot_##type(b, n, xv), vf_mul(WSCALE(b, n), xsc), acc[i]);                        \
        }                                                                                                    \
    }
#define xa_q8_0 xa_q8  /* the activations' step for each weight type, by the type's name */
#define xa_q4_0 xa_q4
STEP_QUANT(q8_0)
STEP_QUANT(q4_0)

/* x: one token's activations (rs_act, offset to the token). Whole steps of QB blocks, then a short last one. */
#define ROWS_QUANT(type)                                                                                     \
    static inline void rows_##type(const uint8_t *const *rows, int64_t rb, const rs_act *x, int64_t n_in,     \
                                   int n_valid, float *y)                                                    \
    {                                                                                                        \
        const int64_t nb = n_in / RS_QK;                                                                     \
        vf acc[MR];                                                                                          \
        for (int i = 0; i < MR; i++)                                                                         \
            acc[i] = vf_zero();                                                                              \
        int64_t k = 0;                                                                                       \
        for (; k + QB <= nb; k += QB)                                                                        \
            step_##type(rows, rb, x, k, QB, acc);                                                            \
        if (k < nb)                                                                                          \
            step_##type(rows, rb, x, k, (int)(nb - k), acc);                                                 \
        for (int i = 0; i < n_valid; i++)                                                                    \
            y[i] = vf_hsum(acc[i]) + 0.0f;                                                                   \
    }
ROWS_QUANT(q8_0)
ROWS_QUANT(q4_0)

/* ---- dense F32/F16, several tokens: the tiled product --------------------------------------------------- */
/* Elements [k0, k0 + len) of an F16 (BF16) row as floats into out (len a multiple of VL, except at the row's end). */
#define CHUNK_HALF(type, TYPE)                                                                               \
    static void chunk_##type(const uint8_t *row, int64_t k0, int64_t len, float *out)                        \
    {                                                                                                        \
        const int64_t nv = len / VL * VL;                                                                    \
        for (int64_t e = 0; e < nv; e += VL)                                                                 \
            vf_store(out + e, w_##type(row, k0 + e));                                                        \
        for (int64_t e = nv; e < len; e++)                                                                   \
            out[e] = w_elem(TYPE, row, k0 + e);                                                              \
    }
CHUNK_HALF(f16, RS_TYPE_F16)
CHUNK_HALF(bf16, RS_TYPE_BF16)


/* acc[i][j] (+)= w[i][0..nv) . x[j][0..nv) for the MR x NT pairs, in registers; nv a multiple of VL. */
static inline void micro_tile(const float *const *w, const float *const *x, int64_t nv, vf *acc /* (MR, NT) */,
                              int first)
{
    vf a[MR][NT];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NT; j++)
            a[i][j] = first ? vf_zero() : acc[i * NT + j];
    for (int64_t e = 0; e < nv; e += VL) {
        vf wv[MR];
        for (int i = 0; i < MR; i++)
            wv[i] = vf_load(w[i] + e);
        for (int j = 0; j < NT; j++) {
            const vf xv = vf_load(x[j] + e);
            for (int i = 0; i < MR; i++)
                a[i][j] = vf_fma(wv[i], xv, a[i][j]);
        }
    }
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NT; j++)
            acc[i * NT + j] = a[i][j];
}

typedef void (*chunk_fn)(const uint8_t *row, int64_t k0, int64_t len, float *out);

/* chunk == NULL: F32, whose rows are used in place. */
static void prefill(chunk_fn chunk, const uint8_t *w, int64_t rb, int64_t n_rows, const float *x, int64_t n_in,
                    int64_t n_tok, float *y, int64_t ys)
{
    alignas(64) float wbuf[MR][KC];
    alignas(64) vf acc[TMAX / NT][MR * NT];  /* token group, then (row, token) pairs */
    const int64_t nv = n_in / VL * VL;
    int64_t tile = TILE_BYTES / (n_in * (int64_t)sizeof(float));
    tile = tile < NT ? NT : tile > TMAX ? TMAX : tile / NT * NT;

    for (int64_t t0 = 0; t0 < n_tok; t0 += tile) {
        const int64_t nt = min64(tile, n_tok - t0);
        for (int64_t r = 0; r < n_rows; r += MR) {
            const uint8_t *rows[MR];
            const int n_valid = pick_rows(w, rb, r, n_rows, rows);
            const float *wp[MR];
            for (int64_t k0 = 0; k0 < n_in; k0 += KC) {
                const int64_t len = min64(KC, n_in - k0);
                for (int i = 0; i < MR; i++) {
                    if (chunk) {
                        chunk(rows[i], k0, len, wbuf[i]);
                        wp[i] = wbuf[i];
                    } else {
                        wp[i] = (const float *)rows[i] + k0;
                    }
                }
                for (int64_t j0 = 0; j0 < nt; j0 += NT) {
                    const float *xp[NT];
                    for (int j = 0; j < NT; j++)
                        xp[j] = x + (t0 + min64(j0 + j, nt - 1)) * n_in + k0;
                    micro_tile(wp, xp, min64(len, nv - k0), acc[j0 / NT], k0 == 0);
                }
            }
            /* The leftover elements sit at the end of the last chunk, still in wp. */
            const int64_t k_last = (n_in - 1) / KC * KC;
            for (int64_t j = 0; j < nt; j++) {
                const float *xt = x + (t0 + j) * n_in;
                for (int i = 0; i < n_valid; i++) {
                    float tail = 0.0f;
                    for (int64_t e = nv; e < n_in; e++)
                        tail = fmaf(wp[i][e - k_last], xt[e], tail);
                    y[(t0 + j) * ys + r + i] = vf_hsum(acc[j / NT][i * NT + j % NT]) + tail;
                }
            }
        }
    }
}

#define MM(type, chunk)                                                                                      \
    static void mm_##type(const void *w, int64_t rb, int64_t n_rows, const rs_act *x, int64_t n_in,           \
                          int64_t n_tok, float *y, int64_t ys)                                               \
    {                                                                                                        \
        if (n_tok == 1)                                                                                      \
            decode_##type(w, rb, n_rows, x->f, n_in, y);                                                     \
        else                                                                                                 \
            prefill(chunk, w, rb, n_rows, x->f, n_in, n_tok, y, ys);                                         \
    }
MM(f32, NULL)
MM(f16, chunk_f16)
MM(bf16, chunk_bf16)

/* Quantized weights serve decode (matmul.c runs prompts through the GEMM, gemm.c): tokens one at a time. */
#define MM_QUANT(type)                                                                                       \
    static void mm_##type(const void *w, int64_t rb, int64_t n_rows, const rs_act *x, int64_t n_in,           \
                          int64_t n_tok, float *y, int64_t ys)                                               \
    {                                                                                                        \
        const int64_t nb = n_in / RS_QK;                                                                     \
        for (int64_t t = 0; t < n_tok; t++) {                                                                \
            const rs_act xt = {.q = x->q + t * n_in, .d = x->d + t * nb, .s = x->s + t * nb};                \
            for (int64_t r = 0; r < n_rows; r += MR) {                                                       \
                const uint8_t *rows[MR];                                                                     \
                const int n_valid = pick_rows(w, rb, r, n_rows, rows);                                       \
                rows_##type(rows, rb, &xt, n_in, n_valid, y + t * ys + r);                                   \
            }                                                                                                \
        }                                                                                                    \
    }
MM_QUANT(q8_0)
MM_QUANT(q4_0)

#ifdef VK
/* ---- dense decode of llama.cpp's other quantized types (quant.h: value = scale * q + min per block of 32) -----
 * The path gives a block of 32 weights as bytes in element order (vk: vk_nib16 for the Q4_0-like order, vk_nib32
 * for the K types' runs, vk_bits32 and vk_hi add the high bits), and vk_dot_u (q unsigned, at most 63) or
 * vk_dot_s2 (signed, |q| <= 64, the block's two halves each times its own sub-scale: Q6_K) sums the products with
 * the block's int8 activations exactly, in lanes. Then, as for Q4_0, one float multiply-add by scale * d_x per
 * block, and the min once per block and row: min * d_x * (the activations' block sum). A super-block's scales are
 * unpacked once per row (hdr_*), before its eight blocks. */
typedef struct {
    float d, m;  /* the block's scale and min */
} kscales;

static inline void hdr_q4_1(const uint8_t *p, kscales *h)
{
    const block_q4_1 *b = (const block_q4_1 *)p;
    h->d = half_to_float(b->d), h->m = half_to_float(b->m);
}
/* q - 16 as the unsigned q and a min of -16 d: the unsigned dot is cheaper than the signed one */
static inline void hdr_q5_0(const uint8_t *p, kscales *h)
{
    h->d = half_to_float(((const block_q5_0 *)p)->d), h->m = -16.0f * h->d;
}
static inline void hdr_q5_1(const uint8_t *p, kscales *h)
{
    const block_q5_1 *b = (const block_q5_1 *)p;
    h->d = half_to_float(b->d), h->m = half_to_float(b->m);
}
/* A K super-block's scales as bytes, converted to floats per vector by the kernel (vf_u8): value = d * sc[j] * q +
 * nmin * m[j] for block j. */
typedef struct {
    uint8_t sc[8], m[8];
    float d, nmin;
} ksuper;

/* Kept as bytes and converted a vector at a time in ROWS_K256 (vf_u8), a decode from L2 (1024 x 768, one thread,
 * AVX2) went from 11.7 to 19.2 G weights/s for Q4_K, 9.6 to 15.1 for Q5_K and 9.7 to 11.0 for Q6_K (Q4_0: 19.9):
 * unpacked and converted to floats block by block, the scales had cost as much as the dot products. */
static inline void hdr_k(const uint8_t *scales, uint16_t d16, uint16_t dmin16, ksuper *h)
{
    rs_k_scales(scales, h->sc, h->m);
    h->d = half_to_float(d16), h->nmin = -half_to_float(dmin16);
}
static inline void hdr_q4_k(const uint8_t *p, ksuper *h)
{
    const block_q4_K *b = (const block_q4_K *)p;
    hdr_k(b->scales, b->d, b->dmin, h);
}
static inline void hdr_q5_k(const uint8_t *p, ksuper *h)
{
    const block_q5_K *b = (const block_q5_K *)p;
    hdr_k(b->scales, b->d, b->dmin, h);
}
/* Q6_K's sub-scales go into the integer dot (vk_dot_s2): per block, d alone */
static inline void hdr_q6_k(const uint8_t *p, ksuper *h)
{
    memset(h->sc, 1, sizeof h->sc);
    memset(h->m, 0, sizeof h->m);
    h->d = half_to_float(((const block_q6_K *)p)->d), h->nmin = 0.0f;
}

static inline vf dot_q4_1(const uint8_t *p, int j, vk x)
{
    (void)j;
    return vk_dot_u(vk_nib16(((const block_q4_1 *)p)->qs), x);
}
static inline vf dot_q5_0(const uint8_t *p, int j, vk x)
{
    (void)j;
    const block_q5_0 *b = (const block_q5_0 *)p;
    return vk_dot_u(vk_bits32(vk_nib16(b->qs), b->qh), x);
}
static inline vf dot_q5_1(const uint8_t *p, int j, vk x)
{
    (void)j;
    const block_q5_1 *b = (const block_q5_1 *)p;
    return vk_dot_u(vk_bits32(vk_nib16(b->qs), b->qh), x);
}
static inline vf dot_q4_k(const uint8_t *p, int j, vk x)
{
    return vk_dot_u(vk_nib32(((const block_q4_K *)p)->qs + 32 * (j / 2), j % 2), x);
}
static inline vf dot_q5_k(const uint8_t *p, int j, vk x)
{
    const block_q5_K *b = (const block_q5_K *)p;
    return vk_dot_u(vk_hi(vk_nib32(b->qs + 32 * (j / 2), j % 2), b->qh, j, 1), x);
}
/* Block j of 8: run r = j % 4 of half j / 4 (quant.h's block_q6_K). */
static inline vf dot_q6_k(const uint8_t *p, int j, vk x)
{
    const block_q6_K *b = (const block_q6_K *)p;
    const int half = j / 4, r = j % 4;
    const vk q = vk_hi(vk_nib32(b->ql + 64 * half + 32 * (r % 2), r / 2), b->qh + 32 * half, 2 * r, 3);
    return vk_dot_s2(vk_sub(q, 32), x, b->scales[2 * j], b->scales[2 * j + 1]);
}

/* MR rows of blocks of 32 elements (Q4_1, Q5_0, Q5_1: a header each), BB bytes each, against one token's int8
 * activations. */
#define ROWS_K32(type, BB)                                                                                   \
    static inline void rows_##type(const uint8_t *const *rows, int64_t rb, const rs_act *x, int64_t n_in,     \
                                   int n_valid, float *y)                                                    \
    {                                                                                                        \
        vf acc[MR];                                                                                          \
        float mn[MR];                                                                                        \
        for (int i = 0; i < MR; i++)                                                                         \
            acc[i] = vf_zero(), mn[i] = 0.0f;                                                                \
        for (int64_t k = 0; k < n_in / RS_QK; k++) {                                                         \
            const vk xv = vk_x(x->q + k * RS_QK);                                                            \
            const float xd = x->d[k], xs = xd * (float)x->s[k];                                              \
            for (int i = 0; i < MR; i++) {                                                                   \
                kscales h;                                                                                   \
                const uint8_t *blk = rows[i] + k * (BB);                                                     \
                prefetch_ahead(rows[i], k * (BB), rb);                                                       \
                hdr_##type(blk, &h);                                                                         \
                acc[i] = vf_fma(dot_##type(blk, 0, xv), vf_set1(h.d * xd), acc[i]);                          \
                mn[i] = fmaf(h.m, xs, mn[i]);                                                                \
            }                                                                                                \
        }                                                                                                    \
        for (int i = 0; i < n_valid; i++)                                                                    \
            y[i] = vf_hsum(acc[i]) + mn[i];                                                                  \
    }                                                                                                        \
    MM_QUANT(type)

/* The K types: super-blocks of 8 blocks, BB bytes. Per super-block and row the eight scales times the activations'
 * scales, and the eight mins times the activations' scaled block sums, are vector products (VL divides 8). */
#define ROWS_K256(type, BB)                                                                                  \
    static inline void rows_##type(const uint8_t *const *rows, int64_t rb, const rs_act *x, int64_t n_in,     \
                                   int n_valid, float *y)                                                    \
    {                                                                                                        \
        vf acc[MR], accm[MR];                                                                                \
        for (int i = 0; i < MR; i++)                                                                         \
            acc[i] = vf_zero(), accm[i] = vf_zero();                                                         \
        for (int64_t b = 0; b < n_in / RS_QK_K; b++) {                                                       \
            const int64_t k0 = b * 8;                                                                        \
            alignas(32) float xs[8], dd[MR][8];                                                              \
            for (int j = 0; j < 8; j++)                                                                      \
                xs[j] = x->d[k0 + j] * (float)x->s[k0 + j];                                                  \
            for (int i = 0; i < MR; i++) {                                                                   \
                ksuper h;                                                                                    \
                for (int64_t o = 0; o < (BB); o += 64)                                                       \
                    prefetch_ahead(rows[i], b * (BB) + o, rb);                                               \
                hdr_##type(rows[i] + b * (BB), &h);                                                          \
                const vf d = vf_set1(h.d), nmin = vf_set1(h.nmin);                                           \
                for (int v = 0; v < 8; v += VL) {                                                            \
                    vf_store(dd[i] + v, vf_mul(vf_mul(d, vf_u8(h.sc + v)), vf_load(x->d + k0 + v)));          \
                    accm[i] = vf_fma(vf_mul(nmin, vf_u8(h.m + v)), vf_load(xs + v), accm[i]);                 \
                }                                                                                            \
            }                                                                                                \
            for (int j = 0; j < 8; j++) {                                                                    \
                const vk xv = vk_x(x->q + (k0 + j) * RS_QK);                                                 \
                for (int i = 0; i < MR; i++)                                                                 \
                    acc[i] = vf_fma(dot_##type(rows[i] + b * (BB), j, xv), vf_set1(dd[i][j]), acc[i]);        \
            }                                                                                                \
        }                                                                                                    \
        for (int i = 0; i < n_valid; i++)                                                                    \
            y[i] = vf_hsum(acc[i]) + vf_hsum(accm[i]);                                                       \
    }                                                                                                        \
    MM_QUANT(type)
ROWS_K32(q4_1, (int64_t)sizeof(block_q4_1))
ROWS_K32(q5_0, (int64_t)sizeof(block_q5_0))
ROWS_K32(q5_1, (int64_t)sizeof(block_q5_1))
ROWS_K256(q4_k, (int64_t)sizeof(block_q4_K))
ROWS_K256(q5_k, (int64_t)sizeof(block_q5_K))
ROWS_K256(q6_k, (int64_t)sizeof(block_q6_K))
#define MM_K(type) mm_##type
#else
#define MM_K(type) NULL
#endif /* VK */

static void softmax(float *s, int64_t n, float scale) { rs_softmax(s, n, scale); }

/* ---- the prefill GEMM's panels: rows as floats (kernels.h) -------------------------------------------------- */
/* rs_dequant_row's values (exact products): quant.h's block loops, which the compiler vectorizes with the path's
 * instructions here (quant.c gets none), and F16 through the path's conversion. */
static void dequant(int type, const void *row, float *out, int64_t n)
{
    if (type == RS_TYPE_Q8_0) {
        for (int64_t k = 0; k < n / RS_QK; k++)
            rs_dequant_q8_0((const block_q8_0 *)row + k, out + k * RS_QK);
    } else if (type == RS_TYPE_Q4_0) {
        for (int64_t k = 0; k < n / RS_QK; k++)
            rs_dequant_q4_0((const block_q4_0 *)row + k, out + k * RS_QK);
    } else if (type == RS_TYPE_F16) {
        chunk_f16(row, 0, n, out);
    } else if (type == RS_TYPE_BF16) {
        chunk_bf16(row, 0, n, out);
    } else if (type == RS_TYPE_F32) {
        memcpy(out, row, (size_t)n * sizeof *out);
    } else {
        rs_dequant_row(type, row, out, n);
    }
}

/* ---- the prefill GEMM's register tile (kernels.h): GEMM_MR tokens x GEMM_NV vectors of outputs ------------- */
/* Each step loads GEMM_NV vectors of the packed panel and broadcasts one activation per token: GEMM_MR x GEMM_NV
 * independent FMA chains, enough to cover the FMA latency on both pipes, with GEMM_NV + 1 loads per GEMM_MR x
 * GEMM_NV FMAs. */
static void gemm(const float *const *a, const float *b, int64_t kc, float *c, int64_t ldc, int load)
{
    vf acc[GEMM_MR][GEMM_NV];
    for (int i = 0; i < GEMM_MR; i++)
        for (int v = 0; v < GEMM_NV; v++)
            acc[i][v] = load ? vf_load(c + i * ldc + v * VL) : vf_zero();
    for (int64_t k = 0; k < kc; k++) {
        vf bv[GEMM_NV];
        for (int v = 0; v < GEMM_NV; v++)
            bv[v] = vf_load(b + k * (GEMM_NV * VL) + v * VL);
        for (int i = 0; i < GEMM_MR; i++) {
            const vf av = vf_set1(a[i][k]);
            for (int v = 0; v < GEMM_NV; v++)
                acc[i][v] = vf_fma(av, bv[v], acc[i][v]);
        }
    }
    for (int i = 0; i < GEMM_MR; i++)
        for (int v = 0; v < GEMM_NV; v++)
            vf_store(c + i * ldc + v * VL, acc[i][v]);
}

/* ---- the prefill GEMM's integer tiles (kernels.h): IGEMM_MR tokens x IGEMM_NV vectors of outputs ------------- */
/* Per block of 32 input channels, eight steps of four: IGEMM_NV vectors of packed weight bytes loaded, each token's
 * four activation bytes broadcast against them, the products summed per output in integers (vs); then each sum,
 * less the bytes' bias times the block's activation sum, goes into the float chain with the two scales. The integer
 * step multiplies 4 x VL byte pairs per instruction where the float tile multiplies VL. DOT and FLOAT: vs_dot and
 * vs_float for bytes of at most 15, vs_dot_wide and vs_float_wide for bytes of at most 127.
 * The step loop is not unrolled: unrolled, GCC reassociates the eight steps' integer adds into a tree and spills
 * the products to the stack (AVX2, 3 x 2 tile, one thread, 256 tokens through 2048 x 2048: 127 GFLOP/s rolled, 99
 * unrolled, the latter also with an older, slower packing). */
#define IGEMM_TILE(name, DOT, FLOAT)                                                                           \
    static void name(const int8_t *const *a, const float *const *ad, const int32_t *const *as, const uint8_t *b, \
                     const float *bd, int64_t nb, int32_t off, float *c, int64_t ldc, int load)               \
    {                                                                                                        \
        enum { NR = IGEMM_NV * VL };                                                                         \
        vf acc[IGEMM_MR][IGEMM_NV];                                                                          \
        for (int i = 0; i < IGEMM_MR; i++)                                                                   \
            for (int v = 0; v < IGEMM_NV; v++)                                                               \
                acc[i][v] = load ? vf_load(c + i * ldc + v * VL) : vf_zero();                                \
        for (int64_t k = 0; k < nb; k++) {                                                                   \
            const uint8_t *q = b + k * 8 * NR * 4;                                                           \
            vs s[IGEMM_MR][IGEMM_NV];                                                                        \
            for (int i = 0; i < IGEMM_MR; i++)                                                               \
                for (int v = 0; v < IGEMM_NV; v++)                                                           \
                    s[i][v] = vs_zero();                                                                     \
            _Pragma("GCC unroll 1")                                                                          \
            for (int g = 0; g < 8; g++) {                                                                    \
                vw w[IGEMM_NV];                                                                              \
                for (int v = 0; v < IGEMM_NV; v++)                                                           \
                    w[v] = vw_load(q + (g * NR + v * VL) * 4);                                               \
                for (int i = 0; i < IGEMM_MR; i++) {                                                         \
                    const vw x = vw_bcast4(a[i] + k * RS_QK + g * 4);                                        \
                    for (int v = 0; v < IGEMM_NV; v++)                                                       \
                        s[i][v] = DOT(s[i][v], w[v], x);                                                     \
                }                                                                                            \
            }                                                                                                \
            for (int i = 0; i < IGEMM_MR; i++) {                                                             \
                const vf dx = vf_set1(ad[i][k]);                                                             \
                const int32_t o = off * as[i][k];                                                            \
                for (int v = 0; v < IGEMM_NV; v++)                                                           \
                    acc[i][v] = vf_fma(FLOAT(s[i][v], o), vf_mul(vf_load(bd + k * NR + v * VL), dx), acc[i][v]); \
            }                                                                                                \
        }                                                                                                    \
        for (int i = 0; i < IGEMM_MR; i++)                                                                   \
            for (int v = 0; v < IGEMM_NV; v++)                                                               \
                vf_store(c + i * ldc + v * VL, acc[i][v]);                                                   \
    }
IGEMM_TILE(igemm, vs_dot, vs_float)
IGEMM_TILE(igemm7, vs_dot_wide, vs_float_wide)

/* ---- dense Q4_0 and Q8_0 in tiles of 16 rows (kernels.h: mm_q4_0_r16, mm_q8_0_r16) ------------------------- */
/* The integer tile's loop for one token against 16 rows that the tile record holds as igemm's panel does, but with
 * two inputs a byte: per block, four loads of 16 rows x 4 bytes (R16_NV vectors each), their low nibbles against
 * the broadcast activations 4u..4u+3 and their high ones against 16+4u..; the 16 scales in one conversion. One
 * dot-product instruction sums VL rows, and nothing is added across lanes at the end: Q4_0's own layout takes a
 * register per row, a horizontal sum per row and a scale shuffle per row and step (docs/SPEED.md). */
#define R16_NV (RS_R16 / VL)
#define R16_AHEAD 4  /* records ahead of the one being read, prefetched: a tile's records are one stream */

/* One block of a tile, s[v] (R16_NV vectors of VL rows) summed in integers: Q4_0 takes the record's four groups of
 * nibble bytes, low nibbles against activations 4u.., high against 16 + 4u..; Q8_0 its eight groups of signed
 * weights. */
static inline void r16_sums_q4_0(const block_q4_0_r16 *b, const int8_t *xq, vs *s)
{
    for (int u = 0; u < 4; u++) {
        const vw lo = vw_bcast4(xq + 4 * u), hi = vw_bcast4(xq + 16 + 4 * u);
        for (int v = 0; v < R16_NV; v++) {
            const vw q = vw_load(b->qs[u][v * VL]);
            s[v] = vs_dot(s[v], vw_lo4(q), lo);
            s[v] = vs_dot(s[v], vw_hi4(q), hi);
        }
    }
}
static inline vf r16_float_q4_0(vs s, int32_t xs) { return vs_float(s, 8 * xs); }

static inline void r16_sums_q8_0(const block_q8_0_r16 *b, const int8_t *xq, vs *s)
{
    for (int u = 0; u < 8; u++) {
        const vw xv = vw_bcast4(xq + 4 * u);
        for (int v = 0; v < R16_NV; v++)
            s[v] = vs_dot_q8(s[v], vw_load((const uint8_t *)b->qs[u][v * VL]), xv);
    }
}
#define r16_float_q8_0 vs_float_q8

/* Per tile, block by block: the block's integer sums, then one multiply-add with the 16 rows' scales (one
 * conversion) times the activations' block scale. */
#define MM_R16(type)                                                                                         \
    static void mm_##type##_r16(const void *w, int64_t rb, int64_t n_rows, const rs_act *x, int64_t n_in,     \
                                int64_t n_tok, float *y, int64_t ys)                                         \
    {                                                                                                        \
        (void)rb;                                                                                            \
        const int64_t nb = n_in / RS_QK;                                                                     \
        const int pf = R16_AHEAD * (int)sizeof(block_##type##_r16);                                          \
        for (int64_t t = 0; t < n_tok; t++) {                                                                \
            const int8_t *xq = x->q + t * n_in;                                                              \
            const float *xd = x->d + t * nb;                                                                 \
            const int32_t *xs = x->s + t * nb;                                                               \
            for (int64_t g = 0; g < n_rows / RS_R16; g++) {                                                  \
                const block_##type##_r16 *b = (const block_##type##_r16 *)w + g * nb;                        \
                vf acc[R16_NV];                                                                              \
                for (int v = 0; v < R16_NV; v++)                                                             \
                    acc[v] = vf_zero();                                                                      \
                for (int64_t k = 0; k < nb; k++, b++) {                                                      \
                    for (int l = 0; l < (int)sizeof *b; l += 64)                                             \
                        prefetch((const uint8_t *)b + pf + l);                                               \
                    vs s[R16_NV];                                                                            \
                    for (int v = 0; v < R16_NV; v++)                                                         \
                        s[v] = vs_zero();                                                                    \
                    r16_sums_##type(b, xq + k * RS_QK, s);                                                   \
                    const vf dx = vf_set1(xd[k]);                                                            \
                    for (int v = 0; v < R16_NV; v++)                                                         \
                        acc[v] = vf_fma(r16_float_##type(s[v], xs[k]), vf_mul(vf_load_f16(b->d + v * VL), dx), \
                                        acc[v]);                                                             \
                }                                                                                            \
                for (int v = 0; v < R16_NV; v++)                                                             \
                    vf_store(y + t * ys + g * RS_R16 + v * VL, acc[v]);                                      \
            }                                                                                                \
        }                                                                                                    \
    }
MM_R16(q4_0)
MM_R16(q8_0)

/* kernels.h's rs_requant_fn, VL outputs at a time: the block's largest |v| per lane, then four rows' bytes at a
 * time per lane. */
static void requant(const float *v, int64_t ldv, int64_t nb, uint8_t *q, float *bd)
{
    enum { NR = IGEMM_NV * VL };
    for (int64_t k = 0; k < nb; k++)
        for (int u = 0; u < NR; u += VL) {
            const float *vk = v + k * RS_QK * ldv + u;
            vf m = vf_zero();
            for (int e = 0; e < RS_QK; e++)
                m = vf_absmax(m, vf_load(vk + e * ldv));
            const vf inv = vf_div(vf_set1(63.0f), vf_max(m, vf_set1(1e-30f)));
            vf_store(bd + k * NR + u, vf_div(m, vf_set1(63.0f)));
            for (int g = 0; g < 8; g++) {
                const float *r = vk + 4 * g * ldv;
                vw_store_q7(q + ((k * 8 + g) * NR + u) * 4, vf_mul(vf_load(r), inv), vf_mul(vf_load(r + ldv), inv),
                            vf_mul(vf_load(r + 2 * ldv), inv), vf_mul(vf_load(r + 3 * ldv), inv));
            }
        }
}

/* ---- sparse: y[0..n) += sum_k xk[k] * wt[idx[k]][o0 ..) -------------------------------------------------------- */
/* The group of n kept rows from k, each from byte off on (a short last group repeats its first row with activation
 * 0: weights are finite), their activations xs, and the rows AHEAD groups on, what to prefetch (past the end of the
 * list, the group's own rows: a hint for a line already in cache costs less than a test before every hint).
 * Returns how many rows are real. */
static inline int group_rows(const void *wt, int64_t rb, const int32_t *idx, const float *xk, int64_t n_kept,
                             int64_t k, int n, int64_t off, const uint8_t **rows, const uint8_t **next, float *xs)
{
    const int n_rows = (int)min64(n, n_kept - k);
    for (int i = 0; i < n; i++) {
        const int64_t kk = i < n_rows ? k + i : k, ka = k + (int64_t)AHEAD * n + i;
        rows[i] = (const uint8_t *)wt + (int64_t)idx[kk] * rb + off;
        xs[i] = i < n_rows ? xk[kk] : 0.0f;
        next[i] = ka < n_kept ? (const uint8_t *)wt + (int64_t)idx[ka] * rb + off : rows[i];
    }
    return n_rows;
}

static inline void prefetch_rows(const uint8_t *const *next, int n, int64_t byte)
{
    for (int i = 0; i < n; i++)
        SPARSE_PF(next[i] + byte);
}

/* F32 and F16: 32 outputs per step (64 or 128 bytes of each row), then the leftover outputs one by one. */
#define AXPY_FLOAT(type, TYPE, ebytes)                                                                       \
    static void axpy_##type(const void *wt, int64_t rb, const int32_t *idx, const float *xk, int64_t n_kept,  \
                            int64_t o0, int64_t n, float *y)                                                 \
    {                                                                                                        \
        const int64_t n32 = n / 32 * 32;                                                                     \
        for (int64_t k = 0; k < n_kept; k += GROUP) {                                                        \
            const uint8_t *rows[GROUP], *next[GROUP];                                                        \
            float xs[GROUP];                                                                                 \
            const int n_rows = group_rows(wt, rb, idx, xk, n_kept, k, GROUP, o0 * (ebytes), rows, next, xs);   \
            vf s[GROUP];                                                                                     \
            for (int i = 0; i < GROUP; i++)                                                                  \
                s[i] = vf_set1(xs[i]);                                                                       \
            for (int64_t o = 0; o < n32; o += 32) {                                                          \
                prefetch_rows(next, GROUP, o * (ebytes));                                                    \
                if ((ebytes) * 32 > 64)                                                                      \
                    prefetch_rows(next, GROUP, o * (ebytes) + 64);                                           \
                for (int g = 0; g < 32 / VL; g++) {                                                          \
                    vf yv = vf_load(y + o + g * VL);                                                         \
                    for (int i = 0; i < GROUP; i++)                                                          \
                        yv = vf_fma(w_##type(rows[i], o + g * VL), s[i], yv);                                \
                    vf_store(y + o + g * VL, yv);                                                            \
                }                                                                                            \
            }                                                                                                \
            for (int64_t o = n32; o < n; o++)                                                                \
                for (int i = 0; i < n_rows; i++)                                                             \
                    y[o] = fmaf(w_elem(TYPE, rows[i], o), xs[i], y[o]);                                      \
        }                                                                                                    \
    }
AXPY_FLOAT(f32, RS_TYPE_F32, 4)
AXPY_FLOAT(f16, RS_TYPE_F16, 2)

/* Quantized: one block (32 outputs) per step; each row's scale is folded into its activation once per block, in
 * vector registers (a scalar conversion, multiply and broadcast per row and block cost ~10% on AVX2). */
#define AXPY_QUANT(type)                                                                                     \
    static void axpy_##type(const void *wt, int64_t rb, const int32_t *idx, const float *xk, int64_t n_kept,  \
                            int64_t o0, int64_t n, float *y)                                                 \
    {                                                                                                        \
        const int64_t bsize = (int64_t)sizeof(block_##type);                                               \
        for (int64_t k = 0; k < n_kept; k += GROUP) {                                                        \
            const uint8_t *bytes[GROUP], *next[GROUP];                                                       \
            float xs[GROUP];                                                                                 \
            group_rows(wt, rb, idx, xk, n_kept, k, GROUP, o0 / RS_QK * bsize, bytes, next, xs);              \
            const block_##type *rows[GROUP];                                                                 \
            vf s[GROUP];                                                                                     \
            for (int i = 0; i < GROUP; i++) {                                                                \
                rows[i] = (const block_##type *)bytes[i];                                                    \
                s[i] = vf_set1(xs[i]);                                                                       \
            }                                                                                                \
            for (int64_t b = 0; b < n / RS_QK; b++) {                                                        \
                prefetch_rows(next, GROUP, b * bsize);                                                       \
                vf sd[GROUP];                                                                                \
                for (int i = 0; i < GROUP; i++)                                                              \
                    sd[i] = vf_mul(s[i], vf_half_set1(rows[i][b].d));                                        \
                for (int g = 0; g < RS_QK / VL; g++) {                                                       \
                    vf yv = vf_load(y + b * RS_QK + g * VL);                                                 \
                    for (int i = 0; i < GROUP; i++)                                                          \
                        yv = vf_fma(q_##type(&rows[i][b], g), sd[i], yv);                                   \
                    vf_store(y + b * RS_QK + g * VL, yv);                                                    \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }
/* A path may bring its own quantized sparse kernels (AXPY_Q8_0_FN, AXPY_Q4_0_FN defined before this header). The
 * generic ones read group g (VL elements) of a block, unscaled, through q_<type>: the caller folds the block's d
 * into the activation. */
#ifndef AXPY_Q8_0_FN
static inline vf q_q8_0(const block_q8_0 *b, int g) { return vf_load_i8(b->qs + g * VL); }
AXPY_QUANT(q8_0)
#define AXPY_Q8_0_FN axpy_q8_0
#endif
#ifndef AXPY_Q4_0_FN
static inline vf q_q4_0(const block_q4_0 *b, int g)
{
    return vf_load_q4(b->qs + (g * VL) % (RS_QK / 2), g * VL >= RS_QK / 2);
}
AXPY_QUANT(q4_0)
#define AXPY_Q4_0_FN axpy_q4_0
#endif

#define RS_CAT_(a, b) a##b
#define RS_CAT(a, b) RS_CAT_(a, b)
#define RS_STR_(a) #a
#define RS_STR(a) RS_STR_(a)

const rs_kernels RS_CAT(rs_kernels_, PATH) = {
    .name = RS_STR(PATH),
    .cpu_ok = CPU_OK,
    .mm_f32 = mm_f32,
    .mm_f16 = mm_f16,
    .mm_q4_0 = mm_q4_0,
    .mm_q4_0_r16 = mm_q4_0_r16,
    .mm_q8_0_r16 = mm_q8_0_r16,
    .mm_q8_0 = mm_q8_0,
    .mm_bf16 = mm_bf16,
    .mm_q4_1 = MM_K(q4_1),
    .mm_q5_0 = MM_K(q5_0),
    .mm_q5_1 = MM_K(q5_1),
    .mm_q4_k = MM_K(q4_k),
    .mm_q5_k = MM_K(q5_k),
    .mm_q6_k = MM_K(q6_k),
    .axpy_f32 = axpy_f32,
    .axpy_f16 = axpy_f16,
    .axpy_q4_0 = AXPY_Q4_0_FN,
    .axpy_q8_0 = AXPY_Q8_0_FN,
    .dequant = dequant,
    .softmax = softmax,
    .gemm = gemm,
    .gemm_mr = GEMM_MR,
    .gemm_nr = GEMM_NV * VL,
    .igemm = igemm,
    .igemm7 = igemm7,
    .requant = requant,
    .igemm_mr = IGEMM_MR,
    .igemm_nr = IGEMM_NV * VL,
};

#endif /* RS_KERNELS_SIMD_H */
