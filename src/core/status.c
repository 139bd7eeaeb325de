/*
 * status.c — sp_status, per-thread error messages, logging.
 *
 * Each thread has its own message buffer (like errno), so concurrent calls
 * in the server never see each other's errors.
 */
#include "core.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char tl_err[1024];

const char *sp_last_error(void) { return tl_err; }
void sp_clear_error(void) { tl_err[0] = 0; }

sp_status sp_fail(sp_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tl_err, sizeof tl_err, fmt, ap);
    va_end(ap);
    return st;
}

sp_status sp_fail_prefix(sp_status st, const char *fmt, ...)
{
    char pre[512], old[sizeof tl_err];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    memcpy(old, tl_err, sizeof old);
    snprintf(tl_err, sizeof tl_err, "%.500s: %.500s", pre, old);
    return st;
}

const char *sp_status_str(sp_status st)
{
    switch (st) {
    case SP_OK: return "ok";
    case SP_ERR_USAGE: return "usage error";
    case SP_ERR_INPUT: return "input error";
    case SP_ERR_MODEL: return "model error";
    case SP_ERR_RUNTIME: return "runtime error";
    case SP_ERR_IO: return "I/O error";
    case SP_ERR_NOMEM: return "out of memory";
    case SP_ERR_CANCELLED: return "cancelled";
    }
    return "unknown error";
}

int sp_status_exit_code(sp_status st)
{
    switch (st) {
    case SP_OK: return 0;
    case SP_ERR_USAGE: return 2;
    case SP_ERR_INPUT: return 3;
    case SP_ERR_MODEL: return 4;
    case SP_ERR_RUNTIME: return 5;
    case SP_ERR_IO: return 6;
    case SP_ERR_NOMEM: return 7;
    case SP_ERR_CANCELLED: return 130;
    }
    return 1;
}

/* ---------------------------------------------------------------- logging */

static sp_log_level g_level = SP_LOG_QUIET;
static sp_log_fn g_fn;
static void *g_user;
static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;

void sp_log_set_level(sp_log_level level) { g_level = level; }
void sp_log_set_callback(sp_log_fn fn, void *user)
{
    pthread_mutex_lock(&g_log_mu);
    g_fn = fn;
    g_user = user;
    pthread_mutex_unlock(&g_log_mu);
}

void sp_log(sp_log_level lvl, const char *fmt, ...)
{
    static const char *names[] = {"debug", "info", "warning", "error"};
    char msg[1024];
    va_list ap;
    if (lvl < g_level || lvl >= SP_LOG_QUIET)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&g_log_mu);
    if (g_fn)
        g_fn(lvl, msg, g_user);
    else
        fprintf(stderr, "segpipe: %s: %s\n", names[lvl], msg);
    pthread_mutex_unlock(&g_log_mu);
}

/* Element types (used by the NIfTI reader and the runtime alike). */
const char *sp_dtype_str(sp_dtype t)
{
    static const char *n[] = {"unknown", "float32", "float64", "uint8", "int8", "uint16",
                              "int16", "uint32", "int32", "int64", "float16", "bool"};
    return (unsigned)t < sizeof n / sizeof *n ? n[t] : "unknown";
}

size_t sp_dtype_size(sp_dtype t)
{
    static const size_t s[] = {0, 4, 8, 1, 1, 2, 2, 4, 4, 8, 2, 1};
    return (unsigned)t < sizeof s / sizeof *s ? s[t] : 0;
}
