"""nnU-Net v2 models run as nnU-Net runs them (issue #46), checked against
the outputs of nnU-Net's REAL predictor: tests/ref/nnunet/*.npz were made
by tools/dev/make_nnunet_refs.py, which runs nnUNetPredictor (fetched
MIC-DKFZ/nnUNet and dynamic-network-architectures sources, commits in
SOURCES.json) on the fixtures of nnunet_fixture.py. The test rebuilds the
same fixture folders from their seeds (no weights are stored), imports them
with tools/import/import_nnunet.py and compares segpipe's labels (>= 99.9%
of voxels equal).

Fixtures: a 2-fold ensemble (mean of the folds' logits), one fold whose
checkpoint allows mirroring on (0, 1, 2) (8 passes per tile), a fold 0 +
fold_all ensemble mirrored on (1, 2), and a 3-channel MRI-like model
(ZScore, RescaleTo01, NoNormalization) through `segpipe predict`; each
mirrored one with and without test-time augmentation; a BraTS-like
2-channel model with masked z-score and zero borders (nnU-Net's crop to
the non-zero box); a region-based model (sigmoids, regions_class_order);
probabilities from --save_probabilities."""
import json, os, zipfile
import numpy as np
import nibabel as nib
import sp
import nnunet_fixture as fx

IMPORTER = os.path.join(sp.ROOT, "tools", "import", "import_nnunet.py")
REFS = os.path.join(sp.ROOT, "tests", "ref", "nnunet")
_cache = {}


def package(tmp_root, name, *extra):
    """fixture `name` imported (once per module and options)"""
    key = (name,) + extra
    if key not in _cache:
        base = os.path.join(tmp_root, "nnunet-" + "-".join(key).replace(",", "_"))
        folder = fx.make_folder(base, name)
        out = os.path.join(base, "pkg")
        folds = ",".join(fx.CASES[name]["folds"])
        p = sp.tool(IMPORTER, folder, "-o", out, "--fold", folds, *extra)
        assert p.returncode == 0, p.stderr
        _cache[key] = (folder, out)
    return _cache[key]


_shared_tmp = []


def shared_tmp():
    if not _shared_tmp:
        import tempfile
        _shared_tmp.append(tempfile.TemporaryDirectory(prefix="sp-nnunet-"))
    return _shared_tmp[0].name


def case_file(tmp, name):
    chans, affine = fx.make_case(name)
    path = os.path.join(tmp, f"{name}_0000.nii.gz")
    nib.save(nib.Nifti1Image(chans[0], affine), path)
    return path


def segment(tmp, name, pkg, *opts):
    out = os.path.join(tmp, f"{name}-seg.nii.gz")
    sp.run("ct", case_file(tmp, name), "-o", out, "--model", pkg, "-q", "--no-passport", *opts, check=True)
    return np.asanyarray(nib.load(out).dataobj)


def ref(name, tta=True, sums="half"):
    """nnU-Net's labels (nibabel order) and its probabilities of the stored
    slab (classes x i x j x slab, fx.PROB_SLAB): as it runs (sums in half),
    or with its sums in float (sums="float")"""
    stem = os.path.join(REFS, name + ("" if tta or fx.CASES[name]["mirror"] is None else ".notta"))
    r = np.load(stem + (".fp32.npz" if sums == "float" else ".npz"))
    return r["labels"], r["probabilities"].astype(np.float32)


def agree(got, want, at_least=0.999):
    assert got.shape == want.shape, (got.shape, want.shape)
    frac = float((got == want).mean())
    assert frac >= at_least, f"{frac:.5f} of voxels agree with nnU-Net's predictor"
    return frac


def check(tmp, name, pkg, tta, *opts):
    """segpipe against nnU-Net's predictor, both arithmetics:
    - float sums (segpipe's default) == nnU-Net's algorithm with float sums
      (>= 99.99%);
    - --accumulator fp16 does nnU-Net's half arithmetic: one fold gives its
      labels bit for bit (>= 99.99%); an ensemble (nnU-Net rounds each fold's
      window to half before averaging, segpipe averages the folds' logits
      in the graph) >= 99.9%, or at worst as close as nnU-Net's own half
      and float runs are to each other (less 0.05%: a fixture of 45,000
      voxels has about 50 near-ties);
    - the default against nnU-Net as it runs: as close as that too."""
    got = segment(tmp, name, pkg, *opts)
    agree(got, ref(name, tta, "float")[0], 0.9999)
    half, _ = ref(name, tta)
    own = float((half == ref(name, tta, "float")[0]).mean())   # nnU-Net half vs nnU-Net float
    single = len(fx.CASES[name]["folds"]) == 1
    agree(segment(tmp, name, pkg, "--accumulator", "fp16", *opts), half, 0.9999 if single else min(0.999, own - 5e-4))
    agree(got, half, min(0.999, own - 5e-4))


def test_nnunet_fold_ensemble_matches_real_predictor(tmp):
    """--fold 0,1: one package; labels of nnU-Net's predictor with -f 0 1
    (logits averaged over the folds, then softmax/argmax)"""
    _, pkg = package(shared_tmp(), "ensemble2")
    man = json.load(open(os.path.join(pkg, "segpipe.json")))
    assert man["nnunet"]["folds"] == ["0", "1"] and "tta" not in man   # checkpoints without mirroring axes
    want, prob = ref("ensemble2")
    assert len(np.unique(want)) >= 3
    check(tmp, "ensemble2", pkg, True)


def test_nnunet_single_fold_of_ensemble_differs(tmp):
    """one fold of the same folder gives other labels: the test above is
    sensitive to the ensemble (not passing by one fold's luck)"""
    folder, _ = package(shared_tmp(), "ensemble2")
    out = os.path.join(tmp, "fold1")
    p = sp.tool(IMPORTER, folder, "-o", out, "--fold", "1")
    assert p.returncode == 0, p.stderr
    want, _ = ref("ensemble2", True, "float")
    assert (segment(tmp, "ensemble2", out) == want).mean() < 0.99


def test_nnunet_mirroring_tta_matches_real_predictor(tmp):
    """inference_allowed_mirroring_axes (0, 1, 2): default on (8 passes per
    tile, as nnUNetv2_predict), --no-tta / --disable_tta as its --disable_tta"""
    _, pkg = package(shared_tmp(), "mirror")
    man = json.load(open(os.path.join(pkg, "segpipe.json")))
    assert man["tta"] == {"onnx": "model.tta.onnx", "mirror_axes": [0, 1, 2], "default": True}
    on, _ = ref("mirror", True)
    off, _ = ref("mirror", False)
    assert (on == off).mean() < 0.9   # mirroring changes this fixture's labels
    check(tmp, "mirror", pkg, True)
    check(tmp, "mirror", pkg, True, "--tta")
    check(tmp, "mirror", pkg, False, "--no-tta")
    agree(segment(tmp, "mirror", pkg, "--disable_tta"), ref("mirror", False, "float")[0], 0.9999)


def test_nnunet_ensemble_with_fold_all_and_mirroring(tmp):
    """--fold 0,all with mirroring axes (1, 2) from the first fold's checkpoint"""
    _, pkg = package(shared_tmp(), "ensemble2_mirror")
    man = json.load(open(os.path.join(pkg, "segpipe.json")))
    assert man["nnunet"]["folds"] == ["0", "all"] and man["tta"]["mirror_axes"] == [1, 2]
    check(tmp, "ensemble2_mirror", pkg, True)
    check(tmp, "ensemble2_mirror", pkg, False, "--no-tta")


def test_nnunet_fold_errors(tmp):
    """a missing fold, a bad --fold, --split-head with an ensemble: exit 4,
    a message naming the cause, no package left"""
    folder, _ = package(shared_tmp(), "ensemble2")
    for fold, msg in (("0,3", "fold 3: no checkpoint_final.pth"), ("0,x", "comma list"), ("0,0", "each fold once")):
        out = os.path.join(tmp, "x" + fold.replace(",", "_"))
        p = sp.tool(IMPORTER, folder, "-o", out, "--fold", fold)
        assert p.returncode == 4 and msg in p.stderr, p.stderr
        assert not os.path.exists(os.path.join(out, "segpipe.json"))
    out = os.path.join(tmp, "split")
    p = sp.tool(IMPORTER, folder, "-o", out, "--fold", "0,1", "--split-head")
    assert p.returncode == 4 and "--split-head takes one fold" in p.stderr
    assert not os.path.exists(os.path.join(out, "segpipe.json"))


def test_nnunet_tta_option_errors(tmp):
    """--tta with --inputs is refused (exit 2); a package without mirroring
    runs plain with --tta, as nnU-Net's predictor does"""
    _, pkg = package(shared_tmp(), "ensemble2")
    p = sp.run("ct", "--inputs", os.path.join(tmp, "list.txt"), "-o", tmp, "--model", pkg, "--tta")
    assert p.returncode == 2 and "--tta" in p.stderr
    agree(segment(tmp, "ensemble2", pkg, "--tta"), ref("ensemble2", True, "float")[0], 0.9999)


def test_nnunet_bad_tta_manifest(tmp):
    """a manifest "tta" without its fields is refused by model check"""
    _, pkg = package(shared_tmp(), "mirror")
    bad = os.path.join(tmp, "bad")
    os.makedirs(bad)
    for f in ("model.onnx", "model.tta.onnx"):
        os.symlink(os.path.join(pkg, f), os.path.join(bad, f))
    man = json.load(open(os.path.join(pkg, "segpipe.json")))
    man["tta"]["mirror_axes"] = [0, 3]
    json.dump(man, open(os.path.join(bad, "segpipe.json"), "w"))
    p = sp.run("model", "check", bad)
    assert p.returncode == 4 and "mirror_axes" in p.stderr
    # model check loads both graphs: a plain one that does not fit is found
    man["tta"]["mirror_axes"] = [0, 1, 2]
    json.dump(man, open(os.path.join(bad, "segpipe.json"), "w"))
    p = sp.run("model", "check", bad)
    assert p.returncode == 0 and "(plain and mirrored graphs)" in p.stdout, p.stderr
    os.remove(os.path.join(bad, "model.onnx"))
    os.symlink(os.path.join(package(shared_tmp(), "mr3")[1], "model.onnx"), os.path.join(bad, "model.onnx"))
    p = sp.run("model", "check", bad)
    assert p.returncode == 4 and "3 channels" in p.stderr, p.stderr


def predict_dir(tmp, name, cases=("caseA",)):
    """IN_DIR with the fixture's case under each name, channels _0000, _0001 ..."""
    d = os.path.join(tmp, "in")
    os.makedirs(d, exist_ok=True)
    chans, affine = fx.make_case(name)
    for c in cases:
        for q, ch in enumerate(chans):
            nib.save(nib.Nifti1Image(ch, affine), os.path.join(d, f"{c}_{q:04d}.nii.gz"))
    return d


def test_nnunet_predict_multichannel_matches_real_predictor(tmp):
    """segpipe predict on a 3-channel model (ZScore, RescaleTo01,
    NoNormalization, each channel by its own scheme), CASE_0000..0002 as
    nnUNetv2_predict reads them, OUT_DIR/CASE.nii.gz: nnU-Net's labels,
    with and without mirroring"""
    _, pkg = package(shared_tmp(), "mr3")
    man = json.load(open(os.path.join(pkg, "segpipe.json")))
    assert man["input"]["channels"] == 3
    assert [n["scheme"] for n in man["normalization"]] == ["zscore", "minmax", "none"]
    d = predict_dir(tmp, "mr3", ("caseA", "caseB"))
    for q, r in ((0, "x"), (1, "0"), ("x", "1")):   # caseB: channels 0 and 1 swapped
        os.rename(os.path.join(d, f"caseB_{q:04}.nii.gz" if q != "x" else "caseB_x.nii.gz"),
                  os.path.join(d, f"caseB_{int(r):04}.nii.gz" if r != "x" else "caseB_x.nii.gz"))
    out = os.path.join(tmp, "out")
    for opts, tta in (([], True), (["--disable_tta"], False)):
        p = sp.run("predict", "-i", d, "-o", out, "-m", pkg, *opts)
        assert p.returncode == 0, p.stderr
        assert ("mirroring on" if tta else "mirroring off") in p.stderr
        # the labels, and the trained folder's json files (kept at import) as nnUNetv2_predict writes them
        assert sorted(os.listdir(out)) == ["caseA.nii.gz", "caseB.nii.gz", "dataset.json", "plans.json"]
        a = np.asanyarray(nib.load(os.path.join(out, "caseA.nii.gz")).dataobj)
        b = np.asanyarray(nib.load(os.path.join(out, "caseB.nii.gz")).dataobj)
        agree(a, ref("mr3", tta, "float")[0], 0.9999)
        agree(a, ref("mr3", tta)[0], 0.999)
        assert tta or (a == b).mean() < 0.95, (a == b).mean()   # channels told apart by their suffix


def test_nnunet_predict_ct_equals_ct_command(tmp):
    """a one-channel package through predict gives segpipe ct's labels;
    -f naming the package's folds (any order, nnU-Net's space-separated
    list) is accepted; --continue_prediction skips a case already done"""
    _, pkg = package(shared_tmp(), "ensemble2")
    d = predict_dir(tmp, "ensemble2")
    out = os.path.join(tmp, "out")
    p = sp.run("predict", "-i", d, "-o", out, "-m", pkg, "-f", "1", "0", "-q")
    assert p.returncode == 0, p.stderr
    got = np.asanyarray(nib.load(os.path.join(out, "caseA.nii.gz")).dataobj)
    assert np.array_equal(got, segment(tmp, "ensemble2", pkg))
    before = os.stat(os.path.join(out, "caseA.nii.gz")).st_mtime_ns
    p = sp.run("predict", "-i", d, "-o", out, "-m", pkg, "--continue_prediction", "-q")
    assert p.returncode == 0 and os.stat(os.path.join(out, "caseA.nii.gz")).st_mtime_ns == before


def test_nnunet_predict_errors(tmp):
    """what nnUNetv2_predict users get wrong, refused before anything is
    written, each named: a missing channel, a file without the channel
    suffix, a channel the model does not take, folds the package does not
    average, nnU-Net's results-folder options, channels on other grids"""
    _, pkg3 = package(shared_tmp(), "mr3")
    _, pkg1 = package(shared_tmp(), "ensemble2")
    d = predict_dir(tmp, "mr3")
    out = os.path.join(tmp, "out")

    def run(model, *extra, indir=d):
        return sp.run("predict", "-i", indir, "-o", out, "-m", model, *extra)
    os.rename(os.path.join(d, "caseA_0001.nii.gz"), os.path.join(d, "caseA_0007.nii.gz"))
    p = run(pkg3)
    assert p.returncode == 3 and "channel 7" in p.stderr and "3 channels" in p.stderr, p.stderr
    os.rename(os.path.join(d, "caseA_0007.nii.gz"), os.path.join(d, "caseB_0001.nii.gz"))
    p = run(pkg3)
    assert p.returncode == 3 and "case caseA has no channel 0001" in p.stderr, p.stderr
    p = run(pkg1)
    assert p.returncode == 3 and "caseA_0002.nii.gz is channel 2" in p.stderr and "takes 1 channel" in p.stderr, p.stderr
    os.rename(os.path.join(d, "caseB_0001.nii.gz"), os.path.join(d, "caseA_0001.nii.gz"))
    open(os.path.join(d, "notes.nii.gz"), "w").close()
    p = run(pkg3)
    assert p.returncode == 3 and "notes.nii.gz is not named CASE_XXXX.nii.gz" in p.stderr, p.stderr
    os.remove(os.path.join(d, "notes.nii.gz"))
    p = run(pkg1, "-f", "0", "1", "2", indir=predict_dir(os.path.join(tmp, "one"), "ensemble2"))
    assert p.returncode == 2 and "averages folds 0,1" in p.stderr, p.stderr
    p = sp.run("predict", "-i", d, "-o", out, "-d", "990", "-c", "3d_fullres")
    assert p.returncode == 2 and "import_nnunet.py" in p.stderr, p.stderr
    assert not os.path.exists(out)
    # a channel on another grid: refused naming both grids
    chans, affine = fx.make_case("mr3")
    nib.save(nib.Nifti1Image(chans[2][:-1], affine), os.path.join(d, "caseA_0002.nii.gz"))
    p = run(pkg3)
    assert p.returncode == 3 and "channel 2's grid" in p.stderr and "case caseA" in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(out, "caseA.nii.gz"))
    # segpipe ct on a 3-channel package: pointed to predict
    p = sp.run("ct", os.path.join(d, "caseA_0000.nii.gz"), "-o", os.path.join(tmp, "x.nii.gz"), "-m", pkg3)
    assert p.returncode == 3 and "segpipe predict" in p.stderr, p.stderr


def test_nnunet_save_probabilities(tmp):
    """--save_probabilities: OUT_DIR/CASE.npz with one array `probabilities`,
    float32, (classes, z, y, x) as nnU-Net writes it (its SimpleITK order);
    --accumulator fp16 against nnU-Net as it runs, one fold: all within 1e-3
    (its half arithmetic); float sums against its float-sum run, and an
    ensemble: >= 99.8% within 1e-3 (nnU-Net's Gaussian is half even with
    float sums: at tile corners its subnormal weights are coarse), none off
    by 0.05; the labels are their argmax. The container is numpy's: one
    deflated probabilities.npy dated 1980-01-01, CRC right"""
    k0, k1 = fx.PROB_SLAB
    for name, opts in (("mr3", ["--disable_tta"]), ("mr3", []), ("ensemble2", [])):
        _, pkg = package(shared_tmp(), name)
        d = predict_dir(os.path.join(tmp, name + str(len(opts))), name)
        out = os.path.join(tmp, "out" + name + str(len(opts)))
        tta = not opts
        for acc, sums in (("fp32", "float"), ("fp16", "half")):
            p = sp.run("predict", "-i", d, "-o", out, "-m", pkg, "--save_probabilities", "--accumulator", acc, "-q",
                       *opts)
            assert p.returncode == 0, p.stderr
            z = np.load(os.path.join(out, "caseA.npz"))
            assert list(z.keys()) == ["probabilities"]
            with zipfile.ZipFile(os.path.join(out, "caseA.npz")) as zf:   # np.savez_compressed's container
                (zi,) = zf.infolist()
                assert zf.testzip() is None and zi.filename == "probabilities.npy", zi
                assert zi.compress_type == zipfile.ZIP_DEFLATED and zi.date_time == (1980, 1, 1, 0, 0, 0), zi
            prob = z["probabilities"]
            lab = np.asanyarray(nib.load(os.path.join(out, "caseA.nii.gz")).dataobj)
            assert prob.dtype == np.float32 and prob.shape == (fx.num_classes(name),) + lab.shape[::-1]
            assert np.abs(prob.sum(0) - 1).max() < 1e-5
            mine = prob.transpose(0, 3, 2, 1)
            assert (mine.argmax(0) == lab).mean() > 0.9999
            want = ref(name, tta, sums)[1]
            diff = np.abs(mine[..., k0:k1] - want)
            if sums == "half" and len(fx.CASES[name]["folds"]) == 1:   # nnU-Net's arithmetic: all of them
                assert diff.max() <= 1e-3, (name, acc, diff.max())
            else:   # left: where nnU-Net's half Gaussian is subnormal (volume edges); an ensemble's per-fold rounding
                assert (diff <= 1e-3).mean() >= 0.998 and diff.max() < 0.05, (diff.max(), (diff > 1e-3).mean())


def test_nnunet_crop_and_masked_zscore(tmp):
    """a BraTS-like model (two sequences, ZScoreNormalization with
    use_mask_for_norm, zero borders and a zero hole): nnU-Net predicts in the
    box of non-zero voxels (label 0 outside) and z-scores over the non-zero
    mask with its holes filled; segpipe gives its labels. The same package
    without the crop and the mask does not: the fixture tells them apart."""
    _, pkg = package(shared_tmp(), "brain2")
    man = json.load(open(os.path.join(pkg, "segpipe.json")))
    assert man["crop_nonzero"] is True
    assert man["normalization"] == [{"scheme": "zscore", "mask": "nonzero"}] * 2
    d = predict_dir(tmp, "brain2")
    out = os.path.join(tmp, "out")
    got = {}
    for acc in ("fp32", "fp16"):
        p = sp.run("predict", "-i", d, "-o", out, "-m", pkg, "--accumulator", acc, "-q")
        assert p.returncode == 0, p.stderr
        got[acc] = np.asanyarray(nib.load(os.path.join(out, "caseA.nii.gz")).dataobj)
    agree(got["fp32"], ref("brain2", True, "float")[0], 0.9999)
    agree(got["fp16"], ref("brain2", True)[0], 0.9999)
    assert not got["fp32"][:5].any() and not got["fp32"][40:].any()   # outside the box: 0
    plain = os.path.join(tmp, "plain")
    os.makedirs(plain)
    os.symlink(os.path.join(pkg, "model.onnx"), os.path.join(plain, "model.onnx"))
    man["crop_nonzero"] = False
    man["normalization"] = [{"scheme": "zscore"}] * 2
    json.dump(man, open(os.path.join(plain, "segpipe.json"), "w"))
    p = sp.run("predict", "-i", d, "-o", out, "-m", plain, "-q")
    assert p.returncode == 0, p.stderr
    other = np.asanyarray(nib.load(os.path.join(out, "caseA.nii.gz")).dataobj)
    assert (other == ref("brain2", True, "float")[0]).mean() < 0.99
    # the mask without the crop: refused by the manifest check
    man["normalization"] = [{"scheme": "zscore", "mask": "nonzero"}] * 2
    json.dump(man, open(os.path.join(plain, "segpipe.json"), "w"))
    p = sp.run("model", "check", plain)
    assert p.returncode == 4 and "crop_nonzero" in p.stderr, p.stderr


def test_nnunet_region_based(tmp):
    """a region-based model (dataset.json labels as lists, regions_class_order;
    BraTS's layout): one sigmoid per region, a voxel labelled by the last
    region over 0.5; with mirroring, crop and masked z-score. Labels as
    nnU-Net's (both arithmetics, TTA on and off) and probabilities (the
    regions' sigmoids, 0 outside the crop) within 1e-3"""
    _, pkg = package(shared_tmp(), "regions")
    man = json.load(open(os.path.join(pkg, "segpipe.json")))
    assert man["regions"] == {"class_order": [1, 2, 3]}
    assert man["labels"] == {"0": "background", "1": "whole tumor", "2": "tumor core", "3": "enhancing"}
    d = predict_dir(tmp, "regions")
    out = os.path.join(tmp, "out")
    k0, k1 = fx.PROB_SLAB
    for opts, tta in (([], True), (["--disable_tta"], False)):
        for acc, sums in (("fp32", "float"), ("fp16", "half")):
            p = sp.run("predict", "-i", d, "-o", out, "-m", pkg, "--accumulator", acc, "--save_probabilities", "-q",
                       *opts)
            assert p.returncode == 0, p.stderr
            lab = np.asanyarray(nib.load(os.path.join(out, "caseA.nii.gz")).dataobj)
            want, wprob = ref("regions", tta, sums)
            assert len(np.unique(want)) >= 3
            agree(lab, want, 0.9999)
            prob = np.load(os.path.join(out, "caseA.npz"))["probabilities"].transpose(0, 3, 2, 1)
            assert prob.shape == (3,) + lab.shape
            assert np.abs(prob[..., k0:k1] - wprob).max() <= 1e-3
            assert not prob[:, :5].any()   # outside the crop: 0 for every region, as nnU-Net
    # one channel of a 2-channel model through segpipe ct: refused, naming the count
    p = sp.run("ct", os.path.join(d, "caseA_0000.nii.gz"), "-o", os.path.join(tmp, "x.nii.gz"), "-m", pkg)
    assert p.returncode == 3 and "takes 2 input volumes" in p.stderr, p.stderr


def test_nnunet_postprocessing_pkl(tmp):
    """--postprocessing postprocessing.pkl: nnU-Net's largest-component
    removals (a foreground list, a label, a region), in order, on every
    prediction; labels as nnU-Net's apply_postprocessing on its own
    prediction (the reference ran its functions from this very pickle
    format). A pickle naming anything else is refused unread (exit 4)."""
    folder, _ = package(shared_tmp(), "ensemble2")
    pkl = os.path.join(tmp, "postprocessing.pkl")
    fx.write_postprocessing(pkl)
    out = os.path.join(tmp, "pkg")
    p = sp.tool(IMPORTER, folder, "-o", out, "--fold", "0,1", "--postprocessing", pkl)
    assert p.returncode == 0, p.stderr
    assert json.load(open(os.path.join(out, "segpipe.json")))["postprocess"] == {"nnunet": [[1, 2, 3], [1], [2, 3]]}
    r32, r16 = (np.load(os.path.join(REFS, "ensemble2" + s + ".npz")) for s in (".fp32", ""))
    assert (r32["labels"] != r32["labels_pp"]).sum() > 1000   # the removals matter on this fixture
    got = segment(tmp, "ensemble2", out)
    agree(got, r32["labels_pp"], 0.9999)
    agree(segment(tmp, "ensemble2", out, "--accumulator", "fp16"), r16["labels_pp"], 0.998)
    # a pickle that names another callable: refused, nothing run
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + os.path.join(tmp, "pwned"),))
    pickle.dump(([Evil()], [{}]), open(pkl, "wb"))
    p = sp.tool(IMPORTER, folder, "-o", os.path.join(tmp, "x"), "--postprocessing", pkl)
    assert p.returncode == 4 and "only nnunetv2.postprocessing" in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(tmp, "pwned"))
    assert not os.path.exists(os.path.join(tmp, "x", "segpipe.json"))


def test_nnunet_2d_configuration(tmp):
    """a 2d configuration: each slice through the 2D U-Net (tiles [1, H, W],
    every slice once, the 2D Gaussian), the slices' spacing kept, mirroring
    on the in-plane axes; nnU-Net's labels with and without TTA. A 1D
    network is refused by name (exit 4, no package)."""
    folder, pkg = package(shared_tmp(), "slices2d")
    man = json.load(open(os.path.join(pkg, "segpipe.json")))
    assert man["patch_size"] == [1, 16, 16] and man["spacing"] == [0.0, 1.5, 2.0]
    assert man["tta"]["mirror_axes"] == [1, 2]
    check(tmp, "slices2d", pkg, True)
    check(tmp, "slices2d", pkg, False, "--no-tta")
    plans = json.load(open(os.path.join(folder, "plans.json")))
    plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["conv_op"] = "torch.nn.modules.conv.Conv1d"
    json.dump(plans, open(os.path.join(folder, "plans.json"), "w"))
    out = os.path.join(tmp, "x")
    p = sp.tool(IMPORTER, folder, "-o", out)
    assert p.returncode == 4 and "Conv1d" in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(out, "segpipe.json"))


def test_nnunet_cascade(tmp):
    """a cascade: 3d_lowres through predict, then 3d_cascade_fullres with
    -prev_stage_predictions (the image and the lowres labels one-hot, 1 + 3
    input channels) as nnUNetv2_predict runs the two: --accumulator fp16
    gives nnU-Net's labels (>= 99.99%); float sums >= 99.5% (both stages'
    differences compound: nnU-Net's own half and float runs agree on
    98.7%); a cascade stage without the previous labels, or a case missing
    from them: refused"""
    low, high = fx.make_cascade(os.path.join(tmp, "m"))
    pk = {}
    for f, k in ((low, "low"), (high, "high")):
        pk[k] = os.path.join(tmp, k)
        p = sp.tool(IMPORTER, f, "-o", pk[k])
        assert p.returncode == 0, p.stderr
    man = json.load(open(os.path.join(pk["high"], "segpipe.json")))
    assert man["cascade"] == {"previous_stage": "3d_lowres", "image_channels": 1, "labels": [1, 2, 3]}
    assert man["input"]["channels"] == 4 and man["normalization"][1:] == [{"scheme": "none"}] * 3
    d = predict_dir(tmp, "cascade")
    olow, ohigh = os.path.join(tmp, "olow"), os.path.join(tmp, "ohigh")
    for acc, sums, least in (("fp16", "half", 0.9999), ("fp32", "float", 0.995)):
        for args in (["-m", pk["low"], "-o", olow], ["-m", pk["high"], "-o", ohigh, "-prev_stage_predictions", olow]):
            p = sp.run("predict", "-i", d, "--accumulator", acc, "-q", *args)
            assert p.returncode == 0, p.stderr
        agree(np.asanyarray(nib.load(os.path.join(ohigh, "caseA.nii.gz")).dataobj), ref("cascade", True, sums)[0],
              least)
    p = sp.run("predict", "-i", d, "-o", ohigh, "-m", pk["high"])
    assert p.returncode == 2 and "-prev_stage_predictions" in p.stderr
    os.remove(os.path.join(olow, "caseA.nii.gz"))
    p = sp.run("predict", "-i", d, "-o", ohigh, "-m", pk["high"], "-prev_stage_predictions", olow)
    assert p.returncode == 3 and "no previous-stage labels" in p.stderr, p.stderr
