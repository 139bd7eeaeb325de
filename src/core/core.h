/*
 * core.h — internal helpers shared by every subsystem: error reporting,
 * logging, the thread pool, file helpers. Not part of the public API.
 */
#ifndef SP_CORE_H
#define SP_CORE_H

#include "segpipe.h"
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>

#if defined(__GNUC__)
#define SP_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SP_PRINTF(a, b)
#endif

/* Set this thread's error message and return `st` (so callers can write
 * `return sp_fail(SP_ERR_INPUT, "...")`). */
sp_status sp_fail(sp_status st, const char *fmt, ...) SP_PRINTF(2, 3);
/* Prefix the current message with "prefix: " and return st. */
sp_status sp_fail_prefix(sp_status st, const char *fmt, ...) SP_PRINTF(2, 3);
void sp_clear_error(void);

void sp_log(sp_log_level lvl, const char *fmt, ...) SP_PRINTF(2, 3);
#define SP_DEBUG(...) sp_log(SP_LOG_DEBUG, __VA_ARGS__)
#define SP_INFO(...) sp_log(SP_LOG_INFO, __VA_ARGS__)
#define SP_WARN(...) sp_log(SP_LOG_WARN, __VA_ARGS__)

int sp_num_cores(void);

/* ------------------------------------------------------------ thread pool */
/* A fixed set of worker threads. sp_pool_for splits [0, n) into chunks and
 * runs fn(ctx, begin, end, worker) on the workers and the calling thread;
 * it returns when all chunks are done. Workers sleep on a condition variable
 * between jobs (no busy waiting). One job at a time per pool. */
typedef struct sp_pool sp_pool;
typedef void (*sp_range_fn)(void *ctx, int64_t begin, int64_t end, int worker);
sp_pool *sp_pool_create(int nthreads);
void sp_pool_free(sp_pool *p);
int sp_pool_size(const sp_pool *p);   /* workers + caller */
void sp_pool_for(sp_pool *p, int64_t n, int64_t grain, sp_range_fn fn, void *ctx);
/* The pool shared by library stages when no thread count is given. */
sp_pool *sp_default_pool(void);
/* Pool for `threads` (0 = the default pool); free with sp_pool_put. */
sp_pool *sp_pool_get(int threads);
void sp_pool_put(sp_pool *p);

/* ----------------------------------------------------------------- queue */
/* A bounded blocking queue of ints between threads (queue.c). */
#define SP_BQ_EOF (-2)
typedef struct sp_bq {
    pthread_mutex_t mu;
    pthread_cond_t not_empty, not_full;
    int *buf;
    int cap, head, n;
    int closed;
    atomic_int *stop;
} sp_bq;
int sp_bq_init(sp_bq *q, int cap, atomic_int *stop);   /* 1 on success */
void sp_bq_destroy(sp_bq *q);
/* 0 on success, -1 when stopping; *waited += seconds blocked (may be NULL) */
int sp_bq_push(sp_bq *q, int v, double *waited);
/* the next value; SP_BQ_EOF once closed and drained; -1 when stopping */
int sp_bq_pop(sp_bq *q, double *waited);
void sp_bq_close(sp_bq *q);
void sp_bq_wake(sp_bq *q);   /* wake every waiter (after setting the stop flag) */

/* ----------------------------------------------------------------- sha256 */
/* SHA-256 (sha256.c): init, update any number of times, final. */
typedef struct sp_sha256 {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    size_t n;
} sp_sha256;
void sp_sha256_init(sp_sha256 *s);
void sp_sha256_update(sp_sha256 *s, const void *data, size_t n);
void sp_sha256_final(sp_sha256 *s, uint8_t out[32]);

/* ----------------------------------------------------------------- memory */
/* VmRSS now; and the peak (VmHWM) set back to it (0, or -1 where Linux
 * cannot), to measure the peak of one step. */
size_t sp_current_rss(void);
int sp_peak_rss_reset(void);
/* The memory the system can give without swapping (MemAvailable; free
 * pages where /proc has none; 0 when unknown). */
size_t sp_mem_available(void);
/* Allocation for large buffers (volumes, logits): 2 MiB aligned and marked
 * for transparent huge pages, which cuts the cost of first-touch page
 * faults several times; small sizes fall back to malloc. Free with free().
 * sp_big_calloc zeroes. */
void *sp_big_alloc(size_t size);
void *sp_big_calloc(size_t n, size_t size);

/* ------------------------------------------------------------------ spill */
/* A buffer's bytes parked in an unlinked, unnamed temporary file (spill.c). */
typedef struct sp_spill {
    int fd;
    size_t bytes;
    void *map;
} sp_spill;
/* The whole pages inside [from, to) back to the kernel (MADV_DONTNEED:
 * private memory then reads as zeros). */
void sp_pages_release(void *from, void *to);
/* $TMPDIR, else /var/tmp */
const char *sp_spill_default_dir(void);
/* A new file in dir with no name (O_TMPFILE, else created and unlinked at
 * once), mode 0600, close-on-exec: gone when closed, even after a crash.
 * -1 with errno on failure. */
int sp_unnamed_file(const char *dir);
/* 1 when fd's file system keeps files in memory (tmpfs, ramfs), or unknown. */
int sp_fd_in_memory(int fd);
/* Write n bytes at offset `at`, whole (EINTR and short writes retried); 0 or -1. */
int sp_pwrite_all(int fd, const void *buf, size_t n, size_t at);
/* Write bytes at buf to a file in dir (NULL: the default), then give the
 * buffer's whole pages back to the kernel (they read as zeros until
 * sp_spill_back). 1: parked; 0: not (under 16 MiB, dir on tmpfs/ramfs,
 * cannot create or write the file), buf untouched and *s empty. */
int sp_spill_out(void *buf, size_t bytes, const char *dir, sp_spill *s);
/* The parked bytes mapped read-only (page cache, no copy), valid until
 * sp_spill_drop; NULL when the mapping fails. */
const void *sp_spill_map(sp_spill *s);
/* Read the bytes back into buf and close the file. */
sp_status sp_spill_back(sp_spill *s, void *buf);
/* Unmap and close the file (no-op when empty). */
void sp_spill_drop(sp_spill *s);

/* ------------------------------------------------------------------ files */
/* Read a whole file (limit: max_bytes), followed by a NUL byte not counted in
 * *size (text can be used as a C string). Caller frees *data. */
sp_status sp_read_file(const char *path, size_t max_bytes, void **data, size_t *size);
int sp_has_suffix(const char *s, const char *suffix);
/* Folder of the module holding segpipe's code (the segpipe binary or
 * libsegpipe.so), resolved; "." when unknown. For files found relative to
 * an install: bundled models, the GPU kernels. */
void sp_module_dir(char *buf, size_t cap);
/* The first of rel[0..n) (paths relative to sp_module_dir) that exists,
 * opened with dlopen (RTLD_NOW | RTLD_LOCAL): the plugins loaded on first
 * use (the GPU kernels, GDCM's reader). NULL with *found 0 when none
 * exists; NULL with *found 1 when the one found does not open (dlerror()
 * says why). */
void *sp_module_dlopen(const char *const *rel, size_t n, int *found);
/* The k largest of v[0..n) (NaN never ranks), best first, ties to the
 * lower index, into idx; returns how many (min(k, non-NaN count)). */
int sp_top_k(const float *v, size_t n, int k, size_t *idx);

/* Growable string buffer for JSON and tables. */
typedef struct sp_buf {
    char *s;
    size_t len, cap;
    int oom;
} sp_buf;
void sp_buf_printf(sp_buf *b, const char *fmt, ...) SP_PRINTF(2, 3);
void sp_buf_puts(sp_buf *b, const char *s);
void sp_buf_append(sp_buf *b, const void *data, size_t n);   /* any bytes; still NUL-terminated */
void sp_buf_json_str(sp_buf *b, const char *s);   /* quoted, escaped */
void sp_buf_json_num(sp_buf *b, double v);        /* shortest round-trip, null for NaN */
char *sp_buf_take(sp_buf *b);                     /* caller frees */
void sp_buf_free(sp_buf *b);

/* 1 when [scheme, value, meaning] fit DICOM's SH 16, SH 16, LO 64 and hold no
 * backslash or line break (dicom_text.c) */
int sp_dicom_code_text_ok(const char *scheme, const char *value, const char *meaning);

#endif
