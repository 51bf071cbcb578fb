/* kernels_neon.c -- the NEON path (AArch64, where NEON and binary16 conversion are part of the base ISA, so every
 * ARM64 CPU runs it). kernels_neondot.c compiles it again with RS_NEONDOT and -march=armv8.2-a+dotprod: the same
 * kernels, the dense Q8_0 and Q4_0 ones with sdot (vdotq_s32), for the CPUs that have it (most since Cortex-A75,
 * every Apple M; optional before ARMv8.4, so a runtime check, cpu_ok). */
#include <arm_neon.h>
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
#define MRQ 2  /* quantized prefill tile: 2 rows x 2 tokens, 4 weight + 4 activation + 4 accumulator registers */
#define NTQ 2

/* A block's 32 bytes: elements 0-15 and 16-31. */
typedef struct {
    int8x16_t lo, hi;
} vq;

static inline vq vq_load_q8(const block_q8_0 *b, int n)
{
    (void)n;
    return (vq){vld1q_s8(b->qs), vld1q_s8(b->qs + 16)};
}

static inline vq vq_load_q4(const block_q4_0 *b, int n)
{
    (void)n;
    const uint8x16_t q = vld1q_u8(b->qs);
    return (vq){vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F))), vreinterpretq_s8_u8(vshrq_n_u8(q, 4))};
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

#include "kernels_simd.h"
