"""TotalSegmentator's tasks as segpipe task packages (issue #43).

A fake TOTALSEG_HOME in TotalSegmentator's exact weights layout with small
random-weight nnU-Net networks (tools/dev/fake_totalseg_home.py) is imported
by tools/import/import_totalseg.py; the package is checked against
TotalSegmentator's class maps (read from its source, totalsegmentator/
map_to_binary.py, when a copy is at hand: $TOTALSEG_SRC or the fetched mirror;
else the copy in tests/data/totalseg/upstream_maps.json), and `segpipe ct`'s
merge against TotalSegmentator's merge applied to the same per-part
predictions (each part run alone by segpipe). TotalSegmentator's merge is
inline code in nnunet.py's nnUNet_predict_image (no function to import), so
`ts_merge` below is written from it: for each part in order,
lut[j] = class_map_inv[class_map_5_parts[part][j]], mapped = lut[seg],
np.copyto(combined, mapped, where=mapped != 0).
"""
import importlib.util, json, os, shutil, subprocess, sys, tempfile

import numpy as np
import nibabel as nib
import sp

IMPORTER = os.path.join(sp.ROOT, "tools", "import", "import_totalseg.py")
FAKE = os.path.join(sp.ROOT, "tools", "dev", "fake_totalseg_home.py")
FIXTURE = os.path.join(sp.ROOT, "tests", "data", "totalseg", "upstream_maps.json")
MIRRORS = [os.environ.get("TOTALSEG_SRC", ""), "/work/.mirror/wasserth+TotalSegmentator/repo"]
PART_IDS = [291, 292, 293, 294, 295]

_cache = {}


def upstream_maps():
    """(class_map["total"], class_map_5_parts, map_taskid_to_partname_ct, where from)"""
    if "maps" in _cache:
        return _cache["maps"]
    for g in MIRRORS:
        if not g or not os.path.isdir(g):
            continue
        src = subprocess.run(["git", "--git-dir", g, "show", "HEAD:totalsegmentator/map_to_binary.py"],
                             capture_output=True, text=True)
        if src.returncode:
            continue
        d = tempfile.mkdtemp()
        f = os.path.join(d, "map_to_binary.py")
        open(f, "w").write(src.stdout)
        spec = importlib.util.spec_from_file_location("ts_map_to_binary", f)
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        shutil.rmtree(d)
        _cache["maps"] = (m.class_map["total"], m.class_map_5_parts, m.map_taskid_to_partname_ct, g)
        return _cache["maps"]
    j = json.load(open(FIXTURE))
    ints = lambda d: {int(k): v for k, v in d.items()}  # noqa: E731
    _cache["maps"] = (ints(j["class_map_total"]), {k: ints(v) for k, v in j["class_map_5_parts"].items()},
                      ints(j["map_taskid_to_partname_ct"]), FIXTURE)
    return _cache["maps"]


def ts_merge(part_segs, tids):
    """TotalSegmentator's merge of part predictions (nnunet.py, written from its source)."""
    class_map_total, parts, taskid_to_part, _ = upstream_maps()
    class_map_inv = {v: k for k, v in class_map_total.items()}
    combined = np.zeros(part_segs[0].shape, dtype=np.uint8)
    for seg, tid in zip(part_segs, tids):
        part_map = parts[taskid_to_part[tid]]
        lut = np.zeros(max(part_map.keys()) + 1, dtype=np.uint8)
        for jdx, name in part_map.items():
            lut[jdx] = class_map_inv[name]
        mapped = lut[seg.astype(np.uint8)]
        np.copyto(combined, mapped, where=mapped != 0)
    return combined


def py(*args):
    return sp.tool(*args)


def fixture():
    """fake home, its imported package (with and without the crop model), a CT:
    made once per test run (sp.once; test_totalseg_tasks uses it too), read only"""
    src = os.path.join(sp.SHARED, "data", "ct", "example_ct_sm.nii.gz")
    if not os.path.exists(src):
        raise sp.Skip("shared example_ct_sm.nii.gz missing")

    def make(d):
        home = os.path.join(d, "home")
        p = py(FAKE, home, "--patch", "64", "--ids", "291,292,293,294,295,297,298,8,117")
        assert p.returncode == 0, p.stderr
        p = py(IMPORTER, home, "-o", os.path.join(d, "total"))
        assert p.returncode == 0, p.stderr
        p = py(IMPORTER, home, "-o", os.path.join(d, "total-nocrop"), "--no-crop-model")
        assert p.returncode == 0, p.stderr
        # an abdominal block of the example CT (48x48x20 at 3 mm): four 64^3 tiles per part at 1.5 mm
        img = nib.load(src).slicer[37:85, 26:74, 5:25]
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj).astype(np.int16), img.affine), os.path.join(d, "ct.nii.gz"))
    d = sp.once(("totalseg fixture",), make)
    return dict(dir=d, home=os.path.join(d, "home"), pkg=os.path.join(d, "total"), nocrop=os.path.join(d, "total-nocrop"),
                ct=os.path.join(d, "ct.nii.gz"))


def run_ct(model, out, *extra):
    p = sp.run("ct", fixture()["ct"], "-o", out, "--model", model, "-q", *extra)
    assert p.returncode == 0, p.stderr
    return p


def labels_of(path):
    return np.asanyarray(nib.load(path).dataobj).astype(np.int32)


def test_totalseg_import_layout(tmp):
    """The package holds the five parts in TotalSegmentator's order, its class
    map and each part's lut exactly as TotalSegmentator builds them."""
    fx = fixture()
    class_map_total, parts, taskid_to_part, _ = upstream_maps()
    man = json.load(open(os.path.join(fx["pkg"], "segpipe.json")))
    assert man["labels"] == {"0": "background", **{str(k): v for k, v in class_map_total.items()}}
    assert len(man["labels"]) == 118
    assert [p["task_id"] for p in man["parts"]] == PART_IDS
    assert man["merge"] == "overwrite_nonzero"
    inv = {v: k for k, v in class_map_total.items()}
    for p in man["parts"]:
        pm = parts[taskid_to_part[p["task_id"]]]
        assert p["map"] == [0] + [inv[pm[j]] for j in range(1, max(pm) + 1)]
        assert p["source"].endswith("/nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres")
        sub = json.load(open(os.path.join(fx["pkg"], p["dir"], "segpipe.json")))
        assert sub["labels"] == {"0": "background", **{str(k): v for k, v in pm.items()}}
        assert sub["sliding_window"]["step"] == 0.8 and sub["spacing"] == [1.5, 1.5, 1.5]
    assert man["roi_crop"]["task_id"] == 298 and man["roi_crop"]["addon_mm"] == [20, 20, 20]
    # every one of the 117 structures comes from exactly one part
    covered = sorted(g for p in man["parts"] for g in p["map"][1:])
    assert covered == list(range(1, 118))
    chk = sp.run("model", "check", fx["pkg"])
    assert chk.returncode == 0 and chk.stdout.count("part ") == 5, chk.stdout + chk.stderr
    # --fast / --fastest: one part each, the 3 mm / 6 mm model, the same 117 names
    for flag, tid, mm in (("--fast", 297, 3.0), ("--fastest", 298, 6.0)):
        out = os.path.join(tmp, flag)
        p = py(IMPORTER, fx["home"], "-o", out, flag)
        assert p.returncode == 0, p.stderr
        m = json.load(open(os.path.join(out, "segpipe.json")))
        assert [q["task_id"] for q in m["parts"]] == [tid] and m["labels"] == man["labels"]
        assert m["parts"][0]["map"] == list(range(118)) and "roi_crop" not in m
        sub = json.load(open(os.path.join(out, m["parts"][0]["dir"], "segpipe.json")))
        assert sub["spacing"] == [mm] * 3


def test_totalseg_import_errors(tmp):
    """Missing weights: exit 4 naming the folder TotalSegmentator downloads."""
    fx = fixture()
    home = os.path.join(tmp, "home")
    shutil.copytree(fx["home"], home)
    shutil.rmtree(os.path.join(home, "nnunet", "results", "Dataset293_TotalSegmentator_part3_cardiac_1559subj"))
    p = py(IMPORTER, home, "-o", os.path.join(tmp, "o"))
    assert p.returncode == 4 and "Dataset293_TotalSegmentator_part3_cardiac_1559subj" in p.stderr, p.stderr
    p = py(IMPORTER, os.path.join(tmp, "nowhere"), "-o", os.path.join(tmp, "o"))
    assert p.returncode == 4 and "no weights folder" in p.stderr, p.stderr
    p = py(IMPORTER, home, "-o", os.path.join(tmp, "o"), "--task", "test")   # TotalSegmentator's crop "body"
    assert p.returncode == 4 and "not supported yet" in p.stderr, p.stderr
    p = py(IMPORTER, home, "-o", os.path.join(tmp, "o"), "--task", "cerebral_bleed")   # no Dataset150 here
    assert p.returncode == 4 and "Dataset150_icb_v0" in p.stderr, p.stderr


def test_totalseg_maps_match_upstream(tmp):
    """The importer's copy of TotalSegmentator's maps equals its source."""
    class_map_total, parts, taskid_to_part, where = upstream_maps()
    if where == FIXTURE:
        raise sp.Skip("TotalSegmentator's source not at hand ($TOTALSEG_SRC)")
    m = json.load(open(os.path.join(sp.ROOT, "tools", "import", "totalseg_maps.json")))
    assert {int(k): v for k, v in m["class_map"]["total"].items()} == class_map_total
    assert {k: {int(a): b for a, b in v.items()} for k, v in m["class_map_5_parts"].items()} == parts
    assert {int(k): v for k, v in m["map_taskid_to_partname_ct"].items()} == taskid_to_part
    fx = json.load(open(FIXTURE))
    assert {int(k): v for k, v in fx["class_map_total"].items()} == class_map_total


def test_totalseg_merge_matches_totalsegmentator(tmp):
    """segpipe ct on the task package == TotalSegmentator's merge of the five
    parts' predictions (each part package run alone), on the model grid and
    on the input grid; the merge order matters on this data."""
    fx = fixture()
    man = json.load(open(os.path.join(fx["pkg"], "segpipe.json")))
    ml = os.path.join(tmp, "task_ml.nii.gz")
    run_ct(fx["pkg"], os.path.join(tmp, "task.nii.gz"), "--save-model-labels", ml)
    segs_m, segs_n = [], []
    for p in man["parts"]:
        pml = os.path.join(tmp, f"{p['task_id']}_ml.nii.gz")
        run_ct(os.path.join(fx["pkg"], p["dir"]), os.path.join(tmp, f"{p['task_id']}.nii.gz"), "--no-passport",
               "--save-model-labels", pml)
        segs_m.append(labels_of(pml))
        segs_n.append(labels_of(os.path.join(tmp, f"{p['task_id']}.nii.gz")))
    for ours, segs in ((labels_of(ml), segs_m), (labels_of(os.path.join(tmp, "task.nii.gz")), segs_n)):
        ref = ts_merge(segs, PART_IDS)
        assert ours.shape == ref.shape
        agree = (ours == ref).mean()
        assert agree >= 0.999, agree
        # not a trivial case: several parts show, and overlapping parts make the order count
        present = {p["task_id"] for p, s in zip(man["parts"], segs) if ((s > 0) & (ref > 0)).any()}
        assert len(present) >= 3, present
        rev = ts_merge(segs[::-1], PART_IDS[::-1])
        assert (rev != ref).mean() > 0.01


def test_totalseg_names_split_statistics(tmp):
    """--split, statistics.json and the passport use class_map["total"]'s names."""
    fx = fixture()
    class_map_total = upstream_maps()[0]
    out = os.path.join(tmp, "split")
    run_ct(fx["pkg"], out, "--split")
    files = sorted(f[:-7] for f in os.listdir(out) if f.endswith(".nii.gz"))
    assert files == sorted(class_map_total.values())
    stats = json.load(open(os.path.join(out, "statistics.json")))
    assert list(stats) == [class_map_total[k] for k in sorted(class_map_total)]
    pp = json.load(open(os.path.join(out, "passport.json")))
    assert pp["structures"] and all(class_map_total[s["label"]] == s["name"] for s in pp["structures"])
    seg = run_ct(fx["pkg"], os.path.join(tmp, "seg.nii.gz"))
    assert seg.returncode == 0
    multi = labels_of(os.path.join(tmp, "seg.nii.gz"))
    ext = ts_module("nifti_ext_header")   # the label names as TotalSegmentator reads them back
    if ext and importlib.util.find_spec("xmltodict"):   # its reader parses with xmltodict
        _, label_map = ext.load_multilabel_nifti(os.path.join(tmp, "seg.nii.gz"))
        assert {int(k): v for k, v in label_map.items()} == class_map_total
    for name in ("liver", "vertebrae_L1", "rib_left_3"):
        lab = [k for k, v in class_map_total.items() if v == name][0]
        assert np.array_equal(labels_of(os.path.join(out, name + ".nii.gz")) > 0, multi == lab)


def test_totalseg_roi_subset_runs_needed_parts(tmp):
    """--roi-subset on a package without crop model: only the parts holding
    the structures run (TotalSegmentator's rule), so the result is the merge
    of those parts alone, filtered; the other parts would have overwritten
    some of those voxels."""
    fx = fixture()
    man = json.load(open(os.path.join(fx["nocrop"], "segpipe.json")))
    segs = []
    for p in man["parts"][:2]:
        o = os.path.join(tmp, f"{p['task_id']}.nii.gz")
        run_ct(os.path.join(fx["nocrop"], p["dir"]), o, "--no-passport")
        segs.append(labels_of(o))
    # the most frequent structure of parts 291 and 292 each (random weights: whatever they predict)
    cmt, parts, t2p, _ = upstream_maps()
    names = [parts[t2p[t]][int(np.bincount(s[s > 0]).argmax())] for s, t in zip(segs, PART_IDS)]
    out = os.path.join(tmp, "roi.nii.gz")
    run_ct(fx["nocrop"], out, "--roi-subset", ",".join(names))
    ids = [k for k, v in cmt.items() if v in names]
    only = ts_merge(segs, PART_IDS[:2])
    only[~np.isin(only, ids)] = 0
    ours = labels_of(out)
    assert (ours == only).mean() >= 0.999
    assert set(np.unique(ours)) <= {0, *ids}
    run_ct(fx["nocrop"], os.path.join(tmp, "full.nii.gz"), "--no-passport")
    full = labels_of(os.path.join(tmp, "full.nii.gz"))
    full[~np.isin(full, ids)] = 0
    assert (full != only).any()   # all five parts would have given another answer


def test_totalseg_bad_task_packages(tmp):
    """Broken task manifests are refused with exit 4 and the field named."""
    fx = fixture()

    def broken(name, edit):
        d = os.path.join(tmp, name)
        shutil.copytree(fx["nocrop"], d)
        m = json.load(open(os.path.join(d, "segpipe.json")))
        edit(m, d)
        json.dump(m, open(os.path.join(d, "segpipe.json"), "w"))
        p = sp.run("model", "check", d)
        assert p.returncode == 4, (name, p.returncode, p.stderr)
        return p.stderr

    assert "parts[0].map has 24 entries" in broken("short", lambda m, d: m["parts"][0]["map"].pop())
    assert "beyond the task's 118 classes" in broken("big", lambda m, d: m["parts"][1]["map"].__setitem__(3, 500))
    assert "folder name inside the package" in broken("escape", lambda m, d: m["parts"][0].__setitem__("dir", "../x"))
    assert "merge" in broken("merge", lambda m, d: m.__setitem__("merge", "argmax"))
    assert "needs exactly one part" in broken("nnrs", lambda m, d: (m.__setitem__("resample", "nnunet"),
                                                                   m.__setitem__("resampled_int32", False)))
    assert "map[0] must be 0" in broken("bg", lambda m, d: m["parts"][2]["map"].__setitem__(0, 4))

    def spacing(m, d):
        f = os.path.join(d, m["parts"][3]["dir"], "segpipe.json")
        s = json.load(open(f))
        s["spacing"] = [3.0, 3.0, 3.0]
        json.dump(s, open(f, "w"))
    assert "differ from the first part's" in broken("spacing", spacing)
    p = sp.run("ct", fx["ct"], "-o", os.path.join(tmp, "s.nii.gz"), "--model", fx["nocrop"], "--smooth")
    assert p.returncode == 2 and "task packages" in p.stderr, p.stderr


def test_totalseg_tasks_list(tmp):
    fx = fixture()
    p = sp.run("tasks", fx["pkg"], os.path.join(sp.ROOT, "models", "demo-ct"))
    assert p.returncode == 0, p.stderr
    assert "totalseg-total " in p.stdout and "117 classes  5 parts" in p.stdout and "crop model" in p.stdout
    assert "single model" in p.stdout
    env = dict(os.environ, SEGPIPE_MODEL_PATH=fx["dir"])
    q = subprocess.run([sp.SEGPIPE, "tasks"], capture_output=True, text=True, env=env, timeout=120)
    assert q.returncode == 0 and q.stdout.count("117 classes  5 parts") == 2, q.stdout + q.stderr
    q = subprocess.run([sp.SEGPIPE, "tasks"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, SEGPIPE_MODEL_PATH=tmp))   # none: said, with the way to make one
    assert q.returncode == 0 and "no task packages in" in q.stdout and "import_totalseg.py" in q.stdout, q.stdout
    r = sp.run("tasks", "--nope")
    assert r.returncode == 2 and r.stderr.startswith("segpipe tasks:"), r.stderr
    r = sp.run("tasks", os.path.join(tmp, "missing"))
    assert r.returncode == 4 and r.stderr.startswith("segpipe tasks: model ") and "no such folder" in r.stderr, r.stderr
    assert "usage" in sp.run("tasks", "--help").stdout


def ts_module(name):
    """TotalSegmentator's totalsegmentator/NAME.py (modules needing only numpy
    and nibabel) from its source, or None when the source is not at hand."""
    for g in MIRRORS:
        if g and os.path.isdir(g):
            src = subprocess.run(["git", "--git-dir", g, "show", f"HEAD:totalsegmentator/{name}.py"],
                                 capture_output=True, text=True)
            if src.returncode == 0:
                d = tempfile.mkdtemp()
                f = os.path.join(d, f"{name}.py")
                open(f, "w").write(src.stdout)
                spec = importlib.util.spec_from_file_location(f"ts_{name}", f)
                m = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(m)
                shutil.rmtree(d)
                return m
    return None


def ts_cropping():
    return ts_module("cropping")


def crop_to_mask(img, mask, addon):
    """TotalSegmentator's crop_to_mask (cropping.py): its own function when
    its source is at hand, else the same steps written from it."""
    m = ts_cropping()
    if m:
        return m.crop_to_mask(img, mask, addon=addon, dtype=np.int32)
    add = (np.array(addon) / img.header.get_zooms()).astype(int)
    idx = np.where(mask.get_fdata() > 0)
    bbox = [[max(0, int(idx[a].min()) - add[a]), min(img.shape[a], int(idx[a].max()) + 1 + add[a])] for a in range(3)]
    data = img.get_fdata()[bbox[0][0]:bbox[0][1], bbox[1][0]:bbox[1][1], bbox[2][0]:bbox[2][1]]
    aff = img.affine.copy()
    aff[:3, 3] = (img.affine @ np.array([bbox[0][0], bbox[1][0], bbox[2][0], 1]))[:3]
    return nib.Nifti1Image(data.astype(np.int32), aff), bbox


def test_totalseg_roi_subset_crops_like_totalsegmentator(tmp):
    """--roi-subset with the package's 6 mm crop model: TotalSegmentator's
    steps on the same predictions (the crop model's labels -> mask of the
    requested structures -> its crop_to_mask with 20 mm -> the needed parts
    on the crop -> merge -> filter -> undo_crop) give segpipe's labels; a
    structure the crop model does not find gives an empty result."""
    fx = fixture()
    cmt, parts, t2p, _ = upstream_maps()
    inv = {v: k for k, v in cmt.items()}
    man = json.load(open(os.path.join(fx["pkg"], "segpipe.json")))
    organ = os.path.join(tmp, "organ.nii.gz")
    run_ct(os.path.join(fx["pkg"], man["roi_crop"]["dir"]), organ, "--no-passport")
    organ_seg = labels_of(organ)
    counts = np.bincount(organ_seg.ravel(), minlength=118)
    img = nib.load(fx["ct"])

    def crop_of(lab):
        m = nib.Nifti1Image((organ_seg == lab).astype(np.uint8), img.affine)
        return crop_to_mask(img, m, man["roi_crop"]["addon_mm"])
    # independent random networks seldom agree, so the subset is two structures: A, which the
    # crop model finds in the smallest box (the crop), and B, which a part finds inside that box
    a_lab = min((k for k in cmt if counts[k]), key=lambda k: np.prod(crop_of(k)[0].shape))
    crop_img, bbox = crop_of(a_lab)
    assert np.prod(crop_img.shape) < np.prod(img.shape)   # a real crop
    cropped = os.path.join(tmp, "cropped.nii.gz")
    nib.save(crop_img, cropped)
    on_crop = {}
    for p in man["parts"]:
        o = os.path.join(tmp, f"c{p['task_id']}.nii.gz")
        q = sp.run("ct", cropped, "-o", o, "--model", os.path.join(fx["pkg"], p["dir"]), "--no-passport", "-q")
        assert q.returncode == 0, q.stderr
        on_crop[p["task_id"]] = labels_of(o)
    b_part = [p for p in man["parts"] if a_lab not in p["map"]][0]
    local = np.bincount(on_crop[b_part["task_id"]].ravel())
    local[0] = 0
    b_lab = b_part["map"][int(local.argmax())]
    roi = [cmt[a_lab], cmt[b_lab]]
    tids = [p["task_id"] for p in man["parts"] if a_lab in p["map"] or b_lab in p["map"]]
    seg = ts_merge([on_crop[t] for t in tids], tids)
    seg[~np.isin(seg, [a_lab, b_lab])] = 0
    ref = np.zeros(img.shape, np.int32)   # undo_crop
    ref[bbox[0][0]:bbox[0][1], bbox[1][0]:bbox[1][1], bbox[2][0]:bbox[2][1]] = seg
    assert ref.any()
    out = os.path.join(tmp, "roi.nii.gz")
    run_ct(fx["pkg"], out, "--roi-subset", ",".join(roi))
    ours = labels_of(out)
    assert (ours == ref).mean() >= 0.999
    # the crop changed the answer: the same part on the whole scan gives other voxels
    whole = os.path.join(tmp, "whole.nii.gz")
    run_ct(fx["nocrop"], whole, "--roi-subset", ",".join(roi))
    assert (labels_of(whole) != ours).any()
    # nothing found by the crop model: an empty map, exit 0
    absent = [n for n in cmt.values() if counts[inv[n]] == 0][0]
    out2 = os.path.join(tmp, "none.nii.gz")
    run_ct(fx["pkg"], out2, "--roi-subset", absent)
    assert labels_of(out2).max() == 0


def test_totalseg_python_binding(tmp):
    """The Python package sees a task package's parts and gives the CLI's labels."""
    if "asan" in sp.BUILD:
        raise sp.Skip("the sanitizer build's library cannot be loaded into python")
    fx = fixture()
    sys.path.insert(0, os.path.join(sp.ROOT, "python"))
    os.environ["SEGPIPE_LIBRARY"] = os.path.join(sp.BUILD, "libsegpipe.so")
    import segpipe
    m = segpipe.Model(fx["nocrop"])
    try:
        assert m.parts == [f"totalseg-{t}-{n}" for t, n in
                           zip(PART_IDS, ("organs", "vertebrae", "cardiac", "muscles", "ribs"))]
        assert m.labels[1:] == [upstream_maps()[0][k] for k in range(1, 118)]
        r = m.ct(fx["ct"], passport=False)
        out = os.path.join(tmp, "cli.nii.gz")
        run_ct(fx["nocrop"], out, "--no-passport")
        assert np.array_equal(r.labels, labels_of(out))
    finally:
        m.close()


def test_totalseg_subtask_crops_like_totalsegmentator(tmp):
    """A one-model subtask (liver_vessels: crop ["liver"], 20 mm margin,
    the 6 mm model first; lung_vessels: robust_crop, so the 3 mm model) is
    imported with TotalSegmentator's crop rule, and every run is cropped as
    TotalSegmentator crops: the crop model's labels -> mask of the crop
    structures -> its crop_to_mask -> the subtask model on the crop ->
    undo_crop. Random weights scatter "liver" over the scan, so the rule is
    also run with the crop model's most compact structure (a real crop)."""
    fx = fixture()
    cmt = upstream_maps()[0]
    inv = {v: k for k, v in cmt.items()}
    pkg = os.path.join(tmp, "liver_vessels")
    p = py(IMPORTER, fx["home"], "-o", pkg, "--task", "liver_vessels")
    assert p.returncode == 0, p.stderr
    man = json.load(open(os.path.join(pkg, "segpipe.json")))
    assert man["labels"] == {"0": "background", "1": "liver_vessels", "2": "liver_tumor"}
    assert man["crop"]["structures"] == ["liver"] and man["crop"]["addon_mm"] == [20, 20, 20]
    assert man["crop"]["task_id"] == 298 and "roi_crop" not in man
    sub = json.load(open(os.path.join(pkg, man["parts"][0]["dir"], "segpipe.json")))
    assert sub["sliding_window"]["step"] == 0.5
    # TotalSegmentator casts to int32 only what it resamples: the crop model (resample=6.0), not
    # liver_vessels (its config has no "resample": nnU-Net resamples, keeping the fractions)
    crop_man = json.load(open(os.path.join(pkg, man["crop"]["dir"], "segpipe.json")))
    assert (man["resampled_int32"], sub["resampled_int32"], crop_man["resampled_int32"]) == (False, False, True)
    # ... and nnU-Net resamples as its preprocessing does: normalised, then order 3 (the task's run below
    # equals the part's own run on TotalSegmentator's crop only if both do)
    assert (man.get("resample"), sub.get("resample"), crop_man.get("resample")) == ("nnunet", "nnunet", None)
    lv = os.path.join(tmp, "lung_vessels")
    p = py(IMPORTER, fx["home"], "-o", lv, "--task", "lung_vessels")
    assert p.returncode == 0, p.stderr
    lvm = json.load(open(os.path.join(lv, "segpipe.json")))
    assert lvm["crop"]["task_id"] == 297 and lvm["crop"]["structures"] == [
        "lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
        "lung_lower_lobe_right"]
    # python_api.py: crop_addon = [20,20,20] whenever the total model crops (the task's own is overridden)
    assert lvm["crop"]["addon_mm"] == [20, 20, 20]
    organ = os.path.join(tmp, "organ.nii.gz")
    run_ct(os.path.join(pkg, man["crop"]["dir"]), organ, "--no-passport")
    organ_seg = labels_of(organ)
    img = nib.load(fx["ct"])
    counts = np.bincount(organ_seg.ravel(), minlength=118)

    def box(lab):
        idx = np.where(organ_seg == lab)
        return np.prod([int(i.max()) - int(i.min()) + 1 for i in idx])
    compact = cmt[min((k for k in cmt if counts[k]), key=box)]
    variants = [("liver", pkg)]
    pkg2 = os.path.join(tmp, "compact")
    shutil.copytree(pkg, pkg2)
    m2 = dict(man, crop=dict(man["crop"], structures=[compact]))
    json.dump(m2, open(os.path.join(pkg2, "segpipe.json"), "w"))
    variants.append((compact, pkg2))
    shares = []
    for name, package in variants:
        mask = (organ_seg == inv[name]).astype(np.uint8)
        if mask.any():
            crop_img, bbox = crop_to_mask(img, nib.Nifti1Image(mask, img.affine), man["crop"]["addon_mm"])
            cropped = os.path.join(tmp, "cropped.nii.gz")
            nib.save(crop_img, cropped)
            o = os.path.join(tmp, "cpart.nii.gz")
            q = sp.run("ct", cropped, "-o", o, "--model", os.path.join(package, man["parts"][0]["dir"]),
                       "--no-passport", "-q")
            assert q.returncode == 0, q.stderr
            ref = np.zeros(img.shape, np.int32)
            ref[bbox[0][0]:bbox[0][1], bbox[1][0]:bbox[1][1], bbox[2][0]:bbox[2][1]] = labels_of(o)
            shares.append(np.prod(crop_img.shape) / np.prod(img.shape))
            assert ref.any()   # the subtask model labels something on its crop
        else:
            ref = np.zeros(img.shape, np.int32)   # TotalSegmentator: "Crop is empty"
        out = os.path.join(tmp, "sub.nii.gz")
        run_ct(package, out)
        assert (labels_of(out) == ref).mean() >= 0.999, name
        stats = json.load(open(os.path.join(tmp, "sub.statistics.json")))
        assert list(stats) == ["liver_vessels", "liver_tumor"]
    assert min(shares) < 0.5, shares   # the compact structure's crop is a real one
    # a crop structure the crop model does not segment is refused when the package loads
    m2["crop"]["structures"] = ["no_such_organ"]
    json.dump(m2, open(os.path.join(pkg2, "segpipe.json"), "w"))
    q = sp.run("model", "check", pkg2)
    assert q.returncode == 4 and "no_such_organ" in q.stderr, q.stderr


def test_totalseg_fallbacks_match_upstream(tmp):
    """Where TotalSegmentator's source is at hand, the test's stand-ins for it
    (the stored maps, the crop_to_mask written from cropping.py) equal it, so
    a run without the source checks the same thing."""
    m = ts_cropping()
    if m is None:
        raise sp.Skip("TotalSegmentator's source not at hand ($TOTALSEG_SRC)")
    j = json.load(open(FIXTURE))
    cmt, parts, t2p, _ = upstream_maps()
    assert {int(k): v for k, v in j["class_map_total"].items()} == cmt
    assert {k: {int(a): b for a, b in v.items()} for k, v in j["class_map_5_parts"].items()} == parts
    assert {int(k): v for k, v in j["map_taskid_to_partname_ct"].items()} == t2p
    rng = np.random.default_rng(0)
    saved = MIRRORS[:]
    try:
        for k in range(20):
            sh = tuple(int(x) for x in rng.integers(10, 40, 3))
            aff = np.diag([*rng.uniform(0.5, 4, 3), 1.0])
            aff[:3, 3] = rng.uniform(-50, 50, 3)
            img = nib.Nifti1Image(rng.integers(-1000, 1000, sh).astype(np.int16), aff)
            mask = np.zeros(sh, np.uint8)
            c = [int(rng.integers(0, s)) for s in sh]
            mask[c[0]:c[0] + 3, c[1]:c[1] + 2, c[2]:c[2] + 4] = 1
            mi = nib.Nifti1Image(mask, aff)
            a, ba = m.crop_to_mask(img, mi, addon=[20, 20, 20], dtype=np.int32)
            MIRRORS[:] = []
            b, bb = crop_to_mask(img, mi, [20, 20, 20])
            MIRRORS[:] = saved
            assert ba == bb and np.array_equal(a.get_fdata(), b.get_fdata()) and np.allclose(a.affine, b.affine)
    finally:
        MIRRORS[:] = saved


@sp.realistic("TotalSegmentator's own pipeline in PyTorch as the reference "
              "(test_totalseg_merge_matches_totalsegmentator: the five parts and their merge)")
def test_totalseg_agrees_with_totalsegmentator_pipeline(tmp):
    """TotalSegmentator's own pipeline (python_api.totalsegmentator(ml=True,
    task="total", device="cpu"): nnU-Net's predictor with step 0.8 per part,
    its merge) run from its git mirror with nnU-Net's, through
    bench/totalseg_pipeline.py's shims, on the fake home; segpipe's `total`
    package (imported from the same home, `--accumulator fp16`: nnU-Net's
    half sums) labels the same scan the same (>= 99.9% of voxels; random
    weights leave near-ties). The scan is at 3 mm, so both resample to the
    parts' 1.5 mm, and TotalSegmentator casts the resampled CT to int32 (HU
    fractions truncated): the package's "resampled_int32" does the same
    (98.3% of voxels equal without it)."""
    mirror = os.environ.get("NNUNET_SRC", "/work/.mirror")
    if not all(os.path.isdir(os.path.join(mirror, r, "repo")) for r in (
            "wasserth+TotalSegmentator", "MIC-DKFZ+nnUNet", "MIC-DKFZ+dynamic-network-architectures",
            "MIC-DKFZ+acvl_utils", "MIC-DKFZ+batchgenerators")):
        raise sp.Skip("TotalSegmentator / nnU-Net git mirrors absent")
    try:
        import torch  # noqa: F401
    except ImportError:
        raise sp.Skip("PyTorch missing")
    fx = fixture()
    spec = importlib.util.spec_from_file_location("totalseg_pipeline",
                                                  os.path.join(sp.ROOT, "bench", "totalseg_pipeline.py"))
    tp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tp)
    home = os.path.join(tmp, "home")
    shutil.copytree(fx["home"], home)
    paths, _ = tp.unpack_sources(mirror, os.path.join(tmp, "src"))
    ct = fx["ct"]
    shape = nib.load(ct).shape
    assert json.load(open(os.path.join(fx["pkg"], "segpipe.json")))["resampled_int32"] is True
    ts_out, sp_out = os.path.join(tmp, "ts.nii.gz"), os.path.join(tmp, "sp.nii.gz")
    r = tp.run_ts(ct, ts_out, None, 2, tp.ts_env(paths, home), tmp)
    assert [s[0] for s in r["stages"]][:2] == ["Resampled", "Predicted"], r["stages"]   # no crop model: full task
    p = sp.run("ct", ct, "-o", sp_out, "--model", fx["pkg"], "-q", "--no-passport", "-t", "2", "--accumulator", "fp16")
    assert p.returncode == 0, p.stderr
    a, b = labels_of(ts_out), labels_of(sp_out)
    assert a.shape == b.shape == shape
    assert len(np.unique(a)) > 20, np.unique(a)   # the five parts' labels, merged
    assert (a == b).mean() >= 0.999, (a == b).mean()
