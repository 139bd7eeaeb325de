/*
 * gaussian.c — the Gaussian importance map of nnU-Net's sliding window
 * (nnunetv2/inference/sliding_window_prediction.py, compute_gaussian):
 * a separable Gaussian with sigma = patch size x sigma_scale (1/8), cut at
 * 4 sigma as scipy's gaussian_filter does, scaled so its centre is 10, and
 * its zeros replaced by its smallest non-zero value. Shared by the CPU
 * window (window.c) and the GPU window (window_gpu.c), which otherwise
 * do not call each other's internals.
 */
#include "pipeline.h"

#include <math.h>
#include <stdlib.h>

float *sp_gaussian_map(const int64_t patch[3], double sigma_scale)
{
    double *k[3];
    size_t n = (size_t)(patch[0] * patch[1] * patch[2]);
    float *g = malloc(n * sizeof *g);
    for (int d = 0; d < 3; d++) {
        k[d] = calloc((size_t)patch[d], sizeof(double));
        if (!k[d] || !g) {
            for (int j = 0; j <= d; j++)
                free(k[j]);
            free(g);
            return NULL;
        }
        double sigma = (double)patch[d] * sigma_scale;
        int64_t c = patch[d] / 2;
        int64_t r = (int64_t)(4.0 * sigma + 0.5);   /* scipy: truncate = 4 */
        double sum = 0;
        for (int64_t x = -r; x <= r; x++)
            sum += exp(-0.5 * (double)(x * x) / (sigma * sigma));
        for (int64_t p = 0; p < patch[d]; p++) {
            int64_t x = p - c;
            k[d][p] = (x >= -r && x <= r) ? exp(-0.5 * (double)(x * x) / (sigma * sigma)) / sum : 0;
        }
    }
    double mx = k[0][patch[0] / 2] * k[1][patch[1] / 2] * k[2][patch[2] / 2];
    double mn = INFINITY;
    size_t i = 0;
    for (int64_t a = 0; a < patch[0]; a++)
        for (int64_t b = 0; b < patch[1]; b++)
            for (int64_t c = 0; c < patch[2]; c++, i++) {
                double v = k[0][a] * k[1][b] * k[2][c] / (mx / 10.0);
                g[i] = (float)v;
                if (g[i] > 0 && g[i] < mn)
                    mn = g[i];
            }
    for (i = 0; i < n; i++)
        if (g[i] == 0)
            g[i] = (float)mn;
    for (int d = 0; d < 3; d++)
        free(k[d]);
    return g;
}
