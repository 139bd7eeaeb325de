"""DICOM out (docs/dicom.md): the DICOM-SEG and the RTSTRUCT of the ../shared
example series, read back by independent tools: pydicom (codes, references,
patient/study, the masks voxel for voxel), dicom3tools' dciodvfy (zero
errors), matplotlib's point-in-polygon test (the RTSTRUCT contours
re-rasterised: Dice >= 0.95 per structure against the NIfTI labels); the
code table against its CSV and TotalSegmentator's class map; unknown
structures, manifest codes, deflate, and a source without instance UIDs."""
import csv, ctypes as C, json, os, shutil, subprocess
import numpy as np
import nibabel as nib
import pydicom
import sp

SERIES = os.path.join(sp.CTDIR, "example_ct_dicom")
CODES_CSV = os.path.join(sp.ROOT, "src", "io", "dicom_codes", "structures.csv")
_cache = {}


class Params(C.Structure):
    _fields_ = [("kind", C.c_int), ("description", C.c_char_p), ("series_number", C.c_int),
                ("creator", C.c_char_p), ("deflate", C.c_int), ("codes_json", C.c_char_p)]


LOGFN = C.CFUNCTYPE(None, C.c_int, C.c_char_p, C.c_void_p)
_warnings = []
_logfn = LOGFN(lambda level, msg, user: _warnings.append(msg.decode()))


def _volume(folder=SERIES):
    """the series read by libsegpipe (an sp_volume handle that keeps its DICOM references)"""
    key = ("vol", folder)
    if key not in _cache:
        L = sp.lib()
        v = C.c_void_p()
        assert L.sp_volume_read(folder.encode(), None, C.byref(v)) == 0, L.sp_last_error()
        _cache[key] = v
    return _cache[key]


def _write(path, labels, names, kind=0, folder=SERIES, **kw):
    """sp_labels_write_dicom of labels [i, j, k] on the series' grid -> (status, error, warnings)"""
    L = sp.lib()
    L.sp_labels_write_dicom.argtypes = [C.c_char_p, C.c_void_p, C.c_void_p, C.POINTER(C.c_char_p), C.c_int,
                                        C.POINTER(Params)]
    L.sp_log_set_callback.argtypes = [LOGFN, C.c_void_p]
    L.sp_log_set_level(2)
    L.sp_log_set_callback(_logfn, None)
    n = max(names) + 1
    arr = (C.c_char_p * n)(*[names.get(i, "").encode() or None for i in range(n)])
    enc = lambda k: kw[k].encode() if kw.get(k) else None
    p = Params(kind, enc("description"), kw.get("series_number", 0), enc("creator"), kw.get("deflate", 0),
               enc("codes_json"))
    buf = sp.to_c(labels, np.uint16)
    del _warnings[:]
    st = L.sp_labels_write_dicom(path.encode(), sp.ptr(buf), _volume(folder), arr, n, C.byref(p))
    L.sp_log_set_callback(LOGFN(0), None)
    L.sp_log_set_level(4)
    return st, (L.sp_last_error() or b"").decode(), list(_warnings)


def _ts():
    """TotalSegmentator's own labels for the series (../shared example_seg_dicom.nii.gz,
    its total task), turned onto the series' grid as libsegpipe reads it, and their names"""
    if "ts" not in _cache:
        _, info = sp.read_volume(SERIES)
        ours = sp.affine_of(info)
        img = nib.load(os.path.join(sp.CTDIR, "example_seg_dicom.nii.gz"))
        t = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                            nib.orientations.io_orientation(ours))
        lab = nib.orientations.apply_orientation(np.asanyarray(img.dataobj), t).astype(np.uint16)
        aff = img.affine @ nib.orientations.inv_ornt_aff(t, img.shape)
        assert np.allclose(aff, ours, atol=1e-2), (aff, ours)
        total = json.load(open(os.path.join(sp.CTDIR, "total_v2_labels.json")))
        _cache["ts"] = lab, {int(k): v for k, v in total.items() if int(k) > 0}
    return _cache["ts"]


def _ts_file(kind):
    """the SEG (kind 0, with a creator and series number) or RTSTRUCT (1) of TotalSegmentator's labels"""
    if kind not in _cache:
        if "dir" not in _cache:   # the module's files, removed when the module's process ends
            import atexit, tempfile
            _cache["dir"] = tempfile.mkdtemp(prefix="sp-dicom-out-")
            atexit.register(shutil.rmtree, _cache["dir"], True)
        path = os.path.join(_cache["dir"], ["seg.dcm", "rt.dcm"][kind])
        lab, names = _ts()
        st, err, warn = _write(path, lab, names, kind, creator="Doe^Jane", series_number=77)
        assert st == 0, err
        _cache[kind] = path, warn
    return _cache[kind]


def _sources():
    """the series' slices sorted along the normal, their SOP instance UIDs (file meta: anonymised example)"""
    src = [pydicom.dcmread(os.path.join(SERIES, f), stop_before_pixels=True) for f in os.listdir(SERIES)]
    normal = np.cross(*np.reshape([float(x) for x in src[0].ImageOrientationPatient], (2, 3)))
    src.sort(key=lambda d: float(np.dot(normal, [float(x) for x in d.ImagePositionPatient])))
    return src, [d.file_meta.MediaStorageSOPInstanceUID for d in src]


def _codes():
    return {r["name"]: r for r in csv.DictReader(open(CODES_CSV, newline=""))}


def _dciodvfy(path):
    if not shutil.which("dciodvfy"):
        raise sp.Skip("dciodvfy (Debian dicom3tools) not installed")
    p = subprocess.run(["dciodvfy", path], capture_output=True, text=True)
    return [l for l in (p.stdout + p.stderr).splitlines() if l.startswith("Error")]


def _display(name):
    t = name.replace("_", " ")
    return t[:1].upper() + t[1:]


def _check_code(item, seq, row, part):
    """item's code sequence seq equals the CSV row's part (or is absent when the row has none)"""
    if not row[part + "_value"]:
        assert seq not in item, (seq, row["name"])
        return
    c = getattr(item, seq)[0]
    assert (c.CodingSchemeDesignator, c.CodeValue, c.CodeMeaning) == \
        (row[part + "_scheme"], row[part + "_value"], row[part + "_meaning"]), (row["name"], part)


def test_dicom_codes_table(tmp):
    """The C table is what the CSV gives (generator check), the library's
    rows equal the CSV's, and every class of TotalSegmentator's total task
    (../shared total_v2_labels.json) and of the brainchop MRI model has a
    standard (SCT) type code, with laterality where the name has a side."""
    r = subprocess.run(["python3", os.path.join(sp.ROOT, "tools", "dev", "make_dicom_codes.py"), "check"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = _codes()
    L = sp.lib()
    L.sp_dicom_codes_count.restype = C.c_int
    L.sp_dicom_codes_at.restype = C.POINTER(C.c_char_p * 16)
    L.sp_dicom_codes_at.argtypes = [C.c_int]
    n = L.sp_dicom_codes_count()
    assert n == len(rows) > 400
    for i in range(n):
        cells = [c.decode() if c else "" for c in L.sp_dicom_codes_at(i).contents]
        row = rows[cells[0]]
        assert cells[1:] == [row[k] for k in list(row)[1:]], cells[0]
    total = json.load(open(os.path.join(sp.CTDIR, "total_v2_labels.json")))
    names = [v for k, v in total.items() if int(k) > 0] + ["white_matter", "grey_matter"]
    assert len(names) == 119
    for name in names:
        row = rows[name]
        assert row["type_scheme"] == "SCT" and row["category_scheme"] == "SCT", name
        side = "Left" if "_left" in name else "Right" if "_right" in name else None
        if side:
            said = row["modifier_meaning"] + row["region_modifier_meaning"] + row["type_meaning"]
            assert side.lower() in said.lower(), (name, row)


def _check_segments(seg, names):
    """each segment: display label, model name, the table's codes"""
    rows = _codes()
    segs = {int(x.SegmentNumber): x for x in seg.SegmentSequence}
    assert sorted(x.SegmentDescription for x in segs.values()) == sorted(names)
    for x in segs.values():
        row = rows[x.SegmentDescription]
        assert x.SegmentLabel == _display(x.SegmentDescription) and x.SegmentAlgorithmType == "AUTOMATIC"
        _check_code(x, "SegmentedPropertyCategoryCodeSequence", row, "category")
        _check_code(x, "SegmentedPropertyTypeCodeSequence", row, "type")
        _check_code(x.SegmentedPropertyTypeCodeSequence[0], "SegmentedPropertyTypeModifierCodeSequence", row,
                    "modifier")
        _check_code(x, "AnatomicRegionSequence", row, "region")
    return segs


def _seg_volume(seg, segs, names, shape, src, uids):
    """the SEG's frames put back on the series' grid as label values; checks derivation references"""
    pos = {tuple(np.round([float(x) for x in d.ImagePositionPatient], 3)): k for k, d in enumerate(src)}
    by_name = {n: l for l, n in names.items()}
    got = np.zeros(shape, np.uint16)
    frames = seg.pixel_array.reshape(-1, shape[1], shape[0])
    for fi, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        k = pos[tuple(np.round([float(x) for x in fg.PlanePositionSequence[0].ImagePositionPatient], 3))]
        if uids:
            assert fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == uids[k]
        assert not np.any(got[:, :, k][frames[fi].T > 0])         # segments never overlap
        got[:, :, k][frames[fi].T > 0] = by_name[segs[number].SegmentDescription]
    return got


def test_dicom_seg_codes_references(tmp):
    """TotalSegmentator's labels of the series as a DICOM-SEG (creator and
    series number given): explicit VR little endian, dciodvfy without
    errors; segment labels are display names ("Rib left 7"), descriptions
    the model's names, category/type/modifier/region the table's; patient
    and study copied from the source; every source slice referenced; the
    masks back on the series' grid equal the labels voxel for voxel."""
    path, warn = _ts_file(0)
    lab, names = _ts()
    present = {l: n for l, n in names.items() if np.any(lab == l)}
    assert len(present) == 31
    assert _dciodvfy(path) == []
    seg = pydicom.dcmread(path)
    assert seg.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and seg.Modality == "SEG"
    assert seg.SeriesNumber == 77 and seg.ContentCreatorName == "Doe^Jane" and seg.SeriesDescription == "segpipe labels"
    src, uids = _sources()
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
               "AccessionNumber", "FrameOfReferenceUID"):
        if getattr(src[0], kw, ""):
            assert str(getattr(seg, kw)) == str(getattr(src[0], kw)), kw
    if getattr(src[0], "StudyInstanceUID", ""):
        assert seg.StudyInstanceUID == src[0].StudyInstanceUID
    else:   # the anonymised example has none: a new study, and a warning says so
        assert seg.StudyInstanceUID and any("no StudyInstanceUID" in w for w in warn), warn
    segs = _check_segments(seg, present.values())
    assert "Rib left 7" in [x.SegmentLabel for x in segs.values()]
    assert "CodingSchemeIdentificationSequence" not in seg   # no private codes here
    refd = [r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert sorted(refd) == sorted(uids)
    assert np.array_equal(_seg_volume(seg, segs, names, lab.shape, src, uids), lab)


def _rasterise(rt, src, uids, shape):
    """ROI number -> boolean volume: each contour's polygon filled at the pixel
    centres by matplotlib (even-odd across a slice's contours: holes)"""
    from matplotlib.path import Path
    d0 = src[0]
    X, Y = (np.array(d0.ImageOrientationPatient[a:a + 3], float) for a in (0, 3))
    rs, cs = (float(v) for v in d0.PixelSpacing)
    k_of = {u: k for k, u in enumerate(uids)}
    out = {}
    for rc in rt.ROIContourSequence:
        got = np.zeros(shape, bool)
        for c in rc.ContourSequence:
            assert c.ContourGeometricType == "CLOSED_PLANAR"
            k = k_of[c.ContourImageSequence[0].ReferencedSOPInstanceUID]
            P = np.array(c.ContourData, float).reshape(-1, 3)
            assert len(P) == int(c.NumberOfContourPoints)
            P -= np.array(src[k].ImagePositionPatient, float)
            n = np.cross(X, Y)
            assert np.allclose(P @ n, 0, atol=1e-3)              # on the referenced slice's plane
            pix = np.stack([P @ X / cs, P @ Y / rs], 1)
            (c0, r0), (c1, r1) = np.floor(pix.min(0)).astype(int), np.ceil(pix.max(0)).astype(int)
            c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, shape[0] - 1), min(r1, shape[1] - 1)
            cc, rr = np.meshgrid(np.arange(c0, c1 + 1), np.arange(r0, r1 + 1))   # the centres in its box
            inside = Path(pix).contains_points(np.stack([cc.ravel(), rr.ravel()], 1)).reshape(cc.shape)
            got[c0:c1 + 1, r0:r1 + 1, k] ^= inside.T
        out[int(rc.ReferencedROINumber)] = got
    return out


def test_dicom_rtstruct(tmp):
    """TotalSegmentator's labels of the series as an RTSTRUCT: dciodvfy
    without errors, pydicom reads it; one ROI per structure (display name,
    model name, the table's type code and laterality, the label's colour);
    the contours, re-rasterised by matplotlib at the pixel centres, give
    each structure with Dice >= 0.95 against the labels (exact in fact);
    every contour lies on the plane of the slice it references; the
    structure set references the study's series and every slice."""
    path, warn = _ts_file(1)
    lab, names = _ts()
    present = {l: n for l, n in names.items() if np.any(lab == l)}
    assert _dciodvfy(path) == []
    rt = pydicom.dcmread(path)
    assert rt.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3" and rt.Modality == "RTSTRUCT"
    assert rt.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert rt.SeriesNumber == 77 and rt.OperatorsName == "Doe^Jane"
    src, uids = _sources()
    ref_series = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert sorted(i.ReferencedSOPInstanceUID for i in ref_series.ContourImageSequence) == sorted(uids)
    assert rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == rt.FrameOfReferenceUID
    if getattr(src[0], "FrameOfReferenceUID", ""):
        assert rt.FrameOfReferenceUID == src[0].FrameOfReferenceUID
    rois = {int(r.ROINumber): r for r in rt.StructureSetROISequence}
    assert sorted(r.ROIDescription for r in rois.values()) == sorted(present.values())
    assert all(r.ROIName == _display(r.ROIDescription) for r in rois.values())
    rows = _codes()
    for ob in rt.RTROIObservationsSequence:
        row = rows[rois[int(ob.ReferencedROINumber)].ROIDescription]
        _check_code(ob, "RTROIIdentificationCodeSequence", row, "type")
        _check_code(ob.RTROIIdentificationCodeSequence[0], "SegmentedPropertyTypeModifierCodeSequence", row,
                    "modifier")
    got = _rasterise(rt, src, uids, lab.shape)
    L = sp.lib()
    dices = {}
    for rc in rt.ROIContourSequence:
        name = rois[int(rc.ReferencedROINumber)].ROIDescription
        label = [l for l, n in present.items() if n == name][0]
        rgb = (C.c_uint8 * 3)()
        L.sp_label_rgb(label, rgb)
        assert [int(v) for v in rc.ROIDisplayColor] == list(rgb)
        dices[name] = sp.dice(got[int(rc.ReferencedROINumber)], lab == label)
    assert len(dices) == len(present) and min(dices.values()) >= 0.95, dices
    assert min(dices.values()) > 0.999, dices   # pixel centres are never on a contour: exact


def test_dicom_cli_outputs(tmp):
    """`segpipe ct SERIES --output-type dicom-rtstruct` with a description,
    series number and creator: the options land in the file, its ROIs are
    the passport's structures, dciodvfy has no errors, the missing study UID
    is warned about; usage errors for a NIfTI input, an unknown type, a
    bad series number, a backslash in the description."""
    out = os.path.join(tmp, "rt.dcm")
    p = sp.run("ct", SERIES, "-o", out, "--output-type", "dicom-rtstruct", "--dicom-description", "AI organs",
               "--dicom-series-number", "5", "--dicom-creator", "Roe^Richard")
    assert p.returncode == 0, p.stderr
    assert "no StudyInstanceUID" in p.stderr
    rt = pydicom.dcmread(out)
    assert (rt.SeriesDescription, rt.SeriesNumber, rt.OperatorsName) == ("AI organs", 5, "Roe^Richard")
    names = [x["name"] for x in json.load(open(os.path.join(tmp, "rt.passport.json")))["structures"]]
    assert sorted(r.ROIDescription for r in rt.StructureSetROISequence) == sorted(names) and len(names) > 5
    assert _dciodvfy(out) == []
    nii = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
    for args, text in (([nii, "-o", os.path.join(tmp, "x.dcm"), "--output-type", "dicom-rtstruct"], "DICOM input"),
                       ([SERIES, "-o", os.path.join(tmp, "x.dcm"), "--output-type", "rtss"], "--output-type"),
                       ([SERIES, "-o", os.path.join(tmp, "x.dcm"), "--output-type", "dicom-seg",
                         "--dicom-series-number", "0"], "--dicom-series-number"),
                       ([SERIES, "-o", os.path.join(tmp, "x.dcm"), "--output-type", "dicom-seg",
                         "--dicom-description", "a\\b"], "--dicom-description")):
        p = sp.run("ct", *args)
        assert p.returncode == 2 and text in p.stderr, (args, p.returncode, p.stderr)
    assert not os.path.exists(os.path.join(tmp, "x.dcm"))


def _fnv(name):
    h = 2166136261
    for b in name.encode():
        h = ((h ^ b) * 16777619) & 0xFFFFFFFF
    return "S%08X" % h


def test_dicom_private_and_manifest_codes(tmp):
    """A structure no table knows gets segpipe's private code (99SEGPIPE,
    "S" + FNV-1a of its name: the same in every model), the scheme is
    declared, a warning names it; a manifest's "dicom_codes" overrides the
    table; deflate is opt-in and gives the same segmentation; dciodvfy has
    no errors; a package whose dicom_codes are malformed is refused."""
    lab, names = _ts()
    small = np.where(np.isin(lab, [5, 52]), lab, 0).astype(np.uint16)
    small[small == 52] = 200
    ours = {5: "liver", 200: "mystery_structure"}
    codes = {"liver": {"category": ["SCT", "123037004", "Anatomical Structure"],
                       "type": ["SCT", "10200004", "Liver"], "modifier": ["SCT", "7771000", "Left"]}}
    out, deflated = os.path.join(tmp, "p.dcm"), os.path.join(tmp, "d.dcm")
    st, err, warn = _write(out, small, ours, codes_json=json.dumps(codes))
    assert st == 0, err
    assert any("mystery_structure" in w and "99SEGPIPE" in w for w in warn), warn
    assert _dciodvfy(out) == []
    seg = pydicom.dcmread(out)
    by = {x.SegmentDescription: x for x in seg.SegmentSequence}
    t = by["mystery_structure"].SegmentedPropertyTypeCodeSequence[0]
    assert (t.CodingSchemeDesignator, t.CodeValue, t.CodeMeaning) == ("99SEGPIPE", _fnv("mystery_structure"),
                                                                      "mystery_structure")
    assert seg.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99SEGPIPE"
    m = by["liver"].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
    assert m.CodeMeaning == "Left"                       # the manifest's, not the table's (no modifier)
    st, err, _ = _write(deflated, small, ours, codes_json=json.dumps(codes), deflate=1)
    assert st == 0, err
    d = pydicom.dcmread(deflated)
    assert d.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    assert os.path.getsize(deflated) * 5 < os.path.getsize(out)
    src, uids = _sources()
    for x in (seg, d):
        segs = {int(s.SegmentNumber): s for s in x.SegmentSequence}
        assert np.array_equal(_seg_volume(x, segs, ours, lab.shape, src, uids), small)
    st, err, _ = _write(os.path.join(tmp, "long.dcm"), small, ours, description="x" * 65)
    assert st != 0 and "at most 64 characters" in err and not os.path.exists(os.path.join(tmp, "long.dcm")), err
    pkg = os.path.join(tmp, "pkg")
    shutil.copytree(sp.DEMO, pkg)
    man = json.load(open(os.path.join(pkg, "segpipe.json")))
    man["dicom_codes"] = {"liver": {"category": ["SCT", "123037004", "Anatomical Structure"],
                                    "type": ["SCT", "10200004"]}}
    json.dump(man, open(os.path.join(pkg, "segpipe.json"), "w"))
    p = sp.run("models", pkg)
    assert p.returncode != 0 and "dicom_codes" in p.stderr and "liver" in p.stderr, p.stderr
    man["dicom_codes"]["liver"]["type"].append("Liver")
    json.dump(man, open(os.path.join(pkg, "segpipe.json"), "w"))
    p = sp.run("models", pkg)
    assert p.returncode == 0, p.stderr


def test_dicom_source_without_uids(tmp):
    """A series whose slices carry no SOP instance UID at all (neither in
    the dataset nor in the file meta): the SEG and RTSTRUCT are still
    written with the right masks, reference no images, and a warning says
    that viewers will not attach them."""
    d = os.path.join(tmp, "nouid")
    os.makedirs(d)
    for i, f in enumerate(sorted(os.listdir(SERIES))):
        ds = pydicom.dcmread(os.path.join(SERIES, f))
        ds.SOPInstanceUID = ""
        ds.file_meta.MediaStorageSOPInstanceUID = ""
        ds.save_as(os.path.join(d, f"s{i}.dcm"), write_like_original=True)
    lab, names = _ts()
    out, rt_out = os.path.join(tmp, "s.dcm"), os.path.join(tmp, "r.dcm")
    st, err, warn = _write(out, lab, names, folder=d)
    assert st == 0, err
    assert any("no SOP instance UID" in w for w in warn), warn
    seg = pydicom.dcmread(out)
    assert "ReferencedSeriesSequence" not in seg
    src, _ = _sources()
    segs = {int(s.SegmentNumber): s for s in seg.SegmentSequence}
    assert np.array_equal(_seg_volume(seg, segs, names, lab.shape, src, None), lab)
    st, err, warn = _write(rt_out, lab, names, kind=1, folder=d)
    assert st == 0 and any("no SOP instance UID" in w for w in warn), (err, warn)
    rt = pydicom.dcmread(rt_out)
    assert all("ContourImageSequence" not in c for rc in rt.ROIContourSequence for c in rc.ContourSequence)


@sp.realistic("the 512x512 DICOM series zipped through /v1/ct and /v1/jobs, read by pydicom and dciodvfy "
              "(test_dicom_cli_outputs: the writers)")
def test_dicom_from_the_service(tmp):
    """`segpipe serve`: POST a zip of the series to /v1/ct?output=dicom-seg ->
    200 with the DICOM-SEG itself (application/dicom; pydicom and dciodvfy
    read it, every slice referenced); a job with output=dicom-rtstruct ->
    its labels_url gives the RTSTRUCT with the same structures; a NIfTI
    body with output=dicom-seg -> 422, an unknown output -> 400."""
    import io, zipfile
    from test_server import Server, http
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(os.listdir(SERIES)):
            z.write(os.path.join(SERIES, f), f)
    body = buf.getvalue()
    srv = Server("--model", f"demo={sp.DEMO}")
    try:
        code, jb, _ = http(srv.url + "/v1/jobs?model=demo&output=dicom-rtstruct", body, "application/zip")
        assert code == 202, jb
        job = json.loads(jb)
        code, seg_bytes, hdr = http(srv.url + "/v1/ct?model=demo&output=dicom-seg", body, "application/zip",
                                    timeout=600)
        assert code == 200 and hdr["Content-Type"] == "application/dicom", (code, seg_bytes[:300])
        path = os.path.join(tmp, "svc.dcm")
        open(path, "wb").write(seg_bytes)
        assert _dciodvfy(path) == []
        seg = pydicom.dcmread(path)
        assert seg.Modality == "SEG" and seg.SeriesDescription == "segpipe demo"
        _, uids = _sources()
        refd = [r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
        assert sorted(refd) == sorted(uids)
        for _ in range(10):   # long polls of at most 60 s
            st = json.loads(http(srv.url + job["status_url"] + "?wait=60", timeout=90)[1])
            if st["state"] in ("done", "failed"):
                break
        assert st["state"] == "done" and "dicom_rtstruct_url" in st, st
        code, rt_bytes, hdr = http(srv.url + st["dicom_rtstruct_url"])
        assert code == 200 and hdr["Content-Type"] == "application/dicom"
        rt = pydicom.dcmread(pydicom.filebase.DicomBytesIO(rt_bytes))
        assert rt.Modality == "RTSTRUCT"
        assert sorted(r.ROIDescription for r in rt.StructureSetROISequence) == \
            sorted(s.SegmentDescription for s in seg.SegmentSequence)
        nii = open(os.path.join(sp.CTDIR, "example_ct_sm.nii.gz"), "rb").read()
        code, b, _ = http(srv.url + "/v1/ct?model=demo&output=dicom-seg", nii, "application/octet-stream")
        assert code == 422 and b"needs a DICOM series" in b, (code, b)
        code, b, _ = http(srv.url + "/v1/ct?model=demo&output=png", body, "application/zip")
        assert code == 400 and b"query parameter 'output' must be" in b, (code, b)
    finally:
        rc, err = srv.stop()
    assert rc == 0, err


class Contours(C.Structure):
    _fields_ = [("n", C.c_int), ("start", C.POINTER(C.c_int)), ("xy", C.POINTER(C.c_double))]


def test_mask_contours_exact(tmp):
    """sp_mask_contours (the RTSTRUCT's outlines) on 300 random masks
    (sparse to dense: single pixels, diagonal neighbours, holes, islands in
    holes, pixels on the border): filled at the pixel centres by
    matplotlib, with the even-odd rule and with the nonzero rule (winding
    from each loop's signed area), every mask comes back exactly; every
    loop is closed and has no repeated point; an empty mask has no loop."""
    from matplotlib.path import Path
    L = sp.lib()
    L.sp_mask_contours.argtypes = [C.c_void_p, C.c_int, C.c_int, C.POINTER(Contours)]
    L.sp_contours_free.argtypes = [C.POINTER(Contours)]
    rng = np.random.default_rng(7)
    for t in range(300):
        h, w = int(rng.integers(1, 24)), int(rng.integers(1, 24))
        m = (rng.random((h, w)) < rng.choice([0.05, 0.3, 0.5, 0.8, 0.97])).astype(np.uint8)
        if t == 0:
            m[:] = 0
        c = Contours()
        assert L.sp_mask_contours(sp.ptr(np.ascontiguousarray(m)), w, h, C.byref(c)) == 0
        cc, rr = np.meshgrid(np.arange(w), np.arange(h))
        centres = np.stack([cc.ravel(), rr.ravel()], 1)
        odd = np.zeros(h * w, bool)
        winding = np.zeros(h * w, int)
        for i in range(c.n):
            a, b = c.start[i], c.start[i + 1]
            pts = np.array([[c.xy[2 * k], c.xy[2 * k + 1]] for k in range(a, b)])
            assert len(pts) >= 4 and len({tuple(p) for p in pts}) == len(pts), pts
            x, y = pts[:, 0], pts[:, 1]
            area = 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)
            inside = Path(pts).contains_points(centres)
            odd ^= inside
            winding += np.sign(area).astype(int) * inside
        if not m.any():
            assert c.n == 0
        assert np.array_equal(odd.reshape(h, w), m > 0), (t, m)
        assert np.array_equal((winding != 0).reshape(h, w), m > 0), (t, m)
        L.sp_contours_free(C.byref(c))
