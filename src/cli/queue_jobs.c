/*
 * queue_jobs.c — `segpipe jobs`: what the queue holds (counts, recent jobs
 * with state, attempts, last error, worker and timings, or given jobs'
 * whole records), and the operator's two repairs: --retry-dead puts every
 * dead-lettered job that was submitted back on the stream with its
 * attempts reset, --purge drops finished records and the dead letters.
 */
#include "queue.h"

#include <stdlib.h>
#include <string.h>

typedef struct jobs_opts {
    int recent, retry_dead, purge;
} jobs_opts;

/* KEYS job stream dead counts; ARGV dead-entry-id: the job back on the stream */
static const char *const lua_retry_dead =
    "if redis.call('HGET', KEYS[1], 'state') ~= 'failed' then return 0 end "
    "local f = {} "
    "for _, k in ipairs({'id', 'input', 'output', 'model', 'opts', 'sig'}) do "
    "  local v = redis.call('HGET', KEYS[1], k) "
    "  if v and v ~= '' then table.insert(f, k) table.insert(f, v) end end "
    "if #f < 6 then return 0 end "
    "redis.call('HSET', KEYS[1], 'state', 'queued', 'attempts', 0, 'error', '', 'class', '') "
    "redis.call('PERSIST', KEYS[1]) "
    "redis.call('XADD', KEYS[2], '*', unpack(f)) "
    "redis.call('XDEL', KEYS[3], ARGV[1]) "
    "redis.call('HINCRBY', KEYS[4], 'failed', -1) return 1";

/* the value of field k in a flat [k, v, ...] array reply, or "" */
static const char *field(const redisReply *a, const char *k)
{
    for (size_t i = 0; a && a->type == REDIS_REPLY_ARRAY && i + 1 < a->elements; i += 2)
        if (a->element[i]->type == REDIS_REPLY_STRING && !strcmp(a->element[i]->str, k) &&
            a->element[i + 1]->type == REDIS_REPLY_STRING)
            return a->element[i + 1]->str;
    return "";
}

static int retry_dead(rconn *r)
{
    redisReply *x = q_cmd(r, "XRANGE %s:dead - + COUNT 100000", r->prefix);
    int again = 0, left = 0;
    char job[160], stream[96], dead[96], counts[96];
    snprintf(stream, sizeof stream, "%s:jobs", r->prefix);
    snprintf(dead, sizeof dead, "%s:dead", r->prefix);
    snprintf(counts, sizeof counts, "%s:counts", r->prefix);
    for (size_t i = 0; x && x->type == REDIS_REPLY_ARRAY && i < x->elements; i++) {
        const redisReply *e = x->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2)
            continue;
        const char *id = field(e->element[1], "id");
        snprintf(job, sizeof job, "%s:job:%.40s", r->prefix, id);
        const char *av[] = {"EVAL", lua_retry_dead, "4", job, stream, dead, counts, e->element[0]->str};
        if (strlen(id) == 32 && q_reply_int(q_cmdv(r, 8, av), 0) == 1)
            again++;
        else
            left++;
    }
    freeReplyObject(x);
    printf("{\"requeued\": %d, \"left\": %d}\n", again, left);
    return 0;
}

static int purge(rconn *r)
{
    redisReply *x = q_cmd(r, "ZRANGE %s:ids 0 -1", r->prefix);
    long long removed = 0;
    for (size_t i = 0; x && x->type == REDIS_REPLY_ARRAY && i < x->elements; i++) {
        const char *id = x->element[i]->str;
        redisReply *s = q_cmd(r, "HGET %s:job:%s state", r->prefix, id);
        int fin = !s || s->type == REDIS_REPLY_NIL ||
                  (s->type == REDIS_REPLY_STRING && (!strcmp(s->str, "done") || !strcmp(s->str, "failed")));
        freeReplyObject(s);
        if (!fin)
            continue;
        freeReplyObject(q_cmd(r, "DEL %s:job:%s", r->prefix, id));
        freeReplyObject(q_cmd(r, "ZREM %s:ids %s", r->prefix, id));
        removed++;
    }
    freeReplyObject(x);
    long long dead = q_reply_int(q_cmd(r, "XLEN %s:dead", r->prefix), 0);
    freeReplyObject(q_cmd(r, "DEL %s:dead", r->prefix));
    printf("{\"records_removed\": %lld, \"dead_letters_removed\": %lld}\n", removed, dead);
    return 0;
}

static void counts(rconn *r)
{
    redisReply *x = q_cmd(r, "HGETALL %s:counts", r->prefix);
    long long sub = atoll(field(x, "submitted")), done = atoll(field(x, "done")), failed = atoll(field(x, "failed")),
              rejected = atoll(field(x, "rejected"));
    freeReplyObject(x);
    x = q_cmd(r, "XPENDING %s:jobs %s-workers", r->prefix, r->prefix);
    long long pending = x && x->type == REDIS_REPLY_ARRAY && x->elements > 0 && x->element[0]->type == REDIS_REPLY_INTEGER
                            ? x->element[0]->integer : 0;
    freeReplyObject(x);
    long long dead = q_reply_int(q_cmd(r, "XLEN %s:dead", r->prefix), 0);
    long long delayed = q_reply_int(q_cmd(r, "ZCARD %s:delayed", r->prefix), 0);
    long long queued = sub - done - failed - pending - delayed;
    printf("{\"submitted\": %lld, \"queued\": %lld, \"running\": %lld, \"retrying\": %lld, \"done\": %lld, "
           "\"failed\": %lld, \"rejected\": %lld, \"dead_letter\": %lld", sub, queued < 0 ? 0 : queued, pending,
           delayed, done, failed, rejected, dead);
}

/* one job: its whole record, or (brief) the fields an operator reads first */
static void show(rconn *r, const char *id, int brief)
{
    static const char *const keys[] = {"state", "attempts", "class", "error", "worker", "stage", "input",
                                       "submitted", "started", "finished", "seconds", "timings"};
    redisReply *x = q_cmd(r, "HGETALL %s:job:%s", r->prefix, id);
    cli_json_str(stdout, id);
    printf(": {");
    int k = 0;
    for (size_t i = 0; x && x->type == REDIS_REPLY_ARRAY && i + 1 < x->elements; i += 2) {
        const char *f = x->element[i]->str;
        int want = !brief;
        for (size_t m = 0; brief && m < sizeof keys / sizeof *keys; m++)
            want |= !strcmp(f, keys[m]);
        if (!want)
            continue;
        printf("%s", k++ ? ", " : "");
        cli_json_str(stdout, f);
        printf(": ");
        cli_json_str(stdout, x->element[i + 1]->str);
    }
    printf("}");
    freeReplyObject(x);
}

int cmd_jobs(int argc, char **argv)
{
    jobs_opts o = {0};
    const cli_opt extra[] = {
        {.name = "recent", .kind = CLI_INT, .dst = &o.recent, .lo = 1, .hi = 100000, .value = "N"},
        {.name = "retry-dead", .kind = CLI_FLAG, .dst = &o.retry_dead},
        {.name = "purge", .kind = CLI_FLAG, .dst = &o.purge},
        {.name = NULL}};
    rconn r = {0};
    cli_args a = {.all = argv + 1};   /* the IDs gathered in place */
    int rc = q_common_opts(argc, argv, "jobs", extra, &o, &a, &r);
    if (rc < 0) {
        printf("usage: segpipe jobs --redis URL [ID...] [--recent N] [--retry-dead] [--purge] [--prefix P]\n"
               "Counts of submitted, queued, running, retrying, done, failed and rejected jobs; with IDs each\n"
               "job's record; --recent N the N latest jobs (state, attempts, class, error, worker, times).\n"
               "--retry-dead: dead-lettered jobs back on the queue (attempts reset). --purge: finished job\n"
               "records and the dead letters removed.\n");
        return 0;
    }
    if (rc)
        return rc;
    if (o.retry_dead || o.purge) {
        rc = o.retry_dead ? retry_dead(&r) : purge(&r);
        redisFree(r.c);
        return rc;
    }
    counts(&r);
    if (a.n || o.recent)
        printf(", \"jobs\": {");
    for (int i = 0; i < a.n; i++) {
        printf("%s\n  ", i ? "," : "");
        show(&r, a.all[i], 0);
    }
    redisReply *x = o.recent ? q_cmd(&r, "ZREVRANGE %s:ids 0 %d", r.prefix, o.recent - 1) : NULL;
    for (size_t i = 0; x && x->type == REDIS_REPLY_ARRAY && i < x->elements; i++) {
        printf("%s\n  ", i || a.n ? "," : "");
        show(&r, x->element[i]->str, 1);
    }
    freeReplyObject(x);
    printf("%s}\n", a.n || o.recent ? "}" : "");
    redisFree(r.c);
    return 0;
}
