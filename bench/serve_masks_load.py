#!/usr/bin/env python3
"""Dynamic batching of /v1/segment-batch, measured (loopback, bounded):
8 concurrent clients send rendered room photos (demo-rooms model) to a
service without batching (--max-batch 1) and with it (--batch-window-ms 10
--max-batch 8); throughput and latency of each, and the gain.

  bench/serve_masks_load.py [OUT.json] [--seconds S]
"""
import http.client, json, os, signal, sys, threading, time
import numpy as np
from serve_util import ROOT as root, room_jpegs, run_clients, start_server

secs = float(sys.argv[sys.argv.index("--seconds") + 1]) if "--seconds" in sys.argv else 15
photos = room_jpegs(16, 200000)


def measure(extra):
    p, port = start_server("--model", "rooms=" + os.path.join(root, "models", "demo-rooms"), "--workers", "1",
                           "--queue", "64", *extra)
    lat, sizes = [], []
    lock = threading.Lock()
    stop = time.time() + secs

    def client(k):
        c = http.client.HTTPConnection("127.0.0.1", port)
        i = k
        while time.time() < stop:
            t = time.perf_counter()
            c.request("POST", "/v1/segment-batch?model=rooms&masks=wall,floor,ceiling,window", photos[i % 16],
                      {"Content-Type": "application/octet-stream"})
            r = c.getresponse()
            body = r.read()
            assert r.status == 200, body[:200]
            with lock:
                lat.append(time.perf_counter() - t)
                sizes.append(json.loads(body)["batch_size"])
            i += 8

    wall = run_clients(client, [(k,) for k in range(8)])
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)
    q = np.percentile(lat, [50, 95]) * 1000
    return {"requests": len(lat), "photos_per_s": len(lat) / wall, "p50_ms": q[0], "p95_ms": q[1],
            "mean_batch": float(np.mean(sizes))}


res = {"no_batching": measure(["--max-batch", "1"]),
       "dynamic_batching": measure(["--batch-window-ms", "10", "--max-batch", "8"])}
res["gain"] = res["dynamic_batching"]["photos_per_s"] / res["no_batching"]["photos_per_s"]
lines = ["| service | photos/s | p50 ms | p95 ms | mean batch |", "|---|---|---|---|---|"]
for k in ("no_batching", "dynamic_batching"):
    v = res[k]
    lines.append(f"| {k.replace('_', ' ')} | {v['photos_per_s']:.1f} | {v['p50_ms']:.0f} | {v['p95_ms']:.0f} | "
                 f"{v['mean_batch']:.1f} |")
lines.append(f"\ngain: {res['gain']:.2f}x (8 clients, 640x480 JPEG rooms, demo-rooms model, 1 worker)")
res["table"] = "\n".join(lines)
if len(sys.argv) > 1 and not sys.argv[1].startswith("--"):
    json.dump(res, open(sys.argv[1], "w"), indent=1)
print(res["table"])
