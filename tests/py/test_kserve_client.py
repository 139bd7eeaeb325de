"""`segpipe serve` as a Triton/KServe client sees it, written from the
protocol documents (KServe v2 / Open Inference Protocol and Triton's
binary tensor data, classification, statistics and model repository
extensions) with http.client alone, no segpipe code: server metadata,
binary infer both ways (equal to the JSON answer, bit for bit), JSON and
binary inputs mixed with JSON and binary outputs, output selection,
classification strings, statistics, repository index / unload / load, and
the 4xx answers of malformed binary requests."""
import http.client, json, os, struct
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import sp
from test_server import Server


def post(port, path, body, headers):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request("POST", path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", path)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data)


def infer(port, model, inputs, outputs=None, params=None):
    """inputs: [(name, array, binary?)]; outputs: [(name, {parameters})] or
    None. Returns (status, JSON answer, {output name: array or strings})."""
    req, blobs = {"inputs": []}, []
    for name, a, binary in inputs:
        e = {"name": name, "shape": list(a.shape), "datatype": "FP32"}
        if binary:
            raw = np.ascontiguousarray(a, "<f4").tobytes()
            e["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            e["data"] = a.ravel().tolist()
        req["inputs"].append(e)
    if outputs is not None:
        req["outputs"] = [{"name": n, "parameters": p} for n, p in outputs]
    if params:
        req["parameters"] = params
    head = json.dumps(req).encode()
    hdrs = {"Content-Type": "application/octet-stream" if blobs else "application/json"}
    if blobs:
        hdrs["Inference-Header-Content-Length"] = str(len(head))
    status, h, body = post(port, f"/v2/models/{model}/infer", head + b"".join(blobs), hdrs)
    if status != 200:
        return status, json.loads(body), None
    n = int(h.get("inference-header-content-length", len(body)))
    ans = json.loads(body[:n])
    pos, out = n, {}
    for o in ans["outputs"]:
        size = o.get("parameters", {}).get("binary_data_size")
        if size is None:
            out[o["name"]] = np.array(o["data"], np.float32).reshape(o["shape"]) if o["datatype"] == "FP32" \
                else o["data"]
            continue
        raw = body[pos:pos + size]
        pos += size
        if o["datatype"] == "FP32":
            out[o["name"]] = np.frombuffer(raw, "<f4").reshape(o["shape"])
        else:   # BYTES: 4-byte little-endian length, then the bytes
            items, q = [], 0
            while q < len(raw):
                (m,) = struct.unpack_from("<I", raw, q)
                items.append(raw[q + 4:q + 4 + m].decode())
                q += 4 + m
            out[o["name"]] = items
    assert pos == len(body), (pos, len(body))
    return status, ans, out


def classifier_package(tmp):
    """A tiny 'masks' package whose output is one score per class:
    [N, 4, 1, 1] = conv1x1(global average of the photo)."""
    w = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [-1, -1, -1]], np.float32).reshape(4, 3, 1, 1)
    g = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["avg"]), helper.make_node("Conv", ["avg", "w"], ["logits"])],
        "cls", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4, 1, 1])], [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    d = os.path.join(tmp, "cls")
    os.makedirs(d)
    onnx.save(m, os.path.join(d, "model.onnx"))
    man = {"format": "segpipe-model", "version": 1, "name": "cls", "task": "masks", "onnx": "model.onnx",
           "input": {"name": "input", "channels": 3, "size": [8, 8]},
           "output": {"name": "logits", "kind": "logits"},
           "preprocess": {"resize": "stretch", "scale": 1.0, "mean": [0, 0, 0], "std": [1, 1, 1]},
           "labels": {"0": "red", "1": "green", "2": "blue", "3": "dark"}, "masks": {"red": [0]}}
    json.dump(man, open(os.path.join(d, "segpipe.json"), "w"))
    return d


def test_kserve_binary_client(tmp):
    seg = os.path.join(sp.ROOT, "tests", "data", "tinyseg")
    m2f = os.path.join(sp.ROOT, "tests", "data", "tinym2f")
    srv = Server("--model", f"seg={seg}", "--model", f"m2f={m2f}", "--model", f"cls={classifier_package(tmp)}")
    try:
        port = srv.port
        code, meta = get(port, "/v2")
        for ext in ("binary_tensor_data", "classification", "statistics", "model_repository"):
            assert ext in meta["extensions"], meta
        x = np.random.default_rng(0).normal(0, 1, (2, 1, 8, 8, 8)).astype(np.float32)
        # JSON in, JSON out: the reference answer
        s, ans, ref = infer(port, "seg", [("input", x, False)])
        assert s == 200 and ref["logits"].shape == (2, 4, 8, 8, 8), ans
        # binary in, binary out: same values bit for bit, answer = header + raw bytes
        s, ans, out = infer(port, "seg", [("input", x, True)], [("logits", {"binary_data": True})])
        assert s == 200 and ans["outputs"][0]["parameters"]["binary_data_size"] == ref["logits"].nbytes
        assert np.array_equal(out["logits"], ref["logits"])
        # request-wide binary_data_output, JSON input
        s, ans, out = infer(port, "seg", [("input", x, False)], params={"binary_data_output": True})
        assert s == 200 and np.array_equal(out["logits"], ref["logits"])
        # two outputs: select one; mix one binary and one JSON
        img = np.random.default_rng(1).random((1, 3, 32, 32)).astype(np.float32)
        s, ans, full = infer(port, "m2f", [("input", img, True)])
        assert s == 200 and set(full) == {"class_queries_logits", "masks_queries_logits"}, ans
        s, ans, sel = infer(port, "m2f", [("input", img, True)], [("masks_queries_logits", {})])
        assert s == 200 and list(sel) == ["masks_queries_logits"]
        assert np.array_equal(sel["masks_queries_logits"], full["masks_queries_logits"])
        s, ans, mix = infer(port, "m2f", [("input", img, False)],
                            [("class_queries_logits", {"binary_data": True}), ("masks_queries_logits", {})])
        assert s == 200 and "data" in ans["outputs"][1] and "data" not in ans["outputs"][0]
        for k in full:
            assert np.array_equal(mix[k], full[k]), k
        # classification: top-K "score:index:label" per item, JSON and binary
        photo = np.zeros((2, 3, 8, 8), np.float32)
        photo[0, 2] = 0.75          # item 0: blue wins
        photo[1, 0] = 0.5           # item 1: red wins
        s, ans, cls = infer(port, "cls", [("input", photo, True)], [("logits", {"classification": 2})])
        assert s == 200 and ans["outputs"][0]["datatype"] == "BYTES" and ans["outputs"][0]["shape"] == [2, 2]
        assert cls["logits"][0] == "0.75:2:blue" and cls["logits"][2] == "0.5:0:red", cls
        s, ans, clsb = infer(port, "cls", [("input", photo, True)],
                             [("logits", {"classification": 2, "binary_data": True})])
        assert s == 200 and clsb["logits"] == cls["logits"]
        # statistics: counts per model
        code, st = get(port, "/v2/models/seg/stats")
        ms = st["model_stats"][0]
        assert code == 200 and ms["name"] == "seg" and ms["inference_stats"]["success"]["count"] == 3
        assert ms["execution_count"] == 3 and ms["inference_stats"]["compute_infer"]["ns"] > 0
        code, allst = get(port, "/v2/models/stats")
        assert [m["name"] for m in allst["model_stats"]] == ["seg", "m2f", "cls"]
        # repository: index, unload (503 on infer), load again
        s, _, body = post(port, "/v2/repository/index", b"{}", {"Content-Type": "application/json"})
        idx = json.loads(body)
        assert s == 200 and {m["name"]: m["state"] for m in idx} == {"seg": "READY", "m2f": "READY", "cls": "READY"}
        assert post(port, "/v2/repository/models/seg/unload", b"", {})[0] == 200
        assert infer(port, "seg", [("input", x, True)])[0] == 503
        assert json.loads(post(port, "/v2/repository/index", b"", {})[2])[0]["state"] == "UNAVAILABLE"
        assert post(port, "/v2/repository/models/seg/load", b"", {})[0] == 200
        assert infer(port, "seg", [("input", x, True)])[0] == 200
        assert post(port, "/v2/repository/models/nope/load", b"", {})[0] == 404
        # Content-Encoding: gzip in, Accept-Encoding: gzip out (the binary header length stays uncompressed)
        import gzip as gz
        raw = x.tobytes()
        head = json.dumps({"inputs": [{"name": "input", "shape": [2, 1, 8, 8, 8], "datatype": "FP32",
                                       "parameters": {"binary_data_size": len(raw)}}],
                           "parameters": {"binary_data_output": True}}).encode()
        s, h, body = post(port, "/v2/models/seg/infer", gz.compress(head + raw),
                          {"Content-Type": "application/octet-stream", "Content-Encoding": "gzip",
                           "Accept-Encoding": "gzip", "Inference-Header-Content-Length": str(len(head))})
        assert s == 200 and h.get("content-encoding") == "gzip", (s, h)
        body = gz.decompress(body)
        n = int(h["inference-header-content-length"])
        assert np.array_equal(np.frombuffer(body[n:], "<f4").reshape(ref["logits"].shape), ref["logits"])
        for bad, want in ((b"\x1f\x8bnot gzip", 400), (gz.compress(b"0" * (40 << 20)), 413),
                          (gz.compress(head + raw)[:-20], 400)):
            s, _, b = post(port, "/v2/models/seg/infer", bad, {"Content-Type": "application/json", "Content-Encoding": "gzip"})
            assert s == want, (s, b)
        s, _, b = post(port, "/v2/models/seg/infer", b"{}", {"Content-Type": "application/json", "Content-Encoding": "br"})
        assert s == 415, s
        # malformed binary requests: clear 4xx
        raw = x.tobytes()
        head = json.dumps({"inputs": [{"name": "input", "shape": [2, 1, 8, 8, 8], "datatype": "FP32",
                                       "parameters": {"binary_data_size": len(raw)}}]}).encode()
        cases = [
            (head + raw[:-4], {"Inference-Header-Content-Length": str(len(head))}, 400, "binary_data_size"),
            (head + raw + b"xx", {"Inference-Header-Content-Length": str(len(head))}, 400, "follow the JSON"),
            (head + raw, {"Inference-Header-Content-Length": str(len(head) + len(raw) + 1)}, 400, "within the body"),
            (head + raw, {"Inference-Header-Content-Length": "-3"}, 400, "header's byte count"),
            (head + raw, {"Inference-Header-Content-Length": str(len(head) - 5)}, 400, "not valid JSON"),
            (head + raw, {}, 400, "bytes after its JSON"),
        ]
        for body, h, want, text in cases:
            h = {"Content-Type": "application/octet-stream" if h else "application/json", **h}
            s, _, b = post(port, "/v2/models/seg/infer", body, h)
            assert s == want and text in json.loads(b)["error"], (h, s, b)
        nan = np.full_like(x, np.nan).tobytes()
        s, _, b = post(port, "/v2/models/seg/infer", head + nan, {"Content-Type": "application/octet-stream",
                                                                   "Inference-Header-Content-Length": str(len(head))})
        assert s == 400 and "finite" in json.loads(b)["error"]
        s, _, b = post(port, "/v2/models/seg/infer", head + raw, {"Content-Type": "application/octet-stream"})
        assert s == 415, s
        for outs, text in (([("nope", {})], "unknown output"), ([("logits", {}), ("logits", {})], "twice"),
                           ([("logits", {"classification": -1})], "classification")):
            s, err, _ = infer(port, "seg", [("input", x, True)], outs)
            assert s == 400 and text in err["error"], (outs, err)
    finally:
        rc, err = srv.stop()
    assert rc == 0, err
