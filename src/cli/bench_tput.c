/*
 * bench_tput.c — `segpipe bench --jobs N`: throughput of the cases run as
 * `segpipe ct --inputs LIST --jobs N` runs them (issue 45).
 *
 * The per-case figures of bench.c are latencies, one case at a time. A
 * hospital server's question is how many cases per minute it clears: here
 * one child process loads the model once, runs one case untimed (first-run
 * costs), then every case one after another (jobs 1) and every case N at a
 * time on N threads sharing the one model (ONNX Runtime's Run is
 * thread-safe), each case read, segmented and its labels written; both
 * passes are timed on the wall clock and reported as cases per minute and
 * their ratio. Runs in its own process like every bench case, so its peak
 * RSS is its own.
 */
#include "cli.h"
#include "bench.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

void bench_send(int fd, cJSON *j)
{
    char *s = cJSON_PrintUnformatted(j);
    for (size_t len = s ? strlen(s) : 0, off = 0; off < len;) {
        ssize_t w = write(fd, s + off, len - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    free(s);
    cJSON_Delete(j);
}

typedef struct tput_run {
    char *const *cases;
    int n;
    const bench_opts *o;
    sp_package *pk;
    atomic_int next, failed;
} tput_run;

/* read, segment and write one case; the labels go to a temporary file */
static sp_status tput_case(tput_run *r, int i)
{
    sp_volume *v = NULL;
    sp_ct_result *res = NULL;
    sp_status st = sp_volume_read(r->cases[i], NULL, &v);
    if (!st) {
        sp_ct_params cp = sp_ct_default_params();
        cp.threads = r->o->threads;
        cp.tile_batch = r->o->tile_batch;
        cp.passport = 0;
        cp.release_input = 1;
        st = sp_ct_run_inplace(r->pk, v, &cp, &res);
    }
    if (!st) {
        char tmp[64];
        snprintf(tmp, sizeof tmp, "/tmp/segpipe-bench-%ld-%d.nii.gz", (long)getpid(), i);
        st = sp_labels_write(tmp, sp_ct_result_labels(res, NULL), v);
        unlink(tmp);
    }
    sp_ct_result_free(res);
    sp_volume_free(v);
    return st;
}

static void *tput_worker(void *arg)
{
    tput_run *r = arg;
    for (int i; (i = atomic_fetch_add(&r->next, 1)) < r->n;)
        if (tput_case(r, i))
            atomic_fetch_add(&r->failed, 1);
    return NULL;
}

/* wall seconds of every case through `jobs` threads */
static double tput_pass(tput_run *r, int jobs)
{
    pthread_t th[8];
    int nt = 0;
    atomic_store(&r->next, 0);
    double t0 = sp_now();
    for (; nt < jobs - 1 && nt < 8 && pthread_create(&th[nt], NULL, tput_worker, r) == 0; nt++) {}
    tput_worker(r);
    for (int k = 0; k < nt; k++)
        pthread_join(th[k], NULL);
    return sp_now() - t0;
}

void bench_throughput(char *const *cases, int n, const bench_opts *o, int fd)
{
    cJSON *j = cJSON_CreateObject();
    sp_runtime_params rp = sp_runtime_default_params();
    rp.threads = o->threads;
    sp_runtime *rt = NULL;
    tput_run r = {.cases = cases, .n = n, .o = o};
    sp_status st;
    if ((st = sp_runtime_create(&rp, &rt)) || (st = sp_package_load(rt, o->model, &r.pk)) || (st = tput_case(&r, 0))) {
        cJSON_AddBoolToObject(j, "ok", 0);
        cJSON_AddStringToObject(j, "error", sp_last_error());
    } else {
        double seq = tput_pass(&r, 1), par = tput_pass(&r, o->jobs);
        cJSON_AddBoolToObject(j, "ok", atomic_load(&r.failed) == 0);
        cJSON_AddNumberToObject(j, "jobs", o->jobs);
        cJSON_AddNumberToObject(j, "cases", n);
        cJSON_AddNumberToObject(j, "failed", atomic_load(&r.failed));
        cJSON_AddNumberToObject(j, "sequential_s", seq);
        cJSON_AddNumberToObject(j, "parallel_s", par);
        cJSON_AddNumberToObject(j, "sequential_cases_per_minute", 60.0 * n / seq);
        cJSON_AddNumberToObject(j, "cases_per_minute", 60.0 * n / par);
        cJSON_AddNumberToObject(j, "speedup", seq / par);
    }
    cJSON_AddNumberToObject(j, "peak_rss_bytes", (double)sp_peak_rss());
    sp_package_free(r.pk);
    sp_runtime_free(rt);
    bench_send(fd, j);
}

void bench_throughput_md(FILE *f, const cJSON *t)
{
    if (!t)
        return;
    if (!cJSON_IsTrue(cJSON_GetObjectItem(t, "ok")) && !cJSON_GetObjectItem(t, "cases_per_minute")) {
        fprintf(f, "\n## Throughput\n\nnot measured: %s\n", cJSON_GetStringValue(cJSON_GetObjectItem(t, "error")));
        return;
    }
#define NUM(k) cJSON_GetNumberValue(cJSON_GetObjectItem(t, k))
    fprintf(f, "\n## Throughput (one model, every case read, segmented and written)\n\n"
               "| cases | jobs | wall s | cases per minute | failed |\n|---|---|---|---|---|\n"
               "| %.0f | 1 | %.2f | %.2f | |\n| %.0f | %.0f | %.2f | %.2f | %.0f |\n\n"
               "%.0f at a time: %.2fx the throughput of one after another.\n",
            NUM("cases"), NUM("sequential_s"), NUM("sequential_cases_per_minute"), NUM("cases"), NUM("jobs"),
            NUM("parallel_s"), NUM("cases_per_minute"), NUM("failed"), NUM("jobs"), NUM("speedup"));
#undef NUM
}
