/*
 * components.c — 26-connected components of every label at once (and the
 * 6-connected ones of one label, scipy.ndimage.label's default, for
 * TotalSegmentator's blob cleanups).
 *
 * Works on runs (maximal stretches of one label along i) instead of voxels:
 * a row is compared with the four rows before it that can touch it in 26-
 * connectivity ((j-1,k), (j-1,k-1), (j,k-1), (j+1,k-1)); runs of the same
 * label whose i-intervals overlap after a one-voxel dilation are joined in a
 * union-find. Memory and time follow the number of runs, not voxels.
 */
#include "pipeline.h"

#include <stdlib.h>
#include <string.h>

typedef struct run {
    int32_t x0, x1;     /* inclusive */
    uint16_t label;
} run;

typedef struct runs {
    run *r;
    int64_t n, cap;
    int64_t *row;       /* row index -> first run; row[nrows] = n */
    int32_t *parent;
    int face;           /* 1: 6-connectivity (faces only, scipy.ndimage.label's default) */
} runs;

static int32_t find(int32_t *p, int32_t x)
{
    while (p[x] != x) {
        p[x] = p[p[x]];
        x = p[x];
    }
    return x;
}

static void unite(int32_t *p, int32_t a, int32_t b)
{
    a = find(p, a);
    b = find(p, b);
    if (a != b) {
        if (a < b)
            p[b] = a;
        else
            p[a] = b;
    }
}

static void free_runs(runs *R)
{
    free(R->r);
    free(R->row);
    free(R->parent);
}

/* Runs of one slab of rows, built by one worker. */
typedef struct slab_runs {
    run *r;
    int64_t n, cap;
    int oom;
} slab_runs;

typedef struct build_ctx {
    const uint16_t *lab;
    int64_t nx, nrows, rows_per;
    int64_t *row;          /* row -> index of its first run within its slab */
    slab_runs *slabs;
} build_ctx;

static void build_slab(void *vc, int64_t b, int64_t e, int w)
{
    build_ctx *c = vc;
    for (int64_t s = b; s < e; s++) {
        slab_runs *S = &c->slabs[s];
        int64_t r0 = s * c->rows_per, r1 = r0 + c->rows_per < c->nrows ? r0 + c->rows_per : c->nrows;
        for (int64_t row = r0; row < r1; row++) {
            c->row[row] = S->n;
            const uint16_t *p = c->lab + row * c->nx;
            for (int64_t x = 0; x < c->nx;) {
                uint16_t l = p[x];
                int64_t st = x;
                while (x < c->nx && p[x] == l)
                    x++;
                if (!l)
                    continue;
                if (S->n == S->cap) {
                    int64_t nc = S->cap ? S->cap * 2 : 1024;
                    run *nr = realloc(S->r, (size_t)nc * sizeof *nr);
                    if (!nr) {
                        S->oom = 1;
                        return;
                    }
                    S->r = nr;
                    S->cap = nc;
                }
                S->r[S->n++] = (run){(int32_t)st, (int32_t)(x - 1), l};
            }
        }
    }
}

/* Join the runs of row (y, z) with those of the rows before it that can
 * touch it (26-connectivity: (y-1, z), (y-1, z-1), (y, z-1), (y+1, z-1)),
 * skipping rows in slices before z_from (a slab's own pass); with edge_only
 * only the rows at z-1 (the seam between two slabs). */
static void join_row(runs *R, const int64_t dim[3], int64_t y, int64_t z, int64_t z_from, int edge_only)
{
    static const int64_t nb26[4][2] = {{-1, 0}, {-1, -1}, {0, -1}, {1, -1}}, nb6[2][2] = {{-1, 0}, {0, -1}};
    const int64_t(*nb)[2] = R->face ? nb6 : nb26;
    int nq = R->face ? 2 : 4, d = R->face ? 0 : 1;   /* d: touching along x needs overlap, or one voxel */
    int64_t row = z * dim[1] + y;
    for (int q = edge_only ? 1 : 0; q < nq; q++) {
        int64_t ny = y + nb[q][0], nz = z + nb[q][1];
        if (ny < 0 || ny >= dim[1] || nz < z_from)
            continue;
        int64_t orow = nz * dim[1] + ny;
        /* every run b within one voxel of run a along x (b0 only moves on:
         * both rows' runs are sorted and disjoint) */
        int64_t b0 = R->row[orow], be = R->row[orow + 1];
        for (int64_t a = R->row[row], ae = R->row[row + 1]; a < ae; a++) {
            const run *ra = &R->r[a];
            while (b0 < be && R->r[b0].x1 < ra->x0 - d)
                b0++;
            for (int64_t b = b0; b < be && R->r[b].x0 <= ra->x1 + d; b++)
                if (R->r[b].label == ra->label)
                    unite(R->parent, (int32_t)a, (int32_t)b);
        }
    }
}

typedef struct join_ctx {
    runs *R;
    const int64_t *dim;
    int64_t per;             /* slices per slab */
} join_ctx;

/* one slab of slices: its runs join only each other (union-find sets stay
 * inside the slab, so slabs run in parallel without locks) */
static void join_slab(void *vc, int64_t b, int64_t e, int w)
{
    join_ctx *c = vc;
    for (int64_t s = b; s < e; s++) {
        int64_t z0 = s * c->per, z1 = z0 + c->per < c->dim[2] ? z0 + c->per : c->dim[2];
        for (int64_t z = z0; z < z1; z++)
            for (int64_t y = 0; y < c->dim[1]; y++)
                join_row(c->R, c->dim, y, z, z0, 0);
    }
}

/* 26-connected joins: slabs of slices in parallel, then the seams */
static void join_all(runs *R, const int64_t dim[3], sp_pool *pool)
{
    int64_t nslab = (int64_t)sp_pool_size(pool) * 2;
    if (nslab > dim[2])
        nslab = dim[2] > 0 ? dim[2] : 1;
    join_ctx c = {R, dim, (dim[2] + nslab - 1) / nslab};
    sp_pool_for(pool, (dim[2] + c.per - 1) / c.per, 1, join_slab, &c);
    for (int64_t z = c.per; z < dim[2]; z += c.per)
        for (int64_t y = 0; y < dim[1]; y++)
            join_row(R, dim, y, z, z - 1, 1);
}

static sp_status build_runs(const uint16_t *lab, const int64_t dim[3], runs *R, int face)
{
    int64_t nrows = dim[1] * dim[2];
    memset(R, 0, sizeof *R);
    R->face = face;
    sp_pool *pool = sp_default_pool();
    int64_t nslab = (int64_t)sp_pool_size(pool) * 4;
    if (nslab > nrows)
        nslab = nrows > 0 ? nrows : 1;
    build_ctx c = {lab, dim[0], nrows, (nrows + nslab - 1) / nslab, NULL, NULL};
    R->row = malloc((size_t)(nrows + 1) * sizeof *R->row);
    c.row = R->row;
    c.slabs = calloc((size_t)nslab, sizeof *c.slabs);
    int ok = R->row && c.slabs;
    if (ok)
        sp_pool_for(pool, nslab, 1, build_slab, &c);
    int64_t total = 0;
    for (int64_t s = 0; ok && s < nslab; s++) {
        ok &= !c.slabs[s].oom;
        total += c.slabs[s].n;
    }
    ok = ok && total < INT32_MAX;
    if (ok) {
        R->r = malloc((size_t)(total ? total : 1) * sizeof *R->r);
        ok = R->r != NULL;
    }
    if (ok) {   /* concatenate slabs; make row offsets global */
        int64_t base = 0;
        for (int64_t s = 0; s < nslab; s++) {
            int64_t r0 = s * c.rows_per, r1 = r0 + c.rows_per < nrows ? r0 + c.rows_per : nrows;
            for (int64_t row = r0; row < r1; row++)
                R->row[row] += base;
            if (c.slabs[s].n)
                memcpy(R->r + base, c.slabs[s].r, (size_t)c.slabs[s].n * sizeof *R->r);
            base += c.slabs[s].n;
            free(c.slabs[s].r);   /* at once: the runs are held once, not twice */
            c.slabs[s].r = NULL;
        }
        R->n = total;
        R->row[nrows] = total;
    }
    for (int64_t s = 0; c.slabs && s < nslab; s++)
        free(c.slabs[s].r);
    free(c.slabs);
    if (!ok)
        goto oom;
    R->parent = malloc((size_t)(R->n ? R->n : 1) * sizeof *R->parent);
    if (!R->parent)
        goto oom;
    for (int64_t i = 0; i < R->n; i++)
        R->parent[i] = (int32_t)i;
    join_all(R, dim, pool);
    return SP_OK;
oom:
    free_runs(R);
    return sp_fail(SP_ERR_NOMEM, "connected components: out of memory");
}

/* sizes[root] = voxels of the component */
static int64_t *component_sizes(runs *R)
{
    int64_t *sz = calloc((size_t)(R->n ? R->n : 1), sizeof *sz);
    if (!sz)
        return NULL;
    for (int64_t i = 0; i < R->n; i++)
        sz[find(R->parent, (int32_t)i)] += R->r[i].x1 - R->r[i].x0 + 1;
    return sz;
}

sp_status sp_components_count(const uint16_t *labels, const int64_t dim[3], int nlabels,
                              int64_t *counts, int64_t *largest)
{
    runs R;
    sp_status st = build_runs(labels, dim, &R, 0);
    if (st)
        return st;
    int64_t *sz = component_sizes(&R);
    if (!sz) {
        free_runs(&R);
        return sp_fail(SP_ERR_NOMEM, "connected components: out of memory");
    }
    memset(counts, 0, (size_t)nlabels * sizeof *counts);
    memset(largest, 0, (size_t)nlabels * sizeof *largest);
    for (int64_t i = 0; i < R.n; i++) {
        if (R.parent[i] != i)    /* roots only (parents fully compressed? use find) */
            continue;
        int l = R.r[i].label;
        if (l < nlabels) {
            counts[l]++;
            if (sz[i] > largest[l])
                largest[l] = sz[i];
        }
    }
    free(sz);
    free_runs(&R);
    return SP_OK;
}

static sp_status filter(uint16_t *labels, const int64_t dim[3], int keep_largest, int64_t min_voxels, int face)
{
    runs R;
    sp_status st = build_runs(labels, dim, &R, face);
    if (st)
        return st;
    int64_t *sz = component_sizes(&R);
    int32_t *best = calloc(65536, sizeof *best);   /* label -> root of its largest */
    if (!sz || !best) {
        free(sz);
        free(best);
        free_runs(&R);
        return sp_fail(SP_ERR_NOMEM, "connected components: out of memory");
    }
    for (int i = 0; i < 65536; i++)
        best[i] = -1;
    for (int64_t i = 0; i < R.n; i++) {
        if (find(R.parent, (int32_t)i) != i)
            continue;
        int l = R.r[i].label;
        if (best[l] < 0 || sz[i] > sz[best[l]])
            best[l] = (int32_t)i;
    }
    for (int64_t row = 0; row < dim[1] * dim[2]; row++)
        for (int64_t i = R.row[row]; i < R.row[row + 1]; i++) {
            int32_t root = find(R.parent, (int32_t)i);
            int drop = (keep_largest && root != best[R.r[i].label]) ||
                       (min_voxels > 0 && sz[root] < min_voxels);
            if (drop)
                memset(labels + row * dim[0] + R.r[i].x0, 0,
                       (size_t)(R.r[i].x1 - R.r[i].x0 + 1) * sizeof(uint16_t));
        }
    free(sz);
    free(best);
    free_runs(&R);
    return SP_OK;
}

sp_status sp_components_filter(uint16_t *labels, const int64_t dim[3], int keep_largest,
                               int64_t min_voxels)
{
    return filter(labels, dim, keep_largest, min_voxels, 0);
}

sp_status sp_components_label_blobs(uint16_t *labels, const int64_t dim[3], uint16_t l, int keep_largest,
                                    int64_t min_voxels)
{
    size_t nv = (size_t)(dim[0] * dim[1] * dim[2]);
    uint16_t *m = malloc((nv ? nv : 1) * sizeof *m);
    if (!m)
        return sp_fail(SP_ERR_NOMEM, "connected components: out of memory");
    for (size_t i = 0; i < nv; i++)
        m[i] = labels[i] == l;
    sp_status st = filter(m, dim, keep_largest, min_voxels, 1);
    for (size_t i = 0; !st && i < nv; i++)
        if (labels[i] == l && !m[i])
            labels[i] = 0;
    free(m);
    return st;
}

/* brainchop's bwlabel step: the non-zero voxels as one mask, its largest
 * 26-connected component kept with its labels, everything else zeroed. */
sp_status sp_components_largest_fg(uint16_t *labels, const int64_t dim[3])
{
    size_t n = (size_t)(dim[0] * dim[1] * dim[2]);
    uint16_t *m = malloc(n * sizeof *m);
    if (!m)
        return sp_fail(SP_ERR_NOMEM, "connected components: out of memory");
    for (size_t i = 0; i < n; i++)
        m[i] = labels[i] != 0;
    sp_status st = sp_components_filter(m, dim, 1, 0);
    if (!st)
        for (size_t i = 0; i < n; i++)
            if (!m[i])
                labels[i] = 0;
    free(m);
    return st;
}

/* nnU-Net's remove_all_but_largest_component_from_segmentation: the voxels
 * whose label is in set[0..n) as one mask, its largest 26-connected
 * component kept (skimage's label with full connectivity), the mask's other
 * voxels set to 0 */
sp_status sp_components_keep_largest_of(uint16_t *labels, const int64_t dim[3], const uint16_t *set, int n)
{
    size_t nv = (size_t)(dim[0] * dim[1] * dim[2]);
    uint8_t *in = calloc(65536, 1);
    uint16_t *m = malloc(nv * sizeof *m);
    if (!in || !m) {
        free(in);
        free(m);
        return sp_fail(SP_ERR_NOMEM, "connected components: out of memory");
    }
    for (int i = 0; i < n; i++)
        in[set[i]] = 1;
    for (size_t i = 0; i < nv; i++)
        m[i] = in[labels[i]];
    sp_status st = sp_components_filter(m, dim, 1, 0);
    if (!st)
        for (size_t i = 0; i < nv; i++)
            if (in[labels[i]] && !m[i])
                labels[i] = 0;
    free(in);
    free(m);
    return st;
}
