#!/usr/bin/env python3
"""brainchop's zoo on a 256^3 T1: segpipe (its native MeshNet executor,
runtime/meshnet.c, and ONNX Runtime: SEGPIPE_MESHNET=0) against the model's
own PyTorch execution (tests/py/ref_brainchop.py: brainchop-cli's pipeline
from its source, PyTorch 1.13 on the real weights), all at the same thread count;
also the agreement of the labels (labelled voxels equal, per-region volume
differences). Prints one markdown row per model for docs/performance.md
(native | ONNX Runtime | PyTorch | native == ORT labels | load): wall seconds and
CPU seconds (user + system; on a shared machine the CPU seconds compare,
the wall seconds follow the load).

  /usr/bin/python3 bench/brainchop.py [--threads 2] [--input T1] [--models mindgrab,dk104]
      [--device cuda] (packages from tools/import/import_brainchop.py --zoo ... -o models;
      SEGPIPE names the binary, default build/segpipe)
  --device cuda: segpipe on the GPU (ONNX Runtime's CUDA provider; the native
  executor is CPU-only) against the same PyTorch network on the GPU, whose
  network is timed a second time warm ("net warm").
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
import numpy as np
import nibabel as nib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "py"))
import ref_brainchop as ref  # noqa: E402

SEG = os.environ.get("SEGPIPE", os.path.join(ROOT, "build", "segpipe"))
FOLDER = {"mindgrab": "mindgrab", "dk104": "model21_104class", "subcortical": "subcortical",
          "aparc50": "model30chan50cls", "tissue-fast": "model5_gw_ae"}


def agreement(got, want):
    lv = (got > 0) | (want > 0)
    eq = (got[lv] == want[lv]).mean()
    worst = 0.0
    for k in np.unique(want[want > 0]):
        b = (want == k).sum()
        if b >= 1000:   # regions of at least 1 ml
            worst = max(worst, abs(int((got == k).sum()) - int(b)) / b)
    return eq, worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--input", default=os.path.join(ROOT, "build", "brainchop-models", "t1_crop.nii.gz"))
    ap.add_argument("--models", default="mindgrab,dk104")
    ap.add_argument("--zoo", default=os.path.join(ROOT, "build", "brainchop-models"))
    ap.add_argument("--models-dir", default=os.path.join(ROOT, "models"))
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp()
    with open("/proc/loadavg") as f:
        print(f"load average before: {f.read().split()[:3]}", flush=True)
    for name in a.models.split(","):
        runs = {}
        for mode in (("1", "0") if a.device == "cpu" else ("0",)):   # native, then ONNX Runtime (SEGPIPE_MESHNET)
            out, conf, rep = (os.path.join(tmp, f"{name}{mode}{s}") for s in (".nii.gz", "_c.nii.gz", ".json"))
            t0, c0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
            p = subprocess.run([SEG, "mri", a.input, "-o", out, "--model",
                                os.path.join(a.models_dir, "brainchop-" + name), "--threads", str(a.threads),
                                "--device", a.device,
                                "--save-model-labels", conf, "--report", rep, "-q"], capture_output=True, text=True,
                               env=dict(os.environ, SEGPIPE_MESHNET=mode,
                                        LD_LIBRARY_PATH=os.environ.get("SEGPIPE_LD", os.environ.get("LD_LIBRARY_PATH", ""))))
            wall, c1 = time.time() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
            assert p.returncode == 0, p.stderr
            runs[mode] = (wall, cpu, json.load(open(rep))["seconds"].get("inference", 0), conf, out)
            print(f"  {name} SEGPIPE_MESHNET={mode}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)
        t0, pc0 = time.time(), time.process_time()
        lab, back, vol = ref.pipeline(os.path.join(a.zoo, "meshnet", FOLDER[name]), a.input, a.threads, a.device)
        ref_wall, ref_cpu = time.time() - t0, time.process_time() - pc0
        if a.device != "cpu":    # the network again, warm (CUDA context and cuDNN's choices made)
            import torch
            x = ref.qnormalize(vol.astype(np.float32)).astype(np.float32)
            torch.cuda.synchronize()
            t1 = time.time()
            ref.meshnet_forward(os.path.join(a.zoo, "meshnet", FOLDER[name]), x, a.threads, a.device)
            torch.cuda.synchronize()
            print(f"  {name} PyTorch on {a.device}: pipeline {ref_wall:.2f} s, net warm {time.time() - t1:.2f} s",
                  flush=True)
        cell = []
        for mode in runs:
            wall, cpu, inf, conf, out = runs[mode]
            eq, worst = agreement(np.asarray(nib.load(conf).dataobj), lab)
            cell.append(f"{wall:.1f} s wall, {cpu:.1f} s CPU (network {inf:.1f} s); {100 * eq:.3f}%, {100 * worst:.2f}%")
        same = (np.asarray(nib.load(runs["1"][3]).dataobj) == np.asarray(nib.load(runs["0"][3]).dataobj)).mean() \
            if len(runs) == 2 else float("nan")
        cells = " | ".join(cell)
        with open("/proc/loadavg") as f:
            la = f.read().split()[0]
        print(f"| {name} | {a.threads} | {cells} | {ref_wall:.1f} s wall, {ref_cpu:.1f} s CPU | "
              f"{100 * same:.4f}% | {la} |", flush=True)
    with open("/proc/loadavg") as f:
        print(f"load average after: {f.read().split()[:3]}")


if __name__ == "__main__":
    main()
