"""brainchop's model zoo (github.com/neuroneural/brainchop-models) through
tools/import/import_brainchop.py and `segpipe mri`, against the independent
reference of brainchop-cli's pipeline in ref_brainchop.py (numpy, scipy,
PyTorch on the real weights: brainchop's own runner needs tinygrad, which
this machine cannot install).

The weights are not in this repository: tools/fetch/fetch_brainchop.sh puts
them in build/brainchop-models (or ../shared/models/brainchop-models, or
$SEGPIPE_BRAINCHOP_MODELS); without them these tests skip, saying so."""
import json, os, shutil, subprocess, sys
import numpy as np
import nibabel as nib
import sp
import ref_brainchop as ref

IMPORTER = os.path.join(sp.ROOT, "tools", "import", "import_brainchop.py")
NODE_RUN = os.path.join(sp.ROOT, "tests", "ref", "ort_run.js")
MRI = os.path.join(sp.SHARED, "data", "mri")
ZOO = ["mindgrab", "model21_104class", "subcortical", "model18cls", "model30chan50cls", "model5_gw_ae",
       "model20chan3cls", "model30chan18cls", "model11_gw_ae"]


def zoo_dir():
    for d in (os.environ.get("SEGPIPE_BRAINCHOP_MODELS"), os.path.join(sp.SHARED, "models", "brainchop-models"),
              os.path.join(sp.ROOT, "build", "brainchop-models")):
        if d and all(os.path.isfile(os.path.join(d, "meshnet", m, "model.json")) for m in ZOO):
            return d
    raise sp.Skip("brainchop-models weights absent or incomplete (tools/fetch/fetch_brainchop.sh needs GitHub; "
                  "or copy them to ../shared/models/brainchop-models)")


def import_model(tmp, folder, *extra):
    out = os.path.join(tmp, folder)
    p = sp.tool(IMPORTER, os.path.join(zoo_dir(), "meshnet", folder), "-o", out, *extra)
    assert p.returncode == 0, p.stderr
    return out


_crop = {}


def real_crop(n=40):
    """a qnormalized n^3 block from the middle of bet.nii.gz (real brain intensities)"""
    if n not in _crop:
        x = ref.qnormalize(np.asarray(nib.load(os.path.join(MRI, "bet.nii.gz")).dataobj, np.float32)).astype(np.float32)
        c = [s // 2 for s in x.shape]
        _crop[n] = np.ascontiguousarray(x[c[0] - n // 2:c[0] + n // 2, c[1] - n // 2:c[1] + n // 2,
                                          c[2] - n // 2:c[2] + n // 2])
    return _crop[n]


def onnx_logits(tmp, model, x):
    raw_in, raw_out = os.path.join(tmp, "in.f32"), os.path.join(tmp, "out.f32")
    x.tofile(raw_in)
    r = subprocess.run(["node", NODE_RUN, os.path.join(model, "model.onnx"), raw_in, "1,1," + ",".join(map(str, x.shape)),
                        raw_out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return np.fromfile(raw_out, np.float32).reshape(-1, *x.shape)


def check_export(tmp, folder, ref_dir=None):
    model = import_model(tmp, folder)
    x = real_crop()
    got = onnx_logits(tmp, model, x)
    want = ref.meshnet_forward(ref_dir or os.path.join(zoo_dir(), "meshnet", folder), x, threads=2)
    err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
    agree = (got.argmax(0) == want.argmax(0)).mean()
    print(f"     {folder}: {got.shape[0]} classes, max rel logit error {err:.2e}, argmax agree {100 * agree:.3f}%")
    assert got.shape == want.shape and err < 1e-3 and agree >= 0.999, (err, agree)
    return model


def test_brainchop_export_mindgrab(tmp):
    """torch zip, GroupNorm + GELU (tanh), no biases; the checkpoint's last bias dropped as upstream."""
    m = check_export(tmp, "mindgrab")
    man = json.load(open(os.path.join(m, "segpipe.json")))
    assert man["source"]["dropped_tensors"] == ["model.25.bias"] and man["source"]["activations"] == ["gelu"]
    assert man["labels"] == {"0": "background", "1": "brain"}


def test_brainchop_export_dk104(tmp):
    """safetensors, ReLU, biases; 104 Desikan-Killiany labels and colours from colormap.json."""
    m = check_export(tmp, "model21_104class")
    man = json.load(open(os.path.join(m, "segpipe.json")))
    cm = json.load(open(os.path.join(zoo_dir(), "meshnet", "model21_104class", "colormap.json")))
    assert len(man["labels"]) == 104 and man["labels"]["7"] == cm["labels"][7]
    assert man["colors"]["7"] == [cm["R"][7], cm["G"][7], cm["B"][7]]


@sp.realistic("two more real zoo models exported and compared with the PyTorch network "
              "(test_brainchop_export_dk104, _mindgrab: the importer)")
def test_brainchop_export_elu_models(tmp):
    for f in ("subcortical", "model30chan50cls"):
        check_export(tmp, f)


def test_brainchop_tfjs_equals_pth(tmp):
    """model18cls ships both forms: its tfjs graph + model.bin and its safetensors
    model.pth give the same network (the tfjs kernel layout turned as upstream)."""
    src = os.path.join(zoo_dir(), "meshnet", "model18cls")
    tf = os.path.join(tmp, "tfjs")
    os.makedirs(tf)
    for a, b in (("model.json.tfjs.bak", "model.json"), ("model.bin", "model.bin"), ("colormap.json", "colormap.json")):
        with open(os.path.join(src, a), "rb") as f, open(os.path.join(tf, b), "wb") as g:
            g.write(f.read())
    p = sp.tool(IMPORTER, tf, "-o", os.path.join(tmp, "pk_tf"))
    assert p.returncode == 0 and "model.bin (tfjs)" in p.stdout, p.stdout + p.stderr
    x = real_crop()
    a = onnx_logits(tmp, os.path.join(tmp, "pk_tf"), x)
    b = onnx_logits(tmp, import_model(tmp, "model18cls"), x)
    assert np.abs(a - b).max() < 1e-4


def test_brainchop_import_errors(tmp):
    """a folder that is not a brainchop model: exit 4, a named cause, no traceback."""
    d = os.path.join(tmp, "bad")
    os.makedirs(d)
    json.dump({"layers": [{"kernel_size": 3, "padding": 1, "dilation": 1}], "bias": True}, open(os.path.join(d, "model.json"), "w"))
    open(os.path.join(d, "model.pth"), "wb").write(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}garbage")
    for folder in (d, os.path.join(tmp, "missing")):
        p = sp.tool(IMPORTER, folder, "-o", os.path.join(tmp, "o"))
        assert p.returncode == 4 and "import_brainchop:" in p.stderr and "Traceback" not in p.stderr, p.stderr


@sp.realistic("brainchop-cli's pipeline with real weights on a real 1 mm T1 as the reference "
              "(test_meshnet, test_mri: the MeshNet executor and the conform on small inputs)")
def test_brainchop_pipeline_tissue_fast(tmp):
    """The whole pipeline on a real T1 with real weights (model5_gw_ae, the fast tissue model):
    segpipe's conformed labels and its labels on the input grid against the reference of
    brainchop-cli's pipeline: >= 99% of labelled voxels equal, per-class volumes within 1%."""
    model = import_model(tmp, "model5_gw_ae")
    src = os.path.join(MRI, "bet.nii.gz")
    out, conf = os.path.join(tmp, "lab.nii.gz"), os.path.join(tmp, "conf.nii.gz")
    p = sp.run("mri", src, "-o", out, "--model", model, "--save-model-labels", conf, "-q")
    assert p.returncode == 0, p.stderr
    lab, back, _ = ref.pipeline(os.path.join(zoo_dir(), "meshnet", "model5_gw_ae"), src, threads=2)
    _, caff = ref.niimath_conform(nib.load(src))
    g = nib.load(conf)
    assert np.allclose(g.affine, caff, atol=1e-4), g.affine
    for got, want, where in ((np.asarray(g.dataobj), lab, "conformed"), (np.asarray(nib.load(out).dataobj), back, "input")):
        lv = (got > 0) | (want > 0)
        agree = (got[lv] == want[lv]).mean()
        vols = [(int((got == k).sum()), int((want == k).sum())) for k in (1, 2)]
        print(f"     {where} grid: {100 * agree:.4f}% of labelled voxels equal, volumes {vols}")
        assert agree >= 0.99, agree
        for a, b in vols:
            assert abs(a - b) <= 0.01 * b, vols


def small_package(tmp, folder, n=96):
    """the real network, conformed to n^3 instead of 256^3 (a fast run for the chain/statistics tests)"""
    pk = import_model(tmp, folder)
    man = json.load(open(os.path.join(pk, "segpipe.json")))
    man["conform"]["shape"] = n
    man["patch_size"] = [n, n, n]
    json.dump(man, open(os.path.join(pk, "segpipe.json"), "w"))
    return pk


def read_aseg_stats(path):
    meas, rows = {}, []
    for line in open(path):
        if line.startswith("# Measure "):
            f = [x.strip() for x in line[len("# Measure "):].split(",")]
            meas[f[0]] = float(f[3])
        elif not line.startswith("#") and line.strip():
            f = line.split()
            rows.append({"seg": int(f[1]), "nvox": int(f[2]), "vol": float(f[3]), "name": f[4],
                         "mean": float(f[5]), "std": float(f[6])})
    return meas, rows


def test_brainchop_chain_and_brain_stats(tmp):
    """--model A,B equals B run on the input times A's brain mask (made here with numpy),
    and OUT.aseg.stats / OUT.stats.csv hold what numpy measures on the labels: voxels,
    mm^3, mean/std intensity per region, FreeSurfer SegIds, hemisphere totals, eTIV =
    the extractor's mask volume."""
    ext, dk = small_package(tmp, "model5_gw_ae"), small_package(tmp, "model21_104class")
    src = os.path.join(MRI, "bet.nii.gz")
    img = nib.load(src)
    l1, l2, lc = (os.path.join(tmp, f"{s}.nii.gz") for s in ("ext", "masked_dk", "chain"))
    assert sp.run("mri", src, "-o", l1, "--model", ext, "-q").returncode == 0
    mask = np.asarray(nib.load(l1).dataobj) > 0
    x = np.asarray(img.dataobj)
    masked = os.path.join(tmp, "masked.nii.gz")
    nib.save(nib.Nifti1Image(np.where(mask, x, 0).astype(x.dtype), img.affine, img.header), masked)
    assert sp.run("mri", masked, "-o", l2, "--model", dk, "-q").returncode == 0
    p = sp.run("mri", src, "-o", lc, "--model", f"{ext},{dk}", "-q")
    assert p.returncode == 0, p.stderr
    got, want = np.asarray(nib.load(lc).dataobj), np.asarray(nib.load(l2).dataobj)
    assert got.shape == x.shape and (got == want).mean() >= 0.9999 and mask.sum() > 100000, (got == want).mean()
    vox_mm3 = abs(np.linalg.det(img.affine[:3, :3]))
    meas, rows = read_aseg_stats(os.path.join(tmp, "chain.aseg.stats"))
    assert abs(meas["EstimatedTotalIntraCranialVol"] - mask.sum() * vox_mm3) <= 1e-3 * mask.sum() * vox_mm3
    names = json.load(open(os.path.join(dk, "segpipe.json")))["labels"]
    label_of = {v: int(k) for k, v in names.items()}
    xm = np.where(mask, x, 0).astype(np.float64)
    lh = rh = 0.0
    assert len(rows) >= 50
    for r in rows:
        sel = got == label_of[r["name"]]
        assert r["nvox"] == sel.sum() and abs(r["vol"] - sel.sum() * vox_mm3) < 0.1, r
        assert abs(r["mean"] - xm[sel].mean()) < 1e-3 and abs(r["std"] - xm[sel].std()) < 1e-2 * max(1, xm[sel].std()), r
        lh += r["vol"] if r["name"].startswith(("Left-", "ctx-lh-")) else 0
        rh += r["vol"] if r["name"].startswith(("Right-", "ctx-rh-")) else 0
    seg = {r["name"]: r["seg"] for r in rows}
    if "Left-Hippocampus" in seg:
        assert seg["Left-Hippocampus"] == 17
    if "ctx-rh-insula" in seg:
        assert seg["ctx-rh-insula"] == 2035
    assert abs(meas["lhTotal"] - lh) < 1 and abs(meas["rhTotal"] - rh) < 1 and lh > 0 and rh > 0
    csv = open(os.path.join(tmp, "chain.stats.csv")).read().splitlines()
    assert csv[0].startswith("Index,SegId,Label,StructName,Hemisphere") and len(csv) == len(rows) + 1


def test_brainchop_chain_errors(tmp):
    src = os.path.join(MRI, "tinyT1.nii.gz")
    # a model that is not there: exit 4 (a model error) naming it; an empty name in the list: usage, exit 2
    for m, code in (("no-such-model,also-none", 4), (",", 2), ("a,,b", 2)):
        p = sp.run("mri", src, "-o", os.path.join(tmp, "o.nii.gz"), "--model", m, "-q")
        assert p.returncode == code and "--model" in p.stderr and not os.path.exists(os.path.join(tmp, "o.nii.gz")), \
            (m, p.returncode, p.stderr)


def test_brainchop_chain_overlap(tmp):
    """A chain's last model is prepared beside the read and the extractors (ct_cmd.c ct_join): the
    same label file byte for byte as SEGPIPE_SERIAL_LOAD=1 (everything in turn), the overlap in the
    report at most the model's load; a last model whose ONNX file is broken still fails with exit 4
    and the same message in both orders, nothing written."""
    ext, dk = small_package(tmp, "model5_gw_ae", 64), small_package(tmp, "model21_104class", 64)
    broken = os.path.join(tmp, "broken")
    shutil.copytree(dk, broken)
    open(os.path.join(broken, "model.onnx"), "wb").write(b"not an onnx file" * 64)
    src = os.path.join(MRI, "bet.nii.gz")
    got = {}
    for model, name in ((f"{ext},{dk}", "ok"), (f"{ext},{broken}", "bad")):
        for serial in ("0", "1"):
            out, rep = (os.path.join(tmp, f"{name}{serial}.{e}") for e in ("nii.gz", "json"))
            p = sp.run("mri", src, "-o", out, "--model", model, "--no-passport", "--report", rep,
                       env={"SEGPIPE_SERIAL_LOAD": serial})
            got[name, serial] = (p.returncode, p.stderr, out if os.path.exists(out) else None, rep)
    (rc0, _, f0, rep0), (rc1, _, f1, rep1) = got["ok", "0"], got["ok", "1"]
    assert rc0 == rc1 == 0 and open(f0, "rb").read() == open(f1, "rb").read()
    r0, r1 = json.load(open(rep0)), json.load(open(rep1))
    assert r1["overlapped_seconds"] == 0 and 0 <= r0["overlapped_seconds"] <= r0["seconds"]["load_model"] + 1e-3, r0
    (rc0, err0, f0, _), (rc1, err1, f1, _) = got["bad", "0"], got["bad", "1"]
    assert rc0 == rc1 == 4 and err0 == err1 and "broken" in err0 and f0 is None and f1 is None, (rc0, rc1, err0, err1)


def test_brainchop_python(tmp):
    """The Python binding: segpipe.mri with a chain [extractor, parcellation] gives the CLI's chain labels."""
    ext, dk = small_package(tmp, "model5_gw_ae"), small_package(tmp, "model21_104class")
    src = os.path.join(MRI, "bet.nii.gz")
    lc = os.path.join(tmp, "chain.nii.gz")
    assert sp.run("mri", src, "-o", lc, "--model", f"{ext},{dk}", "-q").returncode == 0
    code = f"""
import sys, numpy as np
sys.path.insert(0, {os.path.join(sp.ROOT, "python")!r})
import segpipe
r = segpipe.mri({src!r}, model=[{ext!r}, {dk!r}], threads=2)
np.save({os.path.join(tmp, "py.npy")!r}, r.labels)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    got, want = np.load(os.path.join(tmp, "py.npy")), np.asarray(nib.load(lc).dataobj)
    assert got.shape == want.shape and (got == want).mean() >= 0.9999 and (want > 0).sum() > 1000, (got == want).mean()


def test_brainchop_constant_volume(tmp):
    """A blank scan (all zeros) through brainchop's pipeline: no crash, a labelled-nothing or
    all-one-class result on the input grid, and the statistics files still written."""
    ext = small_package(tmp, "model5_gw_ae")
    src = os.path.join(tmp, "zeros.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((40, 48, 36), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0])), src)
    out = os.path.join(tmp, "o.nii.gz")
    p = sp.run("mri", src, "-o", out, "--model", ext, "-q")
    assert p.returncode == 0, p.stderr
    got = np.asarray(nib.load(out).dataobj)
    assert got.shape == (40, 48, 36) and len(np.unique(got)) == 1
    assert os.path.exists(os.path.join(tmp, "o.aseg.stats")) and os.path.exists(os.path.join(tmp, "o.stats.csv"))
