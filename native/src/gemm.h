/* gemm.h -- the prefill GEMM (gemm.c), for rs_matmul and rs_matmul_wt. */
#ifndef RS_GEMM_H
#define RS_GEMM_H

#include <stdint.h>

#include "kernels.h"
#include "rsparse.h"

/* Panels of RS_GEMM_KC input channels x RS_GEMM_NC outputs. KC is a multiple of 32, so a quantized base row's chunk
 * is whole blocks; NC a multiple of 32 (the companion's blocks) and of every path's gemm_nr. */
#define RS_GEMM_KC 256
#define RS_GEMM_NC 128
/* Floats of scratch one thread's share needs (a multiple of 16: 64-byte parts): the float form's panel and a row
 * buffer; or the integer form's panel (a byte a weight, and a scale per 32) after, for the companion's layout, the
 * floats it is requantized from. */
#define RS_GEMM_SCRATCH_FLOATS (RS_GEMM_KC * RS_GEMM_NC + RS_GEMM_KC * RS_GEMM_NC / 4 + RS_GEMM_KC * RS_GEMM_NC / 32)

/* y (n_tok, n_out) = x (n_tok, n_in) W^T on kernel table k. rows_in = 0: w is (n_out, n_in), rows rb bytes apart
 * (rs_matmul's layout); rows_in = 1: w is (n_in, n_out) (rs_sparse_matvec's wt). Arguments already checked. */
int rs_gemm(rs_pool *pool, const rs_kernels *k, int type, const void *w, int64_t rb, int rows_in, int64_t n_out,
            int64_t n_in, const float *x, int64_t n_tok, float *y);

/* The same on the calling thread, for a caller already inside a pool job (attention's heads): token t's
 * activations at x + t * ldx, its outputs at y + t * ldy; scratch holds RS_GEMM_SCRATCH_FLOATS floats (64-byte
 * aligned). */
void rs_gemm_serial(const rs_kernels *k, int type, const void *w, int64_t rb, int rows_in, int64_t n_out,
                    int64_t n_in, const float *x, int64_t ldx, int64_t n_tok, float *y, int64_t ldy, float *scratch);

#endif /* RS_GEMM_H */
