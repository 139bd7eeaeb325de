/*
 * shard_cmd.c — `segpipe ct --inputs LIST --shard I/N -o OUTDIR`: the
 * inputs of one shard of a list (line k belongs to shard k mod N; relative
 * lines are read from the list's folder), for a
 * Slurm job array or a Kubernetes Indexed Job, with no coordinator. Each
 * input's labels go to OUTDIR/<name>.nii.gz (its passport beside it);
 * inputs whose labels exist are skipped, so re-running a shard finishes
 * what is left. A report, OUTDIR/shard-I-of-N.json, lists every input of
 * the shard with its state and seconds. Exit 0 when every input of the
 * shard is done, else the first failure's exit code.
 */
#include "cli.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* "I/N" with 0 <= I < N <= 100000 */
int cli_parse_shard(const char *s, int *i, int *n)
{
    char *e;
    long a = strtol(s, &e, 10);
    if (e == s || *e != '/')
        return -1;
    const char *t = e + 1;
    long b = strtol(t, &e, 10);
    if (e == t || *e || b < 1 || b > 100000 || a < 0 || a >= b)
        return -1;
    *i = (int)a, *n = (int)b;
    return 0;
}

/* a line of the list: absolute as it is, relative from the list's folder
 * (as a playlist or a Makefile include reads it, not from the caller's
 * working directory); caller frees */
static char *list_entry(const char *list, const char *line)
{
    const char *slash = strrchr(list, '/');
    if (line[0] == '/' || !slash)
        return strdup(line);
    size_t n = (size_t)(slash - list) + 1 + strlen(line) + 1;
    char *p = malloc(n);
    if (p)
        snprintf(p, n, "%.*s/%s", (int)(slash - list), list, line);
    return p;
}

/* the list's lines (blank lines and # comments skipped); caller frees */
static char **read_list(const char *path, int *count)
{
    FILE *f = fopen(path, "r");
    char line[PATH_MAX + 2], **v = NULL;
    int n = 0, cap = 0;
    *count = -1;
    if (!f)
        return NULL;
    while (fgets(line, sizeof line, f)) {
        size_t len = strcspn(line, "\r\n");
        line[len] = 0;
        if (!len || line[0] == '#')
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nv = realloc(v, (size_t)cap * sizeof *v);
            if (!nv)
                break;
            v = nv;
        }
        if (!(v[n] = list_entry(path, line)))
            break;
        n++;
    }
    fclose(f);
    *count = n;
    return v;
}

static void add_entry(FILE *rep, int first, const char *input, const char *state, double secs, const char *err)
{
    fprintf(rep, "%s\n  {\"input\": ", first ? "" : ",");
    cli_json_str(rep, input);
    fprintf(rep, ", \"state\": \"%s\", \"seconds\": %.3f", state, secs);
    if (err) {
        fputs(", \"error\": ", rep);
        cli_json_str(rep, err);
    }
    fputs("}", rep);
}

/* One shard's cases, taken in order by `jobs` threads sharing the batch
 * (one ONNX Runtime session): while one case is read, resampled or written,
 * another's network runs. Entries are filled per case and reported in list
 * order once all are done. */
typedef struct shard_run {
    cli_batch *b;
    char **in;
    const char *outdir, *model;
    int *ks, nk, quiet;
    atomic_int next;
    pthread_mutex_t mu;   /* stdout */
    struct shard_entry {
        const char *state;
        double secs;
        char *err;
        sp_status st;
    } *e;
} shard_run;

static void *shard_worker(void *arg)
{
    shard_run *r = arg;
    for (int j; (j = atomic_fetch_add(&r->next, 1)) < r->nk;) {
        int k = r->ks[j];
        char name[PATH_MAX], lab[PATH_MAX * 2], pas[PATH_MAX * 2];
        cli_batch_name(r->in[k], name, sizeof name);
        snprintf(lab, sizeof lab, "%s/%s.nii.gz", r->outdir, name);
        snprintf(pas, sizeof pas, "%s/%s.passport.json", r->outdir, name);
        if (cli_batch_done(lab)) {
            r->e[j].state = "skipped";
            continue;
        }
        sp_status st = cli_batch_run(r->b, r->model, r->in[k], lab, pas, &r->e[j].secs, NULL, NULL);
        r->e[j].st = st;
        r->e[j].state = st ? "failed" : "done";
        r->e[j].err = st ? strdup(sp_last_error()) : NULL;
        pthread_mutex_lock(&r->mu);
        if (st) {   /* the library's message names the input when it is about it */
            const char *e = r->e[j].err ? r->e[j].err : "";
            cli_errf("%s%s%s\n", strstr(e, r->in[k]) ? "" : r->in[k], strstr(e, r->in[k]) ? "" : ": ", e);
        }
        if (!r->quiet)
            printf("%s: %s (%.2f s)\n", r->in[k], st ? "failed" : lab, r->e[j].secs);
        fflush(stdout);
        pthread_mutex_unlock(&r->mu);
    }
    return NULL;
}

int cli_ct_shard(const char *list, int si, int sn, const char *outdir, const char *model, int threads,
                 const char *device, int jobs, int quiet)
{
    int n, rc = 0, done = 0, skipped = 0, failed = 0;
    char **in = read_list(list, &n);
    if (n < 0)
        return cli_errf("--inputs %s cannot be read\n", list), 3;
    if (cli_mkdir_p(outdir))
        return cli_errf("cannot make the output folder %s\n", outdir), 6;
    shard_run r = {.in = in, .outdir = outdir, .model = model, .quiet = quiet};
    r.b = cli_batch_new(threads, device);
    r.ks = calloc((size_t)n + 1, sizeof *r.ks);
    r.e = calloc((size_t)n + 1, sizeof *r.e);
    pthread_mutex_init(&r.mu, NULL);
    char rpath[PATH_MAX], tmp[PATH_MAX + 16];
    snprintf(rpath, sizeof rpath, "%s/shard-%d-of-%d.json", outdir, si, sn);
    snprintf(tmp, sizeof tmp, "%s.tmp", rpath);
    FILE *rep = r.b && r.ks && r.e ? fopen(tmp, "w") : NULL;
    if (!rep) {
        rc = r.b ? 6 : cli_fail(SP_ERR_RUNTIME, "runtime");
        goto out;
    }
    for (int k = si; k < n; k += sn)
        r.ks[r.nk++] = k;
    pthread_t th[8];
    int nt = 0;
    double w0 = sp_now();
    for (; nt < jobs - 1 && nt < 8 && pthread_create(&th[nt], NULL, shard_worker, &r) == 0; nt++) {}
    shard_worker(&r);
    for (int i = 0; i < nt; i++)
        pthread_join(th[i], NULL);
    double wall = sp_now() - w0;
    fprintf(rep, "{\"shard\": %d, \"shards\": %d, \"jobs\": %d, \"list\": ", si, sn, jobs);
    cli_json_str(rep, list);
    fputs(", \"inputs\": [", rep);
    for (int j = 0; j < r.nk; j++) {
        add_entry(rep, j == 0, in[r.ks[j]], r.e[j].state, r.e[j].secs, r.e[j].err);
        done += r.e[j].state[0] == 'd';
        skipped += r.e[j].state[0] == 's';
        failed += r.e[j].state[0] == 'f';
        if (r.e[j].st && !rc)
            rc = sp_status_exit_code(r.e[j].st);
    }
    double cpm = wall > 0 ? 60.0 * done / wall : 0;
    fprintf(rep, "\n], \"done\": %d, \"skipped\": %d, \"failed\": %d, \"wall_seconds\": %.3f, "
            "\"cases_per_minute\": %.3f}\n", done, skipped, failed, wall, cpm);
    if (fclose(rep) || rename(tmp, rpath))
        rc = rc ? rc : 6;
    if (!quiet)
        printf("shard %d of %d: %d done, %d already done, %d failed in %.1f s (%.2f cases/minute, %d job%s); "
               "report %s\n", si, sn, done, skipped, failed, wall, cpm, jobs, jobs > 1 ? "s" : "", rpath);
out:
    cli_batch_free(r.b);
    for (int j = 0; r.e && j < n; j++)
        free(r.e[j].err);
    free(r.e);
    free(r.ks);
    pthread_mutex_destroy(&r.mu);
    for (int k = 0; k < n; k++)
        free(in[k]);
    free(in);
    return rc;
}
