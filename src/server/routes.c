/*
 * routes.c — the endpoints (docs/service.md). Health, metadata, status and
 * metrics answer at once; CT, photo and tensor requests become jobs:
 * synchronous ones suspend their connection until the job is done (or the
 * housekeeper answers 504), asynchronous ones (/v1/jobs) answer 202 with an
 * unguessable id that only the API key that made the job can read.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#define SP_MAX_MASKS_QUERY 64

int sp_route_ep(const char *url)
{
    if (!strcmp(url, "/v2/health/live")) return EP_LIVE;
    if (!strcmp(url, "/v2/health/ready")) return EP_READY;
    if (!strcmp(url, "/v2") || !strcmp(url, "/v2/")) return EP_META;
    if (!strcmp(url, "/v1/ct")) return EP_CT;
    if (!strcmp(url, "/v1/segment-batch")) return EP_SEGMENT;
    if (!strcmp(url, "/v1/classify")) return EP_CLASSIFY;
    if (!strcmp(url, "/v1/status")) return EP_STATUS;
    if (!strcmp(url, "/v1/models")) return EP_MODELS;
    if (sp_ui_path(url)) return EP_UI;
    if (!strcmp(url, "/metrics")) return EP_METRICS;
    if (!strncmp(url, "/v1/results/", 12)) return EP_RESULT;
    if (!strcmp(url, "/v1/jobs") || !strncmp(url, "/v1/jobs/", 9)) return EP_JOBS;
    if (!strcmp(url, "/v2/repository/index") || !strncmp(url, "/v2/repository/models/", 22)) return EP_REPO;
    if (!strcmp(url, "/v2/models/stats")) return EP_STATS;
    if (!strncmp(url, "/v2/models/", 11)) {
        size_t n = strlen(url);
        if (n > 6 && !strcmp(url + n - 6, "/stats")) return EP_STATS;
        if (n > 6 && !strcmp(url + n - 6, "/infer")) return EP_INFER;
        if (n > 6 && !strcmp(url + n - 6, "/ready")) return EP_MODEL_READY;
        return EP_MODEL;
    }
    return EP_OTHER;
}

model_entry *sp_find_model(server *s, const char *name, size_t n)
{
    for (int i = 0; i < s->n_models; i++)
        if (strlen(s->models[i].name) == n && !strncmp(s->models[i].name, name, n))
            return &s->models[i];
    return NULL;
}

static enum MHD_Result not_allowed(struct MHD_Connection *c, const char *allowed)
{
    char m[96];
    snprintf(m, sizeof m, "method not allowed here (allowed: %s)", allowed);
    return sp_http_error(c, 405, m, 0);
}

/* ------------------------------------------------------------ submission */

/* Queue a synchronous job and suspend the connection until it is done. */
static enum MHD_Result submit_sync(server *s, struct MHD_Connection *c, req *r, job *j, int *ok)
{
    pthread_mutex_lock(&s->mu);
    if (sp_job_enqueue(s, j)) {
        sp_job_release(s, j);
        pthread_mutex_unlock(&s->mu);
        return sp_http_error(c, 503, "the queue for this model is full; retry later", 2);
    }
    j->refs++;   /* the request's */
    j->conn = c;
    r->job = j;
    *ok = -1;
    MHD_suspend_connection(c);
    pthread_mutex_unlock(&s->mu);
    return MHD_YES;
}

/* The answer of a synchronous job once resumed. */
static enum MHD_Result answer_sync(server *s, struct MHD_Connection *c, req *r, int *ok)
{
    job *j = r->job;
    pthread_mutex_lock(&s->mu);
    if (j->state != JOB_DONE && !j->timed_out) {   /* woken early: wait on */
        j->conn = c;
        *ok = -1;
        MHD_suspend_connection(c);
        pthread_mutex_unlock(&s->mu);
        return MHD_YES;
    }
    int http = j->state == JOB_DONE ? j->http : 504;
    struct MHD_Response *stream = j->state == JOB_DONE ? j->response : NULL;
    j->response = NULL;
    if (stream) {   /* a large answer written as it is sent */
        pthread_mutex_unlock(&s->mu);
        *ok = 1;
        return sp_http_send(c, http, stream, j->resp_ctype ? j->resp_ctype : "application/json", 0);
    }
    if (j->state == JOB_DONE && http == 200 && j->want_seg && j->seg_dcm) {   /* the DICOM file itself */
        void *copy = malloc(j->seg_len);
        size_t n = j->seg_len;
        if (copy)
            memcpy(copy, j->seg_dcm, n);
        pthread_mutex_unlock(&s->mu);
        *ok = copy != NULL;
        return copy ? sp_http_reply(c, 200, "application/dicom", copy, n, 0) : sp_http_error(c, 503, "out of memory", 2);
    }
    char *body = j->state == JOB_DONE ? j->resp : NULL;
    size_t len = j->resp_len;
    if (body && !j->stored)
        j->resp = NULL;
    else if (body)
        body = strdup(body);
    pthread_mutex_unlock(&s->mu);
    if (http == 504 || !body)
        return sp_http_error(c, 504, "the request waited and ran past --timeout", 0);
    *ok = http == 200;
    return sp_http_reply(c, http, "application/json", body, len, http == 503 ? 2 : 0);
}

static model_entry *model_arg(server *s, struct MHD_Connection *c, const char **err)
{
    const char *name = sp_query_arg(c, "model");
    if (!name && s->n_models == 1)
        name = s->models[0].name;
    model_entry *me = name ? sp_find_model(s, name, strlen(name)) : NULL;
    if (!me)
        *err = name ? "unknown model" : "say which model: ?model=NAME";
    return me;
}

/* "JPEG", "PNG", "WebP", "HEIC" for a photo's first bytes, else NULL */
static const char *photo_kind(const req *r)
{
    const unsigned char *b = (const unsigned char *)r->body;
    if (r->len >= 3 && b[0] == 0xff && b[1] == 0xd8 && b[2] == 0xff)
        return "JPEG";
    if (r->len >= 8 && !memcmp(b, "\x89PNG\r\n\x1a\n", 8))
        return "PNG";
    if (r->len >= 12 && !memcmp(b, "RIFF", 4) && !memcmp(b + 8, "WEBP", 4))
        return "WebP";
    if (r->len >= 12 && !memcmp(b + 4, "ftyp", 4))
        return "HEIC";
    return NULL;
}

/* "NIfTI volume", "gzip file (a .nii.gz?)", "zip" for a volume's first bytes */
static const char *volume_kind(const req *r)
{
    const unsigned char *b = (const unsigned char *)r->body;
    if (r->len >= 2 && b[0] == 0x1f && b[1] == 0x8b)
        return "gzip file (a .nii.gz volume?)";
    if (r->len >= 4 && !memcmp(b, "PK\3\4", 4))
        return "zip file (a DICOM series?)";
    if (r->len >= 348 && ((b[0] == 0x5c && b[1] == 1) || (b[0] == 1 && b[1] == 0x5c) || (b[0] == 0x1c && b[1] == 2)))
        return "NIfTI volume";
    return NULL;
}

/* ------------------------------------------------------ query parameters */

/* Every query parameter must be one the endpoint takes: a typo such as
 * roi_subet would otherwise be ignored silently (issue #36). */
typedef struct arg_check {
    const char *const *allowed;
    char bad[64];
} arg_check;

static enum MHD_Result arg_seen(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void)kind;
    (void)value;
    arg_check *a = cls;
    for (const char *const *k = a->allowed; *k; k++)
        if (!strcmp(*k, key))
            return MHD_YES;
    size_t n = 0;   /* the name as sent, printable ASCII only, cut short */
    for (const char *p = key; *p && n < sizeof a->bad - 4; p++)
        a->bad[n++] = (*p > 32 && *p < 127 && *p != '"' && *p != '\\') ? *p : '?';
    a->bad[n] = 0;
    if (!n)
        snprintf(a->bad, sizeof a->bad, "(empty)");
    return MHD_NO;
}

static const char *const VOLUME_ARGS[] = {"model", "labels", "roi_subset", "keep_border", "largest_component",
                                          "output", "scan", NULL};
static const char *const PHOTO_ARGS[] = {"model", "masks", NULL};
static const char *const CLASSIFY_ARGS[] = {"model", NULL};
static const char *const JOB_ARGS[] = {"wait", NULL};

/* 0, or 400 with msg naming the first parameter the endpoint does not take */
static int args_known(struct MHD_Connection *c, const char *const *allowed, char *msg, size_t cap)
{
    arg_check a = {allowed, ""};
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, arg_seen, &a);
    if (!a.bad[0])
        return 0;
    sp_buf b = {0};
    for (const char *const *k = allowed; *k; k++)
        sp_buf_printf(&b, "%s%s", k == allowed ? "" : ", ", *k);
    snprintf(msg, cap, "unknown query parameter '%s' (this endpoint takes: %s)", a.bad, b.s ? b.s : "none");
    sp_buf_free(&b);
    return 400;
}

/* a 0/1 flag (also false/true); 0, or 400 with msg */
static int flag_arg(struct MHD_Connection *c, const char *name, int *out, char *msg, size_t cap)
{
    const char *v = sp_query_arg(c, name);
    *out = 0;
    if (!v)
        return 0;
    if (!strcmp(v, "1") || !strcmp(v, "true"))
        return *out = 1, 0;
    if (!strcmp(v, "0") || !strcmp(v, "false"))
        return 0;
    snprintf(msg, cap, "query parameter '%s' must be 0 or 1", name);
    return 400;
}

/* roi_subset: known structure names of the model, comma-separated */
static int roi_arg(struct MHD_Connection *c, const model_entry *me, char *roi, size_t roi_cap, char *msg,
                   size_t cap)
{
    const char *v = sp_query_arg(c, "roi_subset");
    roi[0] = 0;
    if (!v)
        return 0;
    if (!*v || strlen(v) >= roi_cap)
        return snprintf(msg, cap, "query parameter 'roi_subset' must list structure names (at most %zu bytes)",
                        roi_cap - 1), 400;
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s", v);
    for (char *sv, *tok = strtok_r(tmp, ",", &sv); tok; tok = strtok_r(NULL, ",", &sv)) {
        int found = 0;
        for (int l = 1; l < sp_package_num_classes(me->pk) && !found; l++)
            found = !strcmp(sp_package_label(me->pk, l), tok);
        if (!found)
            return snprintf(msg, cap, "query parameter 'roi_subset': model '%s' has no structure '%.64s'", me->name,
                            tok), 400;
    }
    snprintf(roi, roi_cap, "%s", v);
    return 0;
}

/* The options of a volume request (docs/service.md), into j; 0 or 400 */
static int volume_args(struct MHD_Connection *c, const model_entry *me, job *j, char *msg, size_t cap)
{
    int code = flag_arg(c, "labels", &j->want_labels, msg, cap);
    if (!code)
        code = flag_arg(c, "keep_border", &j->keep_border, msg, cap);
    if (!code)
        code = flag_arg(c, "largest_component", &j->largest_component, msg, cap);
    if (!code)
        code = flag_arg(c, "scan", &j->want_scan, msg, cap);
    const char *out = sp_query_arg(c, "output");
    if (!code && out && strcmp(out, "nifti") && strcmp(out, "dicom-seg") && strcmp(out, "dicom-rtstruct"))
        code = 400, snprintf(msg, cap, "query parameter 'output' must be nifti, dicom-seg or dicom-rtstruct");
    j->want_seg = !out ? 0 : !strcmp(out, "dicom-seg") ? 1 : !strcmp(out, "dicom-rtstruct") ? 2 : 0;
    if (!code)
        code = roi_arg(c, me, j->roi, sizeof j->roi, msg, cap);
    return code;
}

/* Checks of a CT or photo request; 0 or an HTTP status with *msg. */
static int check_work(server *s, struct MHD_Connection *c, req *r, model_entry *me, const char **msg)
{
    static __thread char buf[320];
    if (!me->ready)
        return *msg = "the model is not ready (it is still warming up or failed to load: see GET /v1/models)", 503;
    if (sp_package_is_volume(me->pk)) {
        const char *kind = photo_kind(r);
        if (kind) {
            snprintf(buf, sizeof buf, "this is a %s photo: choose a photo model (model '%s' segments %s volumes: "
                     ".nii, .nii.gz or a DICOM series as .zip)", kind, me->name, sp_package_task(me->pk));
            return *msg = buf, 415;
        }
        const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
        if (ct && strncmp(ct, "application/octet-stream", 24) && strncmp(ct, "application/gzip", 16) &&
            strncmp(ct, "application/x-gzip", 18) && strncmp(ct, "application/x-nifti", 19) &&
            strncmp(ct, "application/zip", 15) && strncmp(ct, "application/dicom+zip", 21) &&
            strncmp(ct, "application/x-www-form-urlencoded", 33))
            return *msg = "send the volume as application/octet-stream (.nii, .nii.gz, or a zip of a DICOM series)", 415;
        if (r->len < 2)
            return *msg = "empty body: send a .nii or .nii.gz volume", 422;
        return 0;
    }
    if (!photo_kind(r)) {
        const char *kind = volume_kind(r);
        if (kind)
            snprintf(buf, sizeof buf, "this is a %s: choose a CT or MRI model (model '%s' takes JPEG, PNG, WebP "
                     "or HEIC photos)", kind, me->name);
        return *msg = kind ? buf : "send a JPEG, PNG, WebP or HEIC photo", 415;
    }
    const char *masks = sp_query_arg(c, "masks");
    if (masks) {   /* every name must exist */
        if (strlen(masks) >= 512)
            return *msg = "too many mask names", 422;
        char tmp[512];
        snprintf(tmp, sizeof tmp, "%s", masks);
        const char *seen[SP_MAX_MASKS_QUERY];
        int n = 0;
        for (char *sv, *tok = strtok_r(tmp, ",", &sv); tok; tok = strtok_r(NULL, ",", &sv)) {
            int found = 0;
            for (int k = 0; k < n; k++)
                if (!strcmp(seen[k], tok))
                    return *msg = "a mask name is given twice", 422;
            for (int k = 0; k < sp_package_num_masks(me->pk); k++)
                found |= !strcmp(sp_package_mask_name(me->pk, k), tok);
            if (!found || n == SP_MAX_MASKS_QUERY)
                return *msg = "unknown mask name", 422;
            seen[n++] = tok;
        }
    }
    return 0;
}

static job *work_job(server *s, struct MHD_Connection *c, req *r, model_entry *me)
{
    int ct = sp_package_is_volume(me->pk);
    job *j = sp_job_new(s, r, ct ? EP_CT : EP_SEGMENT, me);
    if (!j)
        return NULL;
    const char *masks = sp_query_arg(c, "masks");
    if (masks && !ct)
        snprintf(j->masks, sizeof j->masks, "%s", masks);
    return j;
}

/* The model, the checks and a new job of a CT or photo request (want_task:
 * the endpoint's task, or NULL for any); NULL with *ret set when refused. */
static job *work_request(server *s, struct MHD_Connection *c, req *r, const char *want_task,
                         enum MHD_Result *ret)
{
    static __thread char buf[400];
    const char *msg = NULL;
    model_entry *me = model_arg(s, c, &msg);
    int code = me ? 0 : 404;
    int volume = me && sp_package_is_volume(me->pk);
    if (me && want_task && (!strcmp(want_task, "ct") ? !volume : strcmp(sp_package_task(me->pk), want_task))) {
        code = 422;
        msg = !strcmp(want_task, "ct") ? "this model is not a CT or MRI model"
            : !strcmp(want_task, "classify") ? "this model is not a classify model" : "this model is not a photo masks model";
    }
    if (me && !code && (code = args_known(c, volume ? VOLUME_ARGS : !strcmp(sp_package_task(me->pk), "classify")
                                             ? CLASSIFY_ARGS : PHOTO_ARGS, buf, sizeof buf)))
        msg = buf;
    if (!code)
        code = check_work(s, c, r, me, &msg);
    job *j = code ? NULL : work_job(s, c, r, me);
    if (!code && !j)
        code = 503, msg = "out of memory";
    if (j && volume && (code = volume_args(c, me, j, buf, sizeof buf))) {
        msg = buf;
        sp_job_release(s, j);
        j = NULL;
    }
    if (j && j->kind == EP_SEGMENT && (code = sp_photo_memory(s, j, &msg))) {
        sp_job_release(s, j);
        j = NULL;
    }
    if (code)
        *ret = sp_http_error(c, code, msg, code == 503 ? 5 : 0);
    return j;
}

static enum MHD_Result post_work(server *s, struct MHD_Connection *c, req *r, const char *method,
                                 const char *want_task, int *ok)
{
    if (strcmp(method, "POST"))
        return not_allowed(c, "POST");
    enum MHD_Result ret = MHD_NO;
    job *j = work_request(s, c, r, want_task, &ret);
    return j ? submit_sync(s, c, r, j, ok) : ret;
}

/* ------------------------------------------------------------------ jobs */

static enum MHD_Result post_job(server *s, struct MHD_Connection *c, req *r)
{
    enum MHD_Result ret = MHD_NO;
    job *j = work_request(s, c, r, NULL, &ret);
    if (!j)
        return ret;
    pthread_mutex_lock(&s->mu);
    sp_store_expire(s, sp_now());
    if (sp_store_full(s)) {
        sp_job_release(s, j);
        pthread_mutex_unlock(&s->mu);
        return sp_http_error(c, 503, "too many stored jobs: fetch and DELETE finished ones, or retry later", 5);
    }
    if (sp_job_enqueue(s, j)) {
        sp_job_release(s, j);
        pthread_mutex_unlock(&s->mu);
        return sp_http_error(c, 503, "the queue for this model is full; retry later", 2);
    }
    j->async = 1;
    sp_job_store(s, j, r->owner);
    char *body = sp_job_status_json(s, j);
    pthread_mutex_unlock(&s->mu);
    if (!body)
        return MHD_NO;
    return sp_http_reply(c, 202, "application/json", body, strlen(body), 0);
}

/* GET/DELETE /v1/jobs/ID[/result|/labels] and /v1/results/ID[/labels] */
static enum MHD_Result job_path(server *s, struct MHD_Connection *c, const char *path, const char *method,
                                req *r, int *ok)
{
    const char *slash = strchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) : strlen(path);
    const char *what = slash ? slash + 1 : "";
    int get = !strcmp(method, "GET") || !strcmp(method, "HEAD"), del = !strcmp(method, "DELETE");
    if (strcmp(what, "") && strcmp(what, "result") && strcmp(what, "labels") && strcmp(what, "dicom-seg") &&
        strcmp(what, "dicom-rtstruct") && strcmp(what, "scan"))
        return sp_http_error(c, 404, "unknown path (ID, ID/result, ID/labels, ID/dicom-seg, ID/dicom-rtstruct or "
                             "ID/scan)", 0);
    if (!(get || (del && !*what)))
        return not_allowed(c, *what ? "GET" : "GET, DELETE");
    char amsg[256];
    if (args_known(c, *what ? JOB_ARGS + 1 : JOB_ARGS, amsg, sizeof amsg))
        return sp_http_error(c, 400, amsg, 0);
    pthread_mutex_lock(&s->mu);
    sp_store_expire(s, sp_now());
    job *j = sp_job_find(s, path, n, r->owner);
    if (!j) {
        pthread_mutex_unlock(&s->mu);
        return sp_http_error(c, 404, "unknown or expired id", 0);
    }
    if (del) {
        j->cancel = 1;
        sp_job_unstore(s, j);
        pthread_mutex_unlock(&s->mu);
        *ok = 1;
        return sp_http_json(c, 200, strdup("{\"deleted\": true}\n"));
    }
    if (!*what) {
        const char *w = sp_query_arg(c, "wait");
        double wait = w ? strtod(w, NULL) : 0;
        if (j->state != JOB_DONE && wait > 0 && s->n_watchers < MAX_WATCHERS && !s->stopping) {
            /* long poll: answered when the job ends or the wait is over */
            r->watch = j;
            j->refs++;
            r->watch_until = sp_now() + (wait < 60 ? wait : 60);
            r->conn = c;
            r->wnext = s->watchers;
            s->watchers = r;
            s->n_watchers++;
            *ok = -1;
            MHD_suspend_connection(c);
            pthread_mutex_unlock(&s->mu);
            return MHD_YES;
        }
        char *body = sp_job_status_json(s, j);
        pthread_mutex_unlock(&s->mu);
        *ok = body != NULL;
        return sp_http_json(c, 200, body);
    }
    if (j->state != JOB_DONE) {
        pthread_mutex_unlock(&s->mu);
        return sp_http_error(c, 409, "the job is not done yet", 1);
    }
    if (*what && strcmp(what, "result")) {   /* one of the job's files */
        int seg = !strcmp(what, "dicom-seg") || !strcmp(what, "dicom-rtstruct"), scan = !strcmp(what, "scan");
        const void *src = seg ? j->seg_dcm : scan ? j->scan_gz : j->labels_gz;
        size_t len = seg ? j->seg_len : scan ? j->scan_len : j->labels_len;
        void *copy = src ? malloc(len) : NULL;
        if (copy)
            memcpy(copy, src, len);
        pthread_mutex_unlock(&s->mu);
        if (!copy)
            return sp_http_error(c, 404, seg ? "this job has no DICOM result (ask with output=dicom-seg or dicom-rtstruct)"
                                 : scan ? "this job has no scan (ask with scan=1)"
                                 : "this job has no label volume (ask with labels=1)", 0);
        *ok = 1;
        return sp_http_reply(c, 200, seg ? "application/dicom" : "application/gzip", copy, len, 0);
    }
    int http = j->http;
    char *body = j->resp ? strdup(j->resp) : NULL;
    pthread_mutex_unlock(&s->mu);
    if (!body)
        return sp_http_error(c, 503, "out of memory", 2);
    *ok = http == 200;
    return sp_http_reply(c, http, "application/json", body, strlen(body), 0);
}

static enum MHD_Result jobs(server *s, struct MHD_Connection *c, const char *url, const char *method,
                            req *r, int *ok)
{
    if (!strcmp(url, "/v1/jobs")) {
        if (strcmp(method, "POST"))
            return not_allowed(c, "POST");
        return post_job(s, c, r);
    }
    return job_path(s, c, url + 9, method, r, ok);
}

/* ---------------------------------------------------------------- KServe */

static enum MHD_Result kserve(server *s, struct MHD_Connection *c, const char *url, const char *method,
                              req *r, int *ok)
{
    const char *name = url + 11, *end = strchr(name, '/');
    size_t n = end ? (size_t)(end - name) : strlen(name);
    model_entry *me = sp_find_model(s, name, n);
    if (!me)
        return sp_http_error(c, 404, "unknown model", 0);
    const char *rest = end ? end : "";
    if (!strncmp(rest, "/versions/", 10)) {   /* one version: "1" */
        const char *v = rest + 10, *ve = strchr(v, '/');
        size_t vn = ve ? (size_t)(ve - v) : strlen(v);
        if (vn != 1 || v[0] != '1')
            return sp_http_error(c, 404, "unknown model version (this model has version 1)", 0);
        rest = ve ? ve : "";
    }
    int get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    if (!*rest || !strcmp(rest, "/")) {
        if (!get)
            return not_allowed(c, "GET");
        *ok = 1;
        return sp_http_json(c, 200, sp_kserve_model_metadata(me));
    }
    if (!strcmp(rest, "/ready")) {
        if (!get)
            return not_allowed(c, "GET");
        *ok = me->ready;
        return sp_http_json(c, me->ready ? 200 : 503,
                            strdup(me->ready ? "{\"ready\": true}\n" : "{\"ready\": false}\n"));
    }
    if (strcmp(rest, "/infer"))
        return sp_http_error(c, 404, "unknown path", 0);
    if (strcmp(method, "POST"))
        return not_allowed(c, "POST");
    if (!me->ready)
        return sp_http_error(c, 503, "the model is not ready", 5);
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    const char *hl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Inference-Header-Content-Length");
    const char *ce = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Encoding");
    const char *ae = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Accept-Encoding");
    int gz = ce && !strcmp(ce, "gzip");
    if (ce && !gz && strcmp(ce, "identity"))
        return sp_http_error(c, 415, "Content-Encoding must be gzip or identity", 0);
    size_t header_len = 0;
    if (hl) {   /* binary tensor extension: a JSON header, then the tensors' bytes */
        char *e;
        unsigned long long v = strtoull(hl, &e, 10);
        if (!*hl || *e || hl[0] == '-' || v == 0 || (!gz && v > r->len))
            return sp_http_error(c, 400, "Inference-Header-Content-Length must be the JSON header's byte count, "
                                 "within the body", 0);
        header_len = (size_t)v;
    }
    if (ct && strncmp(ct, "application/json", 16) && !(hl && !strncmp(ct, "application/octet-stream", 24)))
        return sp_http_error(c, 415, "the infer endpoint takes application/json (KServe v2 tensors), or "
                             "application/octet-stream with Inference-Header-Content-Length (binary tensors)", 0);
    job *j = sp_job_new(s, r, EP_INFER, me);
    if (!j)
        return sp_http_error(c, 503, "out of memory", 2);
    j->header_len = header_len;
    j->gzip_in = gz;
    j->gzip_out = ae && strstr(ae, "gzip") != NULL;
    /* parsing takes cJSON's nodes (~24 bytes a byte of text), the tensors,
     * and the answer (as large as this model's last one) */
    size_t text = gz ? s->p.max_json_body : header_len ? header_len : j->len;
    j->memory_estimate = 24 * text + (j->len - (header_len && !gz ? header_len : j->len)) + me->infer_need;
    if (j->memory_estimate > sp_memory_room(s)) {
        sp_job_release(s, j);
        return sp_http_error(c, 413, "this request's parsing and answer would not fit the service's --max-memory", 0);
    }
    return submit_sync(s, c, r, j, ok);
}

/* Model repository extension: POST /v2/repository/index, and
 * /v2/repository/models/NAME/unload (the model answers 503 UNAVAILABLE and
 * leaves the index READY list) and /load (serves again). Models are loaded
 * at start-up (--model) and stay in memory; load/unload switch serving. */
static enum MHD_Result repository(server *s, struct MHD_Connection *c, const char *url, const char *method,
                                  int *ok)
{
    if (strcmp(method, "POST"))
        return not_allowed(c, "POST");
    *ok = 1;
    if (!strcmp(url, "/v2/repository/index"))
        return sp_http_json(c, 200, sp_repository_index(s));
    const char *name = url + 22, *end = strchr(name, '/');
    model_entry *me = end ? sp_find_model(s, name, (size_t)(end - name)) : NULL;
    int load = end && !strcmp(end, "/load"), unload = end && !strcmp(end, "/unload");
    if (!me || !(load || unload)) {
        *ok = 0;
        return sp_http_error(c, 404, me ? "unknown path (load or unload)" : "unknown model", 0);
    }
    pthread_mutex_lock(&s->mu);
    if (load && me->error[0] && !me->pk) {
        pthread_mutex_unlock(&s->mu);
        *ok = 0;
        return sp_http_error(c, 400, "the model failed to load at start-up; see the index's reason", 0);
    }
    me->ready = load;
    pthread_mutex_unlock(&s->mu);
    return sp_http_json(c, 200, strdup("{}\n"));
}

/* GET /v2/models/stats, /v2/models/NAME[/versions/1]/stats */
static enum MHD_Result stats(server *s, struct MHD_Connection *c, const char *url, const char *method, int *ok)
{
    if (strcmp(method, "GET") && strcmp(method, "HEAD"))
        return not_allowed(c, "GET");
    const model_entry *me = NULL;
    if (strcmp(url, "/v2/models/stats")) {
        const char *name = url + 11, *end = strchr(name, '/');
        if (!end || !(me = sp_find_model(s, name, (size_t)(end - name))))
            return sp_http_error(c, 404, "unknown model", 0);
        if (strcmp(end, "/stats") && strcmp(end, "/versions/1/stats"))
            return sp_http_error(c, 404, "unknown path", 0);
    }
    *ok = 1;
    return sp_http_json(c, 200, sp_stats_json(s, me));
}

/* -------------------------------------------------------------- dispatch */

static enum MHD_Result simple(server *s, struct MHD_Connection *c, int ep, int *ok)
{
    switch (ep) {
    case EP_LIVE:
        *ok = 1;
        return sp_http_json(c, 200, strdup("{\"live\": true}\n"));
    case EP_READY:
        *ok = atomic_load(&s->ready) && !s->stopping;
        return sp_http_json(c, *ok ? 200 : 503, strdup(*ok ? "{\"ready\": true}\n" : "{\"ready\": false}\n"));
    case EP_META: {
        char *j = malloc(256);
        if (j)
            snprintf(j, 256, "{\"name\": \"segpipe\", \"version\": \"%s\", \"extensions\": [\"binary_tensor_data\", "
                             "\"classification\", \"statistics\", \"model_repository\", \"segpipe_ct\", "
                             "\"segpipe_jobs\"]}\n", SP_VERSION_STRING);
        *ok = 1;
        return sp_http_json(c, 200, j);
    }
    case EP_STATUS:
        *ok = 1;
        return sp_http_json(c, 200, sp_status_json(s));
    case EP_MODELS:
        *ok = 1;
        return sp_http_json(c, 200, sp_models_json(s));
    default: {
        char *t = sp_metrics_text(s);
        *ok = 1;
        return t ? sp_http_reply(c, 200, "text/plain; version=0.0.4", t, strlen(t), 0) : MHD_NO;
    }
    }
}

enum MHD_Result sp_handle(server *s, struct MHD_Connection *c, const char *url, const char *method,
                          req *r, int *ok)
{
    if (r->job)
        return answer_sync(s, c, r, ok);
    if (r->watch) {   /* a long poll, woken */
        pthread_mutex_lock(&s->mu);
        char *body = sp_job_status_json(s, r->watch);
        sp_job_release(s, r->watch);
        r->watch = NULL;
        pthread_mutex_unlock(&s->mu);
        *ok = body != NULL;
        return sp_http_json(c, 200, body);
    }
    int ep = r->ep, get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    switch (ep) {
    case EP_UI:
        return sp_ui_serve(s, c, url, method, ok);
    case EP_LIVE: case EP_READY: case EP_META: case EP_STATUS: case EP_METRICS: case EP_MODELS:
        if (!get)
            return not_allowed(c, "GET");
        return simple(s, c, ep, ok);
    case EP_RESULT:
        return job_path(s, c, url + 12, method, r, ok);
    case EP_JOBS:
        return jobs(s, c, url, method, r, ok);
    case EP_MODEL: case EP_MODEL_READY: case EP_INFER:
        return kserve(s, c, url, method, r, ok);
    case EP_STATS:
        return stats(s, c, url, method, ok);
    case EP_REPO:
        return repository(s, c, url, method, ok);
    case EP_CT:
        return post_work(s, c, r, method, "ct", ok);
    case EP_SEGMENT:
        return post_work(s, c, r, method, "masks", ok);
    case EP_CLASSIFY:
        return post_work(s, c, r, method, "classify", ok);
    default:
        return sp_http_error(c, 404, "unknown path", 0);
    }
}
