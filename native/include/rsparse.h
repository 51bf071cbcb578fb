/* rsparse.h -- the whole public C API of librsparse.
 *
 * Kernels only: no file parsing, no model logic. Python (rsparse_cpp/native.py) checks every argument before a
 * call; the C side checks its own preconditions again and returns an error code rather than crashing.
 *
 * Layout conventions, said once:
 *   - GGUF lists dims innermost first: a weight with ne = [n_in, n_out] is stored as n_out rows of n_in elements,
 *     i.e. row-major (n_out, n_in) in C terms. A row of a quantized type is n_in/32 blocks.
 *   - Types use ggml's numbers (rs_type below) and ggml's block layouts (block_q8_0: fp16 scale + 32 int8;
 *     block_q4_0: fp16 scale + 16 bytes, low nibbles hold elements 0..15, high nibbles 16..31, value = (q - 8) * d).
 *   - Activations are always float32, contiguous.
 */
#ifndef RSPARSE_H
#define RSPARSE_H

#include <stdint.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define RS_API __declspec(dllexport)
#else
#define RS_API __attribute__((visibility("default")))
#endif

typedef enum rs_type {
    RS_TYPE_F32 = 0,
    RS_TYPE_F16 = 1,
    RS_TYPE_Q4_0 = 2,
    RS_TYPE_Q8_0 = 8,
} rs_type;

typedef enum rs_status {
    RS_OK = 0,
    RS_ERR_NULL = -1,      /* a required pointer is NULL */
    RS_ERR_TYPE = -2,      /* unknown weight type */
    RS_ERR_SHAPE = -3,     /* a size is <= 0, too large, or not a multiple of the block size */
    RS_ERR_NOMEM = -4,     /* allocation failed */
    RS_ERR_THREADS = -5,   /* thread count out of range or thread creation failed */
    RS_ERR_ALIGN = -6,     /* a pointer is not aligned for its element type (4 bytes for float, 2 for fp16/blocks) */
    RS_ERR_INDEX = -7,     /* a row index is out of range */
} rs_status;

/* Human-readable text for an rs_status. Never NULL. */
RS_API const char *rs_strerror(int status);

/* Bytes taken by n elements of `type` (n must be a multiple of the block size); -1 if invalid. */
RS_API int64_t rs_row_bytes(int type, int64_t n);

/* ---- thread pool: created once, reused by every call ---------------------------------------------------- */
typedef struct rs_pool rs_pool;

#define RS_MAX_THREADS 256

/* n_threads in [1, RS_MAX_THREADS]. Returns NULL on failure. */
RS_API rs_pool *rs_pool_create(int n_threads);
RS_API void rs_pool_free(rs_pool *pool);
RS_API int rs_pool_n_threads(const rs_pool *pool);

/* ---- dense kernels ------------------------------------------------------------------------------------- */

/* y = x W^T for a batch of tokens.
 *   w: (n_out, n_in) in `type`, rows contiguous (rs_row_bytes(type, n_in) bytes each)
 *   x: (n_tok, n_in) float32
 *   y: (n_tok, n_out) float32, must not overlap x
 * Quantized weights are dequantized to float and multiplied with float activations (activations are never
 * quantized), so results stay within float rounding of the exact product of the dequantized weights.
 * n_tok = 1 is decode (a matrix-vector product); n_tok > 1 is prefill, where each weight row is read once for all
 * tokens. Threads split n_out into contiguous slices. */
RS_API int rs_matmul(rs_pool *pool, int type, const void *w, int64_t n_out, int64_t n_in,
                     const float *x, int64_t n_tok, float *y);

/* Dequantize selected rows (embedding lookup, "get_rows").
 *   w:    (n_rows_total, n_in) in `type`
 *   rows: (n,) row indices, each in [0, n_rows_total); all are checked before anything is written
 *   out:  (n, n_in) float32 */
RS_API int rs_get_rows(int type, const void *w, int64_t n_rows_total, int64_t n_in,
                       const int64_t *rows, int64_t n, float *out);

/* Name of the SIMD path chosen at start-up ("scalar", "avx2", "avx512", "neon"). */
RS_API const char *rs_simd_path(void);

#ifdef __cplusplus
}
#endif
#endif /* RSPARSE_H */
