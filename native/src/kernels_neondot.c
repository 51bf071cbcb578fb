/* kernels_neondot.c -- the NEON path again for ARM CPUs with the dotprod extension: the same kernels, the dense
 * Q8_0 and Q4_0 ones with sdot. Compiled with -march=armv8.2-a+dotprod; dispatch.c prefers it to NEON where cpu_ok
 * says the CPU has dotprod. */
#define RS_NEONDOT 1
#include "kernels_neon.c"
