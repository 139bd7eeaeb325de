/*
 * common.c — what every subcommand of the CLI shares: the message and exit
 * code of a failed call, usage errors, log levels, folders made and
 * removed, small files written atomically. Kept apart from main.c (the
 * command table) so no subcommand file calls back into its caller.
 */
#include "cli.h"

#include <errno.h>
#include <ftw.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int g_quiet, g_verbose;

static const char *g_command;   /* the subcommand running, for the messages' prefix */

void cli_set_command(const char *name) { g_command = name; }

int cli_errf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = fprintf(stderr, "segpipe%s%s: ", g_command ? " " : "", g_command ? g_command : "");
    n += vfprintf(stderr, fmt, ap);
    va_end(ap);
    return n;
}

int cli_fail(sp_status st, const char *ctx)
{
    cli_errf("%s%s%s\n", ctx ? ctx : "", ctx ? ": " : "", sp_last_error());
    return sp_status_exit_code(st);
}

int cli_mkdir_p(const char *path)
{
    char dir[4096];
    struct stat st;
    snprintf(dir, sizeof dir, "%s", path);
    for (char *q = dir + 1; *q; q++)
        if (*q == '/') {
            *q = 0;
            mkdir(dir, 0755);
            *q = '/';
        }
    mkdir(dir, 0755);
    return stat(dir, &st) == 0 && S_ISDIR(st.st_mode) ? 0 : -1;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p) != 0 && errno != ENOENT;
}

int cli_rm_rf(const char *path)
{
    return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 && errno != ENOENT ? -1 : 0;
}

int cli_usage_error(const char *cmd, const char *msg)
{
    fprintf(stderr, "segpipe %s: %s (see 'segpipe %s --help')\n", cmd, msg, cmd);
    return 2;
}

/* -q hides the tables, notes and progress, never a warning: a script that
 * runs an MRI through a CT model with -q still sees it said (new-user trial,
 * 2026-12-08); -v adds the library's info and debug lines. */
static void apply_logging(void)
{
    sp_log_set_level(g_verbose ? SP_LOG_DEBUG : SP_LOG_WARN);
}

void cli_set_logging(int verbose)
{
    g_verbose |= verbose;
    apply_logging();
}


void cli_set_quiet(int quiet)
{
    g_quiet |= quiet;
    apply_logging();
}

int cli_quiet(void)
{
    return g_quiet;
}

int cli_write_text(const char *path, const char *text)
{
    sp_status st = sp_write_file_atomic(path, text, strlen(text));
    return st ? cli_fail(st, NULL) : 0;
}

/* The folder an output file goes into, made when missing (as
 * TotalSegmentator does); 0, or 6 after printing why not. */
int cli_output_folder(const char *cmd, const char *file)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", file);
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir)
        return 0;
    *slash = 0;
    if (cli_mkdir_p(dir) == 0)
        return 0;
    fprintf(stderr, "segpipe %s: cannot make the output folder %s\n", cmd, dir);
    return 6;
}

int cli_check_input(const char *cmd, const char *path)
{
    sp_status st = sp_volume_sniff(path);
    if (!st)
        return 0;
    fprintf(stderr, "segpipe %s: %s\n", cmd, sp_last_error());
    return sp_status_exit_code(st);
}

const char *cli_word(const char *const (*table)[2], size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(key, table[i][0]))
            return table[i][1];
    return "";
}
