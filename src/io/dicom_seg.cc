/*
 * dicom_seg.cc — labels as a binary DICOM Segmentation with DCMTK's dcmseg
 * (Debian's libdcmtk): docs/dicom.md.
 *
 * One segment per label present (label = the model's structure name,
 * category "Anatomical Structure" (SCT 123037004), type coded in segpipe's
 * private scheme 99SEGPIPE (code = label index, meaning = name), colour =
 * the label's display colour as CIELab), algorithm type AUTOMATIC. Frames:
 * for each segment, each source slice where it has voxels; per frame its
 * plane position, its dimension index (segment, slice) and a derivation
 * reference to the source slice; shared: pixel spacing, slice spacing and
 * orientation. Patient, study and frame-of-reference attributes come from
 * the source series (sp_dicom_ref); the SEG is a new series in that study
 * and lists every source instance in its common instance references.
 */
#include "dicom.h"

#include <dcmtk/config/osconfig.h>
#include <dcmtk/dcmdata/dcdeftag.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmfg/fgderimg.h>
#include <dcmtk/dcmfg/fgfracon.h>
#include <dcmtk/dcmfg/fgpixmsr.h>
#include <dcmtk/dcmfg/fgplanor.h>
#include <dcmtk/dcmfg/fgplanpo.h>
#include <dcmtk/dcmiod/cielabutil.h>
#include <dcmtk/dcmiod/iodreferences.h>
#include <dcmtk/dcmseg/segdoc.h>
#include <dcmtk/dcmseg/segment.h>
#include <dcmtk/oflog/oflog.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

namespace {

std::string num(double v)
{
    char b[32];
    std::snprintf(b, sizeof b, "%.10g", v);   /* DS: at most 16 characters */
    return b;
}

struct SegError {
    std::string what;
};

void ok(const OFCondition &c, const char *what)
{
    if (c.bad())
        throw SegError{std::string(what) + ": " + c.text()};
}

/* the source's patient, study and frame of reference, as a dataset to
 * import; an anonymised series without a study or frame-of-reference UID
 * gets new ones (the SEG cannot be filed with its source then) */
void import_source(DcmSegmentation *seg, const sp_dicom_ref *ref, std::string &study)
{
    DcmDataset ds;
    char uid[100];
    for (int i = 0; i < ref->n_attrs; i++)
        ds.putAndInsertString(DcmTagKey(ref->attr_tag[i][0], ref->attr_tag[i][1]), ref->attr_val[i]);
    study = ref->study_uid;
    if (study.empty()) {
        study = dcmGenerateUniqueIdentifier(uid, SITE_STUDY_UID_ROOT);
        ds.putAndInsertString(DCM_StudyInstanceUID, study.c_str());
    }
    if (!ds.tagExistsWithValue(DCM_FrameOfReferenceUID))
        ds.putAndInsertString(DCM_FrameOfReferenceUID, dcmGenerateUniqueIdentifier(uid, SITE_INSTANCE_UID_ROOT));
    ok(seg->importFromSourceImage(ds), "importing the source's patient and study");
}

void shared_groups(DcmSegmentation *seg, const sp_dicom_ref *ref)
{
    FGPixelMeasures pm;
    ok(pm.setPixelSpacing(num(ref->ps[0]) + "\\" + num(ref->ps[1])), "pixel spacing");
    ok(pm.setSliceThickness(num(ref->step)), "slice thickness");
    ok(pm.setSpacingBetweenSlices(num(ref->step)), "slice spacing");
    ok(seg->addForAllFrames(pm), "pixel measures");
    std::unique_ptr<FGPlaneOrientationPatient> po(FGPlaneOrientationPatient::createMinimal(
        num(ref->iop[0]), num(ref->iop[1]), num(ref->iop[2]), num(ref->iop[3]), num(ref->iop[4]),
        num(ref->iop[5])));
    if (!po)
        throw SegError{"plane orientation"};
    ok(seg->addForAllFrames(*po), "plane orientation");
}

Uint16 add_segment(DcmSegmentation *seg, int label, const char *name)
{
    DcmSegment *s = NULL;
    std::string nm = std::string(name).substr(0, 64);
    ok(DcmSegment::create(s, nm.c_str(), CodeSequenceMacro("123037004", "SCT", "Anatomical Structure"),
                          CodeSequenceMacro(std::to_string(label).c_str(), "99SEGPIPE", nm.c_str()),
                          DcmSegTypes::SAT_AUTOMATIC, "segpipe"),
       "segment");
    uint8_t rgb[3];
    sp_label_rgb(label, rgb);
    double L, a, b;
    IODCIELabUtil::rgb2DicomLab(L, a, b, rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0);
    s->setRecommendedDisplayCIELabValue(Uint16(L + 0.5), Uint16(a + 0.5), Uint16(b + 0.5));
    Uint16 number = 0;
    ok(seg->addSegment(s, number), "adding a segment");
    return number;
}

/* frame (segment number, slice k): per-frame groups, then the bitmap */
void add_frame(DcmSegmentation *seg, const sp_dicom_ref *ref, Uint16 number, int k, Uint8 *bits)
{
    std::unique_ptr<FGPlanePosPatient> pp(
        FGPlanePosPatient::createMinimal(num(ref->ipp[k][0]), num(ref->ipp[k][1]), num(ref->ipp[k][2])));
    FGFrameContent fc;
    ok(fc.setDimensionIndexValues(number, 0), "dimension index");
    ok(fc.setDimensionIndexValues(Uint32(k + 1), 1), "dimension index");
    ImageSOPInstanceReferenceMacro *src = NULL;
    ok(ImageSOPInstanceReferenceMacro::create(ref->sop_class[k], ref->sop_uid[k], src), "source reference");
    OFVector<ImageSOPInstanceReferenceMacro> srcs;
    srcs.push_back(*src);
    delete src;
    std::unique_ptr<FGDerivationImage> di(DcmSegmentation::createDerivationImageFG(srcs, "segpipe labels"));
    if (!pp || !di)
        throw SegError{"frame functional groups"};
    OFVector<FGBase *> groups;
    groups.push_back(pp.get());
    groups.push_back(&fc);
    groups.push_back(di.get());
    ok(seg->addFrame(bits, number, groups), "adding a frame");
}

void write(const char *path, const sp_dicom_ref *ref, const uint16_t *labels, const char *const *names, int n_names,
           const char *description)
{
    DcmSegmentation *raw = NULL;
    IODGeneralEquipmentModule::EquipmentInfo eq("segpipe", "segpipe", "1", SP_VERSION_STRING);
    ContentIdentificationMacro ci("1", "SEGPIPE", "segpipe labels", "segpipe");
    ok(DcmSegmentation::createBinarySegmentation(raw, Uint16(ref->rows), Uint16(ref->cols), eq, ci),
       "creating the segmentation");
    std::unique_ptr<DcmSegmentation> seg(raw);
    std::string study;
    import_source(seg.get(), ref, study);
    ok(seg->getSeries().setSeriesDescription(description && *description ? description : "segpipe labels"),
       "series description");
    ok(seg->getSeries().setSeriesNumber("9001"), "series number");
    char uid[100];
    std::string dim_uid = dcmGenerateUniqueIdentifier(uid, SITE_INSTANCE_UID_ROOT);
    ok(seg->getDimensions().addDimensionIndex(DCM_ReferencedSegmentNumber, dim_uid.c_str(),
                                              DCM_SegmentIdentificationSequence, "segment"), "dimension");
    ok(seg->getDimensions().addDimensionIndex(DCM_ImagePositionPatient, dim_uid.c_str(), DCM_PlanePositionSequence,
                                              "position"), "dimension");
    shared_groups(seg.get(), ref);
    size_t plane = size_t(ref->rows) * size_t(ref->cols);
    std::vector<char> present(65536, 0);
    for (size_t i = 0; i < plane * size_t(ref->n); i++)
        present[labels[i]] = 1;
    std::vector<Uint8> bits(plane);
    for (int l = 1; l < 65536; l++) {
        if (!present[l])
            continue;
        char fallback[32];
        std::snprintf(fallback, sizeof fallback, "label_%d", l);
        Uint16 number = add_segment(seg.get(), l, l < n_names && names[l] ? names[l] : fallback);
        for (int k = 0; k < ref->n; k++) {
            const uint16_t *sl = labels + size_t(k) * plane;
            size_t hits = 0;
            for (size_t i = 0; i < plane; i++)   /* volume i along a row, j down: row-major frames */
                hits += (bits[i] = sl[i] == l);
            if (hits)
                add_frame(seg.get(), ref, number, k, bits.data());
        }
    }
    IODReferences refs;
    std::string series = *ref->series_uid ? ref->series_uid : dcmGenerateUniqueIdentifier(uid, SITE_SERIES_UID_ROOT);
    for (int k = 0; k < ref->n; k++)
        refs.add(new IODImageReference(ref->patient_id, study.c_str(), series.c_str(), ref->sop_uid[k],
                                       ref->sop_class[k]));
    seg->getCommonInstanceReference().addReferences(refs, study.c_str());
    ok(seg->saveFile(path, EXS_DeflatedLittleEndianExplicit), "writing");   /* binary frames deflate ~50x */
}

} // namespace

extern "C" sp_status sp_dicom_seg_write(const char *path, const sp_dicom_ref *ref, const uint16_t *labels,
                                        const char *const *names, int n_names, const char *description, char *msg,
                                        size_t cap)
{
    OFLog::configure(getenv("SP_DCMTK_DEBUG") ? OFLogger::DEBUG_LOG_LEVEL : OFLogger::FATAL_LOG_LEVEL);   /* DCMTK's own log would print values (patient data) */
    try {
        write(path, ref, labels, names, n_names, description);
        return SP_OK;
    } catch (const SegError &e) {
        std::snprintf(msg, cap, "DICOM-SEG: %s", e.what.c_str());
    } catch (const std::exception &e) {
        std::snprintf(msg, cap, "DICOM-SEG: %s", e.what());
    } catch (...) {
        std::snprintf(msg, cap, "DICOM-SEG: writing failed");
    }
    return SP_ERR_IO;
}
