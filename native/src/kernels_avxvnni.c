/* kernels_avxvnni.c -- the AVX2 path again for CPUs with AVX-VNNI (Intel since Alder Lake, AMD since Zen 5): the
 * same kernels, with each int16 multiply-add fused with the sum it feeds (vpdpwssd). Compiled with -mavx2 -mfma
 * -mf16c -mavxvnni; dispatch.c prefers it to AVX2 where cpu_ok says the CPU has AVX-VNNI.
 * Built with RS_EMULATE_VNNI (cmake -DRSPARSE_EMULATE_VNNI=ON, tests only), the VNNI instructions are replaced by
 * exact AVX2 sequences and cpu_ok asks for AVX2 alone: this path's own code then runs, and is tested bit for bit
 * against scalar, on CPUs without AVX-VNNI. */
#define RS_AVXVNNI 1
#include "kernels_avx2.c"
