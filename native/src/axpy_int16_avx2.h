/* axpy_int16_avx2.h -- AVX2's sparse Q8_0 and Q4_0 kernels: the kept rows' activations as int16, rows summed in
 * pairs with vpmaddwd. Included by kernels_avx2.c after kernels_simd.h (it uses its helpers).
 *
 * The generic sparse kernel turns every weight into a float and multiplies it by its row's activation: for 8
 * weights a widening load, a conversion and an FMA (Q4_0: also a mask or shift and a subtraction). On a Zen 5 core
 * that arithmetic, not memory, bounds it: ~31 GB/s a thread for Q8_0 and ~11 for Q4_0 from L2, below what two cores
 * stream from DRAM. Here each group of kept rows (8, or 16 for Q4_0) has, per block of 32 outputs, coefficients
 * c_i = x_i * d_i (activation times block scale), rounded to int16 on a shared scale S = max |c_i| / 32767 (the
 * dense kernels' rounding, kernels.h, with rows in place of elements). Two rows' int8 weights (or nibbles) are
 * interleaved as int16 pairs and one vpmaddwd gives, per output, c_a q_a + c_b q_b exactly in int32; the group's
 * sums take one conversion and one FMA by S per 8 outputs. Q4_0's "- 8" becomes - 8 * sum(c_i), once per block.
 * Rounding moves each output by at most (S / 2) * sum |q_i| over the group's rows (tests/native_ref.py).
 * Measured on Zen 5, rows in cache, 4096 outputs: one thread, Q8_0 30 -> 35 GB/s and Q4_0 11 -> 18 GB/s (C
 * microbenchmarks); rs_sparse_matvec on 1536 channels, 2 threads, 50% kept, Q8_0 56 -> 63 and Q4_0 21 -> 31 GB/s.
 *
 * The coefficients of COEF_BLOCKS blocks are made in a loop of their own before those blocks' rows are read: made
 * beside the multiply-adds, their long dependent chain (max, divide, round) held the loop to the float kernel's
 * speed. */
#ifndef RS_AXPY_INT16_AVX2_H
#define RS_AXPY_INT16_AVX2_H

#ifndef COEF_BLOCKS
#define COEF_BLOCKS 16  /* blocks whose coefficients are made at a time: 16 x (16 + 8) bytes, in L1 */
#endif

/* The block scales d (binary16, at the start of each block) of 8 rows as one vector of 8 halves. */
static inline __m128i scales8(const uint8_t *const *rows, int64_t off)
{
    __m128i h[8];
    for (int i = 0; i < 8; i++)
        h[i] = _mm_loadu_si32(rows[i] + off);  /* d and the block's next two bytes: never past the block */
    const __m128i a = _mm_unpacklo_epi32(_mm_unpacklo_epi16(h[0], h[1]), _mm_unpacklo_epi16(h[2], h[3]));
    const __m128i b = _mm_unpacklo_epi32(_mm_unpacklo_epi16(h[4], h[5]), _mm_unpacklo_epi16(h[6], h[7]));
    return _mm_unpacklo_epi64(a, b);
}

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

/* One block's coefficients for a group of 8 * nh rows (xv[h]: activations of rows 8h .. 8h + 7): cq (row i's in
 * word i), S, and sum(cq) (for Q4_0's offset). max |c| is taken on the bit patterns, as integers: for non-negative
 * floats that orders them, and puts NaN and inf above every finite value, so one compare tells whether the block
 * has a non-finite coefficient; then S is NaN and the block's 32 outputs come out NaN, as the float kernel's would.
 * S never goes below 1e-30 / 32767, so 1 / S stays finite for tiny and subnormal coefficients (they round to 0 or
 * to a few units). */
static inline void group_coefficients(int nh, const __m256 *xv, const uint8_t *const *rows, int64_t off,
                                      int16_t *cq, float *s, int32_t *sum)
{
    __m256 c[2];
    __m256i amax_bits = _mm256_setzero_si256();
    for (int h = 0; h < nh; h++) {
        c[h] = _mm256_mul_ps(xv[h], _mm256_cvtph_ps(scales8(rows + 8 * h, off)));
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

/* Rows 2p and 2p + 1 of one block: int32 sums for outputs (0-3 | 8-11), (4-7 | 12-15), (16-19 | 24-27) and
 * (20-23 | 28-31) -- vpunpck works within 128-bit lanes -- added to acc. */
static inline void pair_q8_0(const block_q8_0 *a, const block_q8_0 *b, __m256i cp, __m256i *acc)
{
    const __m256i a0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)a->qs));
    const __m256i b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->qs));
    const __m256i a1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(a->qs + 16)));
    const __m256i b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b->qs + 16)));
    acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(_mm256_unpacklo_epi16(a0, b0), cp));
    acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(_mm256_unpackhi_epi16(a0, b0), cp));
    acc[2] = _mm256_add_epi32(acc[2], _mm256_madd_epi16(_mm256_unpacklo_epi16(a1, b1), cp));
    acc[3] = _mm256_add_epi32(acc[3], _mm256_madd_epi16(_mm256_unpackhi_epi16(a1, b1), cp));
}

/* The same for Q4_0, nibbles 0..15 as they are (the caller takes off 8 * sum(cq)). */
static inline void pair_q4_0(const block_q4_0 *a, const block_q4_0 *b, __m256i cp, __m256i *acc)
{
    const __m256i m = _mm256_set1_epi16(0x0F);
    const __m256i wa = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)a->qs));
    const __m256i wb = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)b->qs));
    const __m256i la = _mm256_and_si256(wa, m), lb = _mm256_and_si256(wb, m);
    const __m256i ha = _mm256_srli_epi16(wa, 4), hb = _mm256_srli_epi16(wb, 4);
    acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(_mm256_unpacklo_epi16(la, lb), cp));
    acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(_mm256_unpackhi_epi16(la, lb), cp));
    acc[2] = _mm256_add_epi32(acc[2], _mm256_madd_epi16(_mm256_unpacklo_epi16(ha, hb), cp));
    acc[3] = _mm256_add_epi32(acc[3], _mm256_madd_epi16(_mm256_unpackhi_epi16(ha, hb), cp));
}

/* y[0..32) += S * acc, the lanes put back in output order. */
static inline void add_block(const __m256i *acc, float s, float *y)
{
    const __m256 sv = _mm256_set1_ps(s);
    const __m256i o[4] = {_mm256_permute2x128_si256(acc[0], acc[1], 0x20),
                          _mm256_permute2x128_si256(acc[0], acc[1], 0x31),
                          _mm256_permute2x128_si256(acc[2], acc[3], 0x20),
                          _mm256_permute2x128_si256(acc[2], acc[3], 0x31)};
    for (int t = 0; t < 4; t++)
        _mm256_storeu_ps(y + 8 * t, _mm256_fmadd_ps(_mm256_cvtepi32_ps(o[t]), sv, _mm256_loadu_ps(y + 8 * t)));
}

/* y[0..n) += sum_k xk[k] * wt[idx[k]][o0 ..), as kernels_simd.h's axpy_*, `rows` kept rows at a time (8 or 16);
 * `offset` is 8 for Q4_0, 0 for Q8_0. Rows `AHEAD` groups on are prefetched as the kernel goes. */
#define AXPY_INT16(type, offset, ROWS)                                                                       \
    static void axpy_int16_##type(const void *wt, int64_t rb, const int32_t *idx, const float *xk,            \
                                  int64_t n_kept, int64_t o0, int64_t n, float *y)                          \
    {                                                                                                        \
        const int64_t bsize = (int64_t)sizeof(block_##type), n_blocks = n / RS_QK;                         \
        int16_t cq[COEF_BLOCKS][ROWS];                                                                       \
        float s[COEF_BLOCKS];                                                                                \
        int32_t sum[COEF_BLOCKS];                                                                            \
        for (int64_t k = 0; k < n_kept; k += ROWS) {                                                         \
            const uint8_t *rows[ROWS], *next[ROWS];                                                          \
            float xs[ROWS];                                                                                  \
            const int n_rows = (int)min64(ROWS, n_kept - k);                                                 \
            for (int i = 0; i < ROWS; i++) {                                                                 \
                /* a short last group repeats its first row with activation 0 */                            \
                rows[i] = (const uint8_t *)wt + (int64_t)idx[i < n_rows ? k + i : k] * rb + o0 / RS_QK * bsize; \
                xs[i] = i < n_rows ? xk[k + i] : 0.0f;                                                       \
                next[i] = ahead_row(wt, rb, idx, k + AHEAD * ROWS + i, n_kept);                              \
                if (next[i])                                                                                 \
                    next[i] += o0 / RS_QK * bsize;                                                           \
            }                                                                                                \
            __m256 xv[2];                                                                                    \
            for (int h = 0; h < (ROWS) / 8; h++)                                                             \
                xv[h] = _mm256_loadu_ps(xs + 8 * h);                                                         \
            for (int64_t b0 = 0; b0 < n_blocks; b0 += COEF_BLOCKS) {                                         \
                const int nb = (int)min64(COEF_BLOCKS, n_blocks - b0);                                       \
                for (int j = 0; j < nb; j++)                                                                 \
                    group_coefficients((ROWS) / 8, xv, rows, (b0 + j) * bsize, cq[j], &s[j], &sum[j]);       \
                for (int j = 0; j < nb; j++) {                                                               \
                    const int64_t off = (b0 + j) * bsize;                                                    \
                    for (int i = 0; i < ROWS; i++)                                                           \
                        if (next[i])                                                                         \
                            SPARSE_PF(next[i] + off);                                                        \
                    __m256i acc[4];                                                                          \
                    for (int t = 0; t < 4; t++)                                                              \
                        acc[t] = _mm256_set1_epi32(-(offset) * sum[j]);                                      \
                    for (int p = 0; p < (ROWS) / 2; p++) {                                                   \
                        int32_t pair;                                                                        \
                        memcpy(&pair, &cq[j][2 * p], sizeof pair);                                           \
                        pair_##type((const block_##type *)(rows[2 * p] + off),                               \
                                    (const block_##type *)(rows[2 * p + 1] + off), _mm256_set1_epi32(pair), acc); \
                    }                                                                                        \
                    add_block(acc, s[j], y + (b0 + j) * RS_QK);                                              \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }
/* Rows per group: 16 for Q4_0 (its coefficients cost as much as for Q8_0 while its rows are half as long: 16
 * rows instead of 8 made it 18% faster from L2), 8 for Q8_0 (16: +1.5%, for twice as many rows sharing a scale). */
AXPY_INT16(q8_0, 0, 8)
AXPY_INT16(q4_0, 8, 16)

#endif /* RS_AXPY_INT16_AVX2_H */
