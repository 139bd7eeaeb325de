#!/usr/bin/env python3
"""mri_cold.py — ON THE GPU MACHINE (tools/gpu/run.sh mricold, issue #44):
the brainchop chain `segpipe mri T1 --model MINDGRAB,DK104 --device cuda`
cold, each run a fresh process, settings alternated run by run so that
every setting sees the same machine state:

  heuristic  segpipe's default for one input (sp_runtime_params.one_shot:
             cudnn_conv_algo_search=HEURISTIC)
  exhaustive SEGPIPE_CUDA_OPTIONS=cudnn_conv_algo_search=EXHAUSTIVE (what a
             one-input run did before one_shot)
  eager      the default with CUDA_MODULE_LOADING=EAGER
  serial     SEGPIPE_SERIAL_LOAD=1 (model sessions made before the read and,
             in a chain, not beside the extractors)
  base       the default with another segpipe binary (--base: an earlier
             build, the peer of a change measured in the same call)

A first run before the rounds (the optimised-graph cache, the page cache) is
reported apart. Then, once each, mindgrab alone and dk104 alone (cold, the
default) for the stage split inside the chain's mindgrab step. Prints one line
per run (process wall, segpipe's own wall and stages from --report) and writes
JSON to OUT/mri_cold.json, the stage table of each setting's first round to
OUT/mri_cold_tables.txt.

  mri_cold.py SEGPIPE T1 MINDGRAB DK104 OUT [--runs N] [--variants a,b,c] [--base SEGPIPE_BASE]
"""
import argparse
import json
import os
import subprocess
import sys
import time

VARIANTS = {
    "heuristic": {},
    "exhaustive": {"SEGPIPE_CUDA_OPTIONS": "cudnn_conv_algo_search=EXHAUSTIVE"},
    "eager": {"CUDA_MODULE_LOADING": "EAGER"},
    "serial": {"SEGPIPE_SERIAL_LOAD": "1"},
    "base": {},
}


def run(segpipe, t1, model, tag, env_extra, out, tables):
    env = dict(os.environ, **env_extra)
    rep, lab = f"/tmp/mri_cold_{tag}.json", f"/tmp/mri_cold_{tag}.nii.gz"
    cmd = [segpipe, "mri", t1, "--model", model, "-o", lab, "--device", "cuda", "--report", rep]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode:
        print(f"{tag}: exit {p.returncode}\n{p.stderr[-2000:]}", flush=True)
        return {"tag": tag, "rc": p.returncode}
    r = json.load(open(rep))
    sec = r["seconds"]
    print(f"{tag}: wall {wall:.2f} s (segpipe's {r['wall_seconds']:.2f}), GPU {r.get('gpu_memory_bytes', 0) / 1e9:.1f} GB; "
          + ", ".join(f"{k} {v:.3f}" for k, v in sec.items() if v >= 0.005), flush=True)
    if tables is not None:
        tables.write(f"== {tag} ({' '.join(f'{k}={v}' for k, v in env_extra.items()) or 'defaults'})\n{p.stdout}\n")
    return {"tag": tag, "wall": wall, "segpipe_wall": r["wall_seconds"], "seconds": sec,
            "gpu_memory_bytes": r.get("gpu_memory_bytes"), "env": env_extra}


def agree(a, b):
    try:
        import nibabel as nib
        import numpy as np
    except ImportError as e:
        return f"labels not compared ({e})"
    x, y = (np.asarray(nib.load(f).dataobj) for f in (a, b))
    m = (x > 0) | (y > 0)
    same = " (identical)" if np.array_equal(x, y) else ""
    return f"{100 * (x == y).mean():.4f}% of voxels, {100 * (x[m] == y[m]).mean():.3f}% of labelled{same}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("segpipe")
    ap.add_argument("t1")
    ap.add_argument("mindgrab")
    ap.add_argument("dk104")
    ap.add_argument("out")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--variants", default="heuristic,exhaustive,eager")
    ap.add_argument("--base", help="the segpipe binary of the variant 'base'")
    a = ap.parse_args()
    chain = f"{a.mindgrab},{a.dk104}"
    res = []
    with open(os.path.join(a.out, "mri_cold_tables.txt"), "w") as tables:
        res.append(run(a.segpipe, a.t1, chain, "first", {}, a.out, tables))
        for i in range(a.runs):
            for v in a.variants.split(","):
                exe = a.base if v == "base" else a.segpipe
                res.append(run(exe, a.t1, chain, f"{v}{i + 1}", VARIANTS[v], a.out, tables if i == 0 else None))
        for name, m in (("mindgrab-alone", a.mindgrab), ("dk104-alone", a.dk104)):
            res.append(run(a.segpipe, a.t1, m, name, {}, a.out, tables))
            if a.base:
                res.append(run(a.base, a.t1, m, name + "-base", {}, a.out, tables))
    v = a.variants.split(",")
    for other in v[1:]:
        print(f"labels {v[0]}1 vs {other}1: " + agree(f"/tmp/mri_cold_{v[0]}1.nii.gz", f"/tmp/mri_cold_{other}1.nii.gz"))
    for name in v:
        w = sorted(r["wall"] for r in res if r["tag"].rstrip("0123456789") == name and "wall" in r)
        if w:
            print(f"{name}: walls {', '.join(f'{x:.2f}' for x in w)} s (median {w[len(w) // 2]:.2f})")
    json.dump(res, open(os.path.join(a.out, "mri_cold.json"), "w"), indent=1)


if __name__ == "__main__":
    sys.exit(main())
