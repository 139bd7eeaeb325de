/* bench.h — what bench.c and bench_tput.c share (`segpipe bench`). */
#ifndef SP_CLI_BENCH_H
#define SP_CLI_BENCH_H
#include <cjson/cJSON.h>
#include <stdio.h>

typedef struct bench_opts {
    const char *model, *out;
    int runs, warmup, threads, tile_batch;
    int jobs;   /* 0: no throughput pass; 1-8: cases per minute, N at a time (bench_tput.c) */
} bench_opts;

/* Child process: the throughput passes over cases[0..n), one JSON object written to fd. */
void bench_throughput(char *const *cases, int n, const bench_opts *o, int fd);
/* A child's result: j written to fd as compact JSON, then freed
 * (bench_tput.c, for bench.c's case children too). */
void bench_send(int fd, cJSON *j);
/* bench.md's throughput section from that object (nothing when t is NULL). */
void bench_throughput_md(FILE *f, const cJSON *t);
#endif
