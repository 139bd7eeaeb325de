#!/usr/bin/env python3
"""ONNX Runtime's arena on and off per model (docs/performance.md, "Arena"):
`segpipe ct|mri` on a real scan with `--arena on` and `--arena off`, runs
alternated (A/B/A/B) because the machine is shared; per run: wall seconds,
CPU seconds (user + system, the steadier number under load), peak RSS (the
run report) and the load average; the labels of every run must be equal.
   /usr/bin/python3 bench/arena.py CMD MODEL INPUT [--rounds N] [--threads N]
   e.g. bench/arena.py ct models/demo-ct ../shared/data/ct/example_ct.nii.gz"""
import argparse, hashlib, json, os, shutil, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG = os.path.join(ROOT, os.environ.get("BUILD", "build"), "segpipe")


def one(cmd, model, inp, out, arena, threads, extra):
    rep = out + ".report.json"
    t0, c0 = time.time(), os.times()
    r = subprocess.run([SEG, cmd, inp, "-o", out, "--model", model, "--arena", arena, "--report", rep,
                        "--no-passport", "-q"] + (["-t", str(threads)] if threads else []) + extra,
                       capture_output=True, text=True)
    wall, c1 = time.time() - t0, os.times()
    assert r.returncode == 0, r.stderr
    report = json.load(open(rep))
    return {"wall": round(wall, 2), "cpu": round(c1.children_user - c0.children_user +
                                                  c1.children_system - c0.children_system, 2),
            "rss_gb": round(report.get("peak_rss_bytes", 0) / 1e9, 3),
            "inference": round(report.get("seconds", {}).get("inference", 0), 2),
            "labels": hashlib.sha256(open(out, "rb").read()).hexdigest()[:16]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd")
    ap.add_argument("model")
    ap.add_argument("input")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--configs", default="off,on")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="arena_bench.")
    res = {"cmd": a.cmd, "model": a.model, "input": a.input, "runs": {}}
    for _ in range(a.rounds):
        for cfg in a.configs.split(","):
            load = os.getloadavg()[0]
            r = one(a.cmd, a.model, a.input, os.path.join(tmp, cfg + ".nii"), cfg, a.threads, [])
            r["load"] = round(load, 1)
            res["runs"].setdefault(cfg, []).append(r)
    labels = {r["labels"] for v in res["runs"].values() for r in v}
    res["labels_equal"] = len(labels) == 1
    for k, v in res["runs"].items():
        res.setdefault("mean", {})[k] = {m: round(sum(r[m] for r in v) / len(v), 3)
                                         for m in ("wall", "cpu", "rss_gb", "inference")}
    print(json.dumps(res))
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
