/*
 * bench.c — `segpipe bench`: the full CT pipeline on each case, every figure
 * recorded, seed-style tables written.
 *
 * Each case runs in its own child process (forked before ONNX Runtime starts
 * any thread), which loads the model, runs warm-up and timed runs and sends
 * one line of JSON back through a pipe; so each case has its own peak RSS,
 * and a case that crashes is counted as a failure with its signal instead of
 * ending the benchmark. The parent writes bench.json (every raw figure) and
 * bench.md (overall table per stage, success rate, structures, latency
 * buckets, slowest and fastest cases). bench/plots.py draws the PNGs.
 */
#include "cli.h"
#include "bench.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Child: run one case, print a JSON object on fd. */
static void run_case(const char *path, const bench_opts *o, int fd)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "case", path);
    sp_runtime_params rp = sp_runtime_default_params();
    rp.threads = o->threads;
    sp_runtime *rt = NULL;
    sp_package *pk = NULL;
    sp_volume *v = NULL;
    sp_status st;
    double t0 = sp_now();
    if ((st = sp_runtime_create(&rp, &rt)) || (st = sp_package_load(rt, o->model, &pk)))
        goto fail;
    cJSON_AddNumberToObject(j, "load_model_s", sp_now() - t0);
    cJSON *runs = cJSON_AddArrayToObject(j, "runs");
    char tmp[64];
    snprintf(tmp, sizeof tmp, "/tmp/segpipe-bench-%ld.nii.gz", (long)getpid());
    for (int r = 0; r < o->warmup + o->runs; r++) {
        sp_timings t = {0};
        double a = sp_now();
        if ((st = sp_volume_read(path, NULL, &v)))
            goto fail;
        sp_timings_add(&t, "read", sp_now() - a);
        sp_ct_params cp = sp_ct_default_params();
        cp.threads = o->threads;
        cp.tile_batch = o->tile_batch;
        cp.release_input = 1;
        sp_ct_result *res = NULL;
        if ((st = sp_ct_run_inplace(pk, v, &cp, &res)))
            goto fail;
        const sp_timings *rt_t = sp_ct_result_timings(res);
        for (int i = 0; i < rt_t->n; i++)
            sp_timings_add(&t, rt_t->stage[i].name, rt_t->stage[i].seconds);
        a = sp_now();
        st = sp_labels_write(tmp, sp_ct_result_labels(res, NULL), v);
        unlink(tmp);
        sp_timings_add(&t, "write", sp_now() - a);
        if (st) {
            sp_ct_result_free(res);
            goto fail;
        }
        if (r >= o->warmup) {
            cJSON *run = cJSON_CreateObject();
            cJSON *sec = cJSON_AddObjectToObject(run, "seconds");
            for (int i = 0; i < t.n; i++)
                cJSON_AddNumberToObject(sec, t.stage[i].name, t.stage[i].seconds);
            cJSON_AddNumberToObject(run, "total", sp_timings_total(&t));
            cJSON_AddItemToArray(runs, run);
        }
        if (r == o->warmup + o->runs - 1) {
            sp_volume_info vi;
            sp_volume_get_info(v, &vi);
            double d[3] = {(double)vi.dim[0], (double)vi.dim[1], (double)vi.dim[2]};
            cJSON_AddItemToObject(j, "shape", cJSON_CreateDoubleArray(d, 3));
            cJSON_AddNumberToObject(j, "voxels", d[0] * d[1] * d[2]);
            int border = 0;
            cJSON_AddNumberToObject(j, "structures",
                                    sp_ct_result_passport(res) ? sp_passport_count(sp_ct_result_passport(res), &border) : 0);
        }
        sp_ct_result_free(res);
        sp_volume_free(v);
        v = NULL;
    }
    cJSON_AddBoolToObject(j, "ok", 1);
    goto done;
fail:
    cJSON_AddBoolToObject(j, "ok", 0);
    cJSON_AddStringToObject(j, "error", sp_last_error());
done:
    cJSON_AddNumberToObject(j, "peak_rss_bytes", (double)sp_peak_rss());
    sp_volume_free(v);
    sp_package_free(pk);
    sp_runtime_free(rt);
    bench_send(fd, j);
}

/* Run one case (path), or with cases the throughput passes over all of
 * them, in a child process; its JSON answer, or a failure naming why. */
static cJSON *fork_case(const char *path, const bench_opts *o, char *const *cases, int n)
{
    int p[2];
    if (pipe(p) != 0)
        return NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        if (cases)
            bench_throughput(cases, n, o, p[1]);
        else
            run_case(path, o, p[1]);
        close(p[1]);
        _exit(0);
    }
    close(p[1]);
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 65536;
            buf = realloc(buf, cap);
        }
        ssize_t r = read(p[0], buf + len, 4096);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(p[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    cJSON *j = NULL;
    if (buf) {
        buf[len] = 0;
        j = cJSON_Parse(buf);
    }
    free(buf);
    if (!j) {
        j = cJSON_CreateObject();
        if (path)
            cJSON_AddStringToObject(j, "case", path);
        cJSON_AddBoolToObject(j, "ok", 0);
        char why[64];
        snprintf(why, sizeof why, WIFSIGNALED(status) ? "killed by signal %d" : "exited %d without a result",
                 WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
        cJSON_AddStringToObject(j, "error", why);
    }
    return j;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* numpy-style linear percentile of sorted v[0..n) */
static double pct(const double *v, int n, double q)
{
    if (n == 0)
        return NAN;
    double pos = q / 100.0 * (n - 1);
    int lo = (int)floor(pos);
    return lo + 1 < n ? v[lo] + (v[lo + 1] - v[lo]) * (pos - lo) : v[lo];
}

static void stats_row(FILE *f, const char *name, double *v, int n)
{
    if (n == 0)
        return;
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    double m = 0, s = 0;
    for (int i = 0; i < n; i++)
        m += v[i];
    m /= n;
    for (int i = 0; i < n; i++)
        s += (v[i] - m) * (v[i] - m);
    s = n > 1 ? sqrt(s / (n - 1)) : 0;
    fprintf(f, "| %s | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f |\n", name, m, s, pct(v, n, 50), pct(v, n, 95),
            v[0], v[n - 1]);
}

/* The stage names of every ok case's runs, in first-seen order; *nrun the runs */
static int md_stages(cJSON *all, const char **stages, int *ok, int *nrun)
{
    int nst = 0;
    cJSON *c;
    cJSON_ArrayForEach(c, all) {
        if (!cJSON_IsTrue(cJSON_GetObjectItem(c, "ok")))
            continue;
        (*ok)++;
        cJSON *r;
        cJSON_ArrayForEach(r, cJSON_GetObjectItem(c, "runs")) {
            (*nrun)++;
            cJSON *s;
            cJSON_ArrayForEach(s, cJSON_GetObjectItem(r, "seconds")) {
                int k;
                for (k = 0; k < nst && strcmp(stages[k], s->string); k++)
                    ;
                if (k == nst && nst < SP_MAX_STAGES)
                    stages[nst++] = s->string;
            }
        }
    }
    return nst;
}

/* "Overall": per-stage statistics over every run, success, structures */
static void md_overall(FILE *f, cJSON *all, const char **stages, int nst, int ok, double *v)
{
    int ncase = cJSON_GetArraySize(all);
    cJSON *c;
    fprintf(f, "## Overall (seconds per case run)\n\n| stage | mean | std | median | p95 | min | max |\n"
               "|---|---|---|---|---|---|---|\n");
    for (int k = 0; k <= nst; k++) {
        int n = 0;
        cJSON_ArrayForEach(c, all) {
            cJSON *r;
            cJSON_ArrayForEach(r, cJSON_GetObjectItem(c, "runs")) {
                cJSON *x = k < nst ? cJSON_GetObjectItem(cJSON_GetObjectItem(r, "seconds"), stages[k])
                                   : cJSON_GetObjectItem(r, "total");
                v[n++] = cJSON_IsNumber(x) ? x->valuedouble : 0;
            }
        }
        stats_row(f, k < nst ? stages[k] : "**total**", v, n);
    }
    fprintf(f, "\nsuccess: %d of %d cases (%.0f%%)\n", ok, ncase, ncase ? 100.0 * ok / ncase : 0);
    double sm = 0, ss = 0;
    int n = 0;
    cJSON_ArrayForEach(c, all) {
        cJSON *x = cJSON_GetObjectItem(c, "structures");
        if (cJSON_IsNumber(x))
            v[n++] = x->valuedouble, sm += x->valuedouble;
    }
    if (n) {
        sm /= n;
        for (int i = 0; i < n; i++)
            ss += (v[i] - sm) * (v[i] - sm);
        fprintf(f, "structures found: %.1f +- %.1f\n", sm, n > 1 ? sqrt(ss / (n - 1)) : 0);
    }
}

/* latency buckets on per-run totals */
static void md_latency(FILE *f, cJSON *all)
{
    static const double edges[] = {1, 2, 5, 10, 20, 30, 60, 120};
    int counts[9] = {0};
    cJSON *c;
    cJSON_ArrayForEach(c, all) {
        cJSON *r;
        cJSON_ArrayForEach(r, cJSON_GetObjectItem(c, "runs")) {
            double t = cJSON_GetObjectItem(r, "total")->valuedouble;
            int b = 0;
            while (b < 8 && t >= edges[b])
                b++;
            counts[b]++;
        }
    }
    fprintf(f, "\n## Latency distribution (runs)\n\n| total seconds | runs |\n|---|---|\n");
    for (int b = 0; b < 9; b++)
        if (counts[b])
            fprintf(f, "| %s%g%s%g | %d |\n", b == 0 ? "< " : "", b == 0 ? edges[0] : edges[b - 1],
                    b == 0 ? "" : b == 8 ? "+" : " - ", b == 0 || b == 8 ? NAN : edges[b], counts[b]);
}

/* one row of the cases table */
static void md_case_row(FILE *f, cJSON *cc, double mean)
{
    cJSON *sh = cJSON_GetObjectItem(cc, "shape");
    const char *err = cJSON_GetStringValue(cJSON_GetObjectItem(cc, "error"));
    fprintf(f, "| %s | ", cJSON_GetStringValue(cJSON_GetObjectItem(cc, "case")));
    if (cJSON_GetArraySize(sh) == 3)
        fprintf(f, "%gx%gx%g", cJSON_GetArrayItem(sh, 0)->valuedouble, cJSON_GetArrayItem(sh, 1)->valuedouble,
                cJSON_GetArrayItem(sh, 2)->valuedouble);
    cJSON *st = cJSON_GetObjectItem(cc, "structures");
    cJSON *rss = cJSON_GetObjectItem(cc, "peak_rss_bytes");
    char secs[32] = "", nst_s[16] = "";
    if (mean >= 0)
        snprintf(secs, sizeof secs, "%.3f", mean);
    if (cJSON_IsNumber(st))
        snprintf(nst_s, sizeof nst_s, "%d", st->valueint);
    fprintf(f, " | %s | %.0f | %s | %s |\n", secs, cJSON_IsNumber(rss) ? rss->valuedouble / 1e6 : 0, nst_s,
            err ? err : "ok");
}

/* "Cases": mean total per case, slowest first */
static void md_cases(FILE *f, cJSON *all)
{
    fprintf(f, "\n## Cases (mean total, slowest first)\n\n| case | shape | seconds | peak RSS MB | structures | "
               "result |\n|---|---|---|---|---|---|\n");
    int nc = cJSON_GetArraySize(all), i = 0;
    double *mt = calloc((size_t)nc + 1, sizeof *mt);
    int *ord = calloc((size_t)nc + 1, sizeof *ord);
    cJSON *c;
    cJSON_ArrayForEach(c, all) {
        double s = 0;
        int k = 0;
        cJSON *r;
        cJSON_ArrayForEach(r, cJSON_GetObjectItem(c, "runs")) s += cJSON_GetObjectItem(r, "total")->valuedouble, k++;
        if (mt && ord)
            mt[i] = k ? s / k : -1, ord[i] = i;
        i++;
    }
    for (int a = 0; mt && ord && a < nc; a++)
        for (int b = a + 1; b < nc; b++)
            if (mt[ord[b]] > mt[ord[a]]) {
                int t = ord[a];
                ord[a] = ord[b];
                ord[b] = t;
            }
    for (int a = 0; mt && ord && a < nc; a++)
        md_case_row(f, cJSON_GetArrayItem(all, ord[a]), mt[ord[a]]);
    free(mt);
    free(ord);
}

static void write_md(FILE *f, cJSON *all, const bench_opts *o, const cJSON *tput)
{
    int ncase = cJSON_GetArraySize(all), ok = 0, nrun = 0;
    const char *stages[SP_MAX_STAGES];
    int nst = md_stages(all, stages, &ok, &nrun);
    fprintf(f, "# segpipe bench\n\nmodel `%s`, %d case(s), %d timed run(s) each after %d warm-up, threads %s, "
               "tile batch %d (0 = auto)\n\n", o->model, ncase, o->runs, o->warmup, o->threads ? "" : "all cores",
            o->tile_batch);
    if (o->threads)
        fprintf(f, "(threads: %d)\n\n", o->threads);
    double *v = malloc(sizeof(double) * (size_t)(nrun + ncase + 1));
    if (v)
        md_overall(f, all, stages, nst, ok, v);
    free(v);
    md_latency(f, all);
    md_cases(f, all);
    bench_throughput_md(f, tput);
}

static void bench_usage(void)
{
    printf("usage: segpipe bench [--model DIR] CASES... [--runs N] [--warmup N] [--threads N]\n"
           "                     [--tile-batch N] [--jobs N] [--out DIR]\n"
           "Runs the full CT pipeline on each case (each in its own process), writes\n"
           "DIR/bench.json (every figure) and DIR/bench.md (tables); a failing case is\n"
           "counted, not fatal. bench/plots.py DIR draws the plots.\n"
           "--jobs N (1-8) adds throughput: all cases on one loaded model, one after another\n"
           "and N at a time (as segpipe ct --inputs LIST --jobs N), in cases per minute.\n");
}

/* --jobs: the throughput passes (bench_tput.c) in their own process, added
 * to root as "throughput"; returns that object (root owns it). */
static cJSON *throughput(cJSON *root, const bench_opts *o, char *const *cases, int n)
{
    fprintf(stderr, "bench: throughput, %d case(s), 1 and %d at a time ...", n, o->jobs);
    cJSON *t = fork_case(NULL, o, cases, n);
    fprintf(stderr, " %s\n", cJSON_IsTrue(cJSON_GetObjectItem(t, "ok")) ? "ok"
                             : cJSON_GetStringValue(cJSON_GetObjectItem(t, "error")));
    cJSON_AddItemToObject(root, "throughput", t);
    return t;
}

/* -1: go on with the cases in a->all; else the exit code (help, usage errors) */
static int bench_parse(int argc, char **argv, bench_opts *o, cli_args *a)
{
    const cli_opt t[] = {
        {.name = "model", .letter = 'm', .kind = CLI_STR, .dst = &o->model, .value = "DIR"},
        {.name = "runs", .kind = CLI_INT, .dst = &o->runs, .lo = 1, .hi = 100000, .value = "N"},
        {.name = "warmup", .kind = CLI_INT, .dst = &o->warmup, .lo = 0, .hi = 100000, .value = "N"},
        {.name = "threads", .letter = 't', .kind = CLI_INT, .dst = &o->threads, .lo = 0, .hi = 1024, .value = "N"},
        {.name = "tile-batch", .kind = CLI_INT, .dst = &o->tile_batch, .lo = 1, .hi = 256, .value = "N"},
        {.name = "out", .letter = 'o', .kind = CLI_STR, .dst = &o->out, .value = "DIR"},
        {.name = "jobs", .kind = CLI_INT, .dst = &o->jobs, .lo = 1, .hi = 8, .value = "N"},
        {.name = "help", .letter = 'h', .kind = CLI_HELP},
        {.name = NULL}};
    int rc = cli_parse("bench", t, NULL, argc, argv, o, a);
    if (rc == CLI_HELP_ASKED)
        return bench_usage(), 0;
    if (rc)
        return rc;
    if (!a->n || o->runs < 1 || o->warmup < 0 || o->tile_batch < 0 || o->threads < 0)
        return cli_usage_error("bench", "expected CASES... (and --runs >= 1)");
    return -1;
}

int cmd_bench(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "video"))
        return cmd_bench_video(argc - 1, argv + 1);
    bench_opts o = {sp_default_model_dir(), "bench-out", 1, 0, 0, 0, 0};
    cli_args a = {.all = argv + 1};   /* the cases gathered in place */
    int rc = bench_parse(argc, argv, &o, &a);
    if (rc >= 0)
        return rc;
    if (cli_mkdir_p(o.out) != 0) {
        cli_errf("%s: cannot create: %s\n", o.out, strerror(errno));
        return 6;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "segpipe_version", SP_VERSION_STRING);
    cJSON_AddStringToObject(root, "onnxruntime_version", sp_ort_version());
    cJSON_AddStringToObject(root, "model", o.model);
    cJSON_AddNumberToObject(root, "threads", o.threads);
    cJSON_AddNumberToObject(root, "tile_batch", o.tile_batch);
    cJSON_AddNumberToObject(root, "runs", o.runs);
    cJSON_AddNumberToObject(root, "warmup", o.warmup);
    cJSON *all = cJSON_AddArrayToObject(root, "cases");
    int failed = 0;
    for (int i = 0; i < a.n; i++) {
        fprintf(stderr, "bench: %s ...", a.all[i]);
        cJSON *j = fork_case(a.all[i], &o, NULL, 0);
        int ok = cJSON_IsTrue(cJSON_GetObjectItem(j, "ok"));
        failed += !ok;
        fprintf(stderr, " %s\n", ok ? "ok" : cJSON_GetStringValue(cJSON_GetObjectItem(j, "error")));
        cJSON_AddItemToArray(all, j);
    }
    cJSON *tput = o.jobs ? throughput(root, &o, a.all, a.n) : NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/bench.json", o.out);
    char *s = cJSON_Print(root);
    sp_status st = sp_write_file_atomic(path, s, strlen(s));
    free(s);
    if (st) {
        cJSON_Delete(root);
        return cli_fail(st, NULL);
    }
    snprintf(path, sizeof path, "%s/bench.md", o.out);
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        cJSON_Delete(root);
        cli_errf("%s: cannot write\n", tmp);
        return 6;
    }
    write_md(f, all, &o, tput);
    fclose(f);
    rename(tmp, path);
    cJSON_Delete(root);
    FILE *md = fopen(path, "r");
    if (md) {
        char line[1024];
        while (fgets(line, sizeof line, md))
            fputs(line, stdout);
        fclose(md);
    }
    return failed == a.n ? 1 : 0;   /* failing cases are counted, not fatal */
}
