/*
 * queue.c — a bounded blocking queue of small integers (slot or buffer
 * indices) between pipeline threads: push blocks while full, pop while
 * empty; close lets consumers drain then see SP_BQ_EOF; the shared stop
 * flag wakes everyone with -1. Seconds spent blocked are added to *waited.
 */
#include "core.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

int sp_bq_init(sp_bq *q, int cap, atomic_int *stop)
{
    memset(q, 0, sizeof *q);
    q->buf = malloc((size_t)cap * sizeof *q->buf);
    q->cap = cap;
    q->stop = stop;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->not_empty, NULL);
    pthread_cond_init(&q->not_full, NULL);
    return q->buf != NULL;
}

void sp_bq_destroy(sp_bq *q)
{
    if (!q->buf)
        return;
    free(q->buf);
    q->buf = NULL;
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->not_empty);
    pthread_cond_destroy(&q->not_full);
}

/* 0 on success, -1 when stopping; *waited += seconds blocked */
int sp_bq_push(sp_bq *q, int v, double *waited)
{
    pthread_mutex_lock(&q->mu);
    if (q->n == q->cap && !atomic_load(q->stop)) {
        double t0 = sp_now();
        while (q->n == q->cap && !atomic_load(q->stop))
            pthread_cond_wait(&q->not_full, &q->mu);
        if (waited)
            *waited += sp_now() - t0;
    }
    if (atomic_load(q->stop)) {
        pthread_mutex_unlock(&q->mu);
        return -1;
    }
    q->buf[(q->head + q->n++) % q->cap] = v;
    pthread_cond_signal(&q->not_empty);
    pthread_mutex_unlock(&q->mu);
    return 0;
}

/* the next value; SP_BQ_EOF once closed and drained; -1 when stopping */
int sp_bq_pop(sp_bq *q, double *waited)
{
    pthread_mutex_lock(&q->mu);
    if (!q->n && !q->closed && !atomic_load(q->stop)) {
        double t0 = sp_now();
        while (!q->n && !q->closed && !atomic_load(q->stop))
            pthread_cond_wait(&q->not_empty, &q->mu);
        if (waited)
            *waited += sp_now() - t0;
    }
    int v;
    if (atomic_load(q->stop))
        v = -1;
    else if (!q->n)
        v = SP_BQ_EOF;
    else {
        v = q->buf[q->head];
        q->head = (q->head + 1) % q->cap;
        q->n--;
        pthread_cond_signal(&q->not_full);
    }
    pthread_mutex_unlock(&q->mu);
    return v;
}

void sp_bq_close(sp_bq *q)
{
    pthread_mutex_lock(&q->mu);
    q->closed = 1;
    pthread_cond_broadcast(&q->not_empty);
    pthread_mutex_unlock(&q->mu);
}

void sp_bq_wake(sp_bq *q)
{
    pthread_mutex_lock(&q->mu);
    pthread_cond_broadcast(&q->not_empty);
    pthread_cond_broadcast(&q->not_full);
    pthread_mutex_unlock(&q->mu);
}

