// sparse.cu -- rs_cuda_sparse_matvec (see rsparse_cuda.h): R-Sparse's rank-aware sparse matvec on the GPU.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "rsparse.h"
#include "rsparse_cuda.h"

namespace {

constexpr int QK = 32;             // elements per Q4_0 / Q8_0 block
constexpr int Q8_BYTES = 34;       // fp16 scale + 32 int8
constexpr int Q4_BYTES = 18;       // fp16 scale + 16 bytes of nibbles
constexpr int OUT_PER_THREAD = 4;  // consecutive outputs per thread: a warp covers 128 outputs of one kept row
constexpr int THREADS = 128;       // per block of the partial-sum kernel: 512 outputs
constexpr int SPLIT = 32;          // slices of the kept list, summed by the last kernel (enough blocks to fill a GPU)
constexpr int MASK_THREADS = 1024;

__device__ __forceinline__ float half_at(const uint8_t *p)
{
    return __half2float(*reinterpret_cast<const __half *>(p));
}

// Weight o of a row of n_out elements in type T, as float (ggml's layouts).
template <int T>
__device__ __forceinline__ float weight(const uint8_t *row, int64_t o)
{
    if (T == RS_TYPE_F32)
        return reinterpret_cast<const float *>(row)[o];
    if (T == RS_TYPE_F16)
        return half_at(row + 2 * o);
    if (T == RS_TYPE_Q8_0) {
        const uint8_t *b = row + (o / QK) * Q8_BYTES;
        return half_at(b) * (float)(int8_t)b[2 + o % QK];
    }
    const uint8_t *b = row + (o / QK) * Q4_BYTES;  // Q4_0: element j < 16 in the low nibble of byte j, else high
    const int j = (int)(o % QK);
    const int q = j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4);
    return half_at(b) * (float)(q - 8);
}

// Step 1: mask and compaction in one block, in channel order (so every later sum has a fixed order).
// scratch: count (1 int) | idx (n_in int) | xk (n_in) | xd (n_in)
__global__ void mask_kernel(const float *x, const float *colnorm, float tau, int n_in, int *count, int *idx,
                            float *xk, float *xd)
{
    __shared__ int warp_sums[MASK_THREADS / 32];
    __shared__ int base;
    if (threadIdx.x == 0)
        base = 0;
    __syncthreads();
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int j0 = 0; j0 < n_in; j0 += MASK_THREADS) {
        const int j = j0 + threadIdx.x;
        float xj = 0.0f;
        int keep = 0;
        if (j < n_in) {
            xj = x[j];
            const float score = colnorm ? fabsf(xj) * colnorm[j] : fabsf(xj);
            keep = score > tau;
            xd[j] = keep ? 0.0f : xj;
        }
        // exclusive prefix sum of keep over the block: within warps by ballot, then over warp totals
        const unsigned ballot = __ballot_sync(0xFFFFFFFFu, keep);
        const int in_warp = __popc(ballot & ((1u << lane) - 1u));
        if (lane == 0)
            warp_sums[warp] = __popc(ballot);
        __syncthreads();
        if (warp == 0) {
            const int v = lane < MASK_THREADS / 32 ? warp_sums[lane] : 0;
            int incl = v;
            for (int d = 1; d < 32; d *= 2) {
                const int t = __shfl_up_sync(0xFFFFFFFFu, incl, d);
                if (lane >= d)
                    incl += t;
            }
            warp_sums[lane] = incl - v;  // exclusive
        }
        __syncthreads();
        if (keep) {
            const int at = base + warp_sums[warp] + in_warp;
            idx[at] = j;
            xk[at] = xj;
        }
        __syncthreads();
        if (threadIdx.x == MASK_THREADS - 1)
            base += warp_sums[warp] + in_warp + keep;
        __syncthreads();
    }
    if (threadIdx.x == 0)
        *count = base;
}

// Step 2: z[r] = VS[r] . xd, one warp per rank row (coalesced along the row), fixed-order warp reduction.
template <int F>
__global__ void lowrank_z_kernel(const uint8_t *vs, int64_t rank, int64_t n_in, const float *xd, float *z)
{
    const int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rank)
        return;
    const int64_t rb = n_in * (F == RS_TYPE_F32 ? 4 : 2);
    float s = 0.0f;
    for (int64_t j = lane; j < n_in; j += 32)
        s = fmaf(weight<F>(vs + r * rb, j), xd[j], s);
    for (int d = 16; d > 0; d /= 2)
        s += __shfl_down_sync(0xFFFFFFFFu, s, d);
    if (lane == 0)
        z[r] = s;
}

// Step 3: partial[s][o] = sum over kept k = s, s + SPLIT, ... of xk[k] * wt[idx[k]][o].
// grid (ceil(n_out / 512), SPLIT); consecutive threads own consecutive 4-output groups of the same kept row, so a
// warp reads one contiguous run of that row.
template <int T>
__global__ void partial_kernel(const uint8_t *wt, int64_t rb, int64_t n_out, const int *count, const int *idx,
                               const float *xk, float *partial)
{
    const int64_t o0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * OUT_PER_THREAD;
    const int s = blockIdx.y, n_kept = *count;
    float acc[OUT_PER_THREAD] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (o0 >= n_out)
        return;
    for (int k = s; k < n_kept; k += SPLIT) {
        const uint8_t *row = wt + (int64_t)idx[k] * rb;
        const float xv = xk[k];
#pragma unroll
        for (int i = 0; i < OUT_PER_THREAD; i++)
            if (o0 + i < n_out)
                acc[i] = fmaf(weight<T>(row, o0 + i), xv, acc[i]);
    }
#pragma unroll
    for (int i = 0; i < OUT_PER_THREAD; i++)
        if (o0 + i < n_out)
            partial[(int64_t)s * n_out + o0 + i] = acc[i];
}

// Step 4: y[o] = sum_s partial[s][o] + U[o] . z
template <int F>
__global__ void finish_kernel(const float *partial, int64_t n_out, const uint8_t *u, int64_t rank, const float *z,
                              float *y)
{
    const int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= n_out)
        return;
    float s = 0.0f;
    for (int i = 0; i < SPLIT; i++)
        s += partial[(int64_t)i * n_out + o];
    const int64_t rb = rank * (F == RS_TYPE_F32 ? 4 : 2);
    for (int64_t r = 0; r < rank; r++)
        s = fmaf(weight<F>(u + o * rb, r), z[r], s);
    y[o] = s;
}

int64_t row_bytes(int type, int64_t n)
{
    switch (type) {
    case RS_TYPE_F32: return 4 * n;
    case RS_TYPE_F16: return 2 * n;
    case RS_TYPE_Q8_0: return n % QK ? -1 : n / QK * Q8_BYTES;
    case RS_TYPE_Q4_0: return n % QK ? -1 : n / QK * Q4_BYTES;
    default: return -1;
    }
}

template <int T>
void launch_partial(dim3 grid, cudaStream_t st, const uint8_t *wt, int64_t rb, int64_t n_out, const int *count,
                    const int *idx, const float *xk, float *partial)
{
    partial_kernel<T><<<grid, THREADS, 0, st>>>(wt, rb, n_out, count, idx, xk, partial);
}

}  // namespace

extern "C" int64_t rs_cuda_scratch_bytes(int64_t n_out, int64_t n_in, int64_t rank)
{
    if (n_out <= 0 || n_in <= 0 || n_in > INT32_MAX || rank < 0)
        return -1;
    // count | idx | xk | xd | z | partial, each 4-byte words, partial 16-byte aligned
    return 4 * ((1 + 3 * n_in + rank + 3) / 4 * 4 + (int64_t)SPLIT * n_out);
}

extern "C" int rs_cuda_sparse_matvec(int wtype, const void *wt, int64_t n_out, int64_t n_in, const float *colnorm,
                                     float tau, int ftype, const void *u, const void *vs, int64_t rank,
                                     const float *x, float *y, int64_t *n_kept, void *scratch,
                                     int64_t scratch_bytes, void *stream)
{
    if (!wt || !x || !y || !scratch)
        return RS_ERR_NULL;
    const int64_t rb = row_bytes(wtype, n_out);
    if (rb < 0)
        return wtype == RS_TYPE_F32 || wtype == RS_TYPE_F16 || wtype == RS_TYPE_Q8_0 || wtype == RS_TYPE_Q4_0
                   ? RS_ERR_SHAPE : RS_ERR_TYPE;
    const int64_t need = rs_cuda_scratch_bytes(n_out, n_in, rank);
    if (need < 0 || scratch_bytes < need)
        return RS_ERR_SHAPE;
    if (rank > 0 && (!u || !vs))
        return RS_ERR_NULL;
    if (rank > 0 && ftype != RS_TYPE_F32 && ftype != RS_TYPE_F16)
        return RS_ERR_TYPE;
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    int *count = static_cast<int *>(scratch), *idx = count + 1;
    float *xk = reinterpret_cast<float *>(idx + n_in), *xd = xk + n_in, *z = xd + n_in;
    float *partial = reinterpret_cast<float *>(count) + (1 + 3 * n_in + rank + 3) / 4 * 4;

    mask_kernel<<<1, MASK_THREADS, 0, st>>>(x, colnorm, tau, (int)n_in, count, idx, xk, xd);
    if (rank > 0) {
        const unsigned blocks = (unsigned)((rank + 7) / 8);  // 8 warps per block
        if (ftype == RS_TYPE_F32)
            lowrank_z_kernel<RS_TYPE_F32><<<blocks, 256, 0, st>>>((const uint8_t *)vs, rank, n_in, xd, z);
        else
            lowrank_z_kernel<RS_TYPE_F16><<<blocks, 256, 0, st>>>((const uint8_t *)vs, rank, n_in, xd, z);
    }
    const dim3 grid((unsigned)((n_out + THREADS * OUT_PER_THREAD - 1) / (THREADS * OUT_PER_THREAD)), SPLIT);
    const uint8_t *w = static_cast<const uint8_t *>(wt);
    switch (wtype) {
    case RS_TYPE_F32: launch_partial<RS_TYPE_F32>(grid, st, w, rb, n_out, count, idx, xk, partial); break;
    case RS_TYPE_F16: launch_partial<RS_TYPE_F16>(grid, st, w, rb, n_out, count, idx, xk, partial); break;
    case RS_TYPE_Q8_0: launch_partial<RS_TYPE_Q8_0>(grid, st, w, rb, n_out, count, idx, xk, partial); break;
    default: launch_partial<RS_TYPE_Q4_0>(grid, st, w, rb, n_out, count, idx, xk, partial); break;
    }
    const unsigned fblocks = (unsigned)((n_out + 255) / 256);
    if (ftype == RS_TYPE_F16 && rank > 0)
        finish_kernel<RS_TYPE_F16><<<fblocks, 256, 0, st>>>(partial, n_out, (const uint8_t *)u, rank, z, y);
    else
        finish_kernel<RS_TYPE_F32><<<fblocks, 256, 0, st>>>(partial, n_out, (const uint8_t *)u, rank, z, y);
    if (cudaGetLastError() != cudaSuccess)
        return RS_ERR_THREADS;
    if (n_kept) {
        int c = 0;
        if (cudaMemcpyAsync(&c, count, sizeof c, cudaMemcpyDeviceToHost, st) != cudaSuccess ||
            cudaStreamSynchronize(st) != cudaSuccess)
            return RS_ERR_THREADS;
        *n_kept = c;
    }
    return RS_OK;
}
