/*
 * dicom.cc — a DICOM series (a folder of single-frame slices) read into a
 * volume with GDCM (Debian's libgdcm; JPEG 2000 through its OpenJPEG,
 * JPEG-LS, JPEG, RLE, deflate, both byte orders and VRs): docs/dicom.md.
 *
 * Slices are grouped by SeriesInstanceUID (several series: pick one with
 * SEGPIPE_DICOM_SERIES or the library call's uid, else refuse and list
 * them), ordered by their position along the slice normal (never by file
 * name or InstanceNumber), spaced by the differences of
 * ImagePositionPatient (SliceThickness is not trusted). Non-uniform
 * spacing, gantry tilt, mixed sizes or orientations, duplicate positions
 * and undecodable slices fail the series with the file named. Values:
 * stored value * RescaleSlope + RescaleIntercept. Geometry: i along a row
 * (ImageOrientationPatient's first vector), j down the columns, k along the
 * sorted slices; the DICOM (LPS) affine turned into NIfTI's RAS, as
 * dcm2niix's output (compared in tests/py/test_dicom.py).
 */
#include "dicom.h"

#include <cstdarg>
#include <cstdio>
#include <cstdlib>

#include <gdcmAttribute.h>
#include <gdcmDirectory.h>
#include <gdcmImageReader.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace {

thread_local char g_msg[1024];

sp_status sp_fail(sp_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
    return st;
}

struct Geom {
    int64_t dim[3];
    double affine[4][4], spacing[3];
};

struct Slice {
    std::string file, series;
    double ipp[3], iop[6], ps[2], pos;
    unsigned rows, cols;
};

const char *base(const std::string &f)
{
    size_t s = f.rfind('/');
    return f.c_str() + (s == std::string::npos ? 0 : s + 1);
}

/* Header of one file; false when it is not an image (skipped). */
bool header(const std::string &file, Slice &s)
{
    gdcm::ImageReader r;
    r.SetFileName(file.c_str());
    if (!r.Read())
        return false;
    const gdcm::DataSet &ds = r.GetFile().GetDataSet();
    if (!ds.FindDataElement(gdcm::Tag(0x7fe0, 0x0010)))
        return false;
    gdcm::Attribute<0x0020, 0x0032> ipp;
    gdcm::Attribute<0x0020, 0x0037> iop;
    gdcm::Attribute<0x0028, 0x0030> ps;
    gdcm::Attribute<0x0028, 0x0010> rows;
    gdcm::Attribute<0x0028, 0x0011> cols;
    if (!ds.FindDataElement(ipp.GetTag()) || !ds.FindDataElement(iop.GetTag()) || !ds.FindDataElement(ps.GetTag()))
        return false;
    ipp.SetFromDataSet(ds);
    iop.SetFromDataSet(ds);
    ps.SetFromDataSet(ds);
    rows.SetFromDataSet(ds);
    cols.SetFromDataSet(ds);
    const gdcm::DataElement &se = ds.GetDataElement(gdcm::Tag(0x0020, 0x000e));
    const gdcm::ByteValue *bv = se.GetByteValue();
    s.series = bv ? std::string(bv->GetPointer(), bv->GetLength()) : std::string();
    while (!s.series.empty() && (s.series.back() == ' ' || s.series.back() == '\0'))
        s.series.pop_back();
    s.file = file;
    for (int i = 0; i < 3; i++)
        s.ipp[i] = ipp.GetValue(i);
    for (int i = 0; i < 6; i++)
        s.iop[i] = iop.GetValue(i);
    s.ps[0] = ps.GetValue(0);
    s.ps[1] = ps.GetValue(1);
    s.rows = rows.GetValue();
    s.cols = cols.GetValue();
    return true;
}

sp_status fail_file(sp_status st, const std::string &file, const char *what)
{
    return sp_fail(st, "DICOM %s: %s", base(file), what);
}

/* The chosen series, sorted along the normal; SP_OK or a refusal. */
sp_status pick(std::vector<Slice> &all, const char *uid, std::vector<Slice> &out, const char *dir)
{
    std::map<std::string, int> count;
    for (const Slice &s : all)
        count[s.series]++;
    if (count.empty())
        return sp_fail(SP_ERR_INPUT, "%s: no DICOM image slices found", dir);
    if (count.size() > 1 && !(uid && *uid)) {
        std::string list;
        for (auto &c : count)
            list += "\n  " + c.first + " (" + std::to_string(c.second) + " slices)";
        return sp_fail(SP_ERR_INPUT, "%s holds %zu series; choose one with SEGPIPE_DICOM_SERIES=UID:%s", dir,
                       count.size(), list.c_str());
    }
    for (Slice &s : all)
        if ((count.size() == 1 && !(uid && *uid)) || s.series == uid)
            out.push_back(s);
    if (out.empty())
        return sp_fail(SP_ERR_INPUT, "%s: no slices of series %s", dir, uid);
    const double *r = out[0].iop, *c = out[0].iop + 3;
    double n[3] = {r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]};
    for (Slice &s : out)
        s.pos = s.ipp[0] * n[0] + s.ipp[1] * n[1] + s.ipp[2] * n[2];
    std::sort(out.begin(), out.end(), [](const Slice &a, const Slice &b) { return a.pos < b.pos; });
    return SP_OK;
}

/* Same size and orientation everywhere, distinct positions, uniform
 * spacing, no tilt; the slice step (mm) in *step. */
sp_status check(const std::vector<Slice> &s, double *step)
{
    for (size_t k = 0; k < s.size(); k++) {
        if (s[k].rows != s[0].rows || s[k].cols != s[0].cols)
            return fail_file(SP_ERR_INPUT, s[k].file, "its size differs from the series' other slices");
        for (int i = 0; i < 6; i++)
            if (std::fabs(s[k].iop[i] - s[0].iop[i]) > 1e-4)
                return fail_file(SP_ERR_INPUT, s[k].file, "its orientation differs from the other slices'");
        if (k && std::fabs(s[k].pos - s[k - 1].pos) < 1e-4)
            return fail_file(SP_ERR_INPUT, s[k].file, "a second slice at the same position (duplicate)");
    }
    size_t n = s.size();
    *step = n > 1 ? (s[n - 1].pos - s[0].pos) / double(n - 1) : 1.0;
    for (size_t k = 1; k < n; k++)
        if (std::fabs(s[k].pos - s[k - 1].pos - *step) > 0.01 * *step + 1e-3)
            return sp_fail(SP_ERR_INPUT, "DICOM series: non-uniform slice spacing (%.4g mm between %s and %s, "
                           "%.4g mm on average): not resampled, refused", s[k].pos - s[k - 1].pos,
                           base(s[k - 1].file), base(s[k].file), *step);
    if (n > 1) {   /* the slices' offsets must run along the normal */
        double d[3], len = 0, along = s[n - 1].pos - s[0].pos;
        for (int i = 0; i < 3; i++)
            d[i] = s[n - 1].ipp[i] - s[0].ipp[i], len += d[i] * d[i];
        if (std::fabs(std::sqrt(len) - std::fabs(along)) > 1e-3 * std::fabs(along) + 1e-3)
            return sp_fail(SP_ERR_INPUT, "DICOM series: gantry tilt (slices not stacked along their normal): "
                           "not supported");
    }
    return SP_OK;
}

void geometry(const std::vector<Slice> &s, double step, Geom *g)
{
    std::memset(g, 0, sizeof *g);
    const Slice &a = s.front(), &b = s.back();
    double lps[3][4];
    for (int r = 0; r < 3; r++) {
        lps[r][0] = a.iop[r] * a.ps[1];       /* along a row: column spacing */
        lps[r][1] = a.iop[3 + r] * a.ps[0];   /* down a column: row spacing */
        lps[r][2] = s.size() > 1 ? (b.ipp[r] - a.ipp[r]) / double(s.size() - 1) : 0;
        lps[r][3] = a.ipp[r];
    }
    if (s.size() == 1) {   /* one slice: the normal, 1 step long */
        const double *r = a.iop, *c = a.iop + 3;
        double n[3] = {r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]};
        for (int i = 0; i < 3; i++)
            lps[i][2] = n[i] * step;
    }
    g->dim[0] = a.cols;
    g->dim[1] = a.rows;
    g->dim[2] = (int64_t)s.size();
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++)
            g->affine[r][c] = (r < 2 ? -1 : 1) * lps[r][c];   /* LPS -> RAS */
    g->affine[3][3] = 1;
    for (int c = 0; c < 3; c++)
        g->spacing[c] = std::sqrt(lps[0][c] * lps[0][c] + lps[1][c] * lps[1][c] + lps[2][c] * lps[2][c]);
}

template <typename T>
void convert(const char *raw, size_t n, double slope, double inter, float *dst)
{
    const T *v = reinterpret_cast<const T *>(raw);
    for (size_t i = 0; i < n; i++)
        dst[i] = float(double(v[i]) * slope + inter);
}

/* Decode slice k into dst (rows x cols floats). */
sp_status decode(const Slice &s, float *dst)
{
    gdcm::ImageReader r;
    r.SetFileName(s.file.c_str());
    if (!r.Read())
        return fail_file(SP_ERR_INPUT, s.file, "cannot be read");
    const gdcm::Image &im = r.GetImage();
    if (im.GetNumberOfDimensions() != 2 || im.GetPixelFormat().GetSamplesPerPixel() != 1)
        return fail_file(SP_ERR_INPUT, s.file, "not a single-frame greyscale slice");
    size_t n = size_t(s.rows) * s.cols;
    std::vector<char> raw(im.GetBufferLength());
    if (!im.GetBuffer(raw.data()))
        return fail_file(SP_ERR_INPUT, s.file, "its pixel data cannot be decoded (truncated or unsupported)");
    double sl = im.GetSlope(), in = im.GetIntercept();
    switch (im.GetPixelFormat().GetScalarType()) {
    case gdcm::PixelFormat::UINT8: if (raw.size() < n) break; convert<uint8_t>(raw.data(), n, sl, in, dst); return SP_OK;
    case gdcm::PixelFormat::INT8: if (raw.size() < n) break; convert<int8_t>(raw.data(), n, sl, in, dst); return SP_OK;
    case gdcm::PixelFormat::UINT16: if (raw.size() < 2 * n) break; convert<uint16_t>(raw.data(), n, sl, in, dst); return SP_OK;
    case gdcm::PixelFormat::INT16: if (raw.size() < 2 * n) break; convert<int16_t>(raw.data(), n, sl, in, dst); return SP_OK;
    case gdcm::PixelFormat::UINT32: if (raw.size() < 4 * n) break; convert<uint32_t>(raw.data(), n, sl, in, dst); return SP_OK;
    case gdcm::PixelFormat::INT32: if (raw.size() < 4 * n) break; convert<int32_t>(raw.data(), n, sl, in, dst); return SP_OK;
    default: return fail_file(SP_ERR_INPUT, s.file, "unsupported pixel type");
    }
    return fail_file(SP_ERR_INPUT, s.file, "its pixel data is shorter than rows x columns");
}

/* Every slice, on as many threads as cores (each its own GDCM reader); the
 * first failure in slice order wins. */
sp_status decode_all(const std::vector<Slice> &ser, float *data, size_t plane)
{
    size_t nt = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
    nt = std::min(nt, ser.size());
    std::vector<sp_status> st(ser.size(), SP_OK);
    std::vector<std::string> msg(ser.size());
    std::vector<std::thread> th;
    for (size_t t = 0; t < nt; t++)
        th.emplace_back([&, t] {
            for (size_t k = t; k < ser.size(); k += nt) {
                try {
                    st[k] = decode(ser[k], data + k * plane);
                } catch (...) {   /* an exception must not leave the thread */
                    st[k] = fail_file(SP_ERR_INPUT, ser[k].file, "its pixel data cannot be decoded");
                }
                if (st[k])
                    msg[k] = g_msg;   /* thread-local: keep it */
            }
        });
    for (std::thread &x : th)
        x.join();
    for (size_t k = 0; k < ser.size(); k++)
        if (st[k])
            return sp_fail(st[k], "%s", msg[k].c_str());
    return SP_OK;
}

} // namespace

extern "C" sp_status sp_dicom_load(const char *dir, const char *uid, uint64_t max_voxels, sp_dicom_vol *v, char *msg,
                                   size_t cap)
{
    std::memset(v, 0, sizeof *v);
    sp_status st = SP_OK;
    try {
        gdcm::Directory d;
        d.Load(dir, true);
        std::vector<Slice> all, ser;
        for (const std::string &f : d.GetFilenames()) {
            Slice s;
            if (header(f, s))
                all.push_back(s);
        }
        st = pick(all, uid, ser, dir);
        double step = 1;
        if (!st)
            st = check(ser, &step);
        Geom g;
        if (!st) {
            geometry(ser, step, &g);
            if ((uint64_t)g.dim[0] * (uint64_t)g.dim[1] * (uint64_t)g.dim[2] > max_voxels)
                st = sp_fail(SP_ERR_INPUT, "%s: the series has more than %llu voxels", dir,
                             (unsigned long long)max_voxels);
        }
        size_t plane = st ? 0 : size_t(g.dim[0]) * size_t(g.dim[1]);
        float *data = st ? NULL : (float *)std::malloc(plane * ser.size() * sizeof(float) + 1);
        if (!st && !data)
            st = sp_fail(SP_ERR_NOMEM, "DICOM: cannot allocate the volume");
        if (!st)
            st = decode_all(ser, data, plane);
        if (st) {
            std::free(data);
        } else {
            std::memcpy(v->dim, g.dim, sizeof v->dim);
            std::memcpy(v->affine, g.affine, sizeof v->affine);
            std::memcpy(v->spacing, g.spacing, sizeof v->spacing);
            v->data = data;
        }
    } catch (const std::exception &e) {
        st = sp_fail(SP_ERR_INPUT, "%s: DICOM reading failed (%s)", dir, e.what());
    } catch (...) {
        st = sp_fail(SP_ERR_INPUT, "%s: DICOM reading failed", dir);
    }
    if (st)
        std::snprintf(msg, cap, "%s", g_msg);
    return st;
}
