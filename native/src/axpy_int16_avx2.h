/* axpy_int16_avx2.h -- AVX2's sparse Q8_0 and Q4_0 kernels: the kept rows' activations as int16, rows summed in
 * pairs with vpmaddwd. Included by kernels_avx2.c after kernels_simd.h (the loop uses its helpers).
 *
 * The generic sparse kernel turns every weight into a float and multiplies it by its row's activation: for 8
 * weights a widening load, a conversion and an FMA (Q4_0: also a mask or shift and a subtraction). On a Zen 5 core
 * that arithmetic, not memory, bounds it: ~31 GB/s a thread for Q8_0 and ~11 for Q4_0 from L2, below what two cores
 * stream from DRAM. Here each group of kept rows (8, or 16 for Q4_0) has, per block of 32 outputs, coefficients
 * c_i = x_i * d_i (activation times block scale), rounded to int16 on a shared scale S = max |c_i| / 32767 (the
 * dense kernels' rounding, kernels.h, with rows in place of elements). Two rows' int8 weights (or nibbles) are
 * interleaved as int16 pairs and one vpmaddwd gives, per output, c_a q_a + c_b q_b exactly in int32; the group's
 * sums take one conversion and one FMA by S per 8 outputs. Q4_0's "- 8" becomes - 8 * sum(c_i), once per block.
 * Measured on Zen 5, rows in cache, 4096 outputs: one thread, Q8_0 30 -> 35 GB/s and Q4_0 11 -> 18 GB/s (C
 * microbenchmarks); rs_sparse_matvec on 1536 channels, 2 threads, 50% kept, Q8_0 56 -> 63 and Q4_0 21 -> 31 GB/s.
 * The loop is axpy_int16.h's; this file gives it AVX2's primitives. */
#ifndef RS_AXPY_INT16_AVX2_H
#define RS_AXPY_INT16_AVX2_H

#include "axpy_int16.h"

#define Q8_ROWS 8   /* 16: +1.5% from L2, for twice as many rows sharing a scale */
#define Q4_ROWS 16  /* its coefficients cost as much as Q8_0's for rows half as long: 16 rows, 18% faster than 8 */

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

/* One block's coefficients for a group of n_rows (8 or 16) rows with activations xs: cq (row i's in word i), S, and
 * sum(cq) (for Q4_0's offset). max |c| is taken on the bit patterns, as integers: for non-negative
 * floats that orders them, and puts NaN and inf above every finite value, so one compare tells whether the block
 * has a non-finite coefficient; then S is NaN and the block's 32 outputs come out NaN, as the float kernel's would.
 * S never goes below 1e-30 / 32767, so 1 / S stays finite for tiny and subnormal coefficients (they round to 0 or
 * to a few units). */
static inline void group_coefficients(int n_rows, const float *xs, const uint8_t *const *rows, int64_t off,
                                      int16_t *cq, float *s, int32_t *sum)
{
    const int nh = n_rows / 8;
    __m256 c[2];
    __m256i amax_bits = _mm256_setzero_si256();
    for (int h = 0; h < nh; h++) {
        c[h] = _mm256_mul_ps(_mm256_loadu_ps(xs + 8 * h), _mm256_cvtph_ps(scales8(rows + 8 * h, off)));
        amax_bits = _mm256_max_epi32(amax_bits, _mm256_and_si256(_mm256_castps_si256(c[h]),
                                                                 _mm256_set1_epi32(0x7FFFFFFF)));
    }
    amax_bits = hmax_epi32(amax_bits);
    const __m256 amax = _mm256_max_ps(_mm256_castsi256_ps(amax_bits), _mm256_set1_ps(1e-30f));
    const __m256 inv = _mm256_div_ps(_mm256_set1_ps(32767.0f), amax);
    __m256i total = _mm256_setzero_si256();
    for (int h = 0; h < nh; h++) {
        const __m256i ci = _mm256_cvtps_epi32(_mm256_mul_ps(c[h], inv));  /* |ci| <= 32767 when finite */
        _mm_storeu_si128((__m128i *)(cq + 8 * h),
                         _mm_packs_epi32(_mm256_castsi256_si128(ci), _mm256_extracti128_si256(ci, 1)));
        total = _mm256_add_epi32(total, ci);
    }
    const int finite = _mm256_cvtsi256_si32(amax_bits) < 0x7F800000;
    *s = finite ? _mm256_cvtss_f32(amax) * (1.0f / 32767.0f) : NAN;
    *sum = finite ? _mm256_cvtsi256_si32(hsum_epi32(total)) : 0;  /* |sum| <= 16 * 32767 */
}

/* The coefficients of nb blocks (bsize bytes apart, from byte off) on one shared scale: cq (block j's in
 * cq[j * n_rows ..]), s and sum as group_coefficients gives them, S the same for every block. One max over the
 * chunk instead of one per block (with its horizontal max, divide and tests): the rounding step is that of the
 * chunk's largest |x_i d_i|. Rows in cache, 2 threads, 4096 outputs x 1536 channels at 50% kept, against one scale
 * per block: Q8_0 61-62 -> 62-65 GB/s, Q4_0 30 -> 32. (Without any coefficients the Q8_0 loop would run at 80: the
 * scales' gather and conversion are a quarter of its time.) A chunk with a non-finite coefficient goes block by
 * block, so that only its own block's outputs come out NaN. sum may be NULL (Q8_0 has no offset). */
static inline void chunk_coefficients(int n_rows, const float *xs, const uint8_t *const *rows, int64_t off,
                                      int64_t bsize, int nb, int16_t *cq, float *s, int32_t *sum)
{
    const int nh = n_rows / 8;
    alignas(32) float c[COEF_BLOCKS * 16];
    const __m256 x0 = _mm256_loadu_ps(xs), x1 = nh > 1 ? _mm256_loadu_ps(xs + 8) : x0;
    const __m256i abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
    __m256i amax_bits = _mm256_setzero_si256();
    for (int j = 0; j < nb; j++)
        for (int h = 0; h < nh; h++) {
            const __m256 v = _mm256_mul_ps(h ? x1 : x0, _mm256_cvtph_ps(scales8(rows + 8 * h, off + j * bsize)));
            _mm256_store_ps(c + 8 * (j * nh + h), v);
            amax_bits = _mm256_max_epi32(amax_bits, _mm256_and_si256(_mm256_castps_si256(v), abs_mask));
        }
    amax_bits = hmax_epi32(amax_bits);
    if (_mm256_cvtsi256_si32(amax_bits) >= 0x7F800000) {
        each_block_coefficients(n_rows, xs, rows, off, bsize, nb, cq, s, sum);
        return;
    }
    const __m256 amax = _mm256_max_ps(_mm256_castsi256_ps(amax_bits), _mm256_set1_ps(1e-30f));
    const __m256 inv = _mm256_div_ps(_mm256_set1_ps(32767.0f), amax);
    const float scale = _mm256_cvtss_f32(amax) * (1.0f / 32767.0f);
    for (int j = 0; j < nb; j++) {
        __m256i total = _mm256_setzero_si256();
        for (int h = 0; h < nh; h++) {
            const __m256i ci = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_load_ps(c + 8 * (j * nh + h)), inv));
            _mm_storeu_si128((__m128i *)(cq + j * n_rows + 8 * h),
                             _mm_packs_epi32(_mm256_castsi256_si128(ci), _mm256_extracti128_si256(ci, 1)));
            total = _mm256_add_epi32(total, ci);
        }
        s[j] = scale;
        if (sum)
            sum[j] = _mm256_cvtsi256_si32(hsum_epi32(total));
    }
}

/* Rows 2p and 2p + 1 of one block: int32 sums for outputs (0-3 | 8-11), (4-7 | 12-15), (16-19 | 24-27) and
 * (20-23 | 28-31) -- vpunpck works within 128-bit lanes -- added to acc. */
typedef struct {
    __m256i a[4];
} iacc;

static inline void acc_init(iacc *acc, int32_t v)
{
    for (int t = 0; t < 4; t++)
        acc->a[t] = _mm256_set1_epi32(v);
}

/* Two rows' 32 weights as int16 (kernels_avx2.c's vi), interleaved in pairs and multiplied by their coefficients. */
static inline void add_pair(vi wa, vi wb, int32_t pair, iacc *acc)
{
    const __m256i cp = _mm256_set1_epi32(pair);
    acc->a[0] = madd_add(acc->a[0], _mm256_unpacklo_epi16(wa.a, wb.a), cp);
    acc->a[1] = madd_add(acc->a[1], _mm256_unpackhi_epi16(wa.a, wb.a), cp);
    acc->a[2] = madd_add(acc->a[2], _mm256_unpacklo_epi16(wa.b, wb.b), cp);
    acc->a[3] = madd_add(acc->a[3], _mm256_unpackhi_epi16(wa.b, wb.b), cp);
}

static inline void pair_q8_0(const block_q8_0 *a, const block_q8_0 *b, int32_t pair, iacc *acc)
{
    add_pair(vi_load_i8(a->qs), vi_load_i8(b->qs), pair, acc);
}

/* Q4_0's nibbles 0..15 as they are: the caller takes off 8 * sum(cq). */
static inline void pair_q4_0(const block_q4_0 *a, const block_q4_0 *b, int32_t pair, iacc *acc)
{
    add_pair(vi_nibbles_q4(a->qs), vi_nibbles_q4(b->qs), pair, acc);
}

/* y[0..32) += S * acc, the lanes put back in output order. */
static inline void add_block(const iacc *acc, float s, float *y)
{
    const __m256 sv = _mm256_set1_ps(s);
    const __m256i o[4] = {_mm256_permute2x128_si256(acc->a[0], acc->a[1], 0x20),
                          _mm256_permute2x128_si256(acc->a[0], acc->a[1], 0x31),
                          _mm256_permute2x128_si256(acc->a[2], acc->a[3], 0x20),
                          _mm256_permute2x128_si256(acc->a[2], acc->a[3], 0x31)};
    for (int t = 0; t < 4; t++)
        _mm256_storeu_ps(y + 8 * t, _mm256_fmadd_ps(_mm256_cvtepi32_ps(o[t]), sv, _mm256_loadu_ps(y + 8 * t)));
}

AXPY_INT16(q8_0, 0, Q8_ROWS)
AXPY_INT16(q4_0, 8, Q4_ROWS)

#endif /* RS_AXPY_INT16_AVX2_H */
