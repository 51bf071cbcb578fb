/* attention.h -- causal GQA attention over a KV cache for a run of new tokens, shared by rs_attention_decode and
 * the forward pass (forward.c). Arguments are checked by the callers. */
#ifndef RS_ATTENTION_H
#define RS_ATTENTION_H

#include "rsparse.h"

/* Tokens i in [0, n_tok) at positions pos + i, already in the cache, each attending to positions [0, pos + i]:
 *   q, out:   (n_tok, n_head, head_dim)
 *   k_cache, v_cache: (n_head_kv, n_ctx, head_dim)
 *   scratch:  one token: (n_head, scratch_stride) scores, scratch_stride >= pos + 1; unused for n_tok > 1, which
 *             takes per-thread buffers from the pool's arena (RS_ERR_NOMEM if they cannot be had)
 * The pool splits the query heads. */
int rs_attention_tokens(rs_pool *pool, const float *q, const float *k_cache, const float *v_cache, int64_t n_tok,
                         int64_t n_head, int64_t n_head_kv, int64_t head_dim, int64_t n_ctx, int64_t pos,
                         float scale, float *out, float *scratch, int64_t scratch_stride);

#endif /* RS_ATTENTION_H */
