/*
 * reply.c — how the service answers, shared by every layer above
 * libmicrohttpd: responses with segpipe's headers (no-store, nosniff,
 * Retry-After, WWW-Authenticate, Connection: close while stopping), the two
 * error body formats (segpipe's and KServe's), the one mapping from a
 * library status to an HTTP status, and the release of a request's body.
 * It calls nothing else of the service, so http.c, routes.c, work.c,
 * kserve.c and ui.c can all use it without calling each other back.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>


static atomic_int closing;

void sp_http_closing(void) { atomic_store(&closing, 1); }

enum MHD_Result sp_http_reply(struct MHD_Connection *c, int code, const char *ctype, char *body,
                              size_t len, int retry_after)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    return sp_http_send(c, code, r, ctype, retry_after);
}

enum MHD_Result sp_http_send(struct MHD_Connection *c, int code, struct MHD_Response *r, const char *ctype,
                             int retry_after)
{
    MHD_add_response_header(r, "Content-Type", ctype);
    if (!MHD_get_response_header(r, "Cache-Control"))   /* the page's files set their own */
        MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    if (retry_after > 0) {
        char s[16];
        snprintf(s, sizeof s, "%d", retry_after);
        MHD_add_response_header(r, "Retry-After", s);
    }
    if (code == 401)
        MHD_add_response_header(r, "WWW-Authenticate", "Bearer realm=\"segpipe\"");
    if (atomic_load(&closing))   /* shutting down: no keep-alive */
        MHD_add_response_header(r, "Connection", "close");
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)code, r);
    MHD_destroy_response(r);
    return ret;
}

enum MHD_Result sp_http_json(struct MHD_Connection *c, int code, char *json)
{
    if (!json)
        return MHD_NO;
    return sp_http_reply(c, code, "application/json", json, strlen(json), 0);
}

/* KServe v2 endpoints answer errors as the protocol says, {"error": "..."};
 * segpipe's own as {"error": {"code", "message"}}. The request being
 * handled on this thread decides (http.c sets it for each callback). */
static _Thread_local int tls_kserve;

void sp_reply_kserve(int kserve) { tls_kserve = kserve; }

int sp_ep_is_kserve(int ep)
{
    return ep == EP_LIVE || ep == EP_READY || ep == EP_META || ep == EP_MODEL || ep == EP_MODEL_READY ||
           ep == EP_INFER || ep == EP_STATS || ep == EP_REPO;
}

char *sp_error_body(int kserve, int code, const char *msg)
{
    if (!kserve)
        return sp_error_json(code, msg);
    sp_buf b = {0};
    sp_buf_puts(&b, "{\"error\": ");
    sp_buf_json_str(&b, msg);
    sp_buf_puts(&b, "}\n");
    return sp_buf_take(&b);
}

char *sp_error_json(int code, const char *msg)
{
    sp_buf b = {0};
    sp_buf_printf(&b, "{\"error\": {\"code\": %d, \"message\": ", code);
    sp_buf_json_str(&b, msg);
    sp_buf_puts(&b, "}}\n");
    return sp_buf_take(&b);
}

enum MHD_Result sp_http_error(struct MHD_Connection *c, int code, const char *msg, int retry_after)
{
    char *j = sp_error_body(tls_kserve, code, msg);
    if (!j)
        return MHD_NO;
    return sp_http_reply(c, code, "application/json", j, strlen(j), retry_after);
}

/* The one rule from a library status to an HTTP status (docs/service.md). */
int sp_http_status(sp_status st)
{
    switch (st) {
    case SP_OK: return 200;
    case SP_ERR_USAGE: return 400;       /* the request asks for something impossible */
    case SP_ERR_INPUT: return 422;       /* the data sent cannot be used */
    case SP_ERR_NOMEM: return 503;       /* the server is short of memory now: retry */
    case SP_ERR_CANCELLED: return 504;   /* stopped at --timeout (or by a DELETE) */
    case SP_ERR_MODEL:
    case SP_ERR_RUNTIME:
    case SP_ERR_IO:
    default: return 500;
    }
}

/* A request's or job's body: freed, or unmapped when it is the spool file's mapping. */
void sp_body_free(char *body, size_t len, int mapped)
{
    if (mapped)
        munmap(body, len);
    else
        free(body);
}
