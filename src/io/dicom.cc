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
#include <cctype>
#include <cstdlib>
#include <stdexcept>
#include <sys/resource.h>
#include <sys/stat.h>
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <gdcmAttribute.h>
#include <gdcmImageReader.h>
#include <gdcmReader.h>
#include <gdcmTrace.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

thread_local char g_msg[1024];
thread_local std::string g_notes;   /* what the last folder walk skipped */

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
    std::string file, series, sop, sop_class;
    double ipp[3], iop[6], ps[2], pos;
    unsigned rows, cols, bytes;   /* bytes: per stored value (BitsAllocated / 8) */
    size_t pixel_at, file_size;   /* where the pixel data element starts (the header scan stops there); file size */
    bool deflated;                /* pixel_at is then a position in the inflated stream, not in the file */
};

const char *base(const std::string &f)
{
    size_t s = f.rfind('/');
    return f.c_str() + (s == std::string::npos ? 0 : s + 1);
}

/* A string attribute's value without DICOM's trailing padding ("" if absent). */
std::string text(const gdcm::DataSet &ds, uint16_t group, uint16_t element)
{
    gdcm::Tag t(group, element);
    if (!ds.FindDataElement(t))
        return std::string();
    const gdcm::ByteValue *bv = ds.GetDataElement(t).GetByteValue();
    std::string v = bv ? std::string(bv->GetPointer(), bv->GetLength()) : std::string();
    while (!v.empty() && (v.back() == ' ' || v.back() == '\0'))
        v.pop_back();
    return v;
}

/* ---- element lengths: checked before GDCM sees a file ----
 * GDCM allocates what an element's header declares (a 7.8 KB file asked
 * for 3.4 GB; found by fuzz_dicom). Every defined length must fit in the
 * bytes left; undefined lengths (sequences, items, encapsulated pixel
 * data) are walked into, element by element. Deflated datasets are left
 * to GDCM (their lengths are inside the stream). */
uint32_t rd16(const uint8_t *p, bool be) { return be ? (p[0] << 8 | p[1]) : (p[1] << 8 | p[0]); }
uint32_t rd32(const uint8_t *p, bool be)
{
    return be ? (uint32_t(p[0]) << 24 | p[1] << 16 | p[2] << 8 | p[3])
              : (uint32_t(p[3]) << 24 | p[2] << 16 | p[1] << 8 | p[0]);
}

bool long_vr(const uint8_t *vr)
{
    static const char *const l[] = {"OB", "OW", "OF", "OD", "OL", "OV", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"};
    for (const char *x : l)
        if (vr[0] == x[0] && vr[1] == x[1])
            return true;
    return false;
}

/* walk elements from `at`; explicit/implicit, little/big endian (the
 * meta group is always explicit little endian); false if a length overruns */
bool walk(const std::vector<uint8_t> &b, size_t at, bool explicit_vr, bool be, std::string &ts)
{
    size_t n = b.size();
    while (at + 8 <= n) {
        bool meta = rd16(&b[at], false) == 0x0002;
        bool ex = meta || explicit_vr, bige = !meta && be;
        uint32_t group = rd16(&b[at], bige), elem = rd16(&b[at + 2], bige);
        uint64_t len;
        size_t head;
        if (group == 0xfffe) {                        /* item and delimiters: no VR */
            len = rd32(&b[at + 4], bige), head = 8;
        } else if (ex && long_vr(&b[at + 4])) {
            if (at + 12 > n)
                return false;
            len = rd32(&b[at + 8], bige), head = 12;
        } else if (ex) {
            len = rd16(&b[at + 6], bige), head = 8;
        } else {
            len = rd32(&b[at + 4], bige), head = 8;
        }
        at += head;
        if (len == 0xffffffffu || (group == 0xfffe && elem == 0xe000 && len == 0xffffffffu))
            continue;                                 /* undefined: walk into it */
        if (group == 0xfffe && elem != 0xe000)
            len = 0;                                  /* delimiters carry no value */
        if (len > n - at)
            return false;
        if (meta && elem == 0x0010)                   /* (0002,0010) transfer syntax */
            ts.assign(reinterpret_cast<const char *>(&b[at]), size_t(len));
        at += size_t(len);
        if (meta && (at + 2 > n || rd16(&b[at], false) != 0x0002)) {   /* the dataset starts */
            while (!ts.empty() && (ts.back() == 0 || ts.back() == ' '))
                ts.pop_back();
            if (ts == "1.2.840.10008.1.2.1.99")
                return true;                          /* deflated */
            explicit_vr = ts != "1.2.840.10008.1.2";
            be = ts == "1.2.840.10008.1.2.2";
        }
    }
    return true;
}

enum Fit { FIT_OK, FIT_NOT_DICOM, FIT_OVERRUN };

/* FIT_OVERRUN when a Part 10 file (with "DICM") declares more than it
 * holds; a file without the preamble whose lengths do not fit is not
 * taken for DICOM at all (FIT_NOT_DICOM: skipped like any stray file) */
Fit lengths_fit(const std::string &file)
{
    /* O_NONBLOCK|O_NOFOLLOW and fstat: a file swapped for a FIFO or a link
     * after the folder walk is not opened for reading (a FIFO would block) */
    int fd = open(file.c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    struct stat sb;
    if (fd >= 0 && (fstat(fd, &sb) || !S_ISREG(sb.st_mode))) {
        close(fd);
        fd = -1;
    }
    FILE *f = fd >= 0 ? fdopen(fd, "rb") : NULL;
    if (!f) {
        if (fd >= 0)
            close(fd);
        return FIT_NOT_DICOM;
    }
    std::vector<uint8_t> b;
    uint8_t buf[1 << 16];
    size_t got;
    while ((got = std::fread(buf, 1, sizeof buf, f)) > 0)
        b.insert(b.end(), buf, buf + got);
    std::fclose(f);
    std::string ts;
    bool part10 = b.size() >= 132 && !std::memcmp(&b[128], "DICM", 4);
    if (part10)
        return walk(b, 132, true, false, ts) ? FIT_OK : FIT_OVERRUN;
    /* no preamble: implicit VR little endian, unless the first element has an explicit VR */
    bool ex = b.size() >= 6 && std::isupper(b[4]) && std::isupper(b[5]);
    return walk(b, 0, ex, false, ts) ? FIT_OK : FIT_NOT_DICOM;
}

/* Single-frame cross-sectional image storage classes: CT, MR, PET and
 * their legacy-converted enhanced forms read as one frame per file. Other
 * objects (RT dose and plans, SR, waveforms, multi-frame enhanced images,
 * photos) are skipped before GDCM interprets them as images: its image
 * reader asserts (aborts the process) on some of them. */
bool supported_class(const std::string &uid)
{
    static const char *const ok[] = {
        "1.2.840.10008.5.1.4.1.1.2",      /* CT Image */
        "1.2.840.10008.5.1.4.1.1.4",      /* MR Image */
        "1.2.840.10008.5.1.4.1.1.128",    /* PET Image */
        "1.2.840.10008.5.1.4.1.1.20",     /* NM Image */
    };
    for (const char *u : ok)
        if (uid == u)
            return true;
    return false;
}

/* Transfer syntaxes GDCM (Debian's build) decodes for greyscale slices;
 * any other (MPEG, HTJ2K, JPIP, private) is refused from the header. */
bool supported_ts(const gdcm::TransferSyntax &ts)
{
    switch (ts) {
    case gdcm::TransferSyntax::ImplicitVRLittleEndian:
    case gdcm::TransferSyntax::ImplicitVRBigEndianPrivateGE:
    case gdcm::TransferSyntax::ExplicitVRLittleEndian:
    case gdcm::TransferSyntax::DeflatedExplicitVRLittleEndian:
    case gdcm::TransferSyntax::ExplicitVRBigEndian:
    case gdcm::TransferSyntax::JPEGBaselineProcess1:
    case gdcm::TransferSyntax::JPEGExtendedProcess2_4:
    case gdcm::TransferSyntax::JPEGLosslessProcess14:
    case gdcm::TransferSyntax::JPEGLosslessProcess14_1:
    case gdcm::TransferSyntax::JPEGLSLossless:
    case gdcm::TransferSyntax::JPEGLSNearLossless:
    case gdcm::TransferSyntax::JPEG2000Lossless:
    case gdcm::TransferSyntax::JPEG2000:
    case gdcm::TransferSyntax::RLELossless:
        return true;
    default:
        return false;
    }
}

/* A US attribute of the dataset, or dflt when absent or empty. */
template <uint16_t G, uint16_t E>
unsigned us_value(const gdcm::DataSet &ds, unsigned dflt)
{
    gdcm::Attribute<G, E> a;
    if (!ds.FindDataElement(a.GetTag()))
        return dflt;
    const gdcm::ByteValue *bv = ds.GetDataElement(a.GetTag()).GetByteValue();
    if (!bv || bv->GetLength() < 2)
        return dflt;
    a.SetFromDataSet(ds);
    return a.GetValue();
}

[[noreturn]] void refuse(const std::string &file, const std::string &why)
{
    throw std::runtime_error(std::string(base(file)) + ": " + why);
}

/* Size, sample layout, frame count and transfer syntax from the header
 * alone; a slice GDCM should not be asked to decode is refused here
 * (the decoded size of a frame is rows x columns x bytes, whatever the
 * compressed size: a 101 KB RLE zip declared a 2 GiB frame). */
void check_pixels(const std::string &file, const gdcm::DataSet &ds, const gdcm::TransferSyntax &ts, Slice &s)
{
    if (!supported_ts(ts))
        refuse(file, std::string("transfer syntax ") + (ts.IsValid() ? gdcm::TransferSyntax::GetTSString(ts) : "unknown")
                     + " is not supported");
    s.rows = us_value<0x0028, 0x0010>(ds, 0);
    s.cols = us_value<0x0028, 0x0011>(ds, 0);
    unsigned bits = us_value<0x0028, 0x0100>(ds, 0), spp = us_value<0x0028, 0x0002>(ds, 1);
    if (!s.rows || !s.cols)
        refuse(file, "no Rows/Columns");
    if (s.rows > SP_DICOM_MAX_SIDE || s.cols > SP_DICOM_MAX_SIDE)
        refuse(file, std::to_string(s.cols) + " x " + std::to_string(s.rows) + " pixels: more than " +
                     std::to_string(SP_DICOM_MAX_SIDE) + " per side is not a CT/MR slice (refused before decoding)");
    if (spp != 1)
        refuse(file, "not a single-frame greyscale slice");
    if (bits != 8 && bits != 16 && bits != 32)
        refuse(file, "BitsAllocated " + std::to_string(bits) + " is not supported (8, 16 or 32)");
    s.bytes = bits / 8;
    s.deflated = ts == gdcm::TransferSyntax::DeflatedExplicitVRLittleEndian;
}

/* GDCM's header scan stops after the pixel data element's header (at its
 * value): true when the file holds (7FE0,0010) there, in either VR form
 * and byte order (the scan also ends at the end of a file without it). */
bool pixel_tag_before(const std::string &file, size_t at)
{
    static const uint8_t le[4] = {0xe0, 0x7f, 0x10, 0x00}, be[4] = {0x7f, 0xe0, 0x00, 0x10};
    uint8_t b[12];
    FILE *f = at >= 12 ? std::fopen(file.c_str(), "rb") : NULL;
    bool ok = f && !std::fseek(f, long(at - 12), SEEK_SET) && std::fread(b, 1, 12, f) == 12;
    if (f)
        std::fclose(f);
    return ok && (!std::memcmp(b, le, 4) || !std::memcmp(b, be, 4) || !std::memcmp(b + 4, le, 4) ||
                  !std::memcmp(b + 4, be, 4));
}

/* Header of one file from one parse that stops before its pixel data
 * (GDCM's ImageReader would decode the pixels to judge them: never here);
 * false when it is not a supported image slice (skipped). Files that are
 * not single-frame CT, MR, PET or NM slices are judged by SOP class (the
 * dataset's, or the file meta's when an anonymiser emptied it). */
bool header(const std::string &file, Slice &s)
{
    Fit fit = lengths_fit(file);
    if (fit == FIT_OVERRUN)
        refuse(file, "an element's length overruns the file (truncated or damaged)");
    if (fit == FIT_NOT_DICOM)
        return false;
    gdcm::Reader rd;
    rd.SetFileName(file.c_str());
    std::set<gdcm::Tag> stop;
    stop.insert(gdcm::Tag(0x7fe0, 0x0010));
    if (!rd.ReadUpToTag(gdcm::Tag(0x7fe0, 0x0010), stop))
        return false;
    const gdcm::DataSet &ds = rd.GetFile().GetDataSet();
    const gdcm::DataSet &meta = rd.GetFile().GetHeader();   /* anonymised files may keep them only here */
    s.sop_class = text(ds, 0x0008, 0x0016);
    if (s.sop_class.empty())
        s.sop_class = text(meta, 0x0002, 0x0002);
    if (!supported_class(s.sop_class))
        return false;
    if (ds.FindDataElement(gdcm::Tag(0x0028, 0x0008)) && text(ds, 0x0028, 0x0008) != "1")
        return false;   /* multi-frame */
    std::streamoff at = rd.GetStreamCurrentPosition();
    gdcm::TransferSyntax ts = rd.GetFile().GetHeader().GetDataSetTransferSyntax();
    bool deflated = ts == gdcm::TransferSyntax::DeflatedExplicitVRLittleEndian;
    if (at <= 0 || (!deflated && !pixel_tag_before(file, size_t(at))))
        return false;   /* no pixel data */
    s.pixel_at = size_t(at);
    struct stat sb;
    s.file_size = stat(file.c_str(), &sb) ? 0 : size_t(sb.st_size);
    gdcm::Attribute<0x0020, 0x0032> ipp;
    gdcm::Attribute<0x0020, 0x0037> iop;
    gdcm::Attribute<0x0028, 0x0030> ps;
    if (!ds.FindDataElement(ipp.GetTag()) || !ds.FindDataElement(iop.GetTag()) || !ds.FindDataElement(ps.GetTag()))
        return false;
    check_pixels(file, ds, ts, s);
    ipp.SetFromDataSet(ds);
    iop.SetFromDataSet(ds);
    ps.SetFromDataSet(ds);
    s.series = text(ds, 0x0020, 0x000e);
    s.sop = text(ds, 0x0008, 0x0018);
    if (s.sop.empty())
        s.sop = text(meta, 0x0002, 0x0003);
    s.file = file;
    for (int i = 0; i < 3; i++)
        s.ipp[i] = ipp.GetValue(i);
    for (int i = 0; i < 6; i++)
        s.iop[i] = iop.GetValue(i);
    s.ps[0] = ps.GetValue(0);
    s.ps[1] = ps.GetValue(1);
    return true;
}

/* ---- the folder walk ----
 * Links are followed (series folders of links exist) but every folder and
 * file is taken once by device and inode, so a link loop ends; only
 * regular files are read (a FIFO would block the reader, a device is no
 * slice): the others are skipped and counted for one line (*notes); at
 * most SP_DICOM_MAX_ENTRIES entries, SP_DICOM_MAX_DEPTH levels. */
struct Walk {
    std::vector<std::string> files;
    std::set<std::pair<dev_t, ino_t>> seen;
    size_t entries = 0, loops = 0, special = 0;
    std::string first_special;
};

void walk_dir(const std::string &dir, int depth, Walk &w)
{
    if (depth > SP_DICOM_MAX_DEPTH)
        throw std::runtime_error("folders nested more than " + std::to_string(SP_DICOM_MAX_DEPTH) +
                                 " deep: refused");
    DIR *d = opendir(dir.c_str());
    if (!d)
        return;
    std::vector<std::string> sub;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!std::strcmp(e->d_name, ".") || !std::strcmp(e->d_name, ".."))
            continue;
        if (++w.entries > SP_DICOM_MAX_ENTRIES) {
            closedir(d);
            throw std::runtime_error("more than " + std::to_string(SP_DICOM_MAX_ENTRIES) +
                                     " files and folders: refused");
        }
        std::string p = dir + "/" + e->d_name;
        struct stat sb;
        if (stat(p.c_str(), &sb))
            continue;   /* a dangling link */
        if (!S_ISDIR(sb.st_mode) && !S_ISREG(sb.st_mode)) {
            if (!w.special++)
                w.first_special = e->d_name;
            continue;
        }
        if (!w.seen.insert({sb.st_dev, sb.st_ino}).second) {
            w.loops++;   /* a folder or file met again through a link */
            continue;
        }
        (S_ISDIR(sb.st_mode) ? sub : w.files).push_back(p);
    }
    closedir(d);
    std::sort(w.files.begin(), w.files.end());
    for (const std::string &p : sub)
        walk_dir(p, depth + 1, w);
}

/* The regular files under dir; a line about what was skipped in notes. */
std::vector<std::string> list_files(const char *dir, std::string &notes)
{
    Walk w;
    struct stat sb;
    if (!stat(dir, &sb))
        w.seen.insert({sb.st_dev, sb.st_ino});
    walk_dir(dir, 0, w);
    if (w.special)
        notes += std::to_string(w.special) + " entr" + (w.special > 1 ? "ies" : "y") + " that are not regular " +
                 "files (FIFO, device or socket; first: " + w.first_special + ") skipped. ";
    if (w.loops)
        notes += std::to_string(w.loops) + " link" + (w.loops > 1 ? "s" : "") + " to a folder or file already "
                 "read (a link loop or a duplicate) skipped. ";
    return w.files;
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
    if (n > 2) {   /* the gap farthest from the usual one (the median) is the one named */
        std::vector<double> gaps;
        for (size_t k = 1; k < n; k++)
            gaps.push_back(s[k].pos - s[k - 1].pos);
        std::vector<double> sorted = gaps;
        std::nth_element(sorted.begin(), sorted.begin() + sorted.size() / 2, sorted.end());
        double usual = sorted[sorted.size() / 2];
        size_t worst = 0;
        for (size_t k = 1; k < gaps.size(); k++)
            if (std::fabs(gaps[k] - usual) > std::fabs(gaps[worst] - usual))
                worst = k;
        if (std::fabs(gaps[worst] - usual) > 0.01 * usual + 1e-3 || std::fabs(usual - *step) > 0.01 * usual + 1e-3)
            return sp_fail(SP_ERR_INPUT, "DICOM series: non-uniform slice spacing (%.4g mm between %s and %s, the "
                           "other slices %.4g mm apart: a missing slice?): not resampled, refused", gaps[worst],
                           base(s[worst].file), base(s[worst + 1].file), usual);
    }
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
    /* native (uncompressed) pixel data: GDCM accepts a short value (it warns
     * "Incomplete Pixel Data") and pads; a missing part is a missing slice */
    const gdcm::DataElement &pd = r.GetFile().GetDataSet().GetDataElement(gdcm::Tag(0x7fe0, 0x0010));
    size_t need = n * ((im.GetPixelFormat().GetBitsAllocated() + 7) / 8);
    if (pd.GetByteValue() && (pd.GetByteValue()->GetLength() < need ||
                              (!s.deflated && s.pixel_at + need > s.file_size)))
        return fail_file(SP_ERR_INPUT, s.file, "its pixel data is truncated");
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

size_t decode_threads(size_t slices)
{
    return std::min(size_t(std::max(1u, std::min(16u, std::thread::hardware_concurrency()))), slices);
}

/* ---- memory, from the headers ----
 * What decoding the series needs at most: the float volume, and on each
 * decoding thread one file held whole by GDCM (twice: its stream and its
 * element), the decoded frame (GDCM's buffer, its copy, our copy) and a
 * codec's 32-bit work image (OpenJPEG). */
uint64_t decode_need(const std::vector<Slice> &ser)
{
    uint64_t file = 0, frame = uint64_t(ser[0].rows) * ser[0].cols;
    unsigned bytes = 1;
    for (const Slice &s : ser)
        file = std::max<uint64_t>(file, s.file_size), bytes = std::max(bytes, s.bytes);
    return frame * ser.size() * 4 + decode_threads(ser.size()) * (2 * file + frame * (3 * bytes + 4));
}

uint64_t g_max_memory;   /* sp_dicom_reader_limits: refuse a series needing more (0: no bound) */
int g_bound_process;     /* 1: RLIMIT_AS follows the headers (the reader child only) */

/* This process's address space (VmSize) plus `more` plus slack for thread
 * stacks and malloc arenas, as its soft RLIMIT_AS: an allocation beyond
 * what the headers declared fails instead of taking the machine. */
void bound_address_space(uint64_t more, size_t threads)
{
    unsigned long long pages = 0;
    FILE *f = std::fopen("/proc/self/statm", "r");
    if (!f)
        return;
    int got = std::fscanf(f, "%llu", &pages);
    std::fclose(f);
    if (got != 1)
        return;
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl))
        return;
    uint64_t want = uint64_t(pages) * uint64_t(sysconf(_SC_PAGESIZE)) + more + threads * (80ull << 20) + (512ull << 20);
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || want < rl.rlim_max ? rlim_t(want) : rl.rlim_max;
    setrlimit(RLIMIT_AS, &rl);
}

/* Every slice, on as many threads as cores (each its own GDCM reader); the
 * first failure in slice order wins. */
sp_status decode_all(const std::vector<Slice> &ser, float *data, size_t plane)
{
    size_t nt = decode_threads(ser.size());
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

void copy_uid(char *dst, const std::string &s)
{
    std::snprintf(dst, SP_DICOM_UID, "%s", s.c_str());
}

/* What a DICOM-SEG must reference and copy (sp_dicom_ref): slices in
 * volume order, geometry, and the first slice's patient/study/FoR values. */
sp_dicom_ref *capture(const std::vector<Slice> &ser, double step)
{
    static const uint16_t tags[][2] = {
        {0x0008, 0x0005}, {0x0010, 0x0010}, {0x0010, 0x0020}, {0x0010, 0x0030}, {0x0010, 0x0040},
        {0x0020, 0x000d}, {0x0008, 0x0020}, {0x0008, 0x0030}, {0x0020, 0x0010}, {0x0008, 0x0050},
        {0x0008, 0x0090}, {0x0020, 0x0052}, {0x0020, 0x1040}, {0x0008, 0x1030}};
    sp_dicom_ref *r = (sp_dicom_ref *)std::calloc(1, sizeof *r);
    size_t n = ser.size();
    if (!r)
        return NULL;
    r->sop_uid = (char(*)[SP_DICOM_UID])std::calloc(n, SP_DICOM_UID);
    r->sop_class = (char(*)[SP_DICOM_UID])std::calloc(n, SP_DICOM_UID);
    r->ipp = (double(*)[3])std::calloc(n, sizeof *r->ipp);
    if (!r->sop_uid || !r->sop_class || !r->ipp) {
        sp_dicom_ref_free(r);
        return NULL;
    }
    r->n = int(n);
    r->rows = int(ser[0].rows);
    r->cols = int(ser[0].cols);
    std::memcpy(r->iop, ser[0].iop, sizeof r->iop);
    std::memcpy(r->ps, ser[0].ps, sizeof r->ps);
    r->step = std::fabs(step);
    for (size_t k = 0; k < n; k++) {
        copy_uid(r->sop_uid[k], ser[k].sop);
        copy_uid(r->sop_class[k], ser[k].sop_class);
        std::memcpy(r->ipp[k], ser[k].ipp, sizeof r->ipp[k]);
    }
    copy_uid(r->series_uid, ser[0].series);
    gdcm::Reader rd;
    rd.SetFileName(ser[0].file.c_str());
    std::set<gdcm::Tag> stop;
    stop.insert(gdcm::Tag(0x7fe0, 0x0010));
    if (!rd.ReadUpToTag(gdcm::Tag(0x7fe0, 0x0010), stop))
        return r;
    const gdcm::DataSet &ds = rd.GetFile().GetDataSet();
    copy_uid(r->study_uid, text(ds, 0x0020, 0x000d));
    copy_uid(r->patient_id, text(ds, 0x0010, 0x0020));
    for (const auto &t : tags) {
        gdcm::Tag tag(t[0], t[1]);
        if (!ds.FindDataElement(tag) || text(ds, t[0], t[1]).empty() || r->n_attrs == SP_DICOM_ATTRS)
            continue;
        r->attr_tag[r->n_attrs][0] = t[0];
        r->attr_tag[r->n_attrs][1] = t[1];
        std::snprintf(r->attr_val[r->n_attrs], sizeof r->attr_val[0], "%s", text(ds, t[0], t[1]).c_str());
        r->n_attrs++;
    }
    return r;
}

} // namespace

extern "C" void sp_dicom_ref_free(sp_dicom_ref *r)
{
    if (r) {
        std::free(r->sop_uid);
        std::free(r->sop_class);
        std::free(r->ipp);
        std::free(r);
    }
}

extern "C" void sp_dicom_reader_limits(uint64_t max_memory, int bound_process)
{
    g_max_memory = max_memory;
    g_bound_process = bound_process;
    if (bound_process)   /* the header scan: GDCM holds one header at a time */
        bound_address_space(1ull << 30, 1);
}

extern "C" const char *sp_dicom_notes(void)
{
    return g_notes.c_str();
}

extern "C" sp_status sp_dicom_load(const char *dir, const char *uid, uint64_t max_voxels, sp_dicom_vol *v, char *msg,
                                   size_t cap)
{
    std::memset(v, 0, sizeof *v);
    sp_status st = SP_OK;
    gdcm::Trace::SetWarning(false);   /* GDCM's own messages would go to stderr: ours name the file */
    gdcm::Trace::SetError(false);
    gdcm::Trace::SetDebug(false);
    try {
        g_notes.clear();
        std::vector<Slice> all, ser;
        for (const std::string &f : list_files(dir, g_notes)) {
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
        uint64_t need = st ? 0 : decode_need(ser);
        if (!st && g_max_memory && need > g_max_memory)
            st = sp_fail(SP_ERR_INPUT, "DICOM series: decoding it needs %.2f GB, more than the reader's %.2f GB: "
                         "refused before decoding", need / 1e9, g_max_memory / 1e9);
        if (!st && g_bound_process)
            bound_address_space(need, decode_threads(ser.size()));
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
            v->ref = capture(ser, step);   /* NULL only when out of memory: then no DICOM-SEG */
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
