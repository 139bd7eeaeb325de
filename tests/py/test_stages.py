"""Stage tests against independent references: nibabel (NIfTI reading,
as_closest_canonical) and scipy.ndimage.zoom (resampling)."""
import os
import numpy as np
import nibabel as nib
from scipy import ndimage
import sp

DTYPES = [np.uint8, np.int8, np.int16, np.uint16, np.int32, np.uint32, np.float32, np.float64]


def _rand(dtype, shape, rng):
    if np.issubdtype(dtype, np.floating):
        return rng.normal(0, 100, shape).astype(dtype)
    info = np.iinfo(dtype)
    lo, hi = max(info.min, -30000), min(info.max, 60000)
    return rng.integers(lo, hi, shape).astype(dtype)


def test_nifti_reader_matches_nibabel(tmp):
    rng = np.random.default_rng(1)
    aff = np.array([[-0.8, 0.1, 0, 90], [0.05, 0.8, 0.02, -120], [0, 0, 1.5, 30], [0, 0, 0, 1]])
    n = 0
    for dt in DTYPES:
        for endian in "<>":
            for version in (1, 2):
                for gz in (False, True):
                    data = _rand(dt, (7, 6, 5), rng)
                    cls, hcls = (nib.Nifti1Image, nib.Nifti1Header) if version == 1 else (nib.Nifti2Image, nib.Nifti2Header)
                    hdr = hcls(endianness=endian)
                    hdr.set_data_dtype(dt)
                    img = cls(data, aff, hdr)
                    if dt in (np.int16, np.uint8):
                        img.header.set_slope_inter(0.5, -3)
                    p = os.path.join(tmp, f"v{n}.nii" + (".gz" if gz else ""))
                    nib.save(img, p)
                    ref = nib.load(p)
                    got, info = sp.read_volume(p)
                    want = ref.get_fdata()
                    assert got.shape == want.shape
                    assert np.allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max()), (dt, endian, version)
                    assert np.allclose(sp.affine_of(info), ref.affine, atol=1e-5), (dt, version)
                    n += 1
    assert n == 64


def test_nifti_qform_only_and_4d(tmp):
    rng = np.random.default_rng(2)
    data = rng.integers(-1000, 1000, (6, 5, 4, 1)).astype(np.int16)
    aff = np.array([[0, 0, 2, 10], [-1.5, 0, 0, 20], [0, -1, 0, 5], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data, aff)
    img.header.set_sform(None, code=0)
    img.header.set_qform(aff, code=1)
    p = os.path.join(tmp, "q.nii.gz")
    nib.save(img, p)
    ref = nib.load(p)
    got, info = sp.read_volume(p)
    assert info.affine_source == b"qform"
    assert np.array_equal(got, ref.get_fdata()[..., 0])
    assert np.allclose(sp.affine_of(info), ref.affine, atol=1e-5)


def test_nifti_real_cases(tmp):
    for f in ("example_ct.nii.gz", "example_ct_sm.nii.gz", "example_seg.nii.gz", "example_mr_sm.nii.gz"):
        p = os.path.join(sp.CTDIR, f)
        ref = nib.load(p)
        got, info = sp.read_volume(p)
        assert np.array_equal(got, ref.get_fdata().astype(np.float32)), f
        assert np.allclose(sp.affine_of(info), ref.affine, atol=1e-4), f


def _orientation_cases():
    """All 48 axis permutations/flips, plus oblique affines."""
    perms = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    for p in perms:
        for fl in range(8):
            a = np.zeros((4, 4))
            a[3, 3] = 1
            for i in range(3):
                a[p[i], i] = (-1 if fl >> i & 1 else 1) * (0.7 + i)
            a[:3, 3] = [10, -20, 30]
            yield a
    rng = np.random.default_rng(3)
    for _ in range(12):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        a = np.eye(4)
        a[:3, :3] = q @ np.diag([0.8, 1.2, 2.5])
        yield a


def test_reorient_matches_nibabel(tmp):
    rng = np.random.default_rng(4)
    n = 0
    for aff in _orientation_cases():
        data = rng.normal(size=(5, 4, 3)).astype(np.float32)
        img = nib.Nifti1Image(data, aff)
        ref = nib.as_closest_canonical(img)
        got, got_aff, _ = sp.canonical(data, aff)
        assert np.array_equal(got, np.asanyarray(ref.dataobj)), aff
        assert np.allclose(got_aff, ref.affine, atol=1e-9), aff
        n += 1
    assert n == 60


def test_resample_linear_matches_scipy(tmp):
    rng = np.random.default_rng(5)
    for shape, out in [((20, 17, 9), (7, 30, 9)), ((5, 5, 5), (9, 3, 1)), ((1, 8, 3), (1, 5, 6))]:
        x = rng.normal(0, 500, shape).astype(np.float32)
        zoom = np.array(out) / np.array(shape)
        ref = ndimage.zoom(x.astype(np.float64), zoom, order=1, mode="nearest")
        assert ref.shape == tuple(out)
        got = sp.resample_linear(x, out)
        assert np.abs(got - ref).max() <= 1e-3


def test_resample_real_ct_to_model_spacing(tmp):
    """example_ct (3 mm) to 1.6 x 2.2 x 2.9 mm with TotalSegmentator's shape rule;
    max abs error <= 1e-3 HU against scipy in float64."""
    img = nib.load(os.path.join(sp.CTDIR, "example_ct.nii.gz"))
    x = img.get_fdata()
    new_sp = np.array([1.6, 2.2, 2.9])
    zoom = np.array(img.header.get_zooms()) / new_sp
    ref = ndimage.zoom(x, zoom, order=1, mode="nearest")
    out = [int(sp.lib().sp_zoom_size(n, z)) for n, z in zip(x.shape, zoom)]
    assert tuple(out) == ref.shape
    got = sp.resample_linear(x.astype(np.float32), out)
    assert np.abs(got - ref).max() <= 1e-3


def test_labels_back_nearest_matches_scipy(tmp):
    """Labels at model resolution back to the native grid: equal to
    scipy.ndimage.zoom(order=0, mode='nearest') to the target shape, every voxel."""
    seg = np.asanyarray(nib.load(os.path.join(sp.CTDIR, "example_seg.nii.gz")).dataobj)
    rng = np.random.default_rng(6)
    cases = [(seg, (458 // 4, 379 // 4, 224 // 4)), (seg, (61, 50, 15)), (seg[:40, :31, :7], (97, 53, 29))]
    for lab, target in cases:
        zoom = np.array(target) / np.array(lab.shape)
        ref = ndimage.zoom(lab, zoom, order=0, mode="nearest")
        assert ref.shape == tuple(target)
        got = sp.resample_nearest(lab.astype(np.uint16), target)
        assert np.array_equal(got, ref)
    lab = rng.integers(0, 5, (9, 11, 4)).astype(np.uint16)
    for target in [(31, 7, 13), (9, 11, 4), (2, 2, 2)]:
        ref = ndimage.zoom(lab, np.array(target) / np.array(lab.shape), order=0, mode="nearest")
        assert np.array_equal(sp.resample_nearest(lab, target), ref)


def nnunet_shape(shape, in_sp, out_sp):
    """nnU-Net's compute_new_shape"""
    return tuple(int(round(i / j * k)) for i, j, k in zip(in_sp, out_sp, shape))


def skimage_nnunet(x, out, axis):
    """nnU-Net's resample_data_or_seg (is_seg False, order 3, order_z 0)
    on skimage's resize as nnU-Net calls it; axis: the separate-z axis or None"""
    from skimage.transform import resize
    kw = {"mode": "edge", "anti_aliasing": False}
    x = x.astype(np.float64)
    if axis is None:
        return resize(x, out, 3, **kw)
    inplane = [n for a, n in enumerate(out) if a != axis]
    y = np.stack([resize(np.take(x, s, axis), inplane, 3, **kw) for s in range(x.shape[axis])], axis)
    if y.shape[axis] == out[axis]:
        return y
    grid = np.mgrid[tuple(slice(0, n) for n in out)].astype(np.float64)
    for a in range(3):
        grid[a] = y.shape[a] / out[a] * (grid[a] + 0.5) - 0.5
    return ndimage.map_coordinates(y, grid, order=0, mode="nearest")


def test_resample_nnunet_matches_skimage(tmp):
    """"resample": "nnunet" (resample_nnunet.c): skimage's order-3 resize
    with nnU-Net's arguments (edge, no anti-aliasing, clipped to the input's
    range), whole volume when the spacing is isotropic enough; slice by
    slice plus nearest along the coarse axis when one axis is over 3x
    coarser (the input's or the target's spacing), as nnU-Net decides"""
    rng = np.random.default_rng(7)
    cases = [((20, 17, 9), (1.0, 1.0, 1.0), (2.9, 0.6, 1.1), 0),       # the target 4.8x anisotropic
             ((33, 30, 12), (0.8, 0.8, 2.0), (1.5, 1.5, 1.5), None),
             ((40, 36, 7), (0.7, 0.7, 5.0), (1.5, 1.5, 1.5), 2),     # the input's z 7x coarser
             ((9, 40, 38), (4.0, 1.0, 1.0), (4.0, 0.5, 0.7), 0),     # only in-plane changes
             ((30, 8, 31), (1.0, 3.5, 1.0), (0.9, 4.1, 0.8), 1),
             ((24, 22, 20), (1.0, 1.0, 1.0), (1.0, 1.0, 4.5), 2)]    # the target's z coarse
    for shape, a, b, axis in cases:
        x = (rng.normal(0, 400, shape) + np.linspace(-1000, 1000, shape[2])).astype(np.float32)
        out = nnunet_shape(shape, a, b)
        want = skimage_nnunet(x, out, axis)
        got = sp.resample_nnunet(x, out, a, b)
        assert got.shape == want.shape == out, (got.shape, want.shape, out)
        err = np.abs(got - want).max()
        assert err <= 2e-3, (shape, a, b, err)   # float32 of values up to ~2500
        assert np.abs(got - sp.resample_linear(x, out)).max() > 10   # cubic, not the linear path


def test_resample_nnunet_matches_nnunet_code(tmp):
    """sp_resample_nnunet against nnU-Net's own resample_data_or_seg_to_shape
    (its git mirror, with skimage from Debian) on a real CT block, isotropic
    and with 5 mm slices (separate z)"""
    import subprocess, sys
    git = os.path.join(os.environ.get("NNUNET_SRC", "/work/.mirror"), "MIC-DKFZ+nnUNet", "repo")
    bg = os.path.join(os.path.dirname(os.path.dirname(git)), "MIC-DKFZ+batchgenerators", "repo")
    if not (os.path.isdir(git) and os.path.isdir(bg)):
        raise sp.Skip("nnU-Net / batchgenerators git mirrors absent")
    for g, d in ((git, "nnunet"), (bg, "bg")):
        os.makedirs(os.path.join(tmp, d))
        tar = subprocess.run(["git", "--git-dir", g, "archive", "HEAD"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", os.path.join(tmp, d)], input=tar, check=True)
    x = np.asarray(nib.load(os.path.join(sp.CTDIR, "example_ct.nii.gz")).dataobj, np.float32)[60:140, 50:130, 20:60]
    x = (np.clip(x, -1000, 1500) - 40.0) / 300.0   # a CT normalisation's range
    cases = [((3.0, 3.0, 3.0), (1.6, 1.6, 2.2)), ((0.8, 0.8, 5.0), (1.5, 1.5, 1.5)), ((1.0, 1.0, 1.0), (1.0, 1.0, 4.0))]
    np.save(os.path.join(tmp, "x.npy"), x)
    code = f"""
import sys, types, json, numpy as np
sys.path[:0] = [{os.path.join(tmp, 'nnunet')!r}, {os.path.join(tmp, 'bg')!r}]
sys.modules.setdefault("pandas", types.ModuleType("pandas"))
from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape, compute_new_shape
x = np.load({os.path.join(tmp, 'x.npy')!r})
for i, (a, b) in enumerate({cases!r}):
    shape = compute_new_shape(x.shape, a, b)
    np.save({tmp!r} + f"/ref{{i}}.npy", resample_data_or_seg_to_shape(x[None].astype(np.float64), shape, a, b,
            False, 3, 0, None)[0])
"""
    p = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    for i, (a, b) in enumerate(cases):
        want = np.load(os.path.join(tmp, f"ref{i}.npy"))
        got = sp.resample_nnunet(x, want.shape, a, b)
        err = np.abs(got - want).max()
        assert err <= 1e-5, (a, b, err)
