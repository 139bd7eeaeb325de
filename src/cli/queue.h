/* queue.h — the Redis Streams job queue shared by `segpipe submit`,
 * `segpipe worker` and `segpipe jobs` (docs/scale-out.md): the connection,
 * the job entry and its checks (the worker's trust boundary), signing. */
#ifndef SP_CLI_QUEUE_H
#define SP_CLI_QUEUE_H
#include "cli.h"

#include <hiredis/hiredis.h>
#include <limits.h>
#include <signal.h>
#include <stddef.h>

/* ------------------------------------------------------- queue_redis.c */

typedef struct rconn {
    char host[256], password[256];
    int port, db;
    redisContext *c;
    char prefix[64];
} rconn;

/* set by SIGTERM/SIGINT in a worker; a command waiting to reconnect gives up */
extern volatile sig_atomic_t q_stop;

/* A command, reconnecting (up to ~30 s) when the connection broke, e.g.
 * while Redis restarts. NULL after that (or when q_stop is set). */
redisReply *q_cmd(rconn *r, const char *fmt, ...);
/* one try (connecting first if needed), never waiting for a restart:
 * NULL when Redis cannot be reached now */
redisReply *q_cmd_once(rconn *r, const char *fmt, ...);
/* like q_cmd with an argument vector (binary-safe values) */
redisReply *q_cmdv(rconn *r, int argc, const char **argv);
/* 1 when x is not an error (printing it if it is); frees x */
int q_reply_ok(redisReply *x);
/* an integer reply's value (or a string holding one), else dflt; frees x */
long long q_reply_int(redisReply *x, long long dflt);
void q_random_id(char out[33]);
double q_now(void);
/* Common options --redis URL, --prefix P, --help plus the command's own
 * (extra, ended by a NULL name; their FN options get ctx), parsed by
 * cli_parse into a (positionals). Returns 0 (connected), -1 for --help,
 * else an exit code after printing why. */
int q_common_opts(int argc, char **argv, const char *cmdname, const cli_opt *extra, void *ctx, cli_args *a,
                  rconn *r);

/* ------------------------------------------------------- queue_entry.c */

#define Q_MODEL_MAX 64
#define Q_OPTS_MAX 1024

/* the fields of a job entry (and of its hash) */
typedef struct q_job {
    char entry[64];                 /* the stream entry id */
    char id[40];                    /* 32 hex digits */
    char input[PATH_MAX], output[PATH_MAX];
    char model[Q_MODEL_MAX + 1];    /* a name from the worker's --model list; "" = its first */
    char opts[Q_OPTS_MAX];          /* ct options, separated by \x1f */
    char sig[65];                   /* hex HMAC-SHA256 of the fields, "" when unsigned */
} q_job;

/* An entry [id, [k, v, ...]] into j. 0, or -1 with a reason in why (the
 * reason names the field and what is wrong, never its value). */
int q_entry_parse(const redisReply *e, q_job *j, char *why, size_t cap);
/* The key file's bytes (16..1024 bytes; whitespace at the end dropped):
 * 0, or -1 after printing why. */
int q_key_load(const char *path, unsigned char *key, size_t *len);
/* hex HMAC-SHA256 over the job's fields in a fixed order */
void q_sign(const unsigned char *key, size_t klen, const q_job *j, char out[65]);
/* 1 when j->sig is the right signature (constant-time compare) */
int q_sig_ok(const unsigned char *key, size_t klen, const q_job *j);

/* ct options a job may carry (nothing that names a file or a resource of
 * the worker): the joined text into *o through segpipe ct's own parser.
 * args (cap Q_OPTS_MAX bytes) holds the strings o points into. 0, or -1
 * with a reason in why. */
int q_opts_parse(const char *opts, ct_opts *o, char *args, char *why, size_t cap);
/* argv[0..n) joined with \x1f into out after the same checks; 0 or -1 */
int q_opts_join(int n, char **argv, char *out, size_t cap, char *why, size_t wcap);

/* 1 when path (resolved) lies in root (resolved) or is root */
int q_under(const char *path, const char *root);

/* ----------------------------------------------------- queue_metrics.c */

/* a worker's counters, written as a Prometheus textfile (node_exporter's
 * textfile collector) by q_metrics_write */
typedef struct q_metrics {
    long long done, skipped, failed, retried, rejected, handed_back;
    struct {
        char name[32];
        double seconds;
        long long runs;
    } stage[24];
    int n_stage;
    int busy;
} q_metrics;

void q_metrics_add_timings(q_metrics *m, const sp_timings *t);
/* the file path (temporary + rename), with the queue's depth, delayed and
 * dead counts and pending entries per consumer read from Redis */
void q_metrics_write(const char *path, const q_metrics *m, rconn *r, const char *consumer);

#endif
