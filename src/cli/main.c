/*
 * segpipe — the command-line front end, a thin layer over segpipe.h.
 *
 * Subcommands are registered in one table. Each parses its own options and
 * maps the library's sp_status to the documented exit code:
 *   0 ok, 2 usage, 3 input, 4 model, 5 runtime, 6 I/O, 7 out of memory.
 */
#include "cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <execinfo.h>
#include <ftw.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef SP_BUILD_FLAGS
#define SP_BUILD_FLAGS "unknown"
#endif

/* ------------------------------------------------------------- version */

/* the commit this binary was built from: the Makefile passes it with -D
 * (a short hash, "-dirty" with local changes; never a path) */
#ifndef SP_GIT_COMMIT
#define SP_GIT_COMMIT "unknown"
#endif

static int cmd_version(int argc, char **argv)
{
    char prov[512];
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: segpipe version\n"
               "Prints segpipe's version and the git commit it was built from, the ONNX Runtime version and\n"
               "its execution providers, whether the GPU path is usable (and why not), the build flags and\n"
               "the default model's folder.\n");
        return 0;
    }
    printf("segpipe %s\n", SP_VERSION_STRING);
    printf("commit: %s\n", SP_GIT_COMMIT);
    printf("ONNX Runtime %s\n", sp_ort_version());
    if (sp_ort_providers(prov, sizeof prov) == SP_OK)
        printf("providers: %s\n", prov);
    sp_gpu_status(prov, sizeof prov);
    printf("gpu: %s\n", prov);
    printf("build: %s\n", SP_BUILD_FLAGS);
    printf("default model: %s\n", sp_default_model_dir());
    return 0;
}

/* --------------------------------------------------------------- table */

typedef struct command {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} command;

static const command commands[] = {
    {"ct", cmd_ct, "CT organ segmentation: NIfTI or DICOM in, labels + passport out"},
    {"passport", cmd_passport, "measure every structure of a label map (any tool's)"},
    {"model", cmd_model, "model check DIR: validate a model package"},
    {"masks", cmd_masks, "photo masks: every requested mask from one inference per batch"},
    {"mri", cmd_mri, "brain MRI segmentation (conformed models such as brainchop's MeshNet): as ct"},
    {"predict", cmd_predict, "nnUNetv2_predict's folder contract: -i IN_DIR -o OUT_DIR -m PKG (CASE_0000.nii.gz ...)"},
    {"classify", cmd_classify, "photo classification: top-K labels per photo, one inference per batch"},
    {"video", cmd_video, "video background replacement: RAM cache, batches, compositing workers"},
    {"serve", cmd_serve, "HTTP service: KServe v2, /v1/ct, status, metrics"},
    {"submit", cmd_submit, "queue CT jobs on Redis Streams (for segpipe worker)"},
    {"worker", cmd_worker, "run queued CT jobs from Redis Streams (any number, any machines)"},
    {"jobs", cmd_jobs, "queued/running/done/failed counts and job states on Redis"},
    {"bench", cmd_bench, "benchmark the CT pipeline on cases; 'bench video' sweeps the video pipeline"},
    {"resample", cmd_resample, "resample (and pad) a volume, e.g. to make benchmark inputs"},
    {"models", cmd_models, "list the bundled (and a given) model with its labels"},
    {"tasks", cmd_tasks, "list task packages (several part models, e.g. TotalSegmentator's total)"},
#ifndef SP_NO_DICOM
    {"dicom-node", cmd_dicom_node, "DICOM node: segment series received by C-STORE, send the SEG/RTSTRUCT on"},
#endif
    {"version", cmd_version, "versions, ONNX Runtime providers, build flags"},
};

static void help(FILE *f)
{
    fprintf(f, "segpipe %s — segmentation pipelines on ONNX Runtime\n\nusage: segpipe COMMAND [options]\n\n",
            SP_VERSION_STRING);
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].help);
    fprintf(f, "\n'segpipe COMMAND --help' for a command's options.\n"
               "Exit codes: 0 ok, 2 usage, 3 input, 4 model, 5 runtime, 6 I/O, 7 out of memory, 130 stopped.\n");
}

/*
 * Long command lines (thousands of photo paths) are moved off the process's
 * command line: ONNX Runtime reads /proc/self/cmdline at start-up and its
 * parser recursed past the 8 MB stack on a 36 KB command line (1,000
 * photos). segpipe re-executes itself with the arguments in a memfd and
 * reads them back from there.
 */
#define SP_ARGV_LIMIT 8192
#define SP_ARGV_FLAG "--argv-from-fd"

static void reexec_short(int argc, char **argv)
{
    size_t total = 0;
    for (int i = 0; i < argc; i++)
        total += strlen(argv[i]) + 1;
    if (total <= SP_ARGV_LIMIT || getenv("SEGPIPE_NO_REEXEC"))
        return;
    int fd = memfd_create("segpipe-argv", 0);
    if (fd < 0)
        return;
    for (int i = 0; i < argc; i++) {
        size_t n = strlen(argv[i]) + 1;
        if (write(fd, argv[i], n) != (ssize_t)n) {
            close(fd);
            return;
        }
    }
    char fds[16];
    snprintf(fds, sizeof fds, "%d", fd);
    char *nargv[] = {argv[0], (char *)SP_ARGV_FLAG, fds, NULL};
    execv("/proc/self/exe", nargv);
    close(fd);                /* exec failed: carry on with the long command line */
}

/* SEGPIPE_BACKTRACE=1: on a crash, print the stack (glibc backtrace) for
 * diagnosis on machines without a debugger; resolve with addr2line. */
static void crash_trace(int sig)
{
    void *frames[64];
    int n = backtrace(frames, 64);
    const char msg[] = "segpipe: fatal signal, backtrace:\n";
    if (write(2, msg, sizeof msg - 1) < 0)
        _exit(128 + sig);
    backtrace_symbols_fd(frames, n, 2);
    _exit(128 + sig);
}

static char **g_argv;       /* arguments read back from the memfd, kept until exit */

static void free_argv(void)
{
    if (g_argv) {
        free(g_argv[0]);        /* the buffer all arguments point into */
        free(g_argv);
    }
}

/* argv back from the memfd */
static int argv_from_fd(const char *fds, char ***out)
{
    int fd = atoi(fds);
    off_t n = lseek(fd, 0, SEEK_END);
    if (n <= 0 || lseek(fd, 0, SEEK_SET) != 0)
        return -1;
    char *buf = malloc((size_t)n + 1);
    if (!buf || read(fd, buf, (size_t)n) != n) {
        free(buf);
        return -1;
    }
    close(fd);
    buf[n] = 0;
    int argc = 0;
    for (off_t i = 0; i < n; i++)
        argc += buf[i] == 0;
    char **av = calloc((size_t)argc + 1, sizeof *av);
    if (!av) {
        free(buf);
        return -1;
    }
    for (int i = 0, k = 0; i < n && k < argc; k++) {
        av[k] = buf + i;
        i += (int)strlen(buf + i) + 1;
    }
    g_argv = av;
    atexit(free_argv);
    *out = av;
    return argc;
}

int main(int argc, char **argv)
{
    if (getenv("SEGPIPE_BACKTRACE")) {
        signal(SIGSEGV, crash_trace);
        signal(SIGBUS, crash_trace);
        signal(SIGABRT, crash_trace);
    }
    if (argc == 3 && !strcmp(argv[1], SP_ARGV_FLAG)) {
        if ((argc = argv_from_fd(argv[2], &argv)) < 2) {
            cli_errf("cannot read the arguments back\n");
            return 2;
        }
    } else {
        reexec_short(argc, argv);
    }
    if (argc < 2) {
        help(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        help(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version"))
        return cmd_version(0, NULL);
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (!strcmp(argv[1], commands[i].name)) {
            cli_set_command(commands[i].name);
            return commands[i].fn(argc - 1, argv + 1);
        }
    cli_errf("unknown command '%s'\n", argv[1]);
    help(stderr);
    return 2;
}
