/* opts.c — strict option values: the whole text must be a number in range,
 * else the command stops with exit 2 naming the option. */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int cli_int(const char *cmd, const char *opt, const char *text, long lo, long hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || end == text || *end || v < lo || v > hi) {
        fprintf(stderr, "segpipe %s: %s wants an integer in %ld..%ld, got '%s'\n", cmd, opt, lo, hi, text);
        return -1;
    }
    *out = (int)v;
    return 0;
}

int cli_num(const char *cmd, const char *opt, const char *text, double lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "segpipe %s: %s wants a number in %g..%g, got '%s'\n", cmd, opt, lo, hi, text);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_size(const char *cmd, const char *opt, const char *text, size_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    double mul = 1;
    if (end != text && *end) {
        const char *u = end;
        mul = !strcmp(u, "K") || !strcmp(u, "KiB") ? 1024.0
            : !strcmp(u, "M") || !strcmp(u, "MiB") ? 1048576.0
            : !strcmp(u, "G") || !strcmp(u, "GiB") ? 1073741824.0 : 0;
    }
    if (errno || end == text || mul == 0 || !(v >= 0) || v * mul > 1e15) {
        fprintf(stderr, "segpipe %s: %s wants a size in bytes (suffix K, M or G allowed), got '%s'\n", cmd, opt,
                text);
        return -1;
    }
    *out = (size_t)(v * mul);
    return 0;
}
