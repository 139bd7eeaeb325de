"""DICOM series in (src/io/dicom.cc, GDCM): the ../shared example series
(JPEG 2000 lossless) equals dcm2niix's NIfTI (voxels and affine after
nibabel's canonical reorientation); the series decompressed by pydicom
(explicit VR little endian) under shuffled file names gives the same volume;
`segpipe ct FOLDER` gives the labels of `segpipe ct dcm2niix.nii.gz`; two
series, a missing slice, a duplicate, a truncated file and a non-DICOM file
get clear answers."""
import json, os, random, re, shutil, subprocess
import numpy as np
import nibabel as nib
import pydicom
from pydicom.uid import ExplicitVRLittleEndian
import sp

SERIES = os.path.join(sp.CTDIR, "example_ct_dicom")


def canonical(data, affine):
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data, np.float32), affine))
    return img.get_fdata(), img.affine


def dcm2niix(tmp, folder):
    out = os.path.join(tmp, "d2n")
    os.makedirs(out, exist_ok=True)
    subprocess.run(["dcm2niix", "-z", "y", "-o", out, "-f", "ref", folder], check=True, capture_output=True)
    return os.path.join(out, "ref.nii.gz")


def ours(folder):
    data, info = sp.read_volume(folder)
    return canonical(data, sp.affine_of(info))


def test_dicom_series_equals_dcm2niix(tmp):
    ref = nib.load(dcm2niix(tmp, SERIES))
    a, aa = canonical(ref.get_fdata(), ref.affine)
    b, ba = ours(SERIES)
    assert a.shape == b.shape == (512, 512, 20)
    assert np.allclose(aa, ba, atol=1e-3), (aa, ba)
    assert np.array_equal(a, b)


def _copy_as(tmp, name, transform):
    """the series rewritten by pydicom (transform(ds) -> ds), shuffled names"""
    d = os.path.join(tmp, name)
    os.makedirs(d)
    files = sorted(os.listdir(SERIES))
    names = [f"x{i:03d}.dcm" for i in range(len(files))]
    random.Random(5).shuffle(names)
    for f, n in zip(files, names):
        ds = pydicom.dcmread(os.path.join(SERIES, f))
        transform(ds).save_as(os.path.join(d, n), write_like_original=False)
    return d


def _plain(ds):
    """decompressed; the anonymised example keeps its SOP UIDs only in the
    file meta, which GDCM's writer needs in the dataset"""
    ds.decompress()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    return ds


def _gdcmconv(tmp, plain, name, option):
    """every slice of folder plain re-encoded by GDCM's gdcmconv (Debian libgdcm-tools)"""
    d = os.path.join(tmp, name)
    os.makedirs(d)
    for f in os.listdir(plain):
        subprocess.run(["gdcmconv", option, os.path.join(plain, f), os.path.join(d, f)], check=True,
                       capture_output=True)
    return d


def test_dicom_reencoded_and_shuffled(tmp):
    """The series decompressed (pydicom, explicit VR little endian), then
    re-encoded as RLE lossless, JPEG-LS lossless and deflated explicit VR
    little endian (gdcmconv), under shuffled file names: the same volume
    every time (a deflated series was once refused as "truncated": its
    positions are in the inflated stream, not the file)."""
    ref, ra = ours(SERIES)
    plain = _copy_as(tmp, "plain", _plain)
    variants = {"plain": (plain, ExplicitVRLittleEndian)}
    if shutil.which("gdcmconv"):
        variants["rle"] = (_gdcmconv(tmp, plain, "rle", "--rle"), "1.2.840.10008.1.2.5")
        variants["jpegls"] = (_gdcmconv(tmp, plain, "jpegls", "--jpegls"), "1.2.840.10008.1.2.4.80")
        variants["deflated"] = (_gdcmconv(tmp, plain, "deflated", "--deflated"), "1.2.840.10008.1.2.1.99")
    assert len(variants) == 4 or not shutil.which("gdcmconv")
    for name, (d, ts) in variants.items():
        got, ga = ours(d)
        assert np.allclose(ga, ra, atol=1e-4) and np.array_equal(got, ref), name
        assert pydicom.dcmread(os.path.join(d, os.listdir(d)[0])).file_meta.TransferSyntaxUID == ts, name


@sp.realistic("dcm2niix's volume of the 512x512 series as the reference (test_dicom_reencoded_and_shuffled: the "
              "reader)")
def test_ct_from_dicom_equals_nifti_path(tmp):
    nii = dcm2niix(tmp, SERIES)
    a, b = sp.ct_run(SERIES), os.path.join(tmp, "b.nii.gz")   # the series' run: once per test run
    sp.run("ct", nii, "-o", b, "-q", "--no-passport", check=True)
    la, aa = canonical(nib.load(a).get_fdata(), nib.load(a).affine)
    lb, ab = canonical(nib.load(b).get_fdata(), nib.load(b).affine)
    assert np.allclose(aa, ab, atol=1e-3) and np.array_equal(la, lb)
    assert len(np.unique(la)) > 5


def test_dicom_bad_series(tmp):
    files = sorted(os.listdir(SERIES), key=lambda f: pydicom.dcmread(os.path.join(SERIES, f),
                                                                      stop_before_pixels=True).ImagePositionPatient[2])

    def case(name, keep, extra=None, read_only=False):
        d = os.path.join(tmp, name)
        os.makedirs(d)
        for f in keep:
            shutil.copy(os.path.join(SERIES, f), d)
        if extra:
            extra(d)
        if read_only:   # a series that reads: the reader is what is tested, not the network on 512x512
            return sp.run("resample", d, "-o", os.path.join(tmp, name + ".nii.gz"), "--shape", "8,8,4")
        return sp.run("ct", d, "-o", os.path.join(tmp, name + ".nii.gz"), "-q")

    p = case("gap", files[:8] + files[9:])
    assert p.returncode == 3 and "non-uniform slice spacing" in p.stderr, p.stderr
    # the gap named is the one around the missing slice, not the first ordinary pair
    assert f"between {files[7]} and {files[9]}" in p.stderr and "a missing slice?" in p.stderr, p.stderr
    p = case("dup", files, lambda d: shutil.copy(os.path.join(SERIES, files[3]), os.path.join(d, "copy.dcm")))
    assert p.returncode == 3 and "duplicate" in p.stderr, p.stderr

    def truncate(d):
        path = os.path.join(d, files[5])
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) // 2])
    p = case("trunc", files, truncate)
    assert p.returncode == 3 and "DICOM" in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(tmp, "trunc.nii.gz"))
    p = case("text", files, lambda d: open(os.path.join(d, "notes.txt"), "w").write("not dicom"), read_only=True)
    assert p.returncode == 0, p.stderr   # non-DICOM files are skipped

    def second_series(d):
        for f in files[:4]:
            ds = pydicom.dcmread(os.path.join(SERIES, f))
            ds.SeriesInstanceUID = "1.2.3.4.5"
            ds.save_as(os.path.join(d, "b" + f))
    p = case("two", files, second_series)
    assert p.returncode == 3 and "2 series" in p.stderr and "1.2.3.4.5 (4 slices)" in p.stderr, p.stderr
    env = dict(sp.run_env(), SEGPIPE_DICOM_SERIES="1.2.3.4.5")
    r = subprocess.run([sp.SEGPIPE, "resample", os.path.join(tmp, "two"), "-o", os.path.join(tmp, "t.nii.gz"),
                        "--shape", "8,8,4"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    p = sp.run("ct", os.path.join(tmp, "two"), "-o", os.path.join(tmp, "t2.nii.gz"), "-q", "--no-passport",
               "--series", "1.2.3.4.5")
    assert p.returncode == 0 and nib.load(os.path.join(tmp, "t2.nii.gz")).shape == (512, 512, 4), p.stderr
    p = case("empty", [])
    assert p.returncode == 3 and "is an empty folder" in p.stderr, p.stderr   # named before any reading


def _zip(tmp, name, members):
    import zipfile
    path = os.path.join(tmp, name)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for arc, data in members:
            z.writestr(arc, data)
    return path


@sp.realistic("the 512x512 series zipped, as a file and as a /v1/ct body, against the folder's labels "
              "(test_dicom_zip_refusals: the zip reader and its refusals)")
def test_dicom_zip_file_and_upload(tmp):
    """A zip of the series (paths inside ignored: entries are unpacked under
    numbered names into a private folder) as a file and as a /v1/ct body:
    the folder's volume and labels; nothing is left in the temp folder."""
    from test_server import Server, http
    files = sorted(os.listdir(SERIES))
    z = _zip(tmp, "series.zip", [(f"../../evil/{f}", open(os.path.join(SERIES, f), "rb").read()) for f in files])
    tdir = os.path.join(tmp, "tmpdir")
    os.makedirs(tdir)
    env = dict(sp.run_env(), TMPDIR=tdir)
    a, b = sp.ct_run(SERIES), os.path.join(tmp, "b.nii.gz")   # the folder's labels: once per test run
    r = subprocess.run([sp.SEGPIPE, "ct", z, "-o", b, "-q", "--no-passport"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.asanyarray(nib.load(a).dataobj), np.asanyarray(nib.load(b).dataobj))
    assert [f for f in os.listdir(tdir) if f.startswith("segpipe-dicom-")] == []
    assert not os.path.exists(os.path.join(tmp, "..", "evil"))
    srv = Server("--model", f"demo={sp.DEMO}")
    try:
        code, body, _ = http(srv.url + "/v1/ct?model=demo&labels=1", open(z, "rb").read(), "application/zip")
        ans = json.loads(body)
        assert code == 200 and ans["passport"]["scan"]["shape"] == [512, 512, 20], body[:300]
    finally:
        rc, err = srv.stop()
    assert rc == 0, err


def test_dicom_zip_refusals(tmp):
    """Three slices of the series zipped under ../../evil/ names read as the
    folder of those slices (entries unpacked under numbered names into a
    private folder, nothing written outside it); a zip bomb, a damaged zip
    and a zip without DICOM get clear refusals from the CLI and /v1/ct;
    nothing is left in the temp folder."""
    from test_server import Server, http
    files = sorted(os.listdir(SERIES))[:3]
    z = _zip(tmp, "series.zip", [(f"../../evil/{f}", open(os.path.join(SERIES, f), "rb").read()) for f in files])
    folder = os.path.join(tmp, "three")
    os.makedirs(folder)
    for f in files:
        shutil.copy(os.path.join(SERIES, f), folder)
    tdir = os.path.join(tmp, "tmpdir")
    os.makedirs(tdir)
    env = dict(sp.run_env(), TMPDIR=tdir)
    vols = []
    for src in (folder, z):
        out = os.path.join(tmp, f"v{len(vols)}.nii.gz")
        r = subprocess.run([sp.SEGPIPE, "resample", src, "-o", out, "--spacing", "4,4,4"], capture_output=True,
                           text=True, env=env)
        assert r.returncode == 0, r.stderr
        vols.append(nib.load(out))
    assert np.array_equal(np.asanyarray(vols[0].dataobj), np.asanyarray(vols[1].dataobj))
    assert np.allclose(vols[0].affine, vols[1].affine)
    ours = lambda: [f for f in os.listdir(tdir) if f.startswith("segpipe-dicom-")]
    assert ours() == [] and not os.path.exists(os.path.join(tmp, "..", "evil"))
    bomb = _zip(tmp, "bomb.zip", [("x.dcm", b"\0" * (300 << 20))])
    damaged = os.path.join(tmp, "damaged.zip")
    data = open(z, "rb").read()
    open(damaged, "wb").write(data[:len(data) // 2])
    empty = _zip(tmp, "notes.zip", [("readme.txt", b"no images here")])
    for bad, text in ((bomb, "more than"), (damaged, "zip"), (empty, "no DICOM image slices")):
        r = subprocess.run([sp.SEGPIPE, "ct", bad, "-o", os.path.join(tmp, "x.nii.gz"), "-q"], capture_output=True,
                           text=True, env=env)
        assert r.returncode == 3 and text in r.stderr, (bad, r.returncode, r.stderr)
        assert not os.path.exists(os.path.join(tmp, "x.nii.gz"))
    assert ours() == []
    srv = Server("--model", f"demo={sp.DEMO}")
    try:
        code, body, _ = http(srv.url + "/v1/ct?model=demo", open(empty, "rb").read(), "application/zip")
        assert code == 422 and b"no DICOM image slices" in body, (code, body)
    finally:
        rc, err = srv.stop()
    assert rc == 0, err


def test_pydicom_test_files_never_crash(tmp):
    """Every file of pydicom's test data (Debian python3-pydicom: malformed,
    truncated, big endian, no meta, RLE, JPEG, multi-frame, RT and SR
    objects...) as a one-file series: a volume (exit 0) or a clear input
    error (exit 3) naming the problem, never a crash."""
    data = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
    files = sorted(os.path.join(data, f) for f in os.listdir(data) if os.path.isfile(os.path.join(data, f)))
    assert len(files) > 40
    # and what fuzz_dicom found (tests/fuzz/regressions-dicom: a JPEG-LS stream
    # GDCM leaks on, an element declaring 3.4 GB in a 7.8 KB file)
    reg = os.path.join(sp.ROOT, "tests", "fuzz", "regressions-dicom")
    files += sorted(os.path.join(reg, f) for f in os.listdir(reg))
    codes = {}
    for path in files:
        f = os.path.basename(path)
        d = os.path.join(tmp, f + ".d")
        os.makedirs(d)
        shutil.copy(path, d)
        p = sp.run("resample", d, "-o", os.path.join(tmp, "out.nii.gz"), "--spacing", "4,4,4")
        assert p.returncode in (0, 3), (f, p.returncode, p.stderr)
        assert p.returncode == 0 or p.stderr.strip(), f
        assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, (f, p.stderr)
        codes[f] = p.returncode
    assert codes["CT_small.dcm"] == 0 and codes["MR_small_RLE.dcm"] == 0
    assert codes["MR_truncated.dcm"] == 3 and codes["rtplan.dcm"] == 3
    assert codes["huge-element-length.dcm"] == 3


def test_gdcm_reader_opened_on_first_series(tmp):
    """GDCM (its data dictionary is built when the library is mapped) lives in
    libsegpipe_gdcm.so, opened when a series is first read (src/io/gdcm_load.c):
    the CLI and the library do not name it as needed, the reader does; the
    other tests of this module read series through it."""
    def needed(f):
        d = subprocess.run(["readelf", "-d", os.path.join(sp.BUILD, f)], capture_output=True, text=True, check=True)
        return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", d.stdout)
    for f in ("segpipe", "libsegpipe.so"):
        assert not [n for n in needed(f) if n.startswith("libgdcm")], (f, needed(f))
    assert [n for n in needed("libsegpipe_gdcm.so") if n.startswith("libgdcmMSFF")]
