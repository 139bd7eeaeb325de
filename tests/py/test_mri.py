"""A real pretrained network end to end: brainchop's MeshNet (grey/white
matter, ../shared/models/brainchop-gwm) through `segpipe mri`, against an
independent pipeline: nibabel.processing.conform (order 1, LIA, 256^3 at
1 mm), numpy min-max scaling, the same ONNX file run by onnxruntime-node,
argmax, and nibabel's resample_from_to (order 0) back to the input grid.
Both MRIs of ../shared/data/mri: bet.nii.gz (1 mm RAS: conforming is a
reorientation and a shift) and tinyT1.nii.gz (2 mm LAS: interpolated)."""
import json, os, subprocess, time
import numpy as np
import nibabel as nib
from nibabel.processing import conform, resample_from_to
import sp

MRI = os.path.join(sp.SHARED, "data", "mri")
NODE_RUN = os.path.join(sp.ROOT, "tests", "ref", "ort_run.js")


def package(tmp):
    out = os.path.join(tmp, "brainchop")
    p = sp.tool(os.path.join(sp.ROOT, "tools", "import", "make_brainchop_package.py"), "-o", out)
    assert p.returncode == 0, p.stderr
    return out


def shared_package():
    """the package, made once per test run (sp.once: test_mri, test_nifti_gzip,
    test_service_inputs and test_ui use the same)"""
    return os.path.join(sp.once(("brainchop-gwm package",), package), "brainchop")


# The sanitizer run's tests of brainchop's pipeline (this module's, the
# service's) run its network in ONNX Runtime (SEGPIPE_MESHNET=0, not
# instrumented): the native executor's 256^3 pass under ASan takes ~27 CPU s
# (ORT's: ~11); test_meshnet runs the native executor under ASan, on every
# vector body and on a real T1 conformed to 96^3 against ONNX Runtime.
ORT_UNDER_ASAN = {"SEGPIPE_MESHNET": "0"} if "asan" in sp.BUILD else {}


def mri_run(name, env=None):
    """`segpipe mri` of ../shared/data/mri/NAME with the package, once per test
    run (sp.run_once): its folder holds lab.nii.gz (and lab.passport.json),
    conf.nii.gz (the conformed grid's labels) and rep.json (the report)"""
    return sp.run_once("mri", os.path.join(MRI, name), "-o", "{d}/lab.nii.gz", "--model", shared_package(),
                       "--save-model-labels", "{d}/conf.nii.gz", "--report", "{d}/rep.json", "-q", env=env)


def reference(tmp, path, model):
    """(conformed image, its labels, labels on the input grid, seconds of the network)"""
    img = nib.load(path)
    c = conform(img, (256, 256, 256), (1.0, 1.0, 1.0), order=1, orientation="LIA")
    x = np.asarray(c.dataobj, np.float32)
    x = (x - x.min()) / (x.max() - x.min())
    raw_in, raw_out = os.path.join(tmp, "in.f32"), os.path.join(tmp, "out.f32")
    np.ascontiguousarray(x.transpose(2, 1, 0)).tofile(raw_in)    # ONNX dims (z, y, x)
    t0 = time.time()
    r = subprocess.run(["node", NODE_RUN, os.path.join(model, "model.onnx"), raw_in, "1,1,256,256,256", raw_out],
                       capture_output=True, text=True)
    secs = time.time() - t0
    assert r.returncode == 0, r.stderr
    y = np.fromfile(raw_out, np.float32).reshape(3, 256, 256, 256)
    lab = y.argmax(0).transpose(2, 1, 0).astype(np.uint8)
    lab_img = nib.Nifti1Image(lab, c.affine)
    back = np.asarray(resample_from_to(lab_img, img, order=0).dataobj)
    return c, lab, back, secs


def run_case(tmp, name, min_agree):
    model = shared_package()
    src = os.path.join(MRI, name)
    d = mri_run(name, ORT_UNDER_ASAN or None)
    out, conf, rep = (os.path.join(d, f) for f in ("lab.nii.gz", "conf.nii.gz", "rep.json"))
    c, ref_lab, ref_back, node_secs = reference(tmp, src, model)
    got_conf = nib.load(conf)
    assert got_conf.shape == (256, 256, 256) and np.allclose(got_conf.affine, c.affine, atol=1e-4), got_conf.affine
    a = (np.asarray(got_conf.dataobj) == ref_lab).mean()
    got = np.asarray(nib.load(out).dataobj)
    assert got.shape == nib.load(src).shape
    b = (got == ref_back).mean()
    inf = json.load(open(rep))["seconds"]["inference"]
    print(f"     {name}: conformed grid {100 * a:.4f}% agree, input grid {100 * b:.4f}%; network: segpipe "
          f"{inf:.2f} s, onnxruntime-node {node_secs:.2f} s")
    assert a >= min_agree and b >= min_agree, (a, b)
    return got, json.load(open(os.path.join(d, "lab.passport.json")))


@sp.realistic("the 1 mm MRI against brainchop's published voxel counts (test_brainchop_tiny_t1: the same conform, "
              "network and labels back)")
def test_brainchop_bet(tmp):
    """bet.nii.gz: the voxel counts brainchop's README gives (495,540 and
    527,131 on the conformed grid; 1 mm voxels: the same in ml)."""
    got, ps = run_case(tmp, "bet.nii.gz", 0.9999)
    vol = {s["name"]: s["voxels"] for s in ps["structures"]}
    assert abs(vol["white_matter"] - 495540) <= 50 and abs(vol["grey_matter"] - 527131) <= 50, vol
    mean = {s["name"]: s["intensity"]["mean"] for s in ps["structures"]}
    assert mean["white_matter"] > mean["grey_matter"], mean    # T1: white matter is the brighter tissue
    # an MRI's values are not Hounsfield units: nothing in its passport says "hu"
    assert not any("hu" in s for s in ps["structures"]) and "hu_min" not in ps["scan"], ps["scan"]


def test_brainchop_tiny_t1(tmp):
    run_case(tmp, "tinyT1.nii.gz", 0.999)


def test_mri_needs_a_model(tmp):
    p = sp.run("mri", os.path.join(MRI, "bet.nii.gz"), "-o", os.path.join(tmp, "x.nii.gz"))
    assert p.returncode == 2 and "make_brainchop_package" in p.stderr, p.stderr


def test_mri_warns_on_a_ct(tmp):
    """A CT in HU given to `mri` runs, with a warning that names the right command."""
    out = os.path.join(tmp, "x.nii.gz")
    p = sp.run("mri", os.path.join(sp.SHARED, "data", "ct", "example_ct_sm.nii.gz"), "-o", out,
               "--model", shared_package(), "--no-passport", timeout=600, env=ORT_UNDER_ASAN)
    assert p.returncode == 0, p.stderr
    assert "looks like a CT in Hounsfield units" in p.stderr and "use segpipe ct" in p.stderr, p.stderr
