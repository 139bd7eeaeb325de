/*
 * http.c — the HTTP side of the service, over libmicrohttpd's event loop
 * (epoll, a small pool of I/O threads, no thread per connection): a slow
 * client costs a socket and a 32 KiB connection pool, never a thread.
 *
 * What a client controls is bounded before it costs anything:
 *   - the request is routed, authenticated and checked (method, model,
 *     content type, declared length, queue room) on its headers, before a
 *     body byte is read; a refusal is answered at once and the body dropped;
 *   - body bytes are counted against --max-buffered across all requests
 *     (503 past it), and each body against its endpoint's limit; binary
 *     bodies (volumes, photos, zips) wait in unnamed files in the temporary
 *     folder, not in the process's memory;
 *   - a body must arrive within --body-timeout, and a connection may stay
 *     silent at most --read-timeout (libmicrohttpd closes it);
 *   - a synchronous request waits suspended (no thread) for its job; the
 *     housekeeper answers 504 and cancels the job at --timeout.
 * Every answer of segpipe's is JSON: {"error": {"code": N, "message": "..."}}.
 *
 * This layer knows nothing of the endpoints: serve.c hands it s->hooks (how
 * a URL maps to an endpoint, the handler, and how a request lets go of a
 * job it held); the answers themselves are made with reply.c.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

/* ------------------------------------------------------------- API keys */

#define KEY_MAX 256

sp_status sp_keys_load(server *s, const char *path)
{
    void *data;
    size_t n;
    sp_status st = sp_read_file(path, 1 << 20, &data, &n);
    if (st)
        return sp_fail_prefix(st, "--api-key-file");
    char *text = data, *save = NULL;
    for (char *line = strtok_r(text, "\r\n", &save); line; line = strtok_r(NULL, "\r\n", &save)) {
        while (*line == ' ' || *line == '\t')
            line++;
        size_t len = strlen(line);
        while (len && (line[len - 1] == ' ' || line[len - 1] == '\t'))
            line[--len] = 0;
        if (!len || line[0] == '#')
            continue;
        if (len < 16 || len >= KEY_MAX) {
            free(data);
            return sp_fail(SP_ERR_USAGE, "--api-key-file: every key must be 16..%d characters (line of %zu)",
                           KEY_MAX - 1, len);
        }
        char **nk = realloc(s->keys, (size_t)(s->n_keys + 1) * sizeof *nk);
        if (!nk || !(nk[s->n_keys] = calloc(1, KEY_MAX))) {
            s->keys = nk ? nk : s->keys;
            free(data);
            return sp_fail(SP_ERR_NOMEM, "out of memory");
        }
        s->keys = nk;
        memcpy(s->keys[s->n_keys++], line, len);
    }
    free(data);
    if (!s->n_keys)
        return sp_fail(SP_ERR_USAGE, "--api-key-file %s holds no key", path);
    return SP_OK;
}

void sp_keys_free(server *s)
{
    for (int i = 0; i < s->n_keys; i++) {
        explicit_bzero(s->keys[i], KEY_MAX);
        free(s->keys[i]);
    }
    free(s->keys);
    s->keys = NULL;
}

/* 1 + the index of the key presented, 0 if none matches. Every key is
 * compared over all KEY_MAX bytes: the time does not depend on where a
 * guess first differs, nor on which key matched. */
static int key_owner(server *s, struct MHD_Connection *c)
{
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7))
        return 0;
    h += 7;
    size_t n = strlen(h);
    if (n >= KEY_MAX)
        return 0;
    unsigned char given[KEY_MAX] = {0};
    memcpy(given, h, n);
    int owner = 0;
    for (int k = 0; k < s->n_keys; k++) {
        unsigned diff = 0;
        const unsigned char *key = (const unsigned char *)s->keys[k];
        for (int i = 0; i < KEY_MAX; i++)
            diff |= key[i] ^ given[i];
        int match = diff == 0;
        owner |= -match & (k + 1);
    }
    explicit_bzero(given, sizeof given);
    return owner;
}

/* ----------------------------------------------------------- header checks */

typedef struct hdr_count {
    int content_length;
} hdr_count;

static enum MHD_Result count_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void)kind;
    (void)value;
    if (!strcasecmp(key, "Content-Length"))
        ((hdr_count *)cls)->content_length++;
    return MHD_YES;
}

const char *sp_query_arg(struct MHD_Connection *c, const char *key)
{
    const char *v = NULL;
    size_t n = 0;
    if (MHD_lookup_connection_value_n(c, MHD_GET_ARGUMENT_KIND, key, strlen(key), &v, &n) != MHD_YES || !v)
        return NULL;
    return strlen(v) == n ? v : NULL;   /* "demo%00x" is not "demo" */
}

/* Body limit of an endpoint. */
static size_t body_limit(server *s, int ep)
{
    if (ep == EP_INFER)
        return s->p.max_json_body;
    if (ep == EP_CT || ep == EP_SEGMENT || ep == EP_JOBS || ep == EP_CLASSIFY)
        return s->p.max_body;
    return 1 << 16;   /* nothing else takes a body */
}

static int reserve(server *s, size_t n)
{
    size_t cur = atomic_load(&s->buffered);
    do {
        if (cur + n > s->p.max_buffered)
            return 0;
    } while (!atomic_compare_exchange_weak(&s->buffered, &cur, cur + n));
    return 1;
}

/* Checks on the headers alone. Returns 0 to go on reading, or an HTTP
 * status (with *msg) to answer now. */
static int precheck(server *s, struct MHD_Connection *c, req *r, const char **msg,
                    int *retry)
{
    hdr_count hc = {0};
    MHD_get_connection_values(c, MHD_HEADER_KIND, count_header, &hc);
    if (hc.content_length > 1)
        return *msg = "more than one Content-Length header", 400;
    int health = r->ep == EP_LIVE || r->ep == EP_READY;
    /* the page's static files hold no data: served to anyone (what they fetch needs a key) */
    if (s->n_keys && r->ep != EP_UI && (!health || s->p.protect_health)) {
        r->owner = key_owner(s, c);
        if (!r->owner)
            return *msg = "authentication required: send \"Authorization: Bearer KEY\"", 401;
    }
    if (s->stopping)
        return *retry = 5, *msg = "the service is shutting down", 503;
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
    size_t lim = body_limit(s, r->ep);
    if (cl) {
        char *end;
        unsigned long long v = strtoull(cl, &end, 10);
        if (*end || cl[0] == '-')
            return *msg = "bad Content-Length", 400;
        if (v > lim)
            return *msg = r->ep == EP_INFER ? "the JSON body is larger than --max-json-body"
                                            : "the body is larger than --max-body", 413;
        r->declared = (size_t)v;
    }
    size_t held = atomic_load(&s->buffered);   /* an announced body that cannot fit now is refused now */
    if (held >= s->p.max_buffered || r->declared > s->p.max_buffered - held)
        return *retry = 2, *msg = "the service holds too many request bytes now; retry later", 503;
    return 0;
}

/* ------------------------------------------------------------------ intake */

/* Binary bodies (volumes, photos, zips) go to an unnamed file in the
 * service's temporary folder as they arrive: bytes clients send wait in the
 * page cache, which the kernel can write out, not in the process's memory;
 * the request gets the file mapped once whole. JSON bodies stay in memory
 * (cJSON parses text in memory anyway). */
static int spooled(int ep) { return ep == EP_CT || ep == EP_SEGMENT || ep == EP_JOBS || ep == EP_CLASSIFY; }

static int spool_body(server *s, req *r, const char *data, size_t n)
{
    if (r->spool < 0 && (r->spool = sp_unnamed_file(s->tmpdir)) < 0) {
        SP_WARN("cannot create a spool file in the temporary folder: %s", strerror(errno));
        return 503;
    }
    if (!reserve(s, n))
        return 503;
    r->reserved += n;
    if (sp_pwrite_all(r->spool, data, n, r->len) != 0) {
        SP_WARN("cannot write a request body to the temporary folder: %s", strerror(errno));
        return 503;
    }
    r->len += n;
    return 0;
}

/* The spooled body mapped as r->body (copy-on-write: a handler may write). */
static int map_body(req *r)
{
    if (r->spool < 0)
        return 0;
    void *m = r->len ? mmap(NULL, r->len, PROT_READ | PROT_WRITE, MAP_PRIVATE, r->spool, 0) : NULL;
    close(r->spool);
    r->spool = -1;
    if (m == MAP_FAILED)
        return -1;
    r->body = m;
    r->mapped = m != NULL;
    return 0;
}

static void req_body_free(req *r)
{
    sp_body_free(r->body, r->len, r->mapped);
    if (r->spool >= 0)
        close(r->spool);
    r->spool = -1;
    r->body = NULL;
    r->mapped = 0;
    r->len = r->cap = 0;
}

/* Append to the body. Memory is taken as bytes arrive (never for what a
 * header merely announces) and counted against --max-buffered. */
static int take_body(server *s, req *r, const char *data, size_t n)
{
    if (r->len + n > body_limit(s, r->ep))
        return 413;
    if (spooled(r->ep))
        return spool_body(s, r, data, n);
    if (r->len + n > r->cap) {
        size_t nc = r->cap ? r->cap : 4096;   /* a trickling client holds a page, not more */
        while (nc < r->len + n)
            nc *= 2;
        if (r->declared >= r->len + n && nc > r->declared)
            nc = r->declared;   /* the announced length, exactly */
        if (!reserve(s, nc - r->cap))
            return 503;
        char *nb = realloc(r->body, nc);
        if (!nb) {
            atomic_fetch_sub(&s->buffered, nc - r->cap);
            return 503;
        }
        r->reserved += nc - r->cap;
        r->body = nb;
        r->cap = nc;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
    return 0;
}

static req *req_new(server *s, const char *url)
{
    req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->t0 = sp_now();
    r->ep = s->hooks.route(url);
    r->spool = -1;
    atomic_fetch_add(&s->inflight, 1);
    return r;
}

/* ---- the request-header deadline ----
 * libmicrohttpd's own timeout (--read-timeout) is for silence: a client
 * trickling a header byte now and then holds its connection for ever. Each
 * connection is tracked from its start (and again after each answered
 * request); the housekeeper shuts down the socket of one whose headers are
 * not complete after --header-timeout, and libmicrohttpd then closes it as
 * a dropped connection. libmicrohttpd reports NOTIFY_CLOSED before it
 * closes the descriptor, so a shut-down fd is never a reused one. */
void sp_conn_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                    enum MHD_ConnectionNotificationCode code)
{
    server *s = cls;
    conn_ctx *x = *socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci || !(x = calloc(1, sizeof *x)))
            return;
        x->fd = ci->connect_fd;
        atomic_store(&x->since, sp_now());
        pthread_mutex_lock(&s->conn_mu);
        x->next = s->conns;
        if (s->conns)
            s->conns->prev = x;
        s->conns = x;
        pthread_mutex_unlock(&s->conn_mu);
        *socket_context = x;
    } else if (x) {
        pthread_mutex_lock(&s->conn_mu);
        if (x->prev)
            x->prev->next = x->next;
        else
            s->conns = x->next;
        if (x->next)
            x->next->prev = x->prev;
        pthread_mutex_unlock(&s->conn_mu);
        free(x);
        *socket_context = NULL;
    }
}

void sp_conn_reap(server *s, double now)
{
    pthread_mutex_lock(&s->conn_mu);
    for (conn_ctx *x = s->conns; x; x = x->next)
        if (!x->shut && !atomic_load(&x->in_request) && now - atomic_load(&x->since) > s->p.header_timeout) {
            shutdown(x->fd, SHUT_RDWR);
            x->shut = 1;
        }
    pthread_mutex_unlock(&s->conn_mu);
}

static void conn_mark(struct MHD_Connection *c, int in_request)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    conn_ctx *x = ci ? ci->socket_context : NULL;
    if (x) {
        atomic_store(&x->since, sp_now());
        atomic_store(&x->in_request, in_request);
    }
}

/* libmicrohttpd's unescaping of the path and query, refusing control
 * characters: "/v2/models/demo%00x" would otherwise read as "demo". A path
 * holding one (or %00..%1F, %7F) becomes "!", answered 400 below. */
size_t sp_unescape_cb(void *cls, struct MHD_Connection *c, char *uri)
{
    (void)cls;
    (void)c;
    size_t n = MHD_http_unescape(uri);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)uri[i] < 0x20 || uri[i] == 0x7f) {
            strcpy(uri, "!");
            return 1;
        }
    return n;
}

enum MHD_Result sp_access_cb(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                             const char *version, const char *upload_data, size_t *upload_size,
                             void **con_cls)
{
    server *s = cls;
    req *r = *con_cls;
    (void)version;
    sp_reply_kserve(sp_ep_is_kserve(s->hooks.route(url)));
    if (!r) {
        if (!(r = req_new(s, url)))
            return MHD_NO;
        *con_cls = r;
        conn_mark(c, 1);   /* headers in: --body-timeout and --timeout from here */
        if (url[0] != '/') {   /* sp_unescape_cb found a control character */
            r->early = 1;
            sp_record(s, r->ep, 0, 0);
            return sp_http_error(c, 400, "the path or query holds a control character (NUL, %00-%1F, %7F)", 0);
        }
        const char *msg = NULL;
        int retry = 0, code = precheck(s, c, r, &msg, &retry);
        if (code) {
            r->early = 1;
            sp_record(s, r->ep, 0, 0);
            return sp_http_error(c, code, msg, retry);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (r->early) {   /* answered already: drop what still arrives */
            *upload_size = 0;
            return MHD_YES;
        }
        if (s->p.body_timeout > 0 && sp_now() - r->t0 > s->p.body_timeout)
            return MHD_NO;   /* a body trickled past --body-timeout: close */
        int code = take_body(s, r, upload_data, *upload_size);
        *upload_size = 0;
        if (code) {   /* libmicrohttpd cannot answer mid-body (it drops the connection): the rest is
                         discarded (bounded by --body-timeout) and the answer goes when the body ends */
            req_body_free(r);
            r->early = 1;
            r->late = code;
            sp_record(s, r->ep, 0, 0);
        }
        return MHD_YES;
    }
    if (r->early && r->late) {
        int code = r->late;
        r->late = 0;
        return code == 413 ? sp_http_error(c, 413, "the body is larger than the limit", 0)
                           : sp_http_error(c, 503, "the service holds too many request bytes now", 2);
    }
    if (r->early)
        return MHD_YES;
    if (map_body(r) != 0) {
        r->early = 1;
        sp_record(s, r->ep, 0, 0);
        return sp_http_error(c, 503, "cannot map the request body; retry later", 2);
    }
    int ok = 0;
    enum MHD_Result ret = s->hooks.handle(s, c, url, method, r, &ok);
    if (ok >= 0)   /* -1: suspended, answered later */
        sp_record(s, r->ep, sp_now() - r->t0, ok);
    return ret;
}

void sp_completed_cb(void *cls, struct MHD_Connection *c, void **con_cls,
                     enum MHD_RequestTerminationCode toe)
{
    server *s = cls;
    req *r = *con_cls;
    (void)toe;
    conn_mark(c, 0);   /* a next request on this connection: its own header deadline */
    if (!r)
        return;
    if (r->watch) {
        pthread_mutex_lock(&s->mu);
        s->hooks.release(s, r->watch);
        pthread_mutex_unlock(&s->mu);
    }
    if (r->job) {
        pthread_mutex_lock(&s->mu);
        r->job->cancel = 1;   /* no-op when done */
        r->job->conn = NULL;
        s->hooks.release(s, r->job);
        pthread_mutex_unlock(&s->mu);
    }
    req_body_free(r);
    atomic_fetch_sub(&s->buffered, r->reserved);
    free(r);
    *con_cls = NULL;
    atomic_fetch_sub(&s->inflight, 1);
}
