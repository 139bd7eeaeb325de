/* Core: status codes, per-thread errors, the thread pool. */
#include "test.h"
#include "core/core.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>

void test_status_codes(void)
{
    CHECK(sp_status_exit_code(SP_OK) == 0);
    CHECK(sp_status_exit_code(SP_ERR_USAGE) == 2);
    CHECK(sp_status_exit_code(SP_ERR_INPUT) == 3);
    CHECK(sp_status_exit_code(SP_ERR_MODEL) == 4);
    CHECK(sp_status_exit_code(SP_ERR_RUNTIME) == 5);
    CHECK(sp_status_exit_code(SP_ERR_IO) == 6);
    CHECK(sp_status_exit_code(SP_ERR_NOMEM) == 7);
    CHECK(strcmp(sp_status_str(SP_ERR_INPUT), "input error") == 0);
    CHECK(sp_fail(SP_ERR_IO, "x %d", 42) == SP_ERR_IO);
    CHECK(strcmp(sp_last_error(), "x 42") == 0);
    sp_fail_prefix(SP_ERR_IO, "file.nii");
    CHECK(strcmp(sp_last_error(), "file.nii: x 42") == 0);
}

static void *other_thread(void *arg)
{
    sp_fail(SP_ERR_INPUT, "from the other thread");
    return arg;
}

void test_error_thread_local(void)
{
    pthread_t th;
    sp_fail(SP_ERR_IO, "mine");
    pthread_create(&th, NULL, other_thread, NULL);
    pthread_join(th, NULL);
    CHECK(strcmp(sp_last_error(), "mine") == 0);
}

typedef struct { atomic_llong sum; atomic_int calls; } sum_ctx;

static void sum_fn(void *vc, int64_t b, int64_t e, int w)
{
    sum_ctx *c = vc;
    long long s = 0;
    for (int64_t i = b; i < e; i++)
        s += i;
    atomic_fetch_add(&c->sum, s);
    atomic_fetch_add(&c->calls, 1);
}

void test_pool_sum(void)
{
    int threads[] = {1, 2, 4};
    int64_t grains[] = {1, 7, 1000, 5000000};
    for (int t = 0; t < 3; t++) {
        sp_pool *p = sp_pool_create(threads[t]);
        CHECK(p && sp_pool_size(p) == threads[t]);
        for (int g = 0; g < 4; g++) {
            sum_ctx c = {0, 0};
            int64_t n = 1000003;
            sp_pool_for(p, n, grains[g], sum_fn, &c);
            CHECK(atomic_load(&c.sum) == (long long)n * (n - 1) / 2);
            /* a pool without workers runs the whole range in one call */
            int chunks = threads[t] == 1 ? 1 : (int)((n + grains[g] - 1) / grains[g]);
            CHECK(atomic_load(&c.calls) == chunks);
        }
        sum_ctx z = {0, 0};
        sp_pool_for(p, 0, 1, sum_fn, &z);
        CHECK(atomic_load(&z.calls) == 0);
        sp_pool_free(p);
    }
}

void test_pool_many_jobs(void)
{
    sp_pool *p = sp_pool_create(3);
    for (int j = 0; j < 2000; j++) {
        sum_ctx c = {0, 0};
        sp_pool_for(p, 100, 3, sum_fn, &c);
        if (atomic_load(&c.sum) != 4950) {
            CHECK(atomic_load(&c.sum) == 4950);
            break;
        }
    }
    sp_pool_free(p);
}

/* several threads sharing one pool (the service's workers on the default
 * pool): every job must still cover its whole range exactly once */
typedef struct { sp_pool *p; int bad; } share_arg;

static void *share_main(void *arg)
{
    share_arg *a = arg;
    for (int j = 0; j < 500; j++) {
        sum_ctx c = {0, 0};
        sp_pool_for(a->p, 10007, 13, sum_fn, &c);
        if (atomic_load(&c.sum) != 10007LL * 10006 / 2)
            a->bad++;
    }
    return NULL;
}

void test_pool_shared_by_threads(void)
{
    sp_pool *p = sp_pool_create(3);
    pthread_t th[4];
    share_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (share_arg){p, 0};
        pthread_create(&th[i], NULL, share_main, &a[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK(a[i].bad == 0);
    }
    sp_pool_free(p);
}

static void *bq_producer(void *arg)
{
    sp_bq *q = arg;
    for (int i = 0; i < 1000; i++)
        if (sp_bq_push(q, i, NULL))
            return NULL;
    sp_bq_close(q);
    return NULL;
}

void test_bounded_queue(void)
{
    atomic_int stop = 0;
    sp_bq q;
    CHECK(sp_bq_init(&q, 4, &stop));
    pthread_t th;
    pthread_create(&th, NULL, bq_producer, &q);
    int next = 0, v;
    double waited = 0;
    while ((v = sp_bq_pop(&q, &waited)) != SP_BQ_EOF) {   /* in order, every value once */
        CHECK(v == next);
        next++;
    }
    pthread_join(th, NULL);
    CHECK(next == 1000);
    CHECK(sp_bq_pop(&q, NULL) == SP_BQ_EOF);
    sp_bq_destroy(&q);
    CHECK(sp_bq_init(&q, 1, &stop));
    CHECK(sp_bq_push(&q, 7, NULL) == 0);
    atomic_store(&stop, 1);   /* stopping: push and pop give -1 at once */
    sp_bq_wake(&q);
    CHECK(sp_bq_push(&q, 8, NULL) == -1 && sp_bq_pop(&q, NULL) == -1);
    sp_bq_destroy(&q);
}

/* A buffer parked in an unnamed file: its pages go back to the kernel,
 * the bytes come back equal through the mapping and through a read; a
 * folder in memory (tmpfs) or missing is refused and the buffer kept. */
void test_spill(void)
{
    size_t n = (size_t)20 << 20;
    uint8_t *buf = sp_big_alloc(n), *ref = malloc(n);
    CHECK(buf && ref);
    if (!buf || !ref)
        return;
    for (size_t i = 0; i < n; i++)
        ref[i] = (uint8_t)(i * 2654435761u >> 13);
    memcpy(buf, ref, n);
    sp_spill s;
    CHECK(sp_spill_out(buf, n, "/nonexistent-folder", &s) == 0 && s.fd < 0);
    CHECK(memcmp(buf, ref, n) == 0);
    struct statfs fs;
    if (statfs("/dev/shm", &fs) == 0 && fs.f_type == 0x01021994) {
        CHECK(sp_spill_out(buf, n, "/dev/shm", &s) == 0);
        CHECK(memcmp(buf, ref, n) == 0);
    }
    CHECK(sp_spill_out(buf, 1000, NULL, &s) == 0);   /* too small to be worth a file */
    CHECK(sp_spill_out(buf, n, ".", &s) == 1 && s.fd >= 0);
    CHECK(buf[n / 2] == 0 && buf[4096 * 3] == 0);   /* whole pages released: zeros */
    const uint8_t *m = sp_spill_map(&s);
    CHECK(m && memcmp(m, ref, n) == 0);
    CHECK(sp_spill_back(&s, buf) == SP_OK && s.fd < 0 && !s.map);
    CHECK(memcmp(buf, ref, n) == 0);
    sp_spill_drop(&s);   /* twice is harmless */
    free(buf);
    free(ref);
}
