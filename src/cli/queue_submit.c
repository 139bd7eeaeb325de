/*
 * queue_submit.c — `segpipe submit`: one CT job per input on the stream
 * PREFIX:jobs (docs/scale-out.md). Inputs are resolved to absolute paths
 * and checked to exist and be readable here (--no-check: paths only the
 * workers see, which must then be absolute), the output folder made
 * absolute, the model given by name, and segpipe ct options after `--`
 * checked by segpipe ct's own parser and carried in the entry. With
 * --key-file each entry carries an HMAC-SHA256 of its fields. A job is
 * written in one Lua script (hash, index, entry, count): all or nothing.
 */
#include "queue.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct submit_opts {
    const char *out, *model;
    int no_check;
    unsigned char key[1025];
    size_t klen;
} submit_opts;

static int opt_key_file(const char *cmd, const char *v, void *ctx)
{
    submit_opts *o = ctx;
    (void)cmd;
    return q_key_load(v, o->key, &o->klen) ? 2 : 0;
}

/* KEYS job ids stream counts; ARGV time field value ... (field 1 is id).
 * A job already there (the reply to an earlier try was lost while Redis
 * restarted, and q_cmdv sent it again) is not queued twice. */
static const char *const lua_submit =
    "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end "
    "redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0, 'submitted', ARGV[1], unpack(ARGV, 2)) "
    "redis.call('ZADD', KEYS[2], ARGV[1], ARGV[3]) "
    "redis.call('XADD', KEYS[3], '*', unpack(ARGV, 2)) "
    "return redis.call('HINCRBY', KEYS[4], 'submitted', 1)";

static int has_dotdot(const char *p)
{
    size_t n = strlen(p);
    return strstr(p, "/../") || (n >= 3 && !strcmp(p + n - 3, "/..")) || !strncmp(p, "../", 3) || !strcmp(p, "..");
}

/* an input into out (absolute); 0 or an exit code after saying why */
static int resolve_input(const char *in, int no_check, char *out)
{
    if (no_check) {
        if (in[0] != '/' || has_dotdot(in) || strlen(in) >= PATH_MAX)
            return fprintf(stderr, "segpipe submit: %s: with --no-check, inputs must be absolute paths without "
                           "'..'\n", in), 2;
        snprintf(out, PATH_MAX, "%s", in);
        return 0;
    }
    struct stat st;
    if (!realpath(in, out) || stat(out, &st))
        return fprintf(stderr, "segpipe submit: %s: not found (--no-check for paths only the workers see)\n", in), 3;
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
        return fprintf(stderr, "segpipe submit: %s: not a regular file or a folder\n", in), 3;
    if (access(out, R_OK) || (S_ISDIR(st.st_mode) && access(out, X_OK)))
        return fprintf(stderr, "segpipe submit: %s: not readable\n", in), 3;
    return 0;
}

/* the output folder made absolute: its longest existing head resolved,
 * the rest kept (no '..' in it) */
static int resolve_output(const char *o, char *out)
{
    char head[PATH_MAX], tail[PATH_MAX] = "", t2[PATH_MAX];
    if (o[0] == '/')
        snprintf(head, sizeof head, "%s", o);
    else if (!getcwd(t2, sizeof t2) || snprintf(head, sizeof head, "%s/%s", t2, o) >= (int)sizeof head)
        return fprintf(stderr, "segpipe submit: -o: path too long\n"), 2;
    while (!realpath(head, out)) {
        char *s = strrchr(head, '/');
        if (errno != ENOENT || !s || s == head)
            return fprintf(stderr, "segpipe submit: -o %s: not accessible\n", o), 2;
        snprintf(t2, sizeof t2, "%s%s", s, tail);
        memcpy(tail, t2, sizeof tail);
        *s = 0;
    }
    if (has_dotdot(tail) || strlen(out) + strlen(tail) >= PATH_MAX)
        return fprintf(stderr, "segpipe submit: -o %s: '..' below a folder that does not exist yet\n", o), 2;
    strcat(out, tail);
    return 0;
}

/* one job; 0 or 6 (Redis) */
static int submit_one(rconn *r, const submit_opts *o, const q_job *j)
{
    char key[160], ids[96], stream[96], counts[96], t[32];
    snprintf(key, sizeof key, "%s:job:%s", r->prefix, j->id);
    snprintf(ids, sizeof ids, "%s:ids", r->prefix);
    snprintf(stream, sizeof stream, "%s:jobs", r->prefix);
    snprintf(counts, sizeof counts, "%s:counts", r->prefix);
    snprintf(t, sizeof t, "%.3f", q_now());
    const char *av[24] = {"EVAL", lua_submit, "4", key, ids, stream, counts, t, "id", j->id, "input", j->input,
                          "output", j->output};
    int n = 14;
    if (j->model[0])
        av[n++] = "model", av[n++] = j->model;
    if (j->opts[0])
        av[n++] = "opts", av[n++] = j->opts;
    if (o->klen)
        av[n++] = "sig", av[n++] = j->sig;
    return q_reply_ok(q_cmdv(r, n, av)) ? 0 : 6;
}

static void submit_help(void)
{
    printf("usage: segpipe submit --redis URL -o OUTDIR [--model NAME] [--key-file F] [--no-check] [--prefix P]\n"
           "                      INPUT... [-- CT OPTIONS]\n"
           "Puts one CT job per INPUT on the stream P:jobs (default prefix segpipe); prints \"ID INPUT\" per job.\n"
           "Inputs are resolved to absolute paths and must exist and be readable (--no-check: absolute paths only\n"
           "the workers see). --model names one of the workers' --model NAME=DIR. CT OPTIONS after '--' are\n"
           "segpipe ct's --roi-subset, --output-type, --precision, --device, --step, --tile-batch, --smooth,\n"
           "--largest-component, --min-component-ml, --keep-border, --accumulator, --no-passport, --series.\n");
}

/* everything checked before anything is queued; 0 or an exit code */
static int prepare(int n, char **inputs, int nct, char **ct, const submit_opts *o, q_job *jobs)
{
    char why[300], outdir[PATH_MAX], opts[Q_OPTS_MAX];
    int rc;
    if (!o->out || n == 0)
        return cli_usage_error("submit", "give INPUT... and -o OUTDIR");
    if (o->model && (strlen(o->model) > Q_MODEL_MAX || o->model[0] == '.' || !o->model[0] ||
                     strspn(o->model, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
                         strlen(o->model)))
        return cli_usage_error("submit", "--model takes a NAME from the workers' --model NAME=DIR list, not a "
                               "path");
    if (q_opts_join(nct, ct, opts, sizeof opts, why, sizeof why)) {
        fprintf(stderr, "segpipe submit: %s\n", why);
        return 2;
    }
    if ((rc = resolve_output(o->out, outdir)))
        return rc;
    for (int i = 0; i < n; i++) {
        q_job *j = &jobs[i];
        memset(j, 0, sizeof *j);
        if ((rc = resolve_input(inputs[i], o->no_check, j->input)))
            return rc;
        q_random_id(j->id);
        snprintf(j->output, sizeof j->output, "%s", outdir);
        snprintf(j->model, sizeof j->model, "%s", o->model ? o->model : "");
        snprintf(j->opts, sizeof j->opts, "%s", opts);
        if (o->klen)
            q_sign(o->key, o->klen, j, j->sig);
    }
    return 0;
}

int cmd_submit(int argc, char **argv)
{
    int dd = argc;   /* segpipe ct's options after "--" */
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--")) {
            dd = i;
            break;
        }
    static submit_opts o;
    memset(&o, 0, sizeof o);
    const cli_opt extra[] = {
        {.name = "output", .letter = 'o', .kind = CLI_STR, .dst = &o.out, .value = "OUTDIR"},
        {.name = "model", .letter = 'm', .kind = CLI_STR, .dst = &o.model, .value = "NAME"},
        {.name = "no-check", .kind = CLI_FLAG, .dst = &o.no_check},
        {.name = "key-file", .kind = CLI_FN, .fn = opt_key_file, .value = "FILE"},
        {.name = NULL}};
    rconn r = {0};
    cli_args a = {.all = argv + 1};   /* the inputs gathered in place (before "--") */
    int rc = q_common_opts(dd, argv, "submit", extra, &o, &a, &r);
    if (rc < 0)
        return submit_help(), 0;
    if (rc)
        return rc;
    int n = a.n;
    q_job *jobs = calloc(n > 0 ? (size_t)n : 1, sizeof *jobs);
    rc = jobs ? prepare(n, a.all, dd < argc ? argc - dd - 1 : 0, argv + dd + (dd < argc), &o, jobs) : 7;
    for (int i = 0; i < n && !rc; i++)
        if (!(rc = submit_one(&r, &o, &jobs[i])))
            printf("%s %s\n", jobs[i].id, jobs[i].input);
    free(jobs);
    redisFree(r.c);
    return rc;
}
