#!/usr/bin/env python3
"""GPU tests: the device path checked against the CPU path (run on a GPU
machine by tools/gpu/run.sh test; CI has no GPU and does not run them).

Environment: SEGPIPE (the binary), SEGPIPE_LD (library path for it: its lib/,
CUDA, cuDNN), SEGPIPE_DATA (a folder with example_ct_sm.nii.gz), OUT (where
the outputs go). With no GPU every test is skipped with one line saying so.
"""
import json, os, shutil, subprocess, sys, tempfile, time

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))
sys.path.insert(0, here)
import nii  # noqa: E402
import numpy as np  # noqa: E402

SEG = os.environ.get("SEGPIPE", os.path.join(root, "build", "segpipe"))
DATA = os.environ.get("SEGPIPE_DATA", os.path.join(root, "..", "shared", "data", "ct"))
CT = os.path.join(DATA, "example_ct_sm.nii.gz")
TMP = tempfile.mkdtemp(prefix="sp-gpu-")
MODEL = os.path.join(root, "models", "demo-ct")


env = nii.seg_env


def seg(*args, check=True, **kw):
    p = subprocess.run([SEG, *args], capture_output=True, text=True, env=env(**kw))
    if check and p.returncode:
        raise AssertionError(f"segpipe {' '.join(args)} exited {p.returncode}: {p.stderr[-2000:]}")
    return p


def ct(name, *args, model=MODEL, **kw):
    out = os.path.join(TMP, name + ".nii.gz")
    rep = os.path.join(TMP, name + ".json")
    p = seg("ct", CT, "-o", out, "-m", model, "--report", rep, "--no-passport", "-v", *args, **kw)
    return nii.read(out), json.load(open(rep)), p.stderr


def agree(a, b, what, min_frac=0.999, min_dice=0.99):
    frac = float((a == b).mean())
    d = nii.dice(a, b, [v for v in np.unique(a) if v and (a == v).sum() >= 100])
    worst = min(d.values()) if d else 1.0
    print(f"     {what}: {frac:.5f} of voxels agree, worst Dice {worst:.4f} over {len(d)} structures")
    assert frac >= min_frac, f"{what}: only {frac:.5f} of voxels agree"
    assert worst >= min_dice, f"{what}: Dice {worst:.4f} < {min_dice}"


_cache = {}


def cpu_labels():
    if "cpu" not in _cache:
        _cache["cpu"] = ct("cpu", "--device", "cpu")[0]
    return _cache["cpu"]


def test_version_lists_cuda():
    out = seg("version").stdout
    line = [x for x in out.splitlines() if x.startswith("gpu:")][0]
    print("     " + line)
    assert "window kernels loaded" in line, line


def test_gpu_window_matches_cpu():
    lab, rep, err = ct("cuda", "--device", "cuda", "--precision", "fp32")
    assert "download" in rep["seconds"] and "upload" in rep["seconds"], rep["seconds"]
    assert rep.get("gpu_memory_bytes", 0) > 0, "no GPU memory reported"
    print(f"     stages {rep['seconds']}, GPU memory {rep['gpu_memory_bytes'] / 1e9:.2f} GB")
    agree(lab, cpu_labels(), "GPU fp32 vs CPU")
    _cache["cuda"] = lab


def test_tile_batch_same_labels():
    lab = ct("cuda-b4", "--device", "cuda", "--precision", "fp32", "--tile-batch", "4")[0]
    agree(lab, _cache.get("cuda", cpu_labels()), "tile batch 4 vs 1")


def test_host_path_without_kernels():
    lab, rep, err = ct("host", "--device", "cuda", "--precision", "fp32", SEGPIPE_CUDA_KERNELS="/nonexistent.so")
    assert "upload" not in rep["seconds"], "the GPU window ran without its kernels?"
    agree(lab, cpu_labels(), "CUDA provider with host accumulation vs CPU")


def test_fp16_model():
    pkg = os.path.join(TMP, "demo-ct-fp16")
    shutil.copytree(MODEL, pkg)
    subprocess.run([sys.executable, os.path.join(root, "tools", "import", "onnx_fp16.py"), pkg], check=True,
                   capture_output=True)
    lab, rep, err = ct("fp16", "--device", "cuda", model=pkg)   # auto: fp16 on the GPU
    assert "model.fp16.onnx" in err, "auto precision did not load the fp16 model:\n" + err[-1500:]
    agree(lab, cpu_labels(), "GPU fp16 vs CPU fp32", min_frac=0.995, min_dice=0.98)
    p = seg("ct", CT, "-o", os.path.join(TMP, "x.nii.gz"), "-m", pkg, "--precision", "fp16", check=False)
    assert p.returncode == 4 and "fp16" in p.stderr, (p.returncode, p.stderr)


def test_serve_on_gpu():
    port = 18555 + os.getpid() % 1000
    srv = subprocess.Popen([SEG, "serve", "--model", f"ct={MODEL}", "--port", str(port), "--device", "cuda"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        times = []
        for ans in nii.ct_requests(f"http://127.0.0.1:{port}", CT, 3, 120):
            times.append(ans["processing_seconds"])
            assert "upload" in ans["seconds"], ans["seconds"]
        print(f"     /v1/ct processing seconds {['%.3f' % t for t in times]}")
    finally:
        srv.terminate()
        srv.wait(30)


def test_device_spellings():
    """gpu, gpu:0 and cuda:0 run on the first GPU with the labels of
    `--device cuda`; the GPU past the last is refused with the count; a list
    and cuda:all in the service serve with one worker per GPU, their jobs
    counted per device in /v1/status."""
    base = ct("dev_cuda", "--device", "cuda")[0]
    for d in ("gpu", "gpu:0", "cuda:0"):
        assert (ct("dev_" + d.replace(":", "_"), "--device", d)[0] == base).all(), d
    n = int(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.count("GPU "))
    p = seg("ct", CT, "-o", os.path.join(TMP, "past.nii.gz"), "-m", MODEL, "--device", f"cuda:{n}", check=False)
    assert p.returncode == 2 and f"sees {n} GPU" in p.stderr, (p.returncode, p.stderr)
    p = seg("ct", CT, "-o", os.path.join(TMP, "trt.nii.gz"), "-m", MODEL, "--device", "tensorrt", check=False)
    print(f"     --device tensorrt: exit {p.returncode}: {p.stderr.strip()[-160:]}")
    assert p.returncode == 2 and "TensorRT" in p.stderr, p.stderr
    port = 18655 + os.getpid() % 1000
    dev = ",".join(f"cuda:{i}" for i in range(n)) if n > 1 else "cuda:all"
    srv = subprocess.Popen([SEG, "serve", "--model", f"ct={MODEL}", "--port", str(port), "--device", dev],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        nii.ct_requests(f"http://127.0.0.1:{port}", CT, 2 * n, 120)
        import urllib.request
        st = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=10))
        print(f"     serve --device {dev}: {st['devices']}")
        assert [d["device"] for d in st["devices"]] == [f"cuda:{i}" for i in range(n)], st["devices"]
        assert sum(d["jobs"] for d in st["devices"]) == 2 * n and all(d["gpu_peak_memory_bytes"] > 0
                                                                       for d in st["devices"] if d["jobs"])
    finally:
        srv.terminate()
        srv.wait(30)


def test_resize_crash_is_reported():
    """ISNet's crash in the CUDA plugin (tools/gpu/isnet_bisect.py: a linear
    Resize given output sizes, half_pixel) in a tiny photo model: the
    service refuses it at start with a clear message instead of dying."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    pkg = os.path.join(TMP, "resize")
    os.makedirs(pkg, exist_ok=True)
    w = numpy_helper.from_array(np.ones((32, 3, 1, 1), np.float32) / 3, "w")
    sizes = numpy_helper.from_array(np.array([1, 32, 32, 32], np.int64), "sizes")
    g = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"]),
         helper.make_node("Resize", ["c", "", "", "sizes"], ["logits"], mode="linear",
                          coordinate_transformation_mode="half_pixel", nearest_mode="floor", cubic_coeff_a=-0.75)],
        "resize", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 32, 32, 32])], [w, sizes])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, os.path.join(pkg, "model.onnx"))
    json.dump({"format": "segpipe-model", "version": 1, "name": "resize", "task": "masks", "onnx": "model.onnx",
               "input": {"name": "input", "channels": 3, "size": [16, 16]},
               "output": {"name": "logits", "kind": "logits"},
               "preprocess": {"resize": "stretch"}, "labels": {str(i): f"c{i}" for i in range(32)}},
              open(os.path.join(pkg, "segpipe.json"), "w"))
    p = subprocess.run([SEG, "model", "probe", pkg, "--device", "cuda"], capture_output=True, text=True, env=env())
    print(f"     probe of the Resize model: exit {p.returncode}")
    s = seg("serve", "--model", f"r={pkg}", "--device", "cuda", "--port", "0", check=False)
    print(f"     serve: exit {s.returncode}: {s.stderr.strip()[-200:]}")
    if p.returncode >= 0:
        return   # the plugin no longer crashes on it: nothing to report
    assert s.returncode == 5 and "crashed" in s.stderr and "--device cpu" in s.stderr, s.stderr


def main():
    smi = shutil.which("nvidia-smi")
    if not smi or subprocess.run([smi], capture_output=True).returncode:
        print("SKIP all GPU tests: no NVIDIA GPU on this machine")
        return 0
    names = [n for n in sorted(globals()) if n.startswith("test_")]
    order = ["test_version_lists_cuda", "test_gpu_window_matches_cpu"]
    names = order + [n for n in names if n not in order]
    failed = 0
    for n in names:
        t0 = time.time()
        try:
            globals()[n]()
            print(f"ok   {n} ({time.time() - t0:.1f} s)")
        except Exception as e:  # noqa: BLE001 - report every failure, go on
            failed += 1
            print(f"FAIL {n}: {e}")
    print(f"\n{len(names) - failed} passed, {failed} failed")
    shutil.rmtree(TMP, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
