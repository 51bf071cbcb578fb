/* rsparse.h -- the whole public C API of librsparse.
 *
 * Kernels only: no file parsing, no model logic. Python (rsparse_cpp/native.py) checks every argument before a
 * call; the C side checks its own preconditions again and returns an error code rather than crashing.
 *
 * Layout conventions, said once:
 *   - GGUF lists dims innermost first: a weight with ne = [n_in, n_out] is stored as n_out rows of n_in elements,
 *     i.e. row-major (n_out, n_in) in C terms. A row of a quantized type is n_in/32 blocks.
 *   - Types use ggml's numbers (rs_type below) and ggml's block layouts (block_q8_0: fp16 scale + 32 int8;
 *     block_q4_0: fp16 scale + 16 bytes, low nibbles hold elements 0..15, high nibbles 16..31, value = (q - 8) * d;
 *     the others in native/src/quant.h). Q4_K, Q5_K and Q6_K blocks hold 256 elements, the others 32 (1 for the
 *     float types). Every type runs rs_matmul and rs_get_rows; the input-channel-major layout (rs_matmul_wt,
 *     rs_sparse_matvec) takes F32, F16, Q8_0 and Q4_0, the types of a companion's sparse-path copy.
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
    RS_TYPE_Q4_1 = 3,
    RS_TYPE_Q5_0 = 6,
    RS_TYPE_Q5_1 = 7,
    RS_TYPE_Q8_0 = 8,
    RS_TYPE_Q4_K = 12,
    RS_TYPE_Q5_K = 13,
    RS_TYPE_Q6_K = 14,
    RS_TYPE_BF16 = 30,
    RS_TYPE_Q4_0_R16 = 258, /* not ggml's: Q4_0 rows in tiles of 16 (rs_repack_q4_0_r16), for dense products only */
    RS_TYPE_Q8_0_R16 = 264, /* not ggml's: Q8_0 rows in tiles of 16 (rs_repack_q8_0_r16), likewise */
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
    RS_ERR_PATH = -8,      /* unknown SIMD path, or one this CPU cannot run */
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
 * n_tok = 1 is decode (a matrix-vector product). F32, F16 and BF16 weights multiply the float activations; the
 * quantized types multiply the activations rounded to int8 per block of 32 (scale: the block's largest |x| / 127, as
 * llama.cpp rounds them for Q8_0 and Q4_0), with exact integer block products: results stay within that rounding (at
 * most 1/254 of the block's largest activation, per activation) plus float rounding of the exact product of the
 * dequantized weights. Threads split n_out into contiguous slices.
 * n_tok > 1 is prefill: a float GEMM of the dequantized weights (exact in float) with the float activations, each
 * output summed over the input channels in order with one fused multiply-add each: the same bits on every path and
 * thread count, within float rounding of the exact product (closer than decode for the quantized types). Q4_0
 * prefill instead rounds the activations to int8 as decode does (an integer GEMM: native/src/gemm.c).
 * A NaN or an infinity in a token's activations makes outputs of that token NaN (every one, for quantized decode). */
RS_API int rs_matmul(rs_pool *pool, int type, const void *w, int64_t n_out, int64_t n_in,
                     const float *x, int64_t n_tok, float *y);

/* The same product from the input-channel-major layout of rs_sparse_matvec's wt: (n_in, n_out) in `type`, rows of
 * rs_row_bytes(type, n_out) bytes, quantization blocks along the outputs. Prefill's arithmetic for any n_tok (a
 * float GEMM of the dequantized weights), so a model with an R-Sparse companion runs every product of a block
 * linear from the companion's copy and never reads the base's. F32, F16, Q8_0 and Q4_0 only (RS_ERR_TYPE else). */
RS_API int rs_matmul_wt(rs_pool *pool, int type, const void *wt, int64_t n_out, int64_t n_in,
                        const float *x, int64_t n_tok, float *y);

/* Dequantize selected rows (embedding lookup, "get_rows").
 *   w:    (n_rows_total, n_in) in `type`
 *   rows: (n,) row indices, each in [0, n_rows_total); all are checked before anything is written
 *   out:  (n, n_in) float32 */
RS_API int rs_get_rows(int type, const void *w, int64_t n_rows_total, int64_t n_in,
                       const int64_t *rows, int64_t n, float *out);

/* Q4_0 rows repacked into tiles of 16 rows (RS_TYPE_Q4_0_R16), the layout the dense decode kernels read fastest:
 * per tile and block of 32 inputs, a record of 288 bytes holding the 16 rows' binary16 scales (row r's at byte 2r),
 * then for t = 0..3 and r = 0..15, bytes 4t..4t+3 of row r's 16 nibble bytes at 32 + 4 (16 t + r). So one 64-byte
 * load holds four quantized inputs (and, in the high nibbles, four more) of 16 rows, one row per 32-bit lane: an
 * integer dot-product instruction against four broadcast activation bytes sums 16 rows at once, and the scales of
 * the 16 rows convert in one instruction. Q4_0's ggml layout gives each row's blocks one after the other, so its
 * decode kernel sums one row per register and spends as many instructions on the scales as on the weights
 * (docs/SPEED.md). Same size as Q4_0; tile g, block k at dst + (g * n_in / 32 + k) * 288. n_rows a multiple of 16,
 * n_in of 32. rs_matmul (decode and prefill) and rs_get_rows take this type; their arithmetic is Q4_0's
 * integer GEMM (rs_matmul's prefill), for one token as for many. */
RS_API int rs_repack_q4_0_r16(const void *src, int64_t n_rows, int64_t n_in, void *dst);

/* Q8_0 rows in tiles of 16 (RS_TYPE_Q8_0_R16), as Q4_0's: per tile and block a 544-byte record, the 16 binary16
 * scales, then for t = 0..7 and r = 0..15 bytes 4t..4t+3 of row r's 32 int8 weights at 32 + 4 (16 t + r). Decode:
 * per row, block by block, acc = fma((float)(sum_e q_e x_e), d_w d_x, acc) on the int8 activations; prefill is
 * Q8_0's float GEMM, from the same values. */
RS_API int rs_repack_q8_0_r16(const void *src, int64_t n_rows, int64_t n_in, void *dst);

/* ---- R-Sparse: the rank-aware sparse matrix-vector product (batch 1) -------------------------------------- */

/* Bytes of scratch rs_sparse_matvec needs for n_in input channels and the given rank; -1 if invalid. */
RS_API int64_t rs_sparse_scratch_bytes(int64_t n_in, int64_t rank);

/* One R-Sparse linear at batch 1 (the paper's y = W[:, m] x[m] + U_r (V_r S_r) ((1 - m) * x)):
 *   score_j = |x_j| * colnorm_j (or |x_j| when colnorm is NULL: the rho = 1 mode);  m_j = score_j > tau
 *   y = sum_{j: m_j} x_j W[:, j]  +  U (VS ((1 - m) * x))
 * Arguments:
 *   wt:      (n_in, n_out) in wtype: the layer's weights stored input-channel-major, one row per input channel,
 *            so that a dropped channel's weights are one skipped row. Quantization blocks run along the output
 *            dimension: a row is rs_row_bytes(wtype, n_out) bytes (n_out a multiple of 32 for Q4_0/Q8_0).
 *   colnorm: (n_in,) float32, or NULL
 *   u:       (n_out, rank) in ftype (RS_TYPE_F32 or RS_TYPE_F16), row-major;  vs: (rank, n_in) in ftype, V_r S_r.
 *            rank = 0: no low-rank term (u, vs and ftype are then ignored and may be NULL / anything).
 *   x:       (n_in,) float32;  y: (n_out,) float32, overwritten, must not overlap x or scratch
 *   n_kept:  receives the number of kept channels (may be NULL)
 *   scratch: at least rs_sparse_scratch_bytes(n_in, rank) bytes, 4-byte aligned, owned by the caller (allocated
 *            once, e.g. in the run state). The only allocation is the pool's per-thread buffer, grown when a
 *            call needs a larger one than before (RS_ERR_NOMEM if that fails), so a decode loop allocates nothing.
 * Threads split the kept rows (each sums whole rows into a per-thread buffer owned by the pool, then they split
 * the output dimension to add the buffers): results may differ in the last bits between thread counts. With
 * RSPARSE_SPARSE_SPLIT=outputs they split the output dimension instead (bit-identical for any thread count). The
 * low-rank product splits the rank, then the output dimension.
 * tau < 0 keeps every channel (NaN activations included): a dense matrix-vector product over this layout. */
RS_API int rs_sparse_matvec(rs_pool *pool, int wtype, const void *wt, int64_t n_out, int64_t n_in,
                            const float *colnorm, float tau, int ftype, const void *u, const void *vs, int64_t rank,
                            const float *x, float *y, int64_t *n_kept, void *scratch, int64_t scratch_bytes);

/* ---- SIMD paths ---------------------------------------------------------------------------------------------- */

/* Name of the SIMD path in use ("scalar", "avx2", "avxvnni", "avx512", "neon"): the fastest this CPU runs, or the
 * one RSPARSE_SIMD names at start-up if this CPU runs it, or the last one rs_simd_select chose. */
RS_API const char *rs_simd_path(void);

/* The paths this build and CPU can run, fastest first, comma-separated (e.g. "avx512,avx2,scalar"). */
RS_API const char *rs_simd_paths(void);

/* Switches every later call to the named path (NULL: the fastest); RS_ERR_PATH if this CPU cannot run it. For
 * tests and benchmarks: a call already running finishes on the path it started with. */
RS_API int rs_simd_select(const char *name);

/* ---- decode glue --------------------------------------------------------------------------------------------- */

/* One new token's attention over a KV cache, grouped-query heads (query head h reads KV head h / (n_head /
 * n_head_kv)), heads split over the pool:
 *   q:        (n_head, head_dim) float32, the token's rotated queries
 *   k_cache, v_cache: (n_head_kv, n_ctx, head_dim) float32, positions [0, n_pos) filled (the new token included)
 *   out:      (n_head, head_dim) float32: softmax(scale * q K^T) V per head
 *   scratch:  at least n_head * n_pos floats (the scores), owned by the caller */
RS_API int rs_attention_decode(rs_pool *pool, const float *q, const float *k_cache, const float *v_cache,
                               int64_t n_head, int64_t n_head_kv, int64_t head_dim, int64_t n_ctx, int64_t n_pos,
                               float scale, float *out, float *scratch, int64_t scratch_floats);

/* ---- the forward pass: one call per decode step or prompt chunk ----------------------------------------------- */

/* One linear y = W x of a decoder block, in both forms the runtime holds. */
typedef struct rs_linear {
    int type;               /* dense form: w (n_out, n_in) rows in `type` (rs_matmul's layout) */
    const void *w;
    int64_t n_out, n_in;
    const void *wt;         /* R-Sparse form (rs_sparse_matvec's arguments), or NULL when there is none: */
    int wtype;              /*   wt (n_in, n_out) input-channel-major in wtype */
    const float *colnorm;   /*   (n_in,) or NULL: the rho = 1 score |x| */
    float tau;
    int ftype;              /*   u (n_out, rank) and vs (rank, n_in) in ftype; rank 0: no low-rank term */
    const void *u, *vs;
    int64_t rank;
    const float *bias;      /* (n_out,) added after the product (Qwen2's q, k and v), or NULL */
} rs_linear;

/* The seven linears of a block, in the order of rs_block.lin and of rs_state.n_kept. */
enum { RS_ATTN_Q, RS_ATTN_K, RS_ATTN_V, RS_ATTN_OUTPUT, RS_FFN_GATE, RS_FFN_UP, RS_FFN_DOWN, RS_N_LINEARS };

typedef struct rs_block {
    const float *attn_norm, *ffn_norm;  /* (n_embd,) RMSNorm weights */
    rs_linear lin[7];                   /* RS_N_LINEARS: q (q_dim, n_embd), k and v (kv_dim, n_embd),
                                         * o (n_embd, q_dim), gate and up (n_ff, n_embd), down (n_embd, n_ff) */
    float *k_cache, *v_cache;           /* (n_head_kv, n_ctx, head_dim): this block's KV cache */
    const float *q_norm, *k_norm;       /* (head_dim,) RMSNorm weights of every q and k head, applied before
                                         * RoPE (Qwen3), or NULL */
    int no_rope;                        /* nonzero: q and k are not rotated in this block (SmolLM3's every
                                         * fourth); zero, the default, rotates */
} rs_block;

/* A Llama-family decoder (q_dim = n_head * head_dim, kv_dim = n_head_kv * head_dim; rsparse_cpp/families.py). With
 * rope_neox = 0 Q/K rows are in llama.cpp's permutation, so RoPE rotates adjacent pairs (2i, 2i + 1), i < rope_dim
 * / 2, of every head; with rope_neox = 1 (Qwen) they are in HF's order and RoPE rotates (i, i + rope_dim / 2). */
typedef struct rs_model {
    int64_t n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, rope_dim, n_vocab, n_ctx;
    float rms_eps;
    int rope_neox;
    const rs_block *blocks;             /* (n_layer,) */
    rs_linear token_embd;               /* (n_vocab, n_embd): rows looked up, dense form only */
    const float *output_norm;           /* (n_embd,) */
    rs_linear output;                   /* (n_vocab, n_embd), dense form only */
    const float *rope_cos, *rope_sin;   /* (n_ctx, rope_dim / 2): cos and sin of position * frequency */
} rs_model;

/* Every buffer the forward pass touches, owned by the caller (allocated once): token t of a call uses row t. */
typedef struct rs_state {
    int64_t n_batch;                    /* most tokens per call */
    float *x;                           /* (n_batch, n_embd) residual stream */
    float *xb;                          /* (n_batch, n_embd) normed block input, then a linear's output */
    float *q, *attn;                    /* (n_batch, q_dim) rotated queries; attention output */
    float *k, *v;                       /* (n_batch, kv_dim) */
    float *hb, *hb2;                    /* (n_batch, n_ff) gate, then silu(gate) * up; up */
    float *att;                         /* (n_head, n_ctx) attention scores */
    float *logits;                      /* (n_batch, n_vocab) */
    void *scratch;                      /* sparse decode: 3 parts (q, k and v run together), each 64-byte
                                         * aligned and rs_sparse_scratch_bytes of the widest sparse linear */
    int64_t scratch_bytes;
    int64_t *n_kept;                    /* (n_layer, RS_N_LINEARS): kept channels of the last sparse step; or NULL */
} rs_state;

/* Runs tokens (n,) at positions pos .. pos + n - 1 through every block (the KV caches get their keys and values),
 * then the output norm and head: logits of the last token in s->logits row 0, or of every token in rows 0..n-1
 * when logits_all. Each step reads as the math (forward.c): x = embd[token]; per block, xb = rmsnorm(x) * w;
 * q, k, v = linears(xb) (+ their biases); per-head rmsnorm(q, k) (if q_norm); RoPE(q, k) (unless no_rope);
 * cache k, v; attn = softmax(q K^T / sqrt(head_dim)) V (causal, GQA); x += o(attn); xb = rmsnorm(x) * w;
 * x += down(silu(gate(xb)) * up(xb)).
 * sparse != 0 runs every block linear through rs_sparse_matvec (each must have its R-Sparse form, and n must be 1).
 * Otherwise a linear with an R-Sparse form reads only that form's wt: rs_sparse_matvec keeping every channel for
 * one token, rs_matmul_wt for a prompt; so with a companion the base's block weights (w) are never read, and
 * their pages of a mapped file never become resident. A linear without one runs rs_matmul on w.
 * Checks: n in [1, n_batch], pos + n <= n_ctx, token ids in [0, n_vocab), every linear's shape against the
 * model's sizes; RS_ERR_INDEX for a bad token id, before anything is written. */
RS_API int rs_forward(rs_pool *pool, const rs_model *m, const rs_state *s, const int64_t *tokens, int64_t n,
                      int64_t pos, int sparse, int logits_all);

#ifdef __cplusplus
}
#endif
#endif /* RSPARSE_H */
