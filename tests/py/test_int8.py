"""INT8 (issue 45): tools/import/onnx_int8.py adds a QDQ int8 model to a
package, calibrated through segpipe's own runs (SEGPIPE_CALIBRATE); `segpipe
ct --precision int8` runs it, opt-in only. Checked against independent
references: the recorded activation range of the network input against the
manifest's normalisation computed with numpy on the CT nibabel reads, the
int8 weights against the fp32 weights (onnx, numpy), and the int8 labels
against the fp32 labels (Dice per structure, numpy). fp32 labels stay those
of the default precision byte for byte."""
import json, os, shutil, subprocess, sys
import numpy as np
import nibabel as nib
import sp

TOOL = os.path.join(sp.ROOT, "tools", "import", "onnx_int8.py")
CT = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
CT_BIG = os.path.join(sp.CTDIR, "example_ct.nii.gz")
_pkg = {}


def int8_package(tmp):
    """demo-ct with an int8 model calibrated on slices 50-81 of
    example_ct.nii.gz (example_ct_sm, the case it is evaluated on, is slices
    82-111); made once per module."""
    if "dir" in _pkg:
        return _pkg["dir"]
    if not os.path.exists(CT_BIG):
        raise sp.Skip("../shared/data/ct missing")
    import tempfile
    root = tempfile.mkdtemp(prefix="sp_int8.")
    pkg = os.path.join(root, "demo-ct")
    shutil.copytree(sp.DEMO, pkg)
    im = nib.load(CT_BIG)
    a = np.asarray(im.dataobj)
    cal = os.path.join(root, "calib.nii.gz")
    nib.save(nib.Nifti1Image(a[:, :, 50:82], im.affine, im.header), cal)
    p = sp.tool(TOOL, pkg, "--calib", cal, "--segpipe", sp.SEGPIPE)
    assert p.returncode == 0, p.stderr
    _pkg.update(dir=pkg, calib=cal, out=p.stdout)
    return pkg


def test_int8_model_weights_and_manifest(tmp):
    """The int8 file declares itself in the manifest; every Conv but the
    logits head reads int8 weights with one scale per output channel whose
    dequantised values are within half a step of the fp32 weights, and the
    quantised activations are uint8."""
    import onnx
    from onnx import numpy_helper
    pkg = int8_package(tmp)
    man = json.load(open(os.path.join(pkg, "segpipe.json")))
    assert man["onnx_int8"] == "model.int8.onnx" and man["onnx"] == "model.onnx"
    f32 = onnx.load(os.path.join(pkg, "model.onnx"))
    q = onnx.load(os.path.join(pkg, "model.int8.onnx"))
    w32 = {t.name: numpy_helper.to_array(t) for t in f32.graph.initializer}
    wq = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    convs32 = [n for n in f32.graph.node if n.op_type == "Conv"]
    convs = [n for n in q.graph.node if n.op_type == "Conv"]
    assert len(convs) == len(convs32) == 15
    made = {n.output[0]: n for n in q.graph.node}
    n_q = 0
    for c32, c in zip(convs32, convs):
        if c.output[0] == f32.graph.output[0].name:   # the head stays float32
            assert c.input[1] == c32.input[1]
            continue
        dq = made[c.input[1]]
        assert dq.op_type == "DequantizeLinear"
        w, s, z = (wq[x] for x in dq.input)
        ref = w32[c32.input[1]]
        assert w.dtype == np.int8 and s.shape == (ref.shape[0],) and not z.any()
        back = w.astype(np.float32) * s.reshape((-1,) + (1,) * (ref.ndim - 1))
        assert np.all(np.abs(back - ref) <= s.reshape((-1,) + (1,) * (ref.ndim - 1)) * 0.5 + 1e-7)
        assert made[c.input[0]].op_type == "DequantizeLinear" and wq[made[c.input[0]].input[2]].dtype == np.uint8
        n_q += 1
    assert n_q == 14


def test_calibration_records_the_input_range(tmp):
    """SEGPIPE_CALIBRATE records each extra output's range; for the network
    input (an identity output added here) it is the manifest's clipped
    z-score of the CT, whose extremes numpy computes from the voxels."""
    import onnx
    from onnx import helper, TensorProto
    if not os.path.exists(CT):
        raise sp.Skip("../shared/data/ct missing")
    pkg = os.path.join(tmp, "pk")
    shutil.copytree(sp.DEMO, pkg)
    m = onnx.load(os.path.join(pkg, "model.onnx"))
    x = m.graph.input[0].name
    m.graph.node.append(helper.make_node("Identity", [x], ["seen_input"]))
    m.graph.output.append(helper.make_tensor_value_info("seen_input", TensorProto.FLOAT, None))
    onnx.save(m, os.path.join(pkg, "model.onnx"))
    rf = os.path.join(tmp, "ranges.tsv")
    e = sp.run_env()
    e["SEGPIPE_CALIBRATE"] = rf
    out = os.path.join(tmp, "l.nii.gz")
    p = subprocess.run([sp.SEGPIPE, "ct", CT, "-o", out, "--model", pkg, "--no-passport", "-q", "-t", "2"],
                       capture_output=True, text=True, env=e)
    assert p.returncode == 0, p.stderr
    rows = [l.split("\t") for l in open(rf).read().splitlines()]
    assert [r[0] for r in rows] == ["seen_input"], rows
    nm = json.load(open(os.path.join(pkg, "segpipe.json")))["normalization"]
    hu = np.asarray(nib.load(CT).dataobj, np.float32)
    assert hu.min() < nm["lo"] and hu.max() > nm["hi"]   # both clip ends reached
    lo, hi = ((nm[k] - nm["mean"]) / nm["std"] for k in ("lo", "hi"))
    assert abs(float(rows[0][1]) - lo) < 1e-4 and abs(float(rows[0][2]) - hi) < 1e-4, rows
    assert int(rows[0][3]) > 64 * 64 * 32
    runs = int(rows[0][6])   # each run's extremes summed: their mean lies within the overall range
    assert runs >= 1 and lo - 1e-4 <= float(rows[0][4]) / runs <= float(rows[0][5]) / runs <= hi + 1e-4, rows
    ref = os.path.join(tmp, "ref.nii.gz")   # recording changes nothing
    assert sp.run("ct", CT, "-o", ref, "--no-passport", "-q", "-t", "2").returncode == 0
    assert np.array_equal(np.asarray(nib.load(out).dataobj), np.asarray(nib.load(ref).dataobj))


def test_int8_labels_close_to_fp32(tmp):
    """demo-ct on example_ct_sm (a case it was not calibrated on): int8
    labels against fp32 labels, Dice >= 0.95 for every structure of >= 200
    voxels and >= 0.99 of voxels equal, and only --precision int8 loads the
    int8 file (fp32 stays the package's model.onnx)."""
    if not os.path.exists(CT):
        raise sp.Skip("../shared/data/ct missing")
    pkg = int8_package(tmp)
    lab = {}
    for prec in ("fp32", "int8"):
        out = os.path.join(tmp, prec + ".nii.gz")
        p = sp.run("ct", CT, "-o", out, "--model", pkg, "--precision", prec, "--no-passport", "-v", "-t", "2")
        assert p.returncode == 0, p.stderr
        assert ("model.int8.onnx" in p.stderr) == (prec == "int8"), p.stderr
        lab[prec] = np.asarray(nib.load(out).dataobj)
    f, q = lab["fp32"], lab["int8"]
    assert (f == q).mean() >= 0.99 and not np.array_equal(f, q)   # int8 really ran, and differs a little
    big = [l for l in np.unique(f) if l and (f == l).sum() >= 200]
    assert len(big) >= 20
    for l in big:
        x, y = f == l, q == l
        d = 2 * (x & y).sum() / (x.sum() + y.sum())
        assert d >= 0.95, (l, d)


def test_int8_refusals(tmp):
    """--precision int8 without an int8 model: exit 4 naming the tool;
    int8 on a GPU device or an unknown precision: exit 2; a manifest path
    outside the package: exit 4; the tool on a model with nothing to
    quantise or an opset below 13: exit 4, on an input segpipe cannot
    read: exit 5, leaving the package as it was."""
    import onnx
    from onnx import helper, TensorProto
    if not os.path.exists(CT):
        raise sp.Skip("../shared/data/ct missing")
    out = os.path.join(tmp, "x.nii.gz")
    p = sp.run("ct", CT, "-o", out, "--precision", "int8")
    assert p.returncode == 4 and "has no int8 model" in p.stderr and "onnx_int8.py" in p.stderr, p.stderr
    assert not os.path.exists(out)
    p = sp.run("ct", CT, "-o", out, "--precision", "int4")
    assert p.returncode == 2 and "int8" in p.stderr, p.stderr
    p = sp.run("ct", CT, "-o", out, "--precision", "int8", "--device", "cuda")
    assert p.returncode == 2 and "runs on the CPU" in p.stderr, p.stderr
    pkg = os.path.join(tmp, "pk")
    shutil.copytree(sp.DEMO, pkg)
    mf = json.load(open(os.path.join(pkg, "segpipe.json")))
    json.dump(dict(mf, onnx_int8="../model.onnx"), open(os.path.join(pkg, "segpipe.json"), "w"))
    p = sp.run("ct", CT, "-o", out, "--model", pkg, "--precision", "int8")
    assert p.returncode == 4 and '"onnx_int8"' in p.stderr and "must be file names inside the package" in p.stderr \
        and "../model.onnx" not in p.stderr, p.stderr
    json.dump(mf, open(os.path.join(pkg, "segpipe.json"), "w"))
    bad = os.path.join(tmp, "bad.nii.gz")
    open(bad, "wb").write(b"\x1f\x8b not a volume")
    p = sp.tool(TOOL, pkg, "--calib", bad, "--segpipe", sp.SEGPIPE)
    assert p.returncode == 5 and "calibration" in p.stderr, p.stderr
    assert json.load(open(os.path.join(pkg, "segpipe.json"))) == mf and not os.path.exists(os.path.join(pkg, "model.int8.onnx"))
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 8, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8, 8])
    for opset, why in ((17, "nothing to quantise"), (12, "opset is below 13")):
        g = helper.make_graph([helper.make_node("Relu", ["input"], ["y"])], "g", [x], [y])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]), os.path.join(pkg, "model.onnx"))
        p = sp.tool(TOOL, pkg, "--calib", CT, "--segpipe", sp.SEGPIPE)
        assert p.returncode == 4 and why in p.stderr, p.stderr


def test_int8_masks_model_iou(tmp):
    """A photo model through `segpipe masks --precision int8`: demo-rooms
    (a 2D U-Net) calibrated on two rendered rooms, evaluated on two others;
    every mask's IoU against the fp32 masks >= 0.9 (numpy on the PNGs PIL
    reads), and --precision is checked by masks' parser (exit 2)."""
    from PIL import Image
    sys.path.insert(0, os.path.join(sp.ROOT, "tools", "train"))
    from render_rooms import render
    photos = []
    for seed in (11, 12, 21, 22):
        p = os.path.join(tmp, f"room{seed}.png")
        Image.fromarray(render((240, 320), seed=seed)[0]).save(p)
        photos.append(p)
    pkg = os.path.join(tmp, "rooms")
    shutil.copytree(os.path.join(sp.ROOT, "models", "demo-rooms"), pkg)
    p = sp.tool(TOOL, pkg, "--calib", *photos[:2], "--segpipe", sp.SEGPIPE)
    assert p.returncode == 0, p.stderr
    got = {}
    for prec in ("fp32", "int8"):
        out = os.path.join(tmp, prec)
        p = sp.run("masks", *photos[2:], "-o", out, "--model", pkg, "--precision", prec, "-v")
        assert p.returncode == 0, p.stderr
        assert ("model.int8.onnx" in p.stderr) == (prec == "int8"), p.stderr
        got[prec] = {f: np.asarray(Image.open(os.path.join(out, f))) > 0 for f in sorted(os.listdir(out))
                     if f.endswith(".png")}
    assert got["fp32"].keys() == got["int8"].keys() and len(got["fp32"]) >= 4
    differs = False
    for f, a in got["fp32"].items():
        b = got["int8"][f]
        differs |= not np.array_equal(a, b)
        if a.sum() >= 500:
            iou = (a & b).sum() / (a | b).sum()
            assert iou >= 0.9, (f, iou)
    assert differs   # the int8 model really ran
    p = sp.run("masks", photos[2], "-o", os.path.join(tmp, "x"), "--model", pkg, "--precision", "fp16")
    assert p.returncode == 2 and "--precision is auto, fp32 or int8" in p.stderr, p.stderr


def dynamic_quantised(src, dst):
    """demo-rooms' model in onnxruntime's quantize_dynamic form (as ISNet
    ships): per Conv, DynamicQuantizeLinear on the input, ConvInteger on
    uint8 weights (one scale and zero point per tensor, ONNX's
    QuantizeLinear rule: round half to even, saturate), Cast, Mul by the
    input scale x the weight scale, Add of the bias reshaped to [1, C, 1, 1]."""
    import onnx
    from onnx import helper, numpy_helper, TensorProto
    m = onnx.load(src)
    g = m.graph
    init = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    nodes, extra = [], []
    for k, n in enumerate(g.node):
        if n.op_type != "Conv":
            nodes.append(n)
            continue
        w = init[n.input[1]].astype(np.float32)
        lo, hi = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
        s = np.float32((hi - lo) / 255.0)
        z = np.uint8(np.clip(np.round(-lo / s), 0, 255))
        wq = np.clip(np.round(w / s) + z, 0, 255).astype(np.uint8)
        p = f"dq{k}_"
        extra += [numpy_helper.from_array(wq, p + "wq"), numpy_helper.from_array(np.array(z), p + "wz"),
                  numpy_helper.from_array(np.array(s), p + "ws"),
                  numpy_helper.from_array(np.array([1, -1, 1, 1], np.int64), p + "bshape")]
        nodes += [helper.make_node("DynamicQuantizeLinear", [n.input[0]], [p + "xq", p + "xs", p + "xz"]),
                  helper.make_node("ConvInteger", [p + "xq", p + "wq", p + "xz", p + "wz"], [p + "y"]),
                  helper.make_node("Cast", [p + "y"], [p + "yf"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [p + "xs", p + "ws"], [p + "s"]),
                  helper.make_node("Mul", [p + "yf", p + "s"], [p + "ys"] if len(n.input) > 2 else [n.output[0]])]
        nodes[-4].attribute.extend(n.attribute)
        if len(n.input) > 2:
            nodes += [helper.make_node("Reshape", [n.input[2], p + "bshape"], [p + "b"]),
                      helper.make_node("Add", [p + "ys", p + "b"], [n.output[0]])]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(extra)
    onnx.checker.check_model(m)
    onnx.save(m, dst)


def test_int8_from_a_dynamically_quantised_model(tmp):
    """The ISNet case in small: a package whose model is dynamically
    quantised (built here from demo-rooms with ONNX's quantisation rules)
    is turned back into float32 Convs and quantised statically; its int8
    masks match the dynamic model's masks (IoU >= 0.9 per mask) and the
    int8 file has no ConvInteger left."""
    import onnx
    from PIL import Image
    sys.path.insert(0, os.path.join(sp.ROOT, "tools", "train"))
    from render_rooms import render
    pkg = os.path.join(tmp, "dyn")
    shutil.copytree(os.path.join(sp.ROOT, "models", "demo-rooms"), pkg)
    dynamic_quantised(os.path.join(sp.ROOT, "models", "demo-rooms", "model.onnx"), os.path.join(pkg, "model.onnx"))
    photos = []
    for seed in (31, 41):
        photos.append(os.path.join(tmp, f"room{seed}.png"))
        Image.fromarray(render((240, 320), seed=seed)[0]).save(photos[-1])
    p = sp.tool(TOOL, pkg, "--calib", photos[0], "--segpipe", sp.SEGPIPE)
    assert p.returncode == 0, p.stderr
    q = onnx.load(os.path.join(pkg, "model.int8.onnx"))
    ops = [n.op_type for n in q.graph.node]
    assert "ConvInteger" not in ops and "DynamicQuantizeLinear" not in ops and ops.count("QuantizeLinear") >= 14
    got = {}
    for prec in ("fp32", "int8"):
        out = os.path.join(tmp, prec)
        p = sp.run("masks", photos[1], "-o", out, "--model", pkg, "--precision", prec)
        assert p.returncode == 0, p.stderr
        got[prec] = {f: np.asarray(Image.open(os.path.join(out, f))) > 0 for f in sorted(os.listdir(out))
                     if f.endswith(".png")}
    assert got["fp32"].keys() == got["int8"].keys() and len(got["fp32"]) >= 2
    for f, a in got["fp32"].items():
        b = got["int8"][f]
        if a.sum() >= 500:
            assert (a & b).sum() / (a | b).sum() >= 0.9, f
