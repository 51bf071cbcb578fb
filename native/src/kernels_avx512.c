/* kernels_avx512.c -- the AVX-512 path (AVX512F and AVX512BW, with F16C and FMA: every AVX-512 CPU since Skylake-X
 * and Zen 4). Compiled with -mavx512f -mavx512bw -mfma -mf16c; only used when cpu_ok says the CPU (and the OS, which
 * must save zmm state) supports it. kernels_avx512vnni.c compiles it again with RS_AVX512VNNI (and -mavx512vnni,
 * Ice Lake and Zen 4 on): the dense Q8_0 and Q4_0 kernels then take vpdpbusd, which multiplies bytes and adds
 * them in fours into an int32 accumulator in one instruction. Skylake-X has AVX-512 without VNNI: it runs this
 * path, with vpmaddubsw. */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"
#include "quant.h"

#ifdef RS_AVX512VNNI
#define PATH avx512vnni
#else
#define PATH avx512
#endif
#define VL 16
#define MR 4
#define NT 4  /* 4 x 4 accumulators + 4 weight vectors + 1 activation: 21 of the 32 zmm registers */
#define GEMM_MR 8
#define GEMM_NV 2  /* prefill GEMM tile: 8 x 2 accumulators, 2 panel vectors, 1 broadcast: 19 of 32 zmm */
#define IGEMM_MR 6
#define IGEMM_NV 2 /* integer tile: 6 x 2 sums and 6 x 2 float chains, 2 panel vectors, 1 broadcast: 27 of 32 */

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
static inline vf vf_load_bf16(const uint16_t *p)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

static inline vf vf_load_i8(const int8_t *p)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

/* ---- dense Q8_0 and Q4_0: two blocks of 32 bytes per step, against int8 activations -------------------------- */
/* Two blocks fill a zmm register: block k's int32 sums in lanes 0-7, block k + 1's in lanes 8-15. */
#define QB 2

typedef __m512i vq;

static inline __m512i join256(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }

static inline vq vq_load_q8(const block_q8_0 *b, int n)
{
    const __m256i lo = _mm256_loadu_si256((const __m256i *)b[0].qs);
    return join256(lo, n > 1 ? _mm256_loadu_si256((const __m256i *)b[1].qs) : _mm256_setzero_si256());
}

/* Each block's 16 bytes in two 128-bit lanes, the second copy shifted right by 4, then one mask: the low nibbles
 * (elements 0-15), then the high ones (16-31), as vq_load_q8 reads an unpacked block. */
static inline vq vq_load_q4(const block_q4_0 *b, int n)
{
    const __m256i b0 = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)b[0].qs));
    const __m256i b1 = n > 1 ? _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)b[1].qs))
                             : _mm256_setzero_si256();
    const __m512i w = join256(b0, b1);
    return _mm512_and_si512(_mm512_mask_blend_epi64(0xCC, w, _mm512_srli_epi16(w, 4)), _mm512_set1_epi8(0x0F));
}

/* The activations, and what lanes 0 and 8 (the first of each block's) of the int32 sums start from: minus the
 * offset times the block sum, undoing the bias of unsigned weights (sum (w + c) x - c sum x = sum w x). */
typedef struct {
    __m512i q, off;
} xa;

static inline xa xa_with(const int8_t *q, const int32_t *s, int n, int32_t c)
{
    const __m512i xq = n > 1 ? _mm512_loadu_si512(q) : _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)q));
    const __m128i o0 = _mm_cvtsi32_si128(c * s[0]), o1 = _mm_cvtsi32_si128(n > 1 ? c * s[1] : 0);
    return (xa){xq, _mm512_inserti32x4(_mm512_zextsi128_si512(o0), o1, 2)};
}

/* With VNNI, Q8_0's weights are biased by 128 (unsigned 0..255, an xor); without, they are multiplied as they are. */
static inline xa xa_q8(const int8_t *q, const int32_t *s, int n)
{
#ifdef RS_AVX512VNNI
    return xa_with(q, s, n, -128);
#else
    return xa_with(q, s, n, 0);
#endif
}

static inline xa xa_q4(const int8_t *q, const int32_t *s, int n) { return xa_with(q, s, n, -8); }

/* Without VNNI, as AVX2 does it (kernels_avx2.c says why no pair saturates), with the sign of w moved onto x by a
 * masked negation: AVX-512 has no vpsignb. */
static inline vf vf_dot_q8(vq w, xa x)
{
#ifdef RS_AVX512VNNI
    return _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(x.off, _mm512_xor_si512(w, _mm512_set1_epi8(-128)), x.q));
#else
    const __m512i sx = _mm512_mask_sub_epi8(x.q, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x.q);
    const __m512i p = _mm512_maddubs_epi16(_mm512_abs_epi8(w), sx);
    return _mm512_cvtepi32_ps(_mm512_madd_epi16(p, _mm512_set1_epi16(1)));
#endif
}

static inline vf vf_dot_q4(vq w, xa x)
{
#ifdef RS_AVX512VNNI
    return _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(x.off, w, x.q));
#else
    const __m512i p = _mm512_madd_epi16(_mm512_maddubs_epi16(w, x.q), _mm512_set1_epi16(1));
    return _mm512_cvtepi32_ps(_mm512_add_epi32(p, x.off));
#endif
}

/* Lanes 0-7 from element 0 of v, lanes 8-15 from element 1. */
static inline vf spread_pair(__m128 v)
{
    return _mm512_permutexvar_ps(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
                                 _mm512_castps128_ps512(v));
}

static inline vf vf_wscale(uint16_t d0, uint16_t d1)
{
    return spread_pair(_mm_cvtph_ps(_mm_cvtsi32_si128((int)((uint32_t)d0 | (uint32_t)d1 << 16))));
}

static inline vf vf_xscale(const float *xd, int n)
{
    return spread_pair(n > 1 ? _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)xd)) : _mm_load_ss(xd));
}

/* ---- the integer prefill tile (kernels_simd.h's igemm): as AVX2's (kernels_avx2.c), on zmm ------------------ */
typedef __m512i vw;
static inline vw vw_load(const uint8_t *p) { return _mm512_loadu_si512(p); }
static inline vw vw_bcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}
static inline vw vw_lo4(vw w) { return _mm512_and_si512(w, _mm512_set1_epi8(0x0F)); }
static inline vw vw_hi4(vw w) { return _mm512_and_si512(_mm512_srli_epi16(w, 4), _mm512_set1_epi8(0x0F)); }

typedef __m512i vs;
static inline vs vs_zero(void) { return _mm512_setzero_si512(); }
static inline vs vs_dot(vs s, vw w, vw x)
{
#ifdef RS_AVX512VNNI
    return _mm512_dpbusd_epi32(s, w, x);
#else
    return _mm512_add_epi16(s, _mm512_maddubs_epi16(w, x));  /* int16: at most 8 x 2 x 15 x 127 = 30480 */
#endif
}
/* Signed weights (Q8_0 in tiles), as AVX2's: w + 128 with VNNI, else |w| times x with w's sign (a masked negation:
 * AVX-512 has no vpsignb). */
static inline vs vs_dot_q8(vs s, vw w, vw x)
{
#ifdef RS_AVX512VNNI
    return _mm512_dpbusd_epi32(s, _mm512_xor_si512(w, _mm512_set1_epi8(-128)), x);
#else
    const __m512i sx = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
    return _mm512_add_epi32(s, _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(w), sx), _mm512_set1_epi16(1)));
#endif
}
static inline vf vs_float_q8(vs s, int32_t xs)
{
#ifdef RS_AVX512VNNI
    return _mm512_cvtepi32_ps(_mm512_sub_epi32(s, _mm512_set1_epi32(128 * xs)));
#else
    (void)xs;
    return _mm512_cvtepi32_ps(s);
#endif
}
static inline vf vs_float_wide(vs s, int32_t off)
{
    return _mm512_cvtepi32_ps(_mm512_sub_epi32(s, _mm512_set1_epi32(off)));
}
static inline vf vs_float(vs s, int32_t off)
{
#ifndef RS_AVX512VNNI
    s = _mm512_madd_epi16(s, _mm512_set1_epi16(1));  /* the int16 pairs of each output into its int32 lane */
#endif
    return vs_float_wide(s, off);
}
static inline vs vs_dot_wide(vs s, vw w, vw x)
{
#ifdef RS_AVX512VNNI
    return _mm512_dpbusd_epi32(s, w, x);
#else
    return _mm512_add_epi32(s, _mm512_madd_epi16(_mm512_maddubs_epi16(w, x), _mm512_set1_epi16(1)));
#endif
}

static inline vf vf_absmax(vf m, vf v) { return _mm512_max_ps(m, _mm512_abs_ps(v)); }
static inline vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm512_div_ps(a, b); }
static inline void vw_store_q7(uint8_t *p, vf r0, vf r1, vf r2, vf r3)
{
    const __m512i b = _mm512_set1_epi32(64);
    const __m512i q0 = _mm512_add_epi32(_mm512_cvtps_epi32(r0), b), q1 = _mm512_add_epi32(_mm512_cvtps_epi32(r1), b);
    const __m512i q2 = _mm512_add_epi32(_mm512_cvtps_epi32(r2), b), q3 = _mm512_add_epi32(_mm512_cvtps_epi32(r3), b);
    const __m512i v = _mm512_or_si512(_mm512_or_si512(q0, _mm512_slli_epi32(q1, 8)),
                                      _mm512_or_si512(_mm512_slli_epi32(q2, 16), _mm512_slli_epi32(q3, 24)));
    _mm512_storeu_si512(p, v);
}

static inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
static inline vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vf_half_set1(uint16_t h) { return _mm512_cvtph_ps(_mm256_set1_epi16((short)h)); }
static inline void prefetch(const void *p) { _mm_prefetch((const char *)p, _MM_HINT_T0); }

static int cpu_ok(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c")
#ifdef RS_AVX512VNNI
           && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl")
#endif
        ;
}

#define CPU_OK cpu_ok
/* Sparse Q8_0 and Q4_0: the int8 kernels of AVX2 and AVX-VNNI (axpy_int8.h), 256-bit: vpdpbusd in its EVEX form with
 * VNNI, vpmaddubsw without, so every path gives the scalar reference's bits. On a Sapphire Rapids-class VM (2
 * threads, weights from memory, Llama-7B shapes, 50% kept, docs/SPEED.md 2026-12-08) they took 0.56-0.82 of the
 * dense time on Q4_0 where this path's own 512-bit kernels (int16 coefficients for Q4_0, floats for Q8_0) took
 * 0.71-0.94, and read their rows from cache at 26-30 GB/s against 20-21; Q8_0 the same as the float kernel. */
#define AXPY_Q8_0_FN axpy_int8_q8_0
#define AXPY_Q4_0_FN axpy_int8_q4_0
static void axpy_int8_q8_0(const void *, int64_t, const int32_t *, const float *, int64_t, int64_t, int64_t, float *);
static void axpy_int8_q4_0(const void *, int64_t, const int32_t *, const float *, int64_t, int64_t, int64_t, float *);
#include "kernels_simd.h"
#include "axpy_int8.h"
