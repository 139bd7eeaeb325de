"""Memory options of the CT window (issue: TotalSegmentator scale in 1.5 GB):
the split head (tools/import/onnx_split_head.py: features accumulated, the final
1x1x1 convolution applied once per voxel at the argmax), the fp16
accumulator and --roi-subset, each against the plain fp32 logits path on
the real example CTs."""
import json, os
import numpy as np
import nibabel as nib
import onnx
from onnx import numpy_helper
from scipy import ndimage
import sp

SPLIT_TOOL = os.path.join(sp.ROOT, "tools", "import", "onnx_split_head.py")


def split_demo(tmp):
    out = os.path.join(tmp, "demo-split")
    if not os.path.exists(out):
        p = sp.tool(SPLIT_TOOL, sp.DEMO, "-o", out, "--split-concat")
        assert p.returncode == 0, p.stderr
    return out


def ct(tmp, src, name, *extra):
    out = os.path.join(tmp, name + ".nii.gz")
    sp.run("ct", src, "-o", out, "-q", *extra, check=True)
    return np.asanyarray(nib.load(out).dataobj), os.path.join(tmp, name)


def test_split_head_file_is_the_onnx_head(tmp):
    """head.bin holds the original graph's last Conv (C rows of F weights,
    then C biases); the split graph ends at that Conv's input."""
    pkg = split_demo(tmp)
    g = onnx.load(os.path.join(sp.DEMO, "model.onnx")).graph
    head = [n for n in g.node if g.output[0].name in n.output][0]
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    w, b = init[head.input[1]], init[head.input[2]]
    man = json.load(open(os.path.join(pkg, "segpipe.json")))
    f = man["head"]["features"]
    assert w.shape == (118, f, 1, 1, 1)
    raw = np.fromfile(os.path.join(pkg, "head.bin"), "<f4")
    assert raw.size == 118 * f + 118
    assert np.array_equal(raw[:118 * f].reshape(118, f), w.reshape(118, f)) and np.array_equal(raw[118 * f:], b)
    sg = onnx.load(os.path.join(pkg, "model.onnx")).graph
    assert sg.output[0].name == head.input[0] == man["output"]["name"]
    assert sg.output[0].type.tensor_type.shape.dim[1].dim_value == f
    # --split-concat: no Concat left, each replaced by two Convs and an Add
    # whose weights are the original's input-channel halves
    n_cat = sum(n.op_type == "Concat" for n in g.node)
    assert man["split_concat"] == n_cat > 0 and not any(n.op_type == "Concat" for n in sg.node)
    assert sum(n.op_type == "Add" for n in sg.node) == n_cat
    sinit = {t.name: numpy_helper.to_array(t) for t in sg.initializer}
    for cat in (n for n in g.node if n.op_type == "Concat"):
        conv = [n for n in g.node if cat.output[0] in n.input][0]
        wa, wb = sinit[conv.output[0] + "_Wa"], sinit[conv.output[0] + "_Wb"]
        assert np.array_equal(np.concatenate([wa, wb], 1), init[conv.input[1]])


def test_split_head_gives_the_same_labels(tmp):
    """Accumulating features and applying the head at the argmax (and the
    concatenations split into two convolutions) is the same sum in exact
    arithmetic: labels equal to the logits path on the real CT, and the
    same passport volumes."""
    pkg = split_demo(tmp)
    for src in ("example_ct_sm.nii.gz",):
        path = os.path.join(sp.CTDIR, src)
        a, pa = ct(tmp, path, "plain")
        b, pb = ct(tmp, path, "split", "--model", pkg)
        assert a.shape == b.shape and np.array_equal(a, b), (src, int((a != b).sum()))
        va = {s["name"]: s["volume_ml"] for s in json.load(open(pa + ".passport.json"))["structures"]}
        vb = {s["name"]: s["volume_ml"] for s in json.load(open(pb + ".passport.json"))["structures"]}
        assert va == vb


def test_split_head_smooth_logits(tmp):
    """--smooth keeps the averaged logits; from the split head they are
    W f / sum(w) + b instead of sum(w (W f + b)) / sum(w): equal up to
    float rounding, so the labels agree on all but near-tie voxels."""
    pkg = split_demo(tmp)
    path = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
    a, _ = ct(tmp, path, "plain", "--smooth", "--no-passport")
    b, _ = ct(tmp, path, "split", "--smooth", "--no-passport", "--model", pkg)
    assert (a == b).mean() >= 0.9999, (a != b).sum()


def test_fp16_accumulator_differs_only_at_boundaries(tmp):
    """Half-precision sums (10 significant bits) flip near-ties only: at
    least 99.9% of voxels equal to the fp32 path, and every differing voxel
    lies on a boundary of the fp32 labels (a 26-neighbour has another label:
    where two logits are close), never inside a structure."""
    pkg = split_demo(tmp)
    path = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
    # not with a split head: features rounded to half, then the head, flip
    # labels far from boundaries (measured: 132 voxels, many in the air)
    p = sp.run("ct", path, "-o", os.path.join(tmp, "h.nii.gz"), "--model", pkg, "--accumulator", "fp16")
    assert p.returncode == 2 and "split head" in p.stderr, p.stderr
    for model in (sp.DEMO,):
        lab = {}
        for acc in ("fp32", "fp16"):   # compared at the model's grid, where the argmax is taken
            ml = os.path.join(tmp, acc + "_model.nii.gz")
            ct(tmp, path, acc, "--model", model, "--no-passport", "--accumulator", acc, "--save-model-labels", ml)
            lab[acc] = np.asanyarray(nib.load(ml).dataobj)
        a, b = lab["fp32"], lab["fp16"]
        diff = np.argwhere(a != b)
        assert len(diff) <= 0.001 * a.size, len(diff)
        pad = np.pad(a, 1, mode="edge")
        for i, j, k in diff:   # never inside a structure: a 26-neighbour has another label
            assert len(np.unique(pad[i:i + 3, j:j + 3, k:k + 3])) > 1, (i, j, k)


def test_roi_subset(tmp):
    """--roi-subset liver,spleen: the labels are the full run's, with every
    other structure set to background; the passport and statistics.json list
    only those two; an unknown name is a usage error naming it."""
    path = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
    full, _ = ct(tmp, path, "full")
    sub, ps = ct(tmp, path, "sub", "--roi-subset", "liver,spleen")
    names = json.load(open(os.path.join(sp.DEMO, "segpipe.json")))["labels"]
    keep = [int(k) for k, v in names.items() if v in ("liver", "spleen")]
    assert np.array_equal(sub, np.where(np.isin(full, keep), full, 0))
    assert {s["name"] for s in json.load(open(ps + ".passport.json"))["structures"]} == {"liver", "spleen"}
    assert set(json.load(open(ps + ".statistics.json"))) == {"liver", "spleen"}
    p = sp.run("ct", path, "-o", os.path.join(tmp, "x.nii.gz"), "--roi-subset", "liver,lunge")
    assert p.returncode == 2 and '"lunge"' in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(tmp, "x.nii.gz"))


def test_split_refusals(tmp):
    """The tool refuses a graph whose head is not a 1x1x1 Conv (tinyseg's is
    3x3x3); segpipe refuses a head.bin of the wrong size."""
    p = sp.tool(SPLIT_TOOL, sp.TINYSEG, "-o", os.path.join(tmp, "t"))
    assert p.returncode == 4 and "1x1x1" in p.stderr, p.stderr
    pkg = split_demo(tmp)
    hb = os.path.join(pkg, "head.bin")
    data = open(hb, "rb").read()
    open(hb, "wb").write(data[:-4])
    try:
        p = sp.run("ct", os.path.join(sp.CTDIR, "example_ct_sm.nii.gz"), "-o", os.path.join(tmp, "y.nii.gz"),
                   "--model", pkg)
        assert p.returncode == 4 and "head.bin has" in p.stderr, p.stderr
    finally:
        open(hb, "wb").write(data)


def big_ct(tmp):
    """example_ct at twice the resolution per axis (nearest: same HU values,
    int16): 11 M voxels, enough for the input to be parked in a file."""
    out = os.path.join(tmp, "big_ct.nii.gz")
    if not os.path.exists(out):
        img = nib.load(os.path.join(sp.CTDIR, "example_ct.nii.gz"))
        a = np.asanyarray(img.dataobj).astype(np.int16)
        big = a.repeat(2, 0).repeat(2, 1).repeat(2, 2)
        aff = img.affine.copy()
        aff[:3, :3] /= 2
        h = nib.Nifti1Image(big, aff)
        h.header.set_data_dtype(np.int16)
        nib.save(h, out)
    return out


def coarse_demo(tmp):
    """demo-ct run at 6 mm (its manifest's spacing changed): 8x fewer voxels
    for the network, the same reading, parking and writing of the input's
    grid; its labels are only compared with its own."""
    out = os.path.join(tmp, "demo-6mm")
    if not os.path.exists(out):
        os.makedirs(out)
        man = json.load(open(os.path.join(sp.DEMO, "segpipe.json")))
        man["spacing"] = [6.0, 6.0, 6.0]
        json.dump(man, open(os.path.join(out, "segpipe.json"), "w"))
        os.symlink(os.path.join(sp.DEMO, man["onnx"]), os.path.join(out, man["onnx"]))
    return out


def test_parked_input_same_results(tmp):
    """While the network runs the input waits in an unnamed file (default)
    or stays in memory (--no-spill; tmpfs and missing folders are refused in
    the unit test): labels, passport, statistics and the preview (which reads
    the voxels widened back from the file's mapping) are byte-identical (the
passport less its provenance, which names each run's arguments and date)."""
    src, model = big_ct(tmp), coarse_demo(tmp)
    got = {}
    for name, extra in [("park", []), ("park-preview", ["--preview"]), ("mem", ["--no-spill", "--preview"])]:
        out = os.path.join(tmp, name + ".nii.gz")
        png = os.path.join(tmp, name + ".png")
        extra = [png if e == "--preview" else e for e in extra]
        if png in extra:
            extra.insert(extra.index(png), "--preview")
        r = sp.run("ct", src, "-o", out, "-v", "--model", model, *extra, check=True)
        assert ("input parked" in r.stderr) == name.startswith("park"), (name, r.stderr[-2000:])
        pj = json.load(open(os.path.join(tmp, name + ".passport.json")))
        pj.pop("provenance")   # names this run's own arguments and date
        files = [json.dumps(pj, sort_keys=True).encode(), open(os.path.join(tmp, name + ".statistics.json"), "rb").read()]
        files.append(np.asanyarray(nib.load(out).dataobj).tobytes())
        if png in extra:
            files.append(open(png, "rb").read())
        got[name] = files
    ref = got["mem"]
    assert got["park"] == ref[:3] and got["park-preview"] == ref
    lab = np.asanyarray(nib.load(os.path.join(tmp, "park.nii.gz")).dataobj)
    assert lab.shape == (244, 202, 224) and len(np.unique(lab)) > 5
