/*
 * args.c — one table-driven option parser for the subcommands, so every
 * command answers the same way: long names (--name value, --name=value,
 * '_' read as '-', a unique prefix as getopt_long takes it), one-letter
 * names, options anywhere among the positionals, "--" ending them, values
 * checked as they are read (cli_int, cli_num), a missing value reported as
 * missing, and an unknown option answered with TotalSegmentator's meaning
 * (the command's hints) or the nearest known name.
 */
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(size_t) == sizeof(uint64_t), "CLI_SIZE also fills uint64_t limits");

/* "roi_subset" -> "roi-subset" (TotalSegmentator's spellings) */
static void dashed(const char *s, size_t n, char *out, size_t cap)
{
    size_t i = 0;
    for (; i < n && i + 1 < cap; i++)
        out[i] = s[i] == '_' ? '-' : s[i];
    out[i] = 0;
}

/* Levenshtein distance of a and b (short strings), capped at 9 */
static int distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 40 || lb > 40)
        return 9;
    int d[41][41];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            int sub = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            int del = d[i - 1][j] + 1, ins = d[i][j - 1] + 1;
            d[i][j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
    return d[la][lb] > 9 ? 9 : d[la][lb];
}

/* The option named by long name `name` (dashed): exact, else a unique
 * prefix; NULL with *ambiguous set when several share the prefix. */
static const cli_opt *find_long(const cli_opt *t, const char *name, int *ambiguous)
{
    const cli_opt *hit = NULL;
    int n = 0;
    *ambiguous = 0;
    for (const cli_opt *o = t; o->name; o++)
        if (!strcmp(o->name, name))
            return o;
    for (const cli_opt *o = t; o->name; o++)
        if (*name && !strncmp(o->name, name, strlen(name)))
            hit = o, n++;
    *ambiguous = n > 1;
    return n == 1 ? hit : NULL;
}

static const cli_opt *find_letter(const cli_opt *t, char c)
{
    for (const cli_opt *o = t; o->name; o++)
        if (o->letter && o->letter == c)
            return o;
    return NULL;
}

/* An argument that is itself an option of t (so not a value) */
static int is_option(const cli_opt *t, const char *a)
{
    int amb;
    char name[64];
    if (a[0] != '-' || !a[1])
        return 0;
    if (a[1] == '-') {
        const char *eq = strchr(a + 2, '=');
        dashed(a + 2, eq ? (size_t)(eq - a - 2) : strlen(a + 2), name, sizeof name);
        return find_long(t, name, &amb) != NULL || amb;
    }
    return a[2] == 0 && find_letter(t, a[1]) != NULL;
}

/* "unknown option" with a hint: the command's own answer for a spelling
 * (TotalSegmentator's), else the nearest long name within 2 edits. */
static int unknown(const char *cmd, const cli_opt *t, const cli_hint *hints, const char *arg)
{
    char spelled[64];
    const char *eq = strchr(arg, '=');
    size_t n = eq ? (size_t)(eq - arg) : strlen(arg);
    snprintf(spelled, sizeof spelled, "%.*s", (int)n, arg);
    for (const cli_hint *h = hints; h && h->spelling; h++)
        if (!strcmp(h->spelling, spelled)) {
            fprintf(stderr, "segpipe %s: unknown option %s: %s (see 'segpipe %s --help')\n", cmd, spelled,
                    h->answer, cmd);
            return 2;
        }
    const cli_opt *best = NULL;
    int bd = 3;
    char name[64];
    dashed(spelled + (spelled[1] == '-' ? 2 : 1), strlen(spelled) - (spelled[1] == '-' ? 2 : 1), name,
           sizeof name);
    for (const cli_opt *o = t; o->name && strlen(name) >= 3; o++) {   /* "-x" is no misspelling of "--ct" */
        int d = distance(name, o->name);
        if (d < bd)
            bd = d, best = o;
    }
    if (best && spelled[0] == '-' && spelled[1])
        fprintf(stderr, "segpipe %s: unknown option %s; did you mean --%s? (see 'segpipe %s --help')\n", cmd,
                spelled, best->name, cmd);
    else
        fprintf(stderr, "segpipe %s: unknown option %s (see 'segpipe %s --help')\n", cmd, spelled, cmd);
    return 2;
}

/* Store value into o's destination; 0, or an exit code after printing */
static int store(const char *cmd, const cli_opt *o, const char *value, void *ctx)
{
    char opt[72];
    snprintf(opt, sizeof opt, "--%s", o->name);
    switch (o->kind) {
    case CLI_FLAG: *(int *)o->dst = 1; return 0;
    case CLI_CLEAR: *(int *)o->dst = 0; return 0;
    case CLI_STR: *(const char **)o->dst = value; return 0;
    case CLI_INT: return cli_int(cmd, opt, value, (long)o->lo, (long)o->hi, (int *)o->dst) ? 2 : 0;
    case CLI_NUM: return cli_num(cmd, opt, value, o->lo, o->hi, (double *)o->dst) ? 2 : 0;
    case CLI_SIZE: {
        size_t v;
        if (cli_size(cmd, opt, value, &v))
            return 2;
        if (o->lo > 0 && (double)v < o->lo) {
            char msg[96];
            snprintf(msg, sizeof msg, o->lo == 1 ? "%s must be > 0" : "%s must be at least %.0f", opt, o->lo);
            return cli_usage_error(cmd, msg);
        }
        *(size_t *)o->dst = v;
        return 0;
    }
    case CLI_FN: return o->fn(cmd, value, ctx);
    default: return 0;
    }
}

static int takes_value(const cli_opt *o)
{
    return o->kind == CLI_STR || o->kind == CLI_INT || o->kind == CLI_NUM || o->kind == CLI_SIZE ||
           o->kind == CLI_FN || o->kind == CLI_POS;
}

/* -qv: several one-letter flags in one word */
static int flags(const char *cmd, const cli_opt *t, const cli_hint *hints, void *ctx, const char *arg)
{
    for (const char *c = arg + 1; *c; c++) {
        const cli_opt *o = find_letter(t, *c);
        if (!o || takes_value(o) || o->kind == CLI_HELP)
            return unknown(cmd, t, hints, arg);
        int rc = store(cmd, o, NULL, ctx);
        if (rc)
            return rc;
    }
    return 0;
}

/* a positional kept: the first CLI_MAX_POS in pos, every one in all when
 * given (all may be argv + 1: the n-th positional is written at or before
 * the argument being read, so nothing unread is overwritten) */
static void positional(cli_args *a, const char *v)
{
    if (a->n < CLI_MAX_POS)
        a->pos[a->n] = v;
    if (a->all)
        a->all[a->n] = (char *)v;
    a->n++;
}

/* One option at argv[*i] (advanced past its value); 0, -1 for help, else an exit code. */
static int one(const char *cmd, const cli_opt *t, const cli_hint *hints, void *ctx, int argc, char **argv, int *i,
               cli_args *a)
{
    const char *arg = argv[*i], *value = NULL;
    const cli_opt *o;
    int amb = 0, underscore = 0;
    if (arg[1] == '-') {
        const char *eq = strchr(arg + 2, '=');
        char name[64];
        size_t n = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
        dashed(arg + 2, n, name, sizeof name);
        underscore = memchr(arg + 2, '_', n) != NULL;
        o = n < sizeof name ? find_long(t, name, &amb) : NULL;
        if (amb) {
            fprintf(stderr, "segpipe %s: option %.*s is ambiguous (see 'segpipe %s --help')\n", cmd, (int)n + 2,
                    arg, cmd);
            return 2;
        }
        value = eq ? eq + 1 : NULL;
    } else {
        o = find_letter(t, arg[1]);
        if (o && arg[2] && !takes_value(o) && o->kind != CLI_HELP)
            return flags(cmd, t, hints, ctx, arg);     /* -qv */
        if (o && arg[2])    /* -t4 */
            value = arg + 2;
    }
    if (!o)
        return unknown(cmd, t, hints, arg);
    if (o->kind == CLI_HELP)
        return -1;
    if (!takes_value(o)) {
        if (value) {
            fprintf(stderr, "segpipe %s: --%s takes no value (see 'segpipe %s --help')\n", cmd, o->name, cmd);
            return 2;
        }
        return store(cmd, o, NULL, ctx);
    }
    if (!value) {
        if (*i + 1 >= argc || is_option(t, argv[*i + 1])) {
            fprintf(stderr, "segpipe %s: %s needs a value%s%s%s (see 'segpipe %s --help')\n", cmd, arg,
                    o->value ? " (" : "", o->value ? o->value : "", o->value ? ")" : "", cmd);
            return 2;
        }
        value = argv[++*i];
    }
    if (o->kind == CLI_POS) {    /* -i INPUT: TotalSegmentator's spelling of the positional */
        positional(a, value);
        return 0;
    }
    if (o->kind == CLI_FN && o->multi && (underscore || o->multi == 2)) {
        /* --roi_subset a b c: TotalSegmentator's list (-f 0 1 2: nnU-Net's, multi 2), joined with ',' */
        static char joined[4096];
        snprintf(joined, sizeof joined, "%s", value);
        while (*i + 1 < argc && argv[*i + 1][0] != '-' && strlen(joined) + strlen(argv[*i + 1]) + 2 < sizeof joined)
            strcat(strcat(joined, ","), argv[++*i]);
        value = joined;
    }
    return store(cmd, o, value, ctx);
}

int cli_parse(const char *cmd, const cli_opt *t, const cli_hint *hints, int argc, char **argv, void *ctx,
              cli_args *a)
{
    int dash = 0;
    a->n = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (dash || arg[0] != '-' || !arg[1]) {
            positional(a, arg);
            continue;
        }
        if (!strcmp(arg, "--")) {
            dash = 1;
            continue;
        }
        int rc = 0;
        for (const cli_hint *h = hints; h && h->spelling && !rc; h++)
            if (arg[1] != '-' && !strcmp(arg, h->spelling))   /* "-ta": another tool's flag, not -t a */
                rc = unknown(cmd, t, hints, arg);
        if (!rc)
            rc = one(cmd, t, hints, ctx, argc, argv, &i, a);
        if (rc)
            return rc < 0 ? CLI_HELP_ASKED : rc;
    }
    return 0;
}
