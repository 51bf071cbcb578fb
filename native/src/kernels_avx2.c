/* kernels_avx2.c -- the AVX2 + FMA + F16C path (x86-64 since Haswell / Zen 1). Compiled with -mavx2 -mfma -mf16c
 * and nothing else: only dispatch.c decides, from cpu_ok at run time, whether these instructions are used.
 * kernels_avxvnni.c compiles it again with RS_AVXVNNI (and -mavxvnni): the same kernels, each int16 multiply-add
 * and the sum it feeds fused into one vpdpwssd. */
#include <immintrin.h>

#include "kernels.h"

#ifdef RS_AVXVNNI
#define PATH avxvnni
#else
#define PATH avx2
#endif
#define VL 8
#define MR 4
#define NT 2  /* 4 x 2 accumulators + 4 weight vectors + 1 activation: 13 of the 16 ymm registers */

typedef __m256 vf;

static inline vf vf_zero(void) { return _mm256_setzero_ps(); }
static inline vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vf_set1(float s) { return _mm256_set1_ps(s); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }

static inline float vf_hsum(vf v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline vf vf_load_f16(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* A block of 32 int16 values, in two registers: int8 weights widened, or activations. */
typedef struct {
    __m256i a, b;
} vi;

#define MRQ 2  /* quantized prefill tile: 2 rows x 2 tokens, 4 weight + 4 activation + 4 accumulator registers */
#define NTQ 2

static inline vi vi_load_i8(const int8_t *q)
{
    return (vi){_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)q)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(q + 16)))};
}

/* A Q4_0 block's 32 nibbles, 0..15, in vi_load_q4's order: zero-extended in one step (byte i's low nibble is
 * element i, its high nibble element i + 16), then split in int16. */
static inline vi vi_nibbles_q4(const uint8_t *q)
{
    const __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)q));
    return (vi){_mm256_and_si256(w, _mm256_set1_epi16(0x0F)), _mm256_srli_epi16(w, 4)};
}

/* The nibbles centred: five instructions a block instead of seven on bytes (dense Q4_0 decode from cache: 33 -> 37
 * GB/s on 2 Zen 5 threads). */
static inline vi vi_load_q4(const uint8_t *q)
{
    const vi n = vi_nibbles_q4(q);
    const __m256i e = _mm256_set1_epi16(8);
    return (vi){_mm256_sub_epi16(n.a, e), _mm256_sub_epi16(n.b, e)};
}

static inline vi vi_load_i16(const int16_t *x)
{
    return (vi){_mm256_loadu_si256((const __m256i *)x), _mm256_loadu_si256((const __m256i *)(x + 16))};
}

/* acc + the pairwise products of a and b, in int32 (exact either way). */
static inline __m256i madd_add(__m256i acc, __m256i a, __m256i b)
{
#if defined(RS_AVXVNNI) && !defined(RS_EMULATE_VNNI)
    return _mm256_dpwssd_avx_epi32(acc, a, b);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

/* Pairwise multiply-add in int32: lane l sums 4 products (exact in float too: below 2^24). */
static inline vf vf_madd_i16(vi w, vi x)
{
    return _mm256_cvtepi32_ps(madd_add(_mm256_madd_epi16(w.a, x.a), w.b, x.b));
}

static inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
static inline vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vf_half_set1(uint16_t h) { return _mm256_cvtph_ps(_mm_set1_epi16((short)h)); }
static inline void prefetch(const void *p) { _mm_prefetch((const char *)p, _MM_HINT_T0); }

static int cpu_ok(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")
#if defined(RS_AVXVNNI) && !defined(RS_EMULATE_VNNI)
           && __builtin_cpu_supports("avxvnni")
#endif
        ;
}

#define CPU_OK cpu_ok
/* Sparse Q8_0 and Q4_0: this path's own kernels (axpy_int8.h), with int8 coefficients. */
#define AXPY_Q8_0_FN axpy_int8_q8_0
#define AXPY_Q4_0_FN axpy_int8_q4_0
static void axpy_int8_q8_0(const void *, int64_t, const int32_t *, const float *, int64_t, int64_t, int64_t, float *);
static void axpy_int8_q4_0(const void *, int64_t, const int32_t *, const float *, int64_t, int64_t, int64_t, float *);
#include "kernels_simd.h"
#include "axpy_int8.h"
