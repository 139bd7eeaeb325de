"""The CLI end to end: `segpipe ct` on the real example CTs with the bundled
demo model (Dice against TotalSegmentator's reference), geometry of the
outputs, invariance to the input's orientation, bad inputs and their exit
codes, `segpipe model check`, `segpipe version`."""
import gzip, json, os, shutil
import numpy as np
import nibabel as nib
import sp


def test_version_and_help(tmp):
    p = sp.run("version", check=True)
    assert "ONNX Runtime 1." in p.stdout and "CPUExecutionProvider" in p.stdout
    assert sp.run("--help").returncode == 0
    assert sp.run("nope").returncode == 2
    assert sp.run("ct", "--bogus").returncode == 2
    assert sp.run("ct", "x.nii.gz").returncode == 2        # no -o


def _ct(tmp, src, extra=()):
    out = os.path.join(tmp, "seg.nii.gz")
    p = sp.run("ct", src, "-o", out, "--report", os.path.join(tmp, "report.json"), *extra, check=True)
    return out, p


def test_ct_demo_model_dice_example_sm(tmp):
    """Training case of the demo model (see models/demo-ct/README.md): the
    floor (mean Dice >= 0.90, every structure >= 0.70) sits below what the
    model reached in training (mean 0.94) and well above chance."""
    src = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
    out, p = _ct(tmp, src)
    assert "inference" in p.stdout and "passport" in p.stdout
    # the stage table in a user's words; the report keeps the keys
    rows = {l.split("  ")[0].strip(): l for l in p.stdout.splitlines() if "%" in l}
    assert "labels back" in rows and "labels onto the scan's grid" in rows["labels back"], p.stdout
    assert "the network (ONNX Runtime)" in rows["inference"] and not any("_" in k for k in rows), p.stdout
    assert "labels_back" in json.load(open(os.path.join(tmp, "report.json")))["seconds"]
    got = nib.load(out)
    ref = nib.load(os.path.join(sp.CTDIR, "example_seg_fast.nii.gz"))
    assert np.allclose(got.affine, nib.load(src).affine) and got.shape == ref.shape
    assert got.get_data_dtype() == np.uint8
    g, r = np.asanyarray(got.dataobj), np.asanyarray(ref.dataobj)
    d = [sp.dice(g == l, r == l) for l in np.unique(r)[1:]]
    assert np.mean(d) >= 0.90 and min(d) >= 0.70, (np.mean(d), min(d))
    rep = json.load(open(os.path.join(tmp, "report.json")))
    assert rep["input"]["shape"] == [122, 101, 30] and rep["seconds"]["inference"] > 0
    pas = json.load(open(os.path.join(tmp, "seg.passport.json")))
    assert pas["scan"]["structures_found"] == len(np.unique(g)) - 1
    st = json.load(open(os.path.join(tmp, "seg.statistics.json")))
    assert len(st) == 117


@sp.realistic("the full 112-slice CT against TotalSegmentator's labels (the other test_cli tests: the small CT)")
def test_ct_full_example_ct(tmp):
    """The full 112-slice example CT (int32); its last 30 slices are the
    labelled crop: Dice there (mean >= 0.80: the model sees a different
    context than in training)."""
    src = os.path.join(sp.CTDIR, "example_ct.nii.gz")
    out, _ = _ct(tmp, src, ("--tile-batch", "2"))
    g = np.asanyarray(nib.load(out).dataobj)[:, :, 82:112]
    r = np.asanyarray(nib.load(os.path.join(sp.CTDIR, "example_seg_fast.nii.gz")).dataobj)
    d = [sp.dice(g == l, r == l) for l in np.unique(r)[1:] if (r == l).sum() > 200]
    assert np.mean(d) >= 0.80, np.mean(d)


def test_ct_orientation_invariance(tmp):
    """The same CT stored in other orientations (data and affine changed
    consistently) gives labels identical to the original's after undo."""
    src = nib.load(os.path.join(sp.CTDIR, "example_ct_sm.nii.gz"))
    base = np.asanyarray(nib.load(sp.ct_run(src.get_filename())).dataobj).copy()   # the run's shared CLI run
    for ornt in ([[1, -1], [0, 1], [2, -1]], [[2, 1], [0, -1], [1, 1]]):
        ornt = np.array(ornt)
        moved = src.as_reoriented(ornt)
        p = os.path.join(tmp, "moved.nii.gz")
        nib.save(moved, p)
        out, _ = _ct(tmp, p, ("--no-passport",))
        got = nib.load(out)
        assert np.allclose(got.affine, moved.affine)
        back = got.as_reoriented(nib.orientations.io_orientation(got.affine))
        assert np.array_equal(np.asanyarray(back.dataobj), base)


def test_ct_split_layout(tmp):
    src = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
    d = os.path.join(tmp, "segs")
    png = os.path.join(tmp, "p.png")
    r = sp.run("ct", src, "-o", d + "/", "--split", "--preview", png, check=True)   # "segs/" names the folder
    assert f"passport: {d}/passport.json\n" in r.stdout and f"preview: {png}\n" in r.stdout, r.stdout
    files = os.listdir(d)
    assert "liver.nii.gz" in files and "statistics.json" in files and "passport.json" in files
    assert len([f for f in files if f.endswith(".nii.gz")]) == 117
    liver = np.asanyarray(nib.load(os.path.join(d, "liver.nii.gz")).dataobj)
    assert set(np.unique(liver)) <= {0, 1} and liver.sum() > 1000


def test_ct_bad_inputs(tmp):
    out = os.path.join(tmp, "o.nii.gz")
    cases = []
    p = os.path.join(tmp, "missing.nii.gz")
    cases.append((p, 6, "cannot open"))
    p = os.path.join(tmp, "text.nii"); open(p, "w").write("hello, not a volume\n" * 30)
    cases.append((p, 3, "is not a NIfTI file"))   # named before any reading (issue 37)
    raw = open(os.path.join(sp.CTDIR, "example_ct_sm.nii.gz"), "rb").read()
    p = os.path.join(tmp, "trunc.nii.gz"); open(p, "wb").write(raw[: len(raw) // 2])
    cases.append((p, 3, ""))
    full = gzip.decompress(raw)
    p = os.path.join(tmp, "short.nii"); open(p, "wb").write(full[:-1000])
    cases.append((p, 3, "but the file holds"))
    p = os.path.join(tmp, "bomb.nii.gz")
    hdr = bytearray(full[:352])
    hdr[42:48] = np.array([30000, 30000, 30000], "<i2").tobytes()
    open(p, "wb").write(gzip.compress(bytes(hdr) + b"\0" * 1000))
    cases.append((p, 3, "over the limit"))
    for path, code, msg in cases:
        r = sp.run("ct", path, "-o", out)
        assert r.returncode == code, (path, r.returncode, r.stderr)
        assert msg in r.stderr, (path, r.stderr)
        assert not os.path.exists(out), path
        assert not any(f.startswith("o.nii.gz") for f in os.listdir(tmp)), os.listdir(tmp)
    r = sp.run("ct", os.path.join(sp.CTDIR, "example_ct_sm.nii.gz"), "-o", out, "--model", os.path.join(tmp, "nomodel"))
    assert r.returncode == 4 and "segpipe.json" in r.stderr
    # a missing output folder is made (issue 37); one that cannot be made is refused before the run
    open(os.path.join(tmp, "afile"), "w").close()
    r = sp.run("ct", os.path.join(sp.CTDIR, "example_ct_sm.nii.gz"), "-o", os.path.join(tmp, "afile", "x.nii.gz"))
    assert r.returncode == 6 and "cannot make the output folder" in r.stderr and "inference" not in r.stdout
    r = sp.run("ct", os.path.join(sp.CTDIR, "example_ct_sm.nii.gz"), "-o", out, "--device", "cuda")
    assert r.returncode == 2 and "CPUExecutionProvider" in r.stderr


def test_model_check(tmp):
    assert sp.run("model", "check", sp.DEMO, check=True).stdout.startswith(sp.DEMO + ": OK")
    bad = os.path.join(tmp, "bad")
    shutil.copytree(sp.TINYSEG, bad)
    man = json.load(open(os.path.join(bad, "segpipe.json")))
    # label count not matching the output channels
    m = dict(man, labels={"0": "background", "1": "a", "2": "b"})
    json.dump(m, open(os.path.join(bad, "segpipe.json"), "w"))
    r = sp.run("model", "check", bad)
    assert r.returncode == 4 and "4 classes" in r.stderr and "label map has 3" in r.stderr
    # wrong spatial rank: a 2D model
    shutil.copy(os.path.join(sp.ROOT, "tests", "data", "tiny2d.onnx"), os.path.join(bad, "model.onnx"))
    json.dump(man, open(os.path.join(bad, "segpipe.json"), "w"))
    r = sp.run("model", "check", bad)
    assert r.returncode == 4 and "rank" in r.stderr
    # missing model file
    os.remove(os.path.join(bad, "model.onnx"))
    r = sp.run("model", "check", bad)
    assert r.returncode == 4 and "not found" in r.stderr
    # patch size not matching a fixed ONNX dim
    shutil.copy(os.path.join(sp.TINYSEG, "model.onnx"), os.path.join(bad, "model.onnx"))
    json.dump(dict(man, patch_size=[8, 8, 16]), open(os.path.join(bad, "segpipe.json"), "w"))
    r = sp.run("model", "check", bad)
    assert r.returncode == 4 and "patch_size[2]" in r.stderr
    # broken manifest
    open(os.path.join(bad, "segpipe.json"), "w").write("{not json")
    r = sp.run("model", "check", bad)
    assert r.returncode == 4 and "not valid JSON" in r.stderr


def test_models_lists_default(tmp):
    p = sp.run("models", check=True)
    assert "(default)" in p.stdout and "liver" in p.stdout


def _nifti1(dims, pixdim, data, vox_offset=352, dtype=16):
    """A hand-made NIfTI-1 (float32 unless dtype says otherwise)."""
    h = bytearray(348)
    h[0:4] = np.int32(348).tobytes()
    h[40:56] = np.array([3, *dims, 1, 1, 1, 1], "<i2").tobytes()
    h[70:72] = np.int16(dtype).tobytes()
    h[72:74] = np.int16(32).tobytes()
    h[76:108] = np.array([1, *pixdim, 1, 1, 1, 1], "<f4").tobytes()
    h[108:112] = np.float32(vox_offset).tobytes()
    h[344:348] = b"n+1\0"
    return bytes(h) + b"\0" * (vox_offset - 348) + np.asarray(data, "<f4").tobytes()


def test_ct_header_driven_sizes_are_bounded(tmp):
    """Attack cases of the hardening issue: one voxel with a spacing of
    6291456 mm or 3.4e38 mm (the model-grid size overflowed and crashed),
    pixdim 150 mm (thousands of tiles from a 2 KB file), a gzip bomb through
    vox_offset, NaN and infinite voxels: all exit 3 with the reason, fast,
    and write nothing."""
    out = os.path.join(tmp, "o.nii.gz")
    cases = [
        (_nifti1((1, 1, 1), (6291456, 6291456, 6291456), [0]), "check the spacing"),
        (_nifti1((1, 1, 1), (3.4e38, 3.4e38, 3.4e38), [0]), "check the spacing"),
        (_nifti1((8, 8, 8), (150, 150, 150), np.zeros(512)), "over the limit"),
        (_nifti1((2, 2, 2), (1, 1, 1), [0, 1, 2, np.nan, 4, 5, np.inf, 7]), "2 voxel(s) are NaN or infinite"),
    ]
    for i, (blob, msg) in enumerate(cases):
        p = os.path.join(tmp, f"case{i}.nii")
        open(p, "wb").write(blob)
        r = sp.run("ct", p, "-o", out, timeout=30)
        assert r.returncode == 3 and msg in r.stderr, (i, r.returncode, r.stderr)
        assert not os.path.exists(out)
    # vox_offset 1e9 inside a small gzip: refused from the header alone
    blob = bytearray(_nifti1((2, 2, 2), (1, 1, 1), np.zeros(8)))
    blob[108:112] = np.float32(1e9).tobytes()
    p = os.path.join(tmp, "bomb.nii.gz")
    open(p, "wb").write(gzip.compress(bytes(blob)))
    r = sp.run("ct", p, "-o", out, timeout=30)
    assert r.returncode == 3 and "vox_offset" in r.stderr, r.stderr


def test_library_exports_only_the_public_api(tmp):
    """libsegpipe.so exports exactly the functions declared in segpipe.h;
    internal stages (e.g. sp_ornt_apply, sp_window_run) stay local."""
    import re, subprocess
    header = open(os.path.join(sp.ROOT, "include", "segpipe.h")).read()
    declared = set(re.findall(r"\b(sp_[a-z0-9_]+)\s*\(", header))
    nm = subprocess.run(["nm", "-D", "--defined-only", os.path.join(sp.BUILD, "libsegpipe.so")],
                        capture_output=True, text=True, check=True).stdout
    exported = {l.split()[-1] for l in nm.splitlines() if l.split()[1] in "TW" and l.split()[-1].startswith("sp_")}
    assert exported and exported <= declared, sorted(exported - declared)
    assert "sp_ornt_apply" not in exported and "sp_window_run" not in exported
    assert {"sp_ct_run", "sp_serve", "sp_volume_read", "sp_masks_run"} <= exported


def test_common_mistakes_every_command(tmp):
    """Malformed numbers are refused naming the option (exit 2) in every
    command, outputs that cannot be written are refused before any work,
    --help works everywhere, a missing input exits 6 in every command."""
    ct = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
    out = os.path.join(tmp, "o.nii.gz")
    frames = os.path.join(tmp, "frames")
    os.makedirs(frames)
    for i in range(2):   # never decoded: every case below stops at its options
        open(os.path.join(frames, f"f{i}.png"), "wb").close()
    cases = [
        (["ct", ct, "-o", out, "--threads", "abc"], 2, "--threads"),
        (["ct", ct, "-o", out, "--tile-batch", "1x"], 2, "--tile-batch"),
        (["ct", ct, "-o", out, "--step", "2"], 2, "--step"),
        (["ct", ct, "-o", out, "--min-component-ml", "-1"], 2, "--min-component-ml"),
        (["passport", "--ct", ct, "--labels", ct, "-o", out, "--threads", "1.5"], 2, "--threads"),
        (["masks", ct, "-o", tmp, "--batch", "0"], 2, "--batch"),
        (["masks", ct, "-o", tmp, "--long-side", "big"], 2, "--long-side"),
        (["video", frames, "-o", os.path.join(tmp, "v.mp4"), "--batch", "2,x"], 2, "--batch"),
        (["video", frames, "-o", os.path.join(tmp, "v.mp4"), "--fps", "fast"], 2, "--fps"),
        (["video", frames, "-o", os.path.join(tmp, "v.gif"), "--model", os.path.join(sp.ROOT, "tests", "data",
                                                                                       "tinymatte")], 2, ".gif"),
        (["serve", "--port", "85x5", "--model", "a=b"], 2, "--port"),
        (["serve", "--workers", "0", "--model", "a=b"], 2, "--workers"),
        (["bench", ct, "--runs", "x"], 2, "--runs"),
        (["resample", ct, "-o", out, "--order", "3", "--spacing", "1,1,1"], 2, "--order"),
        (["models", "--nope"], 2, "models"),
        (["ct", os.path.join(tmp, "missing.nii.gz"), "-o", out], 6, "cannot open"),
        (["video", os.path.join(tmp, "missing.mp4"), "-o", os.path.join(tmp, "v.mp4")], 6, "cannot open"),
        (["masks", os.path.join(tmp, "missing.jpg"), "-o", tmp], 6, "cannot open"),
    ]
    for args, code, msg in cases:
        r = sp.run(*args, timeout=120)
        assert r.returncode == code and msg in r.stderr, (args, r.returncode, r.stderr)
    assert not os.path.exists(out) and not os.path.exists(os.path.join(tmp, "v.gif"))
    for cmd in ("ct", "passport", "masks", "video", "serve", "bench", "resample", "models", "model"):
        r = sp.run(cmd, "--help")
        assert r.returncode == 0 and "usage" in r.stdout.lower(), (cmd, r.returncode, r.stdout, r.stderr)


def test_every_command_one_option_parser(tmp):
    """Every subcommand parses with src/cli/args.c, so each answers a wrong
    option alike: exit 2, "segpipe CMD: ..." naming the option on stderr,
    nothing on stdout and nothing started (worker, submit and jobs stop
    before connecting to Redis; serve before loading a model)."""
    ct = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
    cmds = {"masks": [ct, "-o", tmp], "classify": [ct], "serve": ["--model", "a=b"], "video": [ct, "-o", "v.mp4"],
            "bench": [ct], "resample": [ct, "-o", "r.nii.gz", "--spacing", "1,1,1"],
            "worker": ["--redis", "redis://127.0.0.1:1"], "submit": ["--redis", "redis://127.0.0.1:1", ct, "-o", tmp],
            "jobs": ["--redis", "redis://127.0.0.1:1"], "dicom-node": ["--dest", "A@h:1", "--allow-any"]}
    for cmd, ok in cmds.items():
        r = sp.run(cmd, *ok, "--bogus", timeout=60)
        assert r.returncode == 2 and f"segpipe {cmd}: unknown option --bogus (see 'segpipe {cmd} --help')" \
            in r.stderr and not r.stdout, (cmd, r.returncode, r.stdout, r.stderr)
        last = {"resample": "--order", "jobs": "--redis", "submit": "--redis"}.get(cmd, "--threads")
        r = sp.run(cmd, *ok, last, timeout=60)
        assert r.returncode == 2 and "needs a value" in r.stderr, (cmd, r.returncode, r.stderr)
        r = sp.run(cmd, "--help")
        assert r.returncode == 0 and "usage" in r.stdout.lower(), (cmd, r.returncode, r.stdout, r.stderr)
    cases = [   # (arguments, what stderr says); each exit 2
        (["serve", "--model", "a=b", "--prt", "1"], "did you mean --port?"),
        (["serve", "--model", "a=b", "--max-pixels", "0"], "segpipe serve: --max-pixels must be > 0"),
        (["classify", ct, "--max-pixels=0"], "segpipe classify: --max-pixels must be > 0"),
        (["masks", ct, "-o", tmp, "--max-pixels", "2X"], "--max-pixels wants a size"),
        (["serve", "--model", "a=b", "--max-body", "1T"], "--max-body wants a size"),
        (["serve", "--model", "a=b", "x"], "no other arguments"),
        (["worker", "--redis", "redis://127.0.0.1:1", "--visibility", "0"], "--visibility wants a number in 0.1..86400"),
        (["jobs", "--redis", "redis://127.0.0.1:1", "--recent", "0"], "--recent wants an integer in 1..100000"),
        (["dicom-node", "--dest", "A@h:1", "--allow-any", "--aet", "A" * 17], "--aet: 1 to 16 characters"),
        (["bench", "video", ct, "--quality", "101"], "segpipe bench video: --quality wants an integer in 1..100"),
        (["resample", ct, "-o", "r.nii.gz", "--shape", "1,2"], "--shape x,y,z"),
    ]
    for args, msg in cases:
        r = sp.run(*args, timeout=60)
        assert r.returncode == 2 and msg in r.stderr, (args, r.returncode, r.stderr)


def test_ct_keep_border_statistics(tmp):
    """ct --keep-border writes the statistics.json that `segpipe passport
    --keep-border` writes for the same labels: border structures keep their
    values instead of TotalSegmentator's zeros."""
    ct = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
    out = os.path.join(tmp, "s.nii.gz")
    sp.run("ct", ct, "-o", out, "--keep-border", "-q", check=True)
    got = json.load(open(os.path.join(tmp, "s.statistics.json")))
    stats = os.path.join(tmp, "ref.json")
    sp.run("passport", "--ct", ct, "--labels", out, "--label-map", os.path.join(sp.CTDIR, "total_v2_labels.json"),
           "-o", os.path.join(tmp, "p.json"), "--statistics", stats, "--keep-border", "-q", check=True)
    assert got == json.load(open(stats))
    assert got["liver"]["volume"] > 0   # a border structure, kept
    default = sp.ct_run(ct).replace(".nii.gz", ".statistics.json")   # the run's shared `segpipe ct CT -o ... -q`
    assert json.load(open(default))["liver"]["volume"] == 0


def _structures(path):
    return {s["name"]: s for s in json.load(open(path))["structures"]}


def test_totalsegmentator_interop(tmp):
    """TotalSegmentator's files as its users bring them (../shared holds its
    reference output): the class names stored in its multilabel NIfTI
    extension are read (no --label-map needed), its one-file-per-class
    folder is measured like the multilabel file, and segpipe's own labels
    carry the names the same way (read back here with nibabel and an XML
    parser, independently of segpipe)."""
    import xml.etree.ElementTree as ET
    ct = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
    seg = os.path.join(sp.CTDIR, "example_seg.nii.gz")
    lmap = os.path.join(sp.CTDIR, "total_v2_labels.json")
    sp.run("passport", "--ct", ct, "--labels", seg, "--label-map", lmap, "-o", os.path.join(tmp, "a.json"), "-q",
           check=True)
    sp.run("passport", "--ct", ct, "--labels", seg, "-o", os.path.join(tmp, "b.json"), "-q", check=True)
    a, b = _structures(os.path.join(tmp, "a.json")), _structures(os.path.join(tmp, "b.json"))
    assert a == b and "liver" in b and len(b) > 10
    # the one-file-per-class folder TotalSegmentator writes without --ml
    img = nib.load(seg)
    data = np.asanyarray(img.dataobj)
    names = {int(k): v for k, v in json.load(open(lmap)).items()}
    folder = os.path.join(tmp, "segmentations")
    os.makedirs(folder)
    for k, name in names.items():
        if k:
            nib.save(nib.Nifti1Image((data == k).astype(np.uint8), img.affine), os.path.join(folder, name + ".nii.gz"))
    sp.run("passport", "--ct", ct, "--labels", folder, "--label-map", lmap, "-o", os.path.join(tmp, "c.json"), "-q",
           check=True)
    assert _structures(os.path.join(tmp, "c.json")) == a
    sp.run("passport", "--ct", ct, "--labels", folder, "-o", os.path.join(tmp, "d.json"), "-q", check=True)
    d = _structures(os.path.join(tmp, "d.json"))
    strip = lambda s: {k: v for k, v in s.items() if k != "label"}
    assert {n: strip(s) for n, s in d.items()} == {n: strip(s) for n, s in a.items()}
    # segpipe's labels: names in the same extension
    out = sp.ct_run(ct)   # the run's shared `segpipe ct CT -o ... -q`
    ext = nib.load(out).header.extensions
    root = ET.fromstring(ext[0].get_content())
    got = {int(l.get("Key")): l.text for l in root.iter("Label")}
    man = json.load(open(os.path.join(sp.DEMO, "segpipe.json")))["labels"]
    assert got == {int(k): v for k, v in man.items() if int(k) > 0}


def test_ct_preview_png(tmp):
    """ct --preview: the axial panel equals an independent rendering of the
    CT (nibabel's closest canonical orientation, radiological convention,
    window 40/400) through the centre of the labels: grey where there is no
    label, coloured where there is one; the legend lists each structure."""
    from PIL import Image
    ct_path = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
    out, png = os.path.join(tmp, "s.nii.gz"), os.path.join(tmp, "p.png")
    sp.run("ct", ct_path, "-o", out, "--preview", png, "-q", check=True)
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    ct = nib.as_closest_canonical(nib.load(ct_path))
    lab = np.asanyarray(nib.as_closest_canonical(nib.load(out)).dataobj)
    vol = ct.get_fdata()
    cs = np.array(ct.header.get_zooms()[:3])
    dim = np.array(vol.shape)
    mm_px = (dim * cs).max() / 320
    centre = np.rint(np.argwhere(lab > 0).mean(0)).astype(int)
    pw, ph = int(dim[0] * cs[0] // mm_px), int(dim[1] * cs[1] // mm_px)
    xs = dim[0] - 1 - np.minimum(((np.arange(pw) + 0.5) * mm_px / cs[0]).astype(int), dim[0] - 1)
    ys = dim[1] - 1 - np.minimum(((np.arange(ph) + 0.5) * mm_px / cs[1]).astype(int), dim[1] - 1)
    sl = vol[:, :, centre[2]][np.ix_(xs, ys)].T            # rows: y (anterior up), columns: x (right on the left)
    ls = lab[:, :, centre[2]][np.ix_(xs, ys)].T
    grey = np.rint(255 * np.clip((sl + 160) / 400, 0, 1))
    panel = img[8:8 + ph, 8:8 + pw]
    bg = ls == 0
    assert np.abs(panel[bg] - grey[bg][:, None]).max() <= 1
    coloured = panel[~bg]
    assert (~bg).sum() > 1000 and (coloured.max(1) - coloured.min(1) > 10).mean() > 0.95
    # legend: one coloured swatch per structure present, right of the three panels
    n_present = len(np.unique(lab)) - 1
    x0 = 8 + sum(int(a * b // mm_px) + 8 for a, b in ((dim[0], cs[0]), (dim[0], cs[0]), (dim[1], cs[1])))
    sw = np.array([img[8 + 16 * k + 8, x0 + 6] for k in range(n_present)])
    assert (sw.max(1) - sw.min(1) > 10).all(), sw
    below = 8 + 16 * n_present + 8
    assert below >= img.shape[0] or img[below, x0 + 6].sum() == 0


def test_ct_wrong_kind_of_model(tmp):
    """A photo model given to `ct`: exit 4 naming its task and the command
    that runs it (it used to read a 2D manifest's absent spacing and blame
    the scan's header with a garbage number); an unknown bare model name:
    exit 4 under the running command's name; a path that is no model
    folder: what it is instead; a CT model given to `mri`: a
    warning that says so, without the CT value checks' advice"""
    ct, out = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz"), os.path.join(tmp, "o.nii.gz")
    for m, task in (("demo-rooms", "masks"), ("demo-shapes", "classify")):
        r = sp.run("ct", ct, "-o", out, "--model", os.path.join(sp.ROOT, "models", m))
        assert r.returncode == 4, (m, r.returncode, r.stderr)
        assert f"is a '{task}' model" in r.stderr and f"segpipe {task} runs it" in r.stderr, r.stderr
        assert "spacing" not in r.stderr and not os.path.exists(out), r.stderr
    r = sp.run("ct", ct, "-o", out, "--model", "no-such-model")
    assert r.returncode == 4 and r.stderr.startswith("segpipe ct: --model no-such-model: no such model"), r.stderr
    # a path that is not a model: what it is instead, and how to get one
    os.makedirs(os.path.join(tmp, "empty"))
    for m, said in (("missing", "no such folder"), ("empty", "not a segpipe model folder (it has no segpipe.json"),
                    ("o.nii.gz", "not a folder")):
        if m == "o.nii.gz":
            open(os.path.join(tmp, m), "w").close()
        r = sp.run("ct", ct, "-o", os.path.join(tmp, "x.nii.gz"), "--model", os.path.join(tmp, m))
        assert r.returncode == 4 and said in r.stderr and r.stderr.count(tmp) == 1, (m, r.stderr)
    r = sp.run("mri", os.path.join(sp.SHARED, "data", "mri", "tinyT1.nii.gz"), "-o", out, "--no-passport",
               "--model", os.path.join(sp.ROOT, "models", "demo-ct"))
    assert r.returncode == 0, r.stderr
    assert "the model is a CT model (its task is ct)" in r.stderr and "use segpipe mri" not in r.stderr, r.stderr
