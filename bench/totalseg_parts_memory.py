#!/usr/bin/env python3
"""A task package's part models on demand (one session at a time, the
one-input CLI's default) against all resident (loaded first and held, as
before and as --inputs / the service do): `segpipe ct --parts MODE` on the
same scan, the modes alternated round by round, each run a fresh process.
Per run: wall and CPU seconds (the process), peak RSS (--report's
peak_rss_bytes, the kernel's VmHWM; with --device cuda also the GPU memory
it reports), the stage seconds (load_model holds the parts' loading in both
modes). Prints JSON; docs/performance.md, "Task packages: one part at a
time".

   /usr/bin/python3 bench/totalseg_parts_memory.py PKG CT.nii.gz [--rounds 2] [--threads 2]
                                                   [--roi-subset A,B] [--device cpu]

PKG: e.g. tools/import/import_totalseg.py on a home from
tools/dev/fake_totalseg_home.py --features 32,64,128,256,320,320 --patch 128
(TotalSegmentator-sized networks).
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEGPIPE = os.path.join(ROOT, "build", "segpipe")


def run(pkg, ct, mode, a, d):
    out, rep = os.path.join(d, mode + ".nii.gz"), os.path.join(d, mode + ".json")
    args = [SEGPIPE, "ct", ct, "-o", out, "--model", pkg, "--parts", mode, "-t", str(a.threads), "--device", a.device,
            "--no-passport", "-q", "--report", rep] + (["--roi-subset", a.roi_subset] if a.roi_subset else [])
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    p = subprocess.run(args, capture_output=True, text=True)
    wall = time.time() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        sys.exit(f"segpipe ct --parts {mode}: {p.stderr}")
    r = json.load(open(rep))
    return {"wall_s": round(wall, 2), "cpu_s": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2),
            "peak_rss_mb": round(r["peak_rss_bytes"] / 1e6, 1),
            "gpu_memory_mb": round(r.get("gpu_memory_bytes", 0) / 1e6, 1),
            "stages": {k: round(v, 2) for k, v in r["seconds"].items()},
            "labels": open(out, "rb").read()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pkg")
    ap.add_argument("ct")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--roi-subset", default="")
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    res = {"on-demand": [], "resident": []}
    with tempfile.TemporaryDirectory() as d:
        for _ in range(a.rounds):
            for mode in res:
                res[mode].append(run(a.pkg, a.ct, mode, a, d))
    same = all(r["labels"] == res["resident"][0]["labels"] for m in res for r in res[m])
    for m in res:
        for r in res[m]:
            del r["labels"]
    print(json.dumps({"labels_identical": same, "load_average": os.getloadavg(), "runs": res}, indent=1))


if __name__ == "__main__":
    main()
