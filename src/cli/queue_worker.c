/*
 * queue_worker.c — `segpipe worker`: runs CT jobs of a Redis stream in a
 * consumer group (docs/scale-out.md).
 *
 * Each entry passes the trust boundary first (queue_admit.c; with
 * --key-file also its HMAC): refused entries go to PREFIX:dead at once with
 * a reason, are logged and counted. An admitted job counts one attempt in
 * its hash, then runs with a cancel flag a watchdog thread raises at
 * --job-timeout or --stop-timeout after SIGTERM. Endings:
 *   done        outputs renamed into place, hash done, entry acknowledged;
 *   dead        an input error (bad file: sp_status INPUT/USAGE/IO), or
 *               --max-attempts used up: PREFIX:dead with class and error;
 *   retry       a transient error (memory, runtime, model, time limit):
 *               parked in the sorted set PREFIX:delayed until now + backoff
 *               (doubling), then put back on the stream by any worker;
 *   handed back SIGTERM while running: back on the stream at once, the
 *               attempt not counted.
 * A worker killed mid-job leaves its entry pending: another worker claims
 * it after --visibility (XAUTOCLAIM) and that counts as an attempt. Each
 * ending is one Lua script (atomic, and idempotent for the counts), so a
 * Redis restart between two commands never counts a job twice.
 */
#include "queue_worker.h"

#include <cjson/cJSON.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void on_stop(int sig) { (void)sig; q_stop = 1; }

/* ------------------------------------------------------------ scripts */

/* KEYS job counts stream; ARGV group entry ttl field value ... */
static const char *const lua_done =
    "if redis.call('HGET', KEYS[1], 'state') ~= 'done' then redis.call('HINCRBY', KEYS[2], 'done', 1) end "
    "redis.call('HSET', KEYS[1], unpack(ARGV, 4)) "
    "if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end "
    "redis.call('XACK', KEYS[3], ARGV[1], ARGV[2]) return 1";

/* KEYS job counts stream dead; ARGV group entry ttl touch nd dead-fields... hash-fields...
 * touch=1: the entry may update its job's hash (when one exists) */
static const char *const lua_dead =
    "local nd = tonumber(ARGV[5]) "
    "local job = ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 1 "
    "local first = not job or redis.call('HGET', KEYS[1], 'state') ~= 'failed' "
    "if first then redis.call('XADD', KEYS[4], '*', unpack(ARGV, 6, 5 + nd)) "
    "  redis.call('HINCRBY', KEYS[2], job and 'failed' or 'rejected', 1) end "
    "if job then redis.call('HSET', KEYS[1], unpack(ARGV, 6 + nd)) "
    "  if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end end "
    "redis.call('XACK', KEYS[3], ARGV[1], ARGV[2]) return 1";

/* KEYS job stream delayed; ARGV group entry due member undo field value ...
 * (sent again after a lost reply: the same member, the attempt undone once) */
static const char *const lua_retry =
    "redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4]) "
    "if ARGV[5] == '1' and redis.call('HGET', KEYS[1], 'state') == 'running' then "
    "  redis.call('HINCRBY', KEYS[1], 'attempts', -1) end "
    "redis.call('HSET', KEYS[1], unpack(ARGV, 6)) "
    "redis.call('XACK', KEYS[2], ARGV[1], ARGV[2]) return 1";

/* KEYS delayed stream; ARGV now: due retries back on the stream */
static const char *const lua_promote =
    "local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 16) "
    "for _, m in ipairs(due) do "
    "  if redis.call('ZREM', KEYS[1], m) == 1 then redis.call('XADD', KEYS[2], '*', unpack(cjson.decode(m))) end "
    "end return #due";

/* -------------------------------------------------------------- state */

typedef struct worker {
    q_worker_cfg *o;
    rconn r;
    cli_batch *b;
    q_metrics m;
    char kjob[160], kcounts[96], kstream[96], kgroup[96], kdead[96], kdelayed[96];
    /* watchdog */
    pthread_t wd;
    volatile int cancel;   /* the run's cancel flag (sp_ct_params.cancel) */
    atomic_int running, timed_out, stopping, quit;
    _Atomic double started;
    char entry[64];   /* the running job's entry (set before running) */
    rconn hb;         /* the watchdog's own connection, for heartbeats */
} worker;

static void set_keys(worker *w, const char *id)
{
    const char *p = w->r.prefix;
    snprintf(w->kjob, sizeof w->kjob, "%s:job:%s", p, id ? id : "-");
    snprintf(w->kcounts, sizeof w->kcounts, "%s:counts", p);
    snprintf(w->kstream, sizeof w->kstream, "%s:jobs", p);
    snprintf(w->kgroup, sizeof w->kgroup, "%s-workers", p);
    snprintf(w->kdead, sizeof w->kdead, "%s:dead", p);
    snprintf(w->kdelayed, sizeof w->kdelayed, "%s:delayed", p);
}

/* While a job runs, its entry's idle time is reset every third of
 * --visibility (XCLAIM to itself), so XAUTOCLAIM takes over only jobs of
 * workers that died or hang, however long a stage takes. */
static void heartbeat(worker *w, double *last)
{
    double t = sp_now(), every = w->o->visibility / 3;
    if (t - *last < (every < 0.5 ? every : every > 10 ? 10 : every))
        return;
    *last = t;
    freeReplyObject(q_cmd_once(&w->hb, "XCLAIM %s:jobs %s-workers %s 0 %s JUSTID", w->hb.prefix, w->hb.prefix,
                               w->o->consumer, w->entry));
}

/* The watchdog: heartbeats, and the cancel flag raised at --job-timeout, or
 * --stop-timeout after SIGTERM; a run that does not stop 30 s after that
 * ends the process (exit 75) so that the job goes to another worker after
 * --visibility. */
static void *watchdog(void *u)
{
    worker *w = u;
    double stop_at = 0, cancel_at = 0, beat = 0;
    while (!atomic_load(&w->quit)) {
        usleep(100000);
        double t = sp_now();
        if (q_stop && !stop_at)
            stop_at = t;
        if (!atomic_load(&w->running)) {
            cancel_at = 0;
            continue;
        }
        if (!cancel_at)
            heartbeat(w, &beat);
        if (!w->cancel && w->o->job_timeout > 0 && t - atomic_load(&w->started) > w->o->job_timeout)
            atomic_store(&w->timed_out, 1), w->cancel = 1;
        if (!w->cancel && stop_at && t - stop_at > w->o->stop_timeout)
            atomic_store(&w->stopping, 1), w->cancel = 1;
        if (w->cancel && !cancel_at)
            cancel_at = t;
        if (cancel_at && t - cancel_at > 30) {
            fprintf(stderr, "segpipe worker %s: a cancelled job did not stop within 30 s; exiting (75), it goes "
                    "to another worker after --visibility\n", w->o->consumer);
            _exit(75);
        }
    }
    return NULL;
}

/* ------------------------------------------------------------ endings */

static void ts(char out[32]) { snprintf(out, 32, "%.3f", q_now()); }

static int eval(worker *w, int argc, const char **argv)
{
    return q_reply_ok(q_cmdv(&w->r, argc, argv));
}

/* to PREFIX:dead with a class and reason; touch: the job's hash (when
 * one exists) says failed too. Logged and counted. */
static void dead(worker *w, const q_job *j, int touch, const char *cls, const char *why, long long attempts)
{
    char ttl[32], att[32], t[32], nd[8];
    snprintf(ttl, sizeof ttl, "%.0f", w->o->ttl);
    snprintf(att, sizeof att, "%lld", attempts);
    ts(t);
    const char *id = j->id[0] && strlen(j->id) == 32 ? j->id : "-";
    set_keys(w, id);
    const char *av[48] = {"EVAL", lua_dead, "4", w->kjob, w->kcounts, w->kstream, w->kdead, w->kgroup, j->entry,
                          ttl, touch ? "1" : "0", nd};
    int n = 12, n0 = n;
    const char *df[] = {"id", id, "class", cls, "error", why, "attempts", att, "worker", w->o->consumer,
                        "entry", j->entry, "at", t};
    for (size_t i = 0; i < sizeof df / sizeof *df; i++)
        av[n++] = df[i];
    if (touch)
        av[n++] = "input", av[n++] = j->input;
    snprintf(nd, sizeof nd, "%d", n - n0);
    const char *hf[] = {"state", "failed", "class", cls, "error", why, "finished", t};
    for (size_t i = 0; i < sizeof hf / sizeof *hf; i++)
        av[n++] = hf[i];
    eval(w, n, av);
    if (!strcmp(cls, "rejected"))
        w->m.rejected++;
    else
        w->m.failed++;
    fprintf(stderr, "segpipe worker %s: job %s dead (%s, %lld attempts): %s\n", w->o->consumer, id, cls, attempts,
            why);
}

/* parked in PREFIX:delayed until due, then back on the stream; undo: the
 * attempt does not count (handed back on SIGTERM) */
static void retry(worker *w, const q_job *j, double delay, int undo, const char *cls, const char *why)
{
    cJSON *a = cJSON_CreateArray();
    const char *f[] = {"id", j->id, "input", j->input, "output", j->output, "model", j->model, "opts", j->opts,
                       "sig", j->sig};
    for (int i = 0; i < 12; i += 2)
        if (f[i + 1][0] || i < 6)
            cJSON_AddItemToArray(a, cJSON_CreateString(f[i])), cJSON_AddItemToArray(a, cJSON_CreateString(f[i + 1]));
    char *member = cJSON_PrintUnformatted(a);
    cJSON_Delete(a);
    char due[32], at[32];
    snprintf(due, sizeof due, "%.3f", q_now() + delay);
    snprintf(at, sizeof at, "%.3f", q_now() + delay);
    set_keys(w, j->id);
    const char *av[] = {"EVAL", lua_retry, "3", w->kjob, w->kstream, w->kdelayed, w->kgroup, j->entry, due,
                        member ? member : "[]", undo ? "1" : "0", "state", undo ? "queued" : "retrying", "class", cls,
                        "error", why, "retry_at", at};
    eval(w, (int)(sizeof av / sizeof *av), av);
    free(member);
    if (undo)
        w->m.handed_back++;
    else
        w->m.retried++;
    fprintf(stderr, "segpipe worker %s: job %s %s in %.0f s (%s): %s\n", w->o->consumer, j->id,
            undo ? "handed back" : "retried", delay, cls, why);
}

/* seconds per stage as a JSON object */
static void timings_json(const sp_timings *tt, char *out, size_t cap)
{
    size_t n = (size_t)snprintf(out, cap, "{");
    for (int i = 0; tt && i < tt->n && n < cap; i++)
        n += (size_t)snprintf(out + n, cap - n, "%s\"%s\": %.3f", i ? ", " : "", tt->stage[i].name,
                              tt->stage[i].seconds);
    if (n < cap)
        snprintf(out + n, cap - n, "}");
}

static void done(worker *w, const q_job *j, const q_plan *pl, double secs, const sp_timings *tt)
{
    char ttl[32], s[32], t[32], tj[1024];
    int skipped = tt == NULL;
    timings_json(tt, tj, sizeof tj);
    snprintf(ttl, sizeof ttl, "%.0f", w->o->ttl);
    snprintf(s, sizeof s, "%.3f", secs);
    ts(t);
    set_keys(w, j->id);
    const char *av[] = {"EVAL", lua_done, "3", w->kjob, w->kcounts, w->kstream, w->kgroup, j->entry, ttl,
                        "state", "done", "labels", pl->labels, "passport", pl->ct.cp.passport ? pl->passport : "",
                        "seconds", s, "finished", t, "skipped", skipped ? "1" : "0", "timings", tj};
    eval(w, (int)(sizeof av / sizeof *av), av);
    if (skipped)
        w->m.skipped++;
    else
        w->m.done++;
}

/* ---------------------------------------------------------------- run */

typedef struct progress_ctx {
    worker *w;
    double last;
} progress_ctx;

static void on_progress(const char *stage, int d, int total, void *u)
{
    progress_ctx *p = u;
    double t = sp_now();
    if (t - p->last < 1.0 && d != total)
        return;
    p->last = t;
    freeReplyObject(q_cmd(&p->w->r, "HSET %s stage %s done %d total %d", p->w->kjob, stage, d, total));
}

/* 1 when an earlier delivery finished the job (labels, and the passport
 * when one is made) */
static int already_done(const q_plan *pl)
{
    return cli_batch_done(pl->labels) && (!pl->ct.cp.passport || cli_batch_done(pl->passport));
}

static void end_failed(worker *w, const q_job *j, sp_status st, long long attempt)
{
    char why[600];
    if (st == SP_ERR_CANCELLED && atomic_load(&w->stopping)) {
        retry(w, j, 0, 1, "stopped", "the worker was stopped (SIGTERM) while running it");
        return;
    }
    int timeout = st == SP_ERR_CANCELLED && atomic_load(&w->timed_out);
    if (timeout)
        snprintf(why, sizeof why, "ran past --job-timeout %.0f s", w->o->job_timeout);
    else
        snprintf(why, sizeof why, "%.500s", sp_last_error()[0] ? sp_last_error() : "failed");
    const char *cls = timeout ? "timeout" : st == SP_ERR_INPUT || st == SP_ERR_USAGE || st == SP_ERR_IO ? "input"
                                                                                                          : "transient";
    if (!strcmp(cls, "input") || attempt >= w->o->max_attempts) {
        dead(w, j, 1, cls, why, attempt);
        return;
    }
    double delay = w->o->backoff;
    for (long long i = 1; i < attempt && delay < 3600; i++)
        delay *= 2;
    retry(w, j, delay < 3600 ? delay : 3600, 0, cls, why);
}

static void run_admitted(worker *w, const q_job *j, q_plan *pl)
{
    long long attempts = q_reply_int(q_cmd(&w->r, "HGET %s attempts", w->kjob), 0);
    if (attempts >= w->o->max_attempts) {   /* the last delivery's worker died on it */
        char why[160];
        snprintf(why, sizeof why, "attempt %lld of %d did not finish: the worker died, was killed or stuck",
                 attempts, w->o->max_attempts);
        dead(w, j, 1, "transient", why, attempts);
        return;
    }
    long long attempt = q_reply_int(q_cmd(&w->r, "HINCRBY %s attempts 1", w->kjob), attempts + 1);
    char t[32];
    ts(t);
    freeReplyObject(q_cmd(&w->r, "HSET %s state running worker %s started %s", w->kjob, w->o->consumer, t));
    if (already_done(pl)) {   /* idempotent: an earlier delivery finished it before its acknowledgement */
        done(w, j, pl, 0, NULL);
        return;
    }
    sp_timings tt = {0};
    progress_ctx pc = {w, 0};
    cli_batch_job jo = {.cp = &pl->ct.cp, .precision = pl->ct.rp.precision, .series = pl->ct.series,
                        .dicom_out = pl->ct.dicom_out, .cancel = &w->cancel, .timings = &tt};
    w->cancel = 0;
    snprintf(w->entry, sizeof w->entry, "%s", j->entry);
    atomic_store(&w->timed_out, 0);
    atomic_store(&w->started, sp_now());
    atomic_store(&w->running, 1);
    w->m.busy = 1;
    double secs = 0;
    sp_status st = cli_batch_run_job(w->b, pl->model, &jo, pl->input, pl->labels,
                                     pl->ct.cp.passport ? pl->passport : NULL, &secs, on_progress, &pc);
    atomic_store(&w->running, 0);
    w->m.busy = 0;
    q_metrics_add_timings(&w->m, &tt);
    if (st)
        end_failed(w, j, st, attempt);
    else
        done(w, j, pl, secs, &tt);
}

/* one entry: refused, or admitted and run */
static void handle(worker *w, q_job *j, int parsed, const char *why0)
{
    char why[600];
    set_keys(w, j->id);
    if (!parsed) {
        dead(w, j, 0, "rejected", why0, 0);
        return;
    }
    if (w->o->klen && !q_sig_ok(w->o->key, w->o->klen, j)) {
        dead(w, j, 0, "rejected", j->sig[0] ? "bad signature (not made with the workers' --key-file)"
                                            : "unsigned entry (the workers have a --key-file)", 0);
        return;
    }
    q_plan *pl = calloc(1, sizeof *pl);
    if (!pl)
        return;   /* stays pending: another try after --visibility */
    int rc = q_admit(w->o, w->b, j, pl, why, sizeof why);
    if (rc != Q_OK) {
        long long attempts = q_reply_int(q_cmd(&w->r, "HGET %s attempts", w->kjob), 0);
        dead(w, j, 1, rc == Q_REJECT ? "rejected" : "input", why, attempts);
    } else {
        run_admitted(w, j, pl);
    }
    free(pl);
}

/* ------------------------------------------------------------- intake */

/* the first entry of a list of entries: 1 parsed, 0 refused (why), -1 none */
static int take(const redisReply *list, q_job *j, char *why, size_t cap)
{
    if (!list || list->type != REDIS_REPLY_ARRAY || list->elements == 0)
        return -1;
    const redisReply *e = list->element[0];
    if (q_entry_parse(e, j, why, cap) == 0)
        return 1;
    if (!j->entry[0]) {   /* not even an entry id: nothing to acknowledge */
        if (e->type == REDIS_REPLY_ARRAY && e->elements > 0 && e->element[0]->type == REDIS_REPLY_STRING)
            snprintf(j->entry, sizeof j->entry, "%.63s", e->element[0]->str);
        else
            return -1;
    }
    return 0;
}

/* next entry: a stale pending one (XAUTOCLAIM), else a new one
 * (XREADGROUP, 1 s). 1 parsed, 0 refused, -1 none, -2 no group. */
static int next_entry(worker *w, q_job *j, char *why, size_t cap)
{
    rconn *r = &w->r;
    redisReply *x = q_cmd(r, "XAUTOCLAIM %s:jobs %s-workers %s %lld 0-0 COUNT 1", r->prefix, r->prefix,
                          w->o->consumer, (long long)(w->o->visibility * 1000));
    int got = x && x->type == REDIS_REPLY_ARRAY && x->elements >= 2 ? take(x->element[1], j, why, cap) : -1;
    freeReplyObject(x);
    if (got >= 0)
        return got;
    x = q_cmd(r, "XREADGROUP GROUP %s-workers %s COUNT 1 BLOCK 1000 STREAMS %s:jobs >", r->prefix, w->o->consumer,
              r->prefix);
    if (x && x->type == REDIS_REPLY_ARRAY && x->elements == 1 && x->element[0]->type == REDIS_REPLY_ARRAY &&
        x->element[0]->elements == 2)
        got = take(x->element[0]->element[1], j, why, cap);
    else if (x && x->type == REDIS_REPLY_ERROR && strstr(x->str, "NOGROUP"))
        got = -2;
    freeReplyObject(x);
    return got;
}

static void promote(worker *w)
{
    char now[32];
    ts(now);
    const char *av[] = {"EVAL", lua_promote, "2", w->kdelayed, w->kstream, now};
    freeReplyObject(q_cmdv(&w->r, 6, av));
}

static void loop(worker *w)
{
    double last_metrics = 0, last_promote = 0;
    while (!q_stop) {
        set_keys(w, NULL);
        double t = sp_now();
        if (t - last_promote >= 1)
            promote(w), last_promote = t;
        if (w->o->metrics && t - last_metrics >= 10)
            q_metrics_write(w->o->metrics, &w->m, &w->r, w->o->consumer), last_metrics = t;
        q_job j;
        char why[300];
        int got = next_entry(w, &j, why, sizeof why);
        if (got == -2)   /* the group vanished (Redis restarted without persistence): make it again */
            freeReplyObject(q_cmd(&w->r, "XGROUP CREATE %s:jobs %s-workers 0 MKSTREAM", w->r.prefix, w->r.prefix));
        if (got >= 0) {
            handle(w, &j, got, why);
            if (w->o->metrics)
                q_metrics_write(w->o->metrics, &w->m, &w->r, w->o->consumer), last_metrics = sp_now();
        }
        if (!w->r.c || w->r.c->err)
            usleep(200000);
    }
}

/* ------------------------------------------------------------ options */

static int add_root(char roots[][PATH_MAX], int *n, const char *dir)
{
    if (*n == Q_MAX_ROOTS)
        return cli_usage_error("worker", "at most 8 --input-root / --output-root each"), 1;
    if (!realpath(dir, roots[*n]))
        return fprintf(stderr, "segpipe worker: root folder %s does not exist\n", dir), 1;
    (*n)++;
    return 0;
}

static int add_model(q_worker_cfg *o, const char *a)
{
    const char *eq = strchr(a, '=');
    if (!eq || eq == a || eq - a > Q_MODEL_MAX || o->n_models == Q_MAX_MODELS)
        return cli_usage_error("worker", "--model takes NAME=DIR (at most 16; NAME of letters, digits, . _ -)"), 1;
    snprintf(o->models[o->n_models].name, sizeof o->models[0].name, "%.*s", (int)(eq - a), a);
    const char *nm = o->models[o->n_models].name;
    if (strspn(nm, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != strlen(nm) || nm[0] == '.')
        return cli_usage_error("worker", "--model NAME: letters, digits, '.', '_', '-'"), 1;
    if (!realpath(eq + 1, o->models[o->n_models].dir))
        return fprintf(stderr, "segpipe worker: --model %s: folder not found\n", nm), 1;
    o->n_models++;
    return 0;
}

static int opt_consumer(const char *cmd, const char *a, void *ctx)
{
    q_worker_cfg *o = ctx;
    if (!*a || strlen(a) >= sizeof o->consumer || strspn(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                           "0123456789._-@") != strlen(a))
        return cli_usage_error(cmd, "--consumer: letters, digits, . _ - @ (at most 127)");
    snprintf(o->consumer, sizeof o->consumer, "%s", a);
    return 0;
}

static int opt_device(const char *cmd, const char *a, void *ctx)
{
    char kind[16];
    int idx;
    if (strlen(a) >= 16 || sp_device_parse(a, kind, sizeof kind, &idx))
        return cli_usage_error(cmd, "--device is cpu, cuda, cuda:N, gpu or gpu:N");
    ((q_worker_cfg *)ctx)->device = a;
    return 0;
}

static int opt_input_root(const char *cmd, const char *a, void *ctx)
{
    q_worker_cfg *o = ctx;
    (void)cmd;
    return add_root(o->in_roots, &o->n_in, a) ? 2 : 0;
}

static int opt_output_root(const char *cmd, const char *a, void *ctx)
{
    q_worker_cfg *o = ctx;
    (void)cmd;
    return add_root(o->out_roots, &o->n_out, a) ? 2 : 0;
}

static int opt_model(const char *cmd, const char *a, void *ctx)
{
    (void)cmd;
    return add_model(ctx, a) ? 2 : 0;
}

static int opt_key_file(const char *cmd, const char *a, void *ctx)
{
    q_worker_cfg *o = ctx;
    (void)cmd;
    return q_key_load(a, o->key, &o->klen) ? 2 : 0;
}

static void worker_help(void)
{
    printf("usage: segpipe worker --redis URL --input-root DIR --output-root DIR [options]\n"
           "Runs CT jobs of the stream P:jobs in the consumer group P-workers (docs/scale-out.md).\n"
           "      --input-root DIR     jobs may read only below DIR (symlinks resolved; repeatable, 8 at most)\n"
           "      --output-root DIR    jobs may write only below DIR (repeatable)\n"
           "  -m, --model NAME=DIR     a model jobs may name (repeatable; the first is the default;\n"
           "                           none: 'default' = the bundled model)\n"
           "      --key-file F         accept only entries signed with this key (segpipe submit --key-file)\n"
           "      --consumer NAME      this worker's name in the group (default host-pid)\n"
           "      --visibility S       a pending job of a silent worker is taken over after S s (300)\n"
           "      --max-attempts N     runs of a job before it goes to the dead letter (3)\n"
           "      --backoff S          first retry delay after a transient error, doubling (10)\n"
           "      --job-timeout S      a job is cancelled after S s (3600; 0: no limit)\n"
           "      --stop-timeout S     on SIGTERM, a running job is handed back after S s (30)\n"
           "      --ttl S              finished job records expire after S s (604800; 0: kept)\n"
           "      --metrics-file F     Prometheus textfile, rewritten every 10 s and after each job\n"
           "      --threads N / --device cpu|cuda|cuda:N|gpu:N / --prefix P\n");
}

/* the defaults and the checks after parsing; 0 or an exit code */
static int worker_setup(q_worker_cfg *o)
{
    if (!o->n_in || !o->n_out)
        return cli_usage_error("worker", "give --input-root DIR and --output-root DIR (the folders jobs may read "
                               "and write; '/' trusts every client of the queue)");
    if (!o->n_models) {
        snprintf(o->models[0].name, sizeof o->models[0].name, "default");
        snprintf(o->models[0].dir, sizeof o->models[0].dir, "%s", sp_default_model_dir());
        o->n_models = 1;
    }
    if (!o->consumer[0]) {
        char host[64] = "host";
        gethostname(host, sizeof host - 1);
        host[strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")] = 0;
        snprintf(o->consumer, sizeof o->consumer, "%s-%d", host, (int)getpid());
    }
    return 0;
}

int cmd_worker(int argc, char **argv)
{
    static q_worker_cfg o;
    const cli_opt extra[] = {
        {.name = "consumer", .kind = CLI_FN, .fn = opt_consumer, .value = "NAME"},
        {.name = "visibility", .kind = CLI_NUM, .dst = &o.visibility, .lo = 0.1, .hi = 86400, .value = "S"},
        {.name = "max-attempts", .kind = CLI_INT, .dst = &o.max_attempts, .lo = 1, .hi = 1000, .value = "N"},
        {.name = "threads", .kind = CLI_INT, .dst = &o.threads, .lo = 0, .hi = 1024, .value = "N"},
        {.name = "device", .kind = CLI_FN, .fn = opt_device, .value = "cpu, cuda, cuda:N, gpu or gpu:N"},
        {.name = "input-root", .kind = CLI_FN, .fn = opt_input_root, .value = "DIR"},
        {.name = "output-root", .kind = CLI_FN, .fn = opt_output_root, .value = "DIR"},
        {.name = "model", .letter = 'm', .kind = CLI_FN, .fn = opt_model, .value = "NAME=DIR"},
        {.name = "key-file", .kind = CLI_FN, .fn = opt_key_file, .value = "FILE"},
        {.name = "job-timeout", .kind = CLI_NUM, .dst = &o.job_timeout, .lo = 0, .hi = 7 * 86400, .value = "S"},
        {.name = "stop-timeout", .kind = CLI_NUM, .dst = &o.stop_timeout, .lo = 0, .hi = 86400, .value = "S"},
        {.name = "backoff", .kind = CLI_NUM, .dst = &o.backoff, .lo = 0, .hi = 3600, .value = "S"},
        {.name = "ttl", .kind = CLI_NUM, .dst = &o.ttl, .lo = 0, .hi = 365 * 86400.0, .value = "S"},
        {.name = "metrics-file", .kind = CLI_STR, .dst = &o.metrics, .value = "FILE"},
        {.name = NULL}};
    memset(&o, 0, sizeof o);
    o.visibility = 300, o.max_attempts = 3, o.job_timeout = 3600, o.stop_timeout = 30, o.backoff = 10;
    o.ttl = 7 * 86400;
    worker w = {.o = &o};
    cli_args a = {0};
    int rc = q_common_opts(argc, argv, "worker", extra, &o, &a, &w.r);
    if (rc < 0)
        return worker_help(), 0;
    if (!rc && a.n)
        rc = cli_usage_error("worker", "no arguments besides the options");
    if (!rc)
        rc = worker_setup(&o);
    if (rc) {
        redisFree(w.r.c);
        return rc;
    }
    signal(SIGTERM, on_stop);
    signal(SIGINT, on_stop);
    if (!(w.b = cli_batch_new(o.threads, o.device))) {
        redisFree(w.r.c);
        return cli_fail(SP_ERR_RUNTIME, "worker");
    }
    freeReplyObject(q_cmd(&w.r, "XGROUP CREATE %s:jobs %s-workers 0 MKSTREAM", w.r.prefix, w.r.prefix));
    w.hb = w.r;
    w.hb.c = NULL;   /* connected on the first heartbeat */
    pthread_create(&w.wd, NULL, watchdog, &w);
    printf("segpipe worker %s: ready (stream %s:jobs, %d input and %d output roots, %d models, %s entries, "
           "visibility %.0f s, %d attempts)\n", o.consumer, w.r.prefix, o.n_in, o.n_out, o.n_models,
           o.klen ? "signed" : "unsigned", o.visibility, o.max_attempts);
    fflush(stdout);
    loop(&w);
    atomic_store(&w.quit, 1);
    pthread_join(w.wd, NULL);
    if (o.metrics)
        q_metrics_write(o.metrics, &w.m, &w.r, o.consumer);
    printf("segpipe worker %s: stopped\n", o.consumer);
    cli_batch_free(w.b);
    redisFree(w.r.c);
    if (w.hb.c)
        redisFree(w.hb.c);
    return 0;
}
