/*
 * server.c — `segpipe serve`: an HTTP service over libmicrohttpd.
 *
 * libmicrohttpd (Debian's libmicrohttpd-dev) does all HTTP parsing: it is a
 * small C library made to be embedded, with a thread-per-connection mode in
 * which a handler may block, which keeps the flow here plain. HTTP threads
 * only read bodies, route, and wait; inference runs on a fixed pool of
 * worker threads fed by a bounded queue. A full queue is answered 503 with
 * Retry-After, so memory never grows with load; bodies over --max-body get
 * 413 (checked from Content-Length before reading when present); a request
 * whose wait plus run passes --timeout gets 504 (a queued job is then
 * dropped unrun). Every error body is {"error": {"code", "message"}}.
 *
 * Models are loaded once at startup through the model manager and warmed up
 * with one inference each; /v2/health/ready turns true only after that.
 * SIGTERM/SIGINT: stop accepting, let in-flight requests finish, return.
 *
 * Routes (docs/service.md): KServe v2 (/v2/health/live, /v2/health/ready,
 * /v2, /v2/models/NAME, /v2/models/NAME/ready, /v2/models/NAME/infer),
 * /v1/ct, /v1/results/ID/labels, /v1/status, /metrics.
 */
#include "../runtime/package.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { EP_LIVE, EP_READY, EP_META, EP_MODEL, EP_MODEL_READY, EP_INFER, EP_CT, EP_RESULT,
       EP_STATUS, EP_METRICS, EP_SEGMENT, EP_OTHER, EP_N };
static const char *ep_names[EP_N] = {"health_live", "health_ready", "server_metadata", "model_metadata",
                                     "model_ready", "infer", "ct", "results", "status", "metrics",
                                     "segment_batch", "other"};
#define LAT_RING 2048
#define MAX_RESULTS 16

typedef struct ep_stats {
    uint64_t served, failed;
    double lat[LAT_RING];
    int nlat, pos;
} ep_stats;

typedef struct model_entry {
    char name[64];
    char dir[1024];
    sp_package *pk;
    int ready;
    char error[256];
} model_entry;

typedef struct job job;
struct job {
    int kind;                 /* EP_CT, EP_INFER or EP_SEGMENT */
    model_entry *me;
    char *body;
    size_t len;
    int want_labels;
    char masks[512];          /* EP_SEGMENT: requested mask names ("" = all) */
    int batch_size;           /* EP_SEGMENT: photos in the inference it joined */
    /* result */
    int http;
    char *resp;
    size_t resp_len;
    double t_enq, t_start, t_end;
    int state;                /* 0 queued, 1 running, 2 done */
    int abandoned;
    int refs;
    pthread_cond_t cv;
    job *next;
};

typedef struct server {
    sp_serve_params p;
    sp_runtime *rt;
    model_entry *models;
    int n_models;
    atomic_int ready;
    double t0;
    pthread_mutex_t mu;
    pthread_cond_t qcv;
    job *qhead, *qtail;
    int qlen, stopping;
    pthread_t *workers;
    ep_stats eps[EP_N];
    atomic_int inflight;
    char tmpdir[256];
    char result_ids[MAX_RESULTS][40];
    int result_pos;
    uint64_t seq;
} server;

typedef struct req {
    char *body;
    size_t len, cap;
    int too_big;
    double t0;
    int ep;
} req;

sp_serve_params sp_serve_default_params(void)
{
    sp_serve_params p;
    memset(&p, 0, sizeof p);
    p.host = "127.0.0.1";
    p.port = 8555;
    p.workers = 1;
    p.queue = 8;
    p.max_body = (size_t)512 << 20;
    p.timeout = 600;
    p.batch_window_ms = 10;
    p.max_batch = 8;
    p.device = "cpu";
    return p;
}

/* ---------------------------------------------------------------- replies */

static enum MHD_Result reply(struct MHD_Connection *c, int code, const char *ctype, char *body,
                             size_t len, int retry_after)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    if (retry_after > 0) {
        char s[16];
        snprintf(s, sizeof s, "%d", retry_after);
        MHD_add_response_header(r, "Retry-After", s);
    }
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)code, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result reply_json(struct MHD_Connection *c, int code, char *json)
{
    return reply(c, code, "application/json", json, strlen(json), 0);
}

static char *error_json(int code, const char *msg)
{
    sp_buf b = {0};
    sp_buf_printf(&b, "{\"error\": {\"code\": %d, \"message\": ", code);
    sp_buf_json_str(&b, msg);
    sp_buf_puts(&b, "}}\n");
    return sp_buf_take(&b);
}

static enum MHD_Result reply_error(struct MHD_Connection *c, int code, const char *msg, int retry)
{
    char *j = error_json(code, msg);
    return reply(c, code, "application/json", j, strlen(j), retry);
}

/* ----------------------------------------------------------------- stats */

static void record(server *s, int ep, double secs, int ok)
{
    pthread_mutex_lock(&s->mu);
    ep_stats *e = &s->eps[ep];
    if (ok)
        e->served++;
    else
        e->failed++;
    e->lat[e->pos] = secs;
    e->pos = (e->pos + 1) % LAT_RING;
    if (e->nlat < LAT_RING)
        e->nlat++;
    pthread_mutex_unlock(&s->mu);
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* p50/p95/p99 of an endpoint (caller holds s->mu) */
static void quantiles(const ep_stats *e, double q[3])
{
    static _Thread_local double tmp[LAT_RING];
    if (!e->nlat) {
        q[0] = q[1] = q[2] = 0;
        return;
    }
    memcpy(tmp, e->lat, (size_t)e->nlat * sizeof *tmp);
    qsort(tmp, (size_t)e->nlat, sizeof *tmp, cmpd);
    const double qs[3] = {0.5, 0.95, 0.99};
    for (int i = 0; i < 3; i++) {
        double pos = qs[i] * (e->nlat - 1);
        int lo = (int)floor(pos);
        q[i] = lo + 1 < e->nlat ? tmp[lo] + (tmp[lo + 1] - tmp[lo]) * (pos - lo) : tmp[lo];
    }
}

static size_t rss_now(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2)
            res = 0;
        fclose(f);
    }
    return (size_t)res * (size_t)sysconf(_SC_PAGESIZE);
}

/* ------------------------------------------------------------------ queue */

static void job_release(server *s, job *j)
{
    /* caller holds s->mu */
    if (--j->refs == 0) {
        pthread_cond_destroy(&j->cv);
        free(j->body);
        free(j->resp);
        free(j);
    }
}

static void run_ct(server *s, job *j)
{
    sp_volume *v = NULL;
    sp_ct_result *res = NULL;
    sp_read_params rp = sp_read_default_params();
    double t0 = sp_now();
    sp_status st = sp_volume_read_mem(j->body, j->len, "request body", &rp, &v);
    if (st) {
        j->http = st == SP_ERR_NOMEM ? 503 : 422;
        j->resp = error_json(j->http, sp_last_error());
        return;
    }
    double t_read = sp_now() - t0;
    sp_ct_params cp = sp_ct_default_params();
    cp.threads = s->p.threads;
    if ((st = sp_ct_run(j->me->pk, v, &cp, &res))) {
        j->http = st == SP_ERR_INPUT ? 422 : 500;
        j->resp = error_json(j->http, sp_last_error());
        sp_volume_free(v);
        return;
    }
    char id[40] = "";
    if (j->want_labels) {
        char path[512];
        pthread_mutex_lock(&s->mu);
        snprintf(id, sizeof id, "%llx%04llx", (unsigned long long)time(NULL), (unsigned long long)++s->seq);
        char old[40];
        snprintf(old, sizeof old, "%s", s->result_ids[s->result_pos]);
        snprintf(s->result_ids[s->result_pos], sizeof s->result_ids[0], "%s", id);
        s->result_pos = (s->result_pos + 1) % MAX_RESULTS;
        pthread_mutex_unlock(&s->mu);
        if (old[0]) {   /* keep the last MAX_RESULTS label files */
            snprintf(path, sizeof path, "%s/%s.nii.gz", s->tmpdir, old);
            unlink(path);
        }
        snprintf(path, sizeof path, "%s/%s.nii.gz", s->tmpdir, id);
        if ((st = sp_labels_write(path, sp_ct_result_labels(res, NULL), v))) {
            j->http = 500;
            j->resp = error_json(500, sp_last_error());
            sp_ct_result_free(res);
            sp_volume_free(v);
            return;
        }
    }
    j->t_end = sp_now();
    sp_buf b = {0};
    sp_buf_puts(&b, "{\"model\": ");
    sp_buf_json_str(&b, j->me->name);
    sp_buf_printf(&b, ", \"queue_wait_seconds\": %.6f, \"processing_seconds\": %.6f,\n \"seconds\": {\"read\": %.6f",
                  j->t_start - j->t_enq, j->t_end - j->t_start, t_read);
    const sp_timings *t = sp_ct_result_timings(res);
    for (int i = 0; i < t->n; i++)
        sp_buf_printf(&b, ", \"%s\": %.6f", t->stage[i].name, t->stage[i].seconds);
    sp_buf_puts(&b, "},\n");
    if (id[0])
        sp_buf_printf(&b, " \"labels_id\": \"%s\", \"labels_url\": \"/v1/results/%s/labels\",\n", id, id);
    sp_buf_puts(&b, " \"passport\": ");
    const char *pj = sp_ct_result_passport_json(res);
    sp_buf_puts(&b, pj ? pj : "null");
    sp_buf_puts(&b, "}\n");
    j->resp = sp_buf_take(&b);
    j->http = j->resp ? 200 : 503;
    sp_ct_result_free(res);
    sp_volume_free(v);
}

static size_t count_data(const cJSON *d, float *out, size_t cap, size_t pos, int *bad)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, d) {
        if (cJSON_IsArray(e))
            pos = count_data(e, out, cap, pos, bad);
        else if (cJSON_IsNumber(e)) {
            if (out && pos < cap)
                out[pos] = (float)e->valuedouble;
            pos++;
        } else
            *bad = 1;
    }
    return pos;
}

static void run_infer(server *s, job *j)
{
    (void)s;
    sp_model *m = sp_package_model(j->me->pk);
    int ni, no;
    const sp_io_info *ins = sp_model_inputs(m, &ni), *outs = sp_model_outputs(m, &no);
    cJSON *body = cJSON_ParseWithLength(j->body, j->len);
    const cJSON *inputs = cJSON_GetObjectItem(body, "inputs");
    sp_tensor tin[SP_MAX_RANK];
    memset(tin, 0, sizeof tin);
    char msg[256] = "";
    j->http = 400;
    if (!cJSON_IsArray(inputs) || cJSON_GetArraySize(inputs) != ni) {
        snprintf(msg, sizeof msg, "expected {\"inputs\": [...]} with %d input(s)", ni);
        goto out;
    }
    for (int i = 0; i < ni && i < SP_MAX_RANK; i++) {
        const cJSON *in = NULL, *e;
        cJSON_ArrayForEach(e, inputs) {
            const char *nm = cJSON_GetStringValue(cJSON_GetObjectItem(e, "name"));
            if (nm && !strcmp(nm, ins[i].name))
                in = e;
        }
        if (!in) {
            snprintf(msg, sizeof msg, "input '%s' missing", ins[i].name);
            goto out;
        }
        const char *dt = cJSON_GetStringValue(cJSON_GetObjectItem(in, "datatype"));
        if (!dt || strcmp(dt, "FP32")) {
            snprintf(msg, sizeof msg, "input '%s': datatype must be FP32", ins[i].name);
            goto out;
        }
        const cJSON *shape = cJSON_GetObjectItem(in, "shape"), *data = cJSON_GetObjectItem(in, "data");
        int r = cJSON_GetArraySize(shape);
        if (!cJSON_IsArray(shape) || r < 1 || r > SP_MAX_RANK || !cJSON_IsArray(data)) {
            snprintf(msg, sizeof msg, "input '%s': needs \"shape\" and \"data\" arrays", ins[i].name);
            goto out;
        }
        size_t n = 1;
        tin[i].dtype = SP_DT_F32;
        tin[i].rank = r;
        for (int d = 0; d < r; d++) {
            double v = cJSON_GetArrayItem(shape, d)->valuedouble;
            if (!(v >= 1 && v <= 1e9)) {
                snprintf(msg, sizeof msg, "input '%s': bad shape", ins[i].name);
                goto out;
            }
            tin[i].shape[d] = (int64_t)v;
            n *= (size_t)v;
        }
        int bad = 0;
        size_t got = count_data(data, NULL, 0, 0, &bad);
        if (bad || got != n) {
            snprintf(msg, sizeof msg, "input '%s': shape holds %zu values, data has %zu%s", ins[i].name, n, got,
                     bad ? " (non-numbers)" : "");
            goto out;
        }
        tin[i].data = malloc(n * sizeof(float));
        if (!tin[i].data) {
            j->http = 503;
            snprintf(msg, sizeof msg, "out of memory");
            goto out;
        }
        count_data(data, tin[i].data, n, 0, &bad);
    }
    sp_tensor tout[SP_MAX_RANK];
    memset(tout, 0, sizeof tout);
    int nout = no < SP_MAX_RANK ? no : SP_MAX_RANK;
    sp_status st = sp_model_run(m, tin, ni, tout, nout);
    if (st) {
        j->http = st == SP_ERR_INPUT || st == SP_ERR_USAGE ? 400 : 500;
        snprintf(msg, sizeof msg, "%s", sp_last_error());
        goto out;
    }
    j->t_end = sp_now();
    sp_buf b = {0};
    sp_buf_puts(&b, "{\"model_name\": ");
    sp_buf_json_str(&b, j->me->name);
    sp_buf_printf(&b, ", \"model_version\": \"1\", \"parameters\": {\"queue_wait_seconds\": %.6f, "
                      "\"processing_seconds\": %.6f}, \"outputs\": [", j->t_start - j->t_enq, j->t_end - j->t_start);
    for (int k = 0; k < nout; k++) {
        size_t n = 1;
        sp_buf_printf(&b, "%s{\"name\": \"%s\", \"datatype\": \"FP32\", \"shape\": [", k ? ", " : "", outs[k].name);
        for (int d = 0; d < tout[k].rank; d++) {
            sp_buf_printf(&b, "%s%lld", d ? ", " : "", (long long)tout[k].shape[d]);
            n *= (size_t)tout[k].shape[d];
        }
        sp_buf_puts(&b, "], \"data\": [");
        const float *f = tout[k].data;
        for (size_t q = 0; q < n; q++)
            sp_buf_printf(&b, q ? ", %.9g" : "%.9g", (double)f[q]);
        sp_buf_puts(&b, "]}");
        sp_tensor_free_data(&tout[k]);
    }
    sp_buf_puts(&b, "]}\n");
    j->resp = sp_buf_take(&b);
    j->http = j->resp ? 200 : 503;
out:
    if (j->http != 200)
        j->resp = error_json(j->http, msg);
    for (int i = 0; i < SP_MAX_RANK; i++)
        free(tin[i].data);
    cJSON_Delete(body);
}


/* One inference for a batch of segment jobs (same model). The photos of a
 * batch are decoded in parallel and the replies (PNG + base64 per mask)
 * built in parallel on the pool, so the CPU work around the one inference
 * scales with the batch instead of running photo after photo. */
typedef struct seg_ctx {
    job **js;
    sp_image **imgs;
    sp_image_params ip;
    sp_masks_result **res;
    int m;
    double t_end;
} seg_ctx;

static void seg_decode(void *vc, int64_t b, int64_t e, int w)
{
    seg_ctx *c = vc;
    for (int64_t i = b; i < e; i++) {
        job *j = c->js[i];
        c->imgs[i] = NULL;
        sp_status st = sp_image_read_mem(j->body, j->len, "request body", &c->ip, &c->imgs[i]);
        if (st) {
            j->http = st == SP_ERR_NOMEM ? 503 : 422;
            j->resp = error_json(j->http, sp_last_error());
        }
    }
}

static void seg_reply(void *vc, int64_t b, int64_t e, int w)
{
    seg_ctx *c = vc;
    for (int64_t i = b; i < e; i++) {
        job *j = c->js[i];
        sp_masks_result *r = c->res[i];
        sp_buf bf = {0};
        sp_buf_puts(&bf, "{\"model\": ");
        sp_buf_json_str(&bf, j->me->name);
        sp_buf_printf(&bf, ", \"width\": %d, \"height\": %d, \"orientation\": %d, \"batch_size\": %d, "
                           "\"queue_wait_seconds\": %.6f, \"processing_seconds\": %.6f, \"masks\": ",
                      r->width, r->height, c->imgs[i]->orientation, c->m, j->t_start - j->t_enq,
                      c->t_end - j->t_start);
        char *mj = NULL;
        sp_status st = sp_masks_encode(r, j->masks, &mj, NULL, NULL);
        sp_buf_puts(&bf, mj ? mj : "{}");
        free(mj);
        if (st) {
            sp_buf_free(&bf);
            j->http = st == SP_ERR_NOMEM ? 503 : 500;
            j->resp = error_json(j->http, sp_last_error());
            continue;
        }
        sp_buf_puts(&bf, "}\n");
        j->resp = sp_buf_take(&bf);
        j->http = j->resp ? 200 : 503;
        j->batch_size = c->m;
    }
}

static void run_segment_batch(server *s, job **js, int n)
{
    sp_image *all[64], *imgs[64];
    job *ok[64];
    int m = 0;
    seg_ctx c = {js, all, sp_image_default_params(), NULL, 0, 0};
    c.ip.min_long_side = js[0]->me->pk->mf.in_h ? 0 : js[0]->me->pk->mf.long_side;
    sp_pool *pool = sp_pool_get(s->p.threads);
    sp_pool_for(pool, n, 1, seg_decode, &c);
    for (int i = 0; i < n; i++)
        if (all[i]) {
            imgs[m] = all[i];
            ok[m++] = js[i];
        }
    if (m) {
        sp_masks_params mp = sp_masks_default_params();
        mp.threads = s->p.threads;
        sp_masks_result **res = NULL;
        sp_status st = sp_masks_run(js[0]->me->pk, imgs, m, &mp, &res, NULL);
        if (st) {
            for (int i = 0; i < m; i++) {
                ok[i]->http = st == SP_ERR_INPUT || st == SP_ERR_USAGE ? 422 : 500;
                ok[i]->resp = error_json(ok[i]->http, sp_last_error());
            }
        } else {
            seg_ctx rc = {ok, imgs, c.ip, res, m, sp_now()};
            sp_pool_for(pool, m, 1, seg_reply, &rc);
            for (int i = 0; i < m; i++)
                sp_masks_result_free(res[i]);
            free(res);
        }
    }
    sp_pool_put(pool);
    for (int i = 0; i < m; i++)
        sp_image_free(imgs[i]);
}

static void finish_job(server *s, job *j)
{
    /* caller holds s->mu */
    if (!j->resp) {
        j->http = 503;
        j->resp = error_json(503, "out of memory");
    }
    j->resp_len = strlen(j->resp);
    j->state = 2;
    pthread_cond_signal(&j->cv);
    job_release(s, j);
}

static void *worker_main(void *arg)
{
    server *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->qhead && !s->stopping)
            pthread_cond_wait(&s->qcv, &s->mu);
        if (!s->qhead)
            break;
        job *j = s->qhead;
        s->qhead = j->next;
        if (!s->qhead)
            s->qtail = NULL;
        s->qlen--;
        if (j->abandoned) {   /* its client got 504 already */
            job_release(s, j);
            continue;
        }
        j->state = 1;
        j->t_start = sp_now();
        if (j->kind == EP_SEGMENT) {
            /* dynamic batching: wait up to the window for more photos for
             * the same model, then one inference for all of them */
            job *batch[64];
            int nb = 1, cap = s->p.max_batch;
            int nin;
            int64_t mb = sp_model_inputs(sp_package_model(j->me->pk), &nin)[0].meta.shape[0];
            if (mb > 0 && mb < cap)
                cap = (int)mb;
            if (cap > 64)
                cap = 64;
            batch[0] = j;
            double until = sp_now() + s->p.batch_window_ms / 1000.0;
            for (;;) {
                job **pp = &s->qhead, *prev = NULL;
                while (*pp && nb < cap) {
                    job *q = *pp;
                    if (q->kind == EP_SEGMENT && q->me == j->me && !q->abandoned) {
                        *pp = q->next;
                        if (s->qtail == q)
                            s->qtail = prev;
                        s->qlen--;
                        q->state = 1;
                        q->t_start = sp_now();
                        batch[nb++] = q;
                    } else {
                        prev = q;
                        pp = &q->next;
                    }
                }
                double now = sp_now();
                if (nb >= cap || now >= until || s->stopping)
                    break;
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                double wake = (double)ts.tv_sec + ts.tv_nsec * 1e-9 + (until - now);
                ts.tv_sec = (time_t)wake;
                ts.tv_nsec = (long)((wake - (double)ts.tv_sec) * 1e9);
                pthread_cond_timedwait(&s->qcv, &s->mu, &ts);
            }
            pthread_mutex_unlock(&s->mu);
            run_segment_batch(s, batch, nb);
            pthread_mutex_lock(&s->mu);
            for (int k = 0; k < nb; k++)
                finish_job(s, batch[k]);
            continue;
        }
        pthread_mutex_unlock(&s->mu);
        if (j->kind == EP_CT)
            run_ct(s, j);
        else
            run_infer(s, j);
        pthread_mutex_lock(&s->mu);
        finish_job(s, j);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Queue a job and wait for it; answers the connection. */
static enum MHD_Result submit(server *s, struct MHD_Connection *c, req *r, int kind, model_entry *me,
                              int want_labels, const char *masks, int *ok)
{
    job *j = calloc(1, sizeof *j);
    if (!j)
        return reply_error(c, 503, "out of memory", 5);
    j->kind = kind;
    j->me = me;
    j->body = r->body;
    j->len = r->len;
    r->body = NULL;
    j->want_labels = want_labels;
    if (masks)
        snprintf(j->masks, sizeof j->masks, "%s", masks);
    j->refs = 2;
    j->t_enq = sp_now();
    pthread_cond_init(&j->cv, NULL);
    pthread_mutex_lock(&s->mu);
    if (s->qlen >= s->p.queue) {
        j->refs = 1;
        job_release(s, j);
        pthread_mutex_unlock(&s->mu);
        return reply_error(c, 503, "the queue is full; retry later", 2);
    }
    if (s->qtail)
        s->qtail->next = j;
    else
        s->qhead = j;
    s->qtail = j;
    s->qlen++;
    pthread_cond_signal(&s->qcv);
    double deadline = j->t_enq + s->p.timeout;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double wall_deadline = (double)ts.tv_sec + ts.tv_nsec * 1e-9 + s->p.timeout;
    ts.tv_sec = (time_t)wall_deadline;
    ts.tv_nsec = (long)((wall_deadline - (double)ts.tv_sec) * 1e9);
    while (j->state != 2 && sp_now() < deadline)
        if (pthread_cond_timedwait(&j->cv, &s->mu, &ts) == ETIMEDOUT)
            break;
    if (j->state != 2) {
        j->abandoned = 1;
        job_release(s, j);
        pthread_mutex_unlock(&s->mu);
        return reply_error(c, 504, "the request waited and ran past --timeout", 0);
    }
    int http = j->http;
    char *body = j->resp;
    size_t len = j->resp_len;
    j->resp = NULL;
    job_release(s, j);
    pthread_mutex_unlock(&s->mu);
    *ok = http == 200;
    return reply(c, http, "application/json", body, len, http == 503 ? 2 : 0);
}

/* ----------------------------------------------------------------- routes */

static model_entry *find_model(server *s, const char *name, size_t n)
{
    for (int i = 0; i < s->n_models; i++)
        if (strlen(s->models[i].name) == n && !strncmp(s->models[i].name, name, n))
            return &s->models[i];
    return NULL;
}

static char *model_metadata(model_entry *me)
{
    sp_buf b = {0};
    sp_buf_puts(&b, "{\"name\": ");
    sp_buf_json_str(&b, me->name);
    sp_buf_puts(&b, ", \"versions\": [\"1\"], \"platform\": \"onnxruntime_onnx\"");
    if (me->pk) {
        sp_model *m = sp_package_model(me->pk);
        for (int k = 0; k < 2; k++) {
            int n;
            const sp_io_info *io = k ? sp_model_outputs(m, &n) : sp_model_inputs(m, &n);
            sp_buf_printf(&b, ", \"%s\": [", k ? "outputs" : "inputs");
            for (int i = 0; i < n; i++) {
                sp_buf_printf(&b, "%s{\"name\": \"%s\", \"datatype\": \"%s\", \"shape\": [", i ? ", " : "",
                              io[i].name, io[i].meta.dtype == SP_DT_F32 ? "FP32" : sp_dtype_str(io[i].meta.dtype));
                for (int d = 0; d < io[i].meta.rank; d++)
                    sp_buf_printf(&b, "%s%lld", d ? ", " : "", (long long)io[i].meta.shape[d]);
                sp_buf_puts(&b, "]}");
            }
            sp_buf_puts(&b, "]");
        }
        sp_buf_printf(&b, ", \"parameters\": {\"task\": \"%s\", \"classes\": %d}", me->pk->mf.task,
                      me->pk->mf.num_classes);
    }
    sp_buf_puts(&b, "}\n");
    return sp_buf_take(&b);
}

static char *status_json(server *s)
{
    sp_buf b = {0};
    pthread_mutex_lock(&s->mu);
    sp_buf_printf(&b, "{\"uptime_seconds\": %.3f, \"ready\": %s, \"queue_depth\": %d, \"queue_capacity\": %d, "
                      "\"workers\": %d,\n \"rss_bytes\": %zu, \"peak_rss_bytes\": %zu,\n \"models\": [",
                  sp_now() - s->t0, atomic_load(&s->ready) ? "true" : "false", s->qlen, s->p.queue,
                  s->p.workers, rss_now(), sp_peak_rss());
    for (int i = 0; i < s->n_models; i++) {
        sp_buf_printf(&b, "%s{\"name\": ", i ? ", " : "");
        sp_buf_json_str(&b, s->models[i].name);
        sp_buf_printf(&b, ", \"state\": \"%s\"}", s->models[i].ready ? "ready" : s->models[i].error[0] ? "failed" : "loading");
    }
    sp_buf_puts(&b, "],\n \"endpoints\": {");
    int first = 1;
    for (int e = 0; e < EP_N; e++) {
        ep_stats *st = &s->eps[e];
        if (!st->served && !st->failed)
            continue;
        double q[3];
        quantiles(st, q);
        sp_buf_printf(&b, "%s\n  \"%s\": {\"served\": %llu, \"failed\": %llu, \"p50_seconds\": %.6f, "
                          "\"p95_seconds\": %.6f, \"p99_seconds\": %.6f}", first ? "" : ",", ep_names[e],
                      (unsigned long long)st->served, (unsigned long long)st->failed, q[0], q[1], q[2]);
        first = 0;
    }
    pthread_mutex_unlock(&s->mu);
    sp_buf_puts(&b, "}}\n");
    return sp_buf_take(&b);
}

static char *metrics_text(server *s)
{
    sp_buf b = {0};
    pthread_mutex_lock(&s->mu);
    sp_buf_printf(&b, "# HELP segpipe_uptime_seconds Seconds since the service started.\n"
                      "# TYPE segpipe_uptime_seconds gauge\nsegpipe_uptime_seconds %.3f\n"
                      "# HELP segpipe_ready 1 when every model is loaded and warmed up.\n"
                      "# TYPE segpipe_ready gauge\nsegpipe_ready %d\n"
                      "# HELP segpipe_queue_depth Jobs waiting for a worker.\n"
                      "# TYPE segpipe_queue_depth gauge\nsegpipe_queue_depth %d\n"
                      "# HELP segpipe_resident_memory_bytes Resident set size.\n"
                      "# TYPE segpipe_resident_memory_bytes gauge\nsegpipe_resident_memory_bytes %zu\n",
                  sp_now() - s->t0, atomic_load(&s->ready), s->qlen, rss_now());
    sp_buf_puts(&b, "# HELP segpipe_model_ready 1 when the model is loaded and warmed up.\n"
                    "# TYPE segpipe_model_ready gauge\n");
    for (int i = 0; i < s->n_models; i++)
        sp_buf_printf(&b, "segpipe_model_ready{model=\"%s\"} %d\n", s->models[i].name, s->models[i].ready);
    sp_buf_puts(&b, "# HELP segpipe_requests_total Requests answered, by endpoint and outcome.\n"
                    "# TYPE segpipe_requests_total counter\n");
    for (int e = 0; e < EP_N; e++)
        sp_buf_printf(&b, "segpipe_requests_total{endpoint=\"%s\",outcome=\"ok\"} %llu\n"
                          "segpipe_requests_total{endpoint=\"%s\",outcome=\"error\"} %llu\n",
                      ep_names[e], (unsigned long long)s->eps[e].served, ep_names[e],
                      (unsigned long long)s->eps[e].failed);
    sp_buf_puts(&b, "# HELP segpipe_request_seconds Request latency (last 2048 requests per endpoint).\n"
                    "# TYPE segpipe_request_seconds summary\n");
    for (int e = 0; e < EP_N; e++) {
        if (!s->eps[e].nlat)
            continue;
        double q[3];
        quantiles(&s->eps[e], q);
        sp_buf_printf(&b, "segpipe_request_seconds{endpoint=\"%s\",quantile=\"0.5\"} %.6f\n"
                          "segpipe_request_seconds{endpoint=\"%s\",quantile=\"0.95\"} %.6f\n"
                          "segpipe_request_seconds{endpoint=\"%s\",quantile=\"0.99\"} %.6f\n",
                      ep_names[e], q[0], ep_names[e], q[1], ep_names[e], q[2]);
    }
    pthread_mutex_unlock(&s->mu);
    return sp_buf_take(&b);
}

static int route_ep(const char *method, const char *url)
{
    int post = !strcmp(method, "POST");
    if (!strcmp(url, "/v2/health/live")) return EP_LIVE;
    if (!strcmp(url, "/v2/health/ready")) return EP_READY;
    if (!strcmp(url, "/v2") || !strcmp(url, "/v2/")) return EP_META;
    if (!strcmp(url, "/v1/ct")) return EP_CT;
    if (!strcmp(url, "/v1/segment-batch")) return EP_SEGMENT;
    if (!strcmp(url, "/v1/status")) return EP_STATUS;
    if (!strcmp(url, "/metrics")) return EP_METRICS;
    if (!strncmp(url, "/v1/results/", 12)) return EP_RESULT;
    if (!strncmp(url, "/v2/models/", 11)) {
        if (sp_has_suffix(url, "/infer")) return post ? EP_INFER : EP_OTHER;
        if (sp_has_suffix(url, "/ready")) return EP_MODEL_READY;
        return EP_MODEL;
    }
    return EP_OTHER;
}

static enum MHD_Result handle(server *s, struct MHD_Connection *c, const char *url, const char *method,
                              req *r, int *ok)
{
    int ep = r->ep, get = !strcmp(method, "GET") || !strcmp(method, "HEAD"), post = !strcmp(method, "POST");
    if (r->too_big) {
        char m[128];
        snprintf(m, sizeof m, "the body is larger than --max-body (%zu bytes)", s->p.max_body);
        return reply_error(c, 413, m, 0);
    }
    switch (ep) {
    case EP_LIVE:
        *ok = 1;
        return reply_json(c, 200, strdup("{\"live\": true}\n"));
    case EP_READY:
        *ok = atomic_load(&s->ready);
        return reply_json(c, *ok ? 200 : 503, strdup(*ok ? "{\"ready\": true}\n" : "{\"ready\": false}\n"));
    case EP_META: {
        char *j = malloc(256);
        snprintf(j, 256, "{\"name\": \"segpipe\", \"version\": \"%s\", \"extensions\": [\"segpipe_ct\"]}\n",
                 SP_VERSION_STRING);
        *ok = 1;
        return reply_json(c, 200, j);
    }
    case EP_STATUS:
        *ok = 1;
        return reply_json(c, 200, status_json(s));
    case EP_METRICS: {
        char *t = metrics_text(s);
        *ok = 1;
        return reply(c, 200, "text/plain; version=0.0.4", t, strlen(t), 0);
    }
    case EP_RESULT: {
        const char *id = url + 12, *slash = strchr(id, '/');
        if (!get || !slash || strcmp(slash, "/labels") || slash - id >= 40)
            return reply_error(c, 404, "unknown path (GET /v1/results/ID/labels)", 0);
        for (const char *q = id; q < slash; q++)
            if (!((*q >= '0' && *q <= '9') || (*q >= 'a' && *q <= 'f')))
                return reply_error(c, 404, "unknown result id", 0);
        char path[512];
        snprintf(path, sizeof path, "%s/%.*s.nii.gz", s->tmpdir, (int)(slash - id), id);
        void *data;
        size_t n;
        if (sp_read_file(path, (size_t)1 << 32, &data, &n))
            return reply_error(c, 404, "unknown or expired result id", 0);
        *ok = 1;
        return reply(c, 200, "application/gzip", data, n, 0);
    }
    default: break;
    }
    if (ep == EP_MODEL || ep == EP_MODEL_READY || ep == EP_INFER) {
        const char *name = url + 11;
        const char *end = strchr(name, '/');
        size_t n = end ? (size_t)(end - name) : strlen(name);
        model_entry *me = find_model(s, name, n);
        if (!me)
            return reply_error(c, 404, "unknown model", 0);
        if (ep == EP_MODEL) {
            if (end && strcmp(end, "/") && strncmp(end, "/versions/", 10))
                return reply_error(c, 404, "unknown path", 0);
            *ok = 1;
            return reply_json(c, 200, model_metadata(me));
        }
        if (ep == EP_MODEL_READY) {
            *ok = me->ready;
            return reply_json(c, me->ready ? 200 : 503, strdup(me->ready ? "{\"ready\": true}\n" : "{\"ready\": false}\n"));
        }
        if (!me->ready)
            return reply_error(c, 503, "the model is not ready", 5);
        const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
        if (ct && strncmp(ct, "application/json", 16))
            return reply_error(c, 415, "the infer endpoint takes application/json (KServe v2 tensors)", 0);
        return submit(s, c, r, EP_INFER, me, 0, NULL, ok);
    }
    if (ep == EP_CT) {
        if (!post)
            return reply_error(c, 405, "POST a .nii or .nii.gz body to /v1/ct?model=NAME", 0);
        const char *name = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "model");
        if (!name && s->n_models == 1)
            name = s->models[0].name;
        model_entry *me = name ? find_model(s, name, strlen(name)) : NULL;
        if (!me)
            return reply_error(c, 404, name ? "unknown model" : "say which model: /v1/ct?model=NAME", 0);
        if (strcmp(me->pk ? me->pk->mf.task : "ct", "ct"))
            return reply_error(c, 422, "this model is not a CT model", 0);
        if (!me->ready)
            return reply_error(c, 503, "the model is not ready", 5);
        const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
        if (ct && strncmp(ct, "application/octet-stream", 24) && strncmp(ct, "application/gzip", 16) &&
            strncmp(ct, "application/x-gzip", 18) && strncmp(ct, "application/x-nifti", 19) &&
            strncmp(ct, "application/x-www-form-urlencoded", 33))
            return reply_error(c, 415, "send the volume as application/octet-stream (.nii or .nii.gz bytes)", 0);
        if (r->len < 2)
            return reply_error(c, 422, "empty body: send a .nii or .nii.gz volume", 0);
        const char *lab = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "labels");
        return submit(s, c, r, EP_CT, me, lab && !strcmp(lab, "1"), NULL, ok);
    }
    if (ep == EP_SEGMENT) {
        if (!post)
            return reply_error(c, 405, "POST photo bytes to /v1/segment-batch?model=NAME", 0);
        const char *name = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "model");
        model_entry *me = name ? find_model(s, name, strlen(name)) : NULL;
        if (!me)
            return reply_error(c, 404, name ? "unknown model" : "say which model: ?model=NAME", 0);
        if (strcmp(me->pk->mf.task, "masks"))
            return reply_error(c, 422, "this model is not a photo masks model", 0);
        if (!me->ready)
            return reply_error(c, 503, "the model is not ready", 5);
        const unsigned char *b = (const unsigned char *)r->body;
        int jpeg = r->len >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff;
        int png = r->len >= 8 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8);
        int webp = r->len >= 12 && !memcmp(b, "RIFF", 4) && !memcmp(b + 8, "WEBP", 4);
        int heif = r->len >= 12 && !memcmp(b + 4, "ftyp", 4);
        if (!jpeg && !png && !webp && !heif)
            return reply_error(c, 415, "send a JPEG, PNG, WebP or HEIC photo", 0);
        const char *masks = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "masks");
        if (masks) {   /* every name must exist */
            char tmp[512];
            snprintf(tmp, sizeof tmp, "%s", masks);
            for (char *sv, *tok = strtok_r(tmp, ",", &sv); tok; tok = strtok_r(NULL, ",", &sv)) {
                int found = 0;
                for (int k = 0; k < me->pk->mf.n_masks; k++)
                    found |= !strcmp(me->pk->mf.mask_name[k], tok);
                if (!found)
                    return reply_error(c, 422, "unknown mask name", 0);
            }
        }
        return submit(s, c, r, EP_SEGMENT, me, 0, masks, ok);
    }
    return reply_error(c, 404, "unknown path", 0);
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                 const char *version, const char *upload_data, size_t *upload_size,
                                 void **con_cls)
{
    server *s = cls;
    req *r = *con_cls;
    (void)version;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r)
            return MHD_NO;
        r->t0 = sp_now();
        r->ep = route_ep(method, url);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > s->p.max_body)
            r->too_big = 1;
        *con_cls = r;
        atomic_fetch_add(&s->inflight, 1);
        return MHD_YES;
    }
    if (*upload_size) {
        if (!r->too_big) {
            if (r->len + *upload_size > s->p.max_body) {
                r->too_big = 1;
                free(r->body);
                r->body = NULL;
            } else {
                if (r->len + *upload_size > r->cap) {
                    size_t nc = r->cap ? r->cap : 65536;
                    while (nc < r->len + *upload_size)
                        nc *= 2;
                    char *nb = realloc(r->body, nc);
                    if (!nb)
                        return MHD_NO;
                    r->body = nb;
                    r->cap = nc;
                }
                memcpy(r->body + r->len, upload_data, *upload_size);
                r->len += *upload_size;
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    int ok = 0;
    enum MHD_Result ret = handle(s, c, url, method, r, &ok);
    record(s, r->ep, sp_now() - r->t0, ok);
    return ret;
}

static void completed_cb(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    server *s = cls;
    req *r = *con_cls;
    (void)c;
    (void)toe;
    if (r) {
        free(r->body);
        free(r);
        *con_cls = NULL;
        atomic_fetch_sub(&s->inflight, 1);
    }
}

/* ---------------------------------------------------------------- startup */

static sp_status warm_up(model_entry *me)
{
    sp_manifest *mf = &me->pk->mf;
    sp_tensor ti;
    if (!strcmp(mf->task, "masks")) {   /* one canvas-sized photo */
        int hc = mf->in_h ? mf->in_h : (mf->long_side + 31) / 32 * 32, wc = mf->in_w ? mf->in_w : hc;
        ti = (sp_tensor){SP_DT_F32, 4, {1, 3, hc, wc}, NULL};
    } else {
        ti = (sp_tensor){SP_DT_F32, 5, {1, mf->channels, mf->patch[0], mf->patch[1], mf->patch[2]}, NULL};
    }
    size_t n = 1;
    for (int d = 0; d < ti.rank; d++)
        n *= (size_t)ti.shape[d];
    float *in = calloc(n, sizeof *in);
    if (!in)
        return sp_fail(SP_ERR_NOMEM, "warm-up: out of memory");
    ti.data = in;
    sp_tensor to[SP_MAX_RANK];
    memset(to, 0, sizeof to);
    int no;
    sp_model_outputs(sp_package_model(me->pk), &no);
    no = no < SP_MAX_RANK ? no : SP_MAX_RANK;
    sp_status st = sp_model_run(sp_package_model(me->pk), &ti, 1, to, no);
    for (int k = 0; k < no; k++)
        sp_tensor_free_data(&to[k]);
    free(in);
    return st;
}

sp_status sp_serve(const sp_serve_params *pp)
{
    server *s = calloc(1, sizeof *s);
    if (!s)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    s->p = pp ? *pp : sp_serve_default_params();
    if (s->p.max_batch < 1)
        s->p.max_batch = 1;
    if (s->p.workers < 1 || s->p.queue < 1 || s->p.timeout <= 0 || s->p.n_models < 1) {
        free(s);
        return sp_fail(SP_ERR_USAGE, "serve needs at least one --model NAME=DIR, workers >= 1, queue >= 1, "
                       "timeout > 0");
    }
    s->t0 = sp_now();
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->qcv, NULL);
    /* SIGTERM/SIGINT go to sigwait below: block them before any thread exists */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    sp_status st = SP_OK;
    struct MHD_Daemon *d = NULL;
    int nworkers = 0;
    snprintf(s->tmpdir, sizeof s->tmpdir, "/tmp/segpipe-serve-XXXXXX");
    if (!mkdtemp(s->tmpdir)) {
        st = sp_fail(SP_ERR_IO, "cannot create a temporary folder: %s", strerror(errno));
        s->tmpdir[0] = 0;
        goto out;
    }
    s->models = calloc((size_t)s->p.n_models, sizeof *s->models);
    s->n_models = s->p.n_models;
    for (int i = 0; i < s->n_models; i++) {
        snprintf(s->models[i].name, sizeof s->models[i].name, "%s", s->p.models[i].name);
        snprintf(s->models[i].dir, sizeof s->models[i].dir, "%s", s->p.models[i].dir);
        for (int k = 0; k < i; k++)
            if (!strcmp(s->models[k].name, s->models[i].name)) {
                st = sp_fail(SP_ERR_USAGE, "model name '%s' given twice", s->models[i].name);
                goto out;
            }
    }
    sp_runtime_params rp = sp_runtime_default_params();
    rp.threads = s->p.threads;
    rp.device = s->p.device;
    if ((st = sp_runtime_create(&rp, &s->rt)))
        goto out;
    /* load every model before listening: a broken package fails startup */
    for (int i = 0; i < s->n_models; i++)
        if ((st = sp_package_load(s->rt, s->models[i].dir, &s->models[i].pk))) {
            sp_fail_prefix(st, "model '%s'", s->models[i].name);
            goto out;
        }
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)s->p.port);
    if (inet_pton(AF_INET, s->p.host, &addr.sin_addr) != 1) {
        st = sp_fail(SP_ERR_USAGE, "--host must be an IPv4 address, got '%s'", s->p.host);
        goto out;
    }
    s->workers = calloc((size_t)s->p.workers, sizeof *s->workers);
    for (int i = 0; i < s->p.workers; i++, nworkers++)
        if (pthread_create(&s->workers[i], NULL, worker_main, s) != 0)
            break;
    d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC,
                         0, NULL, NULL, access_cb, s,
                         MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                         MHD_OPTION_NOTIFY_COMPLETED, completed_cb, s,
                         MHD_OPTION_CONNECTION_LIMIT, (unsigned)(64 + s->p.queue),
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(s->p.timeout + 60),
                         MHD_OPTION_END);
    if (!d) {
        st = sp_fail(SP_ERR_IO, "cannot listen on %s:%d (in use?)", s->p.host, s->p.port);
        goto out;
    }
    /* live now; ready after the warm-up inference of every model */
    for (int i = 0; i < s->n_models; i++) {
        if ((st = warm_up(&s->models[i]))) {
            snprintf(s->models[i].error, sizeof s->models[i].error, "%s", sp_last_error());
            sp_fail_prefix(st, "warm-up of model '%s'", s->models[i].name);
            goto out;
        }
        s->models[i].ready = 1;
    }
    atomic_store(&s->ready, 1);
    if (s->p.on_ready) {
        char url[128];
        snprintf(url, sizeof url, "http://%s:%d", s->p.host, s->p.port);
        s->p.on_ready(url, s->p.user);
    }
    int sig = 0;
    sigwait(&sigs, &sig);
    SP_INFO("signal %d: draining", sig);
    /* stop accepting; let in-flight requests finish */
    MHD_socket lsock = MHD_quiesce_daemon(d);
    if (lsock != MHD_INVALID_SOCKET)
        close(lsock);
    double until = sp_now() + s->p.timeout + 5;
    while (atomic_load(&s->inflight) > 0 && sp_now() < until)
        usleep(10000);
out:
    if (d)
        MHD_stop_daemon(d);
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->qcv);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < nworkers; i++)
        pthread_join(s->workers[i], NULL);
    free(s->workers);
    for (int i = 0; i < s->n_models; i++)
        sp_package_free(s->models[i].pk);
    free(s->models);
    sp_runtime_free(s->rt);
    if (s->tmpdir[0]) {
        for (int i = 0; i < MAX_RESULTS; i++)
            if (s->result_ids[i][0]) {
                char p[512];
                snprintf(p, sizeof p, "%s/%s.nii.gz", s->tmpdir, s->result_ids[i]);
                unlink(p);
            }
        rmdir(s->tmpdir);
    }
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->qcv);
    free(s);
    return st;
}
