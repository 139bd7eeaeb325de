"""The GPU work's host side, checked without a GPU: tools/import/onnx_fp16.py (the
fp16 model against the fp32 one through ONNX Runtime's CPU provider), how
--precision picks a package's ONNX file and refuses what cannot run, the
`gpu:` line of `segpipe version`, and the optional kernels library's build
(when nvcc is there). The device path itself is tested on a GPU machine by
tests/gpu/test_gpu.py (docs/gpu.md)."""
import ctypes as C
import json, os, shutil, subprocess, sys
import numpy as np
import nibabel as nib
import onnx
from onnx import TensorProto, numpy_helper
import sp
from test_importer import Tensor

FP16 = os.path.join(sp.ROOT, "tools", "import", "onnx_fp16.py")
DEMO = os.path.join(sp.ROOT, "models", "demo-ct")
SP_DT_F16 = 10


def _fp16_package(tmp):
    pkg = os.path.join(tmp, "demo-ct")
    shutil.copytree(DEMO, pkg)
    p = sp.tool(FP16, pkg)
    assert p.returncode == 0, p.stderr
    return pkg


def _forward(path, x, dtype_code):
    L = sp.lib()
    rt, m = C.c_void_p(), C.c_void_p()
    assert L.sp_runtime_create(None, C.byref(rt)) == 0
    assert L.sp_model_load(rt, path.encode(), C.byref(m)) == 0, L.sp_last_error()
    ti = Tensor(dtype_code, x.ndim, (C.c_int64 * 8)(*x.shape), x.ctypes.data)
    to = Tensor()
    assert L.sp_model_run(m, C.byref(ti), 1, C.byref(to), 1) == 0, L.sp_last_error()
    assert to.dtype == dtype_code
    ct = C.c_uint16 if dtype_code == SP_DT_F16 else C.c_float
    y = np.ctypeslib.as_array(C.cast(to.data, C.POINTER(ct)), shape=tuple(to.shape[i] for i in range(to.rank)))
    y = (y.view(np.float16) if dtype_code == SP_DT_F16 else y).astype(np.float32)
    L.sp_tensor_free_data(C.byref(to))
    L.sp_model_release(m)
    L.sp_runtime_free(rt)
    return y


def test_onnx_fp16_converter(tmp):
    """Weights rounded to fp16, I/O in fp16, every InstanceNormalization
    between casts to and from fp32 with fp32 scale/bias; the fp16 model's
    logits follow the fp32 model's on a real CT patch."""
    pkg = _fp16_package(tmp)
    man = json.load(open(os.path.join(pkg, "segpipe.json")))
    assert man["onnx_fp16"] == "model.fp16.onnx" and man["onnx"] == "model.onnx"
    m32 = onnx.load(os.path.join(pkg, "model.onnx"))
    m16 = onnx.load(os.path.join(pkg, "model.fp16.onnx"))
    g = m16.graph
    assert g.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert g.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    norms = [n for n in g.node if n.op_type == "InstanceNormalization"]
    casts = [n for n in g.node if n.op_type == "Cast"]
    assert norms and len(casts) == 2 * len(norms)
    inits16 = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    keep32 = {i for n in norms for i in n.input[1:]}
    # the biases of convolutions read only by a norm are gone, and only those
    readers = {}
    for n in m32.graph.node:
        for x in n.input:
            readers.setdefault(x, set()).add(n.op_type)
    convs32 = [n for n in m32.graph.node if n.op_type == "Conv" and len(n.input) == 3]
    cancelled = {n.input[2] for n in convs32 if readers.get(n.output[0]) == {"InstanceNormalization"}}
    assert cancelled and len(cancelled) < len(convs32)      # demo-ct's classifier conv keeps its bias
    for t in m32.graph.initializer:
        a = numpy_helper.to_array(t)
        if t.name in cancelled:
            assert t.name not in inits16 and np.abs(a).max() > 0, t.name
            continue
        b = inits16[t.name]
        if t.name in keep32:
            assert b.dtype == np.float32 and np.array_equal(a, b)
        elif a.dtype == np.float32:
            assert b.dtype == np.float16 and np.array_equal(a.astype(np.float16), b), t.name
    # a real CT patch, normalised as the manifest says
    ct = np.asanyarray(nib.load(os.path.join(sp.CTDIR, "example_ct.nii.gz")).dataobj).astype(np.float32)
    nm = man["normalization"]
    x = (np.clip(ct, nm["lo"], nm["hi"]) - nm["mean"]) / nm["std"]
    P = man["patch_size"]
    x = np.ascontiguousarray(x[20:20 + P[0], 20:20 + P[1], 70:70 + P[2]])[None, None]
    y32 = _forward(os.path.join(pkg, "model.onnx"), x.astype(np.float32), 1)
    y16 = _forward(os.path.join(pkg, "model.fp16.onnx"), x.astype(np.float16), SP_DT_F16)
    err = np.abs(y32 - y16).max() / np.abs(y32).max()
    agree = (y32.argmax(1) == y16.argmax(1)).mean()
    assert err < 0.02 and agree > 0.99, (err, agree)


def test_cancelled_bias_dropped_exactly(tmp):
    """drop_cancelled_bias alone, on the fp32 model: the same logits (to
    rounding) on a real CT patch, so the bias a following InstanceNorm takes
    away really did nothing."""
    sys.path.insert(0, os.path.join(sp.ROOT, "tools", "import"))
    from onnx_fp16 import drop_cancelled_bias
    m = onnx.load(os.path.join(DEMO, "model.onnx"))
    n = drop_cancelled_bias(m.graph)
    assert n >= 4, n
    path = os.path.join(tmp, "nobias.onnx")
    onnx.save(m, path)
    man = json.load(open(os.path.join(DEMO, "segpipe.json")))
    ct = np.asanyarray(nib.load(os.path.join(sp.CTDIR, "example_ct.nii.gz")).dataobj).astype(np.float32)
    nm = man["normalization"]
    P = man["patch_size"]
    x = ((np.clip(ct, nm["lo"], nm["hi"]) - nm["mean"]) / nm["std"])[30:30 + P[0], 25:25 + P[1], 60:60 + P[2]]
    x = np.ascontiguousarray(x, dtype=np.float32)[None, None]
    y = _forward(os.path.join(DEMO, "model.onnx"), x, 1)
    z = _forward(path, x, 1)
    assert np.abs(y - z).max() <= 1e-4 * np.abs(y).max(), np.abs(y - z).max()
    assert (y.argmax(1) == z.argmax(1)).mean() > 0.9999


def test_onnx_fp16_refuses(tmp):
    pkg = os.path.join(tmp, "bad")
    os.makedirs(pkg)
    g = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                               [onnx.helper.make_tensor_value_info("x", TensorProto.INT64, [1])],
                               [onnx.helper.make_tensor_value_info("y", TensorProto.INT64, [1])])
    onnx.save(onnx.helper.make_model(g), os.path.join(pkg, "model.onnx"))
    json.dump({"onnx": "model.onnx"}, open(os.path.join(pkg, "segpipe.json"), "w"))
    p = sp.tool(FP16, pkg)
    assert p.returncode == 4 and "not float32" in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(pkg, "model.fp16.onnx"))


def test_precision_choice_and_errors(tmp):
    """auto on the CPU keeps fp32 (same labels as the plain package); fp16
    without a GPU, fp16 of a package without one and unknown names are
    refused with their exit codes."""
    pkg = _fp16_package(tmp)
    src = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")
    a = os.path.join(tmp, "a.nii.gz")
    sp.run("ct", src, "-o", a, "-m", pkg, "--no-passport", "-q", check=True)
    b = sp.ct_run(src)   # the plain package: the run's shared `segpipe ct` (the passport leaves labels alone)
    assert np.array_equal(np.asanyarray(nib.load(a).dataobj), np.asanyarray(nib.load(b).dataobj))
    p = sp.run("ct", src, "-o", a, "-m", pkg, "--precision", "fp16")
    assert p.returncode == 4 and "--device cuda" in p.stderr, p.stderr
    p = sp.run("ct", src, "-o", a, "--precision", "fp16")
    assert p.returncode == 4 and "no fp16 model" in p.stderr, p.stderr
    p = sp.run("ct", src, "-o", a, "--precision", "half")
    assert p.returncode == 2 and "unknown precision" in p.stderr, p.stderr
    p = sp.run("serve", "--model", f"ct={pkg}", "--precision", "half", "--port", "0")
    assert p.returncode == 2 and "unknown precision" in p.stderr, p.stderr


def test_version_gpu_line(tmp):
    out = sp.run("version", check=True).stdout
    line = [x for x in out.splitlines() if x.startswith("gpu: ")]
    assert len(line) == 1, out
    env = dict(sp.run_env(), SEGPIPE_ORT_CUDA_EP=os.path.join(tmp, "missing.so"))
    p = subprocess.run([sp.SEGPIPE, "version"], capture_output=True, text=True, env=env)
    assert p.returncode == 0 and "missing.so is not there" in p.stdout, p.stdout
    p = subprocess.run([sp.SEGPIPE, "ct", os.path.join(sp.CTDIR, "example_ct_sm.nii.gz"), "-o",
                        os.path.join(tmp, "x.nii.gz"), "--device", "cuda"], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "SEGPIPE_ORT_CUDA_EP" in p.stderr, p.stderr
    assert "install-deps" not in p.stderr, p.stderr    # installed copies have no checkout scripts
    assert not os.path.exists(os.path.join(tmp, "x.nii.gz"))


def test_cuda_kernels_library_builds(tmp):
    """`make cuda` (when nvcc is installed): one exported symbol, no CUDA
    runtime to find at load time (cudart is static)."""
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if not nvcc:
        print("SKIP: no nvcc on this machine")
        return
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}   # nvcc under the ASan preload crashes
    p = subprocess.run(["make", "-s", f"BUILD={tmp}/b", f"NVCC={nvcc}", "cuda"], cwd=sp.ROOT, capture_output=True,
                       text=True, env=env)
    assert p.returncode == 0, p.stderr
    so = os.path.join(tmp, "b", "libsegpipe_cuda.so")
    syms = subprocess.run(["nm", "-D", "--defined-only", so], capture_output=True, text=True).stdout.split()
    assert [s for s in syms if s.startswith("sp_")] == ["sp_cuda_kernels"], syms
    needed = subprocess.run(["readelf", "-d", so], capture_output=True, text=True).stdout
    assert "libcudart" not in needed and "libcuda.so" not in needed, needed
