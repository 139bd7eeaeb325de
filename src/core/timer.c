/*
 * timer.c — monotonic clock, per-stage timing tables, peak RSS.
 */
#include <stdio.h>
#include "core.h"

#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

double sp_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void sp_timings_add(sp_timings *t, const char *name, double seconds)
{
    for (int i = 0; i < t->n; i++) {
        if (strcmp(t->stage[i].name, name) == 0) {
            t->stage[i].seconds += seconds;
            return;
        }
    }
    if (t->n >= SP_MAX_STAGES)
        return;
    snprintf(t->stage[t->n].name, sizeof t->stage[t->n].name, "%s", name);
    t->stage[t->n].seconds = seconds;
    t->n++;
}

double sp_timings_total(const sp_timings *t)
{
    double s = 0;
    for (int i = 0; i < t->n; i++)
        s += t->stage[i].seconds;
    return s;
}

/* VmHWM of /proc/self/status: this program's own high-water mark.
 * getrusage's ru_maxrss is kept across fork and exec on Linux, so a program
 * started by a big parent (a Python benchmark holding PyTorch) reports the
 * parent's peak; it is only the fallback. */
size_t sp_peak_rss(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    unsigned long kb = 0;
    int found = 0;
    while (f && !found && fgets(line, sizeof line, f))
        found = sscanf(line, "VmHWM: %lu", &kb) == 1;
    if (f)
        fclose(f);
    if (found)
        return (size_t)kb * 1024;
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (size_t)ru.ru_maxrss * 1024;   /* Linux reports KiB */
}

size_t sp_current_rss(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2)
            res = 0;
        fclose(f);
    }
    return (size_t)res * (size_t)sysconf(_SC_PAGESIZE);
}

int sp_peak_rss_reset(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f)
        return -1;
    int ok = fputs("5", f) >= 0;   /* 5: reset the peak RSS (Linux 4.0+) */
    return fclose(f) == 0 && ok ? 0 : -1;
}

int sp_num_cores(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

size_t sp_mem_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[128];
    unsigned long long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
            break;
    if (f)
        fclose(f);
    if (kb)
        return (size_t)kb * 1024;
    long pages = sysconf(_SC_AVPHYS_PAGES), ps = sysconf(_SC_PAGESIZE);   /* no /proc: free pages */
    return pages > 0 && ps > 0 ? (size_t)pages * (size_t)ps : 0;
}
