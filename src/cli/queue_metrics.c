/*
 * queue_metrics.c — a worker's Prometheus metrics as a textfile (for
 * node_exporter's textfile collector, no pushgateway and no port to open):
 * jobs by result, seconds per pipeline stage, and the queue as Redis sees
 * it (entries not yet delivered, delayed retries, dead letters, pending
 * entries per consumer). Rewritten under a temporary name and renamed, so
 * a scraper never reads half a file.
 */
#include "queue.h"

#include <stdlib.h>
#include <string.h>

void q_metrics_add_timings(q_metrics *m, const sp_timings *t)
{
    for (int i = 0; i < t->n; i++) {
        int k = 0;
        while (k < m->n_stage && strcmp(m->stage[k].name, t->stage[i].name))
            k++;
        if (k == m->n_stage) {
            if (k == (int)(sizeof m->stage / sizeof *m->stage))
                continue;
            snprintf(m->stage[k].name, sizeof m->stage[k].name, "%s", t->stage[i].name);
            m->n_stage++;
        }
        m->stage[k].seconds += t->stage[i].seconds;
        m->stage[k].runs++;
    }
}

/* a label value: \, " and newlines escaped (Prometheus text format) */
static void label(FILE *b, const char *s)
{
    for (; *s; s++)
        if (*s == '\\' || *s == '"')
            fprintf(b, "\\%c", *s);
        else if (*s == '\n')
            fprintf(b, "\\n");
        else
            fprintf(b, "%c", *s);
}

static void queue_gauges(FILE *b, rconn *r)
{
    long long lag = -1, delayed, dead;
    redisReply *x = q_cmd(r, "XINFO GROUPS %s:jobs", r->prefix);
    for (size_t g = 0; x && x->type == REDIS_REPLY_ARRAY && g < x->elements; g++) {
        const redisReply *e = x->element[g];
        char want[96];
        snprintf(want, sizeof want, "%s-workers", r->prefix);
        int mine = 0;
        for (size_t k = 0; e->type == REDIS_REPLY_ARRAY && k + 1 < e->elements; k += 2) {
            const redisReply *kk = e->element[k], *v = e->element[k + 1];
            if (kk->type != REDIS_REPLY_STRING)
                continue;
            if (!strcmp(kk->str, "name") && v->type == REDIS_REPLY_STRING)
                mine = !strcmp(v->str, want);
            if (mine && !strcmp(kk->str, "lag") && v->type == REDIS_REPLY_INTEGER)
                lag = v->integer;
        }
    }
    freeReplyObject(x);
    delayed = q_reply_int(q_cmd(r, "ZCARD %s:delayed", r->prefix), 0);
    dead = q_reply_int(q_cmd(r, "XLEN %s:dead", r->prefix), 0);
    fprintf(b, "# HELP segpipe_queue_depth Entries of the stream no worker has taken yet.\n"
                     "# TYPE segpipe_queue_depth gauge\nsegpipe_queue_depth{queue=\"");
    label(b, r->prefix);
    fprintf(b, "\"} %lld\n# HELP segpipe_queue_delayed Jobs waiting for a retry (backoff).\n"
                     "# TYPE segpipe_queue_delayed gauge\nsegpipe_queue_delayed{queue=\"", lag < 0 ? 0 : lag);
    label(b, r->prefix);
    fprintf(b, "\"} %lld\n# HELP segpipe_queue_dead Entries of the dead-letter stream.\n"
                     "# TYPE segpipe_queue_dead gauge\nsegpipe_queue_dead{queue=\"", delayed);
    label(b, r->prefix);
    fprintf(b, "\"} %lld\n# HELP segpipe_queue_pending Entries taken by a consumer and not yet "
                     "acknowledged.\n# TYPE segpipe_queue_pending gauge\n", dead);
    x = q_cmd(r, "XPENDING %s:jobs %s-workers", r->prefix, r->prefix);
    const redisReply *c = x && x->type == REDIS_REPLY_ARRAY && x->elements == 4 ? x->element[3] : NULL;
    for (size_t i = 0; c && c->type == REDIS_REPLY_ARRAY && i < c->elements && i < 1000; i++) {
        const redisReply *p = c->element[i];
        if (p->type != REDIS_REPLY_ARRAY || p->elements != 2 || p->element[0]->type != REDIS_REPLY_STRING ||
            p->element[1]->type != REDIS_REPLY_STRING)
            continue;
        fprintf(b, "segpipe_queue_pending{queue=\"");
        label(b, r->prefix);
        fprintf(b, "\",consumer=\"");
        label(b, p->element[0]->str);
        fprintf(b, "\"} %s\n", p->element[1]->str);
    }
    freeReplyObject(x);
}

void q_metrics_write(const char *path, const q_metrics *m, rconn *r, const char *consumer)
{
    if (!path)
        return;
    char *data = NULL;
    size_t len = 0;
    FILE *b = open_memstream(&data, &len);
    if (!b)
        return;
    static const char *const res[] = {"done", "skipped", "failed", "retried", "rejected", "handed_back"};
    const long long val[] = {m->done, m->skipped, m->failed, m->retried, m->rejected, m->handed_back};
    fprintf(b, "# HELP segpipe_worker_jobs_total Jobs this worker ended, by result.\n"
                      "# TYPE segpipe_worker_jobs_total counter\n");
    for (int i = 0; i < 6; i++) {
        fprintf(b, "segpipe_worker_jobs_total{consumer=\"");
        label(b, consumer);
        fprintf(b, "\",result=\"%s\"} %lld\n", res[i], val[i]);
    }
    fprintf(b, "# HELP segpipe_worker_stage_seconds_total Seconds spent per pipeline stage.\n"
                      "# TYPE segpipe_worker_stage_seconds_total counter\n");
    for (int i = 0; i < m->n_stage; i++) {
        fprintf(b, "segpipe_worker_stage_seconds_total{consumer=\"");
        label(b, consumer);
        fprintf(b, "\",stage=\"%s\"} %.6f\n", m->stage[i].name, m->stage[i].seconds);
    }
    fprintf(b, "# HELP segpipe_worker_stage_runs_total Runs of each pipeline stage.\n"
                      "# TYPE segpipe_worker_stage_runs_total counter\n");
    for (int i = 0; i < m->n_stage; i++) {
        fprintf(b, "segpipe_worker_stage_runs_total{consumer=\"");
        label(b, consumer);
        fprintf(b, "\",stage=\"%s\"} %lld\n", m->stage[i].name, m->stage[i].runs);
    }
    fprintf(b, "# HELP segpipe_worker_busy 1 while the worker runs a job.\n# TYPE segpipe_worker_busy gauge\n"
                      "segpipe_worker_busy{consumer=\"");
    label(b, consumer);
    fprintf(b, "\"} %d\n", m->busy);
    queue_gauges(b, r);
    fprintf(b, "# HELP segpipe_worker_last_write_timestamp_seconds When this file was written.\n"
                      "# TYPE segpipe_worker_last_write_timestamp_seconds gauge\n"
                      "segpipe_worker_last_write_timestamp_seconds %.3f\n", q_now());
    if (fclose(b) == 0 && data)
        sp_write_file_atomic(path, data, len);
    free(data);
}
