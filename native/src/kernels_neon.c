/* kernels_neon.c -- the NEON path (AArch64, where NEON and binary16 conversion are part of the base ISA, so every
 * ARM64 CPU runs it). */
#include <arm_neon.h>
#include <string.h>

#include "kernels.h"

#define PATH neon
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

/* A block of 32 int16 values in four registers: int8 weights widened, or activations. */
typedef struct {
    int16x8_t v[4];
} vi;

#define MRQ 2  /* quantized prefill tile: 2 rows x 2 tokens, 8 weight + 8 activation + 4 accumulator registers */
#define NTQ 2

static inline vi widen(int8x16_t a, int8x16_t b)
{
    return (vi){{vmovl_s8(vget_low_s8(a)), vmovl_s8(vget_high_s8(a)), vmovl_s8(vget_low_s8(b)),
                 vmovl_s8(vget_high_s8(b))}};
}

static inline vi vi_load_i8(const int8_t *q) { return widen(vld1q_s8(q), vld1q_s8(q + 16)); }

static inline vi vi_load_q4(const uint8_t *q)
{
    const uint8x16_t b = vld1q_u8(q);
    return widen(vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0F))), vdupq_n_s8(8)),
                 vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(b, 4)), vdupq_n_s8(8)));
}

static inline vi vi_load_i16(const int16_t *x)
{
    return (vi){{vld1q_s16(x), vld1q_s16(x + 8), vld1q_s16(x + 16), vld1q_s16(x + 24)}};
}

/* Widening multiply-adds into 4 int32 lanes, 8 products each (up to 3.3e7, so the float conversion may round by
 * a part in 2^24: the same in decode and prefill, which share this function). */
static inline vf vf_madd_i16(vi w, vi x)
{
    int32x4_t s = vdupq_n_s32(0);
    for (int j = 0; j < 4; j++) {
        s = vmlal_s16(s, vget_low_s16(w.v[j]), vget_low_s16(x.v[j]));
        s = vmlal_high_s16(s, w.v[j], x.v[j]);
    }
    return vcvtq_f32_s32(s);
}

static inline float half_to_float(uint16_t h)
{
    return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

static inline vf vf_mul(vf a, vf b) { return vmulq_f32(a, b); }
static inline vf vf_half_set1(uint16_t h) { return vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))); }
static inline void prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }

#define CPU_OK NULL  /* every AArch64 CPU has NEON */

#include "kernels_simd.h"
