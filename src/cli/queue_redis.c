/*
 * queue_redis.c — the Redis side of the job queue (docs/scale-out.md): the
 * URL, connecting with a password, commands that reconnect while Redis
 * restarts, and the options every queue command shares (--redis, --prefix).
 */
#include "queue.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

volatile sig_atomic_t q_stop;

/* redis://[:password@]host[:port][/db]; the password may come from
 * SEGPIPE_REDIS_PASSWORD instead (kept out of process listings) */
static int parse_url(const char *url, rconn *r)
{
    memset(r, 0, sizeof *r);
    r->port = 6379;
    snprintf(r->prefix, sizeof r->prefix, "segpipe");
    if (!strncmp(url, "rediss://", 9)) {
        cli_errf("rediss:// (TLS): this build's hiredis (Debian 12: 0.14) has no TLS; put a TLS "
                        "tunnel (stunnel, a sidecar) in front of Redis and use redis://localhost (docs/scale-out.md)\n");
        return -1;
    }
    if (strncmp(url, "redis://", 8))
        return cli_errf("--redis takes redis://[:password@]host[:port][/db]\n"), -1;
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
        return cli_errf("bad Redis URL\n"), -1;
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
    redisSetTimeout(r->c, (struct timeval){30, 0});   /* a dead server never hangs a worker */
    redisReply *x;
    if (r->password[0]) {
        x = redisCommand(r->c, "AUTH %s", r->password);
        int bad = !x || x->type == REDIS_REPLY_ERROR;
        freeReplyObject(x);
        if (bad)
            return cli_errf("Redis refused the password\n"), -2;
    }
    if (r->db) {
        x = redisCommand(r->c, "SELECT %d", r->db);
        freeReplyObject(x);
    }
    return 0;
}

/* one try of a command; NULL when the connection broke (then reconnect) */
static redisReply *try_cmd(rconn *r, int argc, const char **argv, const char *fmt, va_list ap)
{
    if (!r->c || r->c->err)
        return NULL;
    return argc ? redisCommandArgv(r->c, argc, argv, NULL) : redisvCommand(r->c, fmt, ap);
}

static redisReply *retrying(rconn *r, int argc, const char **argv, const char *fmt, va_list ap0)
{
    for (int tries = 0; tries < 60; tries++) {
        va_list ap;
        va_copy(ap, ap0);
        redisReply *x = try_cmd(r, argc, argv, fmt, ap);
        va_end(ap);
        if (x)
            return x;
        if (tries && q_stop)
            return NULL;
        if (tries)
            usleep(500000);
        if (connect_redis(r) == -2)
            return NULL;
    }
    return NULL;
}

redisReply *q_cmd(rconn *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *x = retrying(r, 0, NULL, fmt, ap);
    va_end(ap);
    return x;
}

static redisReply *cmdv_va(rconn *r, int argc, const char **argv, ...)
{
    va_list ap;
    va_start(ap, argv);
    redisReply *x = retrying(r, argc, argv, NULL, ap);
    va_end(ap);
    return x;
}

redisReply *q_cmdv(rconn *r, int argc, const char **argv) { return cmdv_va(r, argc, argv); }

redisReply *q_cmd_once(rconn *r, const char *fmt, ...)
{
    if ((!r->c || r->c->err) && connect_redis(r))
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *x = redisvCommand(r->c, fmt, ap);
    va_end(ap);
    return x;
}

int q_reply_ok(redisReply *x)
{
    int ok = x && x->type != REDIS_REPLY_ERROR;
    if (x && !ok)
        cli_errf("Redis: %s\n", x->str);
    freeReplyObject(x);
    return ok;
}

long long q_reply_int(redisReply *x, long long dflt)
{
    long long v = dflt;
    if (x && x->type == REDIS_REPLY_INTEGER)
        v = x->integer;
    else if (x && x->type == REDIS_REPLY_STRING)
        v = atoll(x->str);
    freeReplyObject(x);
    return v;
}

void q_random_id(char out[33])
{
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b)
        abort();
    for (int i = 0; i < 16; i++)
        snprintf(out + 2 * i, 3, "%02x", b[i]);
}

double q_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int q_common_opts(int argc, char **argv, const char *cmdname, const cli_opt *extra, void *ctx, cli_args *a,
                  rconn *r)
{
    const char *url = NULL, *prefix = NULL;
    cli_opt t[32] = {
        {.name = "redis", .kind = CLI_STR, .dst = &url, .value = "URL"},
        {.name = "prefix", .kind = CLI_STR, .dst = &prefix, .value = "P"},
        {.name = "help", .letter = 'h', .kind = CLI_HELP}};
    int k = 3;
    for (const cli_opt *e = extra; e && e->name && k < 31; e++)
        t[k++] = *e;
    t[k] = (cli_opt){.name = NULL};
    int rc = cli_parse(cmdname, t, NULL, argc, argv, ctx, a);
    if (rc)
        return rc == CLI_HELP_ASKED ? -1 : rc;
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
        cli_errf("cannot connect to Redis at %s:%d\n", r->host, r->port);
        return 6;
    }
    return 0;
}
