"""--device spellings, checked without a GPU (docs/gpu.md "Choosing GPUs"):
TotalSegmentator's gpu and gpu:N beside cuda and cuda:N in `segpipe ct`,
`segpipe worker`, `segpipe serve` (with its GPU lists cuda:0,cuda:1 and
cuda:all) and the Python binding; the library's parser through ctypes; and
the refusals (bad spellings, lists that mix devices or name a GPU twice,
cuda:all with no GPU, tensorrt without TensorRT). On a GPU machine the same
spellings run in tests/gpu/test_gpu.py."""
import ctypes as C
import os
import subprocess
import sys
import sp

CT = os.path.join(sp.ROOT, "..", "shared", "data", "ct", "example_ct_sm.nii.gz")
DEMO = os.path.join(sp.ROOT, "models", "demo-ct")
USAGE = "--device is cpu, cuda, cuda:N, gpu or gpu:N"


def _parse(spec):
    L = sp.lib()
    L.sp_device_parse.argtypes = [C.c_char_p, C.c_char_p, C.c_size_t, C.POINTER(C.c_int)]
    kind, idx = C.create_string_buffer(16), C.c_int(-1)
    rc = L.sp_device_parse(spec.encode(), kind, 16, C.byref(idx))
    return rc, kind.value.decode(), idx.value


def _list(spec):
    L = sp.lib()
    L.sp_device_list.argtypes = [C.c_char_p, C.c_void_p, C.c_int, C.POINTER(C.c_int)]
    devs, n = (C.c_char * (16 * 64))(), C.c_int(-1)
    rc = L.sp_device_list(spec.encode(), devs, 64, C.byref(n))
    raw = bytes(devs)
    return rc, [raw[16 * i:16 * i + 16].split(b"\0")[0].decode() for i in range(max(n.value, 0))]


def test_device_parse(tmp):
    assert _parse("cpu") == (0, "cpu", 0)
    assert _parse("cuda") == (0, "cuda", 0)
    assert _parse("gpu") == (0, "cuda", 0)
    assert _parse("gpu:3") == (0, "cuda", 3)
    assert _parse("cuda:12") == (0, "cuda", 12)
    assert _parse("cuda:63") == (0, "cuda", 63)
    assert _parse("tensorrt:1") == (0, "tensorrt", 1)
    assert _parse("") == (0, "cpu", 0)          # unset: the CPU
    for bad, why in (("cuda:64", "0 to 63"), ("cuda:", "0 to 63"), ("cuda:-1", "0 to 63"), ("cuda:1x", "0 to 63"),
                     ("cpu:0", "only for cuda"), ("gpu:a", "0 to 63"), ("cuda:007", "0 to 63"),
                     ("tpu", "unknown device"), ("cudax", "unknown device")):
        rc, _, _ = _parse(bad)
        assert rc == 1, bad     # SP_ERR_USAGE
        assert why in sp.lib().sp_last_error().decode(), (bad, sp.lib().sp_last_error())


def test_device_lists(tmp):
    assert _list("cuda:0,cuda:1") == (0, ["cuda:0", "cuda:1"])
    assert _list("gpu:2,cuda:0") == (0, ["cuda:2", "cuda:0"])
    assert _list("cuda:1") == (0, ["cuda:1"])
    assert _list("cpu") == (0, ["cpu"])
    for bad, why in (("cuda:0,cuda:0", "named twice"), ("cpu,cuda:1", "CUDA GPUs only"),
                     ("cuda:0,tensorrt:1", "CUDA GPUs only"), ("cuda:0,,", None), ("cuda:all", "no GPU found"),
                     ("gpu:all", "no GPU found"), ("x" * 2000, "too long")):
        rc, _ = _list(bad)
        if why is None:       # empty items are skipped: "cuda:0,," is cuda:0
            assert rc == 0
            continue
        assert rc == 1, bad     # SP_ERR_USAGE
        assert why in sp.lib().sp_last_error().decode(), (bad, sp.lib().sp_last_error())


def test_ct_device_spellings(tmp):
    out = os.path.join(tmp, "x.nii.gz")
    for bad in ("gpu:x", "cuda:64", "cpu:0", "tpu", "gpu:"):
        p = sp.run("ct", CT, "-o", out, "--device", bad)
        assert p.returncode == 2 and USAGE in p.stderr, (bad, p.stderr)
        assert not os.path.exists(out)
    # accepted spellings reach the runtime, which (no CUDA provider here) refuses with its own message
    for good in ("gpu", "gpu:1", "cuda:0"):
        p = sp.run("ct", CT, "-o", out, "--device", good)
        assert p.returncode == 2 and USAGE not in p.stderr and "CUDA" in p.stderr, (good, p.stderr)
        assert not os.path.exists(out)
    p = sp.run("ct", CT, "-o", out, "--device", "tensorrt")
    assert p.returncode == 2 and "TensorRT" in p.stderr and "libnvinfer" in p.stderr, p.stderr
    assert "/" not in p.stderr.split("libnvinfer")[0].split("TensorRT")[-1]


def test_serve_device_lists(tmp):
    cases = [("cuda:0,cuda:0", "GPU 0 is named twice"), ("cpu,cuda:1", "a list names CUDA GPUs only"),
             ("cuda:all", "no GPU found"), ("gpu:all", "no GPU found"), ("cuda:x", "the GPU number"),
             ("vulkan", "unknown device")]
    for dev, why in cases:
        p = sp.run("serve", "--model", f"ct={DEMO}", "--port", "0", "--device", dev, timeout=30)
        assert p.returncode == 2 and why in p.stderr, (dev, p.returncode, p.stderr)
        assert "ready" not in p.stdout
    # a valid list gets past parsing to the runtime, which has no CUDA provider here
    p = sp.run("serve", "--model", f"ct={DEMO}", "--port", "0", "--device", "cuda:0,gpu:1", timeout=30)
    assert p.returncode == 2 and "CUDA" in p.stderr and "named twice" not in p.stderr, p.stderr


def test_worker_device(tmp):
    p = sp.run("worker", "--device", "gpu:x", "--model", f"ct={DEMO}", timeout=30)
    assert p.returncode == 2 and USAGE in p.stderr, p.stderr


def test_python_device_spellings(tmp):
    sys.path.insert(0, os.path.join(sp.ROOT, "python"))
    import segpipe
    assert segpipe._device("gpu") == "cuda"
    assert segpipe._device("gpu:1") == "cuda:1"
    assert segpipe._device("cuda:03") == "cuda:3"
    assert segpipe._device("cpu") == "cpu"
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    segpipe._device("gpu:2")
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == before     # the library picks the GPU, not the environment
    for bad in ("gpu:x", "cpu:1", "cuda:64", "gpu:-1"):
        try:
            segpipe._device(bad)
        except segpipe.InputError as e:
            assert "gpu:N" in str(e)
        else:
            raise AssertionError(bad)


def test_serve_tile_batch_option(tmp):
    """serve --tile-batch N (4 was 11% faster warm on an H100, docs/gpu.md):
    out-of-range values refused before start, in the option and in
    SEGPIPE_TILE_BATCH."""
    for v in ("0", "33", "x"):
        p = sp.run("serve", "--model", f"ct={DEMO}", "--port", "0", "--tile-batch", v, timeout=30)
        assert p.returncode == 2 and "--tile-batch wants an integer in 1..32" in p.stderr, (v, p.stderr)
    env = dict(sp.run_env(), SEGPIPE_TILE_BATCH="99")
    p = subprocess.run([sp.SEGPIPE, "serve", "--model", f"ct={DEMO}", "--port", "0"],
                       capture_output=True, text=True, env=env, timeout=30)
    assert p.returncode == 2 and "SEGPIPE_TILE_BATCH is 1 to 32" in p.stderr, p.stderr
