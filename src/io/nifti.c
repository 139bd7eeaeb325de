/*
 * nifti.c — NIfTI-1 and NIfTI-2 reading and writing (.nii, .nii.gz).
 *
 * Reading trusts nothing until checked: the header is parsed from the first
 * bytes (gzip: inflated with zlib just far enough), dims, datatype, offset
 * and the voxel count (overflow-checked, against a configurable limit) are
 * validated, and only then is the exact byte size allocated and the whole
 * stream decompressed with libdeflate (one call per gzip member; about
 * 2-3x faster than zlib here, see docs/performance.md). Data shorter than the header
 * says is an error. Voxels become float32 with scl_slope/scl_inter applied,
 * converted on all cores. The affine follows nibabel: sform if
 * sform_code > 0, else qform if qform_code > 0, else the pixdim-based one.
 *
 * Writing produces NIfTI-1 with the source's qform/sform (and codes)
 * unchanged. .nii.gz output is one gzip member compressed in parallel
 * chunks (gzip_write.c), written atomically.
 */
#include "volume.h"

#include <sys/stat.h>

#include <libdeflate.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define N1_SIZE 348
#define N2_SIZE 540
#define MAX_VOX_OFFSET (64 << 20)

/* ------------------------------------------------------------- geometry */

/* quaternion (b, c, d), offsets, pixdim, qfac -> affine (nibabel get_qform) */
static void qform_affine(sp_geom *g)
{
    double b = g->quatern[0], c = g->quatern[1], d = g->quatern[2];
    double w2 = 1.0 - (b * b + c * c + d * d);
    double a = w2 < 0 ? 0 : sqrt(w2);
    double n = a * a + b * b + c * c + d * d;
    double s = n > 0 ? 2.0 / n : 0;
    double X = b * s, Y = c * s, Z = d * s;
    double wX = a * X, wY = a * Y, wZ = a * Z, xX = b * X, xY = b * Y, xZ = b * Z;
    double yY = c * Y, yZ = c * Z, zZ = d * Z;
    double R[3][3] = {{1 - (yY + zZ), xY - wZ, xZ + wY},
                      {xY + wZ, 1 - (xX + zZ), yZ - wX},
                      {xZ - wY, yZ + wX, 1 - (xX + yY)}};
    double vox[3] = {fabs(g->pixdim[1]), fabs(g->pixdim[2]), fabs(g->pixdim[3]) * g->qfac};
    memset(g->affine, 0, sizeof g->affine);
    for (int r = 0; r < 3; r++) {
        for (int col = 0; col < 3; col++)
            g->affine[r][col] = R[r][col] * vox[col];
        g->affine[r][3] = g->qoffset[r];
    }
    g->affine[3][3] = 1;
}

static void best_affine(sp_geom *g)
{
    memset(g->affine, 0, sizeof g->affine);
    g->affine[3][3] = 1;
    if (g->sform_code > 0) {
        for (int r = 0; r < 3; r++)
            for (int col = 0; col < 4; col++)
                g->affine[r][col] = g->srow[r][col];
        g->affine_source = "sform";
    } else if (g->qform_code > 0) {
        qform_affine(g);
        g->affine_source = "qform";
    } else {
        /* Analyze-style: x flipped, origin at the centre (nibabel) */
        for (int i = 0; i < 3; i++) {
            double z = fabs(g->pixdim[i + 1]) * (i == 0 ? -1 : 1);
            g->affine[i][i] = z;
            g->affine[i][3] = -((double)(g->dim[i] - 1) / 2.0) * z;
        }
        g->affine_source = "pixdim";
    }
}

/* --------------------------------------------------------------- header */

typedef struct hdr {
    int version;          /* 1 or 2 */
    int swap;
    int64_t dim[8];
    int datatype;
    int64_t vox_offset;
    double scl_slope, scl_inter;
    sp_geom g;
} hdr;

static uint16_t bswap16(uint16_t x) { return (uint16_t)(x >> 8 | x << 8); }

static int16_t rd_i16(const uint8_t *p, int swap)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return (int16_t)(swap ? bswap16(v) : v);
}
static int32_t rd_i32(const uint8_t *p, int swap)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return (int32_t)(swap ? __builtin_bswap32(v) : v);
}
static int64_t rd_i64(const uint8_t *p, int swap)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return (int64_t)(swap ? __builtin_bswap64(v) : v);
}
static double rd_f32(const uint8_t *p, int swap)
{
    uint32_t v;
    float f;
    memcpy(&v, p, 4);
    if (swap)
        v = __builtin_bswap32(v);
    memcpy(&f, &v, 4);
    return f;
}
static double rd_f64(const uint8_t *p, int swap)
{
    uint64_t v;
    double f;
    memcpy(&v, p, 8);
    if (swap)
        v = __builtin_bswap64(v);
    memcpy(&f, &v, 8);
    return f;
}

static sp_dtype nifti_dtype(int code)
{
    switch (code) {
    case 2: return SP_DT_U8;
    case 4: return SP_DT_I16;
    case 8: return SP_DT_I32;
    case 16: return SP_DT_F32;
    case 64: return SP_DT_F64;
    case 256: return SP_DT_I8;
    case 512: return SP_DT_U16;
    case 768: return SP_DT_U32;
    default: return SP_DT_UNKNOWN;
    }
}

/* The NIfTI-1 fields (348-byte header, NIfTI-1 standard's nifti1.h offsets). */
static sp_status parse_n1(const uint8_t *b, const char *name, hdr *h)
{
    int s = h->swap;
    sp_geom *g = &h->g;
    h->version = 1;
    if (memcmp(b + 344, "n+1", 4) != 0) {
        if (memcmp(b + 344, "ni1", 4) == 0)
            return sp_fail(SP_ERR_INPUT, "%s: header/image pairs (.hdr/.img) are not supported; "
                           "convert to a single .nii", name);
        return sp_fail(SP_ERR_INPUT, "%s: bad NIfTI-1 magic", name);
    }
    for (int i = 0; i < 8; i++) {
        h->dim[i] = rd_i16(b + 40 + 2 * i, s);
        g->pixdim[i] = rd_f32(b + 76 + 4 * i, s);
    }
    h->datatype = rd_i16(b + 70, s);
    double vo = rd_f32(b + 108, s);
    if (!(vo >= 0 && vo < 1e12) || vo != floor(vo))
        return sp_fail(SP_ERR_INPUT, "%s: bad vox_offset %g", name, vo);
    h->vox_offset = (int64_t)vo;
    h->scl_slope = rd_f32(b + 112, s);
    h->scl_inter = rd_f32(b + 116, s);
    g->xyzt_units = (uint8_t)b[123];
    g->qform_code = rd_i16(b + 252, s);
    g->sform_code = rd_i16(b + 254, s);
    for (int i = 0; i < 3; i++) {
        g->quatern[i] = rd_f32(b + 256 + 4 * i, s);
        g->qoffset[i] = rd_f32(b + 268 + 4 * i, s);
        for (int j = 0; j < 4; j++)
            g->srow[i][j] = rd_f32(b + 280 + 16 * i + 4 * j, s);
    }
    return SP_OK;
}

/* The NIfTI-2 fields (540-byte header, nifti2.h offsets). */
static sp_status parse_n2(const uint8_t *b, size_t n, const char *name, hdr *h)
{
    int s = h->swap;
    sp_geom *g = &h->g;
    h->version = 2;
    if (n < N2_SIZE)
        return sp_fail(SP_ERR_INPUT, "%s: truncated NIfTI-2 header", name);
    if (memcmp(b + 4, "n+2\0\r\n\032\n", 8) != 0)
        return sp_fail(SP_ERR_INPUT, "%s: bad NIfTI-2 magic", name);
    h->datatype = rd_i16(b + 12, s);
    for (int i = 0; i < 8; i++) {
        h->dim[i] = rd_i64(b + 16 + 8 * i, s);
        g->pixdim[i] = rd_f64(b + 104 + 8 * i, s);
    }
    h->vox_offset = rd_i64(b + 168, s);
    h->scl_slope = rd_f64(b + 176, s);
    h->scl_inter = rd_f64(b + 184, s);
    g->qform_code = rd_i32(b + 344, s);
    g->sform_code = rd_i32(b + 348, s);
    for (int i = 0; i < 3; i++) {
        g->quatern[i] = rd_f64(b + 352 + 8 * i, s);
        g->qoffset[i] = rd_f64(b + 376 + 8 * i, s);
        for (int j = 0; j < 4; j++)
            g->srow[i][j] = rd_f64(b + 400 + 32 * i + 8 * j, s);
    }
    g->xyzt_units = rd_i32(b + 500, s);
    return SP_OK;
}

/* Dimensions and datatype: a 3D volume (or 4D with one volume) of a
 * supported type whose voxel count fits the limit, decided from the header
 * alone, before any data is decompressed or allocated. */
static sp_status check_dims(hdr *h, const char *name, const sp_read_params *rp)
{
    sp_geom *g = &h->g;
    int64_t nd = h->dim[0];
    if (nd < 1 || nd > 7)
        return sp_fail(SP_ERR_INPUT, "%s: dim[0] is %lld (must be 1..7)", name, (long long)nd);
    for (int i = 1; i <= nd; i++)
        if (h->dim[i] <= 0)
            return sp_fail(SP_ERR_INPUT, "%s: dim[%d] is %lld (must be > 0)", name, i, (long long)h->dim[i]);
    for (int i = 4; i <= nd; i++)
        if (h->dim[i] != 1)
            return sp_fail(SP_ERR_INPUT, "%s: %lldD data with dim[%d] = %lld; only 3D volumes "
                           "(or 4D with one volume) are supported",
                           name, (long long)nd, i, (long long)h->dim[i]);
    for (int i = 0; i < 3; i++)
        g->dim[i] = i < nd ? h->dim[i + 1] : 1;
    sp_dtype dt = nifti_dtype(h->datatype);
    if (dt == SP_DT_UNKNOWN)
        return sp_fail(SP_ERR_INPUT, "%s: unsupported NIfTI datatype %d (supported: uint8, int8, "
                       "int16, uint16, int32, uint32, float32, float64)", name, h->datatype);
    uint64_t nvox, nbytes;
    if (__builtin_mul_overflow((uint64_t)g->dim[0], (uint64_t)g->dim[1], &nvox) ||
        __builtin_mul_overflow(nvox, (uint64_t)g->dim[2], &nvox) ||
        __builtin_mul_overflow(nvox, (uint64_t)sp_dtype_size(dt), &nbytes))
        return sp_fail(SP_ERR_INPUT, "%s: header dims %lldx%lldx%lld overflow", name,
                       (long long)g->dim[0], (long long)g->dim[1], (long long)g->dim[2]);
    uint64_t lim = rp && rp->max_voxels ? rp->max_voxels : SP_DEFAULT_MAX_VOXELS;
    if (nvox > lim)
        return sp_fail(SP_ERR_INPUT, "%s: header says %lldx%lldx%lld = %llu voxels, over the limit "
                       "of %llu", name, (long long)g->dim[0], (long long)g->dim[1],
                       (long long)g->dim[2], (unsigned long long)nvox, (unsigned long long)lim);
    return SP_OK;
}

/* Spacing, the affine (nibabel's choice of sform/qform/pixdim) and the
 * intensity scaling, each checked to be finite. */
static sp_status check_geometry(hdr *h, const char *name)
{
    sp_geom *g = &h->g;
    for (int i = 1; i <= 3; i++)
        if (!isfinite(g->pixdim[i]))
            return sp_fail(SP_ERR_INPUT, "%s: pixdim[%d] is not finite", name, i);
    for (int i = 0; i < 3; i++)
        g->spacing[i] = fabs(g->pixdim[i + 1]) > 0 ? fabs(g->pixdim[i + 1]) : 1.0;
    g->qfac = g->pixdim[0] == -1.0 ? -1.0 : 1.0;
    best_affine(g);
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++)
            if (!isfinite(g->affine[r][c]))
                return sp_fail(SP_ERR_INPUT, "%s: the %s affine is not finite", name, g->affine_source);
    if (!isfinite(h->scl_slope) || h->scl_slope == 0)
        h->scl_slope = 1, h->scl_inter = 0;   /* nibabel: no scaling */
    if (!isfinite(h->scl_inter))
        h->scl_inter = 0;
    return SP_OK;
}

/* Parse and validate the header in the first n bytes (n >= 348). Messages
 * name what is wrong, never the file's bytes. */
static sp_status parse_header(const uint8_t *b, size_t n, const char *name,
                              const sp_read_params *rp, hdr *h)
{
    memset(h, 0, sizeof *h);
    int32_t sz = rd_i32(b, 0);
    if (sz == N1_SIZE || sz == N2_SIZE)
        h->swap = 0;
    else if (rd_i32(b, 1) == N1_SIZE || rd_i32(b, 1) == N2_SIZE)
        h->swap = 1, sz = rd_i32(b, 1);
    else
        return sp_fail(SP_ERR_INPUT, "%s: not a NIfTI file (its first 4 bytes are not a NIfTI-1 or "
                       "NIfTI-2 header size, sizeof_hdr 348 or 540)", name);
    sp_status st = sz == N1_SIZE ? parse_n1(b, name, h) : parse_n2(b, n, name, h);
    if (st || (st = check_dims(h, name, rp)))
        return st;
    if (h->vox_offset < sz)
        h->vox_offset = sz + 4;   /* tolerate 0: data right after the extension flag */
    if (h->vox_offset > MAX_VOX_OFFSET)   /* extensions past 64 MiB: a gzip bomb, not a header */
        return sp_fail(SP_ERR_INPUT, "%s: vox_offset %lld is past the %d MiB allowed for header extensions",
                       name, (long long)h->vox_offset, MAX_VOX_OFFSET >> 20);
    return check_geometry(h, name);
}

/* ------------------------------------------------------ data conversion */

typedef struct conv_ctx {
    const uint8_t *src;
    float *dst;
    sp_dtype dt;
    int swap;
    double slope, inter;
    int scaled;
    int nonint;           /* set if a non-integer value is seen */
    pthread_mutex_t *mu;  /* guards vmin/vmax */
    float vmin, vmax;
} conv_ctx;

static void conv_range(void *vctx, int64_t b, int64_t e, int worker)
{
    conv_ctx *c = vctx;
    const uint8_t *s = c->src;
    float *d = c->dst;
    size_t es = sp_dtype_size(c->dt);
    int nonint = 0;
#define CONV(T, SWAPF)                                                                  \
    for (int64_t i = b; i < e; i++) {                                                   \
        T v;                                                                            \
        memcpy(&v, s + (size_t)i * es, sizeof v);                                       \
        if (c->swap)                                                                    \
            v = SWAPF(v);                                                               \
        d[i] = (float)v;                                                                \
    }
    switch (c->dt) {
    case SP_DT_U8: for (int64_t i = b; i < e; i++) d[i] = s[i]; break;
    case SP_DT_I8: for (int64_t i = b; i < e; i++) d[i] = (int8_t)s[i]; break;
    case SP_DT_I16: {
        const int swap = c->swap;
        for (int64_t i = b; i < e; i++) {
            uint16_t u;
            memcpy(&u, s + 2 * i, 2);
            d[i] = (float)(int16_t)(swap ? bswap16(u) : u);
        }
        break;
    }
    case SP_DT_U16: CONV(uint16_t, bswap16) break;
    case SP_DT_I32: {
        for (int64_t i = b; i < e; i++) {
            uint32_t u;
            memcpy(&u, s + 4 * i, 4);
            if (c->swap)
                u = __builtin_bswap32(u);
            d[i] = (float)(int32_t)u;
        }
        break;
    }
    case SP_DT_U32: CONV(uint32_t, __builtin_bswap32) break;
    case SP_DT_F32: {
        for (int64_t i = b; i < e; i++) {
            uint32_t u;
            float f;
            memcpy(&u, s + 4 * i, 4);
            if (c->swap)
                u = __builtin_bswap32(u);
            memcpy(&f, &u, 4);
            d[i] = f;
        }
        break;
    }
    case SP_DT_F64: {
        for (int64_t i = b; i < e; i++) {
            uint64_t u;
            double f;
            memcpy(&u, s + 8 * i, 8);
            if (c->swap)
                u = __builtin_bswap64(u);
            memcpy(&f, &u, 8);
            d[i] = (float)f;
        }
        break;
    }
    default: break;
    }
#undef CONV
    if (c->scaled)
        for (int64_t i = b; i < e; i++)
            d[i] = (float)((double)d[i] * c->slope + c->inter);
    if (c->dt == SP_DT_F32 || c->dt == SP_DT_F64 || c->scaled)
        for (int64_t i = b; i < e && !nonint; i++)
            nonint = d[i] != floorf(d[i]);
    if (nonint)
        c->nonint = 1;   /* benign race: every writer stores 1 */
    float lo = INFINITY, hi = -INFINITY;
    for (int64_t i = b; i < e; i++) {
        lo = d[i] < lo ? d[i] : lo;
        hi = d[i] > hi ? d[i] : hi;
    }
    pthread_mutex_lock(c->mu);
    if (lo < c->vmin)
        c->vmin = lo;
    if (hi > c->vmax)
        c->vmax = hi;
    pthread_mutex_unlock(c->mu);
}

/* ------------------------------------------------------------- reading */

/* Conversion overlapped with decompression: for multi-member gzip files
 * (segpipe's own output, bgzip and pigz -i style), a helper thread converts
 * the voxels of each finished member while the next one is inflated. */
typedef struct overlap {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    conv_ctx *c;
    size_t vox_offset, es;
    int64_t nvox, avail, converted;
    int finished;
} overlap;

static void overlap_progress(void *user, size_t bytes)
{
    overlap *o = user;
    int64_t v = bytes > o->vox_offset ? (int64_t)((bytes - o->vox_offset) / o->es) : 0;
    pthread_mutex_lock(&o->mu);
    o->avail = v < o->nvox ? v : o->nvox;
    pthread_cond_signal(&o->cv);
    pthread_mutex_unlock(&o->mu);
}

static void *overlap_main(void *arg)
{
    overlap *o = arg;
    pthread_mutex_lock(&o->mu);
    for (;;) {
        while (!o->finished && o->avail == o->converted)
            pthread_cond_wait(&o->cv, &o->mu);
        if (o->finished)
            break;
        int64_t b = o->converted, e = o->avail;
        pthread_mutex_unlock(&o->mu);
        conv_range(o->c, b, e, 0);
        pthread_mutex_lock(&o->mu);
        o->converted = e;
    }
    pthread_mutex_unlock(&o->mu);
    return NULL;
}

/* Inflate up to `want` bytes of the gzip stream (header probe). */
static size_t gz_probe(const uint8_t *in, size_t n, uint8_t *out, size_t want)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK)
        return 0;
    zs.next_in = (Bytef *)in;
    zs.avail_in = (uInt)(n > 0x7fffffff ? 0x7fffffff : n);
    zs.next_out = out;
    zs.avail_out = (uInt)want;
    while (zs.avail_out > 0) {
        int r = inflate(&zs, Z_NO_FLUSH);
        if (r == Z_STREAM_END) {
            /* another member may follow */
            size_t used = (size_t)(zs.next_in - in);
            if (used >= n || inflateReset(&zs) != Z_OK)
                break;
            continue;
        }
        if (r != Z_OK)
            break;
    }
    size_t got = want - zs.avail_out;
    inflateEnd(&zs);
    return got;
}

/* Decompress all gzip members into out[0..cap); *got = bytes produced.
 * Extra bytes past cap (trailing data) are ignored. */
typedef void (*gz_progress_fn)(void *user, size_t bytes_done);

static sp_status gz_inflate_all(const uint8_t *in, size_t n, uint8_t *out, size_t cap,
                                size_t *got, const char *name, gz_progress_fn progress, void *user)
{
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    size_t ipos = 0, opos = 0;
    sp_status st = SP_OK;
    if (!d)
        return sp_fail(SP_ERR_NOMEM, "out of memory");
    while (ipos < n && opos < cap) {
        size_t in_used = 0, out_got = 0;
        if (n - ipos < 18 || in[ipos] != 0x1f || in[ipos + 1] != 0x8b)
            break;   /* trailing garbage after the last member: stop */
        enum libdeflate_result r = libdeflate_gzip_decompress_ex(
            d, in + ipos, n - ipos, out + opos, cap - opos, &in_used, &out_got);
        if (r == LIBDEFLATE_INSUFFICIENT_SPACE) {
            /* This member holds more than we need (trailing data after the
             * image): take the first bytes through zlib. */
            size_t g = gz_probe(in + ipos, n - ipos, out + opos, cap - opos);
            opos += g;
            break;
        }
        if (r != LIBDEFLATE_SUCCESS) {
            st = sp_fail(SP_ERR_INPUT, "%s: corrupt or truncated gzip data (after %zu bytes "
                         "decompressed)", name, opos);
            break;
        }
        ipos += in_used;
        opos += out_got;
        if (progress)
            progress(user, opos);
    }
    libdeflate_free_decompressor(d);
    *got = opos;
    return st;
}

/* TotalSegmentator's label names: the header extension (after the 4-byte
 * extension flag) holding a CaretExtension label table, copied (or NULL). */
static char *label_table(const uint8_t *file, size_t vox_offset, size_t hsz)
{
    if (vox_offset < hsz + 4 + 8 || file[hsz] == 0)
        return NULL;
    for (size_t p = hsz + 4; p + 8 <= vox_offset;) {
        int32_t esize, ecode;
        memcpy(&esize, file + p, 4);
        memcpy(&ecode, file + p + 4, 4);
        if (esize < 16 || (size_t)esize > vox_offset - p)
            return NULL;
        const char *d = (const char *)file + p + 8;
        size_t n = (size_t)esize - 8;
        if (memmem(d, n, "<CaretExtension", 15) || memmem(d, n, "<LabelTable", 11))
            return strndup(d, n);
        (void)ecode;
        p += (size_t)esize;
    }
    return NULL;
}

/* The header of an in-memory file (gzip or not) parsed into h */
static sp_status mem_header(const uint8_t *buf, size_t n, int gz, const char *name, const sp_read_params *rp,
                            uint8_t head[N2_SIZE], hdr *h)
{
    size_t hn;
    if (gz)
        hn = gz_probe(buf, n, head, N2_SIZE);
    else
        hn = n < N2_SIZE ? n : N2_SIZE, memcpy(head, buf, hn);
    if (gz && hn == 0)
        return sp_fail(SP_ERR_INPUT, "%s: not valid gzip data", name);
    if (hn < N1_SIZE)
        return sp_fail(SP_ERR_INPUT, "%s: is not a NIfTI file: %zu %sbytes, shorter than a NIfTI header (348)", name,
                       hn, gz ? "decompressed " : "");
    return parse_header(head, hn, name, rp, h);
}

/* the caller's verdict on the header's geometry (rp->check_header), before
 * anything is decompressed */
static sp_status check_header(const sp_read_params *rp, const sp_geom *g, sp_dtype dt, const char *name)
{
    sp_volume hv;
    memset(&hv, 0, sizeof hv);
    hv.g = *g;
    hv.file_dtype = dt;
    sp_status st = rp->check_header(&hv, rp->check_user);
    if (!st)
        return SP_OK;
    char why[1024];
    snprintf(why, sizeof why, "%s", sp_last_error());
    return sp_fail(st, "%s: %s", name, why);
}

sp_status sp_nifti_read_mem(const uint8_t *buf, size_t n, const char *name,
                            const sp_read_params *rp, sp_volume **out)
{
    uint8_t head[N2_SIZE];
    int gz = n >= 2 && buf[0] == 0x1f && buf[1] == 0x8b;
    hdr h;
    sp_status st;
    *out = NULL;
    if ((st = mem_header(buf, n, gz, name, rp, head, &h)))
        return st;
    sp_dtype dt = nifti_dtype(h.datatype);
    if (rp && rp->check_header && (st = check_header(rp, &h.g, dt, name)))
        return st;
    size_t nvox = (size_t)sp_geom_nvox(&h.g);
    size_t nbytes = nvox * sp_dtype_size(dt);
    size_t need = (size_t)h.vox_offset + nbytes;
    const uint8_t *raw;
    uint8_t *tmp = NULL;
    sp_volume *v = NULL;
    pthread_mutex_t range_mu = PTHREAD_MUTEX_INITIALIZER;
    conv_ctx c;
    memset(&c, 0, sizeof c);
    int64_t done_vox = 0;
    if (gz) {
        tmp = sp_big_alloc(need);
        v = tmp ? sp_volume_alloc(&h.g) : NULL;
        if (!v) {
            free(tmp);
            return sp_fail(SP_ERR_NOMEM, "%s: cannot allocate %zu bytes", name, need + nvox * 4);
        }
        c = (conv_ctx){tmp + h.vox_offset, v->data, dt, h.swap, h.scl_slope, h.scl_inter,
                       !(h.scl_slope == 1 && h.scl_inter == 0), 0, &range_mu, INFINITY, -INFINITY};
        overlap o = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, &c, (size_t)h.vox_offset,
                     sp_dtype_size(dt), (int64_t)nvox, 0, 0, 0};
        pthread_t th;
        int threaded = sp_num_cores() > 1 && pthread_create(&th, NULL, overlap_main, &o) == 0;
        size_t got = 0;
        st = gz_inflate_all(buf, n, tmp, need, &got, name, threaded ? overlap_progress : NULL, &o);
        if (threaded) {
            pthread_mutex_lock(&o.mu);
            o.finished = 1;
            pthread_cond_signal(&o.cv);
            pthread_mutex_unlock(&o.mu);
            pthread_join(th, NULL);
            done_vox = o.converted;
        }
        if (st) {
            free(tmp);
            sp_volume_free(v);
            return st;
        }
        if (got < need) {
            free(tmp);
            sp_volume_free(v);
            return sp_fail(SP_ERR_INPUT, "%s: header says %lldx%lldx%lld %s = %zu bytes of data, "
                           "but the file holds %zu", name, (long long)h.g.dim[0], (long long)h.g.dim[1],
                           (long long)h.g.dim[2], sp_dtype_str(dt), nbytes,
                           got > (size_t)h.vox_offset ? got - (size_t)h.vox_offset : 0);
        }
        raw = tmp + h.vox_offset;
    } else {
        if (n < need)
            return sp_fail(SP_ERR_INPUT, "%s: header says %lldx%lldx%lld %s = %zu bytes of data, "
                           "but the file holds %zu", name, (long long)h.g.dim[0], (long long)h.g.dim[1],
                           (long long)h.g.dim[2], sp_dtype_str(dt), nbytes,
                           n > (size_t)h.vox_offset ? n - (size_t)h.vox_offset : 0);
        raw = buf + h.vox_offset;
    }
    if (!v) {
        v = sp_volume_alloc(&h.g);
        if (!v)
            return sp_fail(SP_ERR_NOMEM, "%s: cannot allocate %zu voxels", name, nvox);
        c = (conv_ctx){raw, v->data, dt, h.swap, h.scl_slope, h.scl_inter,
                       !(h.scl_slope == 1 && h.scl_inter == 0), 0, &range_mu, INFINITY, -INFINITY};
    }
    v->file_dtype = dt;
    /* what the overlap thread did not convert yet, on all cores */
    conv_ctx rest = c;
    size_t es = sp_dtype_size(dt);
    rest.src = c.src + (size_t)done_vox * es;
    rest.dst = c.dst + done_vox;
    sp_pool_for(sp_default_pool(), (int64_t)nvox - done_vox, 1 << 18, conv_range, &rest);
    v->integer_valued = !c.nonint && !rest.nonint;
    v->vmin = fminf(c.vmin, rest.vmin);
    v->vmax = fmaxf(c.vmax, rest.vmax);
    v->range_valid = nvox > 0;
    v->label_xml = label_table(gz ? tmp : buf, (size_t)h.vox_offset, h.version == 2 ? N2_SIZE : N1_SIZE);
    free(tmp);
    *out = v;
    return SP_OK;
}

/* ------------------------------------------------------------- writing */

static void wr_i16(uint8_t *p, int v) { int16_t x = (int16_t)v; memcpy(p, &x, 2); }
static void wr_i32(uint8_t *p, int32_t v) { memcpy(p, &v, 4); }
static void wr_f32(uint8_t *p, double v) { float x = (float)v; memcpy(p, &x, 4); }

static void build_header(uint8_t *b, const sp_geom *g, sp_dtype dt)
{
    memset(b, 0, 352);
    wr_i32(b, N1_SIZE);
    b[38] = 'r';    /* regular = 'r' (Analyze legacy) */
    wr_i16(b + 40, 3);
    for (int i = 0; i < 3; i++)
        wr_i16(b + 42 + 2 * i, (int)g->dim[i]);
    for (int i = 3; i < 7; i++)
        wr_i16(b + 42 + 2 * i, 1);
    wr_i16(b + 70, dt == SP_DT_U8 ? 2 : dt == SP_DT_I16 ? 4 : 16);
    wr_i16(b + 72, (int)(sp_dtype_size(dt) * 8));
    wr_f32(b + 76, g->qfac);
    for (int i = 1; i < 8; i++)
        wr_f32(b + 76 + 4 * i, i <= 3 ? g->spacing[i - 1] : (g->pixdim[i] != 0 ? g->pixdim[i] : 1));
    wr_f32(b + 108, 352);
    wr_f32(b + 112, 1.0);
    wr_f32(b + 116, 0.0);
    b[123] = (uint8_t)(g->xyzt_units ? g->xyzt_units : 2);   /* mm */
    memcpy(b + 148, "segpipe", 7);
    wr_i16(b + 252, g->qform_code);
    wr_i16(b + 254, g->sform_code);
    for (int i = 0; i < 3; i++) {
        wr_f32(b + 256 + 4 * i, g->quatern[i]);
        wr_f32(b + 268 + 4 * i, g->qoffset[i]);
        for (int j = 0; j < 4; j++)
            wr_f32(b + 280 + 16 * i + 4 * j, g->srow[i][j]);
    }
    memcpy(b + 344, "n+1", 4);
}

sp_status sp_nifti_write(const char *path, const sp_geom *g, sp_dtype dtype,
                         const void *data, int threads)
{
    return sp_nifti_write_ext(path, g, dtype, data, threads, NULL);
}

sp_status sp_nifti_write_ext(const char *path, const sp_geom *g, sp_dtype dtype, const void *data, int threads,
                             const char *ext)
{
    size_t nvox = (size_t)sp_geom_nvox(g);
    size_t es = sp_dtype_size(dtype);
    if (dtype != SP_DT_U8 && dtype != SP_DT_I16 && dtype != SP_DT_F32)
        return sp_fail(SP_ERR_USAGE, "%s: can write uint8, int16 or float32, not %s", path, sp_dtype_str(dtype));
    size_t elen = ext ? strlen(ext) : 0, esize = ext ? (8 + elen + 15) / 16 * 16 : 0;
    size_t off = 352 + esize, total = off + nvox * es;
    uint8_t *file = calloc(1, total);
    sp_status st;
    if (!file)
        return sp_fail(SP_ERR_NOMEM, "%s: cannot allocate %zu bytes", path, total);
    build_header(file, g, dtype);
    if (ext) {   /* extension flag, then [esize, ecode 0, data padded to 16] */
        file[348] = 1;
        wr_i32(file + 352, (int32_t)esize);
        wr_i32(file + 356, 0);
        memcpy(file + 360, ext, elen);
        wr_f32(file + 108, (double)off);
    }
    memcpy(file + off, data, nvox * es);
    if (!sp_has_suffix(path, ".gz")) {
        st = sp_write_file_atomic(path, file, total);
        free(file);
        return st;
    }
    /* One gzip member, compressed on every core (gzip_write.c). */
    void *gz = NULL;
    size_t gzn = 0;
    st = sp_gzip_parallel(file, total, 1, dtype == SP_DT_U8, threads, &gz, &gzn);   /* uint8: labels, masks */
    if (st == SP_OK)
        st = sp_write_file_atomic(path, gz, gzn);
    free(gz);
    free(file);
    return st;
}
