"""The journey of a TotalSegmentator user trying `segpipe ct` / `mri` the
first time (issue 37): each wrong input named before any work with its exit
code and nothing written; per-command help; missing values; TotalSegmentator
spellings accepted or answered; --inputs lines from the list's folder; the
output folder made; warnings for inputs that run but look wrong; provenance
in passport.json checked against hashlib and nibabel."""
import datetime, gzip, hashlib, io, json, os, shutil
import numpy as np
import nibabel as nib
from PIL import Image
import sp

CT = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
SERIES = os.path.join(sp.CTDIR, "example_ct_dicom")


def _refused(tmp, args, code, *msgs):
    """`segpipe ct ARGS -o tmp/new/x.nii.gz` exits `code`, says every msg on
    stderr, names nothing twice and writes nothing (not even the folder)."""
    out = os.path.join(tmp, "new", "x.nii.gz")
    r = sp.run("ct", *args, "-o", out, timeout=120)
    assert r.returncode == code, (args, r.returncode, r.stderr)
    for m in msgs:
        assert m in r.stderr, (args, m, r.stderr)
    assert r.stdout == "" and not os.path.exists(os.path.join(tmp, "new")), (args, r.stdout)
    return r.stderr


def _photo(fmt):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, fmt)
    return buf.getvalue()


def test_journey_wrong_inputs_named_before_work(tmp):
    files = {
        "photo.png": (_photo("PNG"), "is a PNG photo"),
        "photo.jpg": (_photo("JPEG"), "is a JPEG photo"),
        "photo.heic": (b"\0\0\0\x18ftypheic" + b"\0" * 40, "is a HEIC/AVIF photo"),
        "notes.nii.gz": (gzip.compress(b"not a volume\n" * 50), "gzip-compressed but holds no NIfTI header"),
        "empty.nii": (b"", "is empty"),
    }
    for name, (data, msg) in files.items():
        p = os.path.join(tmp, name)
        open(p, "wb").write(data)
        err = _refused(tmp, [p], 3, msg)
        assert err.count(p) == 1, err
        if "photo" in msg:
            assert "segpipe masks" in err and "segpipe classify" in err
    one = os.path.join(SERIES, sorted(os.listdir(SERIES))[0])
    _refused(tmp, [one], 3, "is a single DICOM file", "give the folder")
    # -i, TotalSegmentator's spelling of the input, reaches the same check
    _refused(tmp, ["-i", os.path.join(tmp, "photo.png")], 3, "is a PNG photo")


def test_journey_folders_never_searched_silently(tmp):
    """A folder of NIfTIs with a DICOM series in a subfolder (segmented
    silently before), a folder of NIfTIs, an empty folder: refused, named."""
    top = os.path.join(tmp, "study")
    os.makedirs(top)
    shutil.copy(CT, os.path.join(top, "a.nii.gz"))
    shutil.copy(CT, os.path.join(top, "b.nii.gz"))
    _refused(tmp, [top], 3, "folder of 2 NIfTI files", "--inputs")
    shutil.copytree(SERIES, os.path.join(top, "dicom"))
    _refused(tmp, [top], 3, "holds no DICOM file itself", "subfolder dicom")
    os.makedirs(os.path.join(tmp, "void"))
    _refused(tmp, [os.path.join(tmp, "void")], 3, "empty folder")


def test_journey_2d_slice_refused(tmp):
    p = os.path.join(tmp, "slice.nii.gz")
    nib.save(nib.Nifti1Image(np.full((64, 64, 1), -500, np.int16), np.diag([0.8, 0.8, 3, 1])), p)
    _refused(tmp, [p], 3, "64x64x1: a single 2D slice", "3D volumes")


def test_journey_help_and_options(tmp):
    ct, mri = sp.run("ct", "--help"), sp.run("mri", "--help")
    assert ct.returncode == 0 and mri.returncode == 0
    assert ct.stdout.startswith("usage: segpipe ct") and mri.stdout.startswith("usage: segpipe mri")
    assert "demo-ct" not in mri.stdout and "--model DIR" in mri.stdout and "HU" not in mri.stdout.split("\n")[0]
    cases = [
        (["ct", CT, "-o", "x.nii.gz", "--threads"], "--threads needs a value (N)"),
        (["ct", "--model"], "--model needs a value"),
        (["ct", CT, "--threads", "-o", "x.nii.gz"], "--threads needs a value"),
        (["passport", "--ct"], "--ct needs a value"),
        (["mri", CT, "--tile_bach", "2"], "did you mean --tile-batch?"),
        (["ct", CT, "-o", "x.nii.gz", "--fast"], "3 mm model"),
        (["ct", CT, "-o", "x.nii.gz", "--ml"], "multilabel file by default"),
        (["ct", CT, "-o", "x.nii.gz", "-ta", "total"], "the command and the package choose the task"),
        (["ct", CT, "-o", "x.nii.gz", "--bogus"], "unknown option --bogus"),
        (["ct", CT, "-o", "x.nii.gz", "--device", "gpu:x"], "--device is cpu, cuda, cuda:N, gpu or gpu:N"),
        (["ct", CT, CT, "-o", "x.nii.gz"], "expected one INPUT"),
        (["ct", "-o", "x.nii.gz"], "missing INPUT"),
    ]
    for args, msg in cases:
        r = sp.run(*args, timeout=60)
        assert r.returncode == 2 and msg in r.stderr, (args, r.returncode, r.stderr)
        assert "see 'segpipe %s --help'" % args[0] in r.stderr, r.stderr
    assert not os.path.exists("x.nii.gz")


def test_journey_totalsegmentator_spellings_reach_the_run(tmp):
    """--roi_subset a b c (TotalSegmentator's list) and --device gpu reach
    the library: an unknown structure in the list is the library's refusal,
    gpu is read as cuda (not 'unknown device')."""
    out = os.path.join(tmp, "x.nii.gz")
    r = sp.run("ct", CT, "-o", out, "--roi_subset", "liver", "spleen", "no_such_organ", timeout=120)
    assert r.returncode == 2 and "no_such_organ" in r.stderr and not os.path.exists(out), r.stderr
    r = sp.run("ct", CT, "-o", out, "--device", "gpu", timeout=120)
    assert "unknown device" not in r.stderr and "'gpu'" not in r.stderr, r.stderr
    if r.returncode == 0:   # a machine with a GPU: it ran there
        return
    assert r.returncode in (2, 5) and "device 'cuda'" in r.stderr and not os.path.exists(out), r.stderr


def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_journey_warnings_provenance_and_new_folder(tmp):
    """A CT whose qform and sform codes are 0 runs (as before) but is warned
    about on stderr and in the passport; the missing output folder is made;
    the provenance names the input and model with checksums hashlib agrees
    with, the arguments, the versions and today's date."""
    im = nib.load(CT)
    src = os.path.join(tmp, "noorient.nii.gz")
    img = nib.Nifti1Image(np.asanyarray(im.dataobj), None)
    img.header.set_qform(None, code=0)
    img.header.set_sform(None, code=0)
    img.header.set_zooms(im.header.get_zooms())
    nib.save(img, src)
    out = os.path.join(tmp, "made", "for", "it", "x.nii.gz")
    r = sp.run("ct", src, "-o", out, "-t", "2", check=True, timeout=600)
    assert "warning: %s: no orientation" % src in r.stderr, r.stderr
    assert os.path.exists(out) and nib.load(out).shape == im.shape
    pv = json.load(open(os.path.join(os.path.dirname(out), "x.passport.json")))["provenance"]
    assert pv["input"] == {"name": "noorient.nii.gz", "size_bytes": os.path.getsize(src), "sha256": _sha256(src)}
    lines = "".join(f"{_sha256(os.path.join(sp.DEMO, f))}  {f}\n" for f in sorted(os.listdir(sp.DEMO))
                    if os.path.isfile(os.path.join(sp.DEMO, f)) and not f.endswith(".opt.ort"))
    assert pv["model"]["name"] == "demo-ct" and pv["model"]["sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert pv["command"] == "ct" and pv["arguments"] == [src, "-o", out, "-t", "2"]
    assert pv["segpipe_version"] and pv["onnxruntime_version"]
    when = datetime.datetime.strptime(pv["date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) < 3600
    assert len(pv["warnings"]) == 1 and "no orientation" in pv["warnings"][0]


def test_journey_label_map_given_to_ct_warned(tmp):
    im = nib.load(CT)
    p = os.path.join(tmp, "labels.nii.gz")
    nib.save(nib.Nifti1Image((np.asanyarray(im.dataobj) > 200).astype(np.uint8), im.affine), p)
    out = os.path.join(tmp, "x.nii.gz")
    r = sp.run("ct", p, "-o", out, "--no-passport", timeout=600)
    assert r.returncode == 0 and "looks like a label map" in r.stderr, r.stderr
    # (a real CT runs without a warning: test_python_installed_without_variables)
    # -q hides tables and notes, never a warning (a script's log keeps it)
    r = sp.run("ct", os.path.join(sp.SHARED, "data", "mri", "tinyT1.nii.gz"), "-o", out, "--no-passport", "-q",
               timeout=600)
    assert r.returncode == 0 and "an MRI? use segpipe mri" in r.stderr and "label map" not in r.stderr, r.stderr


def test_journey_inputs_relative_to_the_list(tmp):
    """--inputs: relative lines are read from the list's folder, whatever
    the working directory; a failing line is named once."""
    d = os.path.join(tmp, "lists", "cases")
    os.makedirs(d)
    shutil.copy(CT, os.path.join(d, "one.nii.gz"))
    lst = os.path.join(tmp, "lists", "all.txt")
    open(lst, "w").write("cases/one.nii.gz\ncases/missing.nii.gz\n")
    out = os.path.join(tmp, "out")
    r = sp.run("ct", "--inputs", lst, "-o", out, timeout=600)
    assert r.returncode == 6, r.stderr
    missing = os.path.join(tmp, "lists", "cases", "missing.nii.gz")
    assert r.stderr.count("missing.nii.gz") == 1 and missing in r.stderr, r.stderr
    assert os.path.exists(os.path.join(out, "one.nii.gz"))
    rep = json.load(open(os.path.join(out, "shard-0-of-1.json")))
    assert [e["state"] for e in rep["inputs"]] == ["done", "failed"]
