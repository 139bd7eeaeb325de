/*
 * dicom_rtstruct.cc — labels as an RT Structure Set (RTSTRUCT), the form
 * radiotherapy planning systems read (docs/dicom.md, "RTSTRUCT output").
 *
 * Built element by element with DCMTK's dcmdata (Debian's libdcmtk): one
 * ROI per structure present (ROIName its display name, ROIDescription the
 * model's name, RT ROI Identification Code = its coded type with the
 * laterality modifier, the same codes as the SEG, colour as in every other
 * output); for each slice where it has voxels, one CLOSED_PLANAR contour
 * per boundary loop (contours.c: marching squares through the midpoints
 * between inside and outside pixel centres) in patient coordinates (mm),
 * each referencing its source image. Patient and study copied from the
 * series, a new series in its study; the structure set references the
 * frame of reference, the study, the series and every slice.
 */
#include "dicom_out.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcuid.h>
#include <dcmtk/oflog/oflog.h>
#include <dcmtk/ofstd/ofstd.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <string>
#include <vector>

namespace {

struct RtError {
    std::string what;
};

void ok(const OFCondition &c, const char *what)
{
    if (c.bad())
        throw RtError{std::string(what) + ": " + c.text()};
}

void put(DcmItem *it, const DcmTagKey &tag, const std::string &v)
{
    ok(it->putAndInsertString(tag, v.c_str()), "setting an attribute");
}

DcmItem *add_item(DcmItem *parent, const DcmTagKey &seq)
{
    DcmItem *it = NULL;
    ok(parent->findOrCreateSequenceItem(seq, it, -2), "adding a sequence item");
    return it;
}

void put_code(DcmItem *parent, const DcmTagKey &seq, const sp_dicom_coded &c)
{
    DcmItem *it = add_item(parent, seq);
    put(it, DCM_CodeValue, c.value);
    put(it, DCM_CodingSchemeDesignator, c.scheme);
    put(it, DCM_CodeMeaning, c.meaning);
}

std::string uid(const char *root)
{
    char b[100];
    return dcmGenerateUniqueIdentifier(b, root);
}

/* the source's value of (group, element) from sp_dicom_ref's copied attributes, or "" */
std::string attr(const sp_dicom_ref *ref, uint16_t g, uint16_t e)
{
    for (int i = 0; i < ref->n_attrs; i++)
        if (ref->attr_tag[i][0] == g && ref->attr_tag[i][1] == e)
            return ref->attr_val[i];
    return "";
}

/* SOP common, patient, general study, RT series, general equipment */
void header(DcmDataset *ds, const sp_dicom_ref *ref, const sp_dicom_params *p, const std::string &study,
            const std::string &date, const std::string &time)
{
    std::string cs = attr(ref, 0x0008, 0x0005);
    if (!cs.empty())
        put(ds, DCM_SpecificCharacterSet, cs);
    put(ds, DCM_SOPClassUID, UID_RTStructureSetStorage);
    put(ds, DCM_SOPInstanceUID, uid(SITE_INSTANCE_UID_ROOT));
    put(ds, DCM_InstanceCreationDate, date);
    put(ds, DCM_InstanceCreationTime, time);
    put(ds, DCM_PatientName, attr(ref, 0x0010, 0x0010));
    put(ds, DCM_PatientID, attr(ref, 0x0010, 0x0020));
    put(ds, DCM_PatientBirthDate, attr(ref, 0x0010, 0x0030));
    put(ds, DCM_PatientSex, attr(ref, 0x0010, 0x0040));
    put(ds, DCM_StudyInstanceUID, study);
    put(ds, DCM_StudyDate, attr(ref, 0x0008, 0x0020));
    put(ds, DCM_StudyTime, attr(ref, 0x0008, 0x0030));
    put(ds, DCM_ReferringPhysicianName, attr(ref, 0x0008, 0x0090));
    put(ds, DCM_StudyID, attr(ref, 0x0020, 0x0010));
    put(ds, DCM_AccessionNumber, attr(ref, 0x0008, 0x0050));
    if (!attr(ref, 0x0008, 0x1030).empty())
        put(ds, DCM_StudyDescription, attr(ref, 0x0008, 0x1030));
    put(ds, DCM_Modality, "RTSTRUCT");
    put(ds, DCM_SeriesInstanceUID, uid(SITE_SERIES_UID_ROOT));
    put(ds, DCM_SeriesNumber, std::to_string(p->series_number));
    put(ds, DCM_SeriesDescription, p->description && *p->description ? p->description : "segpipe labels");
    put(ds, DCM_SeriesDate, date);
    put(ds, DCM_SeriesTime, time);
    put(ds, DCM_OperatorsName, p->creator ? p->creator : "");
    put(ds, DCM_Manufacturer, "segpipe");
    put(ds, DCM_ManufacturerModelName, "segpipe");
    put(ds, DCM_SoftwareVersions, SP_VERSION_STRING);
    put(ds, DCM_InstanceNumber, "1");
}

/* the structure set module: label, date, and what it was drawn on */
void structure_set(DcmDataset *ds, const sp_dicom_ref *ref, const std::string &study, const std::string &frame,
                   const std::string &date, const std::string &time)
{
    put(ds, DCM_StructureSetLabel, "segpipe");
    put(ds, DCM_StructureSetName, "segpipe labels");
    put(ds, DCM_StructureSetDate, date);
    put(ds, DCM_StructureSetTime, time);
    DcmItem *fr = add_item(ds, DCM_ReferencedFrameOfReferenceSequence);
    put(fr, DCM_FrameOfReferenceUID, frame);
    DcmItem *st = add_item(fr, DCM_RTReferencedStudySequence);
    put(st, DCM_ReferencedSOPClassUID, UID_RETIRED_DetachedStudyManagementSOPClass);   /* as PS3.3 C.8.8.5 says */
    put(st, DCM_ReferencedSOPInstanceUID, study);
    DcmItem *se = add_item(st, DCM_RTReferencedSeriesSequence);
    put(se, DCM_SeriesInstanceUID, *ref->series_uid ? ref->series_uid : uid(SITE_SERIES_UID_ROOT));
    for (int k = 0; k < ref->n; k++) {
        if (!*ref->sop_uid[k] || !*ref->sop_class[k])
            continue;
        DcmItem *im = add_item(se, DCM_ContourImageSequence);
        put(im, DCM_ReferencedSOPClassUID, ref->sop_class[k]);
        put(im, DCM_ReferencedSOPInstanceUID, ref->sop_uid[k]);
    }
}

std::string ds_num(double v)
{
    char b[32];
    std::snprintf(b, sizeof b, "%.9g", v == 0 ? 0.0 : v);   /* DS: at most 16 characters */
    return b;
}

/* where each structure is on each slice: box [k * n_st + i] = {c0, r0, c1, r1}
 * (c1 < c0: absent), from one pass over the labels */
struct Boxes {
    int n_st = 0;
    std::vector<int> box;
};

Boxes find_boxes(const sp_dicom_ref *ref, const uint16_t *labels, const sp_dicom_structure *st, int n_st)
{
    std::vector<int> idx(65536, -1);
    for (int i = 0; i < n_st; i++)
        idx[st[i].label] = i;
    Boxes b;
    b.n_st = n_st;
    b.box.resize(size_t(ref->n) * size_t(n_st) * 4);
    for (size_t i = 0; i < b.box.size(); i += 4) {
        b.box[i] = b.box[i + 1] = 1 << 30;
        b.box[i + 2] = b.box[i + 3] = -1;
    }
    const uint16_t *p = labels;
    for (int k = 0; k < ref->n; k++)
        for (int r = 0; r < ref->rows; r++)
            for (int c = 0; c < ref->cols; c++, p++) {
                int i = *p ? idx[*p] : -1;
                if (i < 0)
                    continue;
                int *q = &b.box[(size_t(k) * size_t(n_st) + size_t(i)) * 4];
                q[0] = c < q[0] ? c : q[0];
                q[1] = r < q[1] ? r : q[1];
                q[2] = c > q[2] ? c : q[2];
                q[3] = r > q[3] ? r : q[3];
            }
    return b;
}

/* the contours of label `label` on slice k within box q, appended to ROI contour item rc */
void slice_contours(DcmItem *rc, const sp_dicom_ref *ref, const uint16_t *labels, int label, int k, const int *q,
                    std::vector<uint8_t> &mask, int &number)
{
    int w = q[2] - q[0] + 1, h = q[3] - q[1] + 1;
    mask.resize(size_t(w) * size_t(h));
    const uint16_t *sl = labels + size_t(k) * size_t(ref->rows) * size_t(ref->cols);
    for (int r = 0; r < h; r++)
        for (int c = 0; c < w; c++)
            mask[size_t(r) * w + c] = sl[size_t(q[1] + r) * ref->cols + q[0] + c] == label;
    sp_contours c;
    if (sp_mask_contours(mask.data(), w, h, &c))
        throw RtError{"out of memory (contours)"};
    const double *x = ref->iop, *y = ref->iop + 3, *o = ref->ipp[k];
    for (int l = 0; l < c.n; l++) {
        int n = c.start[l + 1] - c.start[l];
        if (n < 3)
            continue;
        std::string data;
        data.reserve(size_t(n) * 3 * 12);
        for (int i = c.start[l]; i < c.start[l + 1]; i++) {
            double col = (c.xy[2 * i] + q[0]) * ref->ps[1], row = (c.xy[2 * i + 1] + q[1]) * ref->ps[0];
            for (int a = 0; a < 3; a++) {
                if (!data.empty())
                    data += '\\';
                data += ds_num(o[a] + col * x[a] + row * y[a]);
            }
        }
        DcmItem *it = add_item(rc, DCM_ContourSequence);
        put(it, DCM_ContourNumber, std::to_string(++number));
        if (*ref->sop_uid[k] && *ref->sop_class[k]) {
            DcmItem *im = add_item(it, DCM_ContourImageSequence);
            put(im, DCM_ReferencedSOPClassUID, ref->sop_class[k]);
            put(im, DCM_ReferencedSOPInstanceUID, ref->sop_uid[k]);
        }
        put(it, DCM_ContourGeometricType, "CLOSED_PLANAR");
        put(it, DCM_NumberOfContourPoints, std::to_string(n));
        put(it, DCM_ContourData, data);
    }
    sp_contours_free(&c);
}

/* one ROI: its structure set entry, its contours, its observation (codes) */
void add_roi(DcmDataset *ds, const sp_dicom_ref *ref, const uint16_t *labels, const sp_dicom_structure &s, int number,
             const Boxes &boxes, const std::string &frame, const char *creator)
{
    DcmItem *ss = add_item(ds, DCM_StructureSetROISequence);
    put(ss, DCM_ROINumber, std::to_string(number));
    put(ss, DCM_ReferencedFrameOfReferenceUID, frame);
    put(ss, DCM_ROIName, s.display);
    put(ss, DCM_ROIDescription, s.name);
    put(ss, DCM_ROIGenerationAlgorithm, "AUTOMATIC");
    DcmItem *rc = add_item(ds, DCM_ROIContourSequence);
    put(rc, DCM_ROIDisplayColor, std::to_string(s.rgb[0]) + "\\" + std::to_string(s.rgb[1]) + "\\" +
                                     std::to_string(s.rgb[2]));
    std::vector<uint8_t> mask;
    int contour = 0;
    for (int k = 0; k < ref->n; k++) {
        const int *q = &boxes.box[(size_t(k) * size_t(boxes.n_st) + size_t(number - 1)) * 4];
        if (q[2] >= q[0])
            slice_contours(rc, ref, labels, s.label, k, q, mask, contour);
    }
    put(rc, DCM_ReferencedROINumber, std::to_string(number));
    DcmItem *ob = add_item(ds, DCM_RTROIObservationsSequence);
    put(ob, DCM_ObservationNumber, std::to_string(number));
    put(ob, DCM_ReferencedROINumber, std::to_string(number));
    DcmItem *id = add_item(ob, DCM_RTROIIdentificationCodeSequence);
    put(id, DCM_CodeValue, s.type.value);
    put(id, DCM_CodingSchemeDesignator, s.type.scheme);
    put(id, DCM_CodeMeaning, s.type.meaning);
    if (*s.modifier.value)
        put_code(id, DCM_SegmentedPropertyTypeModifierCodeSequence, s.modifier);
    put(ob, DCM_RTROIInterpretedType, "ORGAN");
    put(ob, DCM_ROIInterpreter, creator ? creator : "");
}

void write(const char *path, const sp_dicom_ref *ref, const uint16_t *labels, const sp_dicom_structure *st, int n_st,
           const sp_dicom_params *p)
{
    DcmFileFormat ff;
    DcmDataset *ds = ff.getDataset();
    char date[16], tm_s[16];
    std::time_t now = std::time(NULL);
    struct tm t;
    gmtime_r(&now, &t);
    std::strftime(date, sizeof date, "%Y%m%d", &t);
    std::strftime(tm_s, sizeof tm_s, "%H%M%S", &t);
    std::string study = *ref->study_uid ? ref->study_uid : uid(SITE_STUDY_UID_ROOT);
    std::string frame = attr(ref, 0x0020, 0x0052);
    if (frame.empty())
        frame = uid(SITE_INSTANCE_UID_ROOT);
    header(ds, ref, p, study, date, tm_s);
    put(ds, DCM_FrameOfReferenceUID, frame);   /* the frame of reference module */
    put(ds, DCM_PositionReferenceIndicator, attr(ref, 0x0020, 0x1040));
    structure_set(ds, ref, study, frame, date, tm_s);
    bool private_codes = false;
    Boxes boxes = find_boxes(ref, labels, st, n_st);
    for (int i = 0; i < n_st; i++) {
        private_codes |= !st[i].standard;
        add_roi(ds, ref, labels, st[i], i + 1, boxes, frame, p->creator);   /* ROI number i + 1 */
    }
    if (private_codes) {
        DcmItem *it = add_item(ds, DCM_CodingSchemeIdentificationSequence);
        put(it, DCM_CodingSchemeDesignator, SP_DICOM_PRIVATE_SCHEME);
        put(it, DCM_CodingSchemeName, "segpipe structure names");
        put(it, DCM_CodingSchemeResponsibleOrganization, "segpipe");
    }
    put(ds, DCM_ApprovalStatus, "UNAPPROVED");
    ok(ff.saveFile(path, p->deflate ? EXS_DeflatedLittleEndianExplicit : EXS_LittleEndianExplicit), "writing");
}

} // namespace

extern "C" sp_status sp_dicom_rtstruct_write(const char *path, const sp_dicom_ref *ref, const uint16_t *labels,
                                             const sp_dicom_structure *st, int n_st, const sp_dicom_params *p,
                                             char *msg, size_t cap)
{
    OFLog::configure(getenv("SP_DCMTK_DEBUG") ? OFLogger::DEBUG_LOG_LEVEL : OFLogger::FATAL_LOG_LEVEL);
    try {
        write(path, ref, labels, st, n_st, p);
        return SP_OK;
    } catch (const RtError &e) {
        std::snprintf(msg, cap, "RTSTRUCT: %s", e.what.c_str());
    } catch (const std::exception &e) {
        std::snprintf(msg, cap, "RTSTRUCT: %s", e.what());
    } catch (...) {
        std::snprintf(msg, cap, "RTSTRUCT: writing failed");
    }
    return SP_ERR_IO;
}
