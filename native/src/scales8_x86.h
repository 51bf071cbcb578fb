/* scales8_x86.h -- a gather shared by the x86 sparse kernels (axpy_int8.h), which include it after
 * their path's <immintrin.h>. */
#ifndef RS_SCALES8_X86_H
#define RS_SCALES8_X86_H

#include <stdint.h>

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

#endif /* RS_SCALES8_X86_H */
