#!/usr/bin/env python3
"""The service under mixed load (loopback, bounded): 32 clients for S
seconds (default 60) mixing /v1/ct (the small example CT), /v1/segment-batch
(rendered room photos) and bad requests (corrupt volume, unknown model,
wrong content type, malformed KServe JSON). Reported: requests and statuses
per kind, any 5xx other than 503 back-pressure (clients back off as
Retry-After says, at most 1 s), p50/p95/p99 latency, RSS sampled every
second (growth: the peak of the second half against the peak of the second
quarter); then SIGTERM with the clients still
sending: every request the service accepted must be answered, and the
process must exit 0 within the longest job's time.

  bench/serve_mixed_load.py [OUT.json] [--seconds S] [--clients N]
"""
import http.client, json, os, signal, sys, threading, time
import numpy as np
from serve_util import ROOT as root, room_jpegs, start_server

secs = float(sys.argv[sys.argv.index("--seconds") + 1]) if "--seconds" in sys.argv else 60
nclients = int(sys.argv[sys.argv.index("--clients") + 1]) if "--clients" in sys.argv else 32
out = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else None
ct = open(os.path.join(root, "..", "shared", "data", "ct", "example_ct_sm.nii.gz"), "rb").read()
photos = room_jpegs(8, 300000)
BAD = [("/v1/ct?model=ct", b"\x00" * 4000, "application/octet-stream"),
       ("/v1/ct?model=nope", ct[:100], "application/octet-stream"),
       ("/v1/segment-batch?model=rooms", b"not a photo", "text/plain"),
       ("/v2/models/ct/infer", b'{"inputs": [{"name": "input", "shape": [1e30]', "application/json")]


def request(kind, i):
    if kind == "ct":
        return "/v1/ct?model=ct", ct, "application/octet-stream"
    if kind == "photo":
        return "/v1/segment-batch?model=rooms&masks=wall,floor", photos[i % len(photos)], "application/octet-stream"
    return BAD[(i // len(kinds)) % len(BAD)]


def status(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/v1/status")
    return json.loads(c.getresponse().read())


p, port = start_server("--model", "ct=" + os.path.join(root, "models", "demo-ct"),
                       "--model", "rooms=" + os.path.join(root, "models", "demo-rooms"),
                       "--workers", "2", "--queue", "8", "--threads", "1", "--max-memory", "1G")
rec, lock = [], threading.Lock()
state = {"stop": time.time() + secs, "term": None}
kinds = ["ct", "photo", "photo", "bad"]


def client(k):
    i = k
    while time.time() < state["stop"]:
        kind = kinds[i % len(kinds)]
        path, body, ctype = request(kind, i)
        t = time.perf_counter()
        sent = False
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            c.request("POST", path, body, {"Content-Type": ctype})
            sent = True
            r = c.getresponse()
            r.read()
            code = r.status
            retry = float(r.getheader("Retry-After") or 0)
            c.close()
        except (ConnectionRefusedError, ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected) as e:
            # after SIGTERM the listening socket is closed: refused is fine;
            # a request sent and then dropped without an answer is not
            code = "refused" if state["term"] and not sent else "dropped: " + type(e).__name__
        with lock:
            rec.append((kind, code, time.perf_counter() - t, state["term"] is not None))
        if state["term"] and code == "refused":
            return
        if code == 503:   # a well-behaved client backs off as told (at most 1 s here)
            time.sleep(min(retry, 1.0))
        i += nclients


th = [threading.Thread(target=client, args=(k,)) for k in range(nclients)]
t0 = time.perf_counter()
for t in th:
    t.start()
samples = []   # (seconds, RSS) every second: peaks of running jobs come and go
while time.perf_counter() - t0 < secs:
    samples.append((time.perf_counter() - t0, status(port)["rss_bytes"]))
    time.sleep(1)
# growth: the highest RSS of the second half against that of the second
# quarter (after warm-up, every buffer and arena in use once)
rss0 = max(r for t, r in samples if secs / 4 <= t < secs / 2)
rss1 = max(r for t, r in samples if t >= secs / 2)
# SIGTERM while the clients keep sending for 10 s more
state["stop"] = time.time() + 10
state["term"] = time.time()
p.send_signal(signal.SIGTERM)
rc = p.wait(timeout=700)
exit_s = time.time() - state["term"]
state["stop"] = 0
for t in th:
    t.join()

res = {"clients": nclients, "seconds": secs, "rss_warm_peak": rss0, "rss_end_peak": rss1, "rss_samples": samples,
       "rss_growth": rss1 / rss0 - 1, "exit_code": rc, "exit_seconds_after_sigterm": exit_s, "kinds": {}}
load = [r for r in rec if not r[3]]
after = [r for r in rec if r[3]]
for kind in ("ct", "photo", "bad"):
    rs = [r for r in load if r[0] == kind]
    codes = {}
    for r in rs:
        codes[str(r[1])] = codes.get(str(r[1]), 0) + 1
    ok = [r[2] for r in rs if r[1] in (200, 400, 404, 415, 422)]
    q = np.percentile(ok, [50, 95, 99]) * 1000 if ok else [0, 0, 0]
    res["kinds"][kind] = {"requests": len(rs), "codes": codes, "p50_ms": q[0], "p95_ms": q[1], "p99_ms": q[2]}
res["server_errors"] = sum(1 for r in load if isinstance(r[1], int) and r[1] >= 500 and r[1] != 503)
res["after_sigterm"] = {str(c): sum(1 for r in after if r[1] == c) for c in sorted({r[1] for r in after}, key=str)}
res["dropped"] = sum(1 for r in rec if str(r[1]).startswith("dropped"))
lines = ["| kind | requests | statuses | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|"]
for k, v in res["kinds"].items():
    lines.append(f"| {k} | {v['requests']} | {v['codes']} | {v['p50_ms']:.0f} | {v['p95_ms']:.0f} | {v['p99_ms']:.0f} |")
lines.append(f"\n5xx other than 503: {res['server_errors']}; RSS {rss0 / 1e6:.0f} -> {rss1 / 1e6:.0f} MB "
             f"({100 * res['rss_growth']:+.1f}%); after SIGTERM: {res['after_sigterm']}, dropped {res['dropped']}, "
             f"exit {rc} in {exit_s:.1f} s")
print("\n".join(lines))
if out:
    json.dump(res, open(out, "w"), indent=1)
sys.exit(0 if rc == 0 and res["server_errors"] == 0 and res["dropped"] == 0 else 1)
