/* kernels_avx512vnni.c -- the AVX-512 path again for CPUs with AVX512-VNNI (Intel since Cascade Lake and Ice Lake,
 * AMD since Zen 4): the same kernels, the dense Q8_0 and Q4_0 ones with vpdpbusd on zmm. Compiled with -mavx512f
 * -mavx512bw -mavx512vnni -mfma -mf16c; dispatch.c prefers it to AVX-512 where cpu_ok says the CPU has VNNI. */
#define RS_AVX512VNNI 1
#include "kernels_avx512.c"
