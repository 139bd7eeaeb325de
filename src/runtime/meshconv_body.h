/* meshconv_body.h — the vector body of meshconv.c, included once per vector
 * width with MC_VL (lanes), MC_XV(cob) (vectors of x per tile for cob output
 * channels: as many as the registers hold, at most MC_XV_MAX), MC_NAME(x) (the
 * names' suffix), MC_ATTR (the target attribute), MC_FMA(a, b, c) (a * b + c,
 * fused where the target has it: -std=c11 does not contract a * b + c) and
 * MC_SET1(x) (x in every lane) defined. */
typedef float MC_NAME(vt) __attribute__((vector_size(MC_VL * 4)));

/* One register tile: COB output channels x XV vectors of x at x0 of the
 * output row; COB and XV are constants at every call, so acc[][] stays in
 * registers. */
MC_ATTR __attribute__((always_inline)) static inline void MC_NAME(tile)(
    const mc_job *j, const float *const *rows, const float *wt, const float *bias, float *out, int x0, const int COB,
    const int XV)
{
    typedef MC_NAME(vt) vt;
    const int cin = j->cin, coutp = j->coutp, d = j->d;
    vt acc[COB_MAX][MC_XV_MAX];
#pragma GCC unroll 8
    for (int o = 0; o < COB; o++)
#pragma GCC unroll 4
        for (int v = 0; v < XV; v++)
            acc[o][v] = MC_SET1(bias[o]);
    for (int ci = 0; ci < cin; ci++)
        for (int t = 0; t < 9; t++) {
            const float *r = rows[ci * 9 + t] + x0;
            const float *w = wt + ((size_t)ci * 27 + t * 3) * coutp;
#pragma GCC unroll 3
            for (int kx = 0; kx < 3; kx++, w += coutp) {
                vt in[MC_XV_MAX];
#pragma GCC unroll 4
                for (int v = 0; v < XV; v++)
                    memcpy(&in[v], r + kx * d + v * MC_VL, sizeof(vt));
#pragma GCC unroll 8
                for (int o = 0; o < COB; o++) {
                    vt bw = MC_SET1(w[o]);
#pragma GCC unroll 4
                    for (int v = 0; v < XV; v++)
                        acc[o][v] = MC_FMA(in[v], bw, acc[o][v]);
                }
            }
        }
#pragma GCC unroll 8
    for (int o = 0; o < COB; o++)
#pragma GCC unroll 4
        for (int v = 0; v < XV; v++) {
            vt a = acc[o][v];
            if (j->act)
                for (int l = 0; l < MC_VL; l++)
                    a[l] = a[l] > 0 ? a[l] : 0.0f;
            memcpy(out + (size_t)o * j->wr + x0 + v * MC_VL, &a, sizeof(vt));
        }
}

/* An output row (all channels, j->wr values each) from its 9*Cin input rows
 * (rows[ci*9 + kz*3 + ky] points at input x = -d of that row). */
MC_ATTR static void MC_NAME(row)(const mc_job *j, const float *const *rows, float *out)
{
    for (int c0 = 0; c0 < j->coutp; c0 += j->cob) {
        const float *wt = j->wt + c0;
        float bias[COB_MAX];
        for (int o = 0; o < j->cob; o++)
            bias[o] = j->bias && c0 + o < j->cout ? j->bias[c0 + o] : 0.0f;
        float *ob = out + (size_t)c0 * j->wr;
        switch (j->cob) {
#define MC_CASE(C)                                                                \
    case C:                                                                       \
        for (int x0 = 0; x0 < j->W; x0 += MC_XV(C) * MC_VL)                       \
            MC_NAME(tile)(j, rows, wt, bias, ob, x0, C, MC_XV(C));                \
        break;
            MC_CASE(1) MC_CASE(2) MC_CASE(3) MC_CASE(4) MC_CASE(5) MC_CASE(6) MC_CASE(7)
            default: MC_CASE(8)
#undef MC_CASE
        }
    }
}

/* the parameters are the includer's, one set per body: gone after it */
#undef MC_FMA
#undef MC_SET1
#undef MC_VL
#undef MC_XV
#undef MC_NAME
#undef MC_ATTR
