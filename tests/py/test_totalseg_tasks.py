"""TotalSegmentator's tasks beyond `total` (issue #43): cropping from a prior
result (its crop_path), task post-processing, against TotalSegmentator's own
code where it runs here.

The fake TOTALSEG_HOME, its imported packages and the CT come from
test_totalseg.py's fixture. TotalSegmentator's package is taken from its
source (the fetched mirror or $TOTALSEG_SRC) with `git archive`; its modules
import tqdm and requests for downloads and progress bars only, so those two
are stubbed when absent (nothing tested goes through them).
"""
import os, shutil, subprocess, sys, tempfile, types

import numpy as np
import nibabel as nib
import sp
import test_totalseg as T

_cache = {}


def ts_package():
    """TotalSegmentator's `totalsegmentator` package from its source, importable
    (None when the source is not at hand)."""
    if "pkg" in _cache:
        return _cache["pkg"]
    _cache["pkg"] = None
    for g in T.MIRRORS:
        if not g or not os.path.isdir(g):
            continue
        d = tempfile.mkdtemp(prefix="tssrc-")
        a = subprocess.run(f"git --git-dir '{g}' archive HEAD totalsegmentator | tar -x -C '{d}'", shell=True,
                           capture_output=True)
        if not os.path.isfile(os.path.join(d, "totalsegmentator", "libs.py")):
            shutil.rmtree(d)
            continue
        for name in ("tqdm", "requests"):
            try:
                __import__(name)
            except ImportError:
                stub = types.ModuleType(name)
                stub.tqdm = lambda x=None, *a, **k: x
                sys.modules[name] = stub
        sys.path.insert(0, d)
        import totalsegmentator.libs as libs
        import totalsegmentator.postprocessing as post
        import totalsegmentator.nifti_ext_header as ext
        import totalsegmentator.map_to_binary as maps
        _cache["pkg"] = types.SimpleNamespace(libs=libs, post=post, ext=ext, maps=maps, dir=d, rc=a.returncode)
        return _cache["pkg"]
    return None


def need_ts():
    m = ts_package()
    if m is None:
        raise sp.Skip("TotalSegmentator's source not at hand ($TOTALSEG_SRC)")
    return m


def fake_task(tmp, prefix, ids, task, out):
    """A fake TotalSegmentator home holding the task ids' networks (patch 32)
    and the task imported from it to tmp/out: (folder, home, package, manifest)."""
    d = tempfile.mkdtemp(prefix=prefix, dir=tmp)
    home = os.path.join(d, "home")
    p = T.py(T.FAKE, home, "--patch", "32", "--ids", ids)
    assert p.returncode == 0, p.stderr
    pkg = os.path.join(tmp, out)
    p = T.py(T.IMPORTER, home, "-o", pkg, "--task", task)
    assert p.returncode == 0, p.stderr
    return d, home, pkg, T.json.load(open(os.path.join(pkg, "segpipe.json")))


def subtask(fx):
    """liver_vessels imported, and a copy cropping to the crop model's most
    compact structure (random weights scatter 'liver': this gives a real crop)"""
    if "sub" in _cache:
        return _cache["sub"]
    d = tempfile.mkdtemp(prefix="tssub-")
    pkg = os.path.join(d, "liver_vessels")
    p = T.py(T.IMPORTER, fx["home"], "-o", pkg, "--task", "liver_vessels")
    assert p.returncode == 0, p.stderr
    man = T.json.load(open(os.path.join(pkg, "segpipe.json")))
    organ = os.path.join(d, "organ.nii.gz")   # the crop model's result, with segpipe's label table
    T.run_ct(os.path.join(pkg, man["crop"]["dir"]), organ, "--no-passport")
    seg = T.labels_of(organ)
    cmt = T.upstream_maps()[0]
    counts = np.bincount(seg.ravel(), minlength=118)

    def box(lab):
        idx = np.where(seg == lab)
        return np.prod([int(i.max()) - int(i.min()) + 1 for i in idx])
    compact = cmt[min((k for k in cmt if counts[k]), key=box)]
    pkg2 = os.path.join(d, "compact")
    shutil.copytree(pkg, pkg2)
    m2 = dict(man, crop=dict(man["crop"], structures=[compact]))
    T.json.dump(m2, open(os.path.join(pkg2, "segpipe.json"), "w"))
    _cache["sub"] = dict(dir=d, pkg=pkg, compact_pkg=pkg2, compact=compact, man=man, organ=organ, organ_seg=seg)
    return _cache["sub"]


def ts_crop_reference(tmp, part_dir, crop_mask, addon):
    """TotalSegmentator's steps with a crop mask: crop_to_mask (its own
    function), the model on the crop, undo_crop; the bbox too."""
    img = nib.load(T.fixture()["ct"])
    crop_img, bbox = T.crop_to_mask(img, nib.Nifti1Image(crop_mask.astype(np.uint8), img.affine), addon)
    cropped = os.path.join(tmp, "cropped.nii.gz")
    nib.save(crop_img, cropped)
    o = os.path.join(tmp, "cpart.nii.gz")
    q = sp.run("ct", cropped, "-o", o, "--model", part_dir, "--no-passport", "-q")
    assert q.returncode == 0, q.stderr
    ref = np.zeros(img.shape, np.int32)
    ref[bbox[0][0]:bbox[0][1], bbox[1][0]:bbox[1][1], bbox[2][0]:bbox[2][1]] = T.labels_of(o)
    return ref, bbox


def test_totalseg_crop_from_prior_result(tmp):
    """--crop-from a prior `total` result instead of the crop model: given the
    crop model's own output (segpipe's file with its label table, TotalSegmentator's
    --ml file written by its add_label_map_to_nifti, a file without table read
    by class_map["total"]'s ids, a folder of <name>.nii.gz masks) the labels
    equal a run with the crop model; given another prior result, the crop is
    TotalSegmentator's: the mask its combine_masks builds from that file/folder,
    its crop_to_mask with the package's 20 mm, the model on the crop, undo_crop."""
    fx, s = T.fixture(), None
    s = subtask(fx)
    ts = ts_package()
    cmt = T.upstream_maps()[0]
    inv = {v: k for k, v in cmt.items()}
    img = nib.load(fx["ct"])
    pkg, name, seg = s["compact_pkg"], s["compact"], s["organ_seg"]
    with_model = os.path.join(tmp, "model.nii.gz")
    T.run_ct(pkg, with_model, "--no-passport")
    ref_model = T.labels_of(with_model)
    # the prior result in the forms TotalSegmentator users have
    plain = os.path.join(tmp, "plain.nii.gz")
    nib.save(nib.Nifti1Image(seg.astype(np.uint8), img.affine), plain)
    priors = {"segpipe": s["organ"], "plain": plain, "folder": os.path.join(tmp, "masks")}
    os.makedirs(priors["folder"])
    for k, v in cmt.items():   # TotalSegmentator's output folder: one mask per structure, all of them
        nib.save(nib.Nifti1Image((seg == k).astype(np.uint8), img.affine), os.path.join(priors["folder"], v + ".nii.gz"))
    if ts:
        priors["ts_ml"] = os.path.join(tmp, "ts_ml.nii.gz")
        ts.ext.save_multilabel_nifti(nib.Nifti1Image(seg.astype(np.uint8), img.affine), priors["ts_ml"], cmt)
    for kind, path in priors.items():
        out = os.path.join(tmp, f"out_{kind}.nii.gz")
        T.run_ct(pkg, out, "--no-passport", "--crop-from", path)
        assert np.array_equal(T.labels_of(out), ref_model), kind
        if ts and kind != "plain":   # TotalSegmentator's own reading of the file/folder gives the same mask
            from pathlib import Path
            m = ts.libs.combine_masks(Path(path), [name]).get_fdata()
            assert np.array_equal(m > 0, seg == inv[name]), kind
    # TotalSegmentator's spelling of the option
    out = os.path.join(tmp, "cp.nii.gz")
    T.run_ct(pkg, out, "--no-passport", "--crop_path", priors["folder"])
    assert np.array_equal(T.labels_of(out), ref_model)
    # another prior: the structure a small block away from where the crop model put it
    other = np.zeros_like(seg)
    other[3:9, 30:40, 2:6] = inv[name]
    other[20:30, 5:9, 10:12] = inv["spleen"] if name != "spleen" else inv["liver"]   # not a crop structure
    prior = os.path.join(tmp, "other.nii.gz")
    ts_img = nib.Nifti1Image(other.astype(np.uint8), img.affine)
    if ts:
        ts.ext.save_multilabel_nifti(ts_img, prior, cmt)
        mask = ts.libs.combine_masks(__import__("pathlib").Path(prior), [name]).get_fdata() > 0
    else:
        nib.save(ts_img, prior)
        mask = other == inv[name]
    part = os.path.join(pkg, s["man"]["parts"][0]["dir"])
    ref, bbox = ts_crop_reference(tmp, part, mask, s["man"]["crop"]["addon_mm"])
    assert ref.any() and [list(b) for b in bbox] != [[0, n] for n in img.shape]   # a real crop, something found
    out = os.path.join(tmp, "other_out.nii.gz")
    T.run_ct(pkg, out, "--no-passport", "--crop-from", prior)
    ours = T.labels_of(out)
    assert (ours == ref).mean() >= 0.999
    assert not np.array_equal(ours, ref_model)   # the prior, not the crop model, chose the box
    # the box itself: nothing labelled outside TotalSegmentator's bbox
    outside = np.ones(img.shape, bool)
    outside[bbox[0][0]:bbox[0][1], bbox[1][0]:bbox[1][1], bbox[2][0]:bbox[2][1]] = False
    assert not ours[outside].any()
    # the structure absent from the prior: TotalSegmentator's "Crop is empty", all background
    empty = os.path.join(tmp, "empty.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), empty)
    T.run_ct(pkg, os.path.join(tmp, "e.nii.gz"), "--no-passport", "--crop-from", empty)
    assert T.labels_of(os.path.join(tmp, "e.nii.gz")).max() == 0


def test_totalseg_crop_from_roi_subset(tmp):
    """--roi-subset with --crop-from the crop model's output gives the labels
    of --roi-subset with the crop model, also on a package without one."""
    fx = T.fixture()
    s = subtask(fx)
    cmt = T.upstream_maps()[0]
    seg = s["organ_seg"]
    counts = np.bincount(seg.ravel(), minlength=118)
    roi = ",".join([s["compact"]] + [cmt[k] for k in np.argsort(counts)[::-1] if k and counts[k]][:1])
    ref = os.path.join(tmp, "ref.nii.gz")
    T.run_ct(fx["pkg"], ref, "--no-passport", "--roi-subset", roi)
    for pkg in (fx["pkg"], fx["nocrop"]):
        out = os.path.join(tmp, "o.nii.gz")
        T.run_ct(pkg, out, "--no-passport", "--roi-subset", roi, "--crop-from", s["organ"])
        assert np.array_equal(T.labels_of(out), T.labels_of(ref)), pkg


def test_totalseg_crop_from_refusals(tmp):
    """A prior result on another grid, without the crop structure, for a
    package that does not crop, or missing: a clear message, a documented exit
    code, no output, and no path but the user's own argument."""
    fx = T.fixture()
    s = subtask(fx)
    img = nib.load(fx["ct"])
    seg = s["organ_seg"]
    out = os.path.join(tmp, "o.nii.gz")

    def refused(code, what, *args, model=None):
        p = sp.run("ct", fx["ct"], "-o", out, "--model", model or s["compact_pkg"], "-q", *args)
        assert p.returncode == code and what in p.stderr, (p.returncode, p.stderr)
        assert not os.path.exists(out)
        rest = p.stderr   # only the user's own paths show
        for own in sorted((fx["ct"], out, model or s["compact_pkg"], *args), key=len, reverse=True):
            rest = rest.replace(own, "")
        assert tempfile.gettempdir() not in rest and tmp not in rest, p.stderr
        return p.stderr
    small = os.path.join(tmp, "small.nii.gz")
    nib.save(nib.Nifti1Image(seg[:-2].astype(np.uint8), img.affine), small)
    refused(3, "on the input's own grid", "--crop-from", small)
    moved = os.path.join(tmp, "moved.nii.gz")
    aff = img.affine.copy()
    aff[0, 3] += 7
    nib.save(nib.Nifti1Image(seg.astype(np.uint8), aff), moved)
    refused(3, "another affine", "--crop-from", moved)
    folder = os.path.join(tmp, "masks")
    os.makedirs(folder)
    nib.save(nib.Nifti1Image((seg == 1).astype(np.uint8), img.affine), os.path.join(folder, "spleen.nii.gz"))
    refused(3, f'no label named "{s["compact"]}"', "--crop-from", folder) if s["compact"] != "spleen" else None
    refused(2, "neither", "--crop-from", s["organ"], model=fx["nocrop"])   # no crop rule, no --roi-subset
    refused(6, "no such file or folder", "--crop-from", os.path.join(tmp, "nothing.nii.gz"))
    p = sp.run("ct", fx["ct"], "-o", out, "--model", s["compact_pkg"], "-cp", folder)
    assert p.returncode == 2 and "--crop-from" in p.stderr, p.stderr


def shared_home(key, ids):
    """a fake home with the task ids' networks (patch 32), made once per
    module: {"dir", "home"}"""
    if key not in _cache:
        d = tempfile.mkdtemp(prefix=f"ts{key}-")
        home = os.path.join(d, "home")
        p = T.py(T.FAKE, home, "--patch", "32", "--ids", ids)
        assert p.returncode == 0, p.stderr
        _cache[key] = dict(dir=d, home=home)
    return _cache[key]


def import_task(home, pkg, task):
    """tools/import/import_totalseg.py HOME -o PKG --task TASK: (PKG, its manifest)"""
    p = T.py(T.IMPORTER, home, "-o", pkg, "--task", task)
    assert p.returncode == 0, p.stderr
    return pkg, T.json.load(open(os.path.join(pkg, "segpipe.json")))


def refused_manifest(tmp, pkg, man, text):
    """a copy of pkg with manifest man: `segpipe model check` refuses it (exit 4) saying text"""
    bad = os.path.join(tmp, "bad")
    shutil.copytree(pkg, bad)
    T.json.dump(man, open(os.path.join(bad, "segpipe.json"), "w"))
    q = sp.run("model", "check", bad)
    assert q.returncode == 4 and text in q.stderr, q.stderr


def aux_home():
    """the tasks with auxiliary classes (appendicular_bones 304; kidney_cysts
    789, which crops with 298)"""
    return shared_home("aux", "304,789,298")


def test_totalseg_remove_auxiliary_labels(tmp):
    """appendicular_bones: the network has 16 classes (the task's 11 and its
    auxiliary humerus, femur, liver, spleen); the package's labels are
    class_map["appendicular_bones"] and its output equals TotalSegmentator's
    own remove_auxiliary_labels run on the part's prediction, on the model grid
    (where TotalSegmentator runs it) and on the input grid."""
    ts = need_ts()
    h = aux_home()
    pkg, man = import_task(h["home"], os.path.join(tmp, "ab"), "appendicular_bones")
    cm, aux = ts.maps.class_map["appendicular_bones"], ts.maps.class_map["appendicular_bones_auxiliary"]
    assert man["labels"] == {"0": "background", **{str(k): v for k, v in cm.items()}}
    assert man["totalsegmentator"]["remove_auxiliary_labels"] == {str(k): v for k, v in aux.items()}
    part = os.path.join(pkg, man["parts"][0]["dir"])
    sub = T.json.load(open(os.path.join(part, "segpipe.json")))
    assert sub["labels"] == {"0": "background", **{str(k): v for k, v in {**cm, **aux}.items()}}
    fx = T.fixture()
    ours_ml, part_ml = os.path.join(tmp, "ours_ml.nii.gz"), os.path.join(tmp, "part_ml.nii.gz")
    T.run_ct(pkg, os.path.join(tmp, "ours.nii.gz"), "--save-model-labels", ours_ml)
    T.run_ct(part, os.path.join(tmp, "part.nii.gz"), "--no-passport", "--save-model-labels", part_ml)
    for ours, raw in ((ours_ml, part_ml), (os.path.join(tmp, "ours.nii.gz"), os.path.join(tmp, "part.nii.gz"))):
        raw_img = nib.load(raw)
        assert np.isin(np.asanyarray(raw_img.dataobj), list(aux)).mean() > 0.01   # the network predicts them
        ref = ts.post.remove_auxiliary_labels(nib.Nifti1Image(np.asanyarray(raw_img.dataobj).astype(np.uint8),
                                                              raw_img.affine), "appendicular_bones").get_fdata()
        got = T.labels_of(ours)
        assert np.array_equal(got, ref.astype(np.int32)), ours
        assert got.any() and got.max() <= max(cm)
    stats = T.json.load(open(os.path.join(tmp, "ours.statistics.json")))
    assert list(stats) == list(cm.values())


def test_totalseg_postprocessing_tasks(tmp):
    """kidney_cysts (auxiliary kidneys, a crop with the 6 mm model) imports
    with its map and crop rule."""
    ts = need_ts()
    h = aux_home()
    pkg, man = import_task(h["home"], os.path.join(tmp, "kc"), "kidney_cysts")
    cm, aux = ts.maps.class_map["kidney_cysts"], ts.maps.class_map["kidney_cysts_auxiliary"]
    assert man["parts"][0]["map"] == [0] + [k if k in cm else 0 for k in range(1, max({**cm, **aux}) + 1)]
    assert man["crop"]["structures"] == ["kidney_left", "kidney_right", "liver", "spleen", "colon"]
    assert sp.run("model", "check", pkg).returncode == 0


def test_totalseg_headneck_muscles_parts(tmp):
    """headneck_muscles: two models (778, 779 at 0.75x0.75x1 mm, configuration
    3d_fullres_high) merged into class_map["headneck_muscles"] as nnunet.py
    merges (class_map_parts_headneck_muscles, later part overwrites non-zero),
    cropped to its six structures with 20 mm. Checked against TotalSegmentator's
    steps on a prior result that gives a real crop (its crop_to_mask, each
    part on the crop, the merge, undo_crop)."""
    ts = need_ts()
    fx = T.fixture()
    d, home, pkg, man = fake_task(tmp, "tshn-", "778,779,298", "headneck_muscles", "hn")
    cm = ts.maps.class_map["headneck_muscles"]
    parts, t2p = ts.maps.class_map_parts_headneck_muscles, ts.maps.map_taskid_to_partname_headneck_muscles
    inv = {v: k for k, v in cm.items()}
    assert man["labels"] == {"0": "background", **{str(k): v for k, v in cm.items()}}
    assert [q["task_id"] for q in man["parts"]] == [778, 779]
    for q in man["parts"]:
        pm = parts[t2p[q["task_id"]]]
        assert q["map"] == [0] + [inv[pm[j]] for j in range(1, max(pm) + 1)]
        assert q["source"].endswith("__nnUNetPlans__3d_fullres_high")
        sub = T.json.load(open(os.path.join(pkg, q["dir"], "segpipe.json")))
        assert sorted(sub["spacing"]) == [0.75, 0.75, 1.0] and sub["sliding_window"]["step"] == 0.5
    assert man["crop"]["structures"] == ["clavicula_left", "clavicula_right", "vertebrae_C1", "vertebrae_C5",
                                         "vertebrae_T1", "vertebrae_T4"] and man["crop"]["addon_mm"] == [20, 20, 20]
    # a prior `total` result with two of the crop structures in small blocks: a real crop
    img = nib.load(fx["ct"])
    cmt = T.upstream_maps()[0]
    tinv = {v: k for k, v in cmt.items()}
    prior = np.zeros(img.shape, np.uint8)
    prior[10:14, 20:23, 8:10] = tinv["vertebrae_C5"]
    prior[16:18, 24:27, 9:11] = tinv["clavicula_left"]
    prior[30:40, 30:40, 2:4] = tinv["liver"]
    pf = os.path.join(tmp, "prior.nii.gz")
    ts.ext.save_multilabel_nifti(nib.Nifti1Image(prior, img.affine), pf, cmt)
    mask = ts.libs.combine_masks(__import__("pathlib").Path(pf), man["crop"]["structures"]).get_fdata() > 0
    crop_img, bbox = T.crop_to_mask(img, nib.Nifti1Image(mask.astype(np.uint8), img.affine), man["crop"]["addon_mm"])
    assert np.prod(crop_img.shape) < 0.5 * np.prod(img.shape)
    cropped = os.path.join(tmp, "cropped.nii.gz")
    nib.save(crop_img, cropped)
    segs = []
    for q in man["parts"]:
        o = os.path.join(tmp, f"c{q['task_id']}.nii.gz")
        r = sp.run("ct", cropped, "-o", o, "--model", os.path.join(pkg, q["dir"]), "--no-passport", "-q")
        assert r.returncode == 0, r.stderr
        segs.append(T.labels_of(o))
    combined = np.zeros(segs[0].shape, np.uint8)   # nnunet.py's merge, written from its source
    for seg, tid in zip(segs, [778, 779]):
        pm = parts[t2p[tid]]
        lut = np.zeros(max(pm) + 1, np.uint8)
        for j, name in pm.items():
            lut[j] = inv[name]
        mapped = lut[seg.astype(np.uint8)]
        np.copyto(combined, mapped, where=mapped != 0)
    assert ((segs[0] > 0) & (segs[1] > 0)).any()   # the parts overlap: the order counts
    ref = np.zeros(img.shape, np.int32)
    ref[bbox[0][0]:bbox[0][1], bbox[1][0]:bbox[1][1], bbox[2][0]:bbox[2][1]] = combined
    out = os.path.join(tmp, "hn.nii.gz")
    T.run_ct(pkg, out, "--crop-from", pf)
    ours = T.labels_of(out)
    assert (ours == ref).mean() >= 0.999 and ours.any()
    stats = T.json.load(open(os.path.join(tmp, "hn.statistics.json")))
    assert list(stats) == list(cm.values())


def test_totalseg_crop_from_python(tmp):
    """The Python package's crop_from (a label file or nibabel image) gives
    the CLI's --crop-from labels."""
    if "asan" in sp.BUILD:
        raise sp.Skip("the sanitizer build's library cannot be loaded into python")
    fx = T.fixture()
    s = subtask(fx)
    img = nib.load(fx["ct"])
    other = np.zeros(img.shape, np.uint8)
    other[3:9, 30:40, 2:6] = {v: k for k, v in T.upstream_maps()[0].items()}[s["compact"]]
    prior = os.path.join(tmp, "prior.nii.gz")
    nib.save(nib.Nifti1Image(other, img.affine), prior)
    cli = os.path.join(tmp, "cli.nii.gz")
    T.run_ct(s["compact_pkg"], cli, "--no-passport", "--crop-from", prior)
    sys.path.insert(0, os.path.join(sp.ROOT, "python"))
    os.environ["SEGPIPE_LIBRARY"] = os.path.join(sp.BUILD, "libsegpipe.so")
    import segpipe
    m = segpipe.Model(s["compact_pkg"])
    try:
        for src in (prior, s["organ"], nib.load(prior)):
            r = m.ct(fx["ct"], passport=False, crop_from=src)
            ref = T.labels_of(cli) if src is not s["organ"] else None
            if ref is None:
                o = os.path.join(tmp, "organ_cli.nii.gz")
                T.run_ct(s["compact_pkg"], o, "--no-passport", "--crop-from", s["organ"])
                ref = T.labels_of(o)
            assert np.array_equal(r.labels, ref)
        try:
            m.ct(fx["ct"], passport=False, crop_from=nib.Nifti1Image(other[:-1], img.affine))
            raise AssertionError("another grid was taken")
        except segpipe.Error as e:
            assert "input's own grid" in str(e)
    finally:
        m.close()


def test_totalseg_body_blobs(tmp):
    """body (default 1.5 mm and --fast 6 mm): the package's model-grid labels
    equal TotalSegmentator's own cleanups (postprocessing.py, as nnunet.py
    calls them for body: keep_largest_blob_multilabel of body_trunc, then
    remove_small_blobs_multilabel of body_extremities with
    [50000 mm3 / voxel volume, 1e10]) run on the part's own model-grid
    prediction; the cleanups change the labels, and 26-connectivity would
    have given another answer."""
    ts = need_ts()
    from scipy import ndimage
    fx = T.fixture()
    d = tempfile.mkdtemp(prefix="tsbody-", dir=tmp)
    home = os.path.join(d, "home")
    p = T.py(T.FAKE, home, "--patch", "32", "--ids", "299,300")
    assert p.returncode == 0, p.stderr
    cm = ts.maps.class_map["body"]
    other_conn = False
    for flag in ("", "--fast"):
        pkg = os.path.join(tmp, "body" + flag)
        p = T.py(T.IMPORTER, home, "-o", pkg, "--task", "body", *([flag] if flag else []))
        assert p.returncode == 0, p.stderr
        man = T.json.load(open(os.path.join(pkg, "segpipe.json")))
        assert man["labels"] == {"0": "background", **{str(k): v for k, v in cm.items()}} and "roi_crop" not in man
        part = os.path.join(pkg, man["parts"][0]["dir"])
        ours_ml, raw_ml = os.path.join(tmp, "ours_ml.nii.gz"), os.path.join(tmp, "raw_ml.nii.gz")
        T.run_ct(pkg, os.path.join(tmp, "ours.nii.gz"), "--save-model-labels", ours_ml)
        T.run_ct(part, os.path.join(tmp, "raw.nii.gz"), "--no-passport", "--save-model-labels", raw_ml)
        raw_img = nib.load(raw_ml)
        raw = np.asanyarray(raw_img.dataobj).astype(np.uint8)
        vox_vol = np.prod(raw_img.header.get_zooms())
        ref = ts.post.keep_largest_blob_multilabel(raw.copy(), cm, ["body_trunc"], quiet=True)
        ref = ts.post.remove_small_blobs_multilabel(ref, cm, ["body_extremities"],
                                                    interval=[50000 / vox_vol, 1e10], quiet=True)
        got = T.labels_of(ours_ml)
        assert (got == ref).mean() >= 0.999, flag
        assert (ref != raw).any() and (ref == 1).any(), flag   # the cleanups did something, the trunc stays
        lab, n = ndimage.label(raw == 1, structure=np.ones((3, 3, 3)))
        if n:
            full = np.where(raw == 1, 0, raw)
            full[lab == np.bincount(lab.ravel())[1:].argmax() + 1] = 1
            other_conn |= not np.array_equal(full == 1, ref == 1)
        stats = T.json.load(open(os.path.join(tmp, "ours.statistics.json")))
        assert list(stats) == list(cm.values())
    assert other_conn
    for blobs, what in (([{"label": 9, "keep": "largest"}], "blobs[0].label = 9"),
                        ([{"label": 1, "keep": "smallest"}], "blobs[0] must be"),
                        ([{"label": 1, "keep": "largest", "remove_mm3": 5}], "blobs[0] must be")):
        bad = os.path.join(tmp, "bad")
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(pkg, bad)
        T.json.dump(dict(man, blobs=blobs), open(os.path.join(bad, "segpipe.json"), "w"))
        q = sp.run("model", "check", bad)
        assert q.returncode == 4 and what in q.stderr, q.stderr
    # TotalSegmentator's get_task_config: body has no fastest mode, --fastest falls back to fast
    p = T.py(T.IMPORTER, home, "-o", os.path.join(tmp, "x"), "--task", "body", "--fastest")
    assert p.returncode == 0, p.stderr
    x = T.json.load(open(os.path.join(tmp, "x", "segpipe.json")))
    assert x["parts"][0]["task_id"] == 300 and x["totalsegmentator"]["mode"] == "fast"


def test_totalseg_remove_outside(tmp):
    """heartchambers_highres: cropped to the heart of the 3 mm crop model
    (robust_crop), and at the end TotalSegmentator's own
    remove_outside_of_mask with the crop model's heart, aorta and
    inferior_vena_cava and int(10 mm / mean voxel size) dilations; checked on
    the crop model's labels and on a prior result (--crop-from) whose blocks
    make the removal large."""
    ts = need_ts()
    fx = T.fixture()
    d, home, pkg, man = fake_task(tmp, "tshc-", "301,297", "heartchambers_highres", "hc")
    cfg = ts.maps.class_map
    assert man["crop"]["task_id"] == 297 and man["crop"]["structures"] == ["heart"]
    assert man["crop"]["remove_outside"] == ["heart", "aorta", "inferior_vena_cava"]
    assert man["crop"]["remove_outside_mm"] == 10
    assert man["labels"] == {"0": "background", **{str(k): v for k, v in cfg["heartchambers_highres"].items()}}
    img = nib.load(fx["ct"])
    cmt = T.upstream_maps()[0]
    tinv = {v: k for k, v in cmt.items()}
    part = os.path.join(pkg, man["parts"][0]["dir"])
    n_it = int(10 / np.mean(img.header.get_zooms()))
    assert n_it >= 1

    def reference(organ_seg):
        heart = organ_seg == tinv["heart"]
        if not heart.any():   # "Crop is empty"
            return np.zeros(img.shape, np.int32), np.zeros(img.shape, np.int32)
        ref, _ = ts_crop_reference(tmp, part, heart, man["crop"]["addon_mm"])
        keep = np.isin(organ_seg, [tinv[n] for n in man["crop"]["remove_outside"]]).astype(np.uint8)
        return ts.post.remove_outside_of_mask(ref.copy(), keep, addon=n_it).astype(np.int32), ref

    organ = os.path.join(tmp, "organ.nii.gz")
    T.run_ct(os.path.join(pkg, man["crop"]["dir"]), organ, "--no-passport")
    ref, _ = reference(T.labels_of(organ))
    out = os.path.join(tmp, "hc.nii.gz")
    T.run_ct(pkg, out, "--no-passport")
    assert (T.labels_of(out) == ref).mean() >= 0.999
    prior = np.zeros(img.shape, np.uint8)
    prior[10:30, 12:34, 5:14] = tinv["heart"]
    prior[14:17, 16:19, 6:9] = tinv["aorta"]   # inside the heart's box: only these two regions stay
    prior[26:28, 30:32, 11:13] = tinv["inferior_vena_cava"]
    prior[12:24, 14:28, 9:12] = 0   # a hole in the heart: the removal acts inside the crop too
    pf = os.path.join(tmp, "prior.nii.gz")
    ts.ext.save_multilabel_nifti(nib.Nifti1Image(prior, img.affine), pf, cmt)
    ref, before = reference(prior)
    assert (before != ref).sum() > 100 and ref.any()   # the removal does something
    T.run_ct(pkg, out, "--no-passport", "--crop-from", pf)
    assert (T.labels_of(out) == ref).mean() >= 0.999
    for crop, what in ((dict(man["crop"], remove_outside=["no_such"]), 'remove_outside names "no_such"'),
                       ({k: v for k, v in man["crop"].items() if k != "remove_outside_mm"}, "go together")):
        bad = os.path.join(tmp, "bad")
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(pkg, bad)
        T.json.dump(dict(man, crop=crop), open(os.path.join(bad, "segpipe.json"), "w"))
        q = sp.run("model", "check", bad)
        assert q.returncode == 4 and what in q.stderr, q.stderr


def test_totalseg_total_mr(tmp):
    """total_mr: parts 850/851 merged into class_map["total_mr"] as nnunet.py
    merges them (class_map_parts_mr), 852 (3 mm) as the --roi-subset crop
    model with total_mr's names, --fast 852 / --fastest 853; the package's
    labels equal that merge of the parts' own predictions."""
    ts = need_ts()
    fx = T.fixture()
    d, home, pkg, man = fake_task(tmp, "tsmr-", "850,851,852,853", "total_mr", "mr")
    cm, parts, t2p = ts.maps.class_map["total_mr"], ts.maps.class_map_parts_mr, ts.maps.map_taskid_to_partname_mr
    inv = {v: k for k, v in cm.items()}
    assert man["labels"] == {"0": "background", **{str(k): v for k, v in cm.items()}}
    assert [q["task_id"] for q in man["parts"]] == [850, 851]
    for q in man["parts"]:
        pm = parts[t2p[q["task_id"]]]
        assert q["map"] == [0] + [inv[pm[j]] for j in range(1, max(pm) + 1)]
        assert q["source"].endswith("nnUNetTrainer_2000epochs_NoMirroring__nnUNetPlans__3d_fullres")
        assert T.json.load(open(os.path.join(pkg, q["dir"], "segpipe.json")))["sliding_window"]["step"] == 0.8
    assert man["roi_crop"]["task_id"] == 852
    crop = T.json.load(open(os.path.join(pkg, man["roi_crop"]["dir"], "segpipe.json")))
    assert crop["labels"] == man["labels"] and crop["spacing"] == [3.0] * 3
    segs = []
    for q in man["parts"]:
        o = os.path.join(tmp, f"{q['task_id']}.nii.gz")
        T.run_ct(os.path.join(pkg, q["dir"]), o, "--no-passport")
        segs.append(T.labels_of(o))
    combined = np.zeros(segs[0].shape, np.uint8)   # nnunet.py's merge, written from its source
    for seg, tid in zip(segs, [850, 851]):
        pm = parts[t2p[tid]]
        lut = np.zeros(max(pm) + 1, np.uint8)
        for j, name in pm.items():
            lut[j] = inv[name]
        mapped = lut[seg.astype(np.uint8)]
        np.copyto(combined, mapped, where=mapped != 0)
    assert ((segs[0] > 0) & (segs[1] > 0)).mean() > 0.01   # overlapping parts: the order counts
    out = os.path.join(tmp, "mr.nii.gz")
    T.run_ct(pkg, out, "--no-passport")
    assert (T.labels_of(out) == combined).mean() >= 0.999
    for flag, tid in (("--fast", 852), ("--fastest", 853)):
        o = os.path.join(tmp, flag)
        p = T.py(T.IMPORTER, home, "-o", o, "--task", "total_mr", flag)
        assert p.returncode == 0, p.stderr
        m = T.json.load(open(os.path.join(o, "segpipe.json")))
        assert [q["task_id"] for q in m["parts"]] == [tid] and m["labels"] == man["labels"]
    # an MR subtask that crops: python_api.py crops *_mr tasks with 852 and total_mr's names
    p = T.py(T.FAKE, home, "--patch", "32", "--ids", "576")
    assert p.returncode == 0, p.stderr
    ls = os.path.join(tmp, "ls")
    p = T.py(T.IMPORTER, home, "-o", ls, "--task", "liver_segments_mr")
    assert p.returncode == 0, p.stderr
    m = T.json.load(open(os.path.join(ls, "segpipe.json")))
    assert m["crop"]["task_id"] == 852 and m["crop"]["structures"] == ["liver"]
    crop = T.json.load(open(os.path.join(ls, m["crop"]["dir"], "segpipe.json")))
    assert crop["labels"] == man["labels"]   # total_mr's names
    assert sp.run("model", "check", ls).returncode == 0


def test_totalseg_total_v3_layout(tmp):
    """total_v3: parts 831..835 with TotalSegmentator's class_map_5_parts_total_v3
    (vertebrae part: vertebrae_L6 where total has vertebrae_S1) mapped into
    class_map["total_v3"], the 6 mm total model (298, class_map["total"]'s
    names) for --roi-subset, as python_api.py; the package loads and runs."""
    ts = need_ts()
    fx = T.fixture()
    d, home, pkg, man = fake_task(tmp, "tsv3-", "831,832,833,834,835,298", "total_v3", "v3")
    cm, parts, t2p = (ts.maps.class_map["total_v3"], ts.maps.class_map_5_parts_total_v3,
                      ts.maps.map_taskid_to_partname_ct_v3)
    inv = {v: k for k, v in cm.items()}
    assert man["labels"] == {"0": "background", **{str(k): v for k, v in cm.items()}}
    assert [q["task_id"] for q in man["parts"]] == [831, 832, 833, 834, 835]
    for q in man["parts"]:
        pm = parts[t2p[q["task_id"]]]
        assert q["map"] == [0] + [inv[pm[j]] for j in range(1, max(pm) + 1)]
        sub = T.json.load(open(os.path.join(pkg, q["dir"], "segpipe.json")))
        assert sub["labels"] == {"0": "background", **{str(k): v for k, v in pm.items()}}
    assert "vertebrae_L6" in man["labels"].values()
    assert man["roi_crop"]["task_id"] == 298
    crop = T.json.load(open(os.path.join(pkg, man["roi_crop"]["dir"], "segpipe.json")))
    assert crop["labels"] == {"0": "background", **{str(k): v for k, v in T.upstream_maps()[0].items()}}
    out = os.path.join(tmp, "v3.nii.gz")
    T.run_ct(pkg, out, "--no-passport")
    assert T.labels_of(out).max() <= max(cm)
    # a --roi-subset structure the crop model cannot find: refused (TotalSegmentator: a KeyError)
    q = sp.run("ct", fx["ct"], "-o", os.path.join(tmp, "l6.nii.gz"), "--model", pkg, "--roi-subset",
               "vertebrae_L6,liver", "-q")
    assert q.returncode == 2 and '"vertebrae_L6"' in q.stderr, q.stderr
    assert not os.path.exists(os.path.join(tmp, "l6.nii.gz"))


def ts_task_config(task, **kw):
    """TotalSegmentator's own get_task_config (python_api.py), from its source
    (torch and its other imports stubbed: the function only reads the maps)."""
    ts = need_ts()
    if "get_task_config" not in _cache:
        src = subprocess.run(["git", "--git-dir", next(g for g in T.MIRRORS if g and os.path.isdir(g)), "show",
                              "HEAD:totalsegmentator/python_api.py"], capture_output=True, text=True).stdout
        start = src.index("def get_task_config")
        body = src[start:src.index("\ndef totalsegmentator(")]
        import totalsegmentator.map_tasks_config as mtc
        ns = {"DEFAULT_CONFIG": mtc.DEFAULT_CONFIG, "TASK_CONFIGS": mtc.TASK_CONFIGS, "show_license_info": lambda: None}
        exec(compile(body, "python_api.py", "exec"), ns)
        _cache["get_task_config"] = ns["get_task_config"]
    return _cache["get_task_config"](task, quiet=True, **kw)


def test_totalseg_body_mr(tmp):
    """body_mr (default Dataset597 at 1.5 mm, --fast 598 at 6 mm, trainer
    nnUNetTrainer_DASegOrd0, as TotalSegmentator's get_task_config gives
    them; --fastest falls back to fast): class_map["body_mr"]'s names, and no
    cleanups: nnunet.py runs body's blob cleanups for task "body" only, so the
    package's labels equal its part's own prediction."""
    ts = need_ts()
    d, home, pkg, man = fake_task(tmp, "tsbmr-", "597,598", "body_mr", "bmr")
    cm = ts.maps.class_map["body_mr"]
    for flag, mode in (("", "default"), ("--fast", "fast"), ("--fastest", "fast")):
        cfg = ts_task_config("body_mr", fast=flag == "--fast", fastest=flag == "--fastest")
        o = os.path.join(tmp, "bmr" + flag)
        p = T.py(T.IMPORTER, home, "-o", o, "--task", "body_mr", *([flag] if flag else []))
        assert p.returncode == 0, p.stderr
        m = T.json.load(open(os.path.join(o, "segpipe.json")))
        assert m["labels"] == {"0": "background", **{str(k): v for k, v in cm.items()}}
        assert [q["task_id"] for q in m["parts"]] == [cfg["task_id"]] and m["totalsegmentator"]["mode"] == mode
        assert m["parts"][0]["source"].endswith(f"/{cfg['trainer']}__nnUNetPlans__3d_fullres")
        assert "blobs" not in m and "roi_crop" not in m and "crop" not in m
        sub = T.json.load(open(os.path.join(o, m["parts"][0]["dir"], "segpipe.json")))
        assert sub["spacing"] == [cfg["resample"]] * 3 and sub["sliding_window"]["step"] == 0.5
    part = os.path.join(pkg, man["parts"][0]["dir"])
    T.run_ct(pkg, os.path.join(tmp, "ours.nii.gz"))
    T.run_ct(part, os.path.join(tmp, "part.nii.gz"), "--no-passport")
    ours = T.labels_of(os.path.join(tmp, "ours.nii.gz"))
    assert np.array_equal(ours, T.labels_of(os.path.join(tmp, "part.nii.gz"))) and (ours == 1).any()
    stats = T.json.load(open(os.path.join(tmp, "ours.statistics.json")))
    assert list(stats) == list(cm.values())


def vpp_home():
    return shared_home("vpp", "803")


def test_totalseg_vertebrae_pp(tmp):
    """vertebrae_pp (Dataset803, 1.5 mm): the package's model-grid labels equal
    TotalSegmentator's own postprocess_vertebrae_pp run on the part's own
    model-grid prediction with the grid's zooms, in its three branches:
    touching labels relabelled from the bottom, from the top (C1 present,
    L5 not: the part's map keeps labels 1..12 only, its lowest one as C1), and labels
    that do not touch (one label kept), only dilated."""
    ts = need_ts()
    h = vpp_home()
    pkg, man = import_task(h["home"], os.path.join(tmp, "vpp"), "vertebrae_pp")
    cm = ts.maps.class_map["vertebrae_pp"]
    inv = {v: k for k, v in cm.items()}
    assert man["labels"] == {"0": "background", **{str(k): v for k, v in cm.items()}}
    assert man["vertebrae_pp"] == {"c1": inv["vertebrae_C1"], "l5": inv["vertebrae_L5"], "min_mm3": 100,
                                   "dilation_mm": 3}
    cfg = ts_task_config("vertebrae_pp")
    assert man["parts"][0]["task_id"] == cfg["task_id"] == 803
    assert man["parts"][0]["source"].endswith(f"/{cfg['trainer']}__nnUNetPlans__3d_fullres")
    part = os.path.join(pkg, man["parts"][0]["dir"])
    raw_ml = os.path.join(tmp, "raw_ml.nii.gz")
    T.run_ct(part, os.path.join(tmp, "raw.nii.gz"), "--no-passport", "--save-model-labels", raw_ml)
    raw_img = nib.load(raw_ml)
    raw = np.asanyarray(raw_img.dataobj).astype(np.uint8)
    zooms = raw_img.header.get_zooms()
    full = list(range(25))
    lo = int(raw[raw > 0].min())   # C1 present (the lowest label the network gives, as 1), nothing above 12
    cases = {"bottom": full, "top": [1 if j == lo else j if j <= 12 else 0 for j in full],
             "one": [j if j == np.bincount(raw.ravel())[1:].argmax() + 1 else 0 for j in full]}
    for what, lut in cases.items():
        var = os.path.join(tmp, what)
        shutil.rmtree(var, ignore_errors=True)
        shutil.copytree(pkg, var)
        m = dict(man, parts=[dict(man["parts"][0], map=lut)])
        T.json.dump(m, open(os.path.join(var, "segpipe.json"), "w"))
        ml = os.path.join(tmp, what + "_ml.nii.gz")
        T.run_ct(var, os.path.join(tmp, what + ".nii.gz"), "--save-model-labels", ml)
        data = np.array(lut, np.uint8)[raw]
        ref = ts.post.postprocess_vertebrae_pp(data.copy(), cm, voxel_volume=np.prod(zooms), voxel_spacing=zooms)
        got = T.labels_of(ml)
        assert np.array_equal(got, ref.astype(np.int32)), (what, (got != ref).sum())
        assert ts.post._multilabel_labels_touch(data) == (what != "one"), what
        assert (ref != data).sum() > 100 and ref.any(), what   # it relabels / dilates
        if what == "top":   # counted from C1 upwards (C1 there, L5 not)
            assert (data == inv["vertebrae_C1"]).any() and not (data == inv["vertebrae_L5"]).any()
            assert (ref == inv["vertebrae_C1"]).any()
        if what == "bottom":   # from the highest label present downwards
            assert (ref == data.max()).any()
        stats = T.json.load(open(os.path.join(tmp, what + ".statistics.json")))
        assert list(stats) == list(cm.values())
    # vertebrae_pp_refined without its second model's weights: refused before anything is written
    p = T.py(T.IMPORTER, h["home"], "-o", os.path.join(tmp, "vppr"), "--task", "vertebrae_pp_refined")
    assert p.returncode == 4 and "Dataset305_vertebrae_discs_1559subj" in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(tmp, "vppr"))
    refused_manifest(tmp, pkg, dict(man, vertebrae_pp=dict(man["vertebrae_pp"], l5=25)), "vertebrae_pp labels")


def test_totalseg_body_derived_masks(tmp):
    """body with --split: besides body_trunc.nii.gz and body_extremities.nii.gz,
    TotalSegmentator's derived masks (nnunet.py for task "body"): body.nii.gz
    equal to its combine_masks(folder, "body") and skin.nii.gz equal to its
    extract_skin(CT, body); --no-derived-masks (its --no_derived_masks)
    leaves them out, as do other tasks (body_mr) and the multilabel output;
    the Python package's split writes them too."""
    ts = need_ts()
    from pathlib import Path
    fx = T.fixture()
    d, home, pkg, man = fake_task(tmp, "tsbd-", "299,597", "body", "body")
    assert man["derived_masks"] == "body"
    out = os.path.join(tmp, "split")
    T.run_ct(pkg, out, "--split")
    cm = ts.maps.class_map["body"]
    assert sorted(os.listdir(out)) == sorted([v + ".nii.gz" for v in cm.values()] +
                                             ["body.nii.gz", "skin.nii.gz", "passport.json", "statistics.json"])
    ct = nib.load(fx["ct"])
    body = ts.libs.combine_masks(Path(out), "body")
    got_body = nib.load(os.path.join(out, "body.nii.gz"))
    assert np.array_equal(np.asanyarray(got_body.dataobj), body.get_fdata().astype(np.uint8))
    assert np.allclose(got_body.affine, ct.affine) and got_body.get_data_dtype() == np.uint8
    ref = ts.post.extract_skin(ct, body).get_fdata()
    got = np.asanyarray(nib.load(os.path.join(out, "skin.nii.gz")).dataobj)
    assert np.array_equal(got, ref.astype(np.uint8)) and got.any()
    b = body.get_fdata() > 0
    assert b.any() and not b.all() and (got < b).any()   # a shell of the body, not all of it
    out2 = os.path.join(tmp, "nd")
    T.run_ct(pkg, out2, "--split", "--no_derived_masks")
    assert not {"body.nii.gz", "skin.nii.gz"} & set(os.listdir(out2))
    p = sp.run("ct", fx["ct"], "-o", out2, "--model", pkg, "--split", "-ndm")
    assert p.returncode == 2 and "--no-derived-masks" in p.stderr, p.stderr
    p = T.py(T.IMPORTER, home, "-o", os.path.join(tmp, "bmr"), "--task", "body_mr")
    assert p.returncode == 0, p.stderr
    out3 = os.path.join(tmp, "bmr_split")
    T.run_ct(os.path.join(tmp, "bmr"), out3, "--split")
    assert not {"body.nii.gz", "skin.nii.gz"} & set(os.listdir(out3))
    if "asan" not in sp.BUILD:
        sys.path.insert(0, os.path.join(sp.ROOT, "python"))
        os.environ["SEGPIPE_LIBRARY"] = os.path.join(sp.BUILD, "libsegpipe.so")
        import segpipe
        m = segpipe.Model(pkg)
        try:
            out4 = os.path.join(tmp, "py")
            m.ct(fx["ct"], output=out4, split=True)
            assert np.array_equal(np.asanyarray(nib.load(os.path.join(out4, "skin.nii.gz")).dataobj), got)
        finally:
            m.close()


def test_totalseg_total_v3_small(tmp):
    """total_v3 --model-size small: every model of the task (parts 831..835,
    --fast 836, --fastest 837) read from <trainer>__nnUNetResEncUNetLPlans_8__3d_fullres,
    as TotalSegmentator's get_task_config(model_size="small") gives the plans;
    residual-encoder networks, run and merged as the default ones; the
    --roi-subset crop model (298) keeps nnUNetPlans. Other tasks refuse it."""
    ts = need_ts()
    d = tempfile.mkdtemp(prefix="tsv3s-", dir=tmp)
    home = os.path.join(d, "home")
    p = T.py(T.FAKE, home, "--patch", "32", "--ids", "831,832,833,834,835,836,837", "--plans",
             "nnUNetResEncUNetLPlans_8")
    assert p.returncode == 0, p.stderr
    p = T.py(T.FAKE, home, "--patch", "32", "--ids", "298")
    assert p.returncode == 0, p.stderr
    cm = ts.maps.class_map["total_v3"]
    for flag in ("", "--fast", "--fastest"):
        cfg = ts_task_config("total_v3", fast=flag == "--fast", fastest=flag == "--fastest", model_size="small")
        assert cfg["plans"] == "nnUNetResEncUNetLPlans_8"
        pkg = os.path.join(tmp, "small" + flag)
        p = T.py(T.IMPORTER, home, "-o", pkg, "--task", "total_v3", "--model-size", "small", *([flag] if flag else []))
        assert p.returncode == 0, p.stderr
        man = T.json.load(open(os.path.join(pkg, "segpipe.json")))
        ids = cfg["task_id"] if isinstance(cfg["task_id"], list) else [cfg["task_id"]]
        assert [q["task_id"] for q in man["parts"]] == ids and man["totalsegmentator"]["plans"] == cfg["plans"]
        assert man["labels"] == {"0": "background", **{str(k): v for k, v in cm.items()}}
        for q in man["parts"]:
            assert q["source"].endswith(f"/{cfg['trainer']}__nnUNetResEncUNetLPlans_8__3d_fullres")
        if not flag:
            assert man["roi_crop"]["source"].endswith("__nnUNetPlans__3d_fullres")
            parts = []
            for q in man["parts"]:
                o = os.path.join(tmp, f"p{q['task_id']}.nii.gz")
                T.run_ct(os.path.join(pkg, q["dir"]), o, "--no-passport")
                parts.append(T.labels_of(o))
            inv = {v: k for k, v in cm.items()}
            combined = np.zeros(parts[0].shape, np.uint8)   # nnunet.py's merge, written from its source
            for seg, q in zip(parts, man["parts"]):
                pm = ts.maps.class_map_5_parts_total_v3[ts.maps.map_taskid_to_partname_ct_v3[q["task_id"]]]
                lut = np.zeros(max(pm) + 1, np.uint8)
                for j, name in pm.items():
                    lut[j] = inv[name]
                mapped = lut[seg.astype(np.uint8)]
                np.copyto(combined, mapped, where=mapped != 0)
            out = os.path.join(tmp, "v3s.nii.gz")
            T.run_ct(pkg, out, "--no-passport")
            assert (T.labels_of(out) == combined).mean() >= 0.999 and combined.any()
    # the big plans are not there: the importer names the folder it expected
    p = T.py(T.IMPORTER, home, "-o", os.path.join(tmp, "big"), "--task", "total_v3")
    assert p.returncode == 4 and "__nnUNetPlans__3d_fullres" in p.stderr, p.stderr
    p = T.py(T.IMPORTER, home, "-o", os.path.join(tmp, "t"), "--task", "total", "--model-size", "small")
    assert p.returncode == 4 and "only for task total_v3" in p.stderr, p.stderr


def test_totalseg_teeth(tmp):
    """teeth: TotalSegmentator crops it with another whole task
    (crop_model craniofacial_structures, itself cropped to the skull by the
    6 mm model with 20 mm) to teeth_lower/teeth_upper with the task's own
    10 mm (python_api.py keeps crop_addon when a crop_model crops); the
    package holds that task's package as its crop model. Its labels equal
    TotalSegmentator's steps on the same predictions: the inner task's
    labels, its crop_to_mask with 10 mm, Dataset113 (3d_lowres_high, 0.5 mm)
    on the crop, undo_crop; also from a prior craniofacial result
    (--crop-from) that gives a small crop. The part's mirroring (its trainer
    allows axes 0, 1) is off by default, as TotalSegmentator runs tta=False."""
    ts = need_ts()
    from pathlib import Path
    fx = T.fixture()
    d, home, pkg, man = fake_task(tmp, "tsteeth-", "113,115,298", "teeth", "teeth")
    cfg = ts_task_config("teeth")
    cm, cc = ts.maps.class_map["teeth"], ts.maps.class_map["craniofacial_structures"]
    assert man["labels"] == {"0": "background", **{str(k): v for k, v in cm.items()}}
    assert man["crop"]["task"] == cfg["crop_model"] == "craniofacial_structures"
    assert man["crop"]["structures"] == cfg["crop"] and man["crop"]["addon_mm"] == cfg["crop_addon"] == [10] * 3
    assert man["parts"][0]["source"].endswith(f"/{cfg['trainer']}__nnUNetPlans__{cfg['model']}")
    part = os.path.join(pkg, man["parts"][0]["dir"])
    sub = T.json.load(open(os.path.join(part, "segpipe.json")))
    assert sub["tta"]["default"] is False and sub["tta"]["mirror_axes"] == [0, 1]
    assert sorted(sub["spacing"]) == [0.5] * 3
    inner = os.path.join(pkg, man["crop"]["dir"])
    im = T.json.load(open(os.path.join(inner, "segpipe.json")))
    assert im["labels"] == {"0": "background", **{str(k): v for k, v in cc.items()}}
    assert im["crop"]["task_id"] == 298 and im["crop"]["structures"] == ["skull"] and im["crop"]["addon_mm"] == [20] * 3
    assert sp.run("model", "check", pkg).returncode == 0
    # a small block of the CT (0.5 mm grids are large)
    img0 = nib.load(fx["ct"])
    img = img0.slicer[14:34, 14:34, 5:15]
    ct = os.path.join(tmp, "small.nii.gz")
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine), ct)
    img = nib.load(ct)
    cinv = {v: k for k, v in cc.items()}

    def run(model, out, *extra):
        q = sp.run("ct", ct, "-o", out, "--model", model, "-q", "--no-passport", *extra)
        assert q.returncode == 0, q.stderr
        return T.labels_of(out)

    def reference(craniofacial):
        mask = np.isin(craniofacial, [cinv[n] for n in cfg["crop"]])
        ref = np.zeros(img.shape, np.int32)
        if not mask.any():   # "Crop is empty"
            return ref, None
        crop_img, bbox = T.crop_to_mask(img, nib.Nifti1Image(mask.astype(np.uint8), img.affine), cfg["crop_addon"])
        cropped = os.path.join(tmp, "cropped.nii.gz")
        nib.save(crop_img, cropped)
        q = sp.run("ct", cropped, "-o", os.path.join(tmp, "cp.nii.gz"), "--model", part, "--no-passport", "-q")
        assert q.returncode == 0, q.stderr
        ref[bbox[0][0]:bbox[0][1], bbox[1][0]:bbox[1][1], bbox[2][0]:bbox[2][1]] = T.labels_of(
            os.path.join(tmp, "cp.nii.gz"))
        return ref, bbox

    # random weights: the 6 mm model finds no skull in this block; the inner task crops to the structure
    # it finds most instead (the chain stays: 298 -> craniofacial_structures on its crop -> teeth on its crop)
    found = np.bincount(run(os.path.join(inner, im["crop"]["dir"]), os.path.join(tmp, "c298.nii.gz")).ravel())
    im["crop"]["structures"] = [T.upstream_maps()[0][int(found[1:].argmax()) + 1]]
    T.json.dump(im, open(os.path.join(inner, "segpipe.json"), "w"))
    cranio = run(inner, os.path.join(tmp, "cranio.nii.gz"))
    assert np.isin(cranio, [cinv[n] for n in cfg["crop"]]).any()
    ref, _ = reference(cranio)
    ours = run(pkg, os.path.join(tmp, "teeth.nii.gz"))
    assert (ours == ref).mean() >= 0.999 and ours.any(), ((ours == ref).mean(), ours.any(), ref.any())
    prior = np.zeros(img.shape, np.uint8)
    prior[4:7, 5:8, 2:4] = cinv["teeth_lower"]
    prior[0:6, 0:6, 0:6] = cinv["skull"]   # not a crop structure
    pf = os.path.join(tmp, "prior.nii.gz")
    ts.ext.save_multilabel_nifti(nib.Nifti1Image(prior, img.affine), pf, cc)
    mask = ts.libs.combine_masks(Path(pf), cfg["crop"]).get_fdata() > 0
    ref, bbox = reference(np.where(mask, cinv["teeth_lower"], 0))
    assert [list(b) for b in bbox] != [[0, n] for n in img.shape]   # a real crop
    ours = run(pkg, os.path.join(tmp, "teeth_prior.nii.gz"), "--crop-from", pf)
    assert (ours == ref).mean() >= 0.999 and ours.any()
    # one level only: a crop package whose own crop is a task package is refused
    deep = os.path.join(tmp, "deep")
    shutil.copytree(pkg, deep)
    shutil.copytree(pkg, os.path.join(deep, "crop_teeth"))
    T.json.dump(dict(man, crop=dict(man["crop"], dir="crop_teeth", structures=["crown"])),
                open(os.path.join(deep, "segpipe.json"), "w"))
    q = sp.run("model", "check", deep)
    assert q.returncode == 4 and "the crop model must be" in q.stderr, q.stderr


def test_totalseg_vertebrae_pp_refined(tmp):
    """vertebrae_pp_refined: Dataset803 with vertebrae_pp's postprocessing, and
    Dataset305 (vertebrae_body, nnUNetTrainer_DASegOrd0, 1.5 mm) run on the
    whole scan; the final labels equal TotalSegmentator's own
    refine_vertebrae_pp_with_body_mask (2 mm ellipsoid on the input grid with
    the header's zooms, then cut to its vertebral bodies) applied to the
    vertebrae_pp labels and 305's labels of the same scan; on an anisotropic
    grid (0.9 x 0.9 x 1.3 mm), where its kernel is off-centre."""
    ts = need_ts()
    fx = T.fixture()
    d, home, pkg, man = fake_task(tmp, "tsvppr-", "803,305", "vertebrae_pp_refined", "vppr")
    cm = ts.maps.class_map["vertebrae_pp_refined"]
    assert man["labels"] == {"0": "background", **{str(k): v for k, v in cm.items()}}
    assert man["refine"]["task_id"] == 305 and man["refine"]["dilation_mm"] == 2
    assert man["refine"]["keep_label"] == 1 == {v: k for k, v in ts.maps.class_map["vertebrae_body"].items()}[
        "vertebrae_body"]
    assert man["refine"]["source"].endswith("/nnUNetTrainer_DASegOrd0__nnUNetPlans__3d_fullres")
    assert man["vertebrae_pp"]["dilation_mm"] == 3
    mask_pkg = os.path.join(pkg, man["refine"]["dir"])
    assert T.json.load(open(os.path.join(mask_pkg, "segpipe.json")))["spacing"] == [1.5] * 3
    img0 = nib.load(fx["ct"])
    aff = np.diag([-0.9, 0.9, 1.3, 1.0])
    aff[:3, 3] = img0.affine[:3, 3]
    ct = os.path.join(tmp, "aniso.nii.gz")
    nib.save(nib.Nifti1Image(np.asanyarray(img0.dataobj), aff), ct)
    img = nib.load(ct)

    def run(model, out):
        q = sp.run("ct", ct, "-o", out, "--model", model, "-q", "--no-passport")
        assert q.returncode == 0, q.stderr
        return T.labels_of(out)
    plain = os.path.join(tmp, "plain")   # the same package without the refinement: vertebrae_pp's labels
    shutil.copytree(pkg, plain)
    T.json.dump({k: v for k, v in man.items() if k != "refine"}, open(os.path.join(plain, "segpipe.json"), "w"))
    data = run(plain, os.path.join(tmp, "plain.nii.gz")).astype(np.uint8)
    body = run(mask_pkg, os.path.join(tmp, "body.nii.gz")).astype(np.uint8)
    ref = ts.post.refine_vertebrae_pp_with_body_mask(data.copy(), body, cm, voxel_spacing=img.header.get_zooms(),
                                                     dilation_mm=2)
    ours = run(pkg, os.path.join(tmp, "ours.nii.gz"))
    assert np.array_equal(ours, ref.astype(np.int32)), (ours != ref).sum()
    grown = ts.post.dilate_vertebrae_labels(data, cm, img.header.get_zooms(), 2)
    assert (grown != data).any() and (ref != data).any() and ref.any() and (body != 1).any(), ((grown != data).sum(), (ref != data).sum(), ref.sum(), (body != 1).sum(), (data == 0).sum())
    refused_manifest(tmp, pkg, dict(man, refine=dict(man["refine"], keep_label=3)), "refine.keep_label")


def test_totalseg_task_folds(tmp):
    """A task's folds as TotalSegmentator's get_task_config gives them:
    pleural_pericard_effusion has folds None (nnU-Net's
    auto_detect_available_folds: every fold_N with a checkpoint; here 0, 1,
    2), aorta_annulus folds 0..4; the part is their ensemble (different labels
    than fold 0 alone); a missing fold is refused, exit 4, naming it."""
    ts = need_ts()
    fx = T.fixture()
    d = tempfile.mkdtemp(prefix="tsfolds-", dir=tmp)
    home = os.path.join(d, "home")
    for ids, folds in (("315", "0,1,2"), ("713", "0,1,2,3,4"), ("298", "0")):
        p = T.py(T.FAKE, home, "--patch", "32", "--ids", ids, "--folds", folds)
        assert p.returncode == 0, p.stderr
    for task, want in (("pleural_pericard_effusion", [0, 1, 2]), ("aorta_annulus", [0, 1, 2, 3, 4])):
        cfg = ts_task_config(task)
        assert cfg["folds"] == (None if task == "pleural_pericard_effusion" else want)
        pkg = os.path.join(tmp, task)
        p = T.py(T.IMPORTER, home, "-o", pkg, "--task", task)
        assert p.returncode == 0, p.stderr
        man = T.json.load(open(os.path.join(pkg, "segpipe.json")))
        assert man["totalsegmentator"]["folds"] == want
        part = os.path.join(pkg, man["parts"][0]["dir"])
        sub = T.json.load(open(os.path.join(part, "segpipe.json")))
        assert sub["nnunet"]["folds"] == [str(f) for f in want]
        # TotalSegmentator leaves a task without "resample" to nnU-Net, which normalises and then resamples
        # with its order 3 (docs/model-format.md); a task it resamples itself stays linear
        nn = "nnunet" if cfg["resample"] is None else None
        assert man.get("resample") == sub.get("resample") == nn, (task, man.get("resample"), sub.get("resample"))
    # the ensemble is not fold 0 alone: fold 0 imported by nnU-Net's importer gives other labels
    one = os.path.join(tmp, "one")
    r = T.py(os.path.join(sp.ROOT, "tools", "import", "import_nnunet.py"), os.path.join(
        home, "nnunet", "results", "Dataset713_annulus_proper_48subj",
        "nnUNetTrainer_DASegOrd0__nnUNetPlans__3d_fullres_high"), "-o", one, "--fold", "0")
    assert r.returncode == 0, r.stderr
    small = nib.load(fx["ct"]).slicer[14:34, 14:34, 5:15]   # 0.8 mm grids are large: a block of the CT
    ct = os.path.join(tmp, "small.nii.gz")
    nib.save(nib.Nifti1Image(np.asanyarray(small.dataobj), small.affine), ct)
    a, b = os.path.join(tmp, "a.nii.gz"), os.path.join(tmp, "b.nii.gz")
    for model, out in ((part, a), (one, b)):
        q = sp.run("ct", ct, "-o", out, "--model", model, "-q", "--no-passport")
        assert q.returncode == 0, q.stderr
    assert (T.labels_of(a) != T.labels_of(b)).mean() > 0.01
    shutil.rmtree(os.path.join(home, "nnunet", "results", "Dataset713_annulus_proper_48subj",
                               "nnUNetTrainer_DASegOrd0__nnUNetPlans__3d_fullres_high", "fold_3"))
    p = T.py(T.IMPORTER, home, "-o", os.path.join(tmp, "x"), "--task", "aorta_annulus")
    assert p.returncode == 4 and "fold_3" in p.stderr and not os.path.exists(os.path.join(tmp, "x")), p.stderr
