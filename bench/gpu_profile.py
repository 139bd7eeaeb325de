#!/usr/bin/env python3
"""Where the GPU time goes: segpipe's device window against the PyTorch
nnU-Net predictor of bench/gpu_ct.py on the same weights and volume, in one
run on the GPU machine (tools/gpu/run.sh profile; docs/performance.md "GPU").

  bench/gpu_profile.py OUTDIR [SHAPE]             the whole sweep
  bench/gpu_profile.py --seg PKG CT PREC TB OPTS [--profile FILE]   one child

For each precision: the peer's warm window (median of 3) and its network
alone per 128^3 patch (CUDA events); then segpipe, warm, in a child process
per setting (the Python binding: model loaded once, 4 runs, median of the
last 3 of each stage) for each SEGPIPE_CUDA_OPTIONS variant and tile batch;
and, for the peer and for segpipe's default, the GPU kernels of one warm run
by torch.profiler (CUPTI sees every kernel of the process, ONNX Runtime's
too), grouped: convolutions, normalisation, casts, element-wise, window
kernels, copies; the sum of kernel time against the wall time shows the
gaps (launches, synchronisation).
"""
import json, os, statistics, subprocess, sys, tempfile, time

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
sys.path.insert(0, os.path.join(root, "tools", "import"))
sys.path.insert(0, os.path.join(root, "tests", "gpu"))
sys.path.insert(0, os.path.join(root, "python"))

GROUPS = [("window kernels (segpipe)", ("gather_k", "accum_k", "finish_k")),
          ("casts fp16<->fp32", ("cast",)),
          ("normalisation", ("norm", "batch_norm", "bn_", "welford", "reduce")),
          ("convolution", ("conv", "gemm", "xmma", "sm90", "sm80", "implicit", "wgrad", "dgrad", "cutlass", "cudnn",
                           "winograd", "fft", "precomputed")),
          ("copies/memset", ("memcpy", "memset")),
          ("element-wise (bias, LeakyReLU, add, accumulate)", ("")),]


def group(name):
    n = name.lower()
    for g, keys in GROUPS:
        if any(k in n for k in keys):
            return g
    return GROUPS[-1][0]


def kernel_table(prof, wall, path, title):
    """Group the profile's CUDA kernels; write the top 40 to path."""
    rows = [(e.key, e.count, e.device_time_total / 1e3) for e in prof.key_averages()
            if getattr(e, "device_type", None) is not None and str(e.device_type).endswith("CUDA")
            and e.device_time_total > 0]
    tot = {}
    for k, c, ms in rows:
        tot[group(k)] = tot.get(group(k), 0.0) + ms
    busy = sum(tot.values())
    with open(path, "a") as f:                 # one file for all (the device tool returns 8 files)
        f.write(f"\n{title}: wall {wall * 1e3:.1f} ms, GPU kernels {busy:.1f} ms\n")
        for g, ms in sorted(tot.items(), key=lambda x: -x[1]):
            f.write(f"  {g}: {ms:.1f} ms\n")
        for k, c, ms in sorted(rows, key=lambda r: -r[2])[:40]:
            f.write(f"    {ms:9.2f} ms {c:6d}x  {k[:150]}\n")
    return {"wall_ms": wall * 1e3, "kernel_ms": busy, "groups_ms": tot}


# ------------------------------------------------------------ segpipe child
def seg_child(pkg, ct, prec, tb, opts, prof_path):
    if opts:
        os.environ["SEGPIPE_CUDA_OPTIONS"] = opts
    import segpipe
    m = segpipe.Model(pkg, device="cuda", precision=prec)
    runs = []
    for i in range(4):
        t0 = time.perf_counter()
        r = m.ct(ct, passport=False, tile_batch=tb)
        runs.append((time.perf_counter() - t0, dict(r.seconds)))
    import numpy as np
    np.save(os.path.join(os.path.dirname(ct), "labels.npy"), r.labels)
    out = {"first": runs[0][1], "first_wall": runs[0][0], "wall": statistics.median(w for w, _ in runs[1:])}
    for k in ("upload", "window", "inference", "download"):
        out[k] = statistics.median(s.get(k, 0.0) for _, s in runs[1:])
    out["device_window"] = sum(out[k] for k in ("upload", "window", "inference", "download"))
    if prof_path:
        import torch
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as p:
            t0 = time.perf_counter()
            r = m.ct(ct, passport=False, tile_batch=tb)
            torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        out["profile"] = kernel_table(p, sum(r.seconds.get(k, 0) for k in ("upload", "window", "inference",
                                                                           "download")), prof_path,
                                      f"segpipe {prec} tb={tb} opts={opts or 'default'}")
    print("RESULT " + json.dumps(out), flush=True)


def run_child(pkg, ct, prec, tb, opts, prof=None):
    import nii
    cmd = [sys.executable, __file__, "--seg", pkg, ct, prec, str(tb), opts] + (["--profile", prof] if prof else [])
    p = subprocess.run(cmd, capture_output=True, text=True, env=nii.seg_env(), timeout=300)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": f"rc {p.returncode}: {(p.stderr or p.stdout)[-600:]}"}


# --------------------------------------------------------------------- peer
def peer(net, vol, man, dev, half, prof_path):
    import numpy as np
    import torch
    from gpu_ct import peer_predict
    nm = man["normalization"]
    x = (np.clip(vol.astype(np.float32), nm["lo"], nm["hi"]) - nm["mean"]) / max(nm["std"], 1e-8)
    data = torch.from_numpy(np.ascontiguousarray(np.transpose(x, man["axes"])))[None]
    patch = man["patch_size"]
    peer_predict(net, data, patch, dev, half)
    ts = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        lab = peer_predict(net, data, patch, dev, half)
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    x = torch.randn((1, 1, *patch), device=dev)
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    ms = []
    with torch.inference_mode(), torch.autocast("cuda", enabled=half):
        for _ in range(12):
            ev[0].record()
            net(x)
            ev[1].record()
            torch.cuda.synchronize()
            ms.append(ev[0].elapsed_time(ev[1]))
    lab = np.transpose(lab, np.argsort(man["axes"]))
    out = {"window": statistics.median(ts), "net_ms_per_patch": statistics.median(ms[2:])}
    if prof_path:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as p:
            t0 = time.perf_counter()
            peer_predict(net, data, patch, dev, half)
            torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        out["profile"] = kernel_table(p, wall, prof_path, f"peer {'fp16' if half else 'fp32'}")
    return lab, out


VARIANT_PACKAGES = {
    # InstanceNormalization in fp16 (no casts around it), as PyTorch's autocast runs instance_norm
    "norm16": {"norm_fp16": True},
    # the convolution biases a following InstanceNormalization cancels kept (onnx_fp16 drops them)
    "bias": {"keep_bias": True},
}


def variant_package(pkg, name):
    """pkg's twin PKG-NAME whose fp16 model is converted with VARIANT_PACKAGES[name]."""
    import shutil
    import onnx
    from onnx_fp16 import convert
    dst = f"{pkg}-{name}"
    shutil.copytree(pkg, dst)
    model = convert(onnx.load(os.path.join(pkg, "model.onnx")), **VARIANT_PACKAGES[name])
    onnx.save(model, os.path.join(dst, "model.fp16.onnx"))


def best(res, out):
    """The fastest fp16 setting whose labels agree with the peer on >= 99%
    of voxels: OUT/best.env for bench/gpu_ct.py (SP_BENCH_OPTIONS,
    SP_BENCH_NORM16, SP_BENCH_TILE_BATCH)."""
    ok = [r for r in res["segpipe"] if "error" not in r and r["precision"].startswith("fp16")
          and r.get("label_agreement", 0) >= 0.99]
    if not ok:
        return
    ok = [r for r in ok if r["precision"] in ("fp16", "fp16-norm16")]    # gpu_ct.py builds these two
    b = min(ok, key=lambda r: r["device_window"])
    with open(os.path.join(out, "best.env"), "w") as f:
        f.write(f"export SP_BENCH_OPTIONS='{b['options']}' SP_BENCH_NORM16={int(b['precision'].endswith('norm16'))} "
                f"SP_BENCH_TILE_BATCH={b['tile_batch']}\n")
    print(f"best fp16: {b['precision']} tile batch {b['tile_batch']} options '{b['options']}': {b['device_window']:.3f} s")


def main():
    import numpy as np
    import torch
    import nii
    from gpu_ct import synthetic_ct
    from import_nnunet import add_fp16, random_model
    out = sys.argv[1]
    shape = tuple(int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "170x170x500").split("x"))
    os.makedirs(out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="gpu-prof-")
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    pkg = os.path.join(tmp, "ts-fast")
    net, man = random_model("totalseg-fast", pkg, None, 0)
    add_fp16(pkg, man)
    for name in VARIANT_PACKAGES:
        try:
            variant_package(pkg, name)
        except Exception as e:  # noqa: BLE001 - a variant only
            print(f"{name} variant not made: {e}")
    net = net.to(dev).eval()
    vol = synthetic_ct(shape, 1)
    ct = os.path.join(tmp, "ct.nii")
    nii.write(ct, vol, (3.0, 3.0, 3.0))
    res = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "shape": shape, "peer": {}, "segpipe": []}
    labs = {}
    for prec in ("fp16", "fp32"):
        labs[prec], res["peer"][prec] = peer(net, vol, man, dev, prec == "fp16", os.path.join(out, "k_tables.txt"))
        print(prec, "peer", json.dumps({k: v for k, v in res["peer"][prec].items()}), flush=True)
    del net
    torch.cuda.empty_cache()
    variants = json.loads(os.environ.get("SP_PROFILE_VARIANTS", "null")) or [
        ("fp16", 0, "", True), ("fp16-bias", 0, "", True), ("fp32", 0, "", False),
        ("fp16", 4, "", False), ("fp16", 2, "", False), ("fp32", 4, "", False),
        ("fp16-bias", 0, "fuse_conv_bias=1", False), ("fp16", 0, "fuse_conv_bias=1", False),
        ("fp16", 0, "cudnn_conv_algo_search=HEURISTIC", False),
        ("fp16", 0, "enable_cuda_graph=1", False),
    ]
    for prec, tb, opts, prof in variants:
        pr, _, var = prec.partition("-")
        p = f"{pkg}-{var}" if var else pkg
        pf = os.path.join(out, "k_tables.txt") if prof else None
        r = run_child(p, ct, pr, tb, opts, pf)
        if os.path.exists(os.path.join(tmp, "labels.npy")):
            r["label_agreement"] = float((np.load(os.path.join(tmp, "labels.npy")) == labs[pr]).mean())
            os.remove(os.path.join(tmp, "labels.npy"))
        r.update({"precision": prec, "tile_batch": tb, "options": opts})
        res["segpipe"].append(r)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                          if k not in ("first", "profile")}), flush=True)
    json.dump(res, open(os.path.join(out, "gpu_profile.json"), "w"), indent=1)
    best(res, out)
    print(f"\n{res['gpu']}, torch {res['torch']}, {'x'.join(map(str, shape))}")
    for prec in ("fp16", "fp32"):
        print(f"peer {prec}: window {res['peer'][prec]['window']:.3f} s, network {res['peer'][prec]['net_ms_per_patch']:.2f} ms/patch")
    print("| precision | tile batch | options | device window (s) | inference (s) | window kernels (s) | first run (s) | labels = peer |")
    for r in res["segpipe"]:
        if "error" in r:
            print(f"| {r['precision']} | {r['tile_batch']} | {r['options']} | error: {r['error'][-200:]!r} |")
        else:
            print(f"| {r['precision']} | {r['tile_batch']} | {r['options'] or 'default'} | {r['device_window']:.3f} | "
                  f"{r['inference']:.3f} | {r['window']:.3f} | {r['first_wall']:.2f} | {100 * r.get('label_agreement', 0):.2f}% |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--seg":
        a = sys.argv[2:]
        seg_child(a[0], a[1], a[2], int(a[3]), a[4], a[6] if len(a) > 6 and a[5] == "--profile" else None)
    else:
        main()
