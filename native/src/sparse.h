/* sparse.h -- several R-Sparse linears at once (sparse.c), for the forward pass: linears that read the same input
 * (q, k, v; gate, up) share each step's pool wake-up. */
#ifndef RS_SPARSE_H
#define RS_SPARSE_H

#include "rsparse.h"

#define RS_SPARSE_GROUP_MAX 4

/* rs_sparse_matvec's arguments, one linear; each needs its own scratch. */
typedef struct rs_sparse_args {
    int wtype;
    const void *wt;         /* (n_in, n_out) */
    int64_t n_out, n_in;
    const float *colnorm;   /* (n_in,) or NULL */
    float tau;
    int ftype;
    const void *u, *vs;     /* (n_out, rank), (rank, n_in) */
    int64_t rank;
    const float *x;         /* (n_in,) */
    float *y;               /* (n_out,) */
    int64_t *n_kept;        /* or NULL */
    void *scratch;
    int64_t scratch_bytes;
} rs_sparse_args;

/* rs_sparse_matvec for n (1 .. RS_SPARSE_GROUP_MAX) linears: every argument of every linear is checked before any
 * is run; results as n separate calls would give them (each linear's arithmetic is the same). */
int rs_sparse_group(rs_pool *pool, const rs_sparse_args *args, int n);

#endif /* RS_SPARSE_H */
