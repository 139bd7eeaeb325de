/*
 * internal.h — the service's shared types (not part of the public API).
 *
 * The service is split by concern, each file calling only those below it
 * (docs/architecture.md draws it; tools/dev/house.py checks it):
 *   serve.c    sp_serve: start-up, warm-up, housekeeping, graceful stop;
 *              hands http.c its hooks (routes.c's router and handler)
 *   routes.c   the endpoints (health, /v1/ct, /v1/segment-batch, jobs, results)
 *   kserve.c   KServe v2 model metadata and JSON tensor inference
 *   work.c     per-model queues, worker threads, the CT and photo runs,
 *              the job store (random ids, owners, TTL, byte limits)
 *   ui.c       the web page's files, GET /v1/models
 *   http.c     libmicrohttpd callbacks: intake of bodies under limits,
 *              authentication; the request goes to s->hooks.handle
 *   metrics.c  per-endpoint counters and latencies, /v1/status, /metrics
 *   gzip.c     gzip request bodies and answers
 *   reply.c    responses, error bodies, status mapping (the bottom layer)
 * It uses the public header (segpipe.h) and core/ helpers only.
 */
#ifndef SP_SERVER_INTERNAL_H
#define SP_SERVER_INTERNAL_H
#include "../core/core.h"

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>

enum { EP_LIVE, EP_READY, EP_META, EP_MODEL, EP_MODEL_READY, EP_INFER, EP_CT, EP_RESULT,
       EP_STATUS, EP_METRICS, EP_SEGMENT, EP_JOBS, EP_OTHER, EP_STATS, EP_REPO, EP_CLASSIFY, EP_UI, EP_MODELS,
       EP_N };
extern const char *const sp_ep_names[EP_N];

#define LAT_RING 2048
#define ID_HEX 32                 /* 128 random bits */
#define MAX_WATCHERS 256          /* suspended long polls */

typedef struct ep_stats {
    uint64_t served, failed;
    double lat[LAT_RING];         /* seconds of successful requests */
    int nlat, pos;
} ep_stats;

typedef struct job job;
typedef struct req req;

/* Triton's statistics extension: a count and cumulative nanoseconds */
typedef struct sp_stat {
    uint64_t count, ns;
} sp_stat;
typedef struct model_stats {
    sp_stat success, fail, queue, input, infer, output;
    uint64_t inferences, executions;   /* items, and model runs (a batch is one run) */
    double last;                       /* wall-clock seconds of the last answer */
} model_stats;

typedef struct model_entry {
    model_stats st;               /* under s->mu */
    char name[64];
    char dir[1024];
    sp_package *pk;               /* = gpk[0]: names, labels, estimates */
    sp_package *gpk[SP_MAX_GPUS]; /* one instance per GPU of --device cuda:0,cuda:1 (gpk[0] = pk) */
    atomic_int ready;             /* serving (the repository extension can switch it) */
    atomic_int settled;           /* its warm-up has ended (ready, or error set) */
    char error[256];
    job *qhead, *qtail;           /* this model's queue (fair across models) */
    size_t ct_need;               /* memory estimate of its last CT run (under mu) */
    size_t infer_need;            /* bytes of its last KServe answer */
    int qlen;
} model_entry;

enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE };

struct job {
    int kind;                     /* EP_CT, EP_INFER or EP_SEGMENT */
    model_entry *me;
    char *body;
    size_t len, reserved;         /* body bytes, and bytes counted against max_buffered */
    int mapped;                   /* body is a mapping of the request's spool file */
    size_t memory_estimate;       /* EP_CT: the run's estimated peak (sp_ct_memory_estimate) */
    size_t header_len;            /* EP_INFER: Inference-Header-Content-Length (0: all JSON) */
    int gzip_in, gzip_out;        /* EP_INFER: Content-Encoding / Accept-Encoding gzip */
    const char *resp_ctype;       /* content type of `response` (NULL: application/json) */
    double t_input;               /* EP_INFER: seconds parsing the request */
    int want_labels;
    /* EP_CT per-request options (docs/service.md): roi_subset, keep_border,
     * largest_component, output=dicom-seg|dicom-rtstruct
     * (want_seg 1 or 2: seg_dcm holds that DICOM file), scan=1 (the input as .nii.gz) */
    char roi[512];
    int keep_border, largest_component, want_seg, want_scan;
    char masks[512];              /* EP_SEGMENT: requested mask names ("" = all) */
    int batch_size;               /* EP_SEGMENT: photos in the inference it joined */
    /* result */
    int http;
    char *resp;
    size_t resp_len;
    struct MHD_Response *response;   /* instead of resp: an answer written as it is sent */
    void *labels_gz;              /* EP_CT with labels: the .nii.gz bytes */
    size_t labels_len;
    void *seg_dcm;                /* EP_CT with output=dicom-seg: the DICOM-SEG bytes */
    size_t seg_len;
    void *scan_gz;                /* EP_CT with scan=1: the input volume as .nii.gz */
    size_t scan_len;
    double t_enq, t_start, t_end, deadline;
    int state;
    volatile int cancel;          /* read by the CT run between tiles */
    int timed_out;
    int refs;
    struct MHD_Connection *conn;  /* a suspended synchronous request waiting for it */
    /* progress */
    const char *stage;
    int done_steps, total_steps;
    /* store: async jobs and kept results */
    char id[ID_HEX + 1];
    int stored, async, owner;
    double expires;
    job *next;                    /* queue link */
    job *snext;                   /* store link */
    job *lprev, *lnext;           /* live (queued or running) jobs, for the housekeeper */
};

struct server;

/* What http.c calls above itself, set by serve.c: http knows no endpoint. */
typedef struct sp_http_hooks {
    int (*route)(const char *url);   /* the endpoint (EP_*) of a URL */
    enum MHD_Result (*handle)(struct server *s, struct MHD_Connection *c, const char *url, const char *method,
                              req *r, int *ok);   /* ok: 1 served, 0 failed, -1 suspended */
    void (*release)(struct server *s, job *j);    /* a finished request lets go of j (caller holds s->mu) */
} sp_http_hooks;

/* One open connection (libmicrohttpd's socket context): the request-header
 * deadline (--header-timeout) is counted from `since` until its headers
 * are in (in_request). Linked under server.conn_mu. */
typedef struct conn_ctx {
    struct conn_ctx *prev, *next;
    int fd, shut;
    atomic_int in_request;
    _Atomic double since;
} conn_ctx;

typedef struct server {
    sp_serve_params p;
    sp_http_hooks hooks;
    sp_runtime *rt;               /* = rts[0] */
    sp_runtime *rts[SP_MAX_GPUS]; /* one per device of --device (several: one per GPU) */
    char devs[SP_MAX_GPUS][16];   /* their names ("cuda:1") */
    int ndev;
    int tile_batch;               /* CT tiles per inference call: SEGPIPE_TILE_BATCH (serve --tile-batch), 0 = auto */
    atomic_int next_worker;       /* worker i runs on device i % ndev */
    uint64_t dev_jobs[SP_MAX_GPUS];   /* jobs run, busy seconds per device (under mu) */
    double dev_busy[SP_MAX_GPUS];
    model_entry *models;
    int n_models;
    atomic_int ready;
    double t0;
    pthread_mutex_t mu;
    pthread_mutex_t conn_mu;      /* conns */
    conn_ctx *conns;              /* every open connection (sp_conn_notify) */
    pthread_cond_t qcv;           /* workers wait for jobs */
    pthread_cond_t hcv;           /* housekeeper's sleep */
    pthread_cond_t mem_cv;        /* CT jobs waiting for memory (--max-memory) */
    size_t max_memory;            /* the budget: --max-memory, or 80% of the machine's (or cgroup's) memory */
    size_t mem_base;              /* RSS of the service with the models warmed up so far */
    atomic_int warm_done, warm_stop;   /* the warm-up thread has ended / is told to stop */
    sp_status warm_st;            /* its failure, and the message */
    char warm_msg[512];
    size_t mem_used;              /* estimates of the CT runs admitted now (under mu) */
    int qtotal, stopping, running, rr;
    pthread_t *workers;
    int nworkers;
    ep_stats eps[EP_N];
    atomic_int inflight;
    atomic_size_t buffered;       /* request bytes held (max_buffered) */
    atomic_size_t answer_bytes;   /* KServe answers made and not yet sent (their tensors) */
    job *live;                    /* queued and running jobs */
    req *watchers;                /* suspended long polls (GET /v1/jobs/ID?wait=S) */
    int n_watchers;
    job *store;                   /* async jobs and kept results */
    int n_stored;
    size_t stored_bytes;
    char **keys;                  /* API keys (NULL: no authentication) */
    int n_keys;
    char tmpdir[256];
} server;

struct req {
    char *body;                   /* malloc'd, or (mapped) the spool file mapped */
    size_t len, cap, reserved, declared;   /* reserved: bytes counted against max_buffered */
    int spool;                    /* binary bodies: an unnamed file in tmpdir while they arrive (-1: none) */
    int mapped;
    int ep, owner;
    int early;                    /* answered before the body: discard it */
    int late;                     /* a chunked body past a limit: discarded, this status once it ends */
    double t0;
    job *job;                     /* a synchronous job this request waits for */
    job *watch;                   /* GET /v1/jobs/ID?wait=S: the job it waits on (a reference) */
    double watch_until;
    struct MHD_Connection *conn;
    req *wnext;                   /* server's list of waiting watchers */
};

/* reply.c */
void sp_reply_kserve(int kserve);   /* the error format of this thread's current request */
enum MHD_Result sp_http_reply(struct MHD_Connection *c, int code, const char *ctype, char *body,
                              size_t len, int retry_after);
enum MHD_Result sp_http_json(struct MHD_Connection *c, int code, char *json);
/* Queue response r (owned; destroyed here) with segpipe's headers. */
/* ui.c: the web page's files and GET /v1/models */
int sp_ui_path(const char *url);
enum MHD_Result sp_ui_serve(server *s, struct MHD_Connection *c, const char *url, const char *method, int *ok);
char *sp_models_json(server *s);
enum MHD_Result sp_http_send(struct MHD_Connection *c, int code, struct MHD_Response *r, const char *ctype,
                             int retry_after);
enum MHD_Result sp_http_error(struct MHD_Connection *c, int code, const char *msg, int retry_after);
char *sp_error_json(int code, const char *msg);
/* work.c: memory for jobs (--max-memory less the service after warm-up);
 * a photo job's estimate set from its header, 413 (and *msg) when it can
 * never fit */
size_t sp_memory_room(const server *s);
int sp_photo_memory(server *s, job *j, const char **msg);

/* reply.c: a request's or job's body freed (or unmapped) */
void sp_body_free(char *body, size_t len, int mapped);

/* The error body for an endpoint family: KServe's {"error": "..."} when
 * kserve, else segpipe's {"error": {"code", "message"}}. Caller frees. */
char *sp_error_body(int kserve, int code, const char *msg);
int sp_ep_is_kserve(int ep);
int sp_http_status(sp_status st);
void sp_http_closing(void);   /* from now on every answer closes its connection */
/* http.c */
size_t sp_unescape_cb(void *cls, struct MHD_Connection *c, char *uri);
void sp_conn_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                    enum MHD_ConnectionNotificationCode code);
/* close (shutdown) connections whose request headers are not in after --header-timeout */
void sp_conn_reap(server *s, double now);
enum MHD_Result sp_access_cb(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                             const char *version, const char *upload_data, size_t *upload_size,
                             void **con_cls);
void sp_completed_cb(void *cls, struct MHD_Connection *c, void **con_cls,
                     enum MHD_RequestTerminationCode toe);
sp_status sp_keys_load(server *s, const char *path);
void sp_keys_free(server *s);
/* The value of a query argument, refused (NULL) if it holds a NUL byte. */
const char *sp_query_arg(struct MHD_Connection *c, const char *key);

/* routes.c */
int sp_route_ep(const char *url);
enum MHD_Result sp_handle(server *s, struct MHD_Connection *c, const char *url, const char *method,
                          req *r, int *ok);
model_entry *sp_find_model(server *s, const char *name, size_t n);

/* kserve.c */
char *sp_kserve_model_metadata(model_entry *me);
void sp_kserve_infer(server *s, job *j, sp_package *pk);   /* pk: the job's model on this worker's device */
/* The outputs an infer request asked for, and how. */
typedef struct sp_kserve_out {
    int index;                    /* model output */
    int binary;                   /* binary tensor extension */
    int classification;           /* >0: top-K "score:index[:label]" strings */
} sp_kserve_out;
typedef struct sp_kserve_req {
    char id[128];
    int n;
    sp_kserve_out sel[SP_MAX_RANK];
} sp_kserve_req;
/* A KServe v2 infer request (the first header_len bytes JSON, then the
 * binary tensor extension's data; header_len 0: all JSON) checked against
 * the model's inputs and outputs: 0 with tin[0..ni) filled (caller frees
 * each .data) and q set, or an HTTP status with a message. */
int sp_kserve_parse(const char *text, size_t len, size_t header_len, const sp_io_info *ins, int ni,
                    const sp_io_info *outs, int no, sp_tensor *tin, sp_kserve_req *q, char *msg, size_t msz);
/* kserve_answer.c: the answer to q (JSON, or JSON header + binary data),
 * written as it is sent; takes the tensors of tout. NULL when out of memory. */
struct MHD_Response *sp_kserve_answer(server *s, job *j, const sp_kserve_req *q, const sp_io_info *outs,
                                      sp_tensor *tout);

/* gzip.c: a gzip body inflated into *out (caller frees; NUL-terminated),
 * at most cap bytes: 0, or 400 (not gzip, truncated), 413 (past cap), 503. */
int sp_gunzip(const char *in, size_t n, size_t cap, char **out, size_t *outn);
/* An answer written through deflate (Content-Encoding: gzip); takes inner
 * (released with `release`, also on failure). */
struct MHD_Response *sp_gzip_response(void *inner, MHD_ContentReaderCallback read,
                                      MHD_ContentReaderFreeCallback release);

/* work.c */
job *sp_job_new(server *s, req *r, int kind, model_entry *me);
/* Queue j on its model (caller holds s->mu); 0, or -1 when the queue is full. */
int sp_job_enqueue(server *s, job *j);
void sp_job_release(server *s, job *j);          /* caller holds s->mu */
void sp_job_store(server *s, job *j, int owner);  /* caller holds s->mu; gives j an id */
job *sp_job_find(server *s, const char *id, size_t n, int owner);   /* caller holds s->mu */
void sp_job_unstore(server *s, job *j);           /* caller holds s->mu */
char *sp_job_status_json(server *s, job *j);      /* caller holds s->mu */
/* Take the watchers to wake: those of job j (NULL: none) and those past
 * their time (caller holds s->mu; resume the n returned after unlocking). */
int sp_watchers_take(server *s, job *j, double now, struct MHD_Connection **out, int max);
int sp_store_full(server *s);                     /* caller holds s->mu */
void sp_store_expire(server *s, double now);      /* caller holds s->mu */
void *sp_worker_main(void *arg);
/* The calling worker's instance of me (its GPU's; me->pk elsewhere). */
sp_package *sp_job_pk(const model_entry *me);

/* metrics.c */
void sp_record(server *s, int ep, double secs, int ok);
/* Count the jobs of one model run (caller holds s->mu). */
void sp_stats_record(model_entry *me, job *const *batch, int nb, double t_done);
/* GET /v2/models[/NAME]/stats: every model's statistics, or `only`'s. */
char *sp_stats_json(server *s, const model_entry *only);
/* POST /v2/repository/index */
char *sp_repository_index(server *s);
char *sp_status_json(server *s);
char *sp_metrics_text(server *s);

#endif
