#!/usr/bin/env python3
"""Jobs per minute of `segpipe worker` on Redis Streams with 1, 2 and 4
workers on this machine (each worker --threads 1), and the same with each
worker pinned to one core (taskset; more workers than cores share them),
on N copies of example_ct_sm (the demo model). Also Redis's own work per
job (commands and bytes, from INFO). Writes bench/out/redis_scale.json and
prints a markdown table for docs/scale-out.md.

  python3 bench/redis_scale.py [--jobs 24]
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from serve_util import free_port
SEG = os.environ.get("SEGPIPE", os.path.join(ROOT, "build", "segpipe"))
CT = os.path.join(ROOT, "..", "shared", "data", "ct", "example_ct_sm.nii.gz")


def cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *map(str, args)], capture_output=True, text=True).stdout


def info(port):
    out = {}
    for line in cli(port, "INFO", "all").splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k] = v.strip()
    return out


def run(n_workers, jobs, pin, tmp):
    port = free_port()
    d = os.path.join(tmp, f"r{n_workers}{pin}")
    os.makedirs(d)
    red = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", d, "--save", "",
                            "--appendonly", "yes"], stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    url = f"redis://127.0.0.1:{port}"
    ins = []
    for i in range(jobs):
        p = os.path.join(d, f"ct{i:03d}.nii.gz")
        shutil.copy(CT, p)
        ins.append(p)
    subprocess.run([SEG, "submit", "--redis", url, *ins, "-o", os.path.join(d, "out")], check=True,
                   capture_output=True)
    before = info(port)
    ncpu = os.cpu_count()
    t0 = time.perf_counter()
    ws = []
    for k in range(n_workers):
        cmd = [SEG, "worker", "--redis", url, "--threads", "1", "--consumer", f"w{k}", "--input-root", tmp,
               "--output-root", tmp]
        if pin:
            cmd = ["taskset", "-c", str(k % ncpu)] + cmd
        ws.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    while True:
        c = json.loads(subprocess.run([SEG, "jobs", "--redis", url], capture_output=True, text=True).stdout)
        if c["done"] + c["failed"] >= jobs:
            break
        time.sleep(0.2)
    secs = time.perf_counter() - t0
    after = info(port)
    for w in ws:
        w.terminate()
    for w in ws:
        w.wait()
    red.terminate()
    red.wait()
    cmds = int(after["total_commands_processed"]) - int(before["total_commands_processed"])
    net = int(after["total_net_input_bytes"]) - int(before["total_net_input_bytes"]) + \
        int(after["total_net_output_bytes"]) - int(before["total_net_output_bytes"])
    return {"workers": n_workers, "pinned": pin, "jobs": jobs, "seconds": secs, "jobs_per_minute": 60 * jobs / secs,
            "redis_commands_per_job": cmds / jobs, "redis_bytes_per_job": net / jobs}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=24)
    a = ap.parse_args()
    res = []
    with tempfile.TemporaryDirectory() as tmp:
        for pin in (False, True):
            for n in (1, 2, 4):
                r = run(n, a.jobs, pin, tmp)
                print(json.dumps(r), flush=True)
                res.append(r)
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    json.dump(res, open(os.path.join(ROOT, "bench", "out", "redis_scale.json"), "w"), indent=1)
    print(f"\n| workers | pinned to a core | jobs/min | Redis commands/job | Redis bytes/job |\n|---|---|---|---|---|")
    for r in res:
        print(f"| {r['workers']} | {'yes' if r['pinned'] else 'no'} | {r['jobs_per_minute']:.1f} | "
              f"{r['redis_commands_per_job']:.0f} | {r['redis_bytes_per_job']:.0f} |")


if __name__ == "__main__":
    main()
