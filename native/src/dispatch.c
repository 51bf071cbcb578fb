/* dispatch.c -- picks the kernel table once, at the first call, from what the CPU supports.
 *
 * RSPARSE_SIMD=<name> forces a path (for benchmarks and for testing a SIMD path against scalar); a name that is
 * unknown or that this CPU cannot run is ignored, and rs_simd_path() tells which path is really in use. */
#define _POSIX_C_SOURCE 200809L
#include "kernels.h"
#include "quant.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Fastest first: the first path this CPU can run wins. Scalar, always last, runs everywhere. */
static const rs_kernels *const PATHS[] = {
#ifdef RS_HAVE_AVX512
    &rs_kernels_avx512,
#endif
#ifdef RS_HAVE_AVX2
    &rs_kernels_avx2,
#endif
#ifdef RS_HAVE_NEON
    &rs_kernels_neon,
#endif
    &rs_kernels_scalar,
};
#define N_PATHS (sizeof PATHS / sizeof PATHS[0])

static pthread_once_t chosen_once = PTHREAD_ONCE_INIT;
static rs_kernels chosen;  /* the winner, its NULL entries filled from scalar; written once under chosen_once */

static int runnable(const rs_kernels *k)
{
    return k->cpu_ok == NULL || k->cpu_ok();
}

static void choose(void)
{
    const rs_kernels *pick = NULL;
    const char *want = getenv("RSPARSE_SIMD");
    for (size_t i = 0; i < N_PATHS && want && *want; i++)
        if (strcmp(PATHS[i]->name, want) == 0 && runnable(PATHS[i]))
            pick = PATHS[i];
    for (size_t i = 0; i < N_PATHS && !pick; i++)
        if (runnable(PATHS[i]))
            pick = PATHS[i];

    const rs_kernels *s = &rs_kernels_scalar;
    chosen = *pick;
    chosen.dot_f32 = pick->dot_f32 ? pick->dot_f32 : s->dot_f32;
    chosen.dot_f16 = pick->dot_f16 ? pick->dot_f16 : s->dot_f16;
    chosen.dot_q4_0 = pick->dot_q4_0 ? pick->dot_q4_0 : s->dot_q4_0;
    chosen.dot_q8_0 = pick->dot_q8_0 ? pick->dot_q8_0 : s->dot_q8_0;
}

rs_dot_fn rs_dot_for(int type)
{
    pthread_once(&chosen_once, choose);
    switch (type) {
    case RS_TYPE_F32: return chosen.dot_f32;
    case RS_TYPE_F16: return chosen.dot_f16;
    case RS_TYPE_Q4_0: return chosen.dot_q4_0;
    case RS_TYPE_Q8_0: return chosen.dot_q8_0;
    default: return NULL;
    }
}

const char *rs_simd_path(void)
{
    pthread_once(&chosen_once, choose);
    return chosen.name;
}
