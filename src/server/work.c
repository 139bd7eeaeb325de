/*
 * work.c — jobs: per-model bounded queues served fairly (a worker takes the
 * next model in turn that has work, so photos are not starved behind CTs),
 * the worker threads, the CT and photo runs, and the store of asynchronous
 * jobs and kept results.
 *
 * Ids are 128 bits from the OS (getrandom), stored with the owner (the API
 * key that made them); a finished job is kept --result-ttl seconds, the
 * store holds at most --max-jobs entries and --max-stored bytes. Label
 * volumes are kept in memory, so nothing about a patient is left on disk.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------ lifecycle */

job *sp_job_new(server *s, req *r, int kind, model_entry *me)
{
    job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->kind = kind;
    j->me = me;
    j->body = r->body;
    j->len = r->len;
    j->mapped = r->mapped;
    j->reserved = r->reserved;   /* the body's bytes move with it */
    r->body = NULL;
    r->len = r->cap = r->reserved = 0;
    r->mapped = 0;
    j->refs = 1;
    j->t_enq = sp_now();
    j->deadline = j->t_enq + s->p.timeout;
    j->owner = r->owner;
    j->stage = "queued";
    return j;
}

static void drop_body(server *s, job *j)
{
    sp_body_free(j->body, j->len, j->mapped);
    j->body = NULL;
    atomic_fetch_sub(&s->buffered, j->reserved);
    j->reserved = 0;
}

void sp_job_release(server *s, job *j)
{
    if (--j->refs > 0)
        return;
    drop_body(s, j);
    if (j->response)
        MHD_destroy_response(j->response);
    free(j->resp);
    free(j->labels_gz);
    free(j->seg_dcm);
    free(j->scan_gz);
    free(j);
}

int sp_job_enqueue(server *s, job *j)
{
    model_entry *me = j->me;
    if (me->qlen >= s->p.queue || s->stopping)
        return -1;
    if (me->qtail)
        me->qtail->next = j;
    else
        me->qhead = j;
    me->qtail = j;
    me->qlen++;
    s->qtotal++;
    /* the creator's reference becomes the queue's, then the worker's */
    j->lnext = s->live;
    if (s->live)
        s->live->lprev = j;
    s->live = j;
    pthread_cond_signal(&s->qcv);
    return 0;
}

static job *pop(server *s, model_entry *me)
{
    job *j = me->qhead;
    me->qhead = j->next;
    if (!me->qhead)
        me->qtail = NULL;
    j->next = NULL;
    me->qlen--;
    s->qtotal--;
    return j;
}

/* --------------------------------------------------------------- store */

static size_t stored_size(const job *j)
{
    return j->resp_len + j->labels_len + j->seg_len + j->scan_len;
}

static void random_id(char id[ID_HEX + 1])
{
    unsigned char b[ID_HEX / 2];
    size_t got = 0;
    while (got < sizeof b) {
        ssize_t n = getrandom(b + got, sizeof b - got, 0);
        if (n < 0 && errno != EINTR)
            abort();   /* no randomness from the OS: never hand out guessable ids */
        got += n > 0 ? (size_t)n : 0;
    }
    for (size_t i = 0; i < sizeof b; i++)
        snprintf(id + 2 * i, 3, "%02x", b[i]);
}

void sp_job_store(server *s, job *j, int owner)
{
    random_id(j->id);
    j->owner = owner;
    j->stored = 1;
    j->refs++;
    j->snext = s->store;
    s->store = j;
    s->n_stored++;
    j->expires = j->state == JOB_DONE ? sp_now() + s->p.result_ttl : 0;
}

void sp_job_unstore(server *s, job *j)
{
    for (job **pp = &s->store; *pp; pp = &(*pp)->snext)
        if (*pp == j) {
            *pp = j->snext;
            s->n_stored--;
            if (j->state == JOB_DONE)
                s->stored_bytes -= stored_size(j);
            j->stored = 0;
            sp_job_release(s, j);
            return;
        }
}

job *sp_job_find(server *s, const char *id, size_t n, int owner)
{
    if (n != ID_HEX)
        return NULL;
    for (job *j = s->store; j; j = j->snext) {
        unsigned diff = (unsigned)(j->owner ^ owner);
        for (int i = 0; i < ID_HEX; i++)
            diff |= (unsigned char)(j->id[i] ^ id[i]);
        if (!diff)
            return j;
    }
    return NULL;
}

int sp_store_full(server *s)
{
    return s->n_stored >= s->p.max_jobs || s->stored_bytes >= s->p.max_stored;
}

void sp_store_expire(server *s, double now)
{
    job **pp = &s->store;
    while (*pp) {
        job *j = *pp;
        if (j->state == JOB_DONE && j->expires > 0 && now >= j->expires) {
            *pp = j->snext;
            s->n_stored--;
            s->stored_bytes -= stored_size(j);
            j->stored = 0;
            sp_job_release(s, j);
        } else {
            pp = &j->snext;
        }
    }
}

char *sp_job_status_json(server *s, job *j)
{
    static const char *const states[] = {"queued", "running", "done"};
    sp_buf b = {0};
    const char *state = j->state == JOB_DONE ? (j->http == 200 ? "done" : "failed") : states[j->state];
    double now = sp_now();
    sp_buf_printf(&b, "{\"id\": \"%s\", \"state\": \"%s\", \"model\": ", j->id, state);
    sp_buf_json_str(&b, j->me->name);
    sp_buf_printf(&b, ", \"stage\": \"%s\", \"done\": %d, \"total\": %d, \"seconds\": %.3f, "
                      "\"queue_wait_seconds\": %.6f",
                  j->stage, j->done_steps, j->total_steps,
                  (j->state == JOB_DONE ? j->t_end : now) - j->t_enq,
                  (j->state == JOB_QUEUED ? now : j->t_start) - j->t_enq);
    sp_buf_printf(&b, ", \"status_url\": \"/v1/jobs/%s\"", j->id);
    if (j->state == JOB_DONE) {
        sp_buf_printf(&b, ", \"http_status\": %d, \"result_url\": \"/v1/jobs/%s/result\", "
                          "\"expires_in_seconds\": %.0f", j->http, j->id, j->expires - now);
        if (j->labels_gz)
            sp_buf_printf(&b, ", \"labels_url\": \"/v1/jobs/%s/labels\"", j->id);
        if (j->seg_dcm)
            sp_buf_printf(&b, ", \"%s\": \"/v1/jobs/%s/%s\"", j->want_seg == 2 ? "dicom_rtstruct_url"
                          : "dicom_seg_url", j->id, j->want_seg == 2 ? "dicom-rtstruct" : "dicom-seg");
        if (j->scan_gz)
            sp_buf_printf(&b, ", \"scan_url\": \"/v1/jobs/%s/scan\"", j->id);
    }
    (void)s;
    sp_buf_puts(&b, "}\n");
    return sp_buf_take(&b);
}

int sp_watchers_take(server *s, job *j, double now, struct MHD_Connection **out, int max)
{
    int n = 0;
    for (req **pp = &s->watchers; *pp && n < max;) {
        req *r = *pp;
        if ((j && r->watch == j) || now >= r->watch_until) {
            *pp = r->wnext;
            s->n_watchers--;
            out[n++] = r->conn;
        } else {
            pp = &r->wnext;
        }
    }
    return n;
}

/* ------------------------------------------------------------------ runs */

static void fail_job(job *j, sp_status st)
{
    j->http = sp_http_status(st);
    j->resp = sp_error_json(j->http, sp_last_error());
}

static void ct_progress(const char *stage, int done, int total, void *user)
{
    job *j = user;   /* read by status requests: a torn pair only shows an old count */
    j->stage = stage;
    j->done_steps = done;
    j->total_steps = total;
}

enum { OUT_LABELS, OUT_SEG, OUT_SCAN };

/* The labels (.nii.gz or DICOM-SEG) or the input scan (.nii.gz) as bytes:
 * written to a private file by the library's writers, read back, and
 * removed at once. */
static sp_status file_bytes(server *s, job *j, int what, const sp_ct_result *res, const sp_volume *v,
                            void **out, size_t *len)
{
    char id[ID_HEX + 1], path[512];
    snprintf(id, sizeof id, "%016llx%016llx", (unsigned long long)(uintptr_t)j, (unsigned long long)sp_now());
    snprintf(path, sizeof path, "%s/%s-%d.%s", s->tmpdir, id, what, what == OUT_SEG ? "dcm" : "nii.gz");
    const sp_package *pk = j->me->pk;
    sp_status st;
    if (what == OUT_SCAN)   /* CT in HU as int16; other scans keep their values */
        st = sp_volume_write(path, v, !strcmp(sp_package_task(pk), "ct") ? SP_DT_I16 : SP_DT_F32);
    else if (what == OUT_SEG) {   /* DICOM-SEG or RTSTRUCT with standard codes (docs/dicom.md) */
        char desc[96];
        snprintf(desc, sizeof desc, "segpipe %.56s", j->me->name);   /* the model as the service names it */
        sp_dicom_params dp = sp_dicom_default_params();
        dp.kind = j->want_seg == 2 ? SP_DICOM_RTSTRUCT : SP_DICOM_SEG;
        dp.description = desc;
        dp.codes_json = sp_package_dicom_codes(pk);
        st = sp_labels_write_dicom(path, sp_ct_result_labels(res, NULL), v, sp_package_labels(pk),
                                   sp_package_num_classes(pk), &dp);
    } else
        st = sp_labels_write_named(path, sp_ct_result_labels(res, NULL), v, sp_package_labels(pk),
                                   sp_package_num_classes(pk));
    if (!st)
        st = sp_read_file(path, (size_t)1 << 34, out, len);
    unlink(path);
    return st;
}

/* Give a CT job with labels an id in the store (asynchronous jobs have one
 * already), dropping the oldest kept synchronous result when it is full. */
static void keep_result(server *s, job *j)
{
    pthread_mutex_lock(&s->mu);
    while (!j->stored && sp_store_full(s)) {
        job *old = NULL;
        for (job *q = s->store; q; q = q->snext)
            if (!q->async && q->state == JOB_DONE)
                old = q;
        if (!old)
            break;
        sp_job_unstore(s, old);
    }
    if (!j->stored)
        sp_job_store(s, j, j->owner);
    pthread_mutex_unlock(&s->mu);
}

/* pthread_cond_timedwait for at most ms milliseconds */
static void wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, long ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(cv, mu, &ts);
}

size_t sp_memory_room(const server *s)
{
    return s->max_memory > s->mem_base ? s->max_memory - s->mem_base : 0;
}

/* memory taken now: admitted runs and answers not yet sent (under mu) */
static size_t mem_busy(server *s)
{
    return s->mem_used + atomic_load(&s->answer_bytes);
}

/* The 413 message of a job that could never fit: what it needs, what is allowed. */
static void too_big(const server *s, const job *j, const char *what, size_t need, char *buf, size_t cap)
{
    snprintf(buf, cap, "this %s needs about %.2f GB to process with model '%s'; the service allows %.2f GB per job "
             "(--max-memory %.2f GB less %.2f GB for the loaded models)", what, need / 1e9, j->me->name,
             sp_memory_room(s) / 1e9, s->max_memory / 1e9, s->mem_base / 1e9);
}

/* Memory admission (--max-memory): a CT job runs once its estimated peak
 * fits beside the running ones' and what the service held after warm-up;
 * one that could never fit is refused (413). 0: admitted (*held: bytes to
 * give back with mem_release), else the HTTP status set on the job. */
static int mem_admit(server *s, job *j, const sp_volume *v, const sp_ct_params *cp, size_t *held)
{
    size_t need = 0;
    *held = 0;
    sp_status st = sp_ct_memory_estimate(j->me->pk, v, cp, &need);
    if (st)
        return fail_job(j, st), j->http;
    j->memory_estimate = need;
    size_t room = sp_memory_room(s);
    if (need > room) {
        char msg[256];
        too_big(s, j, "scan", need, msg, sizeof msg);
        j->http = 413;
        j->resp = sp_error_json(413, msg);
        return 413;
    }
    j->stage = "waiting for memory";
    pthread_mutex_lock(&s->mu);
    j->me->ct_need = need;
    while (mem_busy(s) + need > room && !j->cancel) {
        wait_ms(&s->mem_cv, &s->mu, 200);
    }
    int go = mem_busy(s) + need <= room;
    if (go)
        s->mem_used += need;
    pthread_mutex_unlock(&s->mu);
    if (!go) {
        fail_job(j, sp_fail(SP_ERR_CANCELLED, "cancelled while waiting for memory"));
        return j->http;
    }
    *held = need;
    return 0;
}

/* how the service decodes a model's photos: its rule, --max-pixels */
static sp_image_params photo_params(const server *s, const model_entry *me)
{
    sp_image_params ip = sp_masks_image_params(me->pk, 0);
    if (s->p.max_pixels)
        ip.max_pixels = s->p.max_pixels;
    return ip;
}

int sp_photo_memory(server *s, job *j, const char **msg)
{
    static __thread char buf[256];
    sp_image_params ip = photo_params(s, j->me);
    int n = 0;
    for (const char *m = j->masks; *m; m++)
        n += m == j->masks || *m == ',';
    size_t need = 0, room = sp_memory_room(s);
    if (sp_masks_memory_estimate(j->me->pk, j->body, j->len, &ip, n, &need))
        return 0;   /* the decoder says what is wrong with it, in its own answer */
    j->memory_estimate = need;
    if (need <= room)
        return 0;
    too_big(s, j, "photo", need, buf, sizeof buf);
    *msg = buf;
    return 413;
}

static void mem_release(server *s, size_t held)
{
    pthread_mutex_lock(&s->mu);
    s->mem_used -= held;
    pthread_cond_broadcast(&s->mem_cv);
    pthread_cond_broadcast(&s->qcv);   /* queued CT jobs may fit now */
    pthread_mutex_unlock(&s->mu);
}

static void ct_reply(server *s, job *j, const sp_ct_result *res, double t_read);

static void run_ct(server *s, job *j)
{
    sp_volume *v = NULL;
    sp_ct_result *res = NULL;
    sp_read_params rp = sp_read_default_params();
    rp.cancel = &j->cancel;              /* a 504, DELETE or drain kills a DICOM reader at once */
    rp.max_memory = sp_memory_room(s);   /* a DICOM series' decoding (a child process) within --max-memory */
    sp_ct_params hp = sp_ct_default_params();
    hp.threads = s->p.threads;
    hp.tile_batch = s->tile_batch;
    sp_ct_check chk = {j->me->pk, &hp};   /* the run's grid and tile limits, from a NIfTI header */
    rp.check_header = sp_ct_header_check;
    rp.check_user = &chk;
    j->stage = "read";
    double t0 = sp_now();
    sp_status st = sp_volume_read_mem(j->body, j->len, "request body", &rp, &v);
    drop_body(s, j);
    if (st) {
        sp_volume_free(v);
        return fail_job(j, st);
    }
    double t_read = sp_now() - t0;
    if (j->want_seg && !sp_volume_from_dicom(v)) {
        sp_volume_free(v);
        return fail_job(j, sp_fail(SP_ERR_INPUT, "output=dicom-seg/dicom-rtstruct needs a DICOM series (sent as a "
                                                 "zip): the result references the series it was made from"));
    }
    if (j->want_scan && (st = file_bytes(s, j, OUT_SCAN, NULL, v, &j->scan_gz, &j->scan_len))) {
        sp_volume_free(v);
        return fail_job(j, st);
    }
    sp_ct_params cp = sp_ct_default_params();
    cp.roi_subset = j->roi[0] ? j->roi : NULL;
    cp.keep_border = j->keep_border;
    cp.largest_component = j->largest_component;
    cp.threads = s->p.threads;
    cp.tile_batch = s->tile_batch;
    cp.cancel = &j->cancel;
    cp.progress = ct_progress;
    cp.progress_user = j;
    cp.release_input = !j->want_seg;   /* the labels writer reads only the geometry */
    size_t held = 0;
    if (mem_admit(s, j, v, &cp, &held)) {
        sp_volume_free(v);
        return;
    }
    j->stage = "running";   /* the run's progress names its stages from here */
    st = sp_ct_run_inplace(sp_job_pk(j->me), v, &cp, &res);
    if (!st && j->want_labels)
        st = file_bytes(s, j, OUT_LABELS, res, v, &j->labels_gz, &j->labels_len);
    if (!st && j->want_seg)
        st = file_bytes(s, j, OUT_SEG, res, v, &j->seg_dcm, &j->seg_len);
    mem_release(s, held);
    if (st) {
        fail_job(j, st);
        sp_ct_result_free(res);
        sp_volume_free(v);
        return;
    }
    ct_reply(s, j, res, t_read);
    sp_ct_result_free(res);
    sp_volume_free(v);
}

/* A CT job's JSON answer: timings, where its files are, passport, statistics. */
static void ct_reply(server *s, job *j, const sp_ct_result *res, double t_read)
{
    j->t_end = sp_now();
    sp_buf b = {0};
    sp_buf_puts(&b, "{\"model\": ");
    sp_buf_json_str(&b, j->me->name);
    if (sp_package_demo(j->me->pk))
        sp_buf_puts(&b, ", \"demo_model\": true, \"note\": \"demo model - not for real scans\"");
    sp_buf_printf(&b, ", \"queue_wait_seconds\": %.6f, \"processing_seconds\": %.6f, \"memory_estimate_bytes\": %zu,"
                  "\n \"seconds\": {\"read\": %.6f", j->t_start - j->t_enq, j->t_end - j->t_start, j->memory_estimate,
                  t_read);
    const sp_timings *t = sp_ct_result_timings(res);
    for (int i = 0; i < t->n; i++)
        sp_buf_printf(&b, ", \"%s\": %.6f", t->stage[i].name, t->stage[i].seconds);
    sp_buf_puts(&b, "},\n");
    if (j->want_labels || j->want_seg || j->want_scan) {
        keep_result(s, j);
        sp_buf_printf(&b, " \"labels_id\": \"%s\",", j->id);
        if (j->want_labels)
            sp_buf_printf(&b, " \"labels_url\": \"/v1/results/%s/labels\",", j->id);
        if (j->want_seg)
            sp_buf_printf(&b, " \"%s\": \"/v1/results/%s/%s\",", j->want_seg == 2 ? "dicom_rtstruct_url"
                          : "dicom_seg_url", j->id, j->want_seg == 2 ? "dicom-rtstruct" : "dicom-seg");
        if (j->want_scan)
            sp_buf_printf(&b, " \"scan_url\": \"/v1/results/%s/scan\",", j->id);
        sp_buf_puts(&b, "\n");
    }
    sp_buf_puts(&b, " \"passport\": ");
    const char *pj = sp_ct_result_passport_json(res);
    sp_buf_puts(&b, pj ? pj : "null");
    const sp_passport *ps = sp_ct_result_passport(res);
    const char *sj = ps ? sp_passport_statistics_json(ps) : NULL;
    sp_buf_puts(&b, ",\n \"statistics\": ");   /* TotalSegmentator's statistics.json */
    sp_buf_puts(&b, sj ? sj : "null");
    sp_buf_puts(&b, "}\n");
    j->resp = sp_buf_take(&b);
    j->http = j->resp ? 200 : 503;
}

/* One inference for a batch of photo jobs (same model): the photos are
 * decoded, and their replies built, in parallel on the pool around it. */
typedef struct seg_ctx {
    job **js;
    sp_image **imgs;
    sp_image_params ip;
    sp_masks_result **res;
    int m;
    double t_end;
} seg_ctx;

static void seg_reply(void *vc, int64_t b, int64_t e, int w)
{
    seg_ctx *c = vc;
    for (int64_t i = b; i < e; i++) {
        job *j = c->js[i];
        sp_masks_result *r = c->res[i];
        sp_buf bf = {0};
        sp_buf_puts(&bf, "{\"model\": ");
        sp_buf_json_str(&bf, j->me->name);
        if (sp_package_demo(j->me->pk))
            sp_buf_puts(&bf, ", \"demo_model\": true, \"note\": \"demo model - not for real photos\"");
        const sp_image *im = c->imgs[i];
        sp_buf_printf(&bf, ", \"width\": %d, \"height\": %d, \"orientation\": %d, \"decoded_width\": %d, "
                           "\"decoded_height\": %d, \"decode_scale\": %d, \"batch_size\": %d, "
                           "\"queue_wait_seconds\": %.6f, \"processing_seconds\": %.6f, \"masks\": ",
                      r->width, r->height, im->orientation, im->width, im->height, im->scale_denom, c->m,
                      j->t_start - j->t_enq, c->t_end - j->t_start);
        char *mj = NULL;
        sp_status st = sp_masks_encode(r, j->masks, &mj, NULL, NULL);
        sp_buf_puts(&bf, mj ? mj : "{}");
        free(mj);
        if (st) {
            sp_buf_free(&bf);
            fail_job(j, st);
            continue;
        }
        sp_buf_puts(&bf, "}\n");
        j->resp = sp_buf_take(&bf);
        j->http = j->resp ? 200 : 503;
        j->batch_size = c->m;
    }
}

/* /v1/classify: one inference for the batch's photos, an answer each */
static void classify_batch(server *s, job **js, sp_image **imgs, int m)
{
    sp_classify_params cp = sp_classify_default_params();
    cp.threads = s->p.threads;
    sp_classify_result **res = NULL;
    sp_status st = sp_classify_run(sp_job_pk(js[0]->me), imgs, m, &cp, &res, NULL);
    double t_end = sp_now();
    for (int i = 0; i < m; i++) {
        job *j = js[i];
        if (st) {
            fail_job(j, st == SP_ERR_USAGE ? SP_ERR_INPUT : st);
            continue;
        }
        sp_buf bf = {0};
        sp_buf_puts(&bf, "{\"model\": ");
        sp_buf_json_str(&bf, j->me->name);
        if (sp_package_demo(j->me->pk))
            sp_buf_puts(&bf, ", \"demo_model\": true, \"note\": \"demo model - not for real photos\"");
        char *top = sp_classify_json(res[i]);
        sp_buf_printf(&bf, ", \"width\": %d, \"height\": %d, \"orientation\": %d, \"batch_size\": %d, "
                           "\"queue_wait_seconds\": %.6f, \"processing_seconds\": %.6f, %s\n",
                      imgs[i]->out_width, imgs[i]->out_height, imgs[i]->orientation, m, j->t_start - j->t_enq,
                      t_end - j->t_start, top ? top + 1 : "\"top\": []}");
        free(top);
        sp_classify_result_free(res[i]);
        j->resp = bf.oom ? NULL : sp_buf_take(&bf);
        sp_buf_free(&bf);
        j->http = j->resp ? 200 : 503;
        j->batch_size = m;
    }
    free(res);
}

static void run_segment_batch(server *s, job **js, int n)
{
    sp_image *all[64], *imgs[64];
    job *ok[64];
    int m = 0;
    seg_ctx c = {js, all, photo_params(s, js[0]->me), NULL, 0, 0};
    const void *bufs[64];
    size_t sizes[64];
    sp_status sts[64];
    char *errs[64];
    for (int i = 0; i < n; i++)
        bufs[i] = js[i]->body, sizes[i] = js[i]->len;
    sp_images_read(n, NULL, bufs, sizes, &c.ip, all, sts, errs);
    for (int i = 0; i < n; i++) {
        drop_body(s, js[i]);
        if (all[i]) {
            imgs[m] = all[i];
            ok[m++] = js[i];
        } else {
            js[i]->http = sp_http_status(sts[i] == SP_ERR_NOMEM ? SP_ERR_NOMEM : SP_ERR_INPUT);
            js[i]->resp = sp_error_json(js[i]->http, errs[i] ? errs[i] : "out of memory");
        }
        free(errs[i]);
    }
    if (m && !strcmp(sp_package_task(js[0]->me->pk), "classify"))
        classify_batch(s, ok, imgs, m);
    sp_pool *pool = sp_pool_get(s->p.threads);
    if (m && strcmp(sp_package_task(js[0]->me->pk), "classify")) {
        sp_masks_params mp = sp_masks_default_params();
        mp.threads = s->p.threads;
        sp_masks_result **res = NULL;
        sp_status st = sp_masks_run(sp_job_pk(js[0]->me), imgs, m, &mp, &res, NULL);
        if (st) {
            for (int i = 0; i < m; i++)
                fail_job(ok[i], st == SP_ERR_USAGE ? SP_ERR_INPUT : st);
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

/* ---------------------------------------------------------------- workers */

/* Mark done and wake the waiting connection (caller holds s->mu; the
 * connection is resumed by the caller after unlocking). */
static struct MHD_Connection *finish(server *s, job *j)
{
    if (!j->resp && !j->response) {
        j->http = 503;
        j->resp = sp_error_body(j->kind == EP_INFER, 503, "out of memory");
    }
    j->resp_len = j->resp ? strlen(j->resp) : 0;
    j->state = JOB_DONE;
    j->stage = "done";
    if (!j->t_end)
        j->t_end = sp_now();
    if (j->stored) {
        j->expires = sp_now() + s->p.result_ttl;
        s->stored_bytes += stored_size(j);
    }
    if (j->lprev)   /* off the live list */
        j->lprev->lnext = j->lnext;
    else if (s->live == j)
        s->live = j->lnext;
    if (j->lnext)
        j->lnext->lprev = j->lprev;
    j->lprev = j->lnext = NULL;
    struct MHD_Connection *c = j->conn;
    j->conn = NULL;
    return c;
}

/* The next model with work, in turn (caller holds s->mu). */
/* A job that needs more memory than is free now (a photo: its estimate; a
 * CT: its model's last run's) stays queued instead of holding a worker
 * while it waits; a cancelled one is taken at once (to answer 504). */
static int mem_waits(server *s, const model_entry *me)
{
    const job *j = me->qhead;
    size_t need = j->kind == EP_CT ? me->ct_need : j->memory_estimate;
    size_t busy = mem_busy(s);
    return !j->cancel && need && busy && busy + need > sp_memory_room(s);
}

static model_entry *next_model(server *s)
{
    for (int k = 0; k < s->n_models; k++) {
        model_entry *me = &s->models[(s->rr + k) % s->n_models];
        if (me->qhead && !mem_waits(s, me)) {
            s->rr = (int)(me - s->models + 1) % s->n_models;
            return me;
        }
    }
    return NULL;
}

/* Photos for the same model that arrive within the batch window join one
 * inference, as many as memory allows (*need: the batch's estimate, the
 * first photo's on entry); caller holds s->mu, returns with it held. */
static int gather_batch(server *s, model_entry *me, job **batch, size_t *need)
{
    int nb = 1, cap = s->p.max_batch, nin;
    int64_t mb = sp_model_inputs(sp_package_model(me->pk), &nin)[0].meta.shape[0];
    if (mb > 0 && mb < cap)
        cap = (int)mb;
    if (cap > 64)
        cap = 64;
    double until = sp_now() + s->p.batch_window_ms / 1000.0;
    for (;;) {
        while (me->qhead && nb < cap) {
            if (!me->qhead->cancel && mem_busy(s) + *need + me->qhead->memory_estimate > sp_memory_room(s))
                return nb;   /* the batch takes what memory allows; the rest waits its turn */
            job *q = pop(s, me);
            if (q->cancel) {   /* timed out or deleted: its connection was answered already */
                finish(s, q);
                sp_job_release(s, q);
                continue;
            }
            q->state = JOB_RUNNING;
            q->t_start = sp_now();
            *need += q->memory_estimate;
            batch[nb++] = q;
        }
        double now = sp_now();
        if (nb >= cap || now >= until || s->stopping)
            return nb;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double wake = (double)ts.tv_sec + ts.tv_nsec * 1e-9 + (until - now);
        ts.tv_sec = (time_t)wake;
        ts.tv_nsec = (long)((wake - (double)ts.tv_sec) * 1e9);
        pthread_cond_timedwait(&s->qcv, &s->mu, &ts);
    }
}

static void run_jobs(server *s, job **batch, int nb)
{
    job *j = batch[0];
    pthread_mutex_unlock(&s->mu);
    if (j->kind == EP_SEGMENT)
        run_segment_batch(s, batch, nb);
    else if (j->kind == EP_CT)
        run_ct(s, j);
    else
        sp_kserve_infer(s, j, sp_job_pk(j->me));
    pthread_mutex_lock(&s->mu);
}

static __thread int t_dev;   /* this worker's device (index into s->rts) */

sp_package *sp_job_pk(const model_entry *me)
{
    return me->gpk[t_dev] ? me->gpk[t_dev] : me->pk;
}

void *sp_worker_main(void *arg)
{
    server *s = arg;
    t_dev = atomic_fetch_add(&s->next_worker, 1) % (s->ndev > 0 ? s->ndev : 1);
    pthread_mutex_lock(&s->mu);
    for (;;) {
        model_entry *me;
        while (!(me = next_model(s)) && !s->stopping) {
            if (!s->qtotal) {
                pthread_cond_wait(&s->qcv, &s->mu);
                continue;
            }
            /* jobs wait for memory: answers freed without the lock may not wake us, so look again soon */
            wait_ms(&s->qcv, &s->mu, 100);
        }
        if (!me)
            break;
        job *batch[64];
        batch[0] = pop(s, me);
        job *j = batch[0];
        if (j->cancel) {   /* timed out or deleted while queued */
            j->http = 504;
            j->resp = sp_error_body(j->kind == EP_INFER, 504, "cancelled before it ran");
        } else {
            j->state = JOB_RUNNING;
            j->stage = "running";
            j->t_start = sp_now();
            s->running++;
        }
        size_t need = j->kind != EP_CT ? j->memory_estimate : 0;
        int nb = !j->cancel && j->kind == EP_SEGMENT ? gather_batch(s, me, batch, &need) : 1;
        if (!j->cancel) {
            s->mem_used += need;   /* photos and KServe: reserved here; a CT run reserves its own */
            double t0 = sp_now();
            run_jobs(s, batch, nb);
            s->dev_jobs[t_dev] += (uint64_t)nb;
            s->dev_busy[t_dev] += sp_now() - t0;
            s->mem_used -= need;
            if (need) {   /* waiting jobs may fit now */
                pthread_cond_broadcast(&s->mem_cv);
                pthread_cond_broadcast(&s->qcv);
            }
            s->running--;
        }
        sp_stats_record(me, batch, nb, sp_now());
        struct MHD_Connection *wake[64 + MAX_WATCHERS];
        int nw = 0;
        for (int k = 0; k < nb; k++) {
            if ((wake[nw] = finish(s, batch[k])))
                nw++;
            if (batch[k]->stored)   /* long polls on it */
                nw += sp_watchers_take(s, batch[k], -1, wake + nw, MAX_WATCHERS + 64 - nw);
        }
        for (int k = 0; k < nb; k++)
            sp_job_release(s, batch[k]);
        pthread_mutex_unlock(&s->mu);
        for (int k = 0; k < nw; k++)
            MHD_resume_connection(wake[k]);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}
