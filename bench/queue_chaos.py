#!/usr/bin/env python3
"""The queue's goal run (issue 40): N small CT jobs (default 100) over 3
`segpipe worker`s with one worker and redis-server each killed once with
SIGKILL in the middle (Redis with AOF, appendfsync always), both restarted;
then counts: jobs done, lost (never done), outputs duplicated or missing,
the dead letter, and the workers' Prometheus textfiles summed. Also a
hostile batch (entries outside the roots) with a canary folder outside the
roots: files read or written there. Writes bench/out/queue_chaos.json.

  python3 bench/queue_chaos.py [--jobs 100]
"""
import argparse, glob, json, os, shutil, signal, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "py"))
import sp                                   # noqa: E402
from test_scale_out import Redis, small_cts  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="queue-chaos-")
    ind, outd, away = (os.path.join(tmp, d) for d in ("in", "out", "away"))
    for d in (ind, outd, away):
        os.makedirs(d)
    ins = small_cts(ind, a.jobs)
    canary = os.path.join(away, "canary.nii.gz")
    shutil.copy(ins[0], canary)
    r = Redis(tmp)
    url = f"redis://127.0.0.1:{r.port}"
    t0 = time.time()
    ids = sp.run("submit", "--redis", url, *ins, "-o", outd, check=True).stdout.split()[::2]
    for k in range(10):   # hostile entries: outside the roots
        r.cli("XADD", "segpipe:jobs", "*", "id", f"{k:032x}", "input", canary, "output", outd)
        r.cli("XADD", "segpipe:jobs", "*", "id", f"{k + 100:032x}", "input", ins[0], "output", away)
    before = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(away, "*"))}

    def worker(k):
        return subprocess.Popen([sp.SEGPIPE, "worker", "--redis", url, "--consumer", f"w{k}", "--threads", "1",
                                 "--visibility", "5", "--input-root", ind, "--output-root", outd,
                                 "--metrics-file", os.path.join(tmp, f"w{k}.prom")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=sp.run_env())
    ws = [worker(k) for k in range(3)]
    count = lambda: json.loads(sp.run("jobs", "--redis", url, check=True).stdout)
    while count()["done"] < a.jobs // 4:
        time.sleep(0.2)
    while not r.cli("XPENDING", "segpipe:jobs", "segpipe-workers", "-", "+", "1", "w0"):   # w0 holds a job
        time.sleep(0.05)
    ws[0].kill()                            # a worker, mid-job
    ws[0].wait()
    while count()["done"] < a.jobs // 2:
        time.sleep(0.2)
    r.restart(kill=True)                    # redis-server, mid-run
    ws[0] = worker(3)                       # the killed worker's replacement
    while (c := count())["done"] + c["failed"] < a.jobs:
        time.sleep(0.5)
    secs = time.time() - t0
    for w in ws:
        w.send_signal(signal.SIGTERM)
    rcs = [w.wait(timeout=120) for w in ws]
    files = [os.path.basename(f) for f in glob.glob(os.path.join(outd, "*.nii.gz"))]
    by_id = {}
    for f in files:
        by_id.setdefault(f.split(".")[1], []).append(f)
    after = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(away, "*"))}
    prom = {}
    for f in glob.glob(os.path.join(tmp, "w*.prom")):
        for line in open(f):
            if line.startswith("segpipe_worker_jobs_total"):
                res = line.split('result="')[1].split('"')[0]
                prom[res] = prom.get(res, 0) + float(line.split()[-1])
    res = {"jobs": a.jobs, "workers": 3, "seconds": round(secs, 1), "counts": c,
           "done_outputs": len(by_id), "lost": sum(1 for i in ids if i not in by_id),
           "duplicated": sum(len(v) - 1 for v in by_id.values()),
           "attempts_over_1": sum(1 for i in ids if int(r.cli("HGET", f"segpipe:job:{i}", "attempts") or 0) > 1),
           "hostile_entries": 20, "rejected": c.get("rejected"), "files_outside_roots_touched":
           sum(1 for p in set(before) | set(after) if before.get(p) != after.get(p)),
           "worker_exit_codes": rcs, "metrics_jobs_total": prom}
    r.stop()
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    json.dump(res, open(os.path.join(ROOT, "bench", "out", "queue_chaos.json"), "w"), indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
