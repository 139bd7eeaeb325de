/* Pipeline pieces with hand-computed answers: nnU-Net window steps, the
 * Gaussian map, reorientation over all 48 axis permutations and flips,
 * connected components, manifest validation. */
#include "test.h"
#include "pipeline/pipeline.h"

#include <math.h>
#include <stdlib.h>

void test_window_steps(void)
{
    int64_t s[16];
    /* nnU-Net: num = ceil((image - tile) / (tile * step)) + 1, evenly spread */
    CHECK(sp_window_steps(122, 64, 0.5, s, 16) == 3 && s[0] == 0 && s[1] == 29 && s[2] == 58);
    CHECK(sp_window_steps(64, 64, 0.5, s, 16) == 1 && s[0] == 0);
    CHECK(sp_window_steps(30, 32, 0.5, s, 16) == 1 && s[0] == 0);   /* padded */
    CHECK(sp_window_steps(100, 64, 0.5, s, 16) == 3 && s[1] == 18 && s[2] == 36);
    /* 0.5 * 5 = 2.5 rounds half to even: [0, 2, 5] for image 13, tile 8 */
    CHECK(sp_window_steps(13, 8, 0.5, s, 16) == 3 && s[0] == 0 && s[1] == 2 && s[2] == 5);
    CHECK(sp_window_steps(200, 64, 1.0, s, 16) == 4 && s[3] == 136);
}

void test_gaussian(void)
{
    int64_t p[3] = {8, 6, 5};
    float *g = sp_gaussian_map(p, 0.125);
    CHECK(g != NULL);
    if (!g)
        return;
    /* centre (4, 3, 2) holds the maximum, scaled to 10 */
    CHECK(fabsf(g[(4 * 6 + 3) * 5 + 2] - 10.0f) < 1e-5f);
    float mn = 1e30f, mx = 0;
    for (int i = 0; i < 240; i++) {
        mn = fminf(mn, g[i]);
        mx = fmaxf(mx, g[i]);
    }
    CHECK(mx == g[(4 * 6 + 3) * 5 + 2] && mn > 0);
    /* sigma 1 along axis 0: exp(-1/2) ratio one voxel from the centre */
    CHECK(fabsf(g[(3 * 6 + 3) * 5 + 2] / g[(4 * 6 + 3) * 5 + 2] - expf(-0.5f)) < 1e-5f);
    /* symmetric about the centre along axis 1 (centre 3, size 6) */
    CHECK(fabsf(g[(4 * 6 + 2) * 5 + 2] - g[(4 * 6 + 4) * 5 + 2]) < 1e-6f);
    free(g);
}

void test_ornt_48(void)
{
    int perms[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    int64_t dim[3] = {5, 4, 3};
    float src[60];
    for (int i = 0; i < 60; i++)
        src[i] = (float)i;
    int tested = 0;
    for (int pi = 0; pi < 6; pi++)
        for (int fl = 0; fl < 8; fl++) {
            /* voxel axis i points along world axis perms[pi][i], sign by fl */
            double A[4][4] = {{0}};
            A[3][3] = 1;
            for (int i = 0; i < 3; i++)
                A[perms[pi][i]][i] = ((fl >> i) & 1 ? -1.0 : 1.0) * (i + 1);
            A[0][3] = 7;
            sp_ornt o;
            CHECK(sp_ornt_to_canonical(A, &o) == SP_OK);
            int64_t cd[3];
            sp_ornt_dims(&o, dim, cd);
            double C[4][4];
            sp_ornt_affine(&o, dim, A, C);
            /* canonical affine is diagonal positive (RAS+) */
            for (int r = 0; r < 3; r++)
                for (int c = 0; c < 3; c++)
                    CHECK(r == c ? C[r][c] > 0 : C[r][c] == 0);
            /* world position of every voxel is unchanged by the move */
            float dst[60], back[60];
            sp_ornt_apply(&o, src, dim, dst, sizeof(float), NULL);
            int bad = 0;
            for (int64_t k = 0; k < cd[2]; k++)
                for (int64_t j = 0; j < cd[1]; j++)
                    for (int64_t i = 0; i < cd[0]; i++) {
                        int v = (int)dst[(k * cd[1] + j) * cd[0] + i];
                        int si = v % 5, sj = (v / 5) % 4, sk = v / 20;
                        for (int r = 0; r < 3; r++) {
                            double wa = A[r][0] * si + A[r][1] * sj + A[r][2] * sk + A[r][3];
                            double wb = C[r][0] * i + C[r][1] * j + C[r][2] * k + C[r][3];
                            bad += fabs(wa - wb) > 1e-9;
                        }
                    }
            CHECK(bad == 0);
            sp_ornt inv = sp_ornt_inverse(&o);
            sp_ornt_apply(&inv, dst, cd, back, sizeof(float), NULL);
            CHECK(memcmp(back, src, sizeof src) == 0);
            uint16_t l16[60], l16b[60], l16c[60];
            for (int i = 0; i < 60; i++)
                l16[i] = (uint16_t)(i * 3);
            sp_ornt_apply(&o, l16, dim, l16b, 2, NULL);
            sp_ornt_apply(&inv, l16b, cd, l16c, 2, NULL);
            CHECK(memcmp(l16, l16c, sizeof l16) == 0);
            tested++;
        }
    CHECK(tested == 48);
}

void test_components(void)
{
    int64_t dim[3] = {10, 10, 10};
    uint16_t *l = calloc(1000, sizeof *l);
#define AT(x, y, z) l[((z) * 10 + (y)) * 10 + (x)]
    /* label 1: a 3x3x3 cube and a single voxel far away -> 2 components */
    for (int z = 1; z < 4; z++)
        for (int y = 1; y < 4; y++)
            for (int x = 1; x < 4; x++)
                AT(x, y, z) = 1;
    AT(8, 8, 8) = 1;
    /* label 2: two voxels touching only at a corner -> 1 component (26-conn) */
    AT(6, 1, 1) = 2;
    AT(7, 2, 2) = 2;
    /* label 3: same corner pattern but two apart -> 2 components */
    AT(1, 7, 1) = 3;
    AT(3, 7, 1) = 3;
    int64_t cnt[4], big[4];
    CHECK(sp_components_count(l, dim, 4, cnt, big) == SP_OK);
    CHECK(cnt[1] == 2 && big[1] == 27);
    CHECK(cnt[2] == 1 && big[2] == 2);
    CHECK(cnt[3] == 2 && big[3] == 1);
    CHECK(sp_components_filter(l, dim, 1, 0) == SP_OK);
    CHECK(AT(8, 8, 8) == 0 && AT(2, 2, 2) == 1 && AT(7, 2, 2) == 2);
    CHECK((AT(1, 7, 1) == 3) + (AT(3, 7, 1) == 3) == 1);
    AT(8, 8, 8) = 1;
    CHECK(sp_components_filter(l, dim, 0, 2) == SP_OK);   /* drop single voxels */
    CHECK(AT(8, 8, 8) == 0 && AT(2, 2, 2) == 1 && AT(6, 1, 1) == 2);
#undef AT
    free(l);
}

void test_manifest_errors(void)
{
    sp_manifest mf;
    const char *good =
        "{\"format\":\"segpipe-model\",\"version\":1,\"name\":\"t\",\"axes\":[0,1,2],"
        "\"spacing\":[1,1,1],\"patch_size\":[8,8,8],\"normalization\":{\"scheme\":\"zscore\"},"
        "\"labels\":{\"0\":\"background\",\"2\":\"x\"}}";
    CHECK(sp_manifest_parse(good, "m.json", &mf) == SP_OK);
    CHECK(mf.num_classes == 3 && strcmp(mf.labels[1], "label_1") == 0 && mf.step == 0.5);
    sp_manifest_clear(&mf);
    struct { const char *text, *msg; } bad[] = {
        {"{", "not valid JSON"},
        {"{\"format\":\"other\"}", "format"},
        {"{\"format\":\"segpipe-model\",\"version\":2}", "version 2"},
        {"{\"format\":\"segpipe-model\",\"version\":1,\"spacing\":[1,1]}", "spacing"},
        {"{\"format\":\"segpipe-model\",\"version\":1,\"spacing\":[1,1,1],\"patch_size\":[8,8,8],"
         "\"axes\":[0,0,2]}", "permutation"},
        {"{\"format\":\"segpipe-model\",\"version\":1,\"spacing\":[1,1,1],\"patch_size\":[8,8,8],"
         "\"axes\":[0,1,2],\"normalization\":{\"scheme\":\"ct\",\"lo\":0}}", "\"hi\""},
        {"{\"format\":\"segpipe-model\",\"version\":1,\"spacing\":[1,1,1],\"patch_size\":[8,8,8],"
         "\"axes\":[0,1,2],\"normalization\":{\"scheme\":\"none\"},\"labels\":{\"a\":\"b\",\"1\":\"c\"}}",
         "label key"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        CHECK(sp_manifest_parse(bad[i].text, "m.json", &mf) == SP_ERR_MODEL);
        CHECK_CONTAINS(sp_last_error(), bad[i].msg);
    }
}

/* Labels back in one gather (sp_labels_to_native) equal nearest resampling
 * to the canonical grid followed by the inverse reorientation, for all 48
 * orientations and a model grid smaller, larger and equal per axis. */
void test_labels_to_native_48(void)
{
    int perms[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    int64_t dim[3] = {9, 7, 5}, mdim[3] = {4, 11, 5};
    size_t nm = 4 * 11 * 5, nv = 9 * 7 * 5;
    uint16_t *lab_m = malloc(nm * 2), *canon = malloc(nv * 2), *two = malloc(nv * 2), *one = malloc(nv * 2);
    for (size_t i = 0; i < nm; i++)
        lab_m[i] = (uint16_t)(i * 7 % 251 + 1);
    int same = 0;
    for (int pi = 0; pi < 6; pi++)
        for (int fl = 0; fl < 8; fl++) {
            double A[4][4] = {{0}};
            A[3][3] = 1;
            for (int i = 0; i < 3; i++)
                A[perms[pi][i]][i] = (fl >> i) & 1 ? -1.0 : 1.0;
            sp_ornt o;
            CHECK(sp_ornt_to_canonical(A, &o) == SP_OK);
            int64_t cd[3];
            sp_ornt_dims(&o, dim, cd);
            sp_resample_nearest_u16(lab_m, mdim, canon, cd, NULL);
            sp_ornt inv = sp_ornt_inverse(&o);
            sp_ornt_apply(&inv, canon, cd, two, 2, NULL);
            memset(one, 0xff, nv * 2);
            CHECK(sp_labels_to_native(lab_m, mdim, &o, dim, one, NULL) == SP_OK);
            same += memcmp(one, two, nv * 2) == 0;
        }
    CHECK(same == 48);
    free(lab_m);
    free(canon);
    free(two);
    free(one);
}

/* The passport read from int16 voxels (sp_ct_run_inplace's packed input)
 * equals the one read from float voxels, components counted here or
 * handed in. */
void test_passport_int16_equals_float(void)
{
    int64_t dim[3] = {23, 19, 17};
    size_t n = 23 * 19 * 17;
    double A[4][4] = {{0.8, 0, 0, -10}, {0, 0.7, 0, 5}, {0, 0, 2.5, 1}, {0, 0, 0, 1}};
    float *f = malloc(n * sizeof *f);
    int16_t *s = malloc(n * sizeof *s);
    uint16_t *lab = malloc(n * sizeof *lab);
    uint32_t x = 12345;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        s[i] = (int16_t)((int)(x >> 16) % 3000 - 1024);
        f[i] = s[i];
        lab[i] = (uint16_t)((i / 97) % 5 ? (i / 311) % 7 : 0);
    }
    sp_volume *v = NULL;
    CHECK(sp_volume_from_array(f, dim, A, &v) == SP_OK);
    sp_passport *pf = NULL, *ps = NULL, *pc = NULL;
    const char *names[7] = {"background", "a", "b", NULL, "d", "e", "f"};
    sp_passport_params pp = sp_passport_default_params();
    CHECK(sp_passport_compute(v, lab, names, 7, &pp, &pf) == SP_OK);
    CHECK(sp_passport_compute_ext(v, s, lab, names, 7, &pp, NULL, &ps) == SP_OK);
    int64_t cnt[7], big[7];
    CHECK(sp_components_count(lab, dim, 7, cnt, big) == SP_OK);
    sp_comp_counts cc = {7, cnt, big};
    CHECK(sp_passport_compute_ext(v, s, lab, names, 7, &pp, &cc, &pc) == SP_OK);
    if (pf && ps && pc) {
        CHECK(strcmp(sp_passport_json(pf), sp_passport_json(ps)) == 0);
        CHECK(strcmp(sp_passport_json(pf), sp_passport_json(pc)) == 0);
        CHECK(strcmp(sp_passport_statistics_json(pf), sp_passport_statistics_json(ps)) == 0);
        CHECK(strstr(sp_passport_json(pf), "\"components\"") != NULL);
    }
    sp_passport_free(pf);
    sp_passport_free(ps);
    sp_passport_free(pc);
    sp_volume_free(v);
    free(f);
    free(s);
    free(lab);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* numpy.quantile(x, q) ("linear") from a sorted copy: the reference */
static double sorted_quantile(const float *s, int64_t n, double q)
{
    double pos = q * (double)(n - 1);
    int64_t k = (int64_t)floor(pos);
    double t = pos - (double)k, a = s[k], b = k + 1 < n ? s[k + 1] : a;
    return t >= 0.5 ? b - (b - a) * (1 - t) : a + (b - a) * t;
}

/* brainchop's quantile normalisation: a uint8-valued volume (its counts,
 * normalize.c) and one with a fraction (a copy and quickselect) both equal
 * (x - q_lo) / (q_hi - q_lo + eps) clipped to [0, 1] with the quantiles of a
 * sorted copy, value for value; over a pool of 3 and of 1. */
void test_normalize_quantile(void)
{
    enum { N = 4099 };
    sp_norm nm = {.scheme = SP_NORM_QUANTILE, .lo = 0.02, .hi = 0.98, .mean = 1e-3};
    float *x = malloc(N * sizeof *x), *s = malloc(N * sizeof *s), *y = malloc(N * sizeof *y);
    CHECK(x && s && y);
    if (!x || !s || !y)
        return;
    for (int frac = 0; frac < 2; frac++)
        for (int th = 1; th <= 3; th += 2) {
            unsigned r = 12345;
            for (int i = 0; i < N; i++) {
                r = r * 1103515245u + 12345u;
                x[i] = (float)((r >> 16) % 200) + (i % 3 ? 0.0f : 30.0f);   /* 0..229, lumpy */
            }
            if (frac)
                x[N / 2] = 17.5f;
            memcpy(s, x, N * sizeof *s);
            qsort(s, N, sizeof *s, cmp_float);
            double lo = sorted_quantile(s, N, nm.lo), hi = sorted_quantile(s, N, nm.hi);
            memcpy(y, x, N * sizeof *y);
            sp_pool *pool = sp_pool_create(th);
            sp_normalize(y, N, &nm, pool);
            sp_pool_free(pool);
            int bad = 0;
            for (int i = 0; i < N; i++) {
                double v = ((double)x[i] - lo) * (1.0 / (hi - lo + nm.mean));
                v = v < 0 ? 0 : v > 1 ? 1 : v;
                bad += y[i] != (float)v;
            }
            CHECK_MSG(bad == 0, frac ? "with a fraction" : "uint8-valued");
        }
    free(x), free(s), free(y);
}
