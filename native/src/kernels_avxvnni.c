/* kernels_avxvnni.c -- the AVX2 path again for CPUs with AVX-VNNI (Intel since Alder Lake, AMD since Zen 5): the
 * same kernels, their byte dot products in vpdpbusd (four products summed into int32 in one instruction, where AVX2
 * takes vpmaddubsw and vpmaddwd, or int16 pairs for the sparse kernel's signed Q8_0 weights). Compiled with -mavx2
 * -mfma -mf16c -mavxvnni; dispatch.c prefers it to AVX2 where cpu_ok says the CPU has AVX-VNNI.
 * On CPUs without AVX-VNNI its tests run on SIMDe's versions of the instructions (native/tests/run_simde.sh). */
#define RS_AVXVNNI 1
#include "kernels_avx2.c"
