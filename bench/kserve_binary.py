#!/usr/bin/env python3
"""KServe infer answers, JSON tensors vs Triton's binary tensor extension,
over loopback (docs/service.md): the demo CT model on one 1x1x64x64x32
patch (118 x 131,072 logits) and the demo rooms model on one 1x3x160x160
photo tensor. Answer bytes, client-side seconds (mean of 3 after one
warm-up) and the server's RSS after each kind.

  python3 bench/kserve_binary.py [OUT.json]
"""
import http.client, json, os, subprocess, sys, time
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from serve_util import start_server  # noqa: E402


def infer(port, model, x, binary):
    req = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32"}]}
    if binary:
        raw = x.astype("<f4").tobytes()
        req["inputs"][0]["parameters"] = {"binary_data_size": len(raw)}
        req["parameters"] = {"binary_data_output": True}
        head = json.dumps(req).encode()
        body, hdrs = head + raw, {"Content-Type": "application/octet-stream",
                                  "Inference-Header-Content-Length": str(len(head))}
    else:
        req["inputs"][0]["data"] = x.ravel().tolist()
        body, hdrs = json.dumps(req).encode(), {"Content-Type": "application/json"}
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    c.request("POST", f"/v2/models/{model}/infer", body=body, headers=hdrs)
    r = c.getresponse()
    data = r.read()
    sec = time.perf_counter() - t0
    c.close()
    assert r.status == 200, data[:300]
    if binary:
        n = int(r.getheader("Inference-Header-Content-Length"))
        out = np.frombuffer(data[n:], "<f4")
    else:
        out = np.array(json.loads(data)["outputs"][0]["data"], np.float32).ravel()
    return sec, len(data), out


def status(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", "/v1/status")
    s = json.loads(c.getresponse().read())
    c.close()
    return s


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else None
    models = os.path.join(ROOT, "models")
    srv, port = start_server("--model", f"ct={models}/demo-ct", "--model", f"rooms={models}/demo-rooms",
                             "--max-json-body", str(64 << 20))
    rows = []
    try:
        rng = np.random.default_rng(0)
        for model, shape in (("ct", (1, 1, 64, 64, 32)), ("rooms", (1, 3, 160, 160))):
            x = rng.normal(0, 1, shape).astype(np.float32)
            res = {}
            for binary in (False, True):
                infer(port, model, x, binary)     # warm-up
                runs = [infer(port, model, x, binary) for _ in range(3)]
                res[binary] = runs[-1][2]
                rows.append({"model": model, "kind": "binary" if binary else "json",
                             "answer_bytes": runs[-1][1], "seconds": sum(r[0] for r in runs) / 3,
                             "server_peak_rss_bytes": status(port).get("peak_rss_bytes")})
            assert np.array_equal(res[False], res[True]), "JSON and binary answers differ"
    finally:
        srv.terminate()
        srv.wait(30)
    print("| model | tensor | answer | bytes | seconds (mean of 3) | server peak RSS (MB) |")
    print("|---|---|---|---:|---:|---:|")
    for r in rows:
        t = "1x118x64x64x32" if r["model"] == "ct" else "1x4x160x160"
        print(f"| {r['model']} | {t} | {r['kind']} | {r['answer_bytes']:,} | {r['seconds']:.3f} | "
              f"{(r['server_peak_rss_bytes'] or 0) / 1e6:.0f} |")
    if out:
        json.dump(rows, open(out, "w"), indent=1)


if __name__ == "__main__":
    main()
