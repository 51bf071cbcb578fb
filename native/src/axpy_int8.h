/* axpy_int8.h -- the x86 sparse Q8_0 and Q4_0 kernels: int8 coefficients per group of kept rows (8 for Q8_0, 16
 * for Q4_0) and chunk of blocks (sparse_int8.h defines the arithmetic; kernels_scalar.c is its reference, matched
 * bit for bit), rows summed with integer dot products. 256-bit code, included after kernels_simd.h (whose group_rows
 * and prefetch_rows it uses) by kernels_avx2.c (AVX2 and, built again with RS_AVXVNNI, AVX-VNNI) and by
 * kernels_avx512.c (AVX-512 as AVX2, and with RS_AVX512VNNI as AVX-VNNI: their 512-bit kernels lost to these).
 *
 * The dot products sum adjacent bytes, so per output the kept rows' weights must sit side by side; kept rows are
 * chosen per token, so they are interleaved in registers with vpunpck, which works within 128-bit lanes: the
 * outputs come out permuted, and the permutation is undone once per group and block, on the int32 sums.
 *   AVX-VNNI: vpdpbusd (u8 x s8, 4 products added to an int32 lane), on quads of rows (two vpunpck levels: bytes,
 *             then words). Q4_0's nibbles 0..15 are the u8 side and the coefficients the s8 side, "- 8" being
 *             - 8 * sum(k) per group and block; Q8_0's weights are made u8 by flipping their sign bit (w + 128),
 *             taken off as - 128 * sum(k).
 *   AVX2:     Q4_0: vpmaddubsw (u8 x s8, 2 products added in int16) on pairs of rows (one vpunpck level), the int16
 *             sums kept over the whole group. Q8_0: the int16 pair loop (weights widened, vpmaddwd) with the int8
 *             coefficients: vpmaddubsw would need |w| and k with w's sign (w + 128 overflows its int16 sums), and
 *             those two instructions cost more than they save (docs/SPEED.md).
 * Measured (docs/SPEED.md, rows in L2, one Zen 3 thread, against the int16 kernels): AVX2 Q4_0 1.24-1.29x, Q8_0
 * 0.93-0.98x; on a Sapphire Rapids-class VM (2026-12-08) both VNNI forms read cached rows at 26-30 GB/s (Q4_0,
 * Llama-7B shapes, 2 threads) where AVX-512's int16 kernel read 20-21. */
#ifndef RS_AXPY_INT8_H
#define RS_AXPY_INT8_H

#include "sparse_int8.h"
#include "scales8_x86.h"

/* vpdpbusd on 256-bit registers: AVX-VNNI's VEX form, or AVX512-VNNI's EVEX form (with AVX512VL) on the
 * avx512vnni path, which takes these kernels too (kernels_avx512.c says why). */
#if defined(RS_AVXVNNI) || defined(RS_AVX512VNNI)
#define RS_I8_VNNI 1
#endif


static inline __m256i hmax_epi32(__m256i v)
{
    v = _mm256_max_epi32(v, _mm256_permute2x128_si256(v, v, 1));
    v = _mm256_max_epi32(v, _mm256_shuffle_epi32(v, 0x4E));
    return _mm256_max_epi32(v, _mm256_shuffle_epi32(v, 0xB1));
}

static inline __m256i hsum_epi32(__m256i v)
{
    v = _mm256_add_epi32(v, _mm256_permute2x128_si256(v, v, 1));
    v = _mm256_add_epi32(v, _mm256_shuffle_epi32(v, 0x4E));
    return _mm256_add_epi32(v, _mm256_shuffle_epi32(v, 0xB1));
}

/* The 16 coefficients of each of nb blocks from their products c (block j's at c[16 j ..]) on one scale:
 * amax_bits is max |c| as an integer bit pattern in every lane (for non-negative floats that orders them, and
 * NaN and inf sort above every finite value, so one compare tells whether a c is not finite). */
static inline void round_blocks(const float *c, int n_rows, int nb, __m256i amax_bits, int8_t (*k)[RS_I8_ROWS],
                                float *s, int32_t *sum)
{
    const int finite = _mm256_cvtsi256_si32(amax_bits) < 0x7F800000;
    const __m256 amax = _mm256_max_ps(_mm256_castsi256_ps(amax_bits), _mm256_set1_ps(1e-30f));
    const __m256 inv = _mm256_div_ps(_mm256_set1_ps(127.0f), amax);
    const float scale = finite ? _mm256_cvtss_f32(amax) * (1.0f / 127.0f) : NAN;
    for (int j = 0; j < nb; j++) {
        /* |k| <= 127 when finite; otherwise anything (S is NaN), and the sum 0 */
        const __m256i k0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_load_ps(c + 16 * j), inv));
        const __m256i k1 = n_rows > 8 ? _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_load_ps(c + 16 * j + 8), inv))
                                      : _mm256_setzero_si256();
        const __m128i w0 = _mm_packs_epi32(_mm256_castsi256_si128(k0), _mm256_extracti128_si256(k0, 1));
        const __m128i w1 = _mm_packs_epi32(_mm256_castsi256_si128(k1), _mm256_extracti128_si256(k1, 1));
        _mm_storeu_si128((__m128i *)k[j], _mm_packs_epi16(w0, w1));
        s[j] = scale;
        if (sum)
            sum[j] = finite ? _mm256_cvtsi256_si32(hsum_epi32(_mm256_add_epi32(k0, k1))) : 0;
    }
}

/* The coefficients of nb blocks (bsize bytes apart, from byte off) of the group's n_rows (8 or 16) rows,
 * activations xs: k[j] (row i's in byte i), S in s[j] and sum_i k in sum[j] (unless sum is NULL), one scale for the
 * chunk -- or block by block if a c is not finite (sparse_int8.h). Made in a loop of their own before the blocks'
 * rows are read: beside the dot products, their long dependent chain (max, divide, round) would hold the loop back. */
static inline void chunk_coefficients(int n_rows, const float *xs, const uint8_t *const *rows, int64_t off,
                                      int64_t bsize, int nb, int8_t (*k)[RS_I8_ROWS], float *s, int32_t *sum)
{
    alignas(32) float c[RS_I8_CHUNK * 16];  /* block j's products at c[16 j ..], n_rows (8 or 16) of them */
    const int nh = n_rows / 8;
    const __m256 x0 = _mm256_loadu_ps(xs), x1 = nh > 1 ? _mm256_loadu_ps(xs + 8) : x0;
    const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
    __m256i amax_bits = _mm256_setzero_si256();
    for (int j = 0; j < nb; j++)
        for (int h = 0; h < nh; h++) {
            const __m256 v = _mm256_mul_ps(h ? x1 : x0, _mm256_cvtph_ps(scales8(rows + 8 * h, off + j * bsize)));
            _mm256_store_ps(c + 16 * j + 8 * h, v);
            amax_bits = _mm256_max_epi32(amax_bits, _mm256_and_si256(_mm256_castps_si256(v), abs_mask));
        }
    amax_bits = hmax_epi32(amax_bits);
    if (_mm256_cvtsi256_si32(amax_bits) < 0x7F800000) {
        round_blocks(c, n_rows, nb, amax_bits, k, s, sum);
        return;
    }
    for (int j = 0; j < nb; j++) {
        __m256i a = _mm256_and_si256(_mm256_load_si256((const __m256i *)(c + 16 * j)), abs_mask);
        if (nh > 1)
            a = _mm256_max_epi32(a, _mm256_and_si256(_mm256_load_si256((const __m256i *)(c + 16 * j + 8)), abs_mask));
        round_blocks(c + 16 * j, n_rows, 1, hmax_epi32(a), k + j, s + j, sum ? sum + j : NULL);
    }
}

/* acc + the sums of 4 products u8 x s8 per int32 lane (exact where AVX2's int16 pair sums do not saturate: the
 * callers keep them within 2 * 128 * 127). */
static inline __m256i dot4(__m256i acc, __m256i u, __m256i s)
{
#if defined(RS_AVXVNNI)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#elif defined(RS_AVX512VNNI)
    return _mm256_dpbusd_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

/* Four rows' 32 bytes (or two quads' 16, one per 128-bit lane) as quads: q[t] holds, per lane, bytes 4t .. 4t + 3
 * of rows a, b, c, d in that order, output by output. */
static inline void quads(__m256i a, __m256i b, __m256i c, __m256i d, __m256i *q)
{
    const __m256i ab_lo = _mm256_unpacklo_epi8(a, b), ab_hi = _mm256_unpackhi_epi8(a, b);
    const __m256i cd_lo = _mm256_unpacklo_epi8(c, d), cd_hi = _mm256_unpackhi_epi8(c, d);
    q[0] = _mm256_unpacklo_epi16(ab_lo, cd_lo);
    q[1] = _mm256_unpackhi_epi16(ab_lo, cd_lo);
    q[2] = _mm256_unpacklo_epi16(ab_hi, cd_hi);
    q[3] = _mm256_unpackhi_epi16(ab_hi, cd_hi);
}

/* y[0..32) = fma(float(acc + off), S, y): o[t] holds outputs 8t .. 8t + 7 in order. */
static inline void add_block(const __m256i *o, int32_t off, float s, float *y)
{
    const __m256 sv = _mm256_set1_ps(s);
    const __m256i ov = _mm256_set1_epi32(off);
    for (int t = 0; t < 4; t++) {
        const __m256 v = _mm256_cvtepi32_ps(_mm256_add_epi32(o[t], ov));
        _mm256_storeu_ps(y + 8 * t, _mm256_fmadd_ps(v, sv, _mm256_loadu_ps(y + 8 * t)));
    }
}

#ifdef RS_I8_VNNI
/* One Q8_0 block of the group's 8 rows, coefficients k (8 bytes): o[t] = outputs 8t .. 8t + 7 of the sum, plus
 * 128 * sum(k) (the weights' sign bit flipped makes them w + 128 for vpdpbusd's unsigned side). Per quad of rows,
 * acc[t] holds outputs 4t .. 4t + 3 in its low lane and 16 + 4t .. in its high one. */
#define Q8_OFFSET 128
static inline void block_q8_0_sums(const uint8_t *const *r, int64_t off, const int8_t *k, __m256i *o)
{
    __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int p = 0; p < RS_I8_ROWS_Q8_0 / 4; p++) {
        __m256i q[4];
        const uint8_t *const *rq = r + 4 * p;
        quads(_mm256_loadu_si256((const __m256i *)(rq[0] + off + 2)),
              _mm256_loadu_si256((const __m256i *)(rq[1] + off + 2)),
              _mm256_loadu_si256((const __m256i *)(rq[2] + off + 2)),
              _mm256_loadu_si256((const __m256i *)(rq[3] + off + 2)), q);
        int32_t kq;
        memcpy(&kq, k + 4 * p, sizeof kq);
        const __m256i kv = _mm256_set1_epi32(kq);
        for (int t = 0; t < 4; t++)
            acc[t] = dot4(acc[t], _mm256_xor_si256(q[t], _mm256_set1_epi8((char)0x80)), kv);
    }
    o[0] = _mm256_permute2x128_si256(acc[0], acc[1], 0x20);
    o[1] = _mm256_permute2x128_si256(acc[2], acc[3], 0x20);
    o[2] = _mm256_permute2x128_si256(acc[0], acc[1], 0x31);
    o[3] = _mm256_permute2x128_si256(acc[2], acc[3], 0x31);
}
#else
/* AVX2, without vpdpbusd: the weights widened to int16 and two rows' interleaved, times their two coefficients
 * with vpmaddwd -- the int16 kernels' loop with int8 coefficients, so the same sums as every other path. Quads with
 * vpmaddubsw (|w| times k with w's sign, vpabsb and vpsignb, then vpmaddwd by ones) read cached rows at 12.8 GB/s
 * against 18.9 for the int16 loop (1 Zen 3 thread beside other work), the two sign instructions and the second
 * multiply taking the same ports as the products. acc[t]: outputs (0-3 | 8-11), (4-7 | 12-15), (16-19 | 24-27),
 * (20-23 | 28-31) for t = 0..3, vpunpck working within 128-bit lanes. */
#define Q8_OFFSET 0
static inline __m256i widen_i8(const uint8_t *p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p)); }

static inline void block_q8_0_sums(const uint8_t *const *r, int64_t off, const int8_t *k, __m256i *o)
{
    alignas(32) int16_t k16[RS_I8_ROWS];  /* the coefficients as words, each pair broadcast from memory below */
    _mm256_store_si256((__m256i *)k16, widen_i8((const uint8_t *)k));
    __m256i acc[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    for (int p = 0; p < RS_I8_ROWS_Q8_0 / 2; p++) {
        const uint8_t *a = r[2 * p] + off + 2, *b = r[2 * p + 1] + off + 2;
        const __m256i a0 = widen_i8(a), a1 = widen_i8(a + 16), b0 = widen_i8(b), b1 = widen_i8(b + 16);
        int32_t pair;
        memcpy(&pair, &k16[2 * p], sizeof pair);
        const __m256i kp = _mm256_set1_epi32(pair);
        acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(_mm256_unpacklo_epi16(a0, b0), kp));
        acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(_mm256_unpackhi_epi16(a0, b0), kp));
        acc[2] = _mm256_add_epi32(acc[2], _mm256_madd_epi16(_mm256_unpacklo_epi16(a1, b1), kp));
        acc[3] = _mm256_add_epi32(acc[3], _mm256_madd_epi16(_mm256_unpackhi_epi16(a1, b1), kp));
    }
    o[0] = _mm256_permute2x128_si256(acc[0], acc[1], 0x20);
    o[1] = _mm256_permute2x128_si256(acc[0], acc[1], 0x31);
    o[2] = _mm256_permute2x128_si256(acc[2], acc[3], 0x20);
    o[3] = _mm256_permute2x128_si256(acc[2], acc[3], 0x31);
}
#endif

/* y[0..n) += sum_k xk[k] * wt[idx[k]][o0 ..), R kept rows at a time: per chunk of blocks the group's int8
 * coefficients (chunk_coefficients), per block the rows' integer sums (block_<type>_sums), less offset * sum(k)
 * (the weights' unsigned bias: 8 for Q4_0's nibbles, Q8_OFFSET for Q8_0), scaled once (add_block). Rows `AHEAD`
 * groups on are prefetched as the kernel goes. */
#define AXPY_INT8(type, R, offset)                                                                           \
    static void axpy_int8_##type(const void *wt, int64_t rb, const int32_t *idx, const float *xk,             \
                                 int64_t n_kept, int64_t o0, int64_t n, float *y)                           \
    {                                                                                                        \
        const int64_t bsize = (int64_t)sizeof(block_##type), n_blocks = n / RS_QK;                         \
        alignas(16) int8_t k[RS_I8_CHUNK][RS_I8_ROWS];                                                       \
        float s[RS_I8_CHUNK];                                                                                \
        int32_t sum[RS_I8_CHUNK];                                                                            \
        for (int64_t g = 0; g < n_kept; g += (R)) {                                                          \
            const uint8_t *rows[R], *next[R];                                                                \
            float xs[R];                                                                                     \
            group_rows(wt, rb, idx, xk, n_kept, g, (R), o0 / RS_QK * bsize, rows, next, xs);                 \
            for (int64_t b0 = 0, nb; b0 < n_blocks; b0 += nb) {                                             \
                nb = min64(RS_I8_CHUNK - (o0 / RS_QK + b0) % RS_I8_CHUNK, n_blocks - b0);                    \
                chunk_coefficients((R), xs, rows, b0 * bsize, bsize, (int)nb, k, s, (offset) ? sum : NULL);  \
                for (int j = 0; j < nb; j++) {                                                               \
                    const int64_t off = (b0 + j) * bsize;                                                    \
                    prefetch_rows(next, (R), off);                                                           \
                    __m256i o[4];                                                                            \
                    block_##type##_sums(rows, off, k[j], o);                                                 \
                    add_block(o, (offset) ? -(offset) * sum[j] : 0, s[j], y + (b0 + j) * RS_QK);             \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }
AXPY_INT8(q8_0, RS_I8_ROWS_Q8_0, Q8_OFFSET)

#ifdef RS_I8_VNNI
/* One Q4_0 block of the group's 16 rows, coefficients k (16 bytes): o[t] = outputs 8t .. 8t + 7 of sum_i k_i n_io,
 * n the nibbles 0..15 (the caller takes off 8 * sum(k)). A vector holds two quads of rows, one per lane; per lane,
 * lo[t] sums outputs 4t .. 4t + 3 (low nibbles) and hi[t] 16 + 4t .. (high nibbles). */
static inline void oct_q4_0(const uint8_t *const *r, int64_t off, const int8_t *k8, __m256i *lo, __m256i *hi)
{
    __m256i v[4], q[4];
    for (int i = 0; i < 4; i++)
        v[i] = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(r[i] + off + 2))),
                                       _mm_loadu_si128((const __m128i *)(r[i + 4] + off + 2)), 1);
    quads(v[0], v[1], v[2], v[3], q);
    int64_t k64;
    memcpy(&k64, k8, sizeof k64);
    /* rows 0-3's coefficients repeated in the low lane, rows 4-7's in the high one */
    const __m256i kv = _mm256_shuffle_epi8(_mm256_set1_epi64x(k64),
                                           _mm256_setr_epi8(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3,
                                                            4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7));
    const __m256i m = _mm256_set1_epi8(0x0F);
    for (int t = 0; t < 4; t++) {
        lo[t] = dot4(lo[t], _mm256_and_si256(q[t], m), kv);
        hi[t] = dot4(hi[t], _mm256_and_si256(_mm256_srli_epi16(q[t], 4), m), kv);
    }
}

/* Outputs a[0..4) of one lane each, the two lanes added: 8 outputs in order from a and b. */
static inline __m256i lanes_added(__m256i a, __m256i b)
{
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

static inline void block_q4_0_sums(const uint8_t *const *r, int64_t off, const int8_t *k, __m256i *o)
{
    __m256i lo[4], hi[4];
    for (int t = 0; t < 4; t++)
        lo[t] = hi[t] = _mm256_setzero_si256();
    oct_q4_0(r, off, k, lo, hi);
    oct_q4_0(r + 8, off, k + 8, lo, hi);
    o[0] = lanes_added(lo[0], lo[1]);
    o[1] = lanes_added(lo[2], lo[3]);
    o[2] = lanes_added(hi[0], hi[1]);
    o[3] = lanes_added(hi[2], hi[3]);
}
#else
/* AVX2: pairs of rows are enough for vpmaddubsw (2 products an int16 lane), so rows are interleaved one level
 * only: a vector holds rows a, b in its low lane and c, d in its high one, byte by byte. The int16 sums stay within
 * 8 * 15 * 127 a lane over the group's 16 rows, and 16 * 15 * 127 once the lanes are added, so they are widened
 * only then. o[t] = outputs 8t .. 8t + 7 of sum_i k_i n_io (the caller takes off 8 * sum(k)). */
static inline void block_q4_0_sums(const uint8_t *const *r, int64_t off, const int8_t *k, __m256i *o)
{
    __m256i acc[4];
    for (int t = 0; t < 4; t++)
        acc[t] = _mm256_setzero_si256();
    const __m256i m = _mm256_set1_epi8(0x0F);
    const __m256i spread = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1,
                                            2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    for (int p = 0; p < RS_I8_ROWS_Q4_0; p += 4) {
        const __m256i ac = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(r[p] + off + 2))),
            _mm_loadu_si128((const __m128i *)(r[p + 2] + off + 2)), 1);
        const __m256i bd = _mm256_inserti128_si256(
            _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(r[p + 1] + off + 2))),
            _mm_loadu_si128((const __m128i *)(r[p + 3] + off + 2)), 1);
        const __m256i b0 = _mm256_unpacklo_epi8(ac, bd), b1 = _mm256_unpackhi_epi8(ac, bd);  /* bytes 0-7, 8-15 */
        int32_t k4;
        memcpy(&k4, k + p, sizeof k4);
        const __m256i kv = _mm256_shuffle_epi8(_mm256_set1_epi32(k4), spread);  /* (k_a, k_b) | (k_c, k_d) */
        acc[0] = _mm256_add_epi16(acc[0], _mm256_maddubs_epi16(_mm256_and_si256(b0, m), kv));
        acc[1] = _mm256_add_epi16(acc[1], _mm256_maddubs_epi16(_mm256_and_si256(b1, m), kv));
        acc[2] = _mm256_add_epi16(acc[2], _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(b0, 4), m), kv));
        acc[3] = _mm256_add_epi16(acc[3], _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m), kv));
    }
    for (int t = 0; t < 4; t++) {
        const __m256i both = _mm256_add_epi16(acc[t], _mm256_permute2x128_si256(acc[t], acc[t], 1));
        o[t] = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(both));
    }
}
#endif

AXPY_INT8(q4_0, RS_I8_ROWS_Q4_0, 8)

#endif /* RS_AXPY_INT8_H */
