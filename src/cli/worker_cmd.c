/*
 * worker_cmd.c — CT jobs on Redis Streams (docs/scale-out.md), with hiredis:
 *
 *   segpipe submit --redis URL INPUT... -o OUTDIR [--model DIR]
 *   segpipe worker --redis URL [--consumer NAME] [--visibility S] [--max-attempts N]
 *   segpipe jobs   --redis URL [ID...]
 *
 * A job is an entry of the stream PREFIX:jobs (fields id, input, output,
 * model) and a hash PREFIX:job:ID (state queued/running/done/failed,
 * attempts, worker, stage, labels, passport, seconds, error). Workers read
 * the stream in one consumer group (PREFIX-workers): XREADGROUP for new
 * entries, XAUTOCLAIM for entries another worker took and did not
 * acknowledge within --visibility seconds (it died, or is stuck). Delivery
 * is at least once; results are idempotent (OUTDIR/<name>.<id>.nii.gz,
 * written under a temporary name and renamed; a job whose labels exist is
 * acknowledged without recomputing). A job that failed --max-attempts times
 * goes to PREFIX:dead with its error. Models are loaded once per worker; on
 * SIGTERM/SIGINT a worker finishes its job and leaves. Redis restarts are
 * survived by reconnecting (with AOF on, nothing is lost).
 */
#include "cli.h"

#include <hiredis/hiredis.h>

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

typedef struct rconn {
    char host[256], password[256];
    int port, db;
    redisContext *c;
    char prefix[64];
} rconn;

static volatile sig_atomic_t g_stop;
static void on_stop(int sig) { (void)sig; g_stop = 1; }

/* redis://[:password@]host[:port][/db]; the password may come from
 * SEGPIPE_REDIS_PASSWORD instead (kept out of process listings) */
static int parse_url(const char *url, rconn *r)
{
    memset(r, 0, sizeof *r);
    r->port = 6379;
    snprintf(r->prefix, sizeof r->prefix, "segpipe");
    if (!strncmp(url, "rediss://", 9)) {
        fprintf(stderr, "segpipe: rediss:// (TLS): this build's hiredis (Debian 12: 0.14) has no TLS; put a TLS "
                        "tunnel (stunnel, a sidecar) in front of Redis and use redis://localhost (docs/scale-out.md)\n");
        return -1;
    }
    if (strncmp(url, "redis://", 8))
        return fprintf(stderr, "segpipe: --redis takes redis://[:password@]host[:port][/db]\n"), -1;
    const char *p = url + 8, *at = strchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *pw = colon ? colon + 1 : p;
        snprintf(r->password, sizeof r->password, "%.*s", (int)(at - pw), pw);
        p = at + 1;
    }
    const char *env = getenv("SEGPIPE_REDIS_PASSWORD");
    if (env && *env && !r->password[0])
        snprintf(r->password, sizeof r->password, "%s", env);
    size_t hl = strcspn(p, ":/");
    snprintf(r->host, sizeof r->host, "%.*s", (int)hl, p);
    p += hl;
    if (*p == ':')
        r->port = atoi(++p), p += strspn(p, "0123456789");
    if (*p == '/')
        r->db = atoi(p + 1);
    if (!r->host[0] || r->port <= 0 || r->port > 65535)
        return fprintf(stderr, "segpipe: bad Redis URL\n"), -1;
    return 0;
}

static int connect_redis(rconn *r)
{
    if (r->c)
        redisFree(r->c);
    struct timeval tv = {5, 0};
    r->c = redisConnectWithTimeout(r->host, r->port, tv);
    if (!r->c || r->c->err)
        return -1;
    redisReply *x;
    if (r->password[0]) {
        x = redisCommand(r->c, "AUTH %s", r->password);
        int bad = !x || x->type == REDIS_REPLY_ERROR;
        freeReplyObject(x);
        if (bad)
            return fprintf(stderr, "segpipe: Redis refused the password\n"), -2;
    }
    if (r->db) {
        x = redisCommand(r->c, "SELECT %d", r->db);
        freeReplyObject(x);
    }
    return 0;
}

/* A command, reconnecting (up to ~30 s) when the connection broke, e.g.
 * while Redis restarts. NULL after that (or on SIGTERM while waiting). */
static redisReply *cmd(rconn *r, const char *fmt, ...)
{
    for (int tries = 0; tries < 60; tries++) {
        if (r->c && !r->c->err) {
            va_list ap;
            va_start(ap, fmt);
            redisReply *x = redisvCommand(r->c, fmt, ap);
            va_end(ap);
            if (x)
                return x;
        }
        if (tries && g_stop)
            return NULL;
        if (tries)
            usleep(500000);
        if (connect_redis(r) == -2)
            return NULL;
    }
    return NULL;
}

static int reply_ok(redisReply *x)
{
    int ok = x && x->type != REDIS_REPLY_ERROR;
    if (x && !ok)
        fprintf(stderr, "segpipe: Redis: %s\n", x->str);
    freeReplyObject(x);
    return ok;
}

static void random_id(char out[33])
{
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b)
        abort();
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

static double now_epoch(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* common options: --redis URL, --prefix P; returns getopt's next or 0 */
static int redis_opts(int argc, char **argv, const char *cmdname, const struct option *extra, int n_extra,
                      int (*on)(int, const char *, void *), void *user, rconn *r)
{
    struct option opts[24];
    int k = 0;
    opts[k++] = (struct option){"redis", required_argument, 0, 'r'};
    opts[k++] = (struct option){"prefix", required_argument, 0, 'P'};
    opts[k++] = (struct option){"help", no_argument, 0, 'h'};
    for (int i = 0; i < n_extra && k < 23; i++)
        opts[k++] = extra[i];
    opts[k] = (struct option){0, 0, 0, 0};
    const char *url = NULL, *prefix = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:m:qh", opts, NULL)) != -1) {
        if (c == 'r')
            url = optarg;
        else if (c == 'P')
            prefix = optarg;
        else if (c == 'h' || c == '?')
            return c == 'h' ? -1 : cli_usage_error(cmdname, "unknown option");
        else if (on(c, optarg, user))
            return 2;
    }
    if (!url)
        return cli_usage_error(cmdname, "--redis URL is required (redis://host:port)");
    if (parse_url(url, r))
        return 2;
    if (prefix) {
        if (strlen(prefix) >= sizeof r->prefix || strpbrk(prefix, " \t\n"))
            return cli_usage_error(cmdname, "--prefix: at most 63 characters, no spaces");
        snprintf(r->prefix, sizeof r->prefix, "%s", prefix);
    }
    if (connect_redis(r)) {
        fprintf(stderr, "segpipe: cannot connect to Redis at %s:%d\n", r->host, r->port);
        return 6;
    }
    return 0;
}

/* ------------------------------------------------------------------ submit */

typedef struct submit_opts {
    const char *out, *model;
} submit_opts;

static int submit_opt(int c, const char *a, void *u)
{
    submit_opts *o = u;
    if (c == 'o')
        o->out = a;
    else if (c == 'm')
        o->model = a;
    else
        return 1;
    return 0;
}

int cmd_submit(int argc, char **argv)
{
    static const struct option extra[] = {{"output", required_argument, 0, 'o'}, {"model", required_argument, 0, 'm'}};
    submit_opts o = {0};
    rconn r;
    int rc = redis_opts(argc, argv, "submit", extra, 2, submit_opt, &o, &r);
    if (rc < 0) {
        printf("usage: segpipe submit --redis URL INPUT... -o OUTDIR [--model DIR] [--prefix P]\n"
               "Puts one CT job per INPUT on the stream P:jobs (default prefix segpipe); prints the job ids.\n");
        return 0;
    }
    if (rc)
        return rc;
    if (!o.out || optind >= argc) {
        redisFree(r.c);
        return cli_usage_error("submit", "give INPUT... and -o OUTDIR");
    }
    for (int i = optind; i < argc && !rc; i++) {
        char id[33], key[160], t[32];
        random_id(id);
        snprintf(key, sizeof key, "%s:job:%s", r.prefix, id);
        snprintf(t, sizeof t, "%.3f", now_epoch());
        const char *model = o.model ? o.model : "";
        if (!reply_ok(cmd(&r, "HSET %s state queued input %s output %s model %s attempts 0 submitted %s", key,
                          argv[i], o.out, model, t)) ||
            !reply_ok(cmd(&r, "ZADD %s:ids %s %s", r.prefix, t, id)) ||
            !reply_ok(cmd(&r, "XADD %s:jobs * id %s input %s output %s model %s", r.prefix, id, argv[i], o.out,
                          model)) ||
            !reply_ok(cmd(&r, "HINCRBY %s:counts submitted 1", r.prefix)))
            rc = 6;
        else
            printf("%s %s\n", id, argv[i]);
    }
    redisFree(r.c);
    return rc;
}

/* ------------------------------------------------------------------ worker */

typedef struct worker_opts {
    char consumer[128];
    double visibility;
    int max_attempts, threads;
    const char *device;
} worker_opts;

static int worker_opt(int c, const char *a, void *u)
{
    worker_opts *o = u;
    switch (c) {
    case 'C': snprintf(o->consumer, sizeof o->consumer, "%s", a); return 0;
    case 'V': return cli_num("worker", "--visibility", a, 0.1, 86400, &o->visibility);
    case 'A': return cli_int("worker", "--max-attempts", a, 1, 1000, &o->max_attempts);
    case 't': return cli_int("worker", "--threads", a, 0, 1024, &o->threads);
    case 'd': o->device = a; return 0;
    default: return 1;
    }
}

typedef struct job {
    char entry[64], id[40], input[PATH_MAX], output[PATH_MAX], model[PATH_MAX];
} job;

/* fields of a stream entry [id, [k, v, ...]] */
static int parse_entry(const redisReply *e, job *j)
{
    memset(j, 0, sizeof *j);
    if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[0]->type != REDIS_REPLY_STRING ||
        e->element[1]->type != REDIS_REPLY_ARRAY)
        return -1;
    snprintf(j->entry, sizeof j->entry, "%s", e->element[0]->str);
    const redisReply *f = e->element[1];
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        const char *k = f->element[i]->str, *v = f->element[i + 1]->str;
        if (!k || !v)
            continue;
        if (!strcmp(k, "id"))
            snprintf(j->id, sizeof j->id, "%s", v);
        else if (!strcmp(k, "input"))
            snprintf(j->input, sizeof j->input, "%s", v);
        else if (!strcmp(k, "output"))
            snprintf(j->output, sizeof j->output, "%s", v);
        else if (!strcmp(k, "model"))
            snprintf(j->model, sizeof j->model, "%s", v);
    }
    return j->id[0] && j->input[0] && j->output[0] && strspn(j->id, "0123456789abcdef") == strlen(j->id) ? 0 : -1;
}

typedef struct progress_ctx {
    rconn *r;
    const char *key;
    double last;
} progress_ctx;

static void on_progress(const char *stage, int done, int total, void *u)
{
    progress_ctx *p = u;
    double t = sp_now();
    if (t - p->last < 1.0 && done != total)
        return;
    p->last = t;
    freeReplyObject(cmd(p->r, "HSET %s stage %s done %d total %d", p->key, stage, done, total));
}

/* one job: done (acknowledged), failed (left pending for a retry after
 * --visibility), or dead-lettered once its attempts are used up */
static void run_job(rconn *r, cli_batch *b, const worker_opts *o, const job *j)
{
    char key[160], name[PATH_MAX], lab[PATH_MAX * 2 + 64], pas[PATH_MAX * 2 + 64], t[32];
    snprintf(key, sizeof key, "%s:job:%s", r->prefix, j->id);
    redisReply *x = cmd(r, "HINCRBY %s attempts 1", key);
    long long attempt = x && x->type == REDIS_REPLY_INTEGER ? x->integer : 1;
    freeReplyObject(x);
    cli_batch_name(j->input, name, sizeof name);
    snprintf(lab, sizeof lab, "%s/%s.%s.nii.gz", j->output, name, j->id);
    snprintf(pas, sizeof pas, "%s/%s.%s.passport.json", j->output, name, j->id);
    if (attempt > o->max_attempts) {   /* it failed (or killed workers) too often: dead letter */
        x = cmd(r, "HGET %s error", key);
        const char *err = x && x->type == REDIS_REPLY_STRING ? x->str : "worker died while running it";
        freeReplyObject(cmd(r, "XADD %s:dead * id %s input %s error %s attempts %lld", r->prefix, j->id, j->input,
                            err, attempt - 1));
        freeReplyObject(x);
        freeReplyObject(cmd(r, "HSET %s state failed", key));
        freeReplyObject(cmd(r, "HINCRBY %s:counts failed 1", r->prefix));
        freeReplyObject(cmd(r, "XACK %s:jobs %s-workers %s", r->prefix, r->prefix, j->entry));
        return;
    }
    snprintf(t, sizeof t, "%.3f", now_epoch());
    freeReplyObject(cmd(r, "HSET %s state running worker %s started %s", key, o->consumer, t));
    double secs = 0;
    sp_status st = SP_OK;
    if (!cli_batch_done(lab)) {   /* idempotent: an earlier delivery may have finished it */
        progress_ctx pc = {r, key, 0};
        if (cli_mkdir_p(j->output))
            st = SP_ERR_IO;
        else
            st = cli_batch_run(b, j->model[0] ? j->model : NULL, j->input, lab, pas, &secs, on_progress, &pc);
    }
    snprintf(t, sizeof t, "%.3f", now_epoch());
    if (st) {   /* stays pending: retried after --visibility, dead-lettered after --max-attempts */
        const char *err = st == SP_ERR_IO && !sp_last_error()[0] ? "cannot make the output folder" : sp_last_error();
        freeReplyObject(cmd(r, "HSET %s state queued error %s finished %s", key, err, t));
        fprintf(stderr, "segpipe worker: job %s failed (attempt %lld): %s\n", j->id, attempt, err);
        return;
    }
    freeReplyObject(cmd(r, "HSET %s state done labels %s passport %s seconds %.3f finished %s", key, lab, pas, secs,
                        t));
    freeReplyObject(cmd(r, "HINCRBY %s:counts done 1", r->prefix));
    freeReplyObject(cmd(r, "XACK %s:jobs %s-workers %s", r->prefix, r->prefix, j->entry));
}

/* next job: a stale pending one (XAUTOCLAIM), else a new one (XREADGROUP, 1 s) */
static int next_job(rconn *r, const worker_opts *o, job *j)
{
    redisReply *x = cmd(r, "XAUTOCLAIM %s:jobs %s-workers %s %lld 0-0 COUNT 1", r->prefix, r->prefix, o->consumer,
                        (long long)(o->visibility * 1000));
    int got = 0;
    if (x && x->type == REDIS_REPLY_ARRAY && x->elements >= 2 && x->element[1]->type == REDIS_REPLY_ARRAY &&
        x->element[1]->elements > 0)
        got = parse_entry(x->element[1]->element[0], j) == 0 ? 1 : -1;
    const redisReply *bad = got < 0 ? x->element[1]->element[0] : NULL;
    if (bad && bad->type == REDIS_REPLY_ARRAY && bad->elements > 0 && bad->element[0]->type == REDIS_REPLY_STRING)
        freeReplyObject(cmd(r, "XACK %s:jobs %s-workers %s", r->prefix, r->prefix, bad->element[0]->str));   /* malformed */
    freeReplyObject(x);
    if (got)
        return got;
    x = cmd(r, "XREADGROUP GROUP %s-workers %s COUNT 1 BLOCK 1000 STREAMS %s:jobs >", r->prefix, o->consumer,
            r->prefix);
    if (x && x->type == REDIS_REPLY_ARRAY && x->elements == 1 && x->element[0]->elements == 2 &&
        x->element[0]->element[1]->elements > 0) {
        const redisReply *e = x->element[0]->element[1]->element[0];
        got = parse_entry(e, j) == 0 ? 1 : -1;
        if (got < 0 && e->type == REDIS_REPLY_ARRAY && e->elements > 0 && e->element[0]->type == REDIS_REPLY_STRING)
            freeReplyObject(cmd(r, "XACK %s:jobs %s-workers %s", r->prefix, r->prefix, e->element[0]->str));
    } else if (x && x->type == REDIS_REPLY_ERROR && strstr(x->str, "NOGROUP")) {
        got = -2;
    }
    freeReplyObject(x);
    return got;
}

int cmd_worker(int argc, char **argv)
{
    static const struct option extra[] = {
        {"consumer", required_argument, 0, 'C'}, {"visibility", required_argument, 0, 'V'},
        {"max-attempts", required_argument, 0, 'A'}, {"threads", required_argument, 0, 't'},
        {"device", required_argument, 0, 'd'}};
    worker_opts o = {"", 300, 3, 0, NULL};
    rconn r;
    int rc = redis_opts(argc, argv, "worker", extra, 5, worker_opt, &o, &r);
    if (rc < 0) {
        printf("usage: segpipe worker --redis URL [--consumer NAME] [--visibility S (300)] [--max-attempts N (3)]\n"
               "                      [--threads N] [--device cpu|cuda] [--prefix P]\n"
               "Runs CT jobs of the stream P:jobs in the consumer group P-workers (docs/scale-out.md).\n");
        return 0;
    }
    if (rc)
        return rc;
    if (optind != argc)
        return cli_usage_error("worker", "no arguments besides the options");
    if (!o.consumer[0]) {
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        snprintf(o.consumer, sizeof o.consumer, "%s-%d", host, (int)getpid());
    }
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);
    cli_batch *b = cli_batch_new(o.threads, o.device);
    if (!b) {
        redisFree(r.c);
        return cli_fail(SP_ERR_RUNTIME, "worker");
    }
    redisReply *x = cmd(&r, "XGROUP CREATE %s:jobs %s-workers 0 MKSTREAM", r.prefix, r.prefix);
    freeReplyObject(x);   /* BUSYGROUP when it exists: fine */
    printf("segpipe worker %s: ready (stream %s:jobs, visibility %.0f s, %d attempts)\n", o.consumer, r.prefix,
           o.visibility, o.max_attempts);
    fflush(stdout);
    while (!g_stop) {
        job j;
        int got = next_job(&r, &o, &j);
        if (got == -2)   /* the group vanished (Redis restarted without persistence): make it again */
            freeReplyObject(cmd(&r, "XGROUP CREATE %s:jobs %s-workers 0 MKSTREAM", r.prefix, r.prefix));
        if (got == 1)
            run_job(&r, b, &o, &j);
        if (!r.c || r.c->err)
            usleep(200000);
    }
    printf("segpipe worker %s: stopped\n", o.consumer);
    cli_batch_free(b);
    redisFree(r.c);
    return 0;
}

/* ------------------------------------------------------------------- jobs */

static int no_opt(int c, const char *a, void *u) { (void)c, (void)a, (void)u; return 1; }

static long long hget_int(rconn *r, const char *key, const char *field)
{
    redisReply *x = cmd(r, "HGET %s %s", key, field);
    long long v = x && x->type == REDIS_REPLY_STRING ? atoll(x->str) : 0;
    freeReplyObject(x);
    return v;
}

int cmd_jobs(int argc, char **argv)
{
    rconn r;
    int rc = redis_opts(argc, argv, "jobs", NULL, 0, no_opt, NULL, &r);
    if (rc < 0) {
        printf("usage: segpipe jobs --redis URL [ID...] [--prefix P]\n"
               "Counts of submitted, queued, running, done and failed jobs; with IDs, each job's state.\n");
        return 0;
    }
    if (rc)
        return rc;
    char counts[96];
    snprintf(counts, sizeof counts, "%s:counts", r.prefix);
    long long sub = hget_int(&r, counts, "submitted"), done = hget_int(&r, counts, "done"),
              failed = hget_int(&r, counts, "failed");
    redisReply *x = cmd(&r, "XPENDING %s:jobs %s-workers", r.prefix, r.prefix);
    long long pending = x && x->type == REDIS_REPLY_ARRAY && x->elements > 0 && x->element[0]->type == REDIS_REPLY_INTEGER
                            ? x->element[0]->integer : 0;
    freeReplyObject(x);
    x = cmd(&r, "XLEN %s:dead", r.prefix);
    long long dead = x && x->type == REDIS_REPLY_INTEGER ? x->integer : 0;
    freeReplyObject(x);
    long long queued = sub - done - failed - pending;
    printf("{\"submitted\": %lld, \"queued\": %lld, \"running\": %lld, \"done\": %lld, \"failed\": %lld, "
           "\"dead_letter\": %lld", sub, queued < 0 ? 0 : queued, pending, done, failed, dead);
    if (optind < argc)
        printf(", \"jobs\": {");
    for (int i = optind; i < argc; i++) {
        x = cmd(&r, "HGETALL %s:job:%s", r.prefix, argv[i]);
        printf("%s\n  \"%s\": {", i > optind ? "," : "", argv[i]);
        for (size_t k = 0; x && x->type == REDIS_REPLY_ARRAY && k + 1 < x->elements; k += 2) {
            printf("%s", k ? ", " : "");
            cli_json_str(stdout, x->element[k]->str);
            printf(": ");
            cli_json_str(stdout, x->element[k + 1]->str);
        }
        printf("}");
        freeReplyObject(x);
    }
    printf("%s}\n", optind < argc ? "}" : "");
    redisFree(r.c);
    return 0;
}
