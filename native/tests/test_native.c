/* test_native.c -- the C library against independent references: binary16 decoded from its definition in double,
 * blocks decoded byte by byte from ggml's layout, matmul as a double-precision loop. Run it under
 * -DRSPARSE_SANITIZE=ON (ASan + UBSan) and once with -fsanitize=thread (the pool tests).
 *
 * Exit status 0 when every check passes; each failure prints its file, line and values. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "pool.h"
#include "quant.h"
#include "rsparse.h"

static int failures;
static int checks;

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        checks++;                                                         \
        if (!(cond)) {                                                    \
            if (++failures <= 20) {                                       \
                fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);      \
                fprintf(stderr, __VA_ARGS__);                             \
                fputc('\n', stderr);                                      \
            }                                                             \
        }                                                                 \
    } while (0)

/* ---- deterministic random numbers (xorshift64*) ------------------------------------------------------------ */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rand_u32(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (uint32_t)((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

static float rand_uniform(float lo, float hi)
{
    return lo + (hi - lo) * (float)(rand_u32() >> 8) * 0x1p-24f;
}

/* ---- independent references ------------------------------------------------------------------------------- */

/* binary16 by its definition; NaN for NaN. */
static double half_value(uint16_t h)
{
    const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 31)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexp(m, -24);
    else
        v = ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

/* Nearest binary16 to a finite f, ties to even, by search over the ordered codes 0..0x7C00. */
static uint16_t half_nearest(float f)
{
    const double a = fabs((double)f);
    uint16_t lo = 0, hi = 0x7BFF;  /* largest code with value <= a */
    if (a >= half_value(0x7BFF)) {
        lo = 0x7BFF;
    } else {
        while (lo < hi) {
            const uint16_t mid = (uint16_t)((lo + hi + 1) / 2);
            if (half_value(mid) <= a)
                lo = mid;
            else
                hi = (uint16_t)(mid - 1);
        }
    }
    /* The code above lo; 0x7C00 (inf) rounds like 2^16, the next binade's first value. */
    const double up = lo == 0x7BFF ? 65536.0 : half_value((uint16_t)(lo + 1));
    const double dlo = a - half_value(lo), dup = up - a;
    uint16_t c = lo;
    if (dup < dlo || (dup == dlo && (lo & 1)))
        c = (uint16_t)(lo + 1);
    return (uint16_t)((signbit(f) ? 0x8000 : 0) | c);
}

static uint16_t read_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* Element i of a row, decoded from its bytes as ggml lays them out. */
static double ref_element(int type, const uint8_t *row, int64_t i)
{
    switch (type) {
    case RS_TYPE_F32: {
        float f;
        memcpy(&f, row + 4 * i, 4);
        return f;
    }
    case RS_TYPE_F16:
        return half_value(read_u16(row + 2 * i));
    case RS_TYPE_Q8_0: {
        const uint8_t *b = row + 34 * (i / 32);
        return half_value(read_u16(b)) * (double)(int8_t)b[2 + i % 32];
    }
    case RS_TYPE_Q4_0: {
        const uint8_t *b = row + 18 * (i / 32);
        const int j = (int)(i % 32);
        const int q = j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4);
        return half_value(read_u16(b)) * (q - 8);
    }
    case RS_TYPE_BF16: {
        const uint32_t u = (uint32_t)read_u16(row + 2 * i) << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    case RS_TYPE_Q4_1:
    case RS_TYPE_Q5_0:
    case RS_TYPE_Q5_1: {
        /* d [m] [qh: 4 bytes] qs: 16 bytes; element j's nibble in byte j % 16 (high half for j >= 16) and its
         * fifth bit in bit j of qh */
        const int has_m = type != RS_TYPE_Q5_0, has_h = type != RS_TYPE_Q4_1;
        const int bb = 2 + 2 * has_m + 4 * has_h + 16;
        const uint8_t *b = row + bb * (i / 32), *qh = b + 2 + 2 * has_m, *qs = qh + 4 * has_h;
        const int j = (int)(i % 32);
        int q = (qs[j % 16] >> (j < 16 ? 0 : 4)) & 15;
        if (has_h)
            q += ((qh[j / 8] >> (j % 8)) & 1) * 16;
        if (type == RS_TYPE_Q5_0)
            return half_value(read_u16(b)) * (q - 16);
        return half_value(read_u16(b)) * q + half_value(read_u16(b + 2));
    }
    case RS_TYPE_Q4_K:
    case RS_TYPE_Q5_K: {
        /* d, dmin, 12 bytes of 6-bit scales and mins, [qh: 32 bytes], qs: 128 bytes */
        const int five = type == RS_TYPE_Q5_K;
        const uint8_t *b = row + (five ? 176 : 144) * (i / 256), *sc = b + 4, *qh = b + 16, *qs = b + (five ? 48 : 16);
        const int e = (int)(i % 256), j = e / 32, l = e % 32;
        int scale, min;
        if (j < 4) {
            scale = sc[j] % 64;
            min = sc[j + 4] % 64;
        } else {
            scale = sc[j + 4] % 16 + sc[j - 4] / 64 * 16;
            min = sc[j + 4] / 16 + sc[j] / 64 * 16;
        }
        int q = (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 15;
        if (five)
            q += ((qh[l] >> j) & 1) * 16;
        return half_value(read_u16(b)) * scale * q - half_value(read_u16(b + 2)) * min;
    }
    case RS_TYPE_Q6_K: {
        /* ql: 128 bytes, qh: 64, 16 int8 scales, d; per half of 128, element 32 r + l (r < 4, l < 32) has its low
         * four bits in ql[32 (r % 2) + l] (high nibble for r >= 2), its top two in bits 2 r of qh[l] */
        const uint8_t *b = row + 210 * (i / 256);
        const int e = (int)(i % 256), half = e / 128, r = (e % 128) / 32, l = e % 32;
        const uint8_t *ql = b + 64 * half, *qh = b + 128 + 32 * half;
        const int q = (((ql[32 * (r % 2) + l] >> (4 * (r / 2))) & 15) | (((qh[l] >> (2 * r)) & 3) << 4)) - 32;
        return half_value(read_u16(b + 208)) * (int8_t)b[192 + e / 16] * q;
    }
    }
    return NAN;
}

/* Elements per block of a quantized type (1: a float type). */
static int64_t ref_block(int type)
{
    switch (type) {
    case RS_TYPE_Q4_0:
    case RS_TYPE_Q4_1:
    case RS_TYPE_Q5_0:
    case RS_TYPE_Q5_1:
    case RS_TYPE_Q8_0: return 32;
    case RS_TYPE_Q4_K:
    case RS_TYPE_Q5_K:
    case RS_TYPE_Q6_K: return 256;
    default: return 1;
    }
}

static void put_half(uint8_t *p, float f)
{
    const uint16_t h = rs_fp32_to_fp16(f);
    p[0] = (uint8_t)(h & 0xFF);
    p[1] = (uint8_t)(h >> 8);
}

/* Random bytes that make a valid, finite weight matrix. */
static void fill_weights(int type, uint8_t *w, int64_t n_rows, int64_t n_in)
{
    const int64_t rb = rs_row_bytes(type, n_in);
    for (int64_t r = 0; r < n_rows; r++) {
        uint8_t *row = w + r * rb;
        if (type == RS_TYPE_F32) {
            for (int64_t i = 0; i < n_in; i++) {
                const float f = rand_uniform(-1.0f, 1.0f);
                memcpy(row + 4 * i, &f, 4);
            }
        } else if (type == RS_TYPE_F16) {
            for (int64_t i = 0; i < n_in; i++) {
                uint16_t h = (uint16_t)rand_u32();
                if (((h >> 10) & 31) >= 16)  /* keep |w| < 2 so sums stay moderate; subnormals included */
                    h &= (uint16_t)~0x4000u;
                memcpy(row + 2 * i, &h, 2);
            }
        } else if (type == RS_TYPE_BF16) {
            for (int64_t i = 0; i < n_in; i++) {
                const float f = rand_uniform(-1.0f, 1.0f);
                uint32_t u;
                memcpy(&u, &f, 4);
                row[2 * i] = (uint8_t)(u >> 16), row[2 * i + 1] = (uint8_t)(u >> 24);
            }
        } else {
            /* random bytes, then the block's binary16 scale (and min) made small and finite */
            const int64_t nb = n_in / ref_block(type), bb = rb / nb;
            for (int64_t k = 0; k < nb; k++) {
                uint8_t *b = row + k * bb;
                for (int64_t j = 0; j < bb; j++)
                    b[j] = (uint8_t)rand_u32();
                if (type == RS_TYPE_Q6_K) {
                    put_half(b + 208, rand_uniform(-0.005f, 0.005f));
                } else {
                    put_half(b, rand_uniform(-0.05f, 0.05f) / (ref_block(type) == 256 ? 32.0f : 1.0f));
                    if (type == RS_TYPE_Q4_1 || type == RS_TYPE_Q5_1 || ref_block(type) == 256)
                        put_half(b + 2, rand_uniform(-0.05f, 0.05f) / (ref_block(type) == 256 ? 32.0f : 1.0f));
                }
            }
        }
    }
}

/* ---- fp16 ---------------------------------------------------------------------------------------------- */
static void test_fp16(void)
{
    for (uint32_t u = 0; u <= 0xFFFF; u++) {
        const uint16_t h = (uint16_t)u;
        const float f = rs_fp16_to_fp32(h);
        const double want = half_value(h);
        if (isnan(want)) {
            CHECK(isnan(f) && ((rs_bits_from_f32(f) >> 13) & 0x3FF) == (h & 0x3FFu), "fp16 NaN %04x", h);
            const uint16_t back = rs_fp32_to_fp16(f);
            CHECK((back & 0x7C00) == 0x7C00 && (back & 0x3FF) != 0, "NaN %04x -> %04x", h, back);
            if (h & 0x200)  /* a quiet NaN survives the round trip bit for bit */
                CHECK(back == h, "quiet NaN %04x -> %04x", h, back);
        } else {
            CHECK((double)f == want && !signbit(f) == !signbit(want), "fp16 %04x -> %a, want %a", h, f, want);
            CHECK(rs_fp32_to_fp16(f) == h, "round trip %04x -> %04x", h, rs_fp32_to_fp16(f));
        }
    }
    /* Random bit patterns cover every float exponent; scaled uniforms cover the half range densely, including
     * the rounding boundaries of subnormals and of overflow. */
    for (int k = 0; k < 400000; k++) {
        float f;
        if (k % 2) {
            f = rs_f32_from_bits(rand_u32());
        } else {
            const int e = (int)(rand_u32() % 48) - 30;  /* 2^-30 .. 2^17 */
            f = ldexpf(rand_uniform(-1.0f, 1.0f), e);
        }
        const uint16_t got = rs_fp32_to_fp16(f);
        if (isnan(f)) {
            CHECK((got & 0x7C00) == 0x7C00 && (got & 0x3FF) != 0, "NaN %a -> %04x", f, got);
            continue;
        }
        const uint16_t want = half_nearest(f);
        CHECK(got == want, "fp32 %a -> %04x, want %04x", f, got, want);
#ifdef __FLT16_MAX__
        const _Float16 hf = (_Float16)f;  /* the compiler's conversion, a second reference */
        uint16_t hb;
        memcpy(&hb, &hf, 2);
        CHECK(got == hb, "fp32 %a -> %04x, _Float16 gives %04x", f, got, hb);
#endif
    }
    const float edges[] = {65504.0f, 65519.99f, 65520.0f, 65536.0f, 0x1p-24f, 0x1p-25f, 0x1.000002p-25f, 0x1p-14f,
                           0x1.ffcp-15f, 0x1.ffep-15f, 0.0f, -0.0f, INFINITY, -INFINITY, 1e-45f, 3.4e38f};
    for (size_t k = 0; k < sizeof edges / sizeof edges[0]; k++)
        CHECK(rs_fp32_to_fp16(edges[k]) == half_nearest(edges[k]), "edge %a -> %04x, want %04x", edges[k],
              rs_fp32_to_fp16(edges[k]), half_nearest(edges[k]));
}

/* ---- matmul and get_rows ----------------------------------------------------------------------------------- */
static void test_matmul_case(rs_pool *pool, int type, int64_t n_out, int64_t n_in, int64_t n_tok)
{
    const int64_t rb = rs_row_bytes(type, n_in);
    uint8_t *w = malloc((size_t)(n_out * rb));
    float *x = malloc((size_t)(n_tok * n_in) * sizeof *x);
    float *y = malloc((size_t)(n_tok * n_out + 1) * sizeof *y);
    fill_weights(type, w, n_out, n_in);
    for (int64_t i = 0; i < n_tok * n_in; i++)
        x[i] = rand_uniform(-2.0f, 2.0f);
    for (int64_t i = 0; i <= n_tok * n_out; i++)
        y[i] = NAN;  /* y is output only: stale contents must not leak in */
    const int st = rs_matmul(pool, type, w, n_out, n_in, x, n_tok, y);
    CHECK(st == RS_OK, "rs_matmul type %d %lldx%lld n_tok %lld: %s", type, (long long)n_out, (long long)n_in,
          (long long)n_tok, rs_strerror(st));
    /* Q8_0 and Q4_0 multiply activations rounded to int8 per block of 32: each is off by at most half a step,
     * step = the block's largest |x| / 127 (kernels.h); the bound adds |w| times that, with room (1e-4 of a half
     * step) for the float rounding of the step itself. */
    const int quant = ref_block(type) > 1;
    double *half_step = malloc((size_t)(n_tok * n_in) * sizeof *half_step);
    for (int64_t e = 0; e < n_tok * n_in; e += quant ? 32 : 1) {
        double amax = 0.0;
        for (int64_t i = e; i < e + (quant ? 32 : 1); i++)
            amax = fmax(amax, fabs((double)x[i]));
        for (int64_t i = e; i < e + (quant ? 32 : 1); i++)
            half_step[i] = quant ? 0.5001 * amax / 127.0 : 0.0;
    }
    for (int64_t t = 0; t < n_tok; t++) {
        for (int64_t r = 0; r < n_out; r++) {
            double want = 0.0, mag = 0.0, act = 0.0;
            for (int64_t i = 0; i < n_in; i++) {
                const double wi = ref_element(type, w + r * rb, i), p = wi * (double)x[t * n_in + i];
                want += p;
                mag += fabs(p);
                act += fabs(wi) * half_step[t * n_in + i];
            }
            const double got = y[t * n_out + r];
            CHECK(fabs(got - want) <= 1e-5 * mag + act + 1e-30,
                  "type %d %lldx%lld n_tok %lld threads %d y[%lld][%lld] = %.9g, "
                  "want %.9g", type, (long long)n_out, (long long)n_in, (long long)n_tok, rs_pool_n_threads(pool),
                  (long long)t, (long long)r, got, want);
        }
    }
    CHECK(isnan(y[n_tok * n_out]), "rs_matmul wrote past y");
    free(half_step);
    free(w);
    free(x);
    free(y);
}

/* ---- sparse matvec ------------------------------------------------------------------------------------------ */
static double ref_half_or_float(int ftype, const void *a, int64_t i)
{
    return ftype == RS_TYPE_F32 ? (double)((const float *)a)[i] : half_value(((const uint16_t *)a)[i]);
}

/* |d| of block b of a Q8_0 or Q4_0 row; 0 for other types. */
static double block_scale(int type, const uint8_t *row, int64_t b)
{
    if (type != RS_TYPE_Q8_0 && type != RS_TYPE_Q4_0)
        return 0.0;
    return fabs(half_value(read_u16(row + b * (type == RS_TYPE_Q8_0 ? 34 : 18))));
}

/* Sparse Q8_0 and Q4_0 round each group of kept rows' coefficients x_j * d_j to int8 (src/sparse_int8.h), on one
 * scale per chunk of RS_I8_CHUNK = 4 blocks of outputs (AVX-512's int16 Q4_0 kernel: 16), which the chunks of 16
 * blocks taken here (blocks 16c .. 16c + 15 of the row) hold whole: each off by at most half a step, a step being
 * at most the 16-block chunk's largest kept |x_j d_j| / 127 (the group's largest is no larger).
 * Output o's bound adds that half step times sum |q_jo| over the kept rows. */
static double coefficient_step(int type, const uint8_t *wt, int64_t rb, int64_t n_blocks, const float *x,
                               const unsigned char *m, int64_t n_in, int64_t b)
{
    double amax = 0.0;
    for (int64_t c = b / 16 * 16; c < b / 16 * 16 + 16 && c < n_blocks; c++)
        for (int64_t j = 0; j < n_in; j++)
            if (m[j])
                amax = fmax(amax, fabs((double)x[j]) * block_scale(type, wt + j * rb, c));
    return 0.5001 * amax / 127.0;
}

/* The sparse Q8_0 and Q4_0 kernels of the path in use against the scalar ones, called directly, bit for bit:
 * every path computes sparse_int8.h's arithmetic in the same order. Kept lists of 1 to 40 rows (short last
 * groups), slices that start and end inside a chunk of 16 blocks, weights with every byte value (Q8_0's -128
 * included), activations over 60 binades, and blocks made non-finite by an inf or NaN activation or scale. */
static int same_bits(float a, float b) { return isnan(a) ? isnan(b) : memcmp(&a, &b, sizeof a) == 0; }

static void test_sparse_int8_exact(void)
{
    static const int types[] = {RS_TYPE_Q8_0, RS_TYPE_Q4_0};
    const int64_t n_rows = 64, n_out = 32 * 40;
    const rs_kernels *k = rs_kernels_now();
    for (int ti = 0; ti < 2; ti++) {
        const int type = types[ti];
        const int64_t rb = rs_row_bytes(type, n_out), bb = type == RS_TYPE_Q8_0 ? 34 : 18;
        uint8_t *wt = malloc((size_t)(n_rows * rb));
        float *y = malloc((size_t)n_out * sizeof *y), *want = malloc((size_t)n_out * sizeof *want);
        float xk[64];
        int32_t idx[64];
        fill_weights(type, wt, n_rows, n_out);
        const rs_axpy_fn got_fn = rs_axpy_for(k, type), want_fn = rs_axpy_for(&rs_kernels_scalar, type);
        for (int trial = 0; trial < 48; trial++) {
            const int64_t n_kept = 1 + (int64_t)(rand_u32() % 40);
            int64_t r = (int64_t)(rand_u32() % 8);
            for (int64_t i = 0; i < n_kept; i++, r += 1 + (int64_t)(rand_u32() % 2 ? 0 : rand_u32() % 3))
                idx[i] = (int32_t)(r % n_rows);
            for (int64_t i = 0; i < n_kept; i++)
                xk[i] = rand_uniform(-1.0f, 1.0f) * ldexpf(1.0f, (int)(rand_u32() % 60) - 40);
            const int64_t b0 = trial % 3 == 0 ? 0 : (int64_t)(rand_u32() % 30);
            const int64_t nb = 1 + (int64_t)(rand_u32() % (uint32_t)(40 - b0));
            if (trial % 8 == 5)
                xk[rand_u32() % n_kept] = trial % 16 == 5 ? INFINITY : NAN;
            uint8_t saved[2] = {0, 0};
            uint8_t *d = wt + (int64_t)idx[0] * rb + (b0 + nb - 1) * bb;
            if (trial % 8 == 6) {  /* a scale of inf in the slice's last block of the first kept row */
                memcpy(saved, d, 2);
                d[0] = 0x00;
                d[1] = 0x7C;
            }
            for (int64_t o = 0; o < n_out; o++)
                want[o] = y[o] = rand_uniform(-1.0f, 1.0f);
            want_fn(wt, rb, idx, xk, n_kept, 32 * b0, 32 * nb, want);
            got_fn(wt, rb, idx, xk, n_kept, 32 * b0, 32 * nb, y);
            int same = 1;
            for (int64_t o = 0; o < n_out; o++)
                same &= same_bits(y[o], want[o]);
            CHECK(same, "path %s type %d: sparse kernel differs from scalar (trial %d, %lld kept, blocks %lld+%lld)",
                  rs_simd_path(), type, trial, (long long)n_kept, (long long)b0, (long long)nb);
            if (trial % 8 == 6)
                memcpy(d, saved, 2);
        }
        free(wt);
        free(y);
        free(want);
    }
}

/* Every channel's score is distinct (random floats), so tau between two of them keeps exactly n_keep channels. */
static float tau_for(const float *x, const float *colnorm, int64_t n_in, int64_t n_keep)
{
    if (n_keep >= n_in)
        return -1.0f;
    float *s = malloc((size_t)n_in * sizeof *s);
    for (int64_t i = 0; i < n_in; i++)
        s[i] = colnorm ? fabsf(x[i]) * colnorm[i] : fabsf(x[i]);
    /* selection by counting: the (n_in - n_keep)-th smallest score, then the next one up */
    float lo = -1.0f, hi = INFINITY;
    for (int64_t i = 0; i < n_in; i++) {
        int64_t below = 0;
        for (int64_t j = 0; j < n_in; j++)
            below += s[j] < s[i];
        if (below == n_in - n_keep - 1)
            lo = s[i];
        if (below == n_in - n_keep)
            hi = s[i];
    }
    free(s);
    return isinf(hi) ? lo + 1.0f : lo + (hi - lo) / 2;
}

static void test_sparse_case(rs_pool *pool, int wtype, int ftype, int64_t n_out, int64_t n_in, int64_t rank,
                             int use_colnorm, int64_t n_keep)
{
    const int64_t rb = rs_row_bytes(wtype, n_out);
    const int64_t fb = ftype == RS_TYPE_F32 ? 4 : 2;
    uint8_t *wt = malloc((size_t)(n_in * rb));
    void *u = malloc((size_t)(n_out * (rank ? rank : 1) * fb)), *vs = malloc((size_t)((rank ? rank : 1) * n_in * fb));
    float *x = malloc((size_t)n_in * sizeof *x), *colnorm = malloc((size_t)n_in * sizeof *colnorm);
    float *y = malloc((size_t)(n_out + 1) * sizeof *y);
    const int64_t sb = rs_sparse_scratch_bytes(n_in, rank);
    void *scratch = malloc((size_t)sb);
    fill_weights(wtype, wt, n_in, n_out);
    for (int64_t i = 0; i < n_out * rank; i++) {
        const float f = rand_uniform(-0.5f, 0.5f);
        if (ftype == RS_TYPE_F32)
            ((float *)u)[i] = f;
        else
            ((uint16_t *)u)[i] = rs_fp32_to_fp16(f);
    }
    for (int64_t i = 0; i < rank * n_in; i++) {
        const float f = rand_uniform(-0.5f, 0.5f);
        if (ftype == RS_TYPE_F32)
            ((float *)vs)[i] = f;
        else
            ((uint16_t *)vs)[i] = rs_fp32_to_fp16(f);
    }
    for (int64_t i = 0; i < n_in; i++) {
        x[i] = rand_uniform(-2.0f, 2.0f);
        colnorm[i] = rand_uniform(0.1f, 3.0f);
    }
    const float *cn = use_colnorm ? colnorm : NULL;
    const float tau = tau_for(x, cn, n_in, n_keep);
    for (int64_t i = 0; i <= n_out; i++)
        y[i] = NAN;
    int64_t kept = -1;
    const int st = rs_sparse_matvec(pool, wtype, wt, n_out, n_in, cn, tau, ftype, u, vs, rank, x, y, &kept, scratch, sb);
    CHECK(st == RS_OK, "rs_sparse_matvec: %s", rs_strerror(st));
    CHECK(kept == n_keep, "path %s type %d %lldx%lld: kept %lld, want %lld", rs_simd_path(), wtype,
          (long long)n_out, (long long)n_in, (long long)kept, (long long)n_keep);

    /* reference: the mask as the kernel computes it (float32 scores), everything else in double */
    double *z = calloc((size_t)(rank ? rank : 1), sizeof *z), *zmag = calloc((size_t)(rank ? rank : 1), sizeof *zmag);
    unsigned char *m = malloc((size_t)n_in);
    double step = 0.0;  /* of output o's block */
    for (int64_t j = 0; j < n_in; j++)
        m[j] = (cn ? fabsf(x[j]) * cn[j] : fabsf(x[j])) > tau;
    for (int64_t r = 0; r < rank; r++)
        for (int64_t j = 0; j < n_in; j++)
            if (!m[j]) {
                const double p = ref_half_or_float(ftype, vs, r * n_in + j) * x[j];
                z[r] += p;
                zmag[r] += fabs(p);
            }
    for (int64_t o = 0; o < n_out; o++) {
        double want = 0.0, mag = 0.0, q_sum = 0.0;
        if (o % 32 == 0)
            step = coefficient_step(wtype, wt, rb, n_out / 32, x, m, n_in, o / 32);
        for (int64_t j = 0; j < n_in; j++)
            if (m[j]) {
                const double w = ref_element(wtype, wt + j * rb, o), d = block_scale(wtype, wt + j * rb, o / 32);
                want += w * x[j];
                mag += fabs(w * x[j]);
                q_sum += d > 0.0 ? fabs(w) / d : 0.0;
            }
        for (int64_t r = 0; r < rank; r++) {
            const double uo = ref_half_or_float(ftype, u, o * rank + r);
            want += uo * z[r];
            mag += fabs(uo) * zmag[r];
        }
        CHECK(fabs(y[o] - want) <= 1e-5 * mag + step * q_sum + 1e-30,
              "path %s type %d ftype %d %lldx%lld rank %lld kept %lld "
              "threads %d: y[%lld] = %.9g, want %.9g", rs_simd_path(), wtype, ftype, (long long)n_out,
              (long long)n_in, (long long)rank, (long long)n_keep, rs_pool_n_threads(pool), (long long)o, y[o], want);
    }
    CHECK(isnan(y[n_out]), "rs_sparse_matvec wrote past y");
    free(z);
    free(zmag);
    free(m);
    free(wt);
    free(u);
    free(vs);
    free(x);
    free(colnorm);
    free(y);
    free(scratch);
}

static void test_sparse(void)
{
    static const int types[] = {RS_TYPE_F32, RS_TYPE_F16, RS_TYPE_Q4_0, RS_TYPE_Q8_0};
    static const int64_t n_out_q[] = {32, 96, 576};
    static const int64_t n_out_f[] = {1, 37, 576};
    static const int64_t n_ins[] = {1, 45, 192};
    static const int percents[] = {0, 10, 50, 90, 100};
    for (int nt = 1; nt <= 4; nt++) {
        rs_pool *pool = rs_pool_create(nt);
        for (size_t ti = 0; ti < 4; ti++) {
            const int type = types[ti];
            const int quant = type == RS_TYPE_Q4_0 || type == RS_TYPE_Q8_0;
            for (size_t a = 0; a < 3; a++)
                for (size_t b = 0; b < 3; b++)
                    for (size_t c = 0; c < 5; c++) {
                        const int64_t n_out = quant ? n_out_q[a] : n_out_f[a], n_in = n_ins[b];
                        const int64_t keep = n_in * percents[c] / 100;
                        const int64_t rank = (a + b + c) % 3 == 0 ? 0 : (int64_t)(1 + (a + c) % 2 * 8);
                        test_sparse_case(pool, type, (a + c) % 2 ? RS_TYPE_F16 : RS_TYPE_F32, n_out, n_in, rank,
                                         (b + c) % 2, keep);
                    }
        }
        rs_pool_free(pool);
    }
    /* A SmolLM2 down projection, rho = 1 and colnorm, with a rank-16 term. */
    rs_pool *pool = rs_pool_create(2);
    test_sparse_case(pool, RS_TYPE_Q8_0, RS_TYPE_F16, 576, 1536, 16, 1, 700);
    test_sparse_case(pool, RS_TYPE_F16, RS_TYPE_F32, 576, 1536, 0, 0, 300);
    rs_pool_free(pool);
}

static void test_sparse_errors(void)
{
    rs_pool *pool = rs_pool_create(2);
    _Alignas(8) uint8_t wt[34 * 4] = {0};
    float x[4] = {1, 2, 3, 4}, y[64], u[64 * 2] = {0}, vs[2 * 4] = {0};
    _Alignas(8) float scratch[64];
    int64_t kept;
    const int64_t sb = rs_sparse_scratch_bytes(4, 2);
    CHECK(sb == 4 * (3 * 4 + 2) && rs_sparse_scratch_bytes(0, 0) == -1 && rs_sparse_scratch_bytes(4, -1) == -1,
          "rs_sparse_scratch_bytes");
    CHECK(rs_sparse_matvec(pool, RS_TYPE_Q8_0, wt, 32, 4, NULL, 0.5f, RS_TYPE_F32, u, vs, 2, x, y, &kept, scratch,
                           sb) == RS_OK && kept == 4, "valid sparse call");
    CHECK(rs_sparse_matvec(pool, RS_TYPE_Q8_0, wt, 32, 4, NULL, 0.5f, RS_TYPE_F32, u, vs, 2, x, y, &kept, scratch,
                           sb - 4) == RS_ERR_SHAPE, "scratch too small");
    CHECK(rs_sparse_matvec(pool, RS_TYPE_Q8_0, wt, 33, 4, NULL, 0.5f, RS_TYPE_F32, u, vs, 2, x, y, &kept, scratch,
                           sb) == RS_ERR_SHAPE, "n_out %% 32");
    CHECK(rs_sparse_matvec(pool, RS_TYPE_Q5_0, wt, 32, 4, NULL, 0.5f, RS_TYPE_F32, u, vs, 2, x, y, &kept, scratch,
                           sb) == RS_ERR_TYPE, "a dense-only weight type");
    CHECK(rs_sparse_matvec(pool, RS_TYPE_Q8_0, wt, 32, 4, NULL, 0.5f, RS_TYPE_Q8_0, u, vs, 2, x, y, &kept, scratch,
                           sb) == RS_ERR_TYPE, "factor type");
    CHECK(rs_sparse_matvec(pool, RS_TYPE_Q8_0, wt, 32, 4, NULL, 0.5f, RS_TYPE_F32, NULL, vs, 2, x, y, &kept, scratch,
                           sb) == RS_ERR_NULL, "NULL u");
    CHECK(rs_sparse_matvec(pool, RS_TYPE_Q8_0, wt, 32, 4, NULL, 0.5f, RS_TYPE_F32, NULL, NULL, 0, x, y, NULL, scratch,
                           sb) == RS_OK, "rank 0 ignores the factors");
    CHECK(rs_sparse_matvec(pool, RS_TYPE_Q8_0, wt, 32, 4, NULL, 0.5f, RS_TYPE_F32, u, vs, -1, x, y, &kept, scratch,
                           sb) == RS_ERR_SHAPE, "rank < 0");
    CHECK(rs_sparse_matvec(pool, RS_TYPE_Q8_0, wt, 32, 4, NULL, 0.5f, RS_TYPE_F32, u, vs, 2, x, y, &kept, NULL,
                           sb) == RS_ERR_NULL, "NULL scratch");
    CHECK(rs_sparse_matvec(pool, RS_TYPE_Q8_0, wt + 1, 32, 4, NULL, 0.5f, RS_TYPE_F32, u, vs, 2, x, y, &kept,
                           scratch, sb) == RS_ERR_ALIGN, "misaligned wt");
    CHECK(rs_sparse_matvec(pool, RS_TYPE_Q8_0, wt, 32, 4, NULL, 0.5f, RS_TYPE_F32, u, vs, 2, x, y, &kept,
                           (char *)scratch + 2, sb) == RS_ERR_ALIGN, "misaligned scratch");
    CHECK(rs_sparse_matvec(pool, 5, wt, 32, 4, NULL, 0.5f, RS_TYPE_F32, u, vs, 2, x, y, &kept, scratch,
                           sb) == RS_ERR_TYPE, "weight type");
    CHECK(rs_sparse_matvec(pool, RS_TYPE_F32, wt, (int64_t)1 << 61, 4, NULL, 0.5f, RS_TYPE_F32, u, vs, 2, x, y, &kept,
                           scratch, sb) == RS_ERR_SHAPE, "n_out overflows");
    CHECK(rs_simd_select("no-such-path") == RS_ERR_PATH && rs_simd_select(NULL) == RS_OK, "rs_simd_select");
    rs_pool_free(pool);
}

/* ---- int8 activations of the dense Q8_0 and Q4_0 kernels ---------------------------------------------------- */
/* rs_quantize_act against its definition (quant.h): |q| <= 127, s the block sum, each activation within half a step
 * of q * d, d = amax / 127 (plus d's own float rounding); a non-finite block gives d = NaN, q = 0; an all-zero one
 * d = 0. Path-independent. */
static void test_quantize_act(void)
{
    enum { N = 32 * 6 };
    float x[N];
    int8_t q[N];
    float d[N / 32];
    int32_t s[N / 32];
    for (int i = 0; i < N; i++)
        x[i] = rand_uniform(-3.0f, 3.0f);
    for (int i = 32; i < 64; i++)
        x[i] = 0.0f;
    for (int i = 64; i < 96; i++)
        x[i] = rand_uniform(-1.0f, 1.0f) * 1e-41f;  /* subnormal: 127 / amax overflows float */
    for (int i = 96; i < 128; i++)
        x[i] *= 1e37f;
    x[130] = NAN;
    x[170] = -INFINITY;
    rs_quantize_act(x, N, q, d, s);
    for (int k = 0; k < N / 32; k++) {
        double amax = 0.0;
        int32_t sum = 0;
        for (int i = 32 * k; i < 32 * k + 32; i++) {
            amax = fmax(amax, fabs((double)x[i]));
            sum += q[i];
            CHECK(q[i] >= -127 && q[i] <= 127, "q[%d] = %d", i, q[i]);
        }
        CHECK(s[k] == sum, "block %d: s = %d, sum of q = %d", k, (int)s[k], (int)sum);
        if (k == 4 || k == 5) {
            CHECK(isnan(d[k]) && sum == 0, "non-finite block %d: d = %g", k, d[k]);
            continue;
        }
        CHECK(d[k] == (float)(amax / 127.0), "block %d: d = %g, amax / 127 = %g", k, d[k], amax / 127.0);
        for (int i = 32 * k; i < 32 * k + 32; i++)
            /* + |q| times d's own rounding, which is up to half of 2^-149 when d is subnormal */
            CHECK(fabs((double)x[i] - q[i] * (double)d[k]) <= 0.5001 * amax / 127.0 + 127.0 * 0x1p-150,
                  "x[%d] = %g rounds to %d * %g", i, x[i], q[i], d[k]);
    }
}

/* Per path, against the scalar kernel. Decode (one token, int8 activations) sums the same integers per block on
 * both sides, so they differ by float rounding only, |y - y_scalar| <= 2e-5 * sum_k |isum_k d_w d_x| (bounded here
 * by the products of the dequantized weights and rounded activations); a block holding NaN or inf makes its
 * token's outputs NaN. Prefill (the float GEMM) gives the scalar kernel's bits on every path, non-finite outputs for
 * a non-finite activation, and differs from decode by decode's activation rounding at most (odd and even block
 * counts: AVX-512 takes two blocks a step). */
static void test_quant_paths(rs_pool *pool, const char *path)
{
    static const int64_t n_ins[] = {32, 96, 544, 1056};
    enum { N_OUT = 37, N_TOK = 9 };
    for (int type = 0; type < 2; type++) {
        const int wtype = type ? RS_TYPE_Q8_0 : RS_TYPE_Q4_0;
        for (size_t a = 0; a < sizeof n_ins / sizeof n_ins[0]; a++) {
            const int64_t n_in = n_ins[a], rb = rs_row_bytes(wtype, n_in);
            uint8_t *w = malloc((size_t)(N_OUT * rb));
            float *x = malloc((size_t)(N_TOK * n_in) * sizeof *x);
            float *y = malloc((size_t)(N_TOK * N_OUT) * sizeof *y), *y1 = malloc(N_OUT * sizeof *y1);
            float *ys = malloc((size_t)(N_TOK * N_OUT) * sizeof *ys), *y1s = malloc(N_OUT * sizeof *y1s);
            int8_t *q = malloc((size_t)n_in);
            float *d = malloc((size_t)(n_in / 32) * sizeof *d);
            int32_t *s = malloc((size_t)(n_in / 32) * sizeof *s);
            fill_weights(wtype, w, N_OUT, n_in);
            for (int64_t i = 0; i < N_TOK * n_in; i++)
                x[i] = rand_uniform(-2.0f, 2.0f);
            for (int64_t i = 0; i < 32; i++)
                x[1 * n_in + i] *= 1e30f;  /* token 1: a huge block beside ordinary ones */
            x[2 * n_in + n_in - 1] = 1e-40f;  /* token 2: a subnormal in an ordinary block */
            x[3 * n_in + n_in / 2] = NAN;
            x[4 * n_in] = INFINITY;
            CHECK(rs_simd_select("scalar") == RS_OK, "select scalar");
            CHECK(rs_matmul(pool, wtype, w, N_OUT, n_in, x, N_TOK, ys) == RS_OK, "scalar matmul");
            CHECK(rs_simd_select(path) == RS_OK, "select %s", path);
            CHECK(rs_matmul(pool, wtype, w, N_OUT, n_in, x, N_TOK, y) == RS_OK, "%s matmul", path);
            for (int64_t t = 0; t < N_TOK; t++) {
                CHECK(rs_simd_select("scalar") == RS_OK, "select scalar");
                CHECK(rs_matmul(pool, wtype, w, N_OUT, n_in, x + t * n_in, 1, y1s) == RS_OK, "scalar decode");
                CHECK(rs_simd_select(path) == RS_OK, "select %s", path);
                CHECK(rs_matmul(pool, wtype, w, N_OUT, n_in, x + t * n_in, 1, y1) == RS_OK, "decode");
                rs_quantize_act(x + t * n_in, n_in, q, d, s);
                for (int64_t r = 0; r < N_OUT; r++) {
                    const float got = y1[r], want = y1s[r], pre = y[t * N_OUT + r];
                    if (t == 3 || t == 4) {
                        CHECK(isnan(got) && isnan(want), "%s: non-finite x gives %g (scalar %g)", path, got, want);
                        CHECK(!isfinite(pre), "%s: non-finite x gives %g in prefill", path, pre);
                        continue;
                    }
                    CHECK(memcmp(&pre, &ys[t * N_OUT + r], sizeof pre) == 0,
                          "%s type %d n_in %lld y[%lld][%lld]: prefill %.9g, scalar prefill %.9g", path, wtype,
                          (long long)n_in, (long long)t, (long long)r, pre, ys[t * N_OUT + r]);
                    double mag = 0.0, rounding = 0.0;
                    for (int64_t i = 0; i < n_in; i++) {
                        const double wi = fabs(ref_element(wtype, w + r * rb, i));
                        mag += wi * fabs(q[i] * (double)d[i / 32]);
                        rounding += wi * (0.5 * d[i / 32] + fabs((double)x[t * n_in + i]) * 1e-6);
                    }
                    CHECK(fabs((double)got - (double)want) <= 2e-5 * mag + 1e-38,
                          "%s type %d n_in %lld y[%lld][%lld] = %.9g, scalar %.9g", path, wtype, (long long)n_in,
                          (long long)t, (long long)r, got, want);
                    CHECK(fabs((double)got - (double)pre) <= rounding + 2e-5 * mag + 1e-38,
                          "%s type %d n_in %lld y[%lld][%lld]: decode %.9g, prefill %.9g", path, wtype,
                          (long long)n_in, (long long)t, (long long)r, got, pre);
                }
            }
            /* The companion's layout: (n_in, 64) weights, the same tokens, bit for bit with the scalar path. */
            uint8_t *wt = malloc((size_t)(n_in * rs_row_bytes(wtype, 64)));
            float *yt = malloc((size_t)(N_TOK * 64) * sizeof *yt), *yts = malloc((size_t)(N_TOK * 64) * sizeof *yts);
            fill_weights(wtype, wt, n_in, 64);
            CHECK(rs_simd_select("scalar") == RS_OK, "select scalar");
            CHECK(rs_matmul_wt(pool, wtype, wt, 64, n_in, x, N_TOK, yts) == RS_OK, "scalar matmul_wt");
            CHECK(rs_simd_select(path) == RS_OK, "select %s", path);
            CHECK(rs_matmul_wt(pool, wtype, wt, 64, n_in, x, N_TOK, yt) == RS_OK, "%s matmul_wt", path);
            int same = 1;
            for (int64_t i = 0; i < N_TOK * 64; i++)
                same &= same_bits(yt[i], yts[i]);
            CHECK(same, "%s type %d n_in %lld: matmul_wt differs from scalar", path, wtype, (long long)n_in);
            free(wt), free(yt), free(yts);
            free(w), free(x), free(y), free(y1), free(ys), free(y1s), free(q), free(d), free(s);
        }
    }
}

/* Q4_0 and Q8_0 in tiles of 16 rows (rs_repack_*_r16): decode on this path gives the scalar path's bits (Q4_0:
 * also its prefill's, the integer GEMM's arithmetic), prefill gives the type's own prefill bits, decode stays within
 * float rounding of the type's own decode (checked against float64 above), over 1 to 4 threads; rows looked up give
 * the type's; bad shapes are refused. */
static void test_r16(const char *path)
{
    static const int64_t n_ins[] = {32, 96, 544, 1056};
    static const int64_t n_outs[] = {16, 48, 160};
    enum { N_TOK = 6 };
    for (int nt = 1; nt <= 4; nt++) {
        rs_pool *pool = rs_pool_create(nt);
        CHECK(pool != NULL, "rs_pool_create(%d)", nt);
        if (!pool)
            continue;
        for (int q8 = 0; q8 < 2; q8++) {
            for (size_t a = 0; a < sizeof n_ins / sizeof n_ins[0]; a++)
                for (size_t b = 0; b < sizeof n_outs / sizeof n_outs[0]; b++) {
                    const int type = q8 ? RS_TYPE_Q8_0 : RS_TYPE_Q4_0, tt = q8 ? RS_TYPE_Q8_0_R16 : RS_TYPE_Q4_0_R16;
                    const int64_t n_in = n_ins[a], n_out = n_outs[b], rb = rs_row_bytes(type, n_in);
                    uint8_t *w = malloc((size_t)(n_out * rb)), *wr = malloc((size_t)(n_out * rb));
                    float *x = malloc((size_t)(N_TOK * n_in) * sizeof *x);
                    float *pre = malloc((size_t)(N_TOK * n_out) * sizeof *pre);
                    float *pre4 = malloc((size_t)(N_TOK * n_out) * sizeof *pre4);
                    float *y = malloc((size_t)n_out * sizeof *y), *ys = malloc((size_t)n_out * sizeof *ys);
                    float *y4 = malloc((size_t)n_out * sizeof *y4);
                    fill_weights(type, w, n_out, n_in);
                    CHECK((q8 ? rs_repack_q8_0_r16 : rs_repack_q4_0_r16)(w, n_out, n_in, wr) == RS_OK,
                          "repack type %d %lld x %lld", type, (long long)n_out, (long long)n_in);
                    for (int64_t i = 0; i < N_TOK * n_in; i++)
                        x[i] = rand_uniform(-2.0f, 2.0f);
                    for (int64_t i = 0; i < 32; i++)
                        x[1 * n_in + i] *= 1e30f;
                    x[2 * n_in + n_in - 1] = 1e-40f;
                    x[3 * n_in + n_in / 2] = NAN;
                    CHECK(rs_matmul(pool, tt, wr, n_out, n_in, x, N_TOK, pre) == RS_OK, "tiled prefill");
                    CHECK(rs_matmul(pool, type, w, n_out, n_in, x, N_TOK, pre4) == RS_OK, "prefill");
                    for (int64_t t = 0; t < N_TOK; t++) {
                        CHECK(rs_simd_select("scalar") == RS_OK, "select scalar");
                        CHECK(rs_matmul(pool, tt, wr, n_out, n_in, x + t * n_in, 1, ys) == RS_OK, "tiled decode");
                        CHECK(rs_simd_select(path) == RS_OK, "select %s", path);
                        CHECK(rs_matmul(pool, tt, wr, n_out, n_in, x + t * n_in, 1, y) == RS_OK, "tiled decode");
                        CHECK(rs_matmul(pool, type, w, n_out, n_in, x + t * n_in, 1, y4) == RS_OK, "decode");
                        for (int64_t r = 0; r < n_out; r++) {
                            const float p = pre[t * n_out + r];
                            const int same = same_bits(y[r], ys[r]) && (q8 || same_bits(y[r], p));
                            CHECK(same && same_bits(p, pre4[t * n_out + r]),
                                  "%s type %d %d threads %lld x %lld token %lld row %lld: tiled decode %.9g, scalar "
                                  "%.9g, prefill %.9g, the type's prefill %.9g", path, type, nt, (long long)n_out,
                                  (long long)n_in, (long long)t, (long long)r, y[r], ys[r], p, pre4[t * n_out + r]);
                            if (t == 3) {
                                CHECK(isnan(y[r]), "%s: NaN activation gives %g", path, y[r]);
                                continue;
                            }
                            double mag = 0.0;
                            for (int64_t i = 0; i < n_in; i++)
                                mag += fabs(ref_element(type, w + r * rb, i) * (double)x[t * n_in + i]);
                            CHECK(fabs((double)y[r] - (double)y4[r]) <= 4e-5 * mag + 1e-38,
                                  "%s type %d tiled %.9g against decode %.9g", path, type, y[r], y4[r]);
                        }
                    }
                    int64_t rows[3] = {0, n_out - 1, n_out / 3};
                    float *g = malloc((size_t)(3 * n_in) * sizeof *g), *g4 = malloc((size_t)(3 * n_in) * sizeof *g4);
                    CHECK(rs_get_rows(tt, wr, n_out, n_in, rows, 3, g) == RS_OK, "tiled get_rows");
                    CHECK(rs_get_rows(type, w, n_out, n_in, rows, 3, g4) == RS_OK, "get_rows");
                    CHECK(memcmp(g, g4, (size_t)(3 * n_in) * sizeof *g) == 0, "tiled rows differ from the type's");
                    free(g), free(g4);
                    free(w), free(wr), free(x), free(pre), free(pre4), free(y), free(ys), free(y4);
                }
        }
        float x[32] = {0}, y[24];
        uint8_t w[24 * 34] = {0}, wr[24 * 34];
        CHECK(rs_matmul(pool, RS_TYPE_Q4_0_R16, w, 24, 32, x, 1, y) == RS_ERR_SHAPE, "r16: 24 rows refused");
        CHECK(rs_matmul(pool, RS_TYPE_Q8_0_R16, w, 24, 32, x, 1, y) == RS_ERR_SHAPE, "q8 r16: 24 rows refused");
        CHECK(rs_repack_q4_0_r16(w, 24, 32, wr) == RS_ERR_SHAPE, "repack: 24 rows refused");
        CHECK(rs_repack_q8_0_r16(w, 16, 33, wr) == RS_ERR_SHAPE, "repack: 33 inputs refused");
        CHECK(rs_repack_q4_0_r16(NULL, 16, 32, wr) == RS_ERR_NULL, "repack: NULL refused");
        rs_pool_free(pool);
    }
}

static void test_matmul(void)
{
    static const int types[] = {RS_TYPE_F32, RS_TYPE_F16, RS_TYPE_Q4_0, RS_TYPE_Q8_0, RS_TYPE_BF16, RS_TYPE_Q4_1,
                                RS_TYPE_Q5_0, RS_TYPE_Q5_1, RS_TYPE_Q4_K, RS_TYPE_Q5_K, RS_TYPE_Q6_K};
    enum { N_TYPES = sizeof types / sizeof types[0] };
    static const int64_t n_in_q[] = {32, 96, 256, 544};            /* 544 = 2 full chunks + a partial one */
    static const int64_t n_in_k[] = {256, 512, 768};               /* 768: a partial GEMM chunk of 256 */
    static const int64_t n_in_f[] = {1, 5, 37, 256, 300, 576};
    static const int64_t n_outs[] = {1, 7, 33, 64};
    static const int64_t n_toks[] = {1, 2, 7};
    for (int nt = 1; nt <= 4; nt++) {
        rs_pool *pool = rs_pool_create(nt);
        CHECK(pool != NULL, "rs_pool_create(%d)", nt);
        if (!pool)
            continue;
        for (size_t ti = 0; ti < N_TYPES; ti++) {
            const int type = types[ti];
            const int64_t blk = ref_block(type);
            const int64_t *n_ins = blk == 256 ? n_in_k : blk == 32 ? n_in_q : n_in_f;
            const size_t n_n_in = blk == 256 ? 3 : blk == 32 ? 4 : 6;
            for (size_t a = 0; a < n_n_in; a++)
                for (size_t b = 0; b < 4; b++)
                    for (size_t c = 0; c < 3; c++)
                        test_matmul_case(pool, type, n_outs[b], n_ins[a], n_toks[c]);
        }
        /* SmolLM2-135M's shapes (the K types: its 1536-wide down projection), once per thread count and type
         * (prefill with 3 tokens) */
        for (size_t ti = 0; ti < N_TYPES; ti++) {
            if (ref_block(types[ti]) == 256) {
                test_matmul_case(pool, types[ti], 192, 1536, 3);
                test_matmul_case(pool, types[ti], 576, 1536, 1);
                continue;
            }
            test_matmul_case(pool, types[ti], 192, 576, 3);
            test_matmul_case(pool, types[ti], 576, 1536, 1);
        }
        rs_pool_free(pool);
    }
}

static void test_get_rows(void)
{
    static const int types[] = {RS_TYPE_F32, RS_TYPE_F16, RS_TYPE_Q4_0, RS_TYPE_Q8_0};
    for (size_t ti = 0; ti < 4; ti++) {
        const int type = types[ti];
        const int64_t n_rows = 50, n_in = type == RS_TYPE_F32 || type == RS_TYPE_F16 ? 45 : 96;
        const int64_t rb = rs_row_bytes(type, n_in);
        uint8_t *w = malloc((size_t)(n_rows * rb));
        fill_weights(type, w, n_rows, n_in);
        const int64_t rows[] = {0, 49, 3, 3, 17};
        float out[5 * 96];
        CHECK(rs_get_rows(type, w, n_rows, n_in, rows, 5, out) == RS_OK, "rs_get_rows type %d", type);
        for (int64_t k = 0; k < 5; k++)
            for (int64_t i = 0; i < n_in; i++)
                CHECK(out[k * n_in + i] == (float)ref_element(type, w + rows[k] * rb, i),
                      "get_rows type %d row %lld [%lld]", type, (long long)rows[k], (long long)i);
        free(w);
    }
    /* Every binary16 bit pattern, through the public API. */
    uint16_t *all = malloc(65536 * sizeof *all);
    float *out = malloc(65536 * sizeof *out);
    int64_t rows[2048];
    for (uint32_t u = 0; u < 65536; u++)
        all[u] = (uint16_t)u;
    for (int64_t r = 0; r < 2048; r++)
        rows[r] = r;
    CHECK(rs_get_rows(RS_TYPE_F16, all, 2048, 32, rows, 2048, out) == RS_OK, "rs_get_rows F16 exhaustive");
    for (uint32_t u = 0; u < 65536; u++) {
        const double want = half_value((uint16_t)u);
        CHECK(isnan(want) ? isnan(out[u]) : (out[u] == want && !signbit(out[u]) == !signbit(want)),
              "get_rows F16 %04x -> %a", u, out[u]);
    }
    free(all);
    free(out);
}

/* ---- errors: a status, never a crash ---------------------------------------------------------------------- */
static void test_errors(void)
{
    rs_pool *pool = rs_pool_create(2);
    float x[64] = {0}, y[64];
    _Alignas(8) uint8_t w[34 * 4] = {0};
    const int64_t rows[2] = {0, 5};
    const int64_t huge = (int64_t)1 << 62;

    CHECK(rs_pool_create(0) == NULL && rs_pool_create(-3) == NULL && rs_pool_create(257) == NULL, "bad n_threads");
    CHECK(rs_pool_n_threads(pool) == 2 && rs_pool_n_threads(NULL) == 0, "rs_pool_n_threads");
    rs_pool_free(NULL);

    CHECK(rs_row_bytes(RS_TYPE_F32, 5) == 20 && rs_row_bytes(RS_TYPE_F16, 5) == 10, "row bytes float");
    CHECK(rs_row_bytes(RS_TYPE_Q8_0, 64) == 68 && rs_row_bytes(RS_TYPE_Q4_0, 64) == 36, "row bytes quant");
    CHECK(rs_row_bytes(RS_TYPE_Q4_0, 33) == -1 && rs_row_bytes(RS_TYPE_F32, 0) == -1, "row bytes bad n");
    CHECK(rs_row_bytes(4, 32) == -1 && rs_row_bytes(RS_TYPE_F32, INT64_MAX) == -1, "row bytes bad type/overflow");

    CHECK(rs_matmul(pool, RS_TYPE_Q8_0, w, 2, 64, x, 1, y) == RS_OK, "valid call");
    CHECK(rs_matmul(NULL, RS_TYPE_Q8_0, w, 2, 64, x, 1, y) == RS_ERR_NULL, "NULL pool");
    CHECK(rs_matmul(pool, RS_TYPE_Q8_0, NULL, 2, 64, x, 1, y) == RS_ERR_NULL, "NULL w");
    CHECK(rs_matmul(pool, RS_TYPE_Q8_0, w, 2, 64, NULL, 1, y) == RS_ERR_NULL, "NULL x");
    CHECK(rs_matmul(pool, RS_TYPE_Q8_0, w, 2, 64, x, 1, NULL) == RS_ERR_NULL, "NULL y");
    CHECK(rs_matmul(pool, 4, w, 2, 64, x, 1, y) == RS_ERR_TYPE, "bad type (Q4_2, removed from ggml)");
    CHECK(rs_matmul_wt(pool, RS_TYPE_Q4_K, w, 256, 2, x, 1, y) == RS_ERR_TYPE, "a dense-only type by input channel");
    CHECK(rs_matmul(pool, -1, w, 2, 64, x, 1, y) == RS_ERR_TYPE, "negative type");
    CHECK(rs_matmul(pool, RS_TYPE_Q4_0, w, 2, 33, x, 1, y) == RS_ERR_SHAPE, "n_in %% 32");
    CHECK(rs_matmul(pool, RS_TYPE_Q8_0, w, 0, 64, x, 1, y) == RS_ERR_SHAPE, "n_out 0");
    CHECK(rs_matmul(pool, RS_TYPE_Q8_0, w, -2, 64, x, 1, y) == RS_ERR_SHAPE, "n_out < 0");
    CHECK(rs_matmul(pool, RS_TYPE_Q8_0, w, 2, 0, x, 1, y) == RS_ERR_SHAPE, "n_in 0");
    CHECK(rs_matmul(pool, RS_TYPE_Q8_0, w, 2, 64, x, 0, y) == RS_ERR_SHAPE, "n_tok 0");
    CHECK(rs_matmul(pool, RS_TYPE_Q8_0, w, huge, 64, x, 1, y) == RS_ERR_SHAPE, "n_out * row_bytes overflows");
    CHECK(rs_matmul(pool, RS_TYPE_F16, w, huge / 2, 1, x, 1, y) == RS_ERR_SHAPE, "n_out * 4 overflows");
    CHECK(rs_matmul(pool, RS_TYPE_F32, w, 1, huge, x, 1, y) == RS_ERR_SHAPE, "n_in overflows");
    CHECK(rs_matmul(pool, RS_TYPE_F32, w, 1, 8, x, huge, y) == RS_ERR_SHAPE, "n_tok * n_in overflows");
    CHECK(rs_matmul(pool, RS_TYPE_F32, w, 3, 1, x, huge / 4, y) == RS_ERR_SHAPE, "n_tok * n_out overflows");
    CHECK(rs_matmul(pool, RS_TYPE_F32, w + 2, 1, 8, x, 1, y) == RS_ERR_ALIGN, "misaligned F32 w");
    CHECK(rs_matmul(pool, RS_TYPE_Q8_0, w + 1, 1, 32, x, 1, y) == RS_ERR_ALIGN, "misaligned Q8_0 w");
    CHECK(rs_matmul(pool, RS_TYPE_F32, w, 1, 8, (const float *)((const char *)x + 1), 1, y) == RS_ERR_ALIGN,
          "misaligned x");

    /* rs_matmul_wt: wt holds n_in rows of n_out (blocks along the outputs) */
    CHECK(rs_matmul_wt(pool, RS_TYPE_Q8_0, w, 64, 2, x, 1, y) == RS_OK, "valid wt call");
    CHECK(rs_matmul_wt(pool, RS_TYPE_Q8_0, w, 32, 4, x, 2, y) == RS_OK, "valid wt prompt");
    CHECK(rs_matmul_wt(NULL, RS_TYPE_Q8_0, w, 64, 2, x, 1, y) == RS_ERR_NULL, "wt: NULL pool");
    CHECK(rs_matmul_wt(pool, RS_TYPE_Q8_0, NULL, 64, 2, x, 1, y) == RS_ERR_NULL, "wt: NULL wt");
    CHECK(rs_matmul_wt(pool, RS_TYPE_Q8_0, w, 64, 2, NULL, 1, y) == RS_ERR_NULL, "wt: NULL x");
    CHECK(rs_matmul_wt(pool, 3, w, 64, 2, x, 1, y) == RS_ERR_TYPE, "wt: bad type");
    CHECK(rs_matmul_wt(pool, RS_TYPE_Q4_0, w, 33, 2, x, 1, y) == RS_ERR_SHAPE, "wt: n_out %% 32");
    CHECK(rs_matmul_wt(pool, RS_TYPE_Q8_0, w, 64, 0, x, 1, y) == RS_ERR_SHAPE, "wt: n_in 0");
    CHECK(rs_matmul_wt(pool, RS_TYPE_Q8_0, w, 64, 2, x, 0, y) == RS_ERR_SHAPE, "wt: n_tok 0");
    CHECK(rs_matmul_wt(pool, RS_TYPE_Q8_0, w, 64, huge, x, 1, y) == RS_ERR_SHAPE, "wt: n_in * row_bytes overflows");
    CHECK(rs_matmul_wt(pool, RS_TYPE_F32, w, 8, 1, x, huge, y) == RS_ERR_SHAPE, "wt: n_tok * n_out overflows");
    CHECK(rs_matmul_wt(pool, RS_TYPE_F32, w + 2, 8, 1, x, 1, y) == RS_ERR_ALIGN, "wt: misaligned F32 wt");

    CHECK(rs_get_rows(RS_TYPE_Q8_0, w, 4, 32, rows, 1, y) == RS_OK, "valid get_rows");
    CHECK(rs_get_rows(RS_TYPE_Q8_0, w, 4, 32, rows, 2, y) == RS_ERR_INDEX, "row 5 of 4");
    CHECK(rs_get_rows(RS_TYPE_Q8_0, w, 4, 32, rows, 0, y) == RS_ERR_SHAPE, "n 0");
    CHECK(rs_get_rows(RS_TYPE_Q8_0, w, 4, 33, rows, 1, y) == RS_ERR_SHAPE, "n_in %% 32");
    CHECK(rs_get_rows(RS_TYPE_Q8_0, w, huge, 32, rows, 1, y) == RS_ERR_SHAPE, "n_rows overflow");
    CHECK(rs_get_rows(RS_TYPE_Q8_0, w, 4, 32, NULL, 1, y) == RS_ERR_NULL, "NULL rows");
    CHECK(rs_get_rows(5, w, 4, 32, rows, 1, y) == RS_ERR_TYPE, "bad type");

    for (int s = 1; s >= -9; s--)
        CHECK(rs_strerror(s) != NULL && rs_strerror(s)[0] != '\0', "rs_strerror(%d)", s);
    const char *want = getenv("RSPARSE_SIMD");
    if (want && strstr(rs_simd_paths(), want))
        CHECK(strcmp(rs_simd_path(), want) == 0, "RSPARSE_SIMD=%s gives %s", want, rs_simd_path());
    rs_pool_free(pool);
}

/* ---- the pool: every slice runs exactly once per job, results are visible to the caller ----------------- */
struct count_job {
    int64_t counts[8];  /* slice i writes only counts[i]: a race here would show in TSan, a lost wake-up here */
    int nth_seen[8];
};

static void count_slice(void *ctx, int ith, int nth)
{
    struct count_job *j = ctx;
    j->counts[ith]++;
    j->nth_seen[ith] = nth;
}

struct caller_arg {
    rs_pool *pool;
    int n_jobs;
    struct count_job job;
};

static void *caller_main(void *arg)
{
    struct caller_arg *a = arg;
    for (int k = 0; k < a->n_jobs; k++)
        rs_pool_run(a->pool, count_slice, &a->job);
    return NULL;
}

static void test_pool(void)
{
    for (int nt = 1; nt <= 8; nt++) {
        rs_pool *pool = rs_pool_create(nt);
        CHECK(pool != NULL, "rs_pool_create(%d)", nt);
        if (!pool)
            continue;
        struct count_job job = {{0}, {0}};
        const int n_jobs = 3000;
        for (int k = 0; k < n_jobs; k++)
            rs_pool_run(pool, count_slice, &job);
        for (int i = 0; i < nt; i++)
            CHECK(job.counts[i] == n_jobs && job.nth_seen[i] == nt, "pool %d slice %d ran %lld times", nt, i,
                  (long long)job.counts[i]);
        rs_pool_free(pool);
    }
    /* Two threads share one pool: jobs must not interleave. */
    rs_pool *pool = rs_pool_create(3);
    struct caller_arg a = {pool, 2000, {{0}, {0}}}, b = {pool, 2000, {{0}, {0}}};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, caller_main, &a);
    pthread_create(&tb, NULL, caller_main, &b);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    for (int i = 0; i < 3; i++)
        CHECK(a.job.counts[i] == 2000 && b.job.counts[i] == 2000, "shared pool slice %d", i);
    rs_pool_free(pool);
    /* Create and free quickly, with and without a job in between. */
    for (int k = 0; k < 200; k++) {
        rs_pool *p = rs_pool_create(1 + k % 4);
        struct count_job job = {{0}, {0}};
        if (k % 2)
            rs_pool_run(p, count_slice, &job);
        rs_pool_free(p);
    }
}

int main(void)
{
    printf("simd path at start-up: %s; runnable: %s\n", rs_simd_path(), rs_simd_paths());
    test_fp16();
    test_get_rows();
    test_errors();
    test_sparse_errors();
    test_pool();
    test_quantize_act();
    /* Every kernel path this CPU runs, each against the double-precision references. */
    char paths[128];
    snprintf(paths, sizeof paths, "%s", rs_simd_paths());
    for (char *save = NULL, *p = strtok_r(paths, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        CHECK(rs_simd_select(p) == RS_OK && strcmp(rs_simd_path(), p) == 0, "select %s", p);
        const int before = failures;
        test_matmul();
        rs_pool *pool = rs_pool_create(3);
        CHECK(pool != NULL, "rs_pool_create(3)");
        if (pool)
            test_quant_paths(pool, p);
        rs_pool_free(pool);
        test_sparse();
        test_sparse_int8_exact();
        test_r16(p);
        printf("path %s: %s\n", p, failures == before ? "ok" : "FAILED");
    }
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
