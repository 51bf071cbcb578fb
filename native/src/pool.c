/* pool.c -- a pthread pool created once, so that a decode step (hundreds of small matmuls per token) pays a
 * wake-up, not a thread creation, per matmul.
 *
 * Protocol: the caller publishes (fn, ctx), sets `pending` to the number of workers and bumps `gen` with a release
 * store; a worker that sees a new `gen` runs its slice and decrements `pending`; the caller runs slice 0 and waits
 * for `pending` to reach 0. Both sides spin briefly before sleeping on a condition variable, because in decode the
 * next job usually arrives within microseconds and a futex wake costs more than that. `gen` only changes under
 * `lock`, so a worker that checked it under `lock` and went to sleep cannot miss the broadcast. */
#define _POSIX_C_SOURCE 200809L
#define _DARWIN_C_SOURCE  /* _SC_NPROCESSORS_ONLN on macOS */
#include "pool.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

/* About 10-100 microseconds of spinning depending on the CPU's pause latency: long enough to cover the Python glue
 * between two matmuls, short enough that an idle pool sleeps almost at once. */
#define RS_SPIN 4096

struct rs_worker {
    rs_pool *pool;
    int ith;
    pthread_t thread;
};

struct rs_pool {
    int n_threads;
    int spin;                   /* spin iterations before sleeping: RS_SPIN, or 0 when threads outnumber CPUs */
    int n_started;              /* workers actually created (n_threads - 1 once construction succeeded) */
    struct rs_worker *workers;  /* slices 1..n_threads-1 (the caller is slice 0); room for n_threads */
    pthread_mutex_t run_lock;   /* one job at a time, even when several Python threads share the pool */
    pthread_mutex_t lock;       /* guards the two condition variables */
    pthread_cond_t wake;        /* workers sleep here for the next `gen` */
    pthread_cond_t done;        /* the caller sleeps here for `pending` == 0 */
    rs_task_fn fn;              /* the current job: written before the release of `gen`, read after its acquire */
    void *ctx;
    atomic_uint gen;            /* job counter */
    atomic_int pending;         /* workers that have not finished the current job */
    atomic_bool stop;
    pthread_mutex_t arena_lock; /* held by the one call using `arena` (see rs_pool_arena_acquire) */
    void *arena;                /* per-call scratch owned by the pool, grown on demand */
    size_t arena_bytes;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield");
#endif
}

/* Waits until gen differs from `seen` and returns the new value. */
static unsigned wait_for_job(rs_pool *p, unsigned seen)
{
    for (int i = 0; i < p->spin; i++) {
        unsigned g = atomic_load_explicit(&p->gen, memory_order_acquire);
        if (g != seen)
            return g;
        cpu_relax();
    }
    unsigned g;
    pthread_mutex_lock(&p->lock);
    while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen)
        pthread_cond_wait(&p->wake, &p->lock);
    pthread_mutex_unlock(&p->lock);
    return g;
}

static void *worker_main(void *arg)
{
    struct rs_worker *me = arg;
    rs_pool *p = me->pool;
    unsigned seen = 0;  /* gen starts at 0 and workers exist before the first job */
    for (;;) {
        seen = wait_for_job(p, seen);
        if (atomic_load_explicit(&p->stop, memory_order_acquire))
            return NULL;
        p->fn(p->ctx, me->ith, p->n_threads);
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->lock);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->lock);
        }
    }
}

static void wait_for_workers(rs_pool *p)
{
    for (int i = 0; i < p->spin; i++) {
        if (atomic_load_explicit(&p->pending, memory_order_acquire) == 0)
            return;
        cpu_relax();
    }
    pthread_mutex_lock(&p->lock);
    while (atomic_load_explicit(&p->pending, memory_order_acquire) != 0)
        pthread_cond_wait(&p->done, &p->lock);
    pthread_mutex_unlock(&p->lock);
}

/* Wakes every worker for the job already stored in p (or for exit, when stop is set). */
static void publish(rs_pool *p)
{
    pthread_mutex_lock(&p->lock);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
}

void rs_pool_run(rs_pool *p, rs_task_fn fn, void *ctx)
{
    pthread_mutex_lock(&p->run_lock);
    if (p->n_threads > 1) {
        p->fn = fn;
        p->ctx = ctx;
        atomic_store_explicit(&p->pending, p->n_threads - 1, memory_order_relaxed);
        publish(p);
    }
    fn(ctx, 0, p->n_threads);
    if (p->n_threads > 1)
        wait_for_workers(p);
    pthread_mutex_unlock(&p->run_lock);
}

/* Stops and joins the started workers, then frees p. Also the error path of rs_pool_create. */
static void destroy(rs_pool *p)
{
    if (p->n_started > 0) {
        atomic_store_explicit(&p->stop, true, memory_order_release);
        publish(p);
        for (int i = 0; i < p->n_started; i++)
            pthread_join(p->workers[i].thread, NULL);
    }
    pthread_cond_destroy(&p->done);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    pthread_mutex_destroy(&p->run_lock);
    pthread_mutex_destroy(&p->arena_lock);
    free(p->arena);
    free(p->workers);
    free(p);
}

rs_pool *rs_pool_create(int n_threads)
{
    if (n_threads < 1 || n_threads > RS_MAX_THREADS)
        return NULL;
    rs_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->n_threads = n_threads;
    /* With more threads than CPUs a spinning thread steals the time slice of the thread it waits for: measured
     * 0.2 us per empty job with 2 threads on 2 CPUs, 180 us with 3 spinning, 42 us with 3 sleeping. */
#ifdef _SC_NPROCESSORS_ONLN
    const long n_cpus = sysconf(_SC_NPROCESSORS_ONLN);
#else
    const long n_cpus = 0;
#endif
    p->spin = n_cpus > 0 && n_threads > n_cpus ? 0 : RS_SPIN;
    p->workers = calloc((size_t)n_threads, sizeof *p->workers);  /* n_threads, not n - 1: never calloc(0) */
    atomic_init(&p->gen, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->stop, false);
    pthread_mutex_init(&p->run_lock, NULL);
    pthread_mutex_init(&p->arena_lock, NULL);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    if (!p->workers) {
        destroy(p);
        return NULL;
    }
    /* Workers start with every signal blocked (the mask is inherited), so that signals such as Ctrl-C reach the
     * caller's thread, where Python expects them. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (int i = 1; i < n_threads; i++) {
        struct rs_worker *w = &p->workers[p->n_started];
        w->pool = p;
        w->ith = i;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
            break;
        p->n_started++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (p->n_started != n_threads - 1) {
        destroy(p);
        return NULL;
    }
    return p;
}

void rs_pool_free(rs_pool *pool)
{
    if (!pool)
        return;
    pthread_mutex_lock(&pool->run_lock);  /* let a job still running elsewhere finish */
    pthread_mutex_unlock(&pool->run_lock);
    destroy(pool);
}

int rs_pool_n_threads(const rs_pool *pool)
{
    return pool ? pool->n_threads : 0;
}

void *rs_pool_arena_acquire(rs_pool *pool, size_t bytes)
{
    pthread_mutex_lock(&pool->arena_lock);
    if (bytes > pool->arena_bytes) {
        const size_t rounded = (bytes + 63) / 64 * 64;
        void *a = rounded >= bytes ? aligned_alloc(64, rounded) : NULL;
        if (!a) {
            pthread_mutex_unlock(&pool->arena_lock);
            return NULL;
        }
        free(pool->arena);
        pool->arena = a;
        pool->arena_bytes = rounded;
    }
    return pool->arena;
}

void rs_pool_arena_release(rs_pool *pool)
{
    pthread_mutex_unlock(&pool->arena_lock);
}
