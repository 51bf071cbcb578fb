/* pool.h -- the "parallel for" the kernels use: run fn once per thread of the pool, and wait for all. */
#ifndef RS_POOL_H
#define RS_POOL_H

#include "rsparse.h"

/* One slice of a job: slice ith of nth (nth == rs_pool_n_threads). Slices must not write to the same memory. */
typedef void (*rs_task_fn)(void *ctx, int ith, int nth);

/* Runs fn(ctx, i, n) for i in [0, n) and returns when every slice has returned. The calling thread does slice 0.
 * Safe to call from several threads: jobs on one pool run one at a time. */
void rs_pool_run(rs_pool *pool, rs_task_fn fn, void *ctx);

#endif /* RS_POOL_H */
