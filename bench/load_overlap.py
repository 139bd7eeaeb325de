#!/usr/bin/env python3
"""`segpipe ct` with the model loaded beside the read (issue #42) against an
older build or the serial order: alternated runs of both on one input and
model, each run's wall and its `load model`, `read` and overlap rows
(docs/performance.md, "Model load beside the read").

    bench/load_overlap.py BEFORE_SEGPIPE AFTER_SEGPIPE INPUT MODEL [--runs 3] [--json out.json] [-- EXTRA CT ARGS]

BEFORE_SEGPIPE may be "serial": this build with SEGPIPE_SERIAL_LOAD=1.
"""
import argparse, json, os, re, subprocess, tempfile, time

here = os.path.dirname(os.path.abspath(__file__))
SEG = os.path.join(os.path.dirname(here), "build", "segpipe")


def one(seg, env, src, model, extra, out):
    t = time.time()
    p = subprocess.run([seg, "ct", src, "--model", model, "--no-passport", "-o", out, *extra],
                       capture_output=True, text=True, env=env)
    d = {"rc": p.returncode, "wall": round(time.time() - t, 3)}
    for line in p.stdout.splitlines():
        m = re.match(r"(load model|read|inference|total)\s+([\d.]+)", line)
        if m:
            d[m.group(1)] = float(m.group(2))
        m = re.search(r"same time: ([\d.]+) s", line)
        if m:
            d["overlap"] = float(m.group(1))
    d["load + read"] = round(d.get("load model", 0) + d.get("read", 0) - d.get("overlap", 0), 3)
    return d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("before"), ap.add_argument("after"), ap.add_argument("input"), ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    a, extra = ap.parse_known_args()
    a.extra = [x for x in extra if x != "--"]
    env = dict(os.environ)
    runs = {"before": (SEG if a.before == "serial" else a.before, dict(env, SEGPIPE_SERIAL_LOAD="1")),
            "after": (a.after, dict(env, SEGPIPE_SERIAL_LOAD="0"))}
    res = []
    with tempfile.TemporaryDirectory() as d:
        for r in range(a.runs):
            for name in (["before", "after"] if r % 2 == 0 else ["after", "before"]):
                seg, e = runs[name]
                row = dict(build=name, run=r, **one(seg, e, a.input, a.model, a.extra, os.path.join(d, name + ".nii.gz")))
                print(json.dumps(row), flush=True)
                res.append(row)
        same = open(os.path.join(d, "before.nii.gz"), "rb").read() == open(os.path.join(d, "after.nii.gz"), "rb").read()
    print("labels byte-identical:", same)
    if a.json:
        json.dump({"runs": res, "labels_identical": same}, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
