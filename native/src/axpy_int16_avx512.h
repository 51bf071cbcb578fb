/* axpy_int16_avx512.h -- AVX-512's sparse Q4_0 kernel: axpy_int16.h's loop (int16 coefficients, row pairs summed
 * with vpmaddwd) with 512-bit primitives, 16 kept rows a group: one vector holds the
 * group's 16 coefficients, and one vpmaddwd takes two rows' 16 outputs. Measured on Zen 5, rows in cache, 4096
 * outputs, 1536 channels, 50% kept, 2 threads: Q4_0 35 -> 38-39 GB/s. Q8_0 keeps the float kernel: with int16
 * coefficients (a pair_q8_0 that widened 32 int8 in one instruction) it read 72 GB/s against 80. Included by
 * kernels_avx512.c after kernels_simd.h. */
#ifndef RS_AXPY_INT16_AVX512_H
#define RS_AXPY_INT16_AVX512_H

#include "axpy_int16.h"

#define Q4_ROWS 16

/* One block's coefficients for the group's 16 rows (the only group size here): cq, S (NaN if a coefficient is not
 * finite: max |c| is taken on the bit patterns, where NaN and inf sort above every finite value) and sum(cq). */
static inline void group_coefficients(int n_rows, const float *xs, const uint8_t *const *rows, int64_t off,
                                      int16_t *cq, float *s, int32_t *sum)
{
    (void)n_rows;
    const __m512 c = _mm512_mul_ps(_mm512_loadu_ps(xs),
                                   _mm512_cvtph_ps(_mm256_set_m128i(scales8(rows + 8, off), scales8(rows, off))));
    const int32_t amax_bits =
        _mm512_reduce_max_epi32(_mm512_and_si512(_mm512_castps_si512(c), _mm512_set1_epi32(0x7FFFFFFF)));
    float amax;
    memcpy(&amax, &amax_bits, sizeof amax);
    amax = amax > 1e-30f ? amax : 1e-30f;  /* NaN compares false: 1e-30, and then S is NaN below */
    const __m512i ci = _mm512_cvtps_epi32(_mm512_mul_ps(c, _mm512_set1_ps(32767.0f / amax)));
    _mm256_storeu_si256((__m256i *)cq, _mm512_cvtsepi32_epi16(ci));
    const int finite = amax_bits < 0x7F800000;
    *s = finite ? amax * (1.0f / 32767.0f) : NAN;
    *sum = finite ? _mm512_reduce_add_epi32(ci) : 0;  /* |sum| <= 16 * 32767 */
}

/* Block by block (axpy_int16.h's loop asks for a chunk at a time). */
#define chunk_coefficients each_block_coefficients

/* One block's sums: a[0] holds outputs 8l .. 8l + 3 in 128-bit lane l, a[1] outputs 8l + 4 .. 8l + 7. */
typedef struct {
    __m512i a[2];
} iacc;

static inline void acc_init(iacc *acc, int32_t v) { acc->a[0] = acc->a[1] = _mm512_set1_epi32(v); }

/* 32 words per row in output order; vpunpck pairs rows a and b within each 128-bit lane. */
static inline void add_pair(__m512i wa, __m512i wb, int32_t pair, iacc *acc)
{
    const __m512i cp = _mm512_set1_epi32(pair);
    acc->a[0] = _mm512_add_epi32(acc->a[0], _mm512_madd_epi16(_mm512_unpacklo_epi16(wa, wb), cp));
    acc->a[1] = _mm512_add_epi32(acc->a[1], _mm512_madd_epi16(_mm512_unpackhi_epi16(wa, wb), cp));
}

/* Q4_0's nibbles 0..15 as they are (kernels_avx512.c): the caller takes off 8 * sum(cq). */
static inline void pair_q4_0(const block_q4_0 *a, const block_q4_0 *b, int32_t pair, iacc *acc)
{
    add_pair(vi_nibbles_q4(a->qs), vi_nibbles_q4(b->qs), pair, acc);
}

static inline void add_block(const iacc *acc, float s, float *y)
{
    const __m512i lo = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
    const __m512 sv = _mm512_set1_ps(s);
    const __m512i o0 = _mm512_permutex2var_epi32(acc->a[0], lo, acc->a[1]);
    const __m512i o1 = _mm512_permutex2var_epi32(acc->a[0], hi, acc->a[1]);
    _mm512_storeu_ps(y, _mm512_fmadd_ps(_mm512_cvtepi32_ps(o0), sv, _mm512_loadu_ps(y)));
    _mm512_storeu_ps(y + 16, _mm512_fmadd_ps(_mm512_cvtepi32_ps(o1), sv, _mm512_loadu_ps(y + 16)));
}

AXPY_INT16(q4_0, 8, Q4_ROWS)

#endif /* RS_AXPY_INT16_AVX512_H */
