/* pool.h -- the "parallel for" the kernels use: run fn once per thread of the pool, and wait for all. */
#ifndef RS_POOL_H
#define RS_POOL_H

#include "rsparse.h"

/* One slice of a job: slice ith of nth (nth == rs_pool_n_threads). Slices must not write to the same memory. */
typedef void (*rs_task_fn)(void *ctx, int ith, int nth);

/* Runs fn(ctx, i, n) for i in [0, n) and returns when every slice has returned. The calling thread does slice 0.
 * Safe to call from several threads: jobs on one pool run one at a time. */
void rs_pool_run(rs_pool *pool, rs_task_fn fn, void *ctx);

/* Scratch owned by the pool, for a call that needs per-thread buffers across several jobs: at least `bytes`,
 * 64-byte aligned, grown (never shrunk) on demand, so a steady decode loop allocates nothing. Acquiring locks it
 * until rs_pool_arena_release (concurrent callers of one pool take turns); NULL, unlocked, if out of memory. */
void *rs_pool_arena_acquire(rs_pool *pool, size_t bytes);
void rs_pool_arena_release(rs_pool *pool);

#endif /* RS_POOL_H */
