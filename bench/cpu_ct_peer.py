#!/usr/bin/env python3
"""CPU: `segpipe ct` against PyTorch running nnU-Net v2's sliding window on
the same TotalSegmentator --fast network (random weights, 118 classes, patch
128^3, 3 mm), same volume, same thread count, one process each
(issue #45; docs/performance.md "CPU on a 16-core server").

  python3 bench/cpu_ct_peer.py OUTDIR [--threads 16,4] [--shape 170x170x192] [--variants auto,tb4,tb4b]

Run on the GPU machine's CPU by tools/gpu/run.sh cpu (PyTorch 2.x there);
here, Debian's PyTorch 1.13 runs it too. The peer is bench/gpu_ct.py's
predictor (nnU-Net's steps and Gaussian, fp32, batch 1, inference_mode) on
the CPU, timed once after a one-tile warm-up; segpipe is a fresh `segpipe ct
--device cpu --threads N --no-passport` whose report's window + inference
seconds compare (its whole wall time is printed too). Labels: share of
voxels equal to the peer's.
"""
import argparse, json, os, subprocess, sys, tempfile, time

import numpy as np
import torch

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)
sys.path.insert(0, os.path.join(root, "tools", "import"))
sys.path.insert(0, os.path.join(root, "tests", "gpu"))
sys.path.insert(0, here)
import nii  # noqa: E402
from gpu_ct import peer_predict, synthetic_ct  # noqa: E402
from import_nnunet import random_model  # noqa: E402

SEG = os.environ.get("SEGPIPE", os.path.join(root, "build", "segpipe"))


def peer(net, vol, man, threads):
    torch.set_num_threads(threads)
    nm = man["normalization"]
    x = (np.clip(vol.astype(np.float32), nm["lo"], nm["hi"]) - nm["mean"]) / max(nm["std"], 1e-8)
    data = torch.from_numpy(np.ascontiguousarray(np.transpose(x, man["axes"])))[None]
    patch = man["patch_size"]
    with torch.inference_mode():
        net(torch.zeros((1, 1, *patch)))          # one tile: oneDNN's first-call setup
    t0, c0 = time.perf_counter(), time.process_time()
    lab = peer_predict(net, data, patch, torch.device("cpu"), half=False)
    return np.transpose(lab, np.argsort(man["axes"])), time.perf_counter() - t0, time.process_time() - c0


def segpipe(vpath, pkg, threads, tmp, variant="auto"):
    """variant: "auto" (the default tile batch), "tbN" (--tile-batch N: N
    concurrent single-tile calls), "tbNb" (the same batch as one batched
    call, SEGPIPE_TILE_CALLS=batched)"""
    out, rep = os.path.join(tmp, "lab.nii.gz"), os.path.join(tmp, "rep.json")
    extra, env = [], nii.seg_env()
    if variant != "auto":
        extra = ["--tile-batch", variant[2:].rstrip("b")]
        if variant.endswith("b"):
            env = dict(env, SEGPIPE_TILE_CALLS="batched")
    t0 = time.perf_counter()
    p = subprocess.run([SEG, "ct", vpath, "-o", out, "-m", pkg, "--device", "cpu", "--threads", str(threads),
                        "--no-passport", "--report", rep, "-q", *extra], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"segpipe ct failed ({p.returncode}): {p.stderr[-2000:]}")
    r = json.load(open(rep))
    s = r["seconds"]
    return nii.read(out), {"wall": wall, "window_inference": s.get("window", 0) + s.get("inference", 0),
                           "peak_rss_bytes": r["peak_rss_bytes"], "stages": s}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--threads", default="16,4")
    ap.add_argument("--shape", default="170x170x192")
    ap.add_argument("--variants", default="auto", help="segpipe settings per thread count: auto,tb4,tb4b,...")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="cpu-ct-")
    pkg = os.path.join(tmp, "ts-fast")
    net, man = random_model("totalseg-fast", pkg, None, 0)
    net = net.eval()
    shape = tuple(int(v) for v in a.shape.split("x"))
    vol = synthetic_ct(shape, 0)
    vpath = os.path.join(tmp, "ct.nii")
    nii.write(vpath, vol, (3.0, 3.0, 3.0))
    rows = []
    for t in (int(v) for v in a.threads.split(",")):
        lab_p, pw, pc = peer(net, vol, man, t)
        for v in a.variants.split(","):
            lab_s, s = segpipe(vpath, pkg, t, tmp, v)
            r = {"threads": t, "variant": v, "torch": torch.__version__, "shape": shape, "peer_wall": pw,
                 "peer_cpu": pc, "segpipe": s, "ratio": s["window_inference"] / pw,
                 "labels_equal": float((lab_s == lab_p).mean())}
            rows.append(r)
            print(json.dumps(r), flush=True)
    json.dump(rows, open(os.path.join(a.out, "cpu_ct_peer.json"), "w"), indent=1)
    print(f"\n{os.cpu_count()} CPUs, PyTorch {torch.__version__}, {'x'.join(map(str, shape))} at 3 mm, fp32")
    print("| threads | segpipe setting | PyTorch window (s) | segpipe window + inference (s) | ratio | "
          "segpipe ct wall (s) | segpipe peak RSS (GB) | labels equal |")
    for r in rows:
        s = r["segpipe"]
        print(f"| {r['threads']} | {r['variant']} | {r['peer_wall']:.1f} | {s['window_inference']:.1f} | {r['ratio']:.2f}x | "
              f"{s['wall']:.1f} | {s['peak_rss_bytes'] / 1e9:.2f} | {100 * r['labels_equal']:.2f}% |")


if __name__ == "__main__":
    main()
