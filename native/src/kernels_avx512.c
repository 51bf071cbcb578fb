/* kernels_avx512.c -- the AVX-512 path (AVX512F and AVX512BW, with F16C and FMA: every AVX-512 CPU since Skylake-X
 * and Zen 4). Compiled with -mavx512f -mavx512bw -mfma -mf16c; only used when cpu_ok says the CPU (and the OS, which
 * must save zmm state) supports it. */
#include <immintrin.h>

#include "kernels.h"

#define PATH avx512
#define VL 16
#define MR 4
#define NT 4  /* 4 x 4 accumulators + 4 weight vectors + 1 activation: 21 of the 32 zmm registers */

typedef __m512 vf;

static inline vf vf_zero(void) { return _mm512_setzero_ps(); }
static inline vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf vf_set1(float s) { return _mm512_set1_ps(s); }
static inline vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }

/* Halves, then quarters... written out so the order is fixed (_mm512_reduce_add_ps leaves it to the compiler). */
static inline float vf_hsum(vf v)
{
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline vf vf_load_f16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

static inline vf vf_load_i8(const int8_t *p)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

/* A block of 32 int16 values in one register: int8 weights widened, or activations (AVX512BW). */
typedef __m512i vi;

#define MRQ 4  /* quantized prefill tile: 4 rows x 4 tokens, 16 accumulators */
#define NTQ 4

static inline vi vi_load_i8(const int8_t *q) { return _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)q)); }

/* A Q4_0 block's 32 nibbles, 0..15: the 16 bytes in both halves, zero-extended, shifted by 0 (elements 0-15, low
 * nibbles) or 4 (16-31, high nibbles) and masked. The sparse kernel (axpy_int16_avx512.h) takes them as they are. */
static inline vi vi_nibbles_q4(const uint8_t *q)
{
    const __m512i w = _mm512_cvtepu8_epi16(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)q)));
    const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    return _mm512_and_si512(_mm512_srlv_epi16(w, shift), _mm512_set1_epi16(0x0F));
}

/* The nibbles centred: four instructions a block instead of seven. */
static inline vi vi_load_q4(const uint8_t *q) { return _mm512_sub_epi16(vi_nibbles_q4(q), _mm512_set1_epi16(8)); }

static inline vi vi_load_i16(const int16_t *x) { return _mm512_loadu_si512(x); }

/* Pairwise multiply-add into 16 int32 lanes of 2 products each, then to float (exact). */
static inline vf vf_madd_i16(vi w, vi x) { return _mm512_cvtepi32_ps(_mm512_madd_epi16(w, x)); }

static inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
static inline vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vf_half_set1(uint16_t h) { return _mm512_cvtph_ps(_mm256_set1_epi16((short)h)); }
static inline void prefetch(const void *p) { _mm_prefetch((const char *)p, _MM_HINT_T0); }

static int cpu_ok(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
}

#define CPU_OK cpu_ok
/* Sparse Q4_0: this path's own kernel (axpy_int16_avx512.h), with int16 activations (Q8_0 keeps the float one:
 * with int16 it read 72 GB/s from cache on 2 threads, against 80). */
#define AXPY_Q4_0_FN axpy_int16_q4_0
static void axpy_int16_q4_0(const void *, int64_t, const int32_t *, const float *, int64_t, int64_t, int64_t, float *);
#include "kernels_simd.h"
#include "axpy_int16_avx512.h"
