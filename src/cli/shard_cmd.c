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

int cli_ct_shard(const char *list, int si, int sn, const char *outdir, const char *model, int threads,
                 const char *device, int quiet)
{
    int n, rc = 0, done = 0, skipped = 0, failed = 0;
    char **in = read_list(list, &n);
    if (n < 0)
        return fprintf(stderr, "segpipe: --inputs %s cannot be read\n", list), 3;
    if (cli_mkdir_p(outdir))
        return fprintf(stderr, "segpipe: cannot make the output folder %s\n", outdir), 6;
    cli_batch *b = cli_batch_new(threads, device);
    char rpath[PATH_MAX], tmp[PATH_MAX + 16];
    snprintf(rpath, sizeof rpath, "%s/shard-%d-of-%d.json", outdir, si, sn);
    snprintf(tmp, sizeof tmp, "%s.tmp", rpath);
    FILE *rep = b ? fopen(tmp, "w") : NULL;
    if (!b || !rep) {
        rc = b ? 6 : cli_fail(SP_ERR_RUNTIME, "runtime");
        goto out;
    }
    fprintf(rep, "{\"shard\": %d, \"shards\": %d, \"list\": ", si, sn);
    cli_json_str(rep, list);
    fputs(", \"inputs\": [", rep);
    int first = 1;
    for (int k = si; k < n; k += sn) {
        char name[PATH_MAX], lab[PATH_MAX * 2], pas[PATH_MAX * 2];
        cli_batch_name(in[k], name, sizeof name);
        snprintf(lab, sizeof lab, "%s/%s.nii.gz", outdir, name);
        snprintf(pas, sizeof pas, "%s/%s.passport.json", outdir, name);
        if (cli_batch_done(lab)) {
            add_entry(rep, first, in[k], "skipped", 0, NULL);
            skipped++;
        } else {
            double secs = 0;
            sp_status st = cli_batch_run(b, model, in[k], lab, pas, &secs, NULL, NULL);
            add_entry(rep, first, in[k], st ? "failed" : "done", secs, st ? sp_last_error() : NULL);
            if (st) {   /* the library's message names the input when it is about it */
                const char *e = sp_last_error();
                fprintf(stderr, "segpipe: %s%s%s\n", strstr(e, in[k]) ? "" : in[k], strstr(e, in[k]) ? "" : ": ", e);
                rc = rc ? rc : sp_status_exit_code(st);
                failed++;
            } else {
                done++;
            }
            if (!quiet)
                printf("%s: %s (%.2f s)\n", in[k], st ? "failed" : lab, secs);
        }
        first = 0;
    }
    fprintf(rep, "\n], \"done\": %d, \"skipped\": %d, \"failed\": %d}\n", done, skipped, failed);
    if (fclose(rep) || rename(tmp, rpath))
        rc = rc ? rc : 6;
    if (!quiet)
        printf("shard %d of %d: %d done, %d already done, %d failed; report %s\n", si, sn, done, skipped, failed,
               rpath);
out:
    cli_batch_free(b);
    for (int k = 0; k < n; k++)
        free(in[k]);
    free(in);
    return rc;
}
