/* check.h -- argument checks shared by the public entry points (matmul.c, sparse.c).
 *
 * Every size is checked before any memory is touched, and every byte count is checked to fit in ptrdiff_t, so a
 * wrong call returns a status instead of reading out of bounds. */
#ifndef RS_CHECK_H
#define RS_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "quant.h"

/* a * b <= PTRDIFF_MAX, for a, b > 0: a byte count that pointer arithmetic can hold. */
static inline int rs_fits(int64_t a, int64_t b)
{
    return a <= (int64_t)(PTRDIFF_MAX / b);
}

static inline int rs_aligned(const void *p, int64_t align)
{
    return (uintptr_t)p % (uintptr_t)align == 0;
}

/* Checks a weight matrix of n_rows rows of n elements; on success stores the bytes per row. */
static inline int rs_check_weights(int type, const void *w, int64_t n_rows, int64_t n, int64_t *row_bytes)
{
    if (!w)
        return RS_ERR_NULL;
    if (!rs_type_ok(type))
        return RS_ERR_TYPE;
    const int64_t rb = rs_row_bytes(type, n);
    if (n_rows <= 0 || rb < 0 || !rs_fits(n_rows, rb) || !rs_fits(n, sizeof(float)) ||
        ((type == RS_TYPE_Q4_0_R16 || type == RS_TYPE_Q8_0_R16) && n_rows % RS_R16 != 0))
        return RS_ERR_SHAPE;
    if (!rs_aligned(w, rs_type_align(type)))
        return RS_ERR_ALIGN;
    *row_bytes = rb;
    return RS_OK;
}

/* Slice ith of nth of [0, n) in units of `unit` elements: contiguous, sizes differing by at most one unit, the
 * last one ending at n; written without n * ith, which could overflow. */
static inline void rs_slice(int64_t n, int64_t unit, int ith, int nth, int64_t *begin, int64_t *end)
{
    const int64_t units = n / unit + (n % unit != 0);
    const int64_t base = units / nth, extra = units % nth;
    const int64_t u0 = base * ith + (ith < extra ? ith : extra);
    const int64_t u1 = u0 + base + (ith < extra ? 1 : 0);
    *begin = u0 * unit < n ? u0 * unit : n;
    *end = u1 * unit < n ? u1 * unit : n;
}

#endif /* RS_CHECK_H */
