"""Passport and statistics.json against the numpy reference, on the real
example cases and on synthetic shapes with known answers."""
import json, math, os
import numpy as np
import nibabel as nib
import sp
import ref_passport as ref

LABELS = {int(k): v for k, v in json.load(open(os.path.join(sp.CTDIR, "total_v2_labels.json"))).items()}


def close(a, b, what, rel=1e-6, abs_=1e-6):
    if isinstance(b, dict):
        for k in b:
            close(a[k], b[k], f"{what}.{k}", rel, abs_)
    elif isinstance(b, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{what}[{i}]", rel, abs_)
    elif isinstance(b, (bool, np.bool_, str)):
        assert a == b, f"{what}: {a} != {b}"
    else:
        assert math.isclose(float(a), float(b), rel_tol=rel, abs_tol=abs_), f"{what}: {a} != {b}"


def passport_cli(tmp, ct, seg, label_map=True, extra=()):
    out = os.path.join(tmp, "passport.json")
    st = os.path.join(tmp, "statistics.json")
    args = ["passport", "--ct", ct, "--labels", seg, "-o", out, "--statistics", st, "-q", *extra]
    if label_map:
        args += ["--label-map", os.path.join(sp.CTDIR, "total_v2_labels.json")]
    sp.run(*args, check=True)
    return json.load(open(out)), json.load(open(st))


def check_case(tmp, ct_path, seg_path):
    got, stats = passport_cli(tmp, ct_path, seg_path)
    img = nib.load(ct_path)
    ct = img.get_fdata()
    seg = np.asanyarray(nib.load(seg_path).dataobj)
    want = ref.passport(ct, seg, img.affine, img.header.get_zooms(), LABELS)
    assert got["schema"] == "segpipe-passport" and got["schema_version"] == 1
    assert [s["label"] for s in got["structures"]] == sorted(want)
    for s in got["structures"]:
        w = want[s["label"]]
        for k, v in w.items():
            close(s[k], v, f"label {s['label']} {k}")
    scan = got["scan"]
    assert scan["shape"] == list(ct.shape)
    assert scan["structures_found"] == len(want)
    assert sorted(scan["structures_touching_border"]) == sorted(w["name"] for w in want.values() if w["touches_border"])
    close(scan["hu_min"], ct.min(), "hu_min")
    close(scan["hu_max"], ct.max(), "hu_max")
    close(scan["affine"], img.affine.tolist(), "affine", abs_=1e-5)
    # statistics.json: TotalSegmentator's exact rules, every class of the map
    want_stats = ref.statistics(ct, seg, img.header.get_zooms(), LABELS)
    assert list(stats) == list(want_stats)
    for k in want_stats:
        assert stats[k]["volume"] == want_stats[k]["volume"], k
        assert stats[k]["intensity"] == want_stats[k]["intensity"], k


def test_passport_example_seg(tmp):
    check_case(tmp, os.path.join(sp.CTDIR, "example_ct_sm.nii.gz"), os.path.join(sp.CTDIR, "example_seg.nii.gz"))


def test_passport_example_seg_fast(tmp):
    check_case(tmp, os.path.join(sp.CTDIR, "example_ct_sm.nii.gz"), os.path.join(sp.CTDIR, "example_seg_fast.nii.gz"))


def test_statistics_keep_border(tmp):
    ct = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
    seg = os.path.join(sp.CTDIR, "example_seg.nii.gz")
    _, stats = passport_cli(tmp, ct, seg, extra=("--keep-border",))
    img = nib.load(ct)
    want = ref.statistics(img.get_fdata(), np.asanyarray(nib.load(seg).dataobj), img.header.get_zooms(),
                          LABELS, exclude_border=False)
    assert stats == want


def _save(tmp, name, data, aff):
    p = os.path.join(tmp, name)
    nib.save(nib.Nifti1Image(data, aff), p)
    return p


def test_synthetic_cube_sphere(tmp):
    """Known answers: a 10x10x10 cube and a sphere of radius 12 voxels."""
    sp3 = (0.5, 1.0, 2.0)
    aff = np.diag([*sp3, 1.0])
    aff[:3, 3] = [5, -3, 7]
    shape = (60, 50, 40)
    seg = np.zeros(shape, np.uint8)
    seg[10:20, 20:30, 5:15] = 1
    z, y, x = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    ball = (z - 40) ** 2 + (y - 25) ** 2 + (x - 20) ** 2 <= 12 ** 2
    seg[ball] = 2
    ct = np.full(shape, -50, np.int16)
    ct[seg == 1] = 40
    ct[10:15, 20:30, 5:15] = 60       # half the cube at 60 HU
    got, _ = passport_cli(tmp, _save(tmp, "ct.nii.gz", ct, aff), _save(tmp, "seg.nii.gz", seg, aff), label_map=False)
    cube = got["structures"][0]
    assert cube["name"] == "label_1" and cube["voxels"] == 1000
    close(cube["volume_ml"], 1000 * 0.5 * 1.0 * 2.0 / 1000, "volume")
    close(cube["centroid_voxel"], [14.5, 24.5, 9.5], "centroid")
    close(cube["centroid_mm"], [5 + 14.5 * 0.5, -3 + 24.5, 7 + 9.5 * 2], "centroid_mm")
    assert cube["bbox_voxel"] == {"min": [10, 20, 5], "max": [19, 29, 14]}
    close(cube["extent_mm"], [5.0, 10.0, 20.0], "extent")
    close(cube["surface_mm2"], 2 * (5 * 10 + 5 * 20 + 10 * 20), "surface")
    close(cube["hu"], {"mean": 50, "median": 50, "min": 40, "max": 60, "std": 10, "p5": 40, "p95": 60}, "hu")
    assert cube["components"] == 1 and cube["touches_border"] is False
    ball_s = got["structures"][1]
    assert ball_s["voxels"] == int(ball.sum())
    # principal axes of a ball: its diameter in mm along each world axis (~ within 2%)
    r_mm = sorted([12 * 0.5 * 2, 12 * 1.0 * 2, 12 * 2.0 * 2], reverse=True)
    for a, b in zip(ball_s["principal_axes_mm"], r_mm):
        assert abs(a - b) / b < 0.03, (a, b)


def test_synthetic_border_and_empty(tmp):
    aff = np.eye(4)
    shape = (20, 20, 20)
    ct = np.zeros(shape, np.int16)
    faces = [(slice(0, 1), slice(8, 10), slice(8, 10)), (slice(19, 20), slice(8, 10), slice(8, 10)),
             (slice(8, 10), slice(2, 3), slice(8, 10)), (slice(8, 10), slice(17, 18), slice(8, 10)),
             (slice(8, 10), slice(8, 10), slice(0, 1)), (slice(8, 10), slice(8, 10), slice(19, 20))]
    seg = np.zeros(shape, np.uint8)
    for i, f in enumerate(faces):
        seg[f] = i + 1
    seg[8:11, 8:11, 8:11] = 7          # inside, 3+ voxels from every face
    seg[3, 10, 10] = 8                 # exactly 3 voxels from a face: not touching
    got, _ = passport_cli(tmp, _save(tmp, "ct.nii.gz", ct, aff), _save(tmp, "seg.nii.gz", seg, aff), label_map=False)
    flags = {s["label"]: s["touches_border"] for s in got["structures"]}
    assert flags == {1: True, 2: True, 3: True, 4: True, 5: True, 6: True, 7: False, 8: False}
    empty, stats = passport_cli(tmp, _save(tmp, "ct.nii.gz", ct, aff),
                                _save(tmp, "seg0.nii.gz", np.zeros(shape, np.uint8), aff))
    assert empty["structures"] == [] and empty["scan"]["structures_found"] == 0
    assert len(stats) == 117 and all(v == {"volume": 0.0, "intensity": 0.0} for v in stats.values())


def test_passport_bad_input(tmp):
    aff = np.eye(4)
    ct = _save(tmp, "ct.nii.gz", np.zeros((10, 10, 10), np.int16), aff)
    other = _save(tmp, "s1.nii.gz", np.zeros((10, 10, 9), np.uint8), aff)
    p = sp.run("passport", "--ct", ct, "--labels", other)
    assert p.returncode == 3 and "grid" in p.stderr
    aff2 = aff.copy()
    aff2[0, 3] = 5
    moved = _save(tmp, "s2.nii.gz", np.zeros((10, 10, 10), np.uint8), aff2)
    p = sp.run("passport", "--ct", ct, "--labels", moved)
    assert p.returncode == 3 and "affines" in p.stderr
    flt = _save(tmp, "s3.nii.gz", np.full((10, 10, 10), 1.5, np.float32), aff)
    p = sp.run("passport", "--ct", ct, "--labels", flt)
    assert p.returncode == 3 and "not a label map" in p.stderr
    p = sp.run("passport", "--ct", ct)
    assert p.returncode == 2


def test_passport_output_folders(tmp):
    """-o and --statistics into folders that do not exist yet: made, as `ct
    -o` makes its own; a folder that cannot be made (a file is in the way):
    exit 6 naming the user's path, never the temporary file's."""
    aff = np.eye(4)
    ct = _save(tmp, "ct.nii.gz", np.zeros((10, 10, 10), np.int16), aff)
    lab = _save(tmp, "lab.nii.gz", (np.arange(1000).reshape(10, 10, 10) % 3).astype(np.uint8), aff)
    out, st = os.path.join(tmp, "new", "deep", "p.json"), os.path.join(tmp, "other", "s.json")
    sp.run("passport", "--ct", ct, "--labels", lab, "-o", out, "--statistics", st, "-q", check=True)
    assert json.load(open(out))["structures"] and json.load(open(st))
    open(os.path.join(tmp, "afile"), "w").close()
    bad = os.path.join(tmp, "afile", "p.json")
    p = sp.run("passport", "--ct", ct, "--labels", lab, "-o", bad, "-q")
    assert p.returncode == 6 and ".tmp" not in p.stderr and "afile" in p.stderr, p.stderr


def _noisy_labels(shape, n, seed):
    """n blobby labels filling the volume: thousands of components touching
    each other diagonally (where a 26-connected join is easy to miss)."""
    from scipy.ndimage import gaussian_filter
    x = gaussian_filter(np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32), 1.5)
    return np.digitize(x, np.quantile(x, np.linspace(0, 1, n + 1)[1:-1])).astype(np.uint8)


def test_components_fragmented_labels_vs_scipy(tmp):
    """Component counts and largest shares of heavily fragmented labels equal
    scipy.ndimage.label with 26-connectivity, on shapes that split into one
    and several slabs of slices (the joins run per slab, then the seams)."""
    from scipy import ndimage
    for shape, seed in (((20, 20, 20), 1), ((41, 29, 67), 2), ((64, 48, 5), 3)):
        lab = _noisy_labels(shape, 11, seed)
        ct = os.path.join(tmp, "ct.nii.gz")
        seg = os.path.join(tmp, "seg.nii.gz")
        nib.save(nib.Nifti1Image(lab.astype(np.int16), np.eye(4)), ct)
        nib.save(nib.Nifti1Image(lab, np.eye(4)), seg)
        out = os.path.join(tmp, "p.json")
        sp.run("passport", "--ct", ct, "--labels", seg, "-o", out, "-q", check=True)
        for s in json.load(open(out))["structures"]:
            c, n = ndimage.label(lab == s["label"], structure=np.ones((3, 3, 3)))
            sizes = np.bincount(c.ravel())[1:]
            assert s["components"] == n, (shape, s["label"], s["components"], n)
            close(s["largest_component_share"], sizes.max() / sizes.sum(), "largest share", rel=1e-4)


def test_components_filter_vs_scipy(tmp):
    """sp_components_filter (ct --largest-component / --min-component-ml)
    keeps exactly scipy's largest 26-component of every label."""
    import ctypes as C
    from scipy import ndimage
    lab = _noisy_labels((33, 27, 45), 7, 5)
    want = np.zeros_like(lab)
    for l in range(1, 7):
        c, n = ndimage.label(lab == l, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(c.ravel())[1:]
        assert n and (sizes == sizes.max()).sum() == 1      # no tie for the largest
        want[c == np.argmax(sizes) + 1] = l
    got = np.asfortranarray(lab.astype(np.uint16))
    L = sp.lib()
    dim = (C.c_int64 * 3)(*lab.shape)
    assert L.sp_components_filter(got.ctypes.data_as(C.c_void_p), dim, 1, C.c_int64(0)) == 0
    assert np.array_equal(got, want), (got != want).sum()
