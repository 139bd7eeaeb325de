/* meshconv_body.h — the vector body of meshconv.c, included once per vector
 * width with MC_VL (lanes), MC_XV (vectors of x per tile), MC_NAME(x) (the
 * names' suffix), MC_ATTR (the target attribute), MC_FMA(a, b, c) (a * b + c,
 * fused where the target has it: -std=c11 does not contract a * b + c) and
 * MC_SET1(x) (x in every lane) defined. */
typedef float MC_NAME(vt) __attribute__((vector_size(MC_VL * 4)));

/* One register tile: COB output channels x MC_XV vectors of x at x0 of the
 * output row; COB is a constant at every call, so acc[][] stays in registers. */
MC_ATTR __attribute__((always_inline)) static inline void MC_NAME(tile)(
    const mc_job *j, const float *rows, const float *wt, const float *bias, float *out, int x0, const int COB)
{
    typedef MC_NAME(vt) vt;
    const int cin = j->cin, coutp = j->coutp, wp = j->wp, d = j->d;
    vt acc[COB_MAX][MC_XV];
#pragma GCC unroll 8
    for (int o = 0; o < COB; o++)
#pragma GCC unroll 4
        for (int v = 0; v < MC_XV; v++)
            acc[o][v] = MC_SET1(bias[o]);
    for (int ci = 0; ci < cin; ci++)
        for (int t = 0; t < 9; t++) {
            const float *r = rows + ((size_t)ci * 9 + t) * wp + x0;
            const float *w = wt + ((size_t)ci * 27 + t * 3) * coutp;
#pragma GCC unroll 3
            for (int kx = 0; kx < 3; kx++, w += coutp) {
                vt in[MC_XV];
#pragma GCC unroll 4
                for (int v = 0; v < MC_XV; v++)
                    memcpy(&in[v], r + kx * d + v * MC_VL, sizeof(vt));
#pragma GCC unroll 8
                for (int o = 0; o < COB; o++) {
                    vt bw = MC_SET1(w[o]);
#pragma GCC unroll 4
                    for (int v = 0; v < MC_XV; v++)
                        acc[o][v] = MC_FMA(in[v], bw, acc[o][v]);
                }
            }
        }
#pragma GCC unroll 8
    for (int o = 0; o < COB; o++)
#pragma GCC unroll 4
        for (int v = 0; v < MC_XV; v++) {
            vt a = acc[o][v];
            if (j->act)
                for (int l = 0; l < MC_VL; l++)
                    a[l] = a[l] > 0 ? a[l] : 0.0f;
            memcpy(out + (size_t)o * j->wr + x0 + v * MC_VL, &a, sizeof(vt));
        }
}

/* An output row (all channels, j->wr values each) from its gathered input rows. */
MC_ATTR static void MC_NAME(row)(const mc_job *j, const float *rows, float *out)
{
    for (int c0 = 0; c0 < j->coutp; c0 += j->cob) {
        const float *wt = j->wt + c0;
        float bias[COB_MAX];
        for (int o = 0; o < j->cob; o++)
            bias[o] = j->bias && c0 + o < j->cout ? j->bias[c0 + o] : 0.0f;
        float *ob = out + (size_t)c0 * j->wr;
        for (int x0 = 0; x0 < j->wr; x0 += MC_XV * MC_VL) {
            switch (j->cob) {
            case 1: MC_NAME(tile)(j, rows, wt, bias, ob, x0, 1); break;
            case 2: MC_NAME(tile)(j, rows, wt, bias, ob, x0, 2); break;
            case 3: MC_NAME(tile)(j, rows, wt, bias, ob, x0, 3); break;
            case 4: MC_NAME(tile)(j, rows, wt, bias, ob, x0, 4); break;
            case 5: MC_NAME(tile)(j, rows, wt, bias, ob, x0, 5); break;
            case 6: MC_NAME(tile)(j, rows, wt, bias, ob, x0, 6); break;
            case 7: MC_NAME(tile)(j, rows, wt, bias, ob, x0, 7); break;
            default: MC_NAME(tile)(j, rows, wt, bias, ob, x0, 8); break;
            }
        }
    }
}
