#!/usr/bin/env python3
"""RSS over 1,000 photos (the photo-masks issue: "RSS flat over 1,000
photos"). Two long runs, RSS sampled from /proc every 100 photos:

1. the service: 1,000 POST /v1/segment-batch (demo-rooms, four masks) with
   photos of mixed sizes (640x480 ... 4000x3000 JPEG), 2 concurrent clients;
2. the CLI: one `segpipe masks` process over 1,000 photo files, --batch 8.

  bench/masks_rss.py [OUT.json] [--photos N]
"""
import http.client, io, json, os, signal, subprocess, sys, tempfile, threading, time
from PIL import Image
from serve_util import ROOT as root, start_server

sys.path.insert(0, os.path.join(root, "tools", "train"))
from render_rooms import render

N = int(sys.argv[sys.argv.index("--photos") + 1]) if "--photos" in sys.argv else 1000
sizes = [(480, 640), (768, 1024), (1080, 1920), (3000, 4000), (600, 400), (1200, 900)]
photos = []
for k, (h, w) in enumerate(sizes * 2):
    img, _ = render((min(h, 750), min(w, 1000)), seed=300000 + k)
    b = io.BytesIO()
    Image.fromarray(img).resize((w, h), Image.BILINEAR).save(b, "JPEG", quality=88)
    photos.append(b.getvalue())


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def service():
    p, port = start_server("--model", "rooms=" + os.path.join(root, "models", "demo-rooms"), "--workers", "1",
                           "--queue", "16")
    samples, done = [], [0]
    lock = threading.Lock()

    def client(k):
        c = http.client.HTTPConnection("127.0.0.1", port)
        while True:
            with lock:
                i = done[0]
                if i >= N:
                    return
                done[0] += 1
                if i % 100 == 0:
                    samples.append((i, rss_kb(p.pid)))
            c.request("POST", "/v1/segment-batch?model=rooms&masks=wall,floor,ceiling,window", photos[i % len(photos)],
                      {"Content-Type": "application/octet-stream"})
            r = c.getresponse()
            body = r.read()
            assert r.status == 200, body[:200]

    t0 = time.time()
    th = [threading.Thread(target=client, args=(k,)) for k in range(2)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    samples.append((N, rss_kb(p.pid)))
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=30)
    return {"photos": N, "seconds": time.time() - t0, "rss_mb": [(i, kb / 1024) for i, kb in samples]}


def cli():
    with tempfile.TemporaryDirectory(prefix="segpipe-rss-") as d:
        paths = []
        for k in range(N):
            path = os.path.join(d, "p%04d.jpg" % k)
            open(path, "wb").write(photos[k % len(photos)])
            paths.append(path)
        out = os.path.join(d, "out")
        t0 = time.time()
        p = subprocess.Popen([os.path.join(root, "build", "segpipe"), "masks", *paths, "-o", out, "--batch", "8"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        samples = []
        while p.poll() is None:
            try:
                n = len(os.listdir(out)) // 5 if os.path.isdir(out) else 0
                samples.append((n, rss_kb(p.pid) / 1024))
            except (FileNotFoundError, ProcessLookupError):
                pass
            time.sleep(0.25)
        _, err = p.communicate()
        assert p.returncode == 0, (p.returncode, err)
        # one sample per 100 photos written
        keep, nxt = [], 0
        for n, mb in samples:
            if n >= nxt:
                keep.append((n, mb))
                nxt = (n // 100 + 1) * 100
        return {"photos": N, "seconds": time.time() - t0, "rss_mb": keep}


res = {"service": service(), "cli": cli()}
for k, r in res.items():
    mb = [m for _, m in r["rss_mb"]]
    first = [m for n, m in r["rss_mb"] if n >= 100][:1] or mb[:1]
    r["growth_after_100_mb"] = max(mb) - first[0]
    print(f"{k}: {r['photos']} photos in {r['seconds']:.0f} s; RSS MB by photos done:",
          ", ".join(f"{n}: {m:.0f}" for n, m in r["rss_mb"]), f"; growth after 100 photos {r['growth_after_100_mb']:.1f} MB")
if len(sys.argv) > 1 and not sys.argv[1].startswith("--"):
    json.dump(res, open(sys.argv[1], "w"), indent=1)
