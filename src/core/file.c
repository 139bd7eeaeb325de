/*
 * file.c — whole-file reads, atomic writes (temporary name + rename, so a
 * failure never leaves a partial output), and a growable text buffer used
 * for JSON and tables.
 */
#include "core.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

void *sp_big_alloc(size_t size)
{
    const size_t huge = (size_t)2 << 20;
    if (size < 2 * huge)
        return malloc(size ? size : 1);
    void *p = NULL;
    size_t rounded = (size + huge - 1) & ~(huge - 1);
    if (posix_memalign(&p, huge, rounded) != 0)
        return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, rounded, MADV_HUGEPAGE);
#endif
    return p;
}

void *sp_big_calloc(size_t n, size_t size)
{
    size_t bytes;
    if (__builtin_mul_overflow(n, size, &bytes))
        return NULL;
    void *p = sp_big_alloc(bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}

int sp_has_suffix(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

sp_status sp_read_file(const char *path, size_t max_bytes, void **data, size_t *size)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sp_fail(SP_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return sp_fail(SP_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max_bytes) {
        close(fd);
        return sp_fail(SP_ERR_INPUT, "%s: file is %lld bytes, over the limit of %zu",
                       path, (long long)st.st_size, max_bytes);
    }
    size_t n = (size_t)st.st_size;
    char *buf = sp_big_alloc(n + 1);   /* + a NUL, so text needs no copy */
    if (!buf) {
        close(fd);
        return sp_fail(SP_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, n);
    }
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            free(buf);
            close(fd);
            return sp_fail(SP_ERR_IO, "%s: read failed after %zu bytes", path, got);
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    *data = buf;
    *size = n;
    return SP_OK;
}

sp_status sp_write_file_atomic(const char *path, const void *data, size_t size)
{
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 32);
    if (!tmp)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    snprintf(tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());
    unlink(tmp);   /* a leftover of a killed run with this pid, or a planted link: never followed */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) {
        sp_status st = sp_fail(SP_ERR_IO, "%s: cannot create: %s", path, strerror(errno));   /* the user's name */
        free(tmp);
        return st;
    }
    const char *p = data;
    size_t left = size;
    while (left > 0) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            free(tmp);
            return sp_fail(SP_ERR_IO, "%s: write failed: %s", path, strerror(e));
        }
        p += w;
        left -= (size_t)w;
    }
    int bad = fsync(fd) != 0;   /* on disk before it has its name */
    bad |= close(fd) != 0;
    if (bad || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        free(tmp);
        return sp_fail(SP_ERR_IO, "%s: cannot finish writing: %s", path, strerror(e));
    }
    free(tmp);
    return SP_OK;
}

/* ---------------------------------------------------------------- sp_buf */

static int buf_reserve(sp_buf *b, size_t extra)
{
    if (b->oom)
        return 0;
    if (b->len + extra + 1 <= b->cap)
        return 1;
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->len + extra + 1)
        nc *= 2;
    char *ns = realloc(b->s, nc);
    if (!ns) {
        b->oom = 1;
        return 0;
    }
    b->s = ns;
    b->cap = nc;
    return 1;
}

void sp_buf_printf(sp_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !buf_reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void sp_buf_puts(sp_buf *b, const char *s)
{
    size_t n = strlen(s);
    if (!buf_reserve(b, n))
        return;
    memcpy(b->s + b->len, s, n + 1);
    b->len += n;
}

void sp_buf_append(sp_buf *b, const void *data, size_t n)
{
    if (!buf_reserve(b, n))
        return;
    memcpy(b->s + b->len, data, n);
    b->len += n;
    b->s[b->len] = 0;
}

void sp_buf_json_str(sp_buf *b, const char *s)
{
    sp_buf_puts(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            sp_buf_printf(b, "\\%c", c);
        else if (c < 0x20)
            sp_buf_printf(b, "\\u%04x", c);
        else
            sp_buf_printf(b, "%c", c);
    }
    sp_buf_puts(b, "\"");
}

void sp_buf_json_num(sp_buf *b, double v)
{
    if (!isfinite(v)) {
        sp_buf_puts(b, "null");
        return;
    }
    if (fabs(v) < 1e15 && v == (double)(int64_t)v) {
        sp_buf_printf(b, "%lld", (long long)v);
        return;
    }
    char tmp[40];
    for (int prec = 6; prec <= 17; prec++) {   /* shortest text that round-trips */
        snprintf(tmp, sizeof tmp, "%.*g", prec, v);
        if (strtod(tmp, NULL) == v)
            break;
    }
    sp_buf_puts(b, tmp);
}

char *sp_buf_take(sp_buf *b)
{
    if (b->oom) {
        free(b->s);
        b->s = NULL;
        return NULL;
    }
    if (!b->s)
        buf_reserve(b, 0), b->s ? b->s[0] = 0 : 0;
    char *s = b->s;
    b->s = NULL;
    b->len = b->cap = 0;
    return s;
}

void sp_buf_free(sp_buf *b)
{
    free(b->s);
    b->s = NULL;
    b->len = b->cap = 0;
}

char *sp_base64(const void *data, size_t n)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *d = data;
    char *o = malloc((n + 2) / 3 * 4 + 1), *q = o;
    if (!o)
        return NULL;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)d[i] << 16 | (i + 1 < n ? (unsigned)d[i + 1] << 8 : 0) | (i + 2 < n ? d[i + 2] : 0);
        *q++ = t[v >> 18 & 63];
        *q++ = t[v >> 12 & 63];
        *q++ = i + 1 < n ? t[v >> 6 & 63] : '=';
        *q++ = i + 2 < n ? t[v & 63] : '=';
    }
    *q = 0;
    return o;
}

void sp_module_dir(char *buf, size_t cap)
{
    Dl_info di;
    char dir[PATH_MAX];
    snprintf(buf, cap, ".");
    /* the main program's name is argv[0] as typed: "segpipe", found through
     * PATH, names no folder; the kernel's link names the file itself */
    if (dladdr((void *)sp_module_dir, &di) && di.dli_fname &&
        realpath(strchr(di.dli_fname, '/') ? di.dli_fname : "/proc/self/exe", dir)) {
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = 0;
        snprintf(buf, cap, "%s", dir);
    }
}

void *sp_module_dlopen(const char *const *rel, size_t n, int *found)
{
    char dir[PATH_MAX], path[PATH_MAX + 64];
    sp_module_dir(dir, sizeof dir);
    *found = 0;
    for (size_t i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, rel[i]);
        if (access(path, F_OK) == 0) {
            *found = 1;
            return dlopen(path, RTLD_NOW | RTLD_LOCAL);
        }
    }
    return NULL;
}

int sp_top_k(const float *v, size_t n, int k, size_t *idx)
{
    int have = 0;
    for (size_t i = 0; i < n && k > 0; i++) {
        if (!(v[i] == v[i]))
            continue;
        int at = have;
        while (at > 0 && v[idx[at - 1]] < v[i])
            at--;
        if (at >= k)
            continue;
        int last = have < k ? have : k - 1;
        memmove(idx + at + 1, idx + at, (size_t)(last - at) * sizeof *idx);
        idx[at] = i;
        if (have < k)
            have++;
    }
    return have;
}
