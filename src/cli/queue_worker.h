/* queue_worker.h — the worker's configuration and its admission of a job
 * (queue_admit.c), shared with its loop (queue_worker.c). */
#ifndef SP_CLI_QUEUE_WORKER_H
#define SP_CLI_QUEUE_WORKER_H
#include "queue.h"

#define Q_MAX_ROOTS 8
#define Q_MAX_MODELS 16

typedef struct q_worker_cfg {
    char consumer[128];
    double visibility, job_timeout, stop_timeout, backoff, ttl;
    int max_attempts, threads;
    const char *device, *metrics;
    char in_roots[Q_MAX_ROOTS][PATH_MAX], out_roots[Q_MAX_ROOTS][PATH_MAX];
    int n_in, n_out;
    struct {
        char name[Q_MODEL_MAX + 1];
        char dir[PATH_MAX];
    } models[Q_MAX_MODELS];
    int n_models;
    unsigned char key[1025];
    size_t klen;
} q_worker_cfg;

/* what admission decided for one job */
typedef struct q_plan {
    const char *model;                  /* the package folder */
    char input[PATH_MAX], outdir[PATH_MAX], labels[PATH_MAX], passport[PATH_MAX];
    ct_opts ct;
    char args[Q_OPTS_MAX];              /* the strings ct points into */
} q_plan;

enum { Q_OK = 0, Q_REJECT, Q_INPUT };

/* Q_OK, or Q_REJECT (outside the trust boundary) / Q_INPUT (an input
 * error) with the reason in why */
int q_admit(const q_worker_cfg *o, const cli_batch *b, const q_job *j, q_plan *pl, char *why, size_t cap);
#endif
