"""The real pretrained ISNet (models/isnet, fetched by tools/fetch_isnet.sh)
on real photos shipped by Debian packages (Grace Hopper's portrait from
python-matplotlib-data, the raccoon photo from python3-scipy): segpipe's
foreground mask against an independent reference run — preprocessing and
upsampling in numpy, the network run by onnxruntime-node 1.20.1
(tools/fetch_ort_node.sh, tests/ref/ort_run.js) — must agree on >= 99.5% of
pixels, as the photo-masks issue asks."""
import json, os, subprocess
import numpy as np
from PIL import Image
import sp
from test_masks import bilinear_coords, resize

ISNET = os.path.join(sp.ROOT, "models", "isnet")
HOPPER = "/usr/share/matplotlib/mpl-data/sample_data/grace_hopper.jpg"


def photos(tmp):
    from scipy import misc
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        face = misc.face()
    p = os.path.join(tmp, "raccoon.png")
    Image.fromarray(face).save(p)
    return {"grace_hopper": HOPPER, "raccoon": p}


def reference_mask(tmp, path, man):
    img = np.asarray(Image.open(path).convert("RGB")).astype(np.float64)
    H, W = img.shape[:2]
    S = man["input"]["size"]
    pre = man["preprocess"]
    x = (resize(img, S[1], S[0]) * pre["scale"] - np.array(pre["mean"])) / np.array(pre["std"])
    fin, fout = os.path.join(tmp, "in.f32"), os.path.join(tmp, "out.f32")
    x.transpose(2, 0, 1)[None].astype(np.float32).tofile(fin)
    r = subprocess.run(["node", os.path.join(sp.ROOT, "tests", "ref", "ort_run.js"), os.path.join(ISNET, "model.onnx"),
                        fin, "1,3,%d,%d" % (S[0], S[1]), fout], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    dims = json.loads(r.stdout)["dims"]
    a = np.fromfile(fout, np.float32).reshape(dims)[0, 0].astype(np.float64)
    h, w = a.shape
    gy0, gy1, gfy = bilinear_coords(H, h / H, h)
    gx0, gx1, gfx = bilinear_coords(W, w / W, w)
    top = a[gy0][:, gx0] + gfx * (a[gy0][:, gx1] - a[gy0][:, gx0])
    bot = a[gy1][:, gx0] + gfx * (a[gy1][:, gx1] - a[gy1][:, gx0])
    return (top + gfy[:, None] * (bot - top)) > man["output"]["threshold"]


def test_isnet_real_photos_match_onnxruntime_node(tmp):
    man = json.load(open(os.path.join(ISNET, "segpipe.json")))
    ph = photos(tmp)
    out = os.path.join(tmp, "out")
    p = sp.run("masks", *ph.values(), "-o", out, "--model", ISNET)
    assert p.returncode == 0, p.stderr
    for stem, path in ph.items():
        got = np.asarray(Image.open(os.path.join(out, stem + ".foreground.png"))) > 127
        ref = reference_mask(tmp, path, man)
        assert got.shape == ref.shape
        agree = (got == ref).mean()
        frac = ref.mean()
        print("  %s: %.4f%% of pixels agree, foreground %.3f" % (stem, 100 * agree, frac))
        assert agree >= 0.995, (stem, agree)
        assert 0.05 < frac < 0.95, (stem, frac)    # a real foreground, not an empty or full mask
