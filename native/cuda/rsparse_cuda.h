/* rsparse_cuda.h -- R-Sparse's sparse matrix-vector product on an NVIDIA GPU: the semantics of rs_sparse_matvec
 * (native/include/rsparse.h), with every pointer in device memory.
 *
 *   score_j = |x_j| * colnorm_j (|x_j| when colnorm is NULL);  m_j = score_j > tau
 *   y = sum_{j: m_j} x_j W[:, j]  +  U (VS ((1 - m) * x))
 *   wt: (n_in, n_out) in wtype (RS_TYPE_F32/F16/Q4_0/Q8_0, ggml block layouts along the output dimension)
 *   u:  (n_out, rank), vs: (rank, n_in) in ftype (RS_TYPE_F32 or RS_TYPE_F16); rank = 0: no low-rank term
 *   scratch: rs_cuda_scratch_bytes(n_out, n_in, rank) bytes of device memory, allocated once by the caller
 *
 * Four launches on `stream`, all deterministic (no atomics on floats): the mask and the compaction of the kept
 * channels (one block, a prefix sum), z = VS xd (one warp per rank row), the kept rows' partial sums (blocks tile
 * the output dimension, each warp reading a contiguous, coalesced run of one kept row; the kept list is split over
 * SPLIT slices of the grid), and the final sum of the slices plus U z. The mask never leaves the device. If n_kept
 * is not NULL the call waits for the stream and stores the kept count there; otherwise it returns at once. */
#ifndef RSPARSE_CUDA_H
#define RSPARSE_CUDA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int64_t rs_cuda_scratch_bytes(int64_t n_out, int64_t n_in, int64_t rank);

/* Returns 0 (RS_OK) or a negative rs_status; RS_ERR_THREADS stands for a CUDA launch or runtime error. */
int rs_cuda_sparse_matvec(int wtype, const void *wt, int64_t n_out, int64_t n_in, const float *colnorm, float tau,
                          int ftype, const void *u, const void *vs, int64_t rank, const float *x, float *y,
                          int64_t *n_kept, void *scratch, int64_t scratch_bytes, void *stream /* cudaStream_t */);

#ifdef __cplusplus
}
#endif
#endif /* RSPARSE_CUDA_H */
