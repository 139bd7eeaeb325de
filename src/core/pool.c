/*
 * pool.c — a small fixed thread pool with a parallel-for over index ranges.
 *
 * A job is [0, n) cut into chunks of `grain`; workers and the caller take
 * chunks from a shared atomic counter until none is left, so uneven chunks
 * balance themselves. Between jobs workers sleep on a condition variable.
 */
#include "core.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

struct sp_pool {
    int nworkers;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    uint64_t generation;     /* bumped for every job */
    int stop;
    int active;              /* workers still inside the current job */
    pthread_mutex_t job;     /* held by the thread whose job the workers run */
    /* current job */
    sp_range_fn fn;
    void *ctx;
    int64_t n, grain;
    atomic_llong next;
};

static void run_chunks(sp_pool *p, int worker)
{
    for (;;) {
        int64_t b = atomic_fetch_add(&p->next, p->grain);
        if (b >= p->n)
            break;
        int64_t e = b + p->grain < p->n ? b + p->grain : p->n;
        p->fn(p->ctx, b, e, worker);
    }
}

typedef struct { sp_pool *p; int id; } worker_arg;

static void *worker_main(void *arg)
{
    worker_arg *wa = arg;
    sp_pool *p = wa->p;
    int id = wa->id;
    uint64_t seen = 0;
    free(wa);
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->stop && p->generation == seen)
            pthread_cond_wait(&p->wake, &p->mu);
        if (p->stop)
            break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        run_chunks(p, id);
        pthread_mutex_lock(&p->mu);
        if (--p->active == 0)
            pthread_cond_signal(&p->done);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

sp_pool *sp_pool_create(int nthreads)
{
    sp_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    if (nthreads <= 0)
        nthreads = sp_num_cores();
    p->nworkers = nthreads - 1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_mutex_init(&p->job, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    p->threads = calloc((size_t)(p->nworkers > 0 ? p->nworkers : 1), sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return NULL;
    }
    for (int i = 0; i < p->nworkers; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa) {
            wa->p = p;
            wa->id = i + 1;
        }
        if (!wa || pthread_create(&p->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            p->nworkers = i;
            break;
        }
    }
    return p;
}

int sp_pool_size(const sp_pool *p) { return p ? p->nworkers + 1 : 1; }

void sp_pool_for(sp_pool *p, int64_t n, int64_t grain, sp_range_fn fn, void *ctx)
{
    if (n <= 0)
        return;
    if (grain < 1)
        grain = 1;
    /* One job at a time: a caller that finds the pool busy (another thread's
     * job: the service's workers, a pipeline's stages) runs its range itself. */
    if (!p || p->nworkers == 0 || n <= grain || pthread_mutex_trylock(&p->job) != 0) {
        fn(ctx, 0, n, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->grain = grain;
    atomic_store(&p->next, 0);
    p->active = p->nworkers;
    p->generation++;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_chunks(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->active > 0)
        pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_unlock(&p->job);
}

void sp_pool_free(sp_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->nworkers; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->job);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    free(p->threads);
    free(p);
}

/* The process-wide pool (cores threads), made on first use. */
static sp_pool *g_pool;
static pthread_once_t g_pool_once = PTHREAD_ONCE_INIT;
static void pool_init(void) { g_pool = sp_pool_create(0); }
sp_pool *sp_default_pool(void)
{
    pthread_once(&g_pool_once, pool_init);
    return g_pool;
}
sp_pool *sp_pool_get(int threads)
{
    return threads <= 0 ? sp_default_pool() : sp_pool_create(threads);
}
void sp_pool_put(sp_pool *p)
{
    if (p && p != g_pool)
        sp_pool_free(p);
}
