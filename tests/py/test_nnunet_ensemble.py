"""nnU-Net's own nnUNetv2_ensemble on `segpipe predict --save_probabilities`
folders (issue #46): segpipe writes CASE.npz, CASE.pkl (the case's
properties) and copies the package's dataset.json and plans.json, as
nnUNetv2_predict does. The test runs nnU-Net's REAL ensembling code
(nnunetv2/ensembling/ensemble.py, ensemble_folders -> merge_files, its
readers/writers, PlansManager and LabelManager), unpacked from the git
mirrors as tools/dev/make_nnunet_refs.py does (--src / NNUNET_SRC, default
/work/.mirror; absent: skipped), on two folds of the seeded fixture
`ensemble2` imported as two packages, and checks what it writes against
numpy (the mean of segpipe's two probability arrays, argmax) and nibabel
(the input's geometry). The pkl's crop box is checked against nnU-Net's
own NibabelIO reader and crop_to_nonzero on the BraTS-like fixture."""
import contextlib, itertools, json, os, pickle, sys, tempfile, types
from unittest import mock
import numpy as np
import nibabel as nib
import sp
import nnunet_fixture as fx
import test_nnunet as tn

sys.path.insert(0, os.path.join(sp.ROOT, "tools", "dev"))
import make_nnunet_refs as mr  # noqa: E402

SRC = os.environ.get("NNUNET_SRC", "/work/.mirror")
_nn = {}


def nnunet():
    """nnU-Net's sources unpacked and importable (once per module)"""
    if not _nn:
        missing = [r for r in mr.REPOS if not os.path.isdir(os.path.join(SRC, r, "repo"))]
        if missing:
            raise sp.Skip(f"nnU-Net's sources are not in {SRC} ({', '.join(missing)}; NNUNET_SRC)")
        _nn["dir"] = tempfile.TemporaryDirectory(prefix="sp-nnunet-src-")
        mr.load_nnunet(SRC, _nn["dir"].name)
    return _nn


class InlinePool:
    """multiprocessing's spawn Pool run in this process: the children of a
    spawn context would import nnU-Net without this process's stubs"""

    def __init__(self, n):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def starmap(self, fn, args):
        return list(itertools.starmap(fn, args))


def ensemble(folders, out, plans=None):
    from nnunetv2.ensembling import ensemble as ens
    ctx = types.SimpleNamespace(Pool=InlinePool)
    with mock.patch.object(ens.multiprocessing, "get_context", lambda kind: ctx):
        ens.ensemble_folders(folders, out, save_merged_probabilities=True, num_processes=1,
                             plans_json_file_or_dict=plans)


def lps_affine(affine):
    """the fixture's grid stored as DICOM-derived NIfTIs often are: i and j
    running towards -x and -y (LPS), moved off the origin"""
    a = affine.copy()
    a[:3, 0] *= -1
    a[:3, 1] *= -1
    a[:3, 3] = [120.5, 80.25, -40.0]
    return a


def predict_cases(tmp):
    """IN_DIR with two cases (the fixture's grid, and LPS), run through the
    fixture's fold 0 and fold 1 packages with --save_probabilities"""
    chans, affine = fx.make_case("ensemble2")
    d = os.path.join(tmp, "in")
    os.makedirs(d)
    affines = {"caseA": affine, "caseB": lps_affine(affine)}
    for c, a in affines.items():
        nib.save(nib.Nifti1Image(chans[0], a), os.path.join(d, f"{c}_0000.nii.gz"))
    outs = []
    for fold in ("0", "1"):
        _, pkg = tn.package(tn.shared_tmp(), "ensemble2", "--fold", fold)
        out = os.path.join(tmp, "fold" + fold)
        p = sp.run("predict", "-i", d, "-o", out, "-m", pkg, "--save_probabilities", "-q")
        assert p.returncode == 0, p.stderr
        outs.append(out)
    return d, affines, outs


def test_nnunet_ensemble_reads_segpipe_folders(tmp):
    """nnU-Net's ensemble_folders on two segpipe predict folders: it loads
    CASE.pkl with pickle, averages the npz probabilities and writes labels
    with the plans' writer. NibabelIO (plans overridden; nibabel is here):
    labels == argmax of the mean of segpipe's two arrays, exported as
    segpipe exports (z, y, x -> i, j, k), on the input's exact affine and
    zooms. SimpleITKIO (the fixture's plans, read from the first folder;
    SimpleITK is stubbed here): the spacing, origin and direction it hands
    to SimpleITK are the input's in LPS, computed from nibabel's affine."""
    nnunet()
    d, affines, outs = predict_cases(tmp)
    for out in outs:
        assert sorted(os.listdir(out)) == ["caseA.nii.gz", "caseA.npz", "caseA.pkl", "caseB.nii.gz",
                                           "caseB.npz", "caseB.pkl", "dataset.json", "plans.json"]
    _, pkg = tn.package(tn.shared_tmp(), "ensemble2", "--fold", "0")
    assert json.load(open(os.path.join(outs[0], "plans.json"))) == json.load(open(os.path.join(pkg, "nnunet",
                                                                                               "plans.json")))
    plans = json.load(open(os.path.join(outs[0], "plans.json")))
    assert plans["image_reader_writer"] == "SimpleITKIO"
    merged = os.path.join(tmp, "merged")
    ensemble(outs, merged, dict(plans, image_reader_writer="NibabelIO"))
    for c, affine in affines.items():
        probs = [np.load(os.path.join(o, c + ".npz"))["probabilities"] for o in outs]
        want = np.argmax((probs[0] + probs[1]) / 2, 0).transpose(2, 1, 0)
        img = nib.load(os.path.join(merged, c + ".nii.gz"))
        got = np.asanyarray(img.dataobj)
        tn.agree(got, want, 0.999)
        one = np.asanyarray(nib.load(os.path.join(outs[0], c + ".nii.gz")).dataobj)
        assert (got != one).sum() > 20 and len(np.unique(got)) >= 3   # the two folds differ: a real mean
        src = nib.load(os.path.join(d, c + "_0000.nii.gz"))
        assert np.allclose(img.affine, src.affine, atol=1e-5), (img.affine, src.affine)
        assert np.allclose(img.header.get_zooms(), src.header.get_zooms())
        props = pickle.load(open(os.path.join(merged, c + ".pkl"), "rb"))   # nnU-Net's save_pickle of ours
        assert props == pickle.load(open(os.path.join(outs[0], c + ".pkl"), "rb"))
        assert np.allclose(np.load(os.path.join(merged, c + ".npz"))["probabilities"], (probs[0] + probs[1]) / 2)

    import SimpleITK as sitk   # nnU-Net's stub of it (tools/dev/make_nnunet_refs.py)
    sitk.reset_mock()
    ensemble(outs, os.path.join(tmp, "merged_sitk"))   # plans.json and dataset.json from the first folder
    assert sitk.WriteImage.call_count == 2
    img = sitk.GetImageFromArray.return_value
    for i, call in enumerate(sitk.WriteImage.call_args_list):   # case i's geometry: the i-th Set* calls
        c = os.path.basename(call[0][1])[:-len(".nii.gz")]
        affine = affines[c]
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
        flip = np.array([-1.0, -1.0, 1.0])
        spacing = img.SetSpacing.call_args_list[i][0][0]
        origin = img.SetOrigin.call_args_list[i][0][0]
        direction = img.SetDirection.call_args_list[i][0][0]
        probs = [np.load(os.path.join(o, c + ".npz"))["probabilities"] for o in outs]
        arr = sitk.GetImageFromArray.call_args_list[i][0][0]   # z, y, x as SimpleITK takes it
        tn.agree(arr, np.argmax((probs[0] + probs[1]) / 2, 0), 0.999)
        assert np.allclose(spacing, zooms)
        assert np.allclose(origin, flip * affine[:3, 3])
        assert np.allclose(np.reshape(direction, (3, 3)), flip[:, None] * affine[:3, :3] / zooms)


def test_nnunet_pkl_properties_match_nnunet_preprocessing(tmp):
    """the BraTS-like fixture (zero borders: nnU-Net crops to the non-zero
    box): CASE.pkl's spacing, affine, shapes and bbox_used_for_cropping
    equal what nnU-Net's own NibabelIO.read_images and crop_to_nonzero give
    for the same files, with nnU-Net's Python types (tuples, lists, ints,
    floats)"""
    nnunet()
    from nnunetv2.imageio.nibabel_reader_writer import NibabelIO
    from nnunetv2.preprocessing.cropping.cropping import crop_to_nonzero
    d = tn.predict_dir(tmp, "brain2")
    _, pkg = tn.package(tn.shared_tmp(), "brain2")
    out = os.path.join(tmp, "out")
    p = sp.run("predict", "-i", d, "-o", out, "-m", pkg, "--save_probabilities", "-q")
    assert p.returncode == 0, p.stderr
    props = pickle.load(open(os.path.join(out, "caseA.pkl"), "rb"))
    files = sorted(os.path.join(d, f) for f in os.listdir(d))
    data, ref = NibabelIO().read_images(files)
    _, _, bbox = crop_to_nonzero(data)
    assert [list(b) for b in bbox] != [[0, s] for s in data.shape[1:]]   # the fixture is cropped
    assert props["bbox_used_for_cropping"] == [[int(a), int(b)] for a, b in bbox]
    assert props["shape_before_cropping"] == tuple(data.shape[1:])
    assert props["shape_after_cropping_and_before_resampling"] == tuple(b - a for a, b in bbox)
    assert isinstance(props["spacing"], list) and np.allclose(props["spacing"], ref["spacing"])
    assert np.allclose(props["nibabel_stuff"]["original_affine"], ref["nibabel_stuff"]["original_affine"])
    assert all(type(v) is float for v in props["sitk_stuff"]["direction"]) and len(props["sitk_stuff"]["direction"]) == 9
    assert type(props["sitk_stuff"]["spacing"]) is tuple and type(props["shape_before_cropping"][0]) is int
    prob = np.load(os.path.join(out, "caseA.npz"))["probabilities"]
    assert prob.shape[1:] == props["shape_before_cropping"]


def test_nnunet_ensemble_region_based(tmp):
    """a region-based model (sigmoids, regions_class_order; cropped to the
    non-zero box): nnU-Net's ensembling of segpipe's folder alone gives
    segpipe's own labels (its LabelManager labels each voxel by the last
    region over 0.5) on the input's geometry (NibabelIO)"""
    nnunet()
    d = tn.predict_dir(tmp, "regions")
    _, pkg = tn.package(tn.shared_tmp(), "regions")
    out = os.path.join(tmp, "out")
    p = sp.run("predict", "-i", d, "-o", out, "-m", pkg, "--save_probabilities", "-q")
    assert p.returncode == 0, p.stderr
    plans = json.load(open(os.path.join(out, "plans.json")))
    assert json.load(open(os.path.join(out, "dataset.json")))["regions_class_order"] == [1, 2, 3]
    merged = os.path.join(tmp, "merged")
    ensemble([out], merged, dict(plans, image_reader_writer="NibabelIO"))
    img = nib.load(os.path.join(merged, "caseA.nii.gz"))
    own = nib.load(os.path.join(out, "caseA.nii.gz"))
    lab = np.asanyarray(own.dataobj)
    assert len(np.unique(lab)) >= 3
    tn.agree(np.asanyarray(img.dataobj), lab, 0.999)
    assert np.allclose(img.affine, nib.load(os.path.join(d, "caseA_0000.nii.gz")).affine, atol=1e-5)


def test_nnunet_pkl_write_error(tmp):
    """CASE.pkl that cannot be written (a folder of that name): exit 6
    naming the file, and no CASE.npz left without its .pkl (nnU-Net's
    ensembling would take it and fail on the missing .pkl)"""
    d = tn.predict_dir(tmp, "ensemble2")
    _, pkg = tn.package(tn.shared_tmp(), "ensemble2", "--fold", "0")
    out = os.path.join(tmp, "out")
    os.makedirs(os.path.join(out, "caseA.pkl"))
    p = sp.run("predict", "-i", d, "-o", out, "-m", pkg, "--save_probabilities", "-q")
    assert p.returncode == 6 and "caseA.pkl" in p.stderr and "cannot write" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and "Sanitizer" not in p.stderr
    assert not os.path.exists(os.path.join(out, "caseA.npz"))
