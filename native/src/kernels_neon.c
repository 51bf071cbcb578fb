/* kernels_neon.c -- the NEON path (AArch64, where NEON and binary16 conversion are part of the base ISA, so every
 * ARM64 CPU runs it). kernels_neondot.c compiles it again with RS_NEONDOT and -march=armv8.2-a+dotprod: the same
 * kernels, the dense Q8_0 and Q4_0 ones with sdot (vdotq_s32), for the CPUs that have it (most since Cortex-A75,
 * every Apple M; optional before ARMv8.4, so a runtime check, cpu_ok). */
#include <arm_neon.h>
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "quant.h"

#ifdef RS_NEONDOT
#ifndef __ARM_FEATURE_DOTPROD
#error "kernels_neondot.c needs a compiler flag that enables dotprod (-march=armv8.2-a+dotprod)"
#endif
#include <sys/auxv.h>
#define PATH neondot
#else
#define PATH neon
#endif
#define VL 4
#define MR 4
#define NT 4  /* 4 x 4 accumulators + 4 weight vectors + 1 activation: 21 of the 32 q registers */
#define GEMM_MR 6
#define GEMM_NV 4  /* prefill GEMM tile: 6 x 4 accumulators, 4 panel vectors, 1 broadcast: 29 of 32 q */
#define IGEMM_MR 3
#define IGEMM_NV 4 /* integer tile: 3 x 4 sums and 3 x 4 float chains, 4 panel vectors, 1 broadcast: 29 of 32 q */

typedef float32x4_t vf;

static inline vf vf_zero(void) { return vdupq_n_f32(0.0f); }
static inline vf vf_load(const float *p) { return vld1q_f32(p); }
static inline void vf_store(float *p, vf v) { vst1q_f32(p, v); }
static inline vf vf_set1(float s) { return vdupq_n_f32(s); }
static inline vf vf_fma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }

static inline float vf_hsum(vf v)
{
    const float32x2_t s = vadd_f32(vget_low_f32(v), vget_high_f32(v));
    return vget_lane_f32(s, 0) + vget_lane_f32(s, 1);
}

static inline vf vf_load_f16(const uint16_t *p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
static inline vf vf_load_bf16(const uint16_t *p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }

/* Exactly 4 bytes read: a wider load could run past the last block of the last row. */
static inline uint8x8_t load4(const void *p)
{
    uint32_t u;
    memcpy(&u, p, 4);
    return vreinterpret_u8_u32(vdup_n_u32(u));
}

static inline vf vf_load_i8(const int8_t *p)
{
    const int16x8_t q = vmovl_s8(vreinterpret_s8_u8(load4(p)));
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(q)));
}

static inline vf vf_load_q4(const uint8_t *p, int hi)
{
    uint8x8_t b = load4(p);
    b = hi ? vshr_n_u8(b, 4) : vand_u8(b, vdup_n_u8(0xF));
    const int16x8_t q = vsubq_s16(vreinterpretq_s16_u16(vmovl_u8(b)), vdupq_n_s16(8));
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(q)));
}

/* ---- dense Q8_0 and Q4_0: one block per step, against int8 activations --------------------------------------- */
#define QB 1

/* A block's 32 bytes: elements 0-15 and 16-31. */
typedef struct {
    int8x16_t lo, hi;
} vq;

static inline vq vq_load_q8(const block_q8_0 *b, int n)
{
    (void)n;
    return (vq){vld1q_s8(b->qs), vld1q_s8(b->qs + 16)};
}

/* 16 bytes' low nibbles (elements 0-15) and high ones (16-31): Q4_0's order, and the Q4_1/Q5 blocks' */
static inline vq nibbles16(const uint8_t *p)
{
    const uint8x16_t q = vld1q_u8(p);
    return (vq){vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F))), vreinterpretq_s8_u8(vshrq_n_u8(q, 4))};
}
static inline vq vq_load_q4(const block_q4_0 *b, int n)
{
    (void)n;
    return nibbles16(b->qs);
}

/* ARM multiplies signed bytes by signed bytes, so the activations need nothing from the block sums. */
typedef vq xa;

static inline xa xa_q8(const int8_t *q, const int32_t *s, int n)
{
    (void)s;
    (void)n;
    return (xa){vld1q_s8(q), vld1q_s8(q + 16)};
}
#define xa_q4 xa_q8

/* With dotprod (ARMv8.2 and later, optional before 8.4: the neondot path, chosen at run time), sdot adds four
 * byte products into each int32 lane. Baseline ARMv8.0: vmull_s8 and vmlal_high_s8 sum two products in int16
 * (|w| <= 128 and |x| <= 127, since rs_quantize_act never gives -128: at most 2 * 128 * 127 = 32512, no overflow),
 * then vpadalq_s16 adds pairs of those into int32. */
static inline vf vf_dot_q8(vq w, xa x)
{
#ifdef __ARM_FEATURE_DOTPROD
    const int32x4_t s = vdotq_s32(vdotq_s32(vdupq_n_s32(0), w.lo, x.lo), w.hi, x.hi);
#else
    const int16x8_t p0 = vmlal_high_s8(vmull_s8(vget_low_s8(w.lo), vget_low_s8(x.lo)), w.lo, x.lo);
    const int16x8_t p1 = vmlal_high_s8(vmull_s8(vget_low_s8(w.hi), vget_low_s8(x.hi)), w.hi, x.hi);
    const int32x4_t s = vpadalq_s16(vpaddlq_s16(p0), p1);
#endif
    return vcvtq_f32_s32(s);
}

/* Nibbles 0..15 centred to -8..7 in bytes: the products are then Q8_0's. */
static inline vf vf_dot_q4(vq w, xa x)
{
    const int8x16_t eight = vdupq_n_s8(8);
    return vf_dot_q8((vq){vsubq_s8(w.lo, eight), vsubq_s8(w.hi, eight)}, x);
}

/* ---- dense decode of the other quantized types (kernels_simd.h): a block's 32 bytes, elements 0-15 and 16-31 --- */
#define VK 1
typedef vq vk;
static inline vk vk_x(const int8_t *q) { return (vk){vld1q_s8(q), vld1q_s8(q + 16)}; }
static inline vk vk_nib32(const uint8_t *p, int hi)
{
    uint8x16_t a = vld1q_u8(p), b = vld1q_u8(p + 16);
    if (hi) {
        a = vshrq_n_u8(a, 4), b = vshrq_n_u8(b, 4);
    } else {
        a = vandq_u8(a, vdupq_n_u8(0x0F)), b = vandq_u8(b, vdupq_n_u8(0x0F));
    }
    return (vk){vreinterpretq_s8_u8(a), vreinterpretq_s8_u8(b)};
}
static inline vk vk_nib16(const uint8_t *p) { return nibbles16(p); }
/* w plus ((h[e] >> shift) & mask) << 4 for the 32 bytes h (a negative count shifts right) */
static inline vk vk_hi(vk w, const uint8_t *h, int shift, int mask)
{
    const int8x16_t sh = vdupq_n_s8((int8_t)-shift);
    const uint8x16_t m = vdupq_n_u8((uint8_t)mask);
    const uint8x16_t a = vshlq_n_u8(vandq_u8(vshlq_u8(vld1q_u8(h), sh), m), 4);
    const uint8x16_t b = vshlq_n_u8(vandq_u8(vshlq_u8(vld1q_u8(h + 16), sh), m), 4);
    return (vk){vorrq_s8(w.lo, vreinterpretq_s8_u8(a)), vorrq_s8(w.hi, vreinterpretq_s8_u8(b))};
}
/* w plus 16 where bit e of the 32 bits at qh is set: byte e holds qh's byte e / 8, tested against bit e % 8 */
static inline vk vk_bits32(vk w, const uint8_t *qh)
{
    const uint8x16_t bits = vreinterpretq_u8_u64(vdupq_n_u64(0x8040201008040201ULL)), sixteen = vdupq_n_u8(0x10);
    const uint8x16_t lo = vcombine_u8(vdup_n_u8(qh[0]), vdup_n_u8(qh[1]));
    const uint8x16_t hi = vcombine_u8(vdup_n_u8(qh[2]), vdup_n_u8(qh[3]));
    return (vk){vorrq_s8(w.lo, vreinterpretq_s8_u8(vandq_u8(vtstq_u8(lo, bits), sixteen))),
                vorrq_s8(w.hi, vreinterpretq_s8_u8(vandq_u8(vtstq_u8(hi, bits), sixteen)))};
}
static inline vf vf_u8(const uint8_t *p) { return vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(load4(p))))); }
static inline vk vk_sub(vk w, int c)
{
    const int8x16_t v = vdupq_n_s8((int8_t)c);
    return (vk){vsubq_s8(w.lo, v), vsubq_s8(w.hi, v)};
}
/* q <= 63 is a valid signed byte: Q8_0's signed products */
static inline vf vk_dot_u(vk w, vk x) { return vf_dot_q8(w, x); }
/* Each half's int32 lanes (elements 0-15, then 16-31) times its sub-scale: |q| <= 64, so a lane stays below
 * 2^23 even before the scale, and the float conversion is exact. */
static inline vf vk_dot_s2(vk w, vk x, int s0, int s1)
{
#ifdef __ARM_FEATURE_DOTPROD
    const int32x4_t a = vdotq_s32(vdupq_n_s32(0), w.lo, x.lo), b = vdotq_s32(vdupq_n_s32(0), w.hi, x.hi);
#else
    const int32x4_t a = vpaddlq_s16(vmlal_high_s8(vmull_s8(vget_low_s8(w.lo), vget_low_s8(x.lo)), w.lo, x.lo));
    const int32x4_t b = vpaddlq_s16(vmlal_high_s8(vmull_s8(vget_low_s8(w.hi), vget_low_s8(x.hi)), w.hi, x.hi));
#endif
    return vcvtq_f32_s32(vmlaq_n_s32(vmulq_n_s32(a, s0), b, s1));
}

static inline vf vf_wscale(uint16_t d0, uint16_t d1)
{
    (void)d1;
    return vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(d0)));
}

static inline vf vf_xscale(const float *xd, int n)
{
    (void)n;
    return vdupq_n_f32(xd[0]);
}

/* ---- the integer prefill tile (kernels_simd.h's igemm) ------------------------------------------------------ */
/* Nibbles (0..15) are valid signed bytes, so the signed multiplies take them as they are. With dotprod, sdot adds
 * each lane's four products into int32; without, vmull_s8 gives the products in int16 (at most 15 x 127), a
 * pairwise add joins each output's pairs (lanes 2j, 2j + 1 of the 16-byte vector's products are output j's), and
 * vpadalq_s16 adds the pairs of those into the output's int32 lane. */
typedef int8x16_t vw;
static inline vw vw_load(const uint8_t *p) { return vld1q_s8((const int8_t *)p); }
static inline vw vw_bcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return vreinterpretq_s8_s32(vdupq_n_s32(v));
}
static inline vw vw_lo4(vw w) { return vandq_s8(w, vdupq_n_s8(0x0F)); }
static inline vw vw_hi4(vw w) { return vreinterpretq_s8_u8(vshrq_n_u8(vreinterpretq_u8_s8(w), 4)); }

typedef int32x4_t vs;
static inline vs vs_zero(void) { return vdupq_n_s32(0); }
static inline vs vs_dot(vs s, vw w, vw x)
{
#ifdef RS_NEONDOT
    return vdotq_s32(s, w, x);
#else
    const int16x8_t lo = vmull_s8(vget_low_s8(w), vget_low_s8(x)), hi = vmull_high_s8(w, x);
    return vpadalq_s16(s, vpaddq_s16(lo, hi));
#endif
}
static inline vf vs_float(vs s, int32_t off) { return vcvtq_f32_s32(vsubq_s32(s, vdupq_n_s32(off))); }
/* Bytes up to 127 are signed bytes too; without dotprod the int16 products (at most 127 x 127) pair up to 32258. */
#define vs_dot_wide vs_dot
#define vs_float_wide vs_float
/* Signed weights (Q8_0 in tiles): the signed products as they are (without dotprod, int16 pairs of at most
 * 2 * 128 * 127 = 32512: the activations stay within +-127). */
#define vs_dot_q8 vs_dot
static inline vf vs_float_q8(vs s, int32_t xs)
{
    (void)xs;
    return vs_float(s, 0);
}

static inline vf vf_absmax(vf m, vf v) { return vmaxq_f32(m, vabsq_f32(v)); }
static inline vf vf_max(vf a, vf b) { return vmaxq_f32(a, b); }
static inline vf vf_div(vf a, vf b) { return vdivq_f32(a, b); }
static inline void vw_store_q7(uint8_t *p, vf r0, vf r1, vf r2, vf r3)
{
    const int32x4_t b = vdupq_n_s32(64);
    const int32x4_t q0 = vaddq_s32(vcvtnq_s32_f32(r0), b), q1 = vaddq_s32(vcvtnq_s32_f32(r1), b);
    const int32x4_t q2 = vaddq_s32(vcvtnq_s32_f32(r2), b), q3 = vaddq_s32(vcvtnq_s32_f32(r3), b);
    const int32x4_t v = vorrq_s32(vorrq_s32(q0, vshlq_n_s32(q1, 8)),
                                  vorrq_s32(vshlq_n_s32(q2, 16), vshlq_n_s32(q3, 24)));
    vst1q_s32((int32_t *)(void *)p, v);
}

static inline float half_to_float(uint16_t h)
{
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

static inline vf vf_mul(vf a, vf b) { return vmulq_f32(a, b); }
static inline vf vf_half_set1(uint16_t h) { return vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))); }
static inline void prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }

#ifdef RS_NEONDOT
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)  /* Linux's bit for dotprod in AT_HWCAP (asm/hwcap.h) */
#endif
static int cpu_ok(void)
{
#if defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#elif defined(__APPLE__)
    return 1;  /* every Apple ARM64 CPU (M1 on) has dotprod */
#else
    return 0;
#endif
}
#define CPU_OK cpu_ok
#else
#define CPU_OK NULL  /* every AArch64 CPU has NEON */
#endif

/* Sparse Q8_0 and Q4_0: this path's own kernels (below), with int8 coefficients. */
#define AXPY_Q8_0_FN axpy_int8_q8_0
#define AXPY_Q4_0_FN axpy_int8_q4_0
static void axpy_int8_q8_0(const void *, int64_t, const int32_t *, const float *, int64_t, int64_t, int64_t, float *);
static void axpy_int8_q4_0(const void *, int64_t, const int32_t *, const float *, int64_t, int64_t, int64_t, float *);
#include "kernels_simd.h"
#define RS_I8_ROUND(v) ((int8_t)vcvtns_s32_f32(v))  /* round half to even, as lrintf, in one instruction */
#define RS_I8_HALF(h) half_to_float(h)
#include "sparse_int8.h"

/* ---- sparse Q8_0 and Q4_0 with int8 coefficients (sparse_int8.h; kernels_scalar.c's arithmetic, bit for bit) ----
 * NEON multiplies int8 by int8 into int16 (smull, smlal: 8 products an instruction), so kept rows need no
 * interleaving: each row's weights are multiplied by its coefficient, broadcast. Q4_0's nibbles (0..15, "- 8" taken
 * off as - 8 * sum(k)) times |k| <= 127 stay within int16 over a whole group of 16 rows (16 * 15 * 127), so they are
 * summed in int16 and widened once per block; Q8_0's products reach 128 * 127, so two rows are summed in int16 and
 * widened (saddw) into int32. (The ARMv8.2 dot product, sdot, adds 4 products per lane but needs 4 rows' bytes
 * interleaved first, 8 zips per 4 rows of 16 bytes: for Q8_0 that would replace 16 widening adds per 4 rows, for
 * Q4_0 nothing; not done.) The coefficients are made in C by sparse_int8.h's reference, as kernels_scalar.c does. */

/* y[0..32) = fma(float(acc + off), S, y), acc in output order. */
static inline void add_block(const int32x4_t *acc, int32_t off, float s, float *y)
{
    const float32x4_t sv = vdupq_n_f32(s);
    for (int t = 0; t < 8; t++) {
        const float32x4_t v = vcvtq_f32_s32(vaddq_s32(acc[t], vdupq_n_s32(off)));
        vst1q_f32(y + 4 * t, vfmaq_f32(vld1q_f32(y + 4 * t), v, sv));
    }
}

/* One Q8_0 block of the group's rows, coefficients k: acc[t] = outputs 4t .. 4t + 3. */
static inline void block_q8_0_sums(const uint8_t *const *r, int64_t off, const int8_t *k, int32x4_t *acc)
{
    for (int t = 0; t < 8; t++)
        acc[t] = vdupq_n_s32(0);
    for (int p = 0; p < RS_I8_ROWS_Q8_0; p += 2) {
        const int8_t *a = (const int8_t *)r[p] + off + 2, *b = (const int8_t *)r[p + 1] + off + 2;
        const int8x16_t ka = vdupq_n_s8(k[p]), kb = vdupq_n_s8(k[p + 1]);
        for (int h = 0; h < 2; h++) {
            const int8x16_t wa = vld1q_s8(a + 16 * h), wb = vld1q_s8(b + 16 * h);
            const int16x8_t lo = vmlal_s8(vmull_s8(vget_low_s8(wa), vget_low_s8(ka)), vget_low_s8(wb), vget_low_s8(kb));
            const int16x8_t hi = vmlal_high_s8(vmull_high_s8(wa, ka), wb, kb);
            acc[4 * h] = vaddw_s16(acc[4 * h], vget_low_s16(lo));
            acc[4 * h + 1] = vaddw_high_s16(acc[4 * h + 1], lo);
            acc[4 * h + 2] = vaddw_s16(acc[4 * h + 2], vget_low_s16(hi));
            acc[4 * h + 3] = vaddw_high_s16(acc[4 * h + 3], hi);
        }
    }
}

/* One Q4_0 block: the nibbles 0..15 (low: outputs 0-15, high: 16-31) times k, summed in int16, then widened. */
static inline void block_q4_0_sums(const uint8_t *const *r, int64_t off, const int8_t *k, int32x4_t *acc)
{
    int16x8_t s[4] = {vdupq_n_s16(0), vdupq_n_s16(0), vdupq_n_s16(0), vdupq_n_s16(0)};
    for (int i = 0; i < RS_I8_ROWS_Q4_0; i++) {
        const uint8x16_t b = vld1q_u8(r[i] + off + 2);
        const int8x16_t lo = vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0F)));
        const int8x16_t hi = vreinterpretq_s8_u8(vshrq_n_u8(b, 4));
        const int8x16_t kv = vdupq_n_s8(k[i]);
        s[0] = vmlal_s8(s[0], vget_low_s8(lo), vget_low_s8(kv));
        s[1] = vmlal_high_s8(s[1], lo, kv);
        s[2] = vmlal_s8(s[2], vget_low_s8(hi), vget_low_s8(kv));
        s[3] = vmlal_high_s8(s[3], hi, kv);
    }
    for (int t = 0; t < 4; t++) {
        acc[2 * t] = vmovl_s16(vget_low_s16(s[t]));
        acc[2 * t + 1] = vmovl_high_s16(s[t]);
    }
}

#define AXPY_INT8(type, TYPE, offset)                                                                        \
    static void axpy_int8_##type(const void *wt, int64_t rb, const int32_t *idx, const float *xk,             \
                                 int64_t n_kept, int64_t o0, int64_t n, float *y)                           \
    {                                                                                                        \
        enum { R = RS_I8_ROWS_##TYPE };                                                                      \
        const int64_t bsize = (int64_t)sizeof(block_##type), n_blocks = n / RS_QK;                         \
        int8_t k[RS_I8_CHUNK * R];                                                                           \
        float s[RS_I8_CHUNK];                                                                                \
        int32_t sum[RS_I8_CHUNK];                                                                            \
        for (int64_t g = 0; g < n_kept; g += R) {                                                            \
            const uint8_t *rows[R], *next[R];                                                                \
            float xs[R];                                                                                     \
            group_rows(wt, rb, idx, xk, n_kept, g, R, o0 / RS_QK * bsize, rows, next, xs);                   \
            for (int64_t b0 = 0, nb; b0 < n_blocks; b0 += nb) {                                             \
                nb = min64(RS_I8_CHUNK - (o0 / RS_QK + b0) % RS_I8_CHUNK, n_blocks - b0);                    \
                rs_i8_chunk_coefficients(R, rows, xs, b0 * bsize, bsize, (int)nb, k, s, sum);                   \
                for (int j = 0; j < nb; j++) {                                                               \
                    const int64_t off = (b0 + j) * bsize;                                                    \
                    prefetch_rows(next, R, off);                                                             \
                    int32x4_t acc[8];                                                                        \
                    block_##type##_sums(rows, off, k + j * R, acc);                                          \
                    add_block(acc, -(offset) * sum[j], s[j], y + (b0 + j) * RS_QK);                          \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }
AXPY_INT8(q8_0, Q8_0, 0)
AXPY_INT8(q4_0, Q4_0, 8)
