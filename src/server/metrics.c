/*
 * metrics.c — per-endpoint counters and latency quantiles, /v1/status and
 * the Prometheus /metrics text. Latencies are kept for successful answers
 * (the last 2048 per endpoint); failures are counted.
 */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *const sp_ep_names[EP_N] = {"health_live", "health_ready", "server_metadata", "model_metadata",
                                       "model_ready", "infer", "ct", "results", "status", "metrics",
                                       "segment_batch", "jobs", "other", "model_stats", "repository", "classify",
                                       "ui", "models"};

void sp_record(server *s, int ep, double secs, int ok)
{
    pthread_mutex_lock(&s->mu);
    ep_stats *e = &s->eps[ep];
    if (ok)
        e->served++;
    else
        e->failed++;
    if (ok) {   /* latencies of answers served; 503 back-pressure is not a latency */
        e->lat[e->pos] = secs;
        e->pos = (e->pos + 1) % LAT_RING;
        if (e->nlat < LAT_RING)
            e->nlat++;
    }
    pthread_mutex_unlock(&s->mu);
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* p50/p95/p99 of an endpoint (caller holds s->mu) */
static void quantiles(const ep_stats *e, double q[3])
{
    static _Thread_local double tmp[LAT_RING];
    if (!e->nlat) {
        q[0] = q[1] = q[2] = 0;
        return;
    }
    memcpy(tmp, e->lat, (size_t)e->nlat * sizeof *tmp);
    qsort(tmp, (size_t)e->nlat, sizeof *tmp, cmpd);
    const double qs[3] = {0.5, 0.95, 0.99};
    for (int i = 0; i < 3; i++) {
        double pos = qs[i] * (e->nlat - 1);
        int lo = (int)floor(pos);
        q[i] = lo + 1 < e->nlat ? tmp[lo] + (tmp[lo + 1] - tmp[lo]) * (pos - lo) : tmp[lo];
    }
}

char *sp_status_json(server *s)
{
    sp_buf b = {0};
    pthread_mutex_lock(&s->mu);
    sp_buf_printf(&b, "{\"uptime_seconds\": %.3f, \"ready\": %s, \"queue_depth\": %d, \"queue_capacity\": %d, "
                      "\"workers\": %d,\n \"rss_bytes\": %zu, \"peak_rss_bytes\": %zu, \"connections\": %d, "
                      "\"buffered_bytes\": %zu, \"stored_jobs\": %d, \"stored_bytes\": %zu,\n \"max_memory_bytes\": %zu, "
                      "\"memory_reserved_bytes\": %zu, \"memory_base_bytes\": %zu, \"answer_bytes_held\": %zu,\n \"models\": [",
                  sp_now() - s->t0, atomic_load(&s->ready) ? "true" : "false", s->qtotal, s->p.queue * s->n_models,
                  s->p.workers, sp_current_rss(), sp_peak_rss(), atomic_load(&s->inflight),
                  atomic_load(&s->buffered), s->n_stored, s->stored_bytes, s->max_memory, s->mem_used, s->mem_base,
                  atomic_load(&s->answer_bytes));
    for (int i = 0; i < s->n_models; i++) {
        sp_buf_printf(&b, "%s{\"name\": ", i ? ", " : "");
        sp_buf_json_str(&b, s->models[i].name);
        sp_buf_printf(&b, ", \"state\": \"%s\", \"queue_depth\": %d, \"run_memory_bytes\": %zu, \"sessions\": %d}",
                      s->models[i].ready ? "ready" : s->models[i].error[0] ? "failed" : "loading", s->models[i].qlen,
                      s->models[i].pk ? sp_package_run_memory(s->models[i].pk) : 0,
                      s->models[i].ready && s->models[i].pk ? sp_package_sessions(s->models[i].pk) : 0);
    }
    sp_buf_puts(&b, "],\n \"devices\": [");
    for (int g = 0; g < s->ndev; g++) {
        char kind[16];
        int idx = 0;
        sp_device_parse(s->devs[g], kind, sizeof kind, &idx);
        sp_buf_printf(&b, "%s{\"device\": \"%s\", \"jobs\": %llu, \"busy_seconds\": %.3f, "
                          "\"gpu_peak_memory_bytes\": %zu}", g ? ", " : "", s->devs[g],
                      (unsigned long long)s->dev_jobs[g], s->dev_busy[g],
                      strcmp(kind, "cpu") ? sp_gpu_peak_memory_of(idx) : 0);
    }
    sp_buf_puts(&b, "],\n \"endpoints\": {");
    int first = 1;
    for (int e = 0; e < EP_N; e++) {
        ep_stats *st = &s->eps[e];
        if (!st->served && !st->failed)
            continue;
        double q[3];
        quantiles(st, q);
        sp_buf_printf(&b, "%s\n  \"%s\": {\"served\": %llu, \"failed\": %llu, \"p50_seconds\": %.6f, "
                          "\"p95_seconds\": %.6f, \"p99_seconds\": %.6f}", first ? "" : ",", sp_ep_names[e],
                      (unsigned long long)st->served, (unsigned long long)st->failed, q[0], q[1], q[2]);
        first = 0;
    }
    pthread_mutex_unlock(&s->mu);
    sp_buf_puts(&b, "}}\n");
    return sp_buf_take(&b);
}

/* Per device of --device (one per GPU with several): jobs, busy seconds
 * (a worker running a job there; against uptime: how busy it was) and the
 * GPU's peak memory. Called with s->mu held. */
static void device_metrics(server *s, sp_buf *b)
{
    sp_buf_puts(b, "# HELP segpipe_device_jobs_total Jobs run, by device.\n"
                   "# TYPE segpipe_device_jobs_total counter\n");
    for (int g = 0; g < s->ndev; g++)
        sp_buf_printf(b, "segpipe_device_jobs_total{device=\"%s\"} %llu\n", s->devs[g],
                      (unsigned long long)s->dev_jobs[g]);
    sp_buf_puts(b, "# HELP segpipe_device_busy_seconds_total Seconds a worker spent running jobs, by device.\n"
                   "# TYPE segpipe_device_busy_seconds_total counter\n");
    for (int g = 0; g < s->ndev; g++)
        sp_buf_printf(b, "segpipe_device_busy_seconds_total{device=\"%s\"} %.3f\n", s->devs[g], s->dev_busy[g]);
    if (s->ndev && strcmp(s->devs[0], "cpu")) {
        sp_buf_puts(b, "# HELP segpipe_gpu_peak_memory_bytes Highest GPU memory in use seen after a CT window.\n"
                       "# TYPE segpipe_gpu_peak_memory_bytes gauge\n");
        for (int g = 0; g < s->ndev; g++) {
            char kind[16];
            int idx = 0;
            sp_device_parse(s->devs[g], kind, sizeof kind, &idx);
            sp_buf_printf(b, "segpipe_gpu_peak_memory_bytes{device=\"%s\"} %zu\n", s->devs[g],
                          sp_gpu_peak_memory_of(idx));
        }
    }
}

char *sp_metrics_text(server *s)
{
    sp_buf b = {0};
    pthread_mutex_lock(&s->mu);
    sp_buf_printf(&b, "# HELP segpipe_uptime_seconds Seconds since the service started.\n"
                      "# TYPE segpipe_uptime_seconds gauge\nsegpipe_uptime_seconds %.3f\n"
                      "# HELP segpipe_ready 1 when every model is loaded and warmed up.\n"
                      "# TYPE segpipe_ready gauge\nsegpipe_ready %d\n"
                      "# HELP segpipe_queue_depth Jobs waiting for a worker.\n"
                      "# TYPE segpipe_queue_depth gauge\nsegpipe_queue_depth %d\n"
                      "# HELP segpipe_resident_memory_bytes Resident set size.\n"
                      "# TYPE segpipe_resident_memory_bytes gauge\nsegpipe_resident_memory_bytes %zu\n",
                  sp_now() - s->t0, atomic_load(&s->ready), s->qtotal, sp_current_rss());
    sp_buf_puts(&b, "# HELP segpipe_model_ready 1 when the model is loaded and warmed up.\n"
                    "# TYPE segpipe_model_ready gauge\n");
    for (int i = 0; i < s->n_models; i++)
        sp_buf_printf(&b, "segpipe_model_ready{model=\"%s\"} %d\n", s->models[i].name, s->models[i].ready);
    sp_buf_puts(&b, "# HELP segpipe_requests_total Requests answered, by endpoint and outcome.\n"
                    "# TYPE segpipe_requests_total counter\n");
    for (int e = 0; e < EP_N; e++)
        sp_buf_printf(&b, "segpipe_requests_total{endpoint=\"%s\",outcome=\"ok\"} %llu\n"
                          "segpipe_requests_total{endpoint=\"%s\",outcome=\"error\"} %llu\n",
                      sp_ep_names[e], (unsigned long long)s->eps[e].served, sp_ep_names[e],
                      (unsigned long long)s->eps[e].failed);
    sp_buf_puts(&b, "# HELP segpipe_request_seconds Request latency (last 2048 requests per endpoint).\n"
                    "# TYPE segpipe_request_seconds summary\n");
    for (int e = 0; e < EP_N; e++) {
        if (!s->eps[e].nlat)
            continue;
        double q[3];
        quantiles(&s->eps[e], q);
        sp_buf_printf(&b, "segpipe_request_seconds{endpoint=\"%s\",quantile=\"0.5\"} %.6f\n"
                          "segpipe_request_seconds{endpoint=\"%s\",quantile=\"0.95\"} %.6f\n"
                          "segpipe_request_seconds{endpoint=\"%s\",quantile=\"0.99\"} %.6f\n",
                      sp_ep_names[e], q[0], sp_ep_names[e], q[1], sp_ep_names[e], q[2]);
    }
    device_metrics(s, &b);
    pthread_mutex_unlock(&s->mu);
    return sp_buf_take(&b);
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void stat_add(sp_stat *st, double secs)
{
    st->count++;
    st->ns += secs > 0 ? (uint64_t)(secs * 1e9) : 0;
}

void sp_stats_record(model_entry *me, job *const *batch, int nb, double t_done)
{
    model_stats *st = &me->st;
    int ran = 0;
    for (int i = 0; i < nb; i++) {
        const job *j = batch[i];
        stat_add(j->http == 200 ? &st->success : &st->fail, t_done - j->t_enq);
        if (!j->t_start)
            continue;   /* cancelled while queued */
        ran = 1;
        double end = j->t_end ? j->t_end : t_done;
        stat_add(&st->queue, j->t_start - j->t_enq);
        stat_add(&st->input, j->t_input);
        stat_add(&st->infer, end - j->t_start - j->t_input);
        stat_add(&st->output, t_done - end);
        st->inferences++;
    }
    if (ran) {
        st->executions++;
        st->last = wall_now();
    }
}

static void stat_json(sp_buf *b, const char *name, const sp_stat *st, int comma)
{
    sp_buf_printf(b, "%s\"%s\": {\"count\": %llu, \"ns\": %llu}", comma ? ", " : "", name,
                  (unsigned long long)st->count, (unsigned long long)st->ns);
}

char *sp_stats_json(server *s, const model_entry *only)
{
    sp_buf b = {0};
    sp_buf_puts(&b, "{\"model_stats\": [");
    pthread_mutex_lock(&s->mu);
    int n = 0;
    for (int i = 0; i < s->n_models; i++) {
        const model_entry *me = &s->models[i];
        if (only && me != only)
            continue;
        const model_stats *st = &me->st;
        sp_buf_puts(&b, n++ ? ", {\"name\": " : "{\"name\": ");
        sp_buf_json_str(&b, me->name);
        sp_buf_printf(&b, ", \"version\": \"1\", \"last_inference\": %llu, \"inference_count\": %llu, "
                          "\"execution_count\": %llu, \"inference_stats\": {",
                      (unsigned long long)(st->last * 1000), (unsigned long long)st->inferences,
                      (unsigned long long)st->executions);
        stat_json(&b, "success", &st->success, 0);
        stat_json(&b, "fail", &st->fail, 1);
        stat_json(&b, "queue", &st->queue, 1);
        stat_json(&b, "compute_input", &st->input, 1);
        stat_json(&b, "compute_infer", &st->infer, 1);
        stat_json(&b, "compute_output", &st->output, 1);
        sp_buf_puts(&b, "}}");
    }
    pthread_mutex_unlock(&s->mu);
    sp_buf_puts(&b, "]}\n");
    return sp_buf_take(&b);
}

char *sp_repository_index(server *s)
{
    sp_buf b = {0};
    sp_buf_puts(&b, "[");
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_models; i++) {
        const model_entry *me = &s->models[i];
        sp_buf_puts(&b, i ? ", {\"name\": " : "{\"name\": ");
        sp_buf_json_str(&b, me->name);
        sp_buf_printf(&b, ", \"version\": \"1\", \"state\": \"%s\"", me->ready ? "READY" : "UNAVAILABLE");
        if (!me->ready && me->error[0]) {
            sp_buf_puts(&b, ", \"reason\": ");
            sp_buf_json_str(&b, me->error);
        }
        sp_buf_puts(&b, "}");
    }
    pthread_mutex_unlock(&s->mu);
    sp_buf_puts(&b, "]\n");
    return sp_buf_take(&b);
}
