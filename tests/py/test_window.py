"""Sliding-window inference against a numpy implementation of nnU-Net's
predictor semantics (pad to the patch, compute_steps_for_sliding_window,
Gaussian importance map from scipy.ndimage.gaussian_filter of a delta,
weighted accumulation, division, argmax), on the tinyseg test model whose
single 3x3x3 convolution numpy can evaluate (scipy.ndimage.correlate)."""
import json, os
import numpy as np
import nibabel as nib
from scipy import ndimage
import sp

W = np.load(os.path.join(sp.TINYSEG, "weights.npz"))
MAN = json.load(open(os.path.join(sp.TINYSEG, "segpipe.json")))


def steps(image, tile, step):
    n = int(np.ceil((image - tile) / (tile * step))) + 1
    actual = (image - tile) / (n - 1) if n > 1 else 99999999999
    return [int(np.round(actual * i)) for i in range(n)]


def gaussian(patch, scale=1 / 8):
    tmp = np.zeros(patch)
    tmp[tuple(p // 2 for p in patch)] = 1
    g = ndimage.gaussian_filter(tmp, [p * scale for p in patch], 0, mode="constant", cval=0)
    g = g / (g.max() / 10)
    g[g == 0] = g[g != 0].min()
    return g


def net(tile):
    """the tinyseg network: conv 3x3x3, zero padding 1, on one tile"""
    return np.stack([ndimage.correlate(tile, W["w"][c, 0].astype(np.float64), mode="constant") + W["b"][c]
                     for c in range(W["w"].shape[0])])


def predict(vol, patch, step):
    """vol in network axis order, normalised; returns (labels, top-2 margin)"""
    shape = np.array(vol.shape)
    new = np.maximum(shape, patch)
    lo = (new - shape) // 2
    pad = np.pad(vol, [(l, n - s - l) for l, n, s in zip(lo, new, shape)])
    g = gaussian(patch)
    C = W["w"].shape[0]
    acc = np.zeros((C, *new))
    cnt = np.zeros(new)
    for a in steps(new[0], patch[0], step):
        for b in steps(new[1], patch[1], step):
            for c in steps(new[2], patch[2], step):
                sl = (slice(a, a + patch[0]), slice(b, b + patch[1]), slice(c, c + patch[2]))
                acc[(slice(None),) + sl] += net(pad[sl]) * g
                cnt[sl] += g
    acc = acc / cnt
    acc = acc[:, lo[0]:lo[0] + shape[0], lo[1]:lo[1] + shape[1], lo[2]:lo[2] + shape[2]]
    srt = np.sort(acc, axis=0)
    return acc.argmax(0), srt[-1] - srt[-2], acc


def normalise(x):
    n = MAN["normalization"]
    return (np.clip(x, n["lo"], n["hi"]) - n["mean"]) / n["std"]


def run_case(tmp, data, extra=()):
    aff = np.diag([2.0, 2.0, 2.0, 1.0])   # RAS at the model spacing: no resampling
    p_in = os.path.join(tmp, "in.nii.gz")
    nib.save(nib.Nifti1Image(data.astype(np.int16), aff), p_in)
    out = os.path.join(tmp, "out.nii.gz")
    sp.run("ct", p_in, "-o", out, "--model", sp.TINYSEG, "--no-passport", "-q", *extra, check=True)
    got = np.asanyarray(nib.load(out).dataobj)
    axes = MAN["axes"]
    ref, margin, _ = predict(normalise(data.astype(np.int16).astype(np.float64)).transpose(axes), MAN["patch_size"], 0.5)
    inv = np.argsort(axes)
    return got, ref.transpose(inv), margin.transpose(inv)


def test_window_matches_nnunet_reference(tmp):
    rng = np.random.default_rng(11)
    for shape in [(13, 17, 9), (8, 8, 8), (5, 20, 11), (23, 9, 30)]:
        data = ndimage.gaussian_filter(rng.normal(0, 800, shape), 1.0)
        got, ref, margin = run_case(tmp, data)
        sure = margin > 1e-4           # float32 vs float64: only near-ties may differ
        assert sure.mean() > 0.99
        assert np.array_equal(got[sure], ref[sure]), shape


def test_window_tile_batch_same_labels(tmp):
    rng = np.random.default_rng(12)
    data = ndimage.gaussian_filter(rng.normal(0, 800, (21, 19, 17)), 1.0)
    a, _, _ = run_case(tmp, data)
    b, _, _ = run_case(tmp, data, ("--tile-batch", "4"))
    c, _, _ = run_case(tmp, data, ("--tile-batch", "3", "--threads", "1"))
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_window_one_patch_equals_plain_run(tmp):
    """A volume exactly one patch large: the sliding window is one plain run
    (the Gaussian weights cancel in the argmax)."""
    rng = np.random.default_rng(13)
    data = ndimage.gaussian_filter(rng.normal(0, 800, (8, 8, 8)), 1.0)
    got, _, _ = run_case(tmp, data)
    plain = net(normalise(data.astype(np.int16).astype(np.float64)).transpose(MAN["axes"]))
    srt = np.sort(plain, 0)
    sure = (srt[-1] - srt[-2] > 1e-4).transpose(np.argsort(MAN["axes"]))
    assert np.array_equal(got[sure], plain.argmax(0).transpose(np.argsort(MAN["axes"]))[sure])


def test_smooth_labels_match_resampled_logits(tmp):
    """--smooth: labels = argmax of the Gaussian-averaged logits resampled
    linearly (scipy.ndimage.zoom order 1) to the native grid. segpipe only
    evaluates the classes winning at the 8 model-grid neighbours, so it may
    differ where another class wins only between grid points, and at
    float32 near-ties: at least 99.5% of voxels must agree, and all voxels
    whose margin is clear and whose class wins at a neighbour."""
    rng = np.random.default_rng(14)
    data = ndimage.gaussian_filter(rng.normal(0, 800, (21, 18, 15)), 1.5).astype(np.int16)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    lo_res = os.path.join(tmp, "lo.nii.gz")
    nib.save(nib.Nifti1Image(data, aff), lo_res)
    # the native grid: 1 mm, so the model (2 mm) grid is the file above after zoom
    native = ndimage.zoom(data.astype(np.float64), 2.0, order=1, mode="nearest").astype(np.int16)
    p_in = os.path.join(tmp, "in.nii.gz")
    nib.save(nib.Nifti1Image(native, np.diag([1.0, 1.0, 1.0, 1.0])), p_in)
    out = os.path.join(tmp, "smooth.nii.gz")
    sp.run("ct", p_in, "-o", out, "--model", sp.TINYSEG, "--smooth", "--no-passport", "-q", check=True)
    got = np.asanyarray(nib.load(out).dataobj)
    # reference: what segpipe feeds the network is native resampled to 2 mm
    shape_m = [int(round(n * 0.5)) for n in native.shape]
    vol_m = ndimage.zoom(native.astype(np.float64), np.array(shape_m) / np.array(native.shape), order=1, mode="nearest")
    axes = MAN["axes"]
    lab_m, _, acc = predict(normalise(vol_m).transpose(axes), MAN["patch_size"], 0.5)
    inv = np.argsort(axes)
    acc = acc.transpose([0] + [i + 1 for i in inv])
    up = np.stack([ndimage.zoom(a, np.array(native.shape) / np.array(a.shape), order=1, mode="nearest") for a in acc])
    ref = up.argmax(0)
    assert got.shape == ref.shape
    assert (got == ref).mean() >= 0.995, (got == ref).mean()
    nearest = np.asanyarray(nib.load(out).dataobj)
    plain = os.path.join(tmp, "plain.nii.gz")
    sp.run("ct", p_in, "-o", plain, "--model", sp.TINYSEG, "--no-passport", "-q", check=True)
    # smooth and nearest differ (the point of --smooth) but mostly agree
    pl = np.asanyarray(nib.load(plain).dataobj)
    assert 0.5 < (pl == nearest).mean() < 1.0


def test_ring_accumulator_equals_full_accumulator(tmp):
    """The bounded ring accumulator (default) gives exactly the labels of the
    full-volume accumulator (kept by --smooth; at the model spacing no
    resampling happens, so --smooth returns its argmax unchanged)."""
    rng = np.random.default_rng(15)
    data = ndimage.gaussian_filter(rng.normal(0, 800, (30, 26, 19)), 1.0)
    a, _, _ = run_case(tmp, data)
    b, _, _ = run_case(tmp, data, ("--smooth",))
    assert np.array_equal(a, b)
