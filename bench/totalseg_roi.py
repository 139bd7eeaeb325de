#!/usr/bin/env python3
"""TotalSegmentator's `total` as a segpipe task package: the full task (five
parts at 1.5 mm) against `--roi-subset` (only the parts holding the
structures; with the 6 mm crop model, only on its box), on the same scan,
runs alternated round by round (docs/performance.md, "TotalSegmentator's
total: parts, roi-subset"). Weights are random (tools/dev/fake_totalseg_home.py,
sizes by --features/--patch), so the labels mean nothing and the crop model
scatters most structures over the whole scan: the crop case uses the
structure the crop model finds in the smallest box, and the box's share of
the scan is printed with it. Prints JSON: per case wall and CPU seconds per
round, segpipe's stage times, the load average.

   /usr/bin/python3 bench/totalseg_roi.py [CT.nii.gz] [--features 8,16,32,64] [--patch 64]
                                          [--threads 2] [--rounds 2]
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time

import numpy as np
import nibabel as nib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEGPIPE = os.path.join(ROOT, "build", "segpipe")


def run(args, rep):
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    p = subprocess.run([SEGPIPE, "ct", *args, "--report", rep, "-q", "--no-passport"], capture_output=True, text=True)
    wall = time.time() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        sys.exit(f"segpipe {' '.join(args)}: {p.stderr}")
    stages = {k: round(v, 2) for k, v in json.load(open(rep)).get("seconds", {}).items()}
    return {"wall_s": round(wall, 2), "cpu_s": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2),
            "stages": stages}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ct", nargs="?", default=os.path.join(ROOT, "..", "shared", "data", "ct", "example_ct.nii.gz"))
    ap.add_argument("--features", default="8,16,32,64")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="bench-totalseg-")
    home, pkg, nocrop = (os.path.join(d, x) for x in ("home", "total", "nocrop"))
    py = sys.executable
    subprocess.run([py, os.path.join(ROOT, "tools", "dev", "fake_totalseg_home.py"), home, "--features", a.features,
                    "--patch", str(a.patch)], check=True, capture_output=True)
    imp = os.path.join(ROOT, "tools", "import", "import_totalseg.py")
    subprocess.run([py, imp, home, "-o", pkg], check=True, capture_output=True)
    subprocess.run([py, imp, home, "-o", nocrop, "--no-crop-model"], check=True, capture_output=True)
    man = json.load(open(os.path.join(pkg, "segpipe.json")))
    names = man["labels"]
    # the crop model's most compact structure (random weights scatter most)
    organ = os.path.join(d, "organ.nii.gz")
    subprocess.run([SEGPIPE, "ct", a.ct, "-o", organ, "--model", os.path.join(pkg, man["roi_crop"]["dir"]), "-q",
                    "--no-passport", "-t", str(a.threads)], check=True)
    seg = np.asanyarray(nib.load(organ).dataobj)
    best, share = None, 2.0
    for lab in np.unique(seg)[1:]:
        idx = np.where(seg == lab)
        s = np.prod([(int(i.max()) - int(i.min()) + 1) for i in idx]) / seg.size
        if s < share:
            best, share = int(lab), float(s)
    t = ["-t", str(a.threads)]
    cases = {"full (5 parts)": ["--model", nocrop],
             "--roi-subset liver, parts only (1 part)": ["--model", nocrop, "--roi-subset", "liver"],
             f"--roi-subset {names[str(best)]}, 6 mm crop + 1 part": ["--model", pkg, "--roi-subset", names[str(best)]]}
    res = {k: [] for k in cases}
    for r in range(a.rounds):
        for k, args in cases.items():
            res[k].append(run([a.ct, "-o", os.path.join(d, "o.nii.gz"), *args, *t], os.path.join(d, "rep.json")))
    img = nib.load(a.ct)
    print(json.dumps({"ct": os.path.basename(a.ct), "shape": list(img.shape),
                      "zooms": [float(z) for z in img.header.get_zooms()], "features": a.features,
                      "patch": a.patch, "threads": a.threads, "crop_box_share_bbox_before_margin": round(share, 4),
                      "loadavg": os.getloadavg(), "results": res}, indent=1))


if __name__ == "__main__":
    main()
