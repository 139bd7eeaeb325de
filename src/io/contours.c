/*
 * contours.c — the outlines of a binary slice, for RTSTRUCT's closed planar
 * contours (docs/dicom.md, "RTSTRUCT output").
 *
 * Marching squares on the pixel centres at level 0.5: every cell of four
 * neighbouring centres that has inside and outside corners gets a segment
 * between the midpoints of its crossing edges, directed from an "exit"
 * (inside -> outside, walking the cell's corners clockwise) to the next
 * "entry"; where two cells share an edge one sees an exit and the other an
 * entry, so the segments link into closed, consistently oriented loops
 * (outer boundaries one way, holes the other). In a saddle cell (inside
 * corners on one diagonal) each outside corner is cut off, i.e. diagonal
 * inside pixels are joined. A pixel centre is never on a contour, so the
 * pixels whose centres fall inside the polygons (even-odd or nonzero rule)
 * are exactly the mask. Work is bounded by the mask's bounding box.
 */
#include "dicom_out.h"
#include "../core/core.h"

#include <stdlib.h>
#include <string.h>

void sp_contours_free(sp_contours *c)
{
    if (c) {
        free(c->start);
        free(c->xy);
        memset(c, 0, sizeof *c);
    }
}

typedef struct grid {
    int rows, cols;            /* padded node grid (mask + a ring of outside) */
    const uint8_t *in;         /* rows * cols */
    int *next;                 /* per edge point: the point its segment leads to, -1 none */
} grid;

/* edge points: horizontal edge right of node (r, c), vertical edge below it */
static int hedge(const grid *g, int r, int c) { return r * g->cols + c; }
static int vedge(const grid *g, int r, int c) { return g->rows * g->cols + r * g->cols + c; }

static void point_of(const grid *g, int id, int r0, int c0, double *x, double *y)
{
    int v = id >= g->rows * g->cols, k = v ? id - g->rows * g->cols : id;
    int r = k / g->cols, c = k % g->cols;
    *x = c0 + c - 1 + (v ? 0.0 : 0.5);   /* node (r, c) is mask pixel (r0 + r - 1, c0 + c - 1) */
    *y = r0 + r - 1 + (v ? 0.5 : 0.0);
}

/* the segments of cell (r, c): corners TL, TR, BR, BL clockwise */
static void cell(grid *g, int r, int c)
{
    int v[4] = {g->in[r * g->cols + c], g->in[r * g->cols + c + 1], g->in[(r + 1) * g->cols + c + 1],
                g->in[(r + 1) * g->cols + c]};
    int m = v[0] | v[1] << 1 | v[2] << 2 | v[3] << 3;
    if (m == 0 || m == 15)
        return;
    int e[4] = {hedge(g, r, c), vedge(g, r, c + 1), hedge(g, r + 1, c), vedge(g, r, c)};
    for (int i = 0; i < 4; i++) {
        if (!(v[i] && !v[(i + 1) & 3]))
            continue;                                  /* not an exit */
        for (int k = 1; k < 4; k++) {
            int j = (i + k) & 3;
            if (!v[j] && v[(j + 1) & 3]) {             /* the next entry clockwise */
                g->next[e[i]] = e[j];
                break;
            }
        }
    }
}

/* grow *buf (elements of size sz) to hold n */
static int reserve(void **buf, size_t *cap, size_t n, size_t sz)
{
    if (n <= *cap)
        return 0;
    size_t nc = *cap ? *cap * 2 : 1024;
    while (nc < n)
        nc *= 2;
    void *nb = realloc(*buf, nc * sz);
    if (!nb)
        return -1;
    *buf = nb;
    *cap = nc;
    return 0;
}

/* one loop of raw points (pts, m of them) into c, dropping every point that
 * lies on the straight line through its neighbours (exact: coordinates are
 * multiples of 0.5) */
static sp_status push_loop(sp_contours *c, size_t *cap_xy, size_t *cap_loops, const double *pts, int m)
{
    if (reserve((void **)&c->xy, cap_xy, 2 * ((size_t)c->start[c->n] + (size_t)m), sizeof *c->xy) ||
        reserve((void **)&c->start, cap_loops, (size_t)c->n + 2, sizeof *c->start))
        return sp_fail(SP_ERR_NOMEM, "out of memory (contours)");
    int k = c->start[c->n];
    for (int i = 0; i < m; i++) {
        const double *a = pts + 2 * ((i + m - 1) % m), *b = pts + 2 * i, *d = pts + 2 * ((i + 1) % m);
        double ax = b[0] - a[0], ay = b[1] - a[1], bx = d[0] - b[0], by = d[1] - b[1];
        if (ax * by - ay * bx == 0 && ax * bx + ay * by > 0)
            continue;
        c->xy[2 * k] = b[0];
        c->xy[2 * k + 1] = b[1];
        k++;
    }
    c->start[++c->n] = k;
    return SP_OK;
}

/* follow every chain of g->next into a loop of c */
static sp_status collect(grid *g, int r0, int c0, int n_ids, sp_contours *c)
{
    size_t cap_xy = 0, cap_loops = 0, cap_pts = 0;
    double *pts = NULL;
    sp_status st = SP_OK;
    if (reserve((void **)&c->start, &cap_loops, 2, sizeof *c->start))
        return sp_fail(SP_ERR_NOMEM, "out of memory (contours)");
    c->start[0] = 0;
    for (int id = 0; id < n_ids && !st; id++) {
        int m = 0;
        for (int p = id; g->next[p] >= 0; m++) {
            if (reserve((void **)&pts, &cap_pts, 2 * (size_t)m + 2, sizeof *pts)) {
                st = sp_fail(SP_ERR_NOMEM, "out of memory (contours)");
                break;
            }
            point_of(g, p, r0, c0, &pts[2 * m], &pts[2 * m + 1]);
            int q = g->next[p];
            g->next[p] = -1;
            p = q;
        }
        if (!st && m)
            st = push_loop(c, &cap_xy, &cap_loops, pts, m);
    }
    free(pts);
    return st;
}

sp_status sp_mask_contours(const uint8_t *mask, int w, int h, sp_contours *c)
{
    memset(c, 0, sizeof *c);
    int r0 = h, r1 = -1, c0 = w, c1 = -1;
    for (int r = 0; r < h; r++)
        for (int x = 0; x < w; x++)
            if (mask[(size_t)r * w + x]) {
                r0 = r < r0 ? r : r0;
                r1 = r > r1 ? r : r1;
                c0 = x < c0 ? x : c0;
                c1 = x > c1 ? x : c1;
            }
    grid g = {.rows = r1 - r0 + 3, .cols = c1 - c0 + 3};
    if (r1 < 0) {
        c->start = calloc(1, sizeof *c->start);
        return c->start ? SP_OK : sp_fail(SP_ERR_NOMEM, "out of memory (contours)");
    }
    size_t nodes = (size_t)g.rows * g.cols;
    uint8_t *in = calloc(nodes, 1);
    g.next = malloc(2 * nodes * sizeof *g.next);
    sp_status st = SP_OK;
    if (!in || !g.next)
        st = sp_fail(SP_ERR_NOMEM, "out of memory (contours)");
    for (int r = r0; !st && r <= r1; r++)
        for (int x = c0; x <= c1; x++)
            in[(size_t)(r - r0 + 1) * g.cols + (x - c0 + 1)] = mask[(size_t)r * w + x] != 0;
    g.in = in;
    if (!st) {
        memset(g.next, 0xff, 2 * nodes * sizeof *g.next);
        for (int r = 0; r + 1 < g.rows; r++)
            for (int x = 0; x + 1 < g.cols; x++)
                cell(&g, r, x);
        st = collect(&g, r0, c0, (int)(2 * nodes), c);
    }
    free(in);
    free(g.next);
    if (st)
        sp_contours_free(c);
    return st;
}
