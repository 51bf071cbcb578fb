/* dispatch.c -- picks the kernel table once, at the first call, from what the CPU supports.
 *
 * RSPARSE_SIMD=<name> forces a path at start-up (for benchmarks and for testing a SIMD path against scalar); a
 * name that is unknown or that this CPU cannot run is ignored, and rs_simd_path() tells which path is really in
 * use. rs_simd_select switches path later, so that one process can test or time every path. */
#define _POSIX_C_SOURCE 200809L
#include "kernels.h"
#include "quant.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Fastest first: the first path this CPU can run wins. Scalar, always last, runs everywhere. */
static const rs_kernels *const PATHS[] = {
#ifdef RS_HAVE_AVX512VNNI
    &rs_kernels_avx512vnni,
#endif
#ifdef RS_HAVE_AVX512
    &rs_kernels_avx512,
#endif
#ifdef RS_HAVE_AVXVNNI
    &rs_kernels_avxvnni,
#endif
#ifdef RS_HAVE_AVX2
    &rs_kernels_avx2,
#endif
#ifdef RS_HAVE_NEONDOT
    &rs_kernels_neondot,
#endif
#ifdef RS_HAVE_NEON
    &rs_kernels_neon,
#endif
    &rs_kernels_scalar,
};
#define N_PATHS (sizeof PATHS / sizeof PATHS[0])

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static rs_kernels filled[N_PATHS];   /* PATHS[i] with its NULL entries filled (FILL); written once */
static int runnable[N_PATHS];        /* cpu_ok, asked once */
static char names[N_PATHS * 16];     /* "avx512vnni,avx512,avxvnni,avx2,scalar": the runnable paths, fastest first */
static _Atomic(const rs_kernels *) current;

/* An entry a path leaves NULL comes from the next path down the list this CPU runs that has it (scalar, last, has
 * every one): AVX-512 takes AVX-VNNI's or AVX2's kernels for llama.cpp's other types. */
#define FILL(field)                                                                                          \
    for (size_t j = i + 1; !f->field && j < N_PATHS; j++)                                                    \
        if (runnable[j])                                                                                     \
            f->field = PATHS[j]->field;

static void init(void)
{
    for (size_t i = 0; i < N_PATHS; i++) {
#ifdef RS_EMULATED_SIMD
        /* Test builds only (native/tests/run_simde.sh): the AVX-512 and VNNI paths are compiled on SIMDe, which
         * emulates them with AVX2, so every path runs on the AVX2 CPU that the script requires. */
        runnable[i] = 1;
#else
        runnable[i] = PATHS[i]->cpu_ok == NULL || PATHS[i]->cpu_ok();
#endif
    }
    for (size_t i = 0; i < N_PATHS; i++) {
        const rs_kernels *p = PATHS[i];
        rs_kernels *f = &filled[i];
        *f = *p;
        FILL(mm_f32);
        FILL(mm_f16);
        FILL(mm_q4_0);
        FILL(mm_q4_0_r16);
        FILL(mm_q8_0_r16);
        FILL(mm_q8_0);
        FILL(mm_bf16);
        FILL(mm_q4_1);
        FILL(mm_q5_0);
        FILL(mm_q5_1);
        FILL(mm_q4_k);
        FILL(mm_q5_k);
        FILL(mm_q6_k);
        FILL(axpy_f32);
        FILL(axpy_f16);
        FILL(axpy_q4_0);
        FILL(axpy_q8_0);
        FILL(dequant);
        FILL(softmax);
        if (!p->gemm) {  /* the tile and its size go together */
            f->gemm = rs_kernels_scalar.gemm;
            f->gemm_mr = rs_kernels_scalar.gemm_mr;
            f->gemm_nr = rs_kernels_scalar.gemm_nr;
        }
        if (!p->igemm) {
            f->igemm = rs_kernels_scalar.igemm;
            f->igemm7 = rs_kernels_scalar.igemm7;
            f->requant = rs_kernels_scalar.requant;
            f->igemm_mr = rs_kernels_scalar.igemm_mr;
            f->igemm_nr = rs_kernels_scalar.igemm_nr;
        }
        if (runnable[i]) {
            if (names[0])
                strcat(names, ",");
            strcat(names, p->name);
        }
    }
    const rs_kernels *pick = NULL;
    const char *want = getenv("RSPARSE_SIMD");
    for (size_t i = 0; i < N_PATHS && want && *want; i++)
        if (strcmp(PATHS[i]->name, want) == 0 && runnable[i])
            pick = &filled[i];
    for (size_t i = 0; i < N_PATHS && !pick; i++)
        if (runnable[i])
            pick = &filled[i];
    atomic_store(&current, pick);
}

const rs_kernels *rs_kernels_now(void)
{
    pthread_once(&init_once, init);
    return atomic_load_explicit(&current, memory_order_acquire);
}

rs_mm_fn rs_mm_for(const rs_kernels *k, int type)
{
    switch (type) {
    case RS_TYPE_F32: return k->mm_f32;
    case RS_TYPE_F16: return k->mm_f16;
    case RS_TYPE_Q4_0: return k->mm_q4_0;
    case RS_TYPE_Q4_0_R16: return k->mm_q4_0_r16;
    case RS_TYPE_Q8_0_R16: return k->mm_q8_0_r16;
    case RS_TYPE_Q8_0: return k->mm_q8_0;
    case RS_TYPE_BF16: return k->mm_bf16;
    case RS_TYPE_Q4_1: return k->mm_q4_1;
    case RS_TYPE_Q5_0: return k->mm_q5_0;
    case RS_TYPE_Q5_1: return k->mm_q5_1;
    case RS_TYPE_Q4_K: return k->mm_q4_k;
    case RS_TYPE_Q5_K: return k->mm_q5_k;
    case RS_TYPE_Q6_K: return k->mm_q6_k;
    default: return NULL;
    }
}

rs_axpy_fn rs_axpy_for(const rs_kernels *k, int type)
{
    switch (type) {
    case RS_TYPE_F32: return k->axpy_f32;
    case RS_TYPE_F16: return k->axpy_f16;
    case RS_TYPE_Q4_0: return k->axpy_q4_0;
    case RS_TYPE_Q8_0: return k->axpy_q8_0;
    default: return NULL;
    }
}

const char *rs_simd_path(void)
{
    return rs_kernels_now()->name;
}

const char *rs_simd_paths(void)
{
    pthread_once(&init_once, init);
    return names;
}

int rs_simd_select(const char *name)
{
    pthread_once(&init_once, init);
    for (size_t i = 0; i < N_PATHS; i++) {
        if (name ? strcmp(PATHS[i]->name, name) != 0 : !runnable[i])
            continue;
        if (!runnable[i])
            return RS_ERR_PATH;
        atomic_store_explicit(&current, &filled[i], memory_order_release);
        return RS_OK;
    }
    return RS_ERR_PATH;
}
