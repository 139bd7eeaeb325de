"""`segpipe serve` over real loopback HTTP: every endpoint, every error
status, a saturated queue (503 + Retry-After), --timeout (504), SIGTERM
during a request (it completes, exit 0), startup failures, and /v1/ct equal
to `segpipe ct` + `segpipe passport` on the same input."""
import json, os, signal, socket, subprocess, threading, time, gzip
import urllib.request, urllib.error
import numpy as np
import nibabel as nib
from scipy import ndimage
import sp

CT_SM = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Server:
    def __init__(self, *args, env=None):
        self.port = free_port()
        env = dict(os.environ, **(env or {}))
        if "asan" in sp.BUILD:
            env["ASAN_OPTIONS"] = "detect_leaks=1:halt_on_error=1"
            env["LSAN_OPTIONS"] = "suppressions=" + os.path.join(sp.ROOT, "tests", "lsan.supp")
            env.pop("LD_PRELOAD", None)
        self.p = subprocess.Popen([sp.SEGPIPE, "serve", "--port", str(self.port), *map(str, args)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.p.stdout.readline()
        if "ready on" not in line:
            self.p.kill()
            raise AssertionError("server did not start: " + line + self.p.stderr.read())
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        rc = self.p.wait(timeout=60)
        err = self.p.stderr.read()
        return rc, err


def http(url, data=None, ctype=None, method=None, timeout=120):
    req = urllib.request.Request(url, data=data, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def jget(url, **kw):
    code, body, _ = http(url, **kw)
    return code, json.loads(body)


def test_server_endpoints(tmp):
    s = Server("--model", f"demo={sp.DEMO}", "--model", f"tiny={sp.TINYSEG}", "--workers", "2")
    try:
        assert jget(s.url + "/v2/health/live") == (200, {"live": True})
        assert jget(s.url + "/v2/health/ready") == (200, {"ready": True})
        code, meta = jget(s.url + "/v2")
        assert code == 200 and meta["name"] == "segpipe"
        code, m = jget(s.url + "/v2/models/tiny")
        assert code == 200 and m["inputs"][0]["name"] == "input" and m["outputs"][0]["shape"] == [-1, 4, 8, 8, 8]
        assert jget(s.url + "/v2/models/tiny/ready") == (200, {"ready": True})
        code, e = jget(s.url + "/v2/models/nope")
        assert code == 404 and isinstance(e["error"], str)   # KServe v2: the error is a string
        assert jget(s.url + "/nothing/here")[0] == 404
        # KServe infer: the tiny conv against numpy
        x = np.random.default_rng(1).normal(size=(1, 1, 8, 8, 8)).astype(np.float32)
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8, 8], "datatype": "FP32",
                                       "data": x.ravel().tolist()}]}).encode()
        code, r = jget(s.url + "/v2/models/tiny/infer", data=body, ctype="application/json")
        assert code == 200 and r["outputs"][0]["shape"] == [1, 4, 8, 8, 8]
        w = np.load(os.path.join(sp.TINYSEG, "weights.npz"))
        ref = np.stack([ndimage.correlate(x[0, 0].astype(np.float64), w["w"][c, 0], mode="constant") + w["b"][c]
                        for c in range(4)])
        got = np.array(r["outputs"][0]["data"]).reshape(4, 8, 8, 8)
        assert np.abs(got - ref).max() < 1e-4
        code, e = jget(s.url + "/v2/models/tiny/infer", data=b'{"inputs": []}', ctype="application/json")
        assert code == 400 and "input" in e["error"]
        assert jget(s.url + "/v2/models/tiny/infer", data=body, ctype="text/plain")[0] == 415
        # /v1/ct: equal to the CLI (segpipe ct, then segpipe passport on its labels)
        raw = open(CT_SM, "rb").read()
        code, r = jget(s.url + "/v1/ct?model=demo&labels=1", data=raw, ctype="application/octet-stream")
        assert code == 200, r
        assert r["processing_seconds"] > 0 and "queue_wait_seconds" in r and r["seconds"]["inference"] > 0
        out = sp.ct_run(CT_SM)   # `segpipe ct`, once per test run
        cli_pass = json.load(open(out.replace(".nii.gz", ".passport.json")))
        sp.run("passport", "--ct", CT_SM, "--labels", out, "--label-map",
               os.path.join(sp.CTDIR, "total_v2_labels.json"), "-o", os.path.join(tmp, "p.json"), "-q", check=True)
        pas = json.load(open(os.path.join(tmp, "p.json")))
        assert r["passport"]["structures"] == pas["structures"] == cli_pass["structures"]
        code, lab, hdr = http(s.url + r["labels_url"])
        assert code == 200 and hdr["Content-Type"] == "application/gzip"
        open(os.path.join(tmp, "srv.nii.gz"), "wb").write(lab)
        a = np.asanyarray(nib.load(os.path.join(tmp, "srv.nii.gz")).dataobj)
        b = np.asanyarray(nib.load(out).dataobj)
        assert np.array_equal(a, b)
        assert http(s.url + "/v1/results/0123/labels")[0] == 404
        # status and metrics show the traffic
        code, st = jget(s.url + "/v1/status")
        assert code == 200 and st["endpoints"]["ct"]["served"] == 1 and st["endpoints"]["infer"]["served"] == 1
        assert st["endpoints"]["infer"]["failed"] == 2 and st["rss_bytes"] > 0, st
        assert [m["state"] for m in st["models"]] == ["ready", "ready"]
        code, met, hdr = http(s.url + "/metrics")
        met = met.decode()
        assert code == 200 and 'segpipe_requests_total{endpoint="ct",outcome="ok"} 1' in met
        assert 'segpipe_model_ready{model="demo"} 1' in met and "segpipe_request_seconds{" in met
    finally:
        rc, err = s.stop()
    assert rc == 0, err


def test_server_errors(tmp):
    raw = open(CT_SM, "rb").read()
    s = Server("--model", f"demo={sp.DEMO}", "--max-body", str(len(raw) - 1))
    try:
        code, e = jget(s.url + "/v1/ct?model=demo", data=raw, ctype="application/octet-stream")
        assert code == 413 and e["error"]["code"] == 413
        assert jget(s.url + "/v1/ct?model=demo", data=raw[:1000], ctype="text/plain")[0] == 415
        code, e = jget(s.url + "/v1/ct?model=demo", data=b"\x00" * 5000, ctype="application/octet-stream")
        assert code == 422 and "NIfTI" in e["error"]["message"]
        # a small .nii.gz that would expand past the voxel limit: refused from its header
        hdr = bytearray(gzip.decompress(raw)[:352])
        hdr[42:48] = np.array([30000, 30000, 30000], "<i2").tobytes()
        code, e = jget(s.url + "/v1/ct?model=demo", data=gzip.compress(bytes(hdr) + b"\0" * 100),
                       ctype="application/octet-stream")
        assert code == 422 and "over the limit" in e["error"]["message"]
        assert jget(s.url + "/v1/ct?model=nope", data=raw[:100])[0] == 404
        assert jget(s.url + "/v1/ct?model=demo", method="GET")[0] == 405
    finally:
        rc, _ = s.stop()
    assert rc == 0


def test_server_saturation_timeout_sigterm(tmp):
    """One worker, a queue of one: of four requests sent within 30 ms (one
    tile each, ~0.3 s of work) at least one gets 503 with Retry-After; a
    SIGTERM during a 9-tile request lets it complete, then exit 0; a run
    over --timeout gets 504."""
    raw = open(CT_SM, "rb").read()
    small = open(sp.one_tile_ct(), "rb").read()
    s = Server("--model", f"demo={sp.DEMO}", "--workers", "1", "--queue", "1", "--threads", "1")
    results = []
    lock = threading.Lock()

    def one(data=raw):
        r = http(s.url + "/v1/ct?model=demo", data=data, ctype="application/octet-stream")
        with lock:
            results.append(r)

    try:
        th = [threading.Thread(target=one, args=(small,)) for _ in range(4)]
        for t in th:
            t.start()
            time.sleep(0.01)
        for t in th:
            t.join()
        codes = sorted(r[0] for r in results)
        assert codes.count(200) >= 2 and codes.count(503) >= 1, codes
        busy = [r for r in results if r[0] == 503][0]
        assert busy[2].get("Retry-After") and json.loads(busy[1])["error"]["code"] == 503
        # SIGTERM while a request runs: it still completes, then exit 0
        results.clear()
        t = threading.Thread(target=one)
        t.start()
        time.sleep(0.5)
        s.p.send_signal(signal.SIGTERM)
        t.join()
        assert results[0][0] == 200
        assert s.p.wait(timeout=60) == 0
    finally:
        s.stop()
    s = Server("--model", f"demo={sp.DEMO}", "--timeout", "0.3", "--threads", "1")
    try:
        code, e = jget(s.url + "/v1/ct?model=demo", data=raw, ctype="application/octet-stream")
        assert code == 504 and e["error"]["code"] == 504
    finally:
        rc, _ = s.stop()
    assert rc == 0


def test_server_startup_failures(tmp):
    r = subprocess.run([sp.SEGPIPE, "serve", "--model", f"x={tmp}/missing", "--port", str(free_port())],
                       capture_output=True, text=True, timeout=60, env=sp.run_env())
    assert r.returncode == 4 and "model 'x'" in r.stderr
    r = subprocess.run([sp.SEGPIPE, "serve", "--port", str(free_port())], capture_output=True, text=True)
    assert r.returncode == 2
    r = subprocess.run([sp.SEGPIPE, "serve", "--model", f"a={sp.TINYSEG}", "--model", f"a={sp.TINYSEG}",
                        "--port", str(free_port())], capture_output=True, text=True, timeout=60, env=sp.run_env())
    assert r.returncode == 2 and "twice" in r.stderr


def test_server_segment_batch(tmp):
    """/v1/segment-batch: the masks JSON of `segpipe masks`; concurrent
    requests inside --batch-window-ms share one inference; errors."""
    from PIL import Image
    import io as _io
    rng = np.random.default_rng(9)
    photos = []
    for k in range(6):
        b = _io.BytesIO()
        Image.fromarray((rng.random((30 + k, 40, 3)) * 255).astype(np.uint8)).save(b, "PNG")
        photos.append(b.getvalue())
    s = Server("--model", f"rooms={os.path.join(sp.ROOT, 'tests', 'data', 'tinymask')}", "--workers", "1",
               "--batch-window-ms", "300", "--max-batch", "8", "--queue", "16")
    results = [None] * 6
    try:
        def one(k):
            results[k] = jget(s.url + "/v1/segment-batch?model=rooms&masks=wall,floor", data=photos[k],
                              ctype="application/octet-stream")
        th = [threading.Thread(target=one, args=(k,)) for k in range(6)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        assert all(r[0] == 200 for r in results), [r[0] for r in results]
        assert max(r[1]["batch_size"] for r in results) >= 2
        assert set(results[0][1]["masks"]) == {"wall", "floor"}
        # same masks as the CLI on the same photo
        p0 = os.path.join(tmp, "p0.png")
        open(p0, "wb").write(photos[0])
        sp.run("masks", p0, "-o", os.path.join(tmp, "cli"), "--model",
               os.path.join(sp.ROOT, "tests", "data", "tinymask"), "--masks", "wall,floor", "-q", check=True)
        cli = json.load(open(os.path.join(tmp, "cli", "p0.masks.json")))
        for name in ("wall", "floor"):
            assert results[0][1]["masks"][name]["png_base64"] == cli["masks"][name]["png_base64"]
            assert results[0][1]["masks"][name]["bbox"] == cli["masks"][name]["bbox"]
        assert jget(s.url + "/v1/segment-batch?model=rooms", data=b"GIF89a....", ctype="image/gif")[0] == 415
        bad = b"\x89PNG\r\n\x1a\n" + b"\0" * 100
        assert jget(s.url + "/v1/segment-batch?model=rooms", data=bad)[0] == 422
        assert jget(s.url + "/v1/segment-batch?model=rooms&masks=door", data=photos[0])[0] == 422
        code, e = jget(s.url + "/v1/segment-batch?model=rooms&masks=wall,floor,wall", data=photos[0])
        assert code == 422 and "twice" in e["error"]["message"]
        assert jget(s.url + "/v1/segment-batch?model=nope", data=photos[0])[0] == 404
    finally:
        rc, err = s.stop()
    assert rc == 0, err


def test_server_and_cli_decode_large_jpegs_alike(tmp):
    """One decoding rule for the CLI and the service: a 2400x1800 JPEG gives
    byte-identical masks both ways (the service used to decode at another
    scale and 5-7% of the wall pixels differed); with --max-pixels the
    service decodes it smaller but still answers full-size masks and says
    how it decoded."""
    from PIL import Image
    sys_path = os.path.join(sp.ROOT, "tools", "train")
    import sys
    sys.path.insert(0, sys_path)
    from render_rooms import render
    img, _ = render((1800, 2400), seed=424242)
    big = os.path.join(tmp, "big.jpg")
    Image.fromarray(img).save(big, quality=92)
    out = os.path.join(tmp, "out")
    sp.run("masks", big, "-o", out, "--masks", "wall,floor", check=True)
    cli = json.load(open(os.path.join(out, "big.masks.json")))
    s = Server("--model", f"rooms={os.path.join(sp.ROOT, 'models', 'demo-rooms')}", "--max-pixels", "2000000")
    s2 = Server("--model", f"rooms={os.path.join(sp.ROOT, 'models', 'demo-rooms')}")
    try:
        raw = open(big, "rb").read()
        code, r = jget(s2.url + "/v1/segment-batch?model=rooms&masks=wall,floor", data=raw,
                       ctype="application/octet-stream")
        assert code == 200
        for name in ("wall", "floor"):
            assert r["masks"][name]["png_base64"] == cli["masks"][name]["png_base64"], name
        assert (r["decode_scale"], r["decoded_width"]) == (cli["decode_scale"], cli["decoded_width"])
        code, r = jget(s.url + "/v1/segment-batch?model=rooms&masks=wall", data=raw, ctype="application/octet-stream")
        assert code == 200 and (r["width"], r["height"]) == (2400, 1800) and r["decode_scale"] == 2, \
            {k: v for k, v in r.items() if k != "masks"}
    finally:
        s.stop()
        s2.stop()
