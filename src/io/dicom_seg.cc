/*
 * dicom_seg.cc — labels as a binary DICOM Segmentation with DCMTK's dcmseg
 * (Debian's libdcmtk): docs/dicom.md.
 *
 * One segment per structure present: SegmentLabel its display name,
 * SegmentDescription the model's name, category, type (with a laterality
 * modifier) and anatomic region coded as dicom_codes.c says (SNOMED CT, or
 * segpipe's private scheme declared in CodingSchemeIdentificationSequence),
 * colour = the label's display colour as CIELab, algorithm AUTOMATIC.
 * Frames: for each segment, each source slice where it has voxels; per
 * frame its plane position, its dimension index (segment, slice) and a
 * derivation reference to the source slice; shared: pixel spacing, slice
 * spacing and orientation. Patient, study and frame-of-reference attributes
 * come from the source series (sp_dicom_ref); the SEG is a new series in
 * that study and lists every source instance in its common instance
 * references. Explicit VR little endian unless deflate is asked for.
 */
#include "dicom_out.h"

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

CodeSequenceMacro code(const sp_dicom_coded &c)
{
    return CodeSequenceMacro(c.value, c.scheme, c.meaning);
}

Uint16 add_segment(DcmSegmentation *seg, const sp_dicom_structure &st)
{
    DcmSegment *s = NULL;
    ok(DcmSegment::create(s, st.display, code(st.category), code(st.type), DcmSegTypes::SAT_AUTOMATIC, "segpipe"),
       "segment");
    std::unique_ptr<DcmSegment> owned(s);
    ok(s->setSegmentDescription(std::string(st.name).substr(0, 64).c_str(), OFFalse), "segment description");
    if (*st.modifier.value)
        s->getSegmentedPropertyTypeModifierCode().push_back(new CodeSequenceMacro(code(st.modifier)));
    if (*st.region.value) {
        s->getGeneralAnatomyCode().getAnatomicRegion() = code(st.region);
        if (*st.region_modifier.value)
            s->getGeneralAnatomyCode().getAnatomicRegionModifier().push_back(
                new CodeSequenceMacro(code(st.region_modifier)));
    }
    double L, a, b;
    IODCIELabUtil::rgb2DicomLab(L, a, b, st.rgb[0] / 255.0, st.rgb[1] / 255.0, st.rgb[2] / 255.0);
    s->setRecommendedDisplayCIELabValue(Uint16(L + 0.5), Uint16(a + 0.5), Uint16(b + 0.5));
    Uint16 number = 0;
    ok(seg->addSegment(s, number), "adding a segment");
    owned.release();   /* the segmentation owns it now */
    return number;
}

/* frame (segment number, slice k): per-frame groups, then the bitmap; the
 * derivation reference only where the source slice has a SOP instance UID */
void add_frame(DcmSegmentation *seg, const sp_dicom_ref *ref, Uint16 number, int k, Uint8 *bits)
{
    std::unique_ptr<FGPlanePosPatient> pp(
        FGPlanePosPatient::createMinimal(num(ref->ipp[k][0]), num(ref->ipp[k][1]), num(ref->ipp[k][2])));
    FGFrameContent fc;
    ok(fc.setDimensionIndexValues(number, 0), "dimension index");
    ok(fc.setDimensionIndexValues(Uint32(k + 1), 1), "dimension index");
    if (!pp)
        throw SegError{"frame functional groups"};
    OFVector<FGBase *> groups;
    groups.push_back(pp.get());
    groups.push_back(&fc);
    std::unique_ptr<FGDerivationImage> di;
    if (*ref->sop_uid[k] && *ref->sop_class[k]) {
        ImageSOPInstanceReferenceMacro *src = NULL;
        ok(ImageSOPInstanceReferenceMacro::create(ref->sop_class[k], ref->sop_uid[k], src), "source reference");
        OFVector<ImageSOPInstanceReferenceMacro> srcs;
        srcs.push_back(*src);
        delete src;
        di.reset(DcmSegmentation::createDerivationImageFG(srcs, "segpipe labels"));
        if (!di)
            throw SegError{"frame functional groups"};
        groups.push_back(di.get());
    }
    ok(seg->addFrame(bits, number, groups), "adding a frame");
}

/* the frames of one segment: each slice where it has voxels */
void add_frames(DcmSegmentation *seg, const sp_dicom_ref *ref, const uint16_t *labels, int label, Uint16 number,
                std::vector<Uint8> &bits)
{
    size_t plane = size_t(ref->rows) * size_t(ref->cols);
    for (int k = 0; k < ref->n; k++) {
        const uint16_t *sl = labels + size_t(k) * plane;
        size_t hits = 0;
        for (size_t i = 0; i < plane; i++)   /* volume i along a row, j down: row-major frames */
            hits += (bits[i] = sl[i] == label);
        if (hits)
            add_frame(seg, ref, number, k, bits.data());
    }
}

/* the file: the segmentation's dataset, segpipe's private coding scheme
 * declared when a segment uses it, saved in the chosen transfer syntax */
void save(DcmSegmentation *seg, const char *path, bool private_codes, bool deflate)
{
    DcmFileFormat ff;
    DcmDataset *ds = ff.getDataset();
    ok(seg->writeDataset(*ds), "building the dataset");
    if (private_codes) {
        DcmItem *it = NULL;
        ok(ds->findOrCreateSequenceItem(DCM_CodingSchemeIdentificationSequence, it, -2), "coding schemes");
        ok(it->putAndInsertString(DCM_CodingSchemeDesignator, SP_DICOM_PRIVATE_SCHEME), "coding schemes");
        ok(it->putAndInsertString(DCM_CodingSchemeName, "segpipe structure names"), "coding schemes");
        ok(it->putAndInsertString(DCM_CodingSchemeResponsibleOrganization, "segpipe"), "coding schemes");
    }
    ok(ff.saveFile(path, deflate ? EXS_DeflatedLittleEndianExplicit : EXS_LittleEndianExplicit), "writing");
}

void write(const char *path, const sp_dicom_ref *ref, const uint16_t *labels, const sp_dicom_structure *st, int n_st,
           const sp_dicom_params *p)
{
    DcmSegmentation *raw = NULL;
    IODGeneralEquipmentModule::EquipmentInfo eq("segpipe", "segpipe", "1", SP_VERSION_STRING);
    ContentIdentificationMacro ci("1", "SEGPIPE", "segpipe labels", p->creator ? p->creator : "");
    ok(DcmSegmentation::createBinarySegmentation(raw, Uint16(ref->rows), Uint16(ref->cols), eq, ci),
       "creating the segmentation");
    std::unique_ptr<DcmSegmentation> seg(raw);
    std::string study;
    import_source(seg.get(), ref, study);
    ok(seg->getSeries().setSeriesDescription(p->description && *p->description ? p->description : "segpipe labels"),
       "series description");
    ok(seg->getSeries().setSeriesNumber(std::to_string(p->series_number).c_str()), "series number");
    char uid[100];
    std::string dim_uid = dcmGenerateUniqueIdentifier(uid, SITE_INSTANCE_UID_ROOT);
    ok(seg->getDimensions().addDimensionIndex(DCM_ReferencedSegmentNumber, dim_uid.c_str(),
                                              DCM_SegmentIdentificationSequence, "segment"), "dimension");
    ok(seg->getDimensions().addDimensionIndex(DCM_ImagePositionPatient, dim_uid.c_str(), DCM_PlanePositionSequence,
                                              "position"), "dimension");
    shared_groups(seg.get(), ref);
    std::vector<Uint8> bits(size_t(ref->rows) * size_t(ref->cols));
    bool private_codes = false;
    for (int i = 0; i < n_st; i++) {
        private_codes |= !st[i].standard;
        add_frames(seg.get(), ref, labels, st[i].label, add_segment(seg.get(), st[i]), bits);
    }
    IODReferences refs;
    std::string series = *ref->series_uid ? ref->series_uid : dcmGenerateUniqueIdentifier(uid, SITE_SERIES_UID_ROOT);
    for (int k = 0; k < ref->n; k++)
        if (*ref->sop_uid[k] && *ref->sop_class[k])
            refs.add(new IODImageReference(ref->patient_id, study.c_str(), series.c_str(), ref->sop_uid[k],
                                           ref->sop_class[k]));
    if (refs.size())
        seg->getCommonInstanceReference().addReferences(refs, study.c_str());
    save(seg.get(), path, private_codes, p->deflate != 0);
}

} // namespace

extern "C" sp_status sp_dicom_seg_write(const char *path, const sp_dicom_ref *ref, const uint16_t *labels,
                                        const sp_dicom_structure *st, int n_st, const sp_dicom_params *p, char *msg,
                                        size_t cap)
{
    OFLog::configure(getenv("SP_DCMTK_DEBUG") ? OFLogger::DEBUG_LOG_LEVEL : OFLogger::FATAL_LOG_LEVEL);   /* DCMTK's own log would print values (patient data) */
    try {
        write(path, ref, labels, st, n_st, p);
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
