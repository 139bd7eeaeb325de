#!/usr/bin/env python3
"""Load benchmark of `segpipe serve` (loopback only, bounded in count and
time): throughput and p50/p95/p99 latency of KServe infer requests on the
tiny test model at 1, 4 and 16 concurrent keep-alive clients; RSS before and
after 10,000 requests; the service's overhead per request = client latency -
the processing time the service reports for the same request.

  bench/serve_load.py [OUT.json]
"""
import http.client, json, os, signal, sys, time
import numpy as np
from serve_util import ROOT as root, run_clients, start_server

proc, port = start_server("--model", "tiny=" + os.path.join(root, "tests", "data", "tinyseg"), "--workers", "2",
                          "--queue", "64", "--threads", "1")
x = np.random.default_rng(0).normal(size=512).astype(np.float32)
BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8, 8], "datatype": "FP32",
                               "data": x.tolist()}]}).encode()
HDR = {"Content-Type": "application/json"}


def status():
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("GET", "/v1/status")
    return json.loads(c.getresponse().read())


def client(n, lat, over, deadline):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(n):
        if time.time() > deadline:
            break
        t = time.perf_counter()
        c.request("POST", "/v2/models/tiny/infer", BODY, HDR)
        r = c.getresponse()
        body = r.read()
        dt = time.perf_counter() - t
        assert r.status == 200
        lat.append(dt)
        over.append(dt - json.loads(body)["parameters"]["processing_seconds"])


res = {"levels": {}}
rss0 = status()["rss_bytes"]
total = 0
for conc in (1, 4, 16):
    n_each = {1: 2000, 4: 1000, 16: 250}[conc]
    lat, over = [], []
    deadline = time.time() + 30
    wall = run_clients(client, [(n_each, lat, over, deadline)] * conc)
    total += len(lat)
    q = np.percentile(lat, [50, 95, 99]) * 1000
    res["levels"][conc] = {"requests": len(lat), "throughput_rps": len(lat) / wall, "p50_ms": q[0], "p95_ms": q[1],
                           "p99_ms": q[2], "overhead_ms_median": float(np.median(over) * 1000)}
# up to 10,000 requests in all, then RSS again
lat, over = [], []
client(max(0, 10000 - total), lat, over, time.time() + 60)
total += len(lat)
rss1 = status()["rss_bytes"]
res.update({"requests_total": total, "rss_before_mb": rss0 / 1e6, "rss_after_mb": rss1 / 1e6})
proc.send_signal(signal.SIGTERM)
res["exit_code"] = proc.wait(timeout=30)
lines = ["| clients | requests | req/s | p50 ms | p95 ms | p99 ms | service overhead ms (median) |",
         "|---|---|---|---|---|---|---|"]
for c, v in res["levels"].items():
    lines.append(f"| {c} | {v['requests']} | {v['throughput_rps']:.0f} | {v['p50_ms']:.2f} | {v['p95_ms']:.2f} | "
                 f"{v['p99_ms']:.2f} | {v['overhead_ms_median']:.3f} |")
lines.append(f"\nRSS {res['rss_before_mb']:.1f} MB before, {res['rss_after_mb']:.1f} MB after {total} requests")
res["table"] = "\n".join(lines)
if len(sys.argv) > 1:
    json.dump(res, open(sys.argv[1], "w"), indent=1)
print(res["table"])
