#!/usr/bin/env python3
"""Tile calls on the CPU: `segpipe ct` with a batch of tiles as concurrent
single-tile calls (the default) against the same batch as one batched call
(SEGPIPE_TILE_CALLS=batched), same model, input, threads and tile batch,
rounds alternated; median window + inference seconds, whole-process wall,
peak RSS, and whether the labels are equal (docs/performance.md, "Tile
calls").

  python3 bench/tile_calls.py [CT] [--model DIR] [--threads 2] [--tile-batch 4] [--rounds 3]
"""
import argparse, json, os, statistics, subprocess, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG = os.environ.get("SEGPIPE", os.path.join(ROOT, "build", "segpipe"))


def run(ct, model, threads, tb, mode, tmp):
    out, rep = os.path.join(tmp, mode + ".nii.gz"), os.path.join(tmp, mode + ".json")
    env = dict(os.environ, SEGPIPE_ORT_SPIN=os.environ.get("SEGPIPE_ORT_SPIN", "0"))
    if mode == "batched":
        env["SEGPIPE_TILE_CALLS"] = "batched"
    t0 = time.perf_counter()
    subprocess.run([SEG, "ct", ct, "-o", out, "--model", model, "-t", str(threads), "--tile-batch", str(tb),
                    "--no-passport", "--report", rep, "-q"], check=True, env=env)
    wall = time.perf_counter() - t0
    r = json.load(open(rep))
    s = r["seconds"]
    return {"wall": wall, "window_inference": s.get("window", 0) + s.get("inference", 0),
            "peak_rss_gb": r["peak_rss_bytes"] / 1e9, "labels": open(out, "rb").read()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ct", nargs="?", default=os.path.join(ROOT, "..", "shared", "data", "ct", "example_ct.nii.gz"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "demo-ct"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tile-batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tile-calls-")
    res = {"calls": [], "batched": []}
    for _ in range(a.rounds):
        for mode in res:
            res[mode].append(run(a.ct, a.model, a.threads, a.tile_batch, mode, tmp))
    same = res["calls"][-1]["labels"] == res["batched"][-1]["labels"]
    print(f"{os.cpu_count()} CPUs, {os.path.basename(a.ct)}, {os.path.basename(a.model)}, "
          f"--threads {a.threads} --tile-batch {a.tile_batch}, {a.rounds} rounds alternated (medians)")
    print("| tiles of a batch | window + inference (s) | wall (s) | peak RSS (GB) |")
    print("|---|---:|---:|---:|")
    for mode, rows in res.items():
        med = {k: statistics.median(r[k] for r in rows) for k in ("window_inference", "wall", "peak_rss_gb")}
        print(f"| {mode} | {med['window_inference']:.2f} | {med['wall']:.2f} | {med['peak_rss_gb']:.2f} |")
    print(f"labels byte-identical: {same}")


if __name__ == "__main__":
    main()
