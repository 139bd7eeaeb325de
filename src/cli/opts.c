/* opts.c — strict option values: the whole text must be a number in range,
 * else the command stops with exit 2 naming the option. */
#include "cli.h"

extern char **environ;
#include <stdio.h>
#include <sys/wait.h>
#include <spawn.h>

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

/* Run one inference of the package in a child process (`segpipe model probe`)
 * before a GPU run: ONNX Runtime's third-party CUDA plugin segfaults on some
 * operators (ISNet's Resize to output sizes, docs/gpu.md), and a crash is
 * better reported than suffered. 0 when it ran (or was not needed), else an
 * exit code after printing why. SEGPIPE_NO_PROBE=1 skips it. */
int cli_probe(const char *model, const char *device)
{
    if (!device || !strcmp(device, "cpu") || (getenv("SEGPIPE_NO_PROBE") && *getenv("SEGPIPE_NO_PROBE")))
        return 0;
    char *argv[] = {"segpipe", "model", "probe", (char *)model, "--device", (char *)device, NULL};
    pid_t pid;
    if (posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, environ) != 0)
        return 0;   /* cannot probe: go on */
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFSIGNALED(status)) {
        cli_errf("ONNX Runtime's %s provider crashed (%s) running one inference of %s; the "
                "third-party CUDA plugin is known to crash on some operators (ISNet's Resize to output sizes, "
                "docs/gpu.md): run this model with --device cpu\n", device, strsignal(WTERMSIG(status)), model);
        return 5;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 5;
}

void cli_demo_note(const sp_package *pk, int quiet)
{
    if (sp_package_demo(pk) && !quiet)
        fprintf(stderr, "note: '%s' is a demo model (its manifest says \"demo\": true): not for real %s\n",
                sp_package_name(pk), sp_package_is_volume(pk) ? "scans" : "photos");
}

void cli_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const char *p = s; p && *p; p++)
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if ((unsigned char)*p < 32)
            fprintf(f, "\\u%04x", (unsigned char)*p);
        else
            fputc(*p, f);
    fputc('"', f);
}
