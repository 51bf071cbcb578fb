/* simde_x86.h -- force-included (-include) into the x86 SIMD path files by native/tests/run_simde.sh, which
 * compiles them without -mavx512* / -mavxvnni: every AVX-512 and VNNI intrinsic they call becomes SIMDe's portable
 * version (https://github.com/simd-everywhere/simde, Debian's libsimde-dev), built on AVX2, so the test program
 * runs those paths on a CPU without the instructions. Test builds only; the library never includes it. */
#ifndef RS_SIMDE_X86_H
#define RS_SIMDE_X86_H

/* The compiler's own header first: the path files' #include <immintrin.h> then adds nothing after SIMDe's aliases,
 * which are macros over the real names (_mm512_add_ps -> simde_mm512_add_ps). */
#include <immintrin.h>

/* SIMDe sees that <immintrin.h> declared the AVX-512 types (__m512...) and takes them as its own: without
 * -mavx512f they are plain vector types, and only SIMDe's functions operate on them. */
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>


/* SIMDe 0.7.4 aliases _mm512_madd_epi16 with the masked form's four arguments. */
#undef _mm512_madd_epi16
#define _mm512_madd_epi16(a, b) simde_mm512_madd_epi16(a, b)

/* Missing from SIMDe 0.7.4 (Debian 12's): these AVX-512 intrinsics, written here on AVX2 halves with the same
 * results. A path file that calls another missing one fails to compile ("inlining failed ... target specific option
 * mismatch" on the compiler's own version): add it here. */
static inline simde__m512 rs_simde_f512(__m256 lo, __m256 hi)
{
    return simde_mm512_insertf32x8(simde_mm512_castps256_ps512(lo), hi, 1);
}
static inline simde__m512i rs_simde_i512(__m256i lo, __m256i hi)
{
    return simde_mm512_inserti64x4(simde_mm512_castsi256_si512(lo), hi, 1);
}
static inline __m256i rs_simde_i512_hi(simde__m512i a) { return simde_mm512_extracti64x4_epi64(a, 1); }
static inline __m256 rs_simde_f512_hi(simde__m512 a)
{
    float f[16];
    simde_mm512_storeu_ps(f, a);
    return _mm256_loadu_ps(f + 8);
}
static inline simde__m512 rs_simde_mm512_cvtph_ps(simde__m256i h)
{
    return rs_simde_f512(_mm256_cvtph_ps(_mm256_castsi256_si128(h)), _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)));
}
static inline simde__m512 rs_simde_mm512_cvtepi32_ps(simde__m512i a)
{
    return rs_simde_f512(_mm256_cvtepi32_ps(simde_mm512_castsi512_si256(a)), _mm256_cvtepi32_ps(rs_simde_i512_hi(a)));
}
static inline simde__m512i rs_simde_mm512_cvtps_epi32(simde__m512 a)
{
    return rs_simde_i512(_mm256_cvtps_epi32(simde_mm512_castps512_ps256(a)), _mm256_cvtps_epi32(rs_simde_f512_hi(a)));
}
static inline simde__m512i rs_simde_mm512_cvtepi8_epi32(__m128i a)
{
    return rs_simde_i512(_mm256_cvtepi8_epi32(a), _mm256_cvtepi8_epi32(_mm_srli_si128(a, 8)));
}
static inline simde__m512i rs_simde_mm512_cvtepu8_epi16(__m256i a)
{
    return rs_simde_i512(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(a)),
                         _mm256_cvtepu8_epi16(_mm256_extracti128_si256(a, 1)));
}
static inline simde__m512i rs_simde_mm512_cvtepu16_epi32(__m256i a)
{
    return rs_simde_i512(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(a)),
                         _mm256_cvtepu16_epi32(_mm256_extracti128_si256(a, 1)));
}
static inline int rs_simde_mm512_reduce_add_epi32(simde__m512i a)
{
    int32_t v[16];
    uint32_t s = 0;  /* wraps, as the instructions do */
    simde_mm512_storeu_si512(v, a);
    for (int i = 0; i < 16; i++)
        s += (uint32_t)v[i];
    return (int)s;
}
static inline int rs_simde_mm512_reduce_max_epi32(simde__m512i a)
{
    int32_t v[16];
    simde_mm512_storeu_si512(v, a);
    int m = v[0];
    for (int i = 1; i < 16; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}
/* In GCC's order: halves, quarters, then pairs. */
static inline float rs_simde_mm512_reduce_add_ps(simde__m512 a)
{
    const __m256 h = _mm256_add_ps(simde_mm512_castps512_ps256(a), rs_simde_f512_hi(a));
    const __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    const __m128 p = _mm_add_ps(q, _mm_shuffle_ps(q, q, 78));
    return _mm_cvtss_f32(p) + _mm_cvtss_f32(_mm_shuffle_ps(p, p, 177));
}
static inline simde__m512i rs_simde_mm512_zextsi256_si512(__m256i a) { return rs_simde_i512(a, _mm256_setzero_si256()); }
static inline simde__m512i rs_simde_mm512_zextsi128_si512(__m128i a)
{
    return rs_simde_i512(_mm256_zextsi128_si256(a), _mm256_setzero_si256());
}
#undef _mm512_zextsi256_si512
#undef _mm512_zextsi128_si512
#define _mm512_zextsi256_si512(a) rs_simde_mm512_zextsi256_si512(a)
#define _mm512_zextsi128_si512(a) rs_simde_mm512_zextsi128_si512(a)
#undef _mm512_cvtph_ps
#undef _mm512_cvtepi32_ps
#undef _mm512_cvtps_epi32
#undef _mm512_cvtepi8_epi32
#undef _mm512_cvtepu8_epi16
#undef _mm512_cvtepu16_epi32
#undef _mm512_reduce_add_epi32
#undef _mm512_reduce_max_epi32
#undef _mm512_reduce_add_ps
#define _mm512_cvtph_ps(a) rs_simde_mm512_cvtph_ps(a)
#define _mm512_cvtepi32_ps(a) rs_simde_mm512_cvtepi32_ps(a)
#define _mm512_cvtps_epi32(a) rs_simde_mm512_cvtps_epi32(a)
#define _mm512_cvtepi8_epi32(a) rs_simde_mm512_cvtepi8_epi32(a)
#define _mm512_cvtepu8_epi16(a) rs_simde_mm512_cvtepu8_epi16(a)
#define _mm512_cvtepu16_epi32(a) rs_simde_mm512_cvtepu16_epi32(a)
#define _mm512_reduce_add_epi32(a) rs_simde_mm512_reduce_add_epi32(a)
#define _mm512_reduce_max_epi32(a) rs_simde_mm512_reduce_max_epi32(a)
#define _mm512_reduce_add_ps(a) rs_simde_mm512_reduce_add_ps(a)

/* AVX-VNNI (the VEX forms, *_avx_epi32): SIMDe has only the AVX512VNNI+VL names, which compute the same. */
#undef _mm_dpbusd_avx_epi32
#undef _mm_dpbusds_avx_epi32
#undef _mm_dpwssd_avx_epi32
#undef _mm_dpwssds_avx_epi32
#undef _mm256_dpbusd_avx_epi32
#undef _mm256_dpbusds_avx_epi32
#undef _mm256_dpwssd_avx_epi32
#undef _mm256_dpwssds_avx_epi32
#define _mm_dpbusd_avx_epi32(src, a, b) simde_mm_dpbusd_epi32(src, a, b)
#define _mm_dpbusds_avx_epi32(src, a, b) simde_mm_dpbusds_epi32(src, a, b)
#define _mm_dpwssd_avx_epi32(src, a, b) simde_mm_dpwssd_epi32(src, a, b)
#define _mm_dpwssds_avx_epi32(src, a, b) simde_mm_dpwssds_epi32(src, a, b)
#define _mm256_dpbusd_avx_epi32(src, a, b) simde_mm256_dpbusd_epi32(src, a, b)
#define _mm256_dpbusds_avx_epi32(src, a, b) simde_mm256_dpbusds_epi32(src, a, b)
#define _mm256_dpwssd_avx_epi32(src, a, b) simde_mm256_dpwssd_epi32(src, a, b)
#define _mm256_dpwssds_avx_epi32(src, a, b) simde_mm256_dpwssds_epi32(src, a, b)

#endif
