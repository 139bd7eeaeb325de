/* NIfTI reader: malformed headers and data are refused with clear messages
 * and before any allocation of what the header claims; write/read round
 * trip keeps values and geometry. */
#include "test.h"
#include "io/volume.h"

#include <stdint.h>
#include <stdlib.h>
#include <zlib.h>

/* A valid NIfTI-1 int16 volume nx*ny*nz in memory (352-byte header). */
static uint8_t *make_n1(int nx, int ny, int nz, size_t *size)
{
    size_t n = 352 + (size_t)nx * ny * nz * 2;
    uint8_t *b = calloc(1, n);
    int32_t hs = 348;
    memcpy(b, &hs, 4);
    int16_t dim[8] = {3, (int16_t)nx, (int16_t)ny, (int16_t)nz, 1, 1, 1, 1};
    memcpy(b + 40, dim, 16);
    int16_t dt = 4, bp = 16;
    memcpy(b + 70, &dt, 2);
    memcpy(b + 72, &bp, 2);
    float pix[8] = {1, 2, 2, 3, 1, 1, 1, 1};
    memcpy(b + 76, pix, 32);
    float vo = 352;
    memcpy(b + 108, &vo, 4);
    memcpy(b + 344, "n+1", 4);
    int16_t *d = (int16_t *)(b + 352);
    for (int i = 0; i < nx * ny * nz; i++)
        d[i] = (int16_t)(i - 100);
    *size = n;
    return b;
}

static void set_i16(uint8_t *b, int off, int v) { int16_t x = (int16_t)v; memcpy(b + off, &x, 2); }

static sp_status rd(const uint8_t *b, size_t n, sp_volume **v)
{
    sp_read_params p = sp_read_default_params();
    p.max_voxels = 1000000;
    return sp_volume_read_mem(b, n, "mem.nii", &p, v);
}

void test_nifti_malformed(void)
{
    size_t n;
    sp_volume *v = NULL;
    uint8_t *b = make_n1(4, 3, 2, &n);
    CHECK(rd(b, n, &v) == SP_OK);
    if (v) {
        sp_volume_info vi;
        sp_volume_get_info(v, &vi);
        CHECK(vi.dim[0] == 4 && vi.dim[1] == 3 && vi.dim[2] == 2);
        CHECK(sp_volume_data(v)[5] == -95.0f);
        CHECK(strcmp(vi.affine_source, "pixdim") == 0);
        CHECK(vi.spacing[2] == 3.0);
        sp_volume_free(v);
        v = NULL;
    }
    /* bad sizeof_hdr */
    uint8_t *c = malloc(n);
    memcpy(c, b, n);
    int32_t bad = 1234;
    memcpy(c, &bad, 4);
    CHECK(rd(c, n, &v) == SP_ERR_INPUT && !v);
    CHECK_CONTAINS(sp_last_error(), "sizeof_hdr");
    CHECK(!strstr(sp_last_error(), "1234"));   /* never the raw value */
    /* dim <= 0 */
    memcpy(c, b, n);
    set_i16(c, 44, 0);
    CHECK(rd(c, n, &v) == SP_ERR_INPUT && !v);
    CHECK_CONTAINS(sp_last_error(), "dim[2]");
    /* too many dims */
    memcpy(c, b, n);
    set_i16(c, 40, 9);
    CHECK(rd(c, n, &v) == SP_ERR_INPUT && !v);
    /* 4D with two volumes */
    memcpy(c, b, n);
    set_i16(c, 40, 4);
    set_i16(c, 48, 2);
    CHECK(rd(c, n, &v) == SP_ERR_INPUT && !v);
    CHECK_CONTAINS(sp_last_error(), "3D");
    /* 4D with one volume is fine */
    memcpy(c, b, n);
    set_i16(c, 40, 4);
    CHECK(rd(c, n, &v) == SP_OK);
    sp_volume_free(v);
    v = NULL;
    /* over the voxel limit: 30000^3 claimed in a tiny file, refused before allocating */
    memcpy(c, b, n);
    set_i16(c, 42, 30000);
    set_i16(c, 44, 30000);
    set_i16(c, 46, 30000);
    CHECK(rd(c, n, &v) == SP_ERR_INPUT && !v);
    CHECK_CONTAINS(sp_last_error(), "over the limit");
    /* data shorter than the header says */
    CHECK(rd(b, n - 10, &v) == SP_ERR_INPUT && !v);
    CHECK_CONTAINS(sp_last_error(), "but the file holds");
    /* unknown datatype */
    memcpy(c, b, n);
    set_i16(c, 70, 1024);
    CHECK(rd(c, n, &v) == SP_ERR_INPUT && !v);
    CHECK_CONTAINS(sp_last_error(), "datatype 1024");
    /* too short for a header */
    CHECK(rd(b, 100, &v) == SP_ERR_INPUT && !v);
    free(c);
    free(b);
}

void test_nifti_gzip_errors(void)
{
    size_t n;
    sp_volume *v = NULL;
    uint8_t *b = make_n1(8, 8, 8, &n);
    uLongf cap = compressBound(n) + 64;
    uint8_t *gz = malloc(cap);
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
    zs.next_in = b;
    zs.avail_in = (uInt)n;
    zs.next_out = gz;
    zs.avail_out = (uInt)cap;
    deflate(&zs, Z_FINISH);
    size_t gn = zs.total_out;
    deflateEnd(&zs);
    CHECK(rd(gz, gn, &v) == SP_OK);
    if (v)
        CHECK(sp_volume_data(v)[511] == 411.0f);
    sp_volume_free(v);
    v = NULL;
    /* truncated gzip */
    CHECK(rd(gz, gn / 2, &v) != SP_OK && !v);
    /* corrupt deflate data after a valid header */
    uint8_t *c = malloc(gn);
    memcpy(c, gz, gn);
    for (size_t i = 20; i < gn - 8; i++)
        c[i] ^= 0x5a;
    CHECK(rd(c, gn, &v) == SP_ERR_INPUT && !v);
    /* gzip magic followed by garbage */
    uint8_t junk[64] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 0xff, 0xff, 0xff};
    CHECK(rd(junk, sizeof junk, &v) == SP_ERR_INPUT && !v);
    free(c);
    free(gz);
    free(b);
}

void test_nifti_roundtrip(void)
{
    size_t n;
    sp_volume *v = NULL;
    uint8_t *b = make_n1(5, 4, 3, &n);
    /* give it an sform so the geometry must survive */
    set_i16(b, 254, 2);
    float srow[12] = {-2, 0, 0, 10, 0, 2, 0, -20, 0, 0, 3, 30};
    memcpy(b + 280, srow, sizeof srow);
    CHECK(rd(b, n, &v) == SP_OK);
    if (!v) {
        free(b);
        return;
    }
    uint16_t lab[60];
    for (int i = 0; i < 60; i++)
        lab[i] = (uint16_t)(i % 7);
    const char *paths[2] = {"/tmp/segpipe-rt.nii.gz", "/tmp/segpipe-rt.nii"};
    for (int k = 0; k < 2; k++) {
        CHECK(sp_labels_write(paths[k], lab, v) == SP_OK);
        uint16_t *back = NULL;
        sp_volume *g = NULL;
        CHECK(sp_labels_read(paths[k], NULL, &back, &g) == SP_OK);
        if (back) {
            CHECK(memcmp(back, lab, sizeof lab) == 0);
            sp_volume_info a, c;
            sp_volume_get_info(v, &a);
            sp_volume_get_info(g, &c);
            CHECK(memcmp(a.affine, c.affine, sizeof a.affine) == 0);
            CHECK(c.sform_code == 2 && c.file_dtype == SP_DT_U8);
            CHECK(strcmp(c.axcodes, "LAS") == 0);
        }
        free(back);
        sp_volume_free(g);
        remove(paths[k]);
    }
    /* more than 255 labels -> int16 */
    lab[7] = 300;
    CHECK(sp_labels_write(paths[0], lab, v) == SP_OK);
    uint16_t *back = NULL;
    sp_volume *g = NULL;
    CHECK(sp_labels_read(paths[0], NULL, &back, &g) == SP_OK);
    if (back) {
        CHECK(back[7] == 300);
        sp_volume_info c;
        sp_volume_get_info(g, &c);
        CHECK(c.file_dtype == SP_DT_I16);
    }
    free(back);
    sp_volume_free(g);
    remove(paths[0]);
    /* a failed write leaves nothing behind */
    CHECK(sp_labels_write("/nonexistent-dir/x.nii.gz", lab, v) == SP_ERR_IO);
    sp_volume_free(v);
    free(b);
}
