#!/usr/bin/env python3
"""INT8 against fp32 on a real model (docs/performance.md, "INT8"):
copies the package, adds its int8 model with tools/import/onnx_int8.py
(calibrated on --calib inputs), then runs `segpipe ct|mri` with
`--precision fp32` and `--precision int8` alternated (the machine is
shared) on the test input; per run wall seconds, CPU seconds (user +
system), the inference step and peak RSS from the run report; then Dice
per structure of the int8 labels against the fp32 labels (numpy, nibabel).
   /usr/bin/python3 bench/int8.py CMD PACKAGE INPUT --calib IN [IN ...] [--rounds N] [--threads N]
   e.g. bench/int8.py ct models/demo-ct ../shared/data/ct/example_ct.nii.gz \\
            --calib ../shared/data/ct/example_ct_sm.nii.gz"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
import numpy as np
import nibabel as nib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG = os.path.join(ROOT, os.environ.get("BUILD", "build"), "segpipe")


def one(cmd, model, inp, out, prec, threads):
    rep = out + ".report.json"
    t0, c0 = time.time(), os.times()
    if cmd == "masks":   # photos: out is a folder; no run report
        args = [SEG, "masks", inp, "-o", out, "--model", model, "--precision", prec, "-q"]
    else:
        args = [SEG, cmd, inp, "-o", out, "--model", model, "--precision", prec, "--report", rep, "--no-passport", "-q"]
    r = subprocess.run(args + (["-t", str(threads)] if threads else []), capture_output=True, text=True)
    wall, c1 = time.time() - t0, os.times()
    assert r.returncode == 0, r.stderr
    report = json.load(open(rep)) if cmd != "masks" else {}
    return {"wall": round(wall, 2), "cpu": round(c1.children_user - c0.children_user +
                                                  c1.children_system - c0.children_system, 2),
            "rss_gb": round(report.get("peak_rss_bytes", 0) / 1e9, 3),
            "inference": round(report.get("seconds", {}).get("inference", 0), 2)}


def dice(a, b):
    out = {}
    for lab in np.unique(a):
        if lab == 0:
            continue
        x, y = a == lab, b == lab
        out[int(lab)] = {"voxels": int(x.sum()), "dice": round(2 * float((x & y).sum()) / float(x.sum() + y.sum()), 4)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd")
    ap.add_argument("model")
    ap.add_argument("input")
    ap.add_argument("--calib", nargs="+", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--ranges", default="minmax", help="onnx_int8.py's --ranges")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="int8_bench.")
    pkg = os.path.join(tmp, "pkg")
    shutil.copytree(a.model, pkg)
    t0 = time.time()
    q = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "import", "onnx_int8.py"), pkg, "--calib",
                        *a.calib, "--segpipe", SEG, "--ranges", a.ranges], capture_output=True, text=True)
    assert q.returncode == 0, q.stderr
    res = {"cmd": a.cmd, "model": a.model, "input": a.input, "calib": a.calib, "ranges": a.ranges,
           "quantise_s": round(time.time() - t0, 1),
           "runs": {}}
    for _ in range(a.rounds):
        for prec in ("fp32", "int8"):
            load = os.getloadavg()[0]
            r = one(a.cmd, pkg, a.input, os.path.join(tmp, prec + ".nii.gz"), prec, a.threads)
            r["load"] = round(load, 1)
            res["runs"].setdefault(prec, []).append(r)
    for k, v in res["runs"].items():
        res.setdefault("mean", {})[k] = {m: round(sum(r[m] for r in v) / len(v), 3)
                                         for m in ("wall", "cpu", "rss_gb", "inference")}
    if a.cmd == "masks":   # the probability masks (PNG, 0-255) of fp32 and int8, thresholded at 128 too
        from PIL import Image
        stem = os.path.splitext(os.path.basename(a.input))[0]
        f, i = (np.asarray(Image.open(os.path.join(tmp, p + ".nii.gz", stem + ".foreground.png")).convert("L"))
                for p in ("fp32", "int8"))
        res["mean_abs_diff_255"] = round(float(np.abs(f.astype(int) - i.astype(int)).mean()), 3)
        fb, ib = f >= 128, i >= 128
        res["iou"] = round(float((fb & ib).sum()) / max(1, float((fb | ib).sum())), 4)
        f, i = fb.astype(np.uint8), ib.astype(np.uint8)
    else:
        f, i = (np.asarray(nib.load(os.path.join(tmp, p + ".nii.gz")).dataobj) for p in ("fp32", "int8"))
    d = dice(f, i)
    res["dice"] = d
    res["dice_min"] = min((v["dice"] for v in d.values()), default=None)
    res["voxels_equal"] = round(float((f == i).mean()), 5)
    print(json.dumps(res))
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
