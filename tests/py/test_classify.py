"""Photo classification (task "classify"): a tiny generated classifier
checked against a numpy reference of the crop, bilinear resize,
normalisation and softmax; channel order; EXIF orientation; batching;
bad inputs and manifests; the bundled demo-shapes model on fresh renders;
/v1/classify on the service."""
import json, os, sys
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
import sp

W8 = np.array([[2, -1, 0.5], [0, 1, -1], [-1, 0, 2], [1, 1, 1]], np.float32)


def package(tmp, name="cls", resize="crop", order="rgb", kind="logits", out_c=4, size=(16, 12)):
    """GlobalAveragePool -> 1x1 conv (W8) -> flatten: [N, 3, H, W] -> [N, 4]"""
    H, W = size
    g = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["avg"]), helper.make_node("Conv", ["avg", "w"], ["c"]),
         helper.make_node("Flatten", ["c"], ["scores"])],
        "cls", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, H, W])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", out_c])],
        [numpy_helper.from_array(W8[:out_c].reshape(out_c, 3, 1, 1), "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    onnx.save(m, os.path.join(d, "model.onnx"))
    json.dump({"format": "segpipe-model", "version": 1, "name": name, "task": "classify", "onnx": "model.onnx",
               "input": {"name": "input", "channels": 3, "size": [H, W]},
               "output": {"name": "scores", "kind": kind},
               "preprocess": {"resize": resize, "crop_fraction": 0.8, "channel_order": order, "scale": 1 / 255,
                              "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]},
               "labels": {"0": "red", "1": "green", "2": "blue", "3": "bright"}}, open(os.path.join(d, "segpipe.json"), "w"))
    return d


def preprocess(img, size, resize, order="rgb", frac=0.8, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)):
    """numpy: segpipe's geometry and bilinear rule (half-pixel centres) and
    normalisation -> H x W x 3 (the model's channel order)"""
    H, W = size
    h, w = img.shape[:2]
    x0, y0, cw, ch = 0, 0, w, h
    if resize == "crop":
        r = frac * min(w, h) / min(W, H)
        cround = lambda v: int(np.floor(v + 0.5))   # C's round(): halves away from zero
        cw, ch = max(1, min(w, cround(W * r))), max(1, min(h, cround(H * r)))
        x0, y0 = (w - cw) // 2, (h - ch) // 2
    src = img[y0:y0 + ch, x0:x0 + cw].astype(np.float32)
    sy = np.maximum((np.arange(H) + 0.5) * ch / H - 0.5, 0)
    sx = np.maximum((np.arange(W) + 0.5) * cw / W - 0.5, 0)
    yi, xi = sy.astype(int), sx.astype(int)
    y1, x1 = np.minimum(yi + 1, ch - 1), np.minimum(xi + 1, cw - 1)
    fy, fx = (sy - yi)[:, None, None], (sx - xi)[None, :, None]
    top = src[yi][:, xi] + fx * (src[yi][:, x1] - src[yi][:, xi])
    bot = src[y1][:, xi] + fx * (src[y1][:, x1] - src[y1][:, xi])
    v = top + fy * (bot - top)
    if order == "bgr":
        v = v[..., ::-1]
    return (v / 255 - np.array(mean)) / np.array(std)


def reference(img, size, resize, order="rgb", kind="logits"):
    """the tiny model and its probabilities on segpipe's preprocessing"""
    x = preprocess(img, size, resize, order)
    s = W8 @ x.reshape(-1, 3).mean(0)
    if kind == "sigmoid":
        return 1 / (1 + np.exp(-s))
    e = np.exp(s - s.max())
    return e / e.sum()


def photo(h, w, seed):
    rng = np.random.default_rng(seed)
    from scipy import ndimage
    return np.clip(ndimage.gaussian_filter(rng.random((h, w, 3)) * 255, (3, 3, 0)) * 3 - 250, 0, 255).astype(np.uint8)


def classify(tmp, model, paths, *extra):
    out = os.path.join(tmp, "c.json")
    p = sp.run("classify", *paths, "--model", model, "--top", "4", "--json", out, *extra)
    return p, (json.load(open(out)) if os.path.exists(out) and p.returncode in (0, 3) else None)


def probs_of(item):
    return {t["label"]: t["probability"] for t in item["top"]}


def test_classify_matches_numpy_reference(tmp):
    names = ["red", "green", "blue", "bright"]
    for resize, order, kind in (("crop", "rgb", "logits"), ("stretch", "bgr", "logits"), ("crop", "rgb", "sigmoid")):
        d = package(tmp, f"m-{resize}-{order}-{kind}", resize, order, kind)
        paths = []
        for i, (h, w) in enumerate(((60, 90), (77, 41), (16, 12))):
            paths.append(os.path.join(tmp, f"p{i}.png"))
            Image.fromarray(photo(h, w, i)).save(paths[-1])
        p, js = classify(tmp, d, paths)
        assert p.returncode == 0, p.stderr
        for path, item in zip(paths, js["photos"]):
            ref = reference(np.asarray(Image.open(path)), (16, 12), resize, order, kind)
            got = probs_of(item)
            for c, n in enumerate(names):
                assert abs(got[n] - ref[c]) < 2e-5, (resize, order, kind, n, got[n], ref[c])
            assert [t["index"] for t in item["top"]] == list(np.argsort(-ref, kind="stable")), item


def test_classify_exif_batching_and_errors(tmp):
    d = package(tmp, "m")
    img = photo(40, 64, 7)
    up = os.path.join(tmp, "up.png")
    Image.fromarray(img).save(up)
    rot = os.path.join(tmp, "rot.png")   # stored rotated, EXIF orientation 6 (rotate 90 cw to view)
    ex = Image.Exif()
    ex[0x0112] = 6
    Image.fromarray(np.rot90(img, 1)).save(rot, exif=ex.tobytes())
    bad = os.path.join(tmp, "bad.jpg")
    open(bad, "wb").write(b"\xff\xd8\xff\xe0 not a jpeg")
    p1, one = classify(tmp, d, [up, rot], "--batch", "1")
    p2, two = classify(tmp, d, [up, rot], "--batch", "2")
    assert p1.returncode == 0 and p2.returncode == 0, (p1.stderr, p2.stderr)
    assert one["photos"] == two["photos"]
    assert probs_of(one["photos"][0]) == probs_of(one["photos"][1])     # EXIF applied
    p, js = classify(tmp, d, [up, bad])
    assert p.returncode == 3 and "bad.jpg" in p.stderr
    assert "error" in js["photos"][1] and probs_of(js["photos"][0]) == probs_of(one["photos"][0])
    masks_model = os.path.join(sp.ROOT, "tests", "data", "tinymask")
    p = sp.run("classify", up, "--model", masks_model)
    assert p.returncode == 4 and "not a classify model" in p.stderr, p.stderr
    wrong = package(tmp, "wrong", out_c=3)   # 3 scores, 4 labels
    p = sp.run("model", "check", wrong)
    assert p.returncode == 4 and "one score per label" in p.stderr, p.stderr
    man = json.load(open(os.path.join(d, "segpipe.json")))
    man["preprocess"]["resize"] = "zoom"
    json.dump(man, open(os.path.join(d, "segpipe.json"), "w"))
    p = sp.run("classify", up, "--model", d)
    assert p.returncode == 4 and "preprocess.resize" in p.stderr, p.stderr


def test_demo_shapes_on_fresh_renders(tmp):
    """The bundled demo classifier on shapes rendered with seeds it never saw,
    at 3x the training size (segpipe resizes): accuracy >= 0.9 (validation
    accuracy is in models/demo-shapes/accuracy.json)."""
    sys.path.insert(0, os.path.join(sp.ROOT, "tools", "train"))
    from train_demo_shapes import LABELS, render
    paths, truth = [], []
    for s in range(40):
        img, cls = render(5_000_000 + s, size=192)
        paths.append(os.path.join(tmp, f"s{s}.png"))
        Image.fromarray(img).save(paths[-1])
        truth.append(LABELS[cls])
    p, js = classify(tmp, os.path.join(sp.ROOT, "models", "demo-shapes"), paths, "--batch", "8")
    assert p.returncode == 0, p.stderr
    acc = np.mean([item["top"][0]["label"] == t for item, t in zip(js["photos"], truth)])
    assert acc >= 0.9, acc
    assert js["photos_per_second"] > 0 and js["seconds"]["inference"] > 0


def test_classify_service(tmp):
    """POST /v1/classify: the CLI's probabilities, timings in the answer,
    dynamic batching of concurrent requests, clear 4xx."""
    import threading
    from test_server import Server, http
    d = package(tmp, "m")
    paths = []
    for i in range(4):
        paths.append(os.path.join(tmp, f"q{i}.png"))
        Image.fromarray(photo(50 + 5 * i, 70, 20 + i)).save(paths[-1])
    p, js = classify(tmp, d, paths)
    assert p.returncode == 0, p.stderr
    srv = Server("--model", f"cls={d}", "--model", f"rooms={os.path.join(sp.ROOT, 'tests', 'data', 'tinymask')}",
                 "--batch-window-ms", "300")
    try:
        answers = [None] * 4

        def one(i):
            answers[i] = http(srv.url + "/v1/classify?model=cls", open(paths[i], "rb").read(), "image/png")

        th = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        for i, (code, body, _) in enumerate(answers):
            a = json.loads(body)
            assert code == 200 and a["processing_seconds"] > 0 and "queue_wait_seconds" in a, body
            ref = probs_of(js["photos"][i])
            got = {t["label"]: t["probability"] for t in a["top"]}
            assert all(abs(got[k] - ref[k]) < 1e-12 for k in ref) and len(got) == len(ref), (got, ref)
        assert max(json.loads(b)["batch_size"] for _, b, _ in answers) > 1
        code, body, _ = http(srv.url + "/v1/classify?model=rooms", open(paths[0], "rb").read(), "image/png")
        assert code == 422 and b"not a classify model" in body
        code, body, _ = http(srv.url + "/v1/classify?model=cls", b"not a photo", "image/png")
        assert code == 415, body
    finally:
        rc, err = srv.stop()
    assert rc == 0, err


def test_export_torchvision(tmp):
    """tools/import/export_torchvision.py: a ResNet-18 with 7 classes (random
    weights); segpipe's probabilities equal PyTorch's softmax of the same
    network on the same preprocessed pixels (ImageNet crop 0.875, mean/std)."""
    import torch, torchvision
    out = os.path.join(tmp, "r18")
    p = sp.tool(os.path.join(sp.ROOT, "tools", "import", "export_torchvision.py"), "--arch", "resnet18",
                "--classes", "7", "--random-weights", "-o", out)
    assert p.returncode == 0, p.stderr
    img = photo(300, 420, 3)
    path = os.path.join(tmp, "x.png")
    Image.fromarray(img).save(path)
    p, js = classify(tmp, out, [path], "--top", "7")
    assert p.returncode == 0, p.stderr
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=7).eval()
    x = preprocess(img, (224, 224), "crop", frac=0.875, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    with torch.no_grad():
        ref = torch.softmax(net(torch.tensor(x.transpose(2, 0, 1)[None], dtype=torch.float32)), 1)[0].numpy()
    got = {t["index"]: t["probability"] for t in js["photos"][0]["top"]}
    assert all(abs(got[i] - ref[i]) < 1e-4 for i in range(7)), (got, ref)
    bad = sp.tool(os.path.join(sp.ROOT, "tools", "import", "export_torchvision.py"), "--arch", "nope",
                  "--random-weights", "-o", os.path.join(tmp, "n"))
    assert bad.returncode == 4 and "nope" in bad.stderr
