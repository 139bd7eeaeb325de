/*
 * calib.c — activation ranges for INT8 calibration (tools/import/onnx_int8.py).
 *
 * Static quantisation needs the range of every tensor that gets a
 * QuantizeLinear, measured on real inputs through the same preprocessing
 * the model sees in use. The tool therefore does not run the network
 * itself: it adds the tensors to quantise as extra graph outputs and runs
 * `segpipe ct|mri|masks` on its calibration inputs with
 * SEGPIPE_CALIBRATE=FILE. For such a run the model layer asks ORT for the
 * extra outputs too and hands them here; the minimum and maximum of each
 * (float32 only, NaN skipped) are kept and appended to FILE, one line per
 * tensor ("name<TAB>min<TAB>max<TAB>values<TAB>sum of each run's min<TAB>
 * sum of each run's max<TAB>runs"), when the model is released.
 * Nothing is recorded without the variable: ordinary runs are untouched.
 */
#include "calib.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct sp_calib {
    pthread_mutex_t mu;
    int n;                     /* model outputs */
    char (*name)[128];
    double *lo, *hi;
    double *sum_lo, *sum_hi;   /* per-run minimum and maximum, summed (their mean: ORT's moving average) */
    unsigned long long *count, *runs;
};

sp_calib *sp_calib_open(int n_out, const char *const *names)
{
    const char *f = getenv("SEGPIPE_CALIBRATE");
    if (!f || !*f || n_out < 2)
        return NULL;
    sp_calib *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    pthread_mutex_init(&c->mu, NULL);
    c->n = n_out;
    c->name = calloc((size_t)n_out, sizeof *c->name);
    c->lo = malloc((size_t)n_out * sizeof *c->lo);
    c->hi = malloc((size_t)n_out * sizeof *c->hi);
    c->count = calloc((size_t)n_out, sizeof *c->count);
    c->runs = calloc((size_t)n_out, sizeof *c->runs);
    c->sum_lo = calloc((size_t)n_out, sizeof *c->sum_lo);
    c->sum_hi = calloc((size_t)n_out, sizeof *c->sum_hi);
    if (!c->name || !c->lo || !c->hi || !c->count || !c->runs || !c->sum_lo || !c->sum_hi) {
        sp_calib_close(c);
        return NULL;
    }
    for (int i = 0; i < n_out; i++) {
        snprintf(c->name[i], sizeof c->name[i], "%s", names[i]);
        c->lo[i] = INFINITY;
        c->hi[i] = -INFINITY;
    }
    return c;
}

int sp_calib_outputs(const sp_calib *c) { return c ? c->n : 0; }

void sp_calib_update(sp_calib *c, int i, const float *x, size_t n)
{
    if (!c || i < 0 || i >= c->n)
        return;
    float lo = INFINITY, hi = -INFINITY;
    size_t seen = 0;
    for (size_t k = 0; k < n; k++) {
        if (isnan(x[k]))
            continue;
        lo = x[k] < lo ? x[k] : lo;
        hi = x[k] > hi ? x[k] : hi;
        seen++;
    }
    pthread_mutex_lock(&c->mu);
    c->lo[i] = lo < c->lo[i] ? lo : c->lo[i];
    c->hi[i] = hi > c->hi[i] ? hi : c->hi[i];
    c->count[i] += seen;
    if (seen) {
        c->sum_lo[i] += lo;
        c->sum_hi[i] += hi;
        c->runs[i]++;
    }
    pthread_mutex_unlock(&c->mu);
}

void sp_calib_close(sp_calib *c)
{
    if (!c)
        return;
    const char *path = getenv("SEGPIPE_CALIBRATE");
    FILE *f = path && *path && c->count ? fopen(path, "a") : NULL;
    for (int i = 0; f && i < c->n; i++)
        if (c->count[i])
            fprintf(f, "%s\t%.9g\t%.9g\t%llu\t%.9g\t%.9g\t%llu\n", c->name[i], c->lo[i], c->hi[i], c->count[i],
                    c->sum_lo[i], c->sum_hi[i], c->runs[i]);
    if (f && fclose(f) != 0)
        SP_WARN("SEGPIPE_CALIBRATE: cannot write the ranges");
    pthread_mutex_destroy(&c->mu);
    free(c->name);
    free(c->lo);
    free(c->hi);
    free(c->count);
    free(c->runs);
    free(c->sum_lo);
    free(c->sum_hi);
    free(c);
}
