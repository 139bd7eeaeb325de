#!/usr/bin/env python3
"""First run against second run of the CLI with the optimised-graph cache
(docs/performance.md, "Warm start"): in a fresh cache folder, run 1 builds
and saves ONNX Runtime's optimised graph, later runs load it; runs with
--no-cache-graph alternate with them (the machine is shared). Per run: wall
and CPU seconds of the whole process and the model load step (segpipe's
"loaded ... in X s" of -v). Outputs must be byte-identical across all runs.
   /usr/bin/python3 bench/warm_start.py CMD MODEL INPUT [--rounds N] [--threads N] [--precision P]"""
import argparse, hashlib, json, os, re, shutil, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG = os.path.join(ROOT, os.environ.get("BUILD", "build"), "segpipe")


def one(a, out, cache, extra):
    env = dict(os.environ, SEGPIPE_CACHE_DIR=cache)
    if a.cmd == "masks":
        args = [SEG, "masks", a.input, "-o", out, "--model", a.model, "-v"]
    else:
        args = [SEG, a.cmd, a.input, "-o", out, "--model", a.model, "--no-passport", "-v"]
    args += (["-t", str(a.threads)] if a.threads else []) + (["--precision", a.precision] if a.precision else [])
    t0, c0 = time.time(), os.times()
    r = subprocess.run(args + extra, capture_output=True, text=True, env=env)
    wall, c1 = time.time() - t0, os.times()
    assert r.returncode == 0, r.stderr
    m = re.search(r"loaded \S+ in ([0-9.]+) s( \(optimised graph cache\))?", r.stderr)
    files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(out) for f in fs) if os.path.isdir(out) else [out]
    h = hashlib.sha256(b"".join(open(f, "rb").read() for f in files if f.endswith((".gz", ".png")))).hexdigest()
    return {"wall": round(wall, 2), "cpu": round(c1.children_user - c0.children_user + c1.children_system -
                                                  c0.children_system, 2),
            "load": float(m.group(1)) if m else None, "from_cache": bool(m and m.group(2)), "out": h[:16],
            "sysload": round(os.getloadavg()[0], 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd")
    ap.add_argument("model")
    ap.add_argument("input")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="warm_bench.")
    cache = os.path.join(tmp, "cache")
    out = os.path.join(tmp, "out.nii.gz" if a.cmd != "masks" else "out")
    res = {"cmd": a.cmd, "model": a.model, "input": a.input, "precision": a.precision, "first": one(a, out, cache, []),
           "cached": [], "no_cache": []}
    for _ in range(a.rounds):
        res["cached"].append(one(a, out, cache, []))
        res["no_cache"].append(one(a, out, cache, ["--no-cache-graph"]))
    res["cache_bytes"] = sum(os.path.getsize(os.path.join(cache, f)) for f in os.listdir(cache))
    res["outputs_equal"] = len({r["out"] for r in [res["first"]] + res["cached"] + res["no_cache"]}) == 1
    for k in ("cached", "no_cache"):
        res[k + "_mean"] = {m: round(sum(r[m] or 0 for r in res[k]) / len(res[k]), 3) for m in ("wall", "cpu", "load")}
    print(json.dumps(res))
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
