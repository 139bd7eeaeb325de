"""segpipe's native MeshNet executor (src/runtime/meshconv.c, meshnet.c;
docs/mri.md "Native MeshNet") against independent references: the dilated
3x3x3 convolution against numpy (float64, explicit zero padding), whole
random MeshNets (GroupNorm without affine, ReLU / ELU / GELU-tanh, bias or
not, 1x1 classifier) against a numpy forward pass, the real grey/white
model (../shared/models/brainchop-gwm) against ONNX Runtime (onnxruntime-node
on the same ONNX file) on a crop of a real T1, and `segpipe mri` native vs
ONNX Runtime (SEGPIPE_MESHNET=0) end to end."""
import ctypes as C, json, os, shutil, subprocess, sys
import numpy as np
import nibabel as nib
import sp

sys.path.insert(0, os.path.join(sp.ROOT, "tools", "import"))
import meshnet_bin  # noqa: E402

GWM = os.path.join(sp.SHARED, "models", "brainchop-gwm")
MRI = os.path.join(sp.SHARED, "data", "mri")
NODE_RUN = os.path.join(sp.ROOT, "tests", "ref", "ort_run.js")
FP = C.POINTER(C.c_float)


def lib():
    L = sp.lib()
    L.sp_pool_get.restype = C.c_void_p
    L.sp_pool_get.argtypes = [C.c_int]
    L.sp_meshconv3d.argtypes = [FP, C.c_int, C.c_int, C.c_int, C.c_int, FP, FP, C.c_int, C.c_int, C.c_int,
                                C.c_void_p, FP]
    L.sp_meshnet_load.argtypes = [C.c_char_p, C.POINTER(C.c_void_p)]
    L.sp_meshnet_run.argtypes = [C.c_void_p, FP, C.c_void_p, C.c_void_p, C.c_void_p, C.c_void_p, C.c_void_p, FP]
    L.sp_meshnet_free.argtypes = [C.c_void_p]
    L.sp_meshnet_classes.argtypes = [C.c_void_p]
    L.sp_meshconv_isa.restype = C.c_char_p
    return L


_POOLS = {}


def pool(threads):
    if threads not in _POOLS:
        _POOLS[threads] = lib().sp_pool_get(threads)
    return _POOLS[threads]


def fp(a):
    return None if a is None else a.ctypes.data_as(FP)


def meshconv(x, w, b, d, relu=0, threads=2):
    cin, D, H, W = x.shape
    out = np.full((w.shape[0], D, H, W), np.nan, np.float32)
    st = lib().sp_meshconv3d(fp(x), cin, D, H, W, fp(w), fp(b), w.shape[0], d, relu, pool(threads), fp(out))
    assert st == 0, sp.lib().sp_last_error()
    return out


def ref_conv(x, w, b, d):
    """numpy, float64: zero padding d, dilation d, kernel 3 (or 1)."""
    cin, D, H, W = x.shape
    k = w.shape[2]
    p = d if k == 3 else 0
    xp = np.pad(x.astype(np.float64), ((0, 0), (p, p), (p, p), (p, p)))
    out = np.zeros((w.shape[0], D, H, W)) + (0 if b is None else b.astype(np.float64)[:, None, None, None])
    for kz in range(k):
        for ky in range(k):
            for kx in range(k):
                s = xp[:, kz * d:kz * d + D, ky * d:ky * d + H, kx * d:kx * d + W]
                out += np.einsum("oc,czyx->ozyx", w[:, :, kz, ky, kx].astype(np.float64), s)
    return out


def ref_forward(layers, x):
    """numpy MeshNet: x [D, H, W] -> logits [K, D, H, W] (float64)."""
    y = x[None].astype(np.float64)
    for L in layers:
        y = ref_conv(y, L["w"], L["b"], L["dilation"])
        if L["norm"]:
            m = y.mean(axis=(1, 2, 3), keepdims=True)
            v = y.var(axis=(1, 2, 3), keepdims=True)
            y = (y - m) / np.sqrt(v + 1e-5)
        if L["act"] == "relu":
            y = np.maximum(y, 0)
        elif L["act"] == "elu":
            y = np.where(y > 0, y, np.expm1(np.minimum(y, 0)))
        elif L["act"] == "gelu":
            y = 0.5 * y * (1 + np.tanh(0.7978845608028654 * (y + 0.044715 * y ** 3)))
    return y


def native(path, vol_net, axes, threads=2):
    """sp_meshnet_run of meshnet.bin at path on a volume whose network view
    (manifest "axes": network dim d <- volume axis axes[d]) is vol_net:
    (labels, logits [K, ...]), both in network order."""
    L = lib()
    net = C.c_void_p()
    st = L.sp_meshnet_load(path.encode(), C.byref(net))
    assert st == 0, L.sp_last_error()
    V = vol_net.transpose(np.argsort(axes))              # the volume indexed (i, j, k), i fastest in memory
    vol = np.ascontiguousarray(V.transpose(2, 1, 0), np.float32)
    vdim, ax = np.array(V.shape, np.int64), np.array(axes, np.int32)
    lab = np.zeros(vol.shape, np.uint16)
    out = np.zeros((L.sp_meshnet_classes(net),) + vol_net.shape, np.float32)
    st = L.sp_meshnet_run(net, fp(vol), sp.ptr(vdim), sp.ptr(ax), pool(threads), None, sp.ptr(lab), fp(out))
    L.sp_meshnet_free(net)
    assert st == 0, L.sp_last_error()
    return lab.transpose(2, 1, 0).transpose(axes), out


def run_mode(mode, *args):
    """segpipe with SEGPIPE_MESHNET=mode (1 native, 0 ONNX Runtime)."""
    return subprocess.run([sp.SEGPIPE, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env=dict(sp.run_env(), SEGPIPE_MESHNET=mode))


def rand_layers(rng, chans, dils, k_out, norm, act, bias):
    layers, prev = [], 1
    for c, d in zip(chans, dils):
        s = 1 / np.sqrt(prev * 27)
        layers.append({"w": (rng.standard_normal((c, prev, 3, 3, 3)) * s * 1.5).astype(np.float32),
                       "b": (rng.standard_normal(c) * 0.1).astype(np.float32) if bias else None,
                       "dilation": d, "padding": d, "norm": norm, "act": act})
        prev = c
    layers.append({"w": rng.standard_normal((k_out, prev, 1, 1, 1)).astype(np.float32),
                   "b": rng.standard_normal(k_out).astype(np.float32) if bias else None,
                   "dilation": 1, "padding": 0, "norm": False, "act": None})
    return layers


def test_meshconv_matches_numpy(tmp):
    """Dilations 1..16 (borders where the dilation exceeds the volume
    included), channel counts that are no multiple of the register block,
    rows that are no multiple of the vector width, bias or not, ReLU fused;
    1 and 2 threads give the same result."""
    rng = np.random.default_rng(44)
    cases = [(1, 5, 1, (9, 10, 11)), (5, 5, 2, (12, 7, 37)), (5, 5, 16, (20, 19, 37)), (7, 13, 4, (6, 33, 65)),
             (15, 15, 8, (17, 18, 19)), (21, 21, 2, (5, 9, 50)), (3, 9, 16, (9, 9, 9)), (2, 3, 1, (1, 1, 1)),
             (21, 104, 4, (4, 5, 7))]
    print(f"     vector body: {lib().sp_meshconv_isa().decode()}")
    for cin, cout, d, shp in cases:
        x = rng.standard_normal((cin,) + shp).astype(np.float32)
        w = rng.standard_normal((cout, cin, 3, 3, 3)).astype(np.float32)
        b = rng.standard_normal(cout).astype(np.float32) if cin % 2 else None
        want = ref_conv(x, w, b, d)
        got = meshconv(x, w, b, d)
        err = np.abs(got - want).max() / np.abs(want).max()
        assert np.isfinite(got).all() and err < 2e-6, (cin, cout, d, shp, err)
        got1 = meshconv(x, w, b, d, threads=1)
        assert np.array_equal(got, got1)
        gr = meshconv(x, w, b, d, relu=1)
        assert np.abs(gr - np.maximum(want, 0)).max() <= 2e-6 * np.abs(want).max()


def test_meshconv_every_vector_body(tmp):
    """The AVX2 and generic bodies (SEGPIPE_MESHCONV_ISA caps the choice) give
    the numpy result too, on a fresh process each."""
    code = ("import sys, numpy as np; sys.path.insert(0, %r); import test_meshnet as t; "
            "rng = np.random.default_rng(3); x = rng.standard_normal((7, 9, 11, 45)).astype(np.float32); "
            "w = rng.standard_normal((13, 7, 3, 3, 3)).astype(np.float32); b = rng.standard_normal(13).astype(np.float32); "
            "g = t.meshconv(x, w, b, 4); r = t.ref_conv(x, w, b, 4); "
            "print(t.lib().sp_meshconv_isa().decode(), np.abs(g - r).max() / np.abs(r).max())") % os.path.dirname(__file__)
    for isa in ("avx2", "generic"):
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=sp.python_env(dict(os.environ, SEGPIPE_MESHCONV_ISA=isa)))
        assert p.returncode == 0, p.stderr
        got_isa, err = p.stdout.split()
        assert got_isa in (isa, "generic") and float(err) < 2e-6, p.stdout


def test_meshnet_random_networks_match_numpy(tmp):
    """Whole networks as brainchop's zoo builds them: GroupNorm + GELU (mindgrab),
    ReLU with bias (dk104), GroupNorm + ELU; both axis orders; logits and labels."""
    rng = np.random.default_rng(7)
    nets = [([5, 5, 5, 5], [16, 8, 2, 1], 2, True, "gelu", False, [0, 1, 2]),
            ([6, 6, 6], [1, 2, 4], 7, False, "relu", True, [2, 1, 0]),
            ([4, 4], [2, 1], 3, True, "elu", True, [0, 1, 2])]
    x = rng.random((18, 21, 23)).astype(np.float32)
    for chans, dils, K, norm, act, bias, axes in nets:
        layers = rand_layers(rng, chans, dils, K, norm, act, bias)
        path = os.path.join(tmp, "m.bin")
        assert meshnet_bin.write(layers, path)
        lab, logits = native(path, x, axes)
        want = ref_forward(layers, x)
        err = np.abs(logits - want).max()
        assert err < 1e-4 * max(1.0, np.abs(want).max()), (act, err)
        top2 = np.sort(want, 0)[-2:]
        clear = top2[1] - top2[0] > 1e-3     # labels where the reference is not a near tie
        assert (lab[clear] == want.argmax(0)[clear]).all(), act
        assert clear.mean() > 0.99


def dynamic_onnx(src, dst):
    """The GWM ONNX (fixed 256^3) with dynamic spatial dims, for small volumes."""
    import onnx
    m = onnx.load(src)
    for t in (m.graph.input[0], m.graph.output[0]):
        for i in (2, 3, 4):
            t.type.tensor_type.shape.dim[i].dim_param = f"d{i}"
    onnx.save(m, dst)


def _gwm_crop():
    """A 64x72x56 crop of bet.nii.gz, min-max scaled (the model's input convention)."""
    v = np.asarray(nib.load(os.path.join(MRI, "bet.nii.gz")).dataobj, np.float32)
    c = v[39:103, 53:125, 43:99]
    return np.ascontiguousarray((c - c.min()) / (c.max() - c.min()))


def test_meshnet_gwm_matches_onnxruntime(tmp):
    """The real grey/white model: native logits against onnxruntime-node's on
    the same ONNX (its spatial dims made dynamic for a crop), labels >= 99.99%."""
    if not os.path.isfile(os.path.join(GWM, "model.onnx")):
        raise sp.Skip("../shared/models/brainchop-gwm not found")
    if not shutil.which("node") or not os.path.isdir(os.path.join(sp.ROOT, "third_party", "ort-node")):
        raise sp.Skip("onnxruntime-node (third_party/ort-node) not installed")
    dyn = os.path.join(tmp, "dyn.onnx")
    dynamic_onnx(os.path.join(GWM, "model.onnx"), dyn)
    x = _gwm_crop()
    raw_in, raw_out = os.path.join(tmp, "in.f32"), os.path.join(tmp, "out.f32")
    x.tofile(raw_in)
    r = subprocess.run(["node", NODE_RUN, dyn, raw_in, "1,1," + ",".join(map(str, x.shape)), raw_out],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    want = np.fromfile(raw_out, np.float32).reshape((3,) + x.shape)
    layers = meshnet_bin.layers_from_onnx(os.path.join(GWM, "model.onnx"))
    assert layers is not None and len(layers) == 10
    path = os.path.join(tmp, "meshnet.bin")
    assert meshnet_bin.write(layers, path)
    lab, got = native(path, x, [0, 1, 2])
    err = np.abs(got - want).max()
    agree = (lab == want.argmax(0)).mean()
    print(f"     gwm crop {x.shape}: max |logit diff| {err:.2e} (logits up to {np.abs(want).max():.1f}), "
          f"labels {100 * agree:.4f}% equal")
    assert err <= 1e-4 * np.abs(want).max(), err
    assert agree >= 0.9999 and len(np.unique(lab)) == 3


def _small_gwm(tmp, shape):
    out = os.path.join(tmp, "gwm")
    p = sp.tool(os.path.join(sp.ROOT, "tools", "import", "make_brainchop_package.py"), "-o",
                out)
    if p.returncode == 4:
        raise sp.Skip("../shared/models/brainchop-gwm not found")
    assert p.returncode == 0, p.stderr
    man = json.load(open(os.path.join(out, "segpipe.json")))
    assert man["meshnet"] == "meshnet.bin"
    dynamic_onnx(os.path.join(out, "model.onnx"), os.path.join(out, "model.onnx"))
    man["conform"]["shape"] = shape
    man["patch_size"] = [shape] * 3
    json.dump(man, open(os.path.join(out, "segpipe.json"), "w"))
    return out


def test_meshnet_pipeline_native_equals_onnxruntime(tmp):
    """`segpipe mri` on a real T1 (tinyT1, conformed to 96^3 to stay fast):
    the native executor's labels equal ONNX Runtime's (SEGPIPE_MESHNET=0)."""
    pkg = _small_gwm(tmp, 96)
    src = os.path.join(MRI, "tinyT1.nii.gz")
    labs = {}
    for mode in ("1", "0"):
        out, conf = os.path.join(tmp, f"l{mode}.nii.gz"), os.path.join(tmp, f"c{mode}.nii.gz")
        p = run_mode(mode, "mri", src, "-o", out, "--model", pkg, "--save-model-labels", conf, "--threads", "2", "-q")
        assert p.returncode == 0, p.stderr
        labs[mode] = (np.asarray(nib.load(conf).dataobj), np.asarray(nib.load(out).dataobj))
    a, b = labs["1"][0], labs["0"][0]
    agree = (a == b).mean()
    print(f"     tinyT1 at 96^3: native == ONNX Runtime on {100 * agree:.4f}% of voxels; classes {np.bincount(a.ravel())}")
    assert agree >= 0.9999 and (np.bincount(a.ravel(), minlength=3)[1:] > 1000).all()
    assert (labs["1"][1] == labs["0"][1]).mean() >= 0.9999


def test_meshnet_bad_weights(tmp):
    """A broken meshnet.bin is refused with a message and exit code 4 (model), never a crash."""
    pkg = _small_gwm(tmp, 32)
    good = open(os.path.join(pkg, "meshnet.bin"), "rb").read()
    src = os.path.join(MRI, "tinyT1.nii.gz")
    bad = {"truncated": good[:-4], "magic": b"XXMESH01" + good[8:], "empty": b"",
           "chain": good[:12 + 28 * 1] + (7).to_bytes(4, "little") + good[12 + 28 * 1 + 4:],
           "layers": good[:8] + (100000).to_bytes(4, "little") + good[12:], "extra": good + b"\0\0\0\0"}
    for name, data in bad.items():
        open(os.path.join(pkg, "meshnet.bin"), "wb").write(data)
        p = sp.run("mri", src, "-o", os.path.join(tmp, "o.nii.gz"), "--model", pkg, "-q")
        assert p.returncode == 4, (name, p.returncode, p.stderr)
        assert "meshnet.bin" in p.stderr and "Traceback" not in p.stderr, (name, p.stderr)
        assert not os.path.exists(os.path.join(tmp, "o.nii.gz")), name
    os.remove(os.path.join(pkg, "meshnet.bin"))
    p = sp.run("mri", src, "-o", os.path.join(tmp, "o.nii.gz"), "--model", pkg, "-q")
    assert p.returncode != 0 and "meshnet.bin" in p.stderr, p.stderr
    # the importer's shape check: what is not a MeshNet gets no meshnet.bin
    rng = np.random.default_rng(1)
    L = rand_layers(rng, [3, 3], [1, 2], 2, False, "relu", True)
    L[1]["padding"] = 1
    assert meshnet_bin.meshnet_shape(L) and not meshnet_bin.write(L, os.path.join(tmp, "x.bin"))
    L = rand_layers(rng, [3], [1], 2, False, "tanh", True)
    assert not meshnet_bin.write(L, os.path.join(tmp, "x.bin"))
