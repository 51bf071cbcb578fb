/* kernels_avx2.c -- the AVX2 + FMA + F16C path (x86-64 since Haswell / Zen 1). Compiled with -mavx2 -mfma -mf16c
 * and nothing else: only dispatch.c decides, from cpu_ok at run time, whether these instructions are used.
 * kernels_avxvnni.c compiles it again with RS_AVXVNNI (and -mavxvnni): the same kernels, the dense quantized ones
 * and the sparse ones with vpdpbusd (bytes, multiplied and summed in fours into int32, added to an accumulator). */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"
#include "quant.h"

#ifdef RS_AVXVNNI
#define PATH avxvnni
#else
#define PATH avx2
#endif
#define VL 8
#define MR 4
#define NT 2  /* 4 x 2 accumulators + 4 weight vectors + 1 activation: 13 of the 16 ymm registers */
#define GEMM_MR 6
#define GEMM_NV 2  /* prefill GEMM tile: 6 x 2 accumulators, 2 panel vectors, 1 broadcast: 15 of 16 ymm */
#define IGEMM_MR 3
#define IGEMM_NV 2 /* integer tile: 3 x 2 sums and 3 x 2 float chains, 2 panel vectors, 1 broadcast: 15 of 16 ymm
                    * (4 x 2, 4 x 1, 2 x 2, 6 x 1 measured 9-27% slower) */

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
static inline vf vf_load_bf16(const uint16_t *p)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

/* ---- dense Q8_0 and Q4_0: one block of 32 bytes per step, against int8 activations ------------------------- */
#define QB 1

typedef __m256i vq;

static inline vq vq_load_q8(const block_q8_0 *b, int n)
{
    (void)n;
    return _mm256_loadu_si256((const __m256i *)b->qs);
}

/* The low nibbles of 16 bytes in the low half, the high ones in the high half (element i + 16 is byte i's high
 * nibble, in Q4_0 and the Q4_1/Q5 blocks): the bytes loaded into both halves (a load, no shuffle), the high half
 * shifted by 4, one mask for both. */
static inline __m256i nibbles16(const uint8_t *p)
{
    const __m256i w = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)p));
    return _mm256_and_si256(_mm256_srlv_epi64(w, _mm256_set_epi64x(4, 4, 0, 0)), _mm256_set1_epi8(0x0F));
}
static inline vq vq_load_q4(const block_q4_0 *b, int n)
{
    (void)n;
    return nibbles16(b->qs);
}

/* The activations, and what lane 0 of the block's int32 sum starts from: minus the offset times the block sum,
 * undoing the bias of unsigned weights (sum (w + c) x - c sum x = sum w x). */
typedef struct {
    __m256i q, off;
} xa;

static inline xa xa_with(const int8_t *q, int32_t off)
{
    return (xa){_mm256_loadu_si256((const __m256i *)q), _mm256_zextsi128_si256(_mm_cvtsi32_si128(off))};
}

/* AVX-VNNI takes Q8_0's weights biased by 128 (unsigned 0..255, an xor); AVX2 multiplies them as they are. */
static inline xa xa_q8(const int8_t *q, const int32_t *s, int n)
{
    (void)n;
#ifdef RS_AVXVNNI
    return xa_with(q, -128 * s[0]);
#else
    (void)s;
    return xa_with(q, 0);
#endif
}

static inline xa xa_q4(const int8_t *q, const int32_t *s, int n)
{
    (void)n;
    return xa_with(q, -8 * s[0]);
}

/* Without VNNI: vpmaddubsw multiplies unsigned bytes by signed ones and adds pairs with int16 saturation, and
 * vpmaddwd by ones adds those pairs into int32. Q8_0 uses the sign trick, |w| times x with w's sign: |w| <= 128 and
 * |x| <= 127 (rs_quantize_act never gives -128), so a pair is at most 2 * 128 * 127 = 32512 and never saturates
 * (a bias of 128, as with VNNI, could reach 2 * 255 * 127). Nibbles: pairs of at most 2 * 15 * 127. With VNNI,
 * vpdpbusd adds four products straight into the int32 accumulator, which starts at the offset. */
static inline vf vf_dot_q8(vq w, xa x)
{
#ifdef RS_AVXVNNI
    return _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(x.off, _mm256_xor_si256(w, _mm256_set1_epi8(-128)), x.q));
#else
    const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x.q, w));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
}

static inline vf vf_dot_q4(vq w, xa x)
{
#ifdef RS_AVXVNNI
    return _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(x.off, w, x.q));
#else
    const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(w, x.q), _mm256_set1_epi16(1));
    return _mm256_cvtepi32_ps(_mm256_add_epi32(p, x.off));
#endif
}

static inline vf vf_wscale(uint16_t d0, uint16_t d1)
{
    (void)d1;
    return _mm256_cvtph_ps(_mm_set1_epi16((short)d0));
}
static inline vf vf_xscale(const float *xd, int n)
{
    (void)n;
    return _mm256_set1_ps(xd[0]);
}

/* ---- dense decode of the other quantized types (kernels_simd.h): a block's 32 bytes in element order ----------- */
#define VK 1
typedef __m256i vk;
static inline vk vk_x(const int8_t *q) { return _mm256_loadu_si256((const __m256i *)q); }
/* 32 bytes' low nibbles, or high ones (a 16-bit shift: the bits it brings in from the next byte are masked off) */
static inline vk vk_nib32(const uint8_t *p, int hi)
{
    const __m256i v = _mm256_loadu_si256((const __m256i *)p);
    return _mm256_and_si256(hi ? _mm256_srli_epi16(v, 4) : v, _mm256_set1_epi8(0x0F));
}
static inline vk vk_nib16(const uint8_t *p) { return nibbles16(p); }
/* w plus ((h[e] >> shift) & mask) << 4 for the 32 bytes h */
static inline vk vk_hi(vk w, const uint8_t *h, int shift, int mask)
{
    const __m256i v = _mm256_srl_epi16(_mm256_loadu_si256((const __m256i *)h), _mm_cvtsi32_si128(shift));
    return _mm256_or_si256(w, _mm256_slli_epi16(_mm256_and_si256(v, _mm256_set1_epi8((char)mask)), 4));
}
/* w plus 16 where bit e of the 32 bits at qh is set: byte e takes qh's byte e / 8, then tests bit e % 8 */
static inline vk vk_bits32(vk w, const uint8_t *qh)
{
    int32_t h;
    memcpy(&h, qh, sizeof h);
    const __m256i byte = _mm256_set_epi64x(0x0303030303030303LL, 0x0202020202020202LL, 0x0101010101010101LL, 0);
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(h), byte);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_or_si256(w, _mm256_and_si256(set, _mm256_set1_epi8(0x10)));
}
static inline vf vf_u8(const uint8_t *p)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
static inline vk vk_sub(vk w, int c) { return _mm256_sub_epi8(w, _mm256_set1_epi8((char)c)); }
/* Unsigned q <= 63: pairs of at most 2 * 63 * 127, no int16 saturation */
static inline vf vk_dot_u(vk w, vk x)
{
#ifdef RS_AVXVNNI
    return _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, x));
#else
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)));
#endif
}
/* Signed q (|q| <= 64) with the sign trick of vf_dot_q8; vpmaddwd then adds each pair times its half's sub-scale:
 * the low 128 bits hold elements 0-15, the high ones 16-31. */
static inline vf vk_dot_s2(vk w, vk x, int s0, int s1)
{
    const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
    const __m256i sub = _mm256_set_m128i(_mm_set1_epi16((short)s1), _mm_set1_epi16((short)s0));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, sub));
}

/* ---- the integer prefill tile (kernels_simd.h's igemm) ------------------------------------------------------ */
typedef __m256i vw;
static inline vw vw_load(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline vw vw_bcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}
/* The low and the high nibble of every byte, as bytes 0..15 (Q4_0 in tiles of 16 rows). */
static inline vw vw_lo4(vw w) { return _mm256_and_si256(w, _mm256_set1_epi8(0x0F)); }
static inline vw vw_hi4(vw w) { return _mm256_and_si256(_mm256_srli_epi16(w, 4), _mm256_set1_epi8(0x0F)); }

/* Without VNNI the sums stay in int16 through the block: a step's pair is at most 2 * 15 * 127 = 3810 (nibbles
 * times activations, which rs_quantize_act keeps within +-127), so eight steps reach 30480 < 32767; vpmaddwd by
 * ones then adds each output's pairs into int32. With VNNI vpdpbusd adds the four products straight to int32. */
typedef __m256i vs;
static inline vs vs_zero(void) { return _mm256_setzero_si256(); }
static inline vs vs_dot(vs s, vw w, vw x)
{
#ifdef RS_AVXVNNI
    return _mm256_dpbusd_avx_epi32(s, w, x);
#else
    return _mm256_add_epi16(s, _mm256_maddubs_epi16(w, x));
#endif
}
static inline vf vs_float_wide(vs s, int32_t off)
{
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(s, _mm256_set1_epi32(off)));
}
static inline vf vs_float_q8(vs s, int32_t xs)
{
#ifdef RS_AVXVNNI
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(s, _mm256_set1_epi32(128 * xs)));
#else
    (void)xs;
    return _mm256_cvtepi32_ps(s);
#endif
}
static inline vf vs_float(vs s, int32_t off)
{
#ifndef RS_AVXVNNI
    s = _mm256_madd_epi16(s, _mm256_set1_epi16(1));  /* the int16 pairs of each output into its int32 lane */
#endif
    return vs_float_wide(s, off);
}
/* Signed weights (Q8_0 in tiles): with VNNI flipped to unsigned (w + 128, an xor), the bias taken off as 128 times
 * the activations' block sum; without, |w| times x with w's sign (vpmaddubsw's pairs reach 2 * 128 * 127 = 32512). */
static inline vs vs_dot_q8(vs s, vw w, vw x)
{
#ifdef RS_AVXVNNI
    return _mm256_dpbusd_avx_epi32(s, _mm256_xor_si256(w, _mm256_set1_epi8((char)0x80)), x);
#else
    return _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w)),
                                                 _mm256_set1_epi16(1)));
#endif
}
/* Bytes up to 127: a step's pair reaches 2 * 127 * 127 = 32258, so without VNNI each step goes into int32 at once. */
static inline vs vs_dot_wide(vs s, vw w, vw x)
{
#ifdef RS_AVXVNNI
    return _mm256_dpbusd_avx_epi32(s, w, x);
#else
    return _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)));
#endif
}

static inline vf vf_absmax(vf m, vf v) { return _mm256_max_ps(m, _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v)); }
static inline vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vf vf_div(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline void vw_store_q7(uint8_t *p, vf r0, vf r1, vf r2, vf r3)
{
    const __m256i b = _mm256_set1_epi32(64);
    const __m256i q0 = _mm256_add_epi32(_mm256_cvtps_epi32(r0), b), q1 = _mm256_add_epi32(_mm256_cvtps_epi32(r1), b);
    const __m256i q2 = _mm256_add_epi32(_mm256_cvtps_epi32(r2), b), q3 = _mm256_add_epi32(_mm256_cvtps_epi32(r3), b);
    const __m256i v = _mm256_or_si256(_mm256_or_si256(q0, _mm256_slli_epi32(q1, 8)),
                                      _mm256_or_si256(_mm256_slli_epi32(q2, 16), _mm256_slli_epi32(q3, 24)));
    _mm256_storeu_si256((__m256i *)p, v);
}

static inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
static inline vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vf_half_set1(uint16_t h) { return _mm256_cvtph_ps(_mm_set1_epi16((short)h)); }
static inline void prefetch(const void *p) { _mm_prefetch((const char *)p, _MM_HINT_T0); }

static int cpu_ok(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")
#ifdef RS_AVXVNNI
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
