/*
 * passport.c — every structure of a label map measured in one pass.
 *
 * Pass 0 finds the largest label and the HU range. Pass 1 walks the volume
 * once on all cores (slabs along k), each thread with its own per-label
 * accumulators: voxel count, HU sums, min/max, an exact HU histogram
 * (integer CT values; non-integer volumes fall back to sorting the values of
 * each label), index moments (centroid, covariance), bounding box and
 * exposed voxel faces (surface). The partials are merged at the end, so the
 * cost is linear in voxels and nearly flat in the number of labels.
 * Connected components (26-connectivity) are a second, run-based pass.
 *
 * Definitions (docs/passport.md): percentiles as numpy's default (linear);
 * std with ddof 0; touches_border when any voxel lies in the first or last
 * 3 slices along any axis (TotalSegmentator's rule); surface = area of the
 * voxel faces between the structure and anything else; principal axis
 * length = 2 * sqrt(5 * eigenvalue) of the world-mm covariance (the full
 * axis of the solid ellipsoid with the same second moments).
 */
#include "pipeline.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct lab_acc {
    int64_t n;
    double sum, sq;            /* HU */
    double sum_i16;            /* sum of (int16) HU, TotalSegmentator's cast */
    float mn, mx;
    int64_t s[3], ss[6];       /* moments: i j k, ii jj kk ij ik jk */
    int64_t lo[3], hi[3];
    int64_t faces[3];
} lab_acc;

struct sp_passport {
    char *json, *stats, *table;
    int found, border;
};

sp_passport_params sp_passport_default_params(void)
{
    sp_passport_params p = {0, 1, 0, NULL, 0};
    return p;
}



/* value at sorted rank r (0-based) from a histogram */
static double hist_rank(const uint64_t *h, int64_t nb, int64_t hmin, int64_t r)
{
    int64_t cum = 0;
    for (int64_t i = 0; i < nb; i++) {
        cum += (int64_t)h[i];
        if (cum > r)
            return (double)(hmin + i);
    }
    return (double)(hmin + nb - 1);
}

static double pct_hist(const uint64_t *h, int64_t nb, int64_t hmin, int64_t n, double q)
{
    double pos = q / 100.0 * (double)(n - 1);
    int64_t lo = (int64_t)floor(pos);
    double f = pos - (double)lo;
    double a = hist_rank(h, nb, hmin, lo);
    if (f == 0 || lo + 1 >= n)
        return a;
    double b = hist_rank(h, nb, hmin, lo + 1);
    return a + (b - a) * f;
}

static double pct_sorted(const float *v, int64_t n, double q)
{
    double pos = q / 100.0 * (double)(n - 1);
    int64_t lo = (int64_t)floor(pos);
    double f = pos - (double)lo;
    if (f == 0 || lo + 1 >= n)
        return v[lo];
    return v[lo] + ((double)v[lo + 1] - v[lo]) * f;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* symmetric 3x3 eigenvalues (Jacobi), descending */
static void eig3(double m[3][3], double ev[3])
{
    for (int sweep = 0; sweep < 50; sweep++) {
        double off = fabs(m[0][1]) + fabs(m[0][2]) + fabs(m[1][2]);
        if (off < 1e-14 * (fabs(m[0][0]) + fabs(m[1][1]) + fabs(m[2][2]) + 1e-300))
            break;
        for (int p = 0; p < 2; p++)
            for (int q = p + 1; q < 3; q++) {
                if (m[p][q] == 0)
                    continue;
                double th = (m[q][q] - m[p][p]) / (2 * m[p][q]);
                double t = (th >= 0 ? 1 : -1) / (fabs(th) + sqrt(th * th + 1));
                double cs = 1 / sqrt(t * t + 1), sn = t * cs;
                for (int k = 0; k < 3; k++) {
                    double a = m[k][p], b2 = m[k][q];
                    m[k][p] = cs * a - sn * b2;
                    m[k][q] = sn * a + cs * b2;
                }
                for (int k = 0; k < 3; k++) {
                    double a = m[p][k], b2 = m[q][k];
                    m[p][k] = cs * a - sn * b2;
                    m[q][k] = sn * a + cs * b2;
                }
            }
    }
    ev[0] = m[0][0], ev[1] = m[1][1], ev[2] = m[2][2];
    for (int i = 0; i < 3; i++)
        for (int j = i + 1; j < 3; j++)
            if (ev[j] > ev[i]) {
                double t = ev[i];
                ev[i] = ev[j];
                ev[j] = t;
            }
}

static void json_vec(sp_buf *b, const double *v, int n)
{
    sp_buf_puts(b, "[");
    for (int i = 0; i < n; i++) {
        if (i)
            sp_buf_puts(b, ", ");
        sp_buf_json_num(b, v[i]);
    }
    sp_buf_puts(b, "]");
}

/* TotalSegmentator's rule: a voxel in the first or last 3 slices of any axis */
static int touches_border(const lab_acc *a, const int64_t dim[3])
{
    for (int k = 0; k < 3; k++)
        if (a->lo[k] < 3 || a->hi[k] > dim[k] - 4)
            return 1;
    return 0;
}

/* numpy's round(x, 5): rint(x * 1e5) / 1e5 */
static double round5(double x) { return nearbyint(x * 1e5) / 1e5; }


typedef struct pp_ctx {
    const float *ct;           /* the voxels as float, or */
    const int16_t *ct16;       /* as int16 (sp_ct_run_inplace's packed input) */
    const uint16_t *lab;
    int64_t dim[3];
    int nl;                    /* labels 0..nl-1 */
    lab_acc *acc;              /* nworkers x nl */
    uint32_t *hist;            /* nworkers x nl x nbins, or NULL */
    int64_t hmin, nbins;
    /* pass 0 */
    int find_range;            /* the reader did not record the HU range */
    uint16_t *wmax;
    float *wmin_hu, *wmax_hu;
} pp_ctx;

static inline float vox(const pp_ctx *c, int64_t i) { return c->ct16 ? (float)c->ct16[i] : c->ct[i]; }

/* numpy's astype(int16) of a HU value: truncation, wrapping past the int16
 * range (C leaves an out-of-range conversion undefined). */
static int16_t as_int16(float v)
{
    if (v >= -32768.0f && v < 32768.0f)
        return (int16_t)v;
    if (!isfinite(v))
        return 0;
    return (int16_t)(uint16_t)(uint64_t)(int64_t)fmod(trunc((double)v), 65536.0);
}

static void pass0(void *vc, int64_t b, int64_t e, int w)
{
    pp_ctx *c = vc;
    int64_t plane = c->dim[0] * c->dim[1];
    uint16_t m = c->wmax[w];
    float lo = c->wmin_hu[w], hi = c->wmax_hu[w];
    for (int64_t i = b * plane; i < e * plane; i++)
        m = c->lab[i] > m ? c->lab[i] : m;
    if (c->find_range)
        for (int64_t i = b * plane; i < e * plane; i++) {
            float v = vox(c, i);
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
    c->wmax[w] = m;
    c->wmin_hu[w] = lo;
    c->wmax_hu[w] = hi;
}

static inline void acc_voxel(lab_acc *a, float v, int64_t x, int64_t y, int64_t z)
{
    if (a->n == 0) {
        a->mn = a->mx = v;
        a->lo[0] = a->hi[0] = x;
        a->lo[1] = a->hi[1] = y;
        a->lo[2] = a->hi[2] = z;
    }
    a->n++;
    a->sum += v;
    a->sq += (double)v * v;
    a->sum_i16 += (double)as_int16(v);
    if (v < a->mn) a->mn = v;
    if (v > a->mx) a->mx = v;
    a->s[0] += x; a->s[1] += y; a->s[2] += z;
    a->ss[0] += x * x; a->ss[1] += y * y; a->ss[2] += z * z;
    a->ss[3] += x * y; a->ss[4] += x * z; a->ss[5] += y * z;
    if (x < a->lo[0]) a->lo[0] = x;
    if (x > a->hi[0]) a->hi[0] = x;
    if (y < a->lo[1]) a->lo[1] = y;
    if (y > a->hi[1]) a->hi[1] = y;
    if (z < a->lo[2]) a->lo[2] = z;
    if (z > a->hi[2]) a->hi[2] = z;
}

/* Slabs b..e of pass 1; F or S holds the voxels (the other is NULL): inlined
 * twice, once per voxel type. */
static inline __attribute__((always_inline)) void pass1_slabs(pp_ctx *c, int64_t b, int64_t e, int w,
                                                              const float *F, const int16_t *S)
{
    const int64_t nx = c->dim[0], ny = c->dim[1], nz = c->dim[2];
    lab_acc *A = c->acc + (size_t)w * (size_t)c->nl;
    uint32_t *H = c->hist ? c->hist + (size_t)w * (size_t)c->nl * (size_t)c->nbins : NULL;
    for (int64_t z = b; z < e; z++)
        for (int64_t y = 0; y < ny; y++) {
            int64_t row = (z * ny + y) * nx;
            const uint16_t *L = c->lab + row;
            for (int64_t x = 0; x < nx; x++) {
                uint16_t l = L[x];
                if (!l)
                    continue;
                lab_acc *a = &A[l];
                float v = S ? (float)S[row + x] : F[row + x];
                acc_voxel(a, v, x, y, z);
                a->faces[0] += (x == 0 || L[x - 1] != l) + (x == nx - 1 || L[x + 1] != l);
                a->faces[1] += (y == 0 || L[x - nx] != l) + (y == ny - 1 || L[x + nx] != l);
                a->faces[2] += (z == 0 || L[x - nx * ny] != l) + (z == nz - 1 || L[x + nx * ny] != l);
                if (H)
                    H[(size_t)l * (size_t)c->nbins + (size_t)((int64_t)v - c->hmin)]++;
            }
        }
}

static void pass1(void *vc, int64_t b, int64_t e, int w)
{
    pp_ctx *c = vc;
    if (c->ct16)
        pass1_slabs(c, b, e, w, NULL, c->ct16);
    else
        pass1_slabs(c, b, e, w, c->ct, NULL);
}

/* the workers' partial sums into worker 0's slots */
static void merge_workers(pp_ctx *c, int nw)
{
    lab_acc *A = c->acc;
    for (int w = 1; w < nw; w++)
        for (int l = 1; l < c->nl; l++) {
            lab_acc *a = &A[l], *bw = &c->acc[(size_t)w * (size_t)c->nl + (size_t)l];
            if (!bw->n)
                continue;
            if (!a->n) {
                *a = *bw;
                continue;
            }
            a->n += bw->n;
            a->sum += bw->sum;
            a->sq += bw->sq;
            a->sum_i16 += bw->sum_i16;
            if (bw->mn < a->mn) a->mn = bw->mn;
            if (bw->mx > a->mx) a->mx = bw->mx;
            for (int k = 0; k < 3; k++) {
                a->s[k] += bw->s[k];
                a->faces[k] += bw->faces[k];
                if (bw->lo[k] < a->lo[k]) a->lo[k] = bw->lo[k];
                if (bw->hi[k] > a->hi[k]) a->hi[k] = bw->hi[k];
            }
            for (int k = 0; k < 6; k++)
                a->ss[k] += bw->ss[k];
        }
}

static void pp_free(pp_ctx *c)
{
    free(c->wmax);
    free(c->wmin_hu);
    free(c->wmax_hu);
    free(c->acc);
    free(c->hist);
}

/* Passes 0 and 1: the largest label, the HU range (*hu_lo, *hu_hi), every
 * label's accumulators merged into c->acc[0..nl-1]. */
static sp_status scan(pp_ctx *c, const sp_volume *ct, sp_pool *pool, float *hu_lo, float *hu_hi)
{
    int nw = sp_pool_size(pool);
    c->wmax = calloc((size_t)nw, sizeof *c->wmax);
    c->wmin_hu = malloc((size_t)nw * sizeof(float));
    c->wmax_hu = malloc((size_t)nw * sizeof(float));
    if (!c->wmax || !c->wmin_hu || !c->wmax_hu)
        return sp_fail(SP_ERR_NOMEM, "passport: out of memory");
    for (int i = 0; i < nw; i++)
        c->wmin_hu[i] = INFINITY, c->wmax_hu[i] = -INFINITY;
    c->find_range = !ct->range_valid;   /* else pass 0 reads only the labels */
    sp_pool_for(pool, c->dim[2], 1, pass0, c);
    if (ct->range_valid)
        c->wmin_hu[0] = ct->vmin, c->wmax_hu[0] = ct->vmax;
    int maxl = 0;
    *hu_lo = INFINITY, *hu_hi = -INFINITY;
    for (int i = 0; i < nw; i++) {
        maxl = c->wmax[i] > maxl ? c->wmax[i] : maxl;
        *hu_lo = c->wmin_hu[i] < *hu_lo ? c->wmin_hu[i] : *hu_lo;
        *hu_hi = c->wmax_hu[i] > *hu_hi ? c->wmax_hu[i] : *hu_hi;
    }
    c->nl = maxl + 1;
    c->acc = calloc((size_t)nw * (size_t)c->nl, sizeof *c->acc);
    if (!c->acc)
        return sp_fail(SP_ERR_NOMEM, "passport: out of memory");
    if (ct->integer_valued && *hu_lo >= -2147483648.0 && *hu_hi <= 2147483647.0 && *hu_hi - *hu_lo < 65536) {
        c->hmin = (int64_t)*hu_lo;
        c->nbins = (int64_t)*hu_hi - c->hmin + 1;
        if ((double)nw * c->nl * c->nbins * 4 <= 512e6)
            c->hist = calloc((size_t)nw * (size_t)c->nl * (size_t)c->nbins, sizeof *c->hist);
    }
    sp_pool_for(pool, c->dim[2], 1, pass1, c);
    merge_workers(c, nw);
    return SP_OK;
}

/* Exact percentiles without a histogram: every label's values gathered and
 * sorted; *offsets[l] = where label l's values start in *vals. */
static sp_status gather_sorted(const pp_ctx *c, int64_t nv, float **vals, int64_t **offsets)
{
    const lab_acc *A = c->acc;
    int64_t *off = calloc((size_t)c->nl + 1, sizeof *off);
    int64_t *pos = calloc((size_t)c->nl, sizeof *pos);
    *vals = malloc((size_t)(nv ? nv : 1) * sizeof **vals);
    if (!off || !pos || !*vals) {
        free(off);
        free(pos);
        return sp_fail(SP_ERR_NOMEM, "passport: out of memory");
    }
    for (int l = 1; l < c->nl; l++)
        off[l + 1] = off[l] + A[l].n;
    for (int64_t i = 0; i < nv; i++)
        if (c->lab[i])
            (*vals)[off[c->lab[i]] + pos[c->lab[i]]++] = vox(c, i);
    for (int l = 1; l < c->nl; l++)
        if (A[l].n)
            qsort(*vals + off[l], (size_t)A[l].n, sizeof **vals, cmp_float);
    for (int l = 0; l < c->nl; l++)
        pos[l] = off[l];
    free(off);
    *offsets = pos;
    return SP_OK;
}

typedef struct hu_stats {
    double mean, var, med, p5, p95;
} hu_stats;

/* Label l's HU mean, variance (exact two-pass from the histogram when there
 * is one) and percentiles; h: nbins scratch, or vals/offsets when sorted. */
static void label_hu(const pp_ctx *c, int nw, int l, uint64_t *h, const float *vals, const int64_t *offsets,
                     hu_stats *o)
{
    const lab_acc *a = &c->acc[l];
    double n = (double)a->n;
    o->mean = a->sum / n;
    o->var = a->sq / n - o->mean * o->mean;
    if (!c->hist) {
        const float *v = vals + offsets[l];
        o->med = pct_sorted(v, a->n, 50);
        o->p5 = pct_sorted(v, a->n, 5);
        o->p95 = pct_sorted(v, a->n, 95);
        return;
    }
    memset(h, 0, (size_t)c->nbins * sizeof *h);
    for (int w = 0; w < nw; w++) {
        const uint32_t *hw = c->hist + ((size_t)w * (size_t)c->nl + (size_t)l) * (size_t)c->nbins;
        for (int64_t i = 0; i < c->nbins; i++)
            h[i] += hw[i];
    }
    long double acc2 = 0;
    for (int64_t i = 0; i < c->nbins; i++)
        if (h[i]) {
            long double d = (long double)(c->hmin + i) - o->mean;
            acc2 += d * d * h[i];
        }
    o->var = (double)(acc2 / n);
    o->med = pct_hist(h, c->nbins, c->hmin, a->n, 50);
    o->p5 = pct_hist(h, c->nbins, c->hmin, a->n, 5);
    o->p95 = pct_hist(h, c->nbins, c->hmin, a->n, 95);
}

typedef struct shape {
    double cv[3], cw[3], ext[3], axes[3];   /* centroid (voxel, mm), extent, principal axes */
    double ml, surf;
    int border;
} shape;

static void label_shape(const lab_acc *a, const sp_geom *g, const int64_t dim[3], double vox_vol, shape *o)
{
    double n = (double)a->n, cov[3][3], wc[3][3], ev[3];
    for (int k = 0; k < 3; k++) {
        o->cv[k] = (double)a->s[k] / n;
        o->ext[k] = (double)(a->hi[k] - a->lo[k] + 1) * g->spacing[k];
    }
    for (int r = 0; r < 3; r++)
        o->cw[r] = g->affine[r][0] * o->cv[0] + g->affine[r][1] * o->cv[1] + g->affine[r][2] * o->cv[2] +
                   g->affine[r][3];
    int ij[6][2] = {{0, 0}, {1, 1}, {2, 2}, {0, 1}, {0, 2}, {1, 2}};
    for (int k = 0; k < 6; k++) {
        int r = ij[k][0], q = ij[k][1];
        long double e = (long double)a->ss[k] / n - (long double)o->cv[r] * o->cv[q];
        cov[r][q] = cov[q][r] = (double)e;
    }
    for (int r = 0; r < 3; r++)      /* world covariance: A C A^T */
        for (int q = 0; q < 3; q++) {
            double s = 0;
            for (int u = 0; u < 3; u++)
                for (int v2 = 0; v2 < 3; v2++)
                    s += g->affine[r][u] * cov[u][v2] * g->affine[q][v2];
            wc[r][q] = s;
        }
    eig3(wc, ev);
    for (int k = 0; k < 3; k++)
        o->axes[k] = 2.0 * sqrt(5.0 * (ev[k] > 0 ? ev[k] : 0));
    o->border = touches_border(a, dim);
    o->ml = n * vox_vol / 1000.0;
    double area[3] = {g->spacing[1] * g->spacing[2], g->spacing[0] * g->spacing[2],
                      g->spacing[0] * g->spacing[1]};
    o->surf = (double)a->faces[0] * area[0] + (double)a->faces[1] * area[1] + (double)a->faces[2] * area[2];
}

static void json_field(sp_buf *J, const char *key, double v)
{
    sp_buf_printf(J, ", \"%s\": ", key);
    sp_buf_json_num(J, v);
}

/* one entry of passport.json's "structures"; comps < 0: not counted */
static void structure_json(sp_buf *J, int l, const char *nm, const lab_acc *a, const hu_stats *hs,
                           const shape *sh, int64_t comps, double largest_share, int not_hu)
{
    sp_buf_printf(J, "\"label\": %d, \"name\": ", l);
    sp_buf_json_str(J, nm);
    sp_buf_printf(J, ", \"voxels\": %lld, \"volume_ml\": ", (long long)a->n);
    sp_buf_json_num(J, sh->ml);
    sp_buf_puts(J, not_hu ? ",\n   \"intensity\": {\"mean\": " : ",\n   \"hu\": {\"mean\": ");
    sp_buf_json_num(J, hs->mean);
    json_field(J, "std", sqrt(hs->var > 0 ? hs->var : 0));
    json_field(J, "min", a->mn);
    json_field(J, "max", a->mx);
    json_field(J, "median", hs->med);
    json_field(J, "p5", hs->p5);
    json_field(J, "p95", hs->p95);
    sp_buf_puts(J, "},\n   \"centroid_voxel\": ");
    json_vec(J, sh->cv, 3);
    sp_buf_puts(J, ", \"centroid_mm\": ");
    json_vec(J, sh->cw, 3);
    double lo[3] = {(double)a->lo[0], (double)a->lo[1], (double)a->lo[2]};
    double hi[3] = {(double)a->hi[0], (double)a->hi[1], (double)a->hi[2]};
    sp_buf_puts(J, ",\n   \"bbox_voxel\": {\"min\": ");
    json_vec(J, lo, 3);
    sp_buf_puts(J, ", \"max\": ");
    json_vec(J, hi, 3);
    sp_buf_puts(J, "}, \"extent_mm\": ");
    json_vec(J, sh->ext, 3);
    sp_buf_printf(J, ",\n   \"touches_border\": %s", sh->border ? "true" : "false");
    if (comps >= 0) {
        sp_buf_printf(J, ", \"components\": %lld", (long long)comps);
        json_field(J, "largest_component_share", largest_share);
    }
    json_field(J, "surface_mm2", sh->surf);
    sp_buf_puts(J, ", \"principal_axes_mm\": ");
    json_vec(J, sh->axes, 3);
    sp_buf_puts(J, "}");
}

typedef struct pp_totals {
    int found, nborder;
    double total_ml;
    float hu_lo, hu_hi;
    double vox_vol;
    int not_hu;                /* an MRI: "intensity", not "hu" */
} pp_totals;

/* passport.json's "scan" object and the end of the document */
static void scan_json(sp_buf *J, const sp_geom *g, const pp_totals *tt, const char *border_list)
{
    char axc[4];
    sp_affine_axcodes(g->affine, axc);
    double sp3[3] = {g->spacing[0], g->spacing[1], g->spacing[2]};
    double shp[3] = {(double)g->dim[0], (double)g->dim[1], (double)g->dim[2]};
    sp_buf_puts(J, " \"scan\": {\"shape\": ");
    json_vec(J, shp, 3);
    sp_buf_puts(J, ", \"spacing_mm\": ");
    json_vec(J, sp3, 3);
    sp_buf_printf(J, ", \"orientation\": \"%s\", \"affine_source\": \"%s\",\n  \"affine\": [", axc,
                  g->affine_source ? g->affine_source : "sform");
    for (int r = 0; r < 4; r++) {
        if (r)
            sp_buf_puts(J, ", ");
        json_vec(J, g->affine[r], 4);
    }
    sp_buf_puts(J, "],\n  \"voxel_volume_mm3\": ");
    sp_buf_json_num(J, tt->vox_vol);
    json_field(J, tt->not_hu ? "intensity_min" : "hu_min", isfinite(tt->hu_lo) ? tt->hu_lo : 0);
    json_field(J, tt->not_hu ? "intensity_max" : "hu_max", isfinite(tt->hu_hi) ? tt->hu_hi : 0);
    sp_buf_printf(J, ",\n  \"structures_found\": %d, \"structures_touching_border\": [%s],\n"
                     "  \"total_labelled_ml\": ", tt->found, border_list ? border_list : "");
    sp_buf_json_num(J, tt->total_ml);
    sp_buf_puts(J, "}\n}\n");
}

/* statistics.json: every class of the map, TotalSegmentator's rules */
static void statistics_json(sp_buf *S, const pp_ctx *c, const char *const *names, int n_names, double vox_vol,
                            int keep_border)
{
    const lab_acc *A = c->acc;
    sp_buf_puts(S, "{");
    int nclass = names && n_names > 1 ? n_names : c->nl;
    int first = 1;
    for (int l = 1; l < nclass; l++) {
        const char *nm = names && l < n_names && names[l] ? names[l] : NULL;
        char fallback[32];
        if (!nm) {
            if (l >= c->nl || !A[l].n)
                continue;
            snprintf(fallback, sizeof fallback, "label_%d", l);
            nm = fallback;
        }
        double vol = 0, inten = 0;
        if (l < c->nl && A[l].n && (!touches_border(&A[l], c->dim) || keep_border)) {
            vol = (double)A[l].n * vox_vol;
            inten = round5(A[l].sum_i16 / (double)A[l].n);
        }
        sp_buf_puts(S, first ? "\n    " : ",\n    ");
        first = 0;
        sp_buf_json_str(S, nm);
        sp_buf_puts(S, ": {\n        \"volume\": ");
        sp_buf_json_num(S, vol);
        sp_buf_puts(S, ",\n        \"intensity\": ");
        sp_buf_json_num(S, inten);
        sp_buf_puts(S, "\n    }");
    }
    sp_buf_puts(S, "\n}\n");
}

/* the table row's flags: "border 3-parts" */
static void table_row(sp_buf *T, const char *nm, const shape *sh, double mean, int64_t comps)
{
    char flags[64] = "";
    if (sh->border)
        strcat(flags, "  border");
    if (comps > 1)
        snprintf(flags + strlen(flags), sizeof flags - strlen(flags), "%s%lld-parts", sh->border ? " " : "  ",
                 (long long)comps);
    sp_buf_printf(T, "%-32.32s %10.2f %9.1f%s\n", nm, sh->ml, mean, flags);   /* no trailing blanks */
}

/* passport.json's structures, the table and the border list, one label at a time */
static void structures(const pp_ctx *c, int nw, const sp_geom *g, const char *const *names,
                       int n_names, const int64_t *ncomp, const int64_t *largest, uint64_t *h, const float *vals,
                       const int64_t *offsets, pp_totals *tt, sp_buf *J, sp_buf *T, sp_buf *B)
{
    for (int l = 1; l < c->nl; l++) {
        const lab_acc *a = &c->acc[l];
        if (!a->n)
            continue;
        const char *nm = l < n_names && names && names[l] ? names[l] : NULL;
        char fallback[32];
        if (!nm) {
            snprintf(fallback, sizeof fallback, "label_%d", l);
            nm = fallback;
        }
        hu_stats hs;
        shape sh;
        label_hu(c, nw, l, h, vals, offsets, &hs);
        label_shape(a, g, c->dim, tt->vox_vol, &sh);
        tt->total_ml += sh.ml;
        tt->found++;
        tt->nborder += sh.border;
        sp_buf_puts(J, tt->found > 1 ? ",\n  {" : "\n  {");
        structure_json(J, l, nm, a, &hs, &sh, ncomp ? ncomp[l] : -1, ncomp ? (double)largest[l] / (double)a->n : 0,
                       tt->not_hu);
        table_row(T, nm, &sh, hs.mean, ncomp ? ncomp[l] : 0);
        if (sh.border) {
            if (B->len)
                sp_buf_puts(B, ", ");
            sp_buf_json_str(B, nm);
        }
    }
}

/* ct16: the voxels as int16 instead of ct->data (NULL: ct->data); pre:
 * components counted beforehand, or NULL */
static sp_status passport_compute(const sp_volume *ct, const int16_t *ct16, const uint16_t *labels,
                                  const char *const *names, int n_names, const sp_passport_params *pp,
                                  const sp_comp_counts *pre, sp_passport **out)
{
    sp_passport_params p = pp ? *pp : sp_passport_default_params();
    const sp_geom *g = &ct->g;
    pp_ctx c;
    memset(&c, 0, sizeof c);
    *out = NULL;
    c.ct = ct->data;
    c.ct16 = ct16;
    c.lab = labels;
    for (int i = 0; i < 3; i++)
        c.dim[i] = g->dim[i];
    sp_pool *pool = sp_pool_get(p.threads);
    int nw = sp_pool_size(pool);
    int64_t *ncomp = NULL, *largest = NULL, *offsets = NULL;
    uint64_t *h = NULL;
    float *vals = NULL;
    sp_buf J = {0}, S = {0}, T = {0}, B = {0};
    pp_totals tt = {.not_hu = p.not_hu};
    sp_passport *ps = calloc(1, sizeof *ps);
    sp_status st = ps ? scan(&c, ct, pool, &tt.hu_lo, &tt.hu_hi) : sp_fail(SP_ERR_NOMEM, "passport: out of memory");
    if (st)
        goto done;
    if (c.hist && !(h = calloc((size_t)c.nbins, sizeof *h))) {
        st = sp_fail(SP_ERR_NOMEM, "passport: out of memory");
        goto done;
    }
    if (!c.hist && (st = gather_sorted(&c, sp_geom_nvox(g), &vals, &offsets)))
        goto done;
    if (p.components) {
        ncomp = calloc((size_t)c.nl, sizeof *ncomp);
        largest = calloc((size_t)c.nl, sizeof *largest);
        if (!ncomp || !largest)
            st = sp_fail(SP_ERR_NOMEM, "passport: out of memory");
        else if (pre && pre->n >= c.nl) {   /* counted by the caller */
            memcpy(ncomp, pre->counts, (size_t)c.nl * sizeof *ncomp);
            memcpy(largest, pre->largest, (size_t)c.nl * sizeof *largest);
        } else if (!st)
            st = sp_components_count(labels, c.dim, c.nl, ncomp, largest);
        if (st)
            goto done;
    }
    /* float32 product, as TotalSegmentator's np.prod of float32 zooms */
    float vox_f = (float)g->spacing[0] * (float)g->spacing[1];
    vox_f *= (float)g->spacing[2];
    tt.vox_vol = vox_f;
    sp_buf_printf(&J, "{\n \"schema\": \"segpipe-passport\",\n \"schema_version\": 1,\n"
                      " \"segpipe_version\": \"%s\",\n", SP_VERSION_STRING);
    if (p.source) {
        sp_buf_puts(&J, " \"source\": ");
        sp_buf_json_str(&J, p.source);
        sp_buf_puts(&J, ",\n");
    }
    sp_buf_puts(&J, " \"structures\": [");
    sp_buf_printf(&T, "%-32s %10s %9s  %s\n", "structure", "ml", p.not_hu ? "mean" : "mean HU", "flags");
    structures(&c, nw, g, names, n_names, ncomp, largest, h, vals, offsets, &tt, &J, &T, &B);
    sp_buf_puts(&J, tt.found ? "\n ],\n" : "],\n");
    scan_json(&J, g, &tt, B.s);
    sp_buf_printf(&T, "%d structures, %d touching the border%s, %.1f ml labelled\n", tt.found, tt.nborder,
                  tt.nborder ? " (their volumes are lower bounds; the statistics give them 0, as TotalSegmentator's "
                               "do, unless --keep-border)" : "", tt.total_ml);
    statistics_json(&S, &c, names, n_names, tt.vox_vol, p.keep_border);
    ps->json = sp_buf_take(&J);
    ps->stats = sp_buf_take(&S);
    ps->table = sp_buf_take(&T);
    ps->found = tt.found;
    ps->border = tt.nborder;
    if (!ps->json || !ps->stats || !ps->table)
        st = sp_fail(SP_ERR_NOMEM, "passport: out of memory");
done:
    sp_pool_put(pool);
    pp_free(&c);
    sp_buf_free(&J);
    sp_buf_free(&S);
    sp_buf_free(&T);
    sp_buf_free(&B);
    free(h);
    free(vals);
    free(ncomp);
    free(largest);
    free(offsets);
    if (st) {
        sp_passport_free(ps);
        return st;
    }
    *out = ps;
    return SP_OK;
}

sp_status sp_passport_mark_demo(sp_passport *ps)
{
    static const char note[] = " \"demo_model\": true,\n \"note\": \"demo model - not for real scans\",\n";
    char *at = ps->json ? strstr(ps->json, " \"structures\": [") : NULL;
    if (!at)
        return SP_OK;
    size_t head = (size_t)(at - ps->json), n = strlen(ps->json);
    char *j = malloc(n + sizeof note);
    if (!j)
        return sp_fail(SP_ERR_NOMEM, "passport: out of memory");
    memcpy(j, ps->json, head);
    memcpy(j + head, note, sizeof note - 1);
    memcpy(j + head + sizeof note - 1, at, n - head + 1);
    free(ps->json);
    ps->json = j;
    return SP_OK;
}

sp_status sp_passport_compute(const sp_volume *ct, const uint16_t *labels, const char *const *names, int n_names,
                              const sp_passport_params *p, sp_passport **out)
{
    return passport_compute(ct, NULL, labels, names, n_names, p, NULL, out);
}

sp_status sp_passport_compute_ext(const sp_volume *ct, const int16_t *hu, const uint16_t *labels,
                                  const char *const *names, int n_names, const sp_passport_params *p,
                                  const sp_comp_counts *pre, sp_passport **out)
{
    return passport_compute(ct, hu, labels, names, n_names, p, pre, out);
}

void sp_passport_free(sp_passport *ps)
{
    if (!ps)
        return;
    free(ps->json);
    free(ps->stats);
    free(ps->table);
    free(ps);
}

const char *sp_passport_json(const sp_passport *ps) { return ps->json; }
const char *sp_passport_statistics_json(const sp_passport *ps) { return ps->stats; }
const char *sp_passport_table(const sp_passport *ps) { return ps->table; }
int sp_passport_count(const sp_passport *ps, int *touching)
{
    if (touching)
        *touching = ps->border;
    return ps->found;
}
