"""`segpipe masks` against a numpy reference of the same definitions
(bilinear half-pixel resize into the letterboxed canvas, normalisation, the
network, bilinear class scores at each photo pixel, one argmax, class sets),
for both output forms (per-pixel logits, Mask2Former queries); one inference
per batch whatever the number of masks; EXIF orientations give the same
masks in the upright frame; bad inputs."""
import json, os, re
import numpy as np
from PIL import Image
import sp

ROOT = os.path.join(sp.ROOT, "tests", "data")


def conv2d(x, w, b=None, stride=1, pad=0):
    """x [3,H,W], w [O,3,k,k] -> [O,h,w] (float64)"""
    x = np.pad(x, [(0, 0), (pad, pad), (pad, pad)])
    O, I, k, _ = w.shape
    H = (x.shape[1] - k) // stride + 1
    W = (x.shape[2] - k) // stride + 1
    out = np.zeros((O, H, W))
    for i in range(k):
        for j in range(k):
            patch = x[:, i:i + stride * H:stride, j:j + stride * W:stride]
            out += np.einsum("oc,chw->ohw", w[:, :, i, j], patch)
    if b is not None:
        out += b[:, None, None]
    return out


def bilinear_coords(n_out, scale, n_grid):
    g = (np.arange(n_out) + 0.5) * scale - 0.5
    g = np.clip(g, 0, n_grid - 1)
    g0 = np.floor(g).astype(int)
    g1 = np.minimum(g0 + 1, n_grid - 1)
    return g0, g1, g - g0


def resize(f, ow, oh):
    """bilinear, half-pixel centres, float64: f [h, w, 3] -> [oh, ow, 3]"""
    h, w = f.shape[:2]
    y0, y1, fy = bilinear_coords(oh, h / oh, h)
    x0, x1, fx = bilinear_coords(ow, w / ow, w)
    top = f[y0][:, x0] + fx[None, :, None] * (f[y0][:, x1] - f[y0][:, x0])
    bot = f[y1][:, x0] + fx[None, :, None] * (f[y1][:, x1] - f[y1][:, x0])
    return top + fy[:, None, None] * (bot - top)


def reference(img, man, net):
    """img uint8 [H,W,3] upright -> (label map [H,W], top-2 margin)"""
    H, W, _ = img.shape
    S = (man["preprocess"]["long_side"] + 31) // 32 * 32
    s = min(S / W, S / H)
    rw, rh = max(1, min(S, round(W * s))), max(1, min(S, round(H * s)))
    res = resize(img.astype(np.float64), rw, rh)
    pre = man["preprocess"]
    norm = (res * pre["scale"] - np.array(pre["mean"])) / np.array(pre["std"])
    canvas = np.zeros((3, S, S))
    canvas[:, :rh, :rw] = norm.transpose(2, 0, 1)
    score = net(canvas)                       # [C, h, w]
    C, h, w = score.shape
    gy0, gy1, gfy = bilinear_coords(H, rh / H * h / S, h)
    gx0, gx1, gfx = bilinear_coords(W, rw / W * w / S, w)
    up = (score[:, gy0][:, :, gx0] * (1 - gfx) * (1 - gfy[:, None]) + score[:, gy0][:, :, gx1] * gfx * (1 - gfy[:, None])
          + score[:, gy1][:, :, gx0] * (1 - gfx) * gfy[:, None] + score[:, gy1][:, :, gx1] * gfx * gfy[:, None])
    srt = np.sort(up, 0)
    return up.argmax(0), srt[-1] - srt[-2]


def logits_net():
    wt = np.load(os.path.join(ROOT, "tinymask", "weights.npz"))
    return lambda x: conv2d(x, wt["w"].astype(np.float64), wt["b"], stride=2, pad=1)


def m2f_net():
    wt = np.load(os.path.join(ROOT, "tinym2f", "weights.npz"))

    def net(x):
        mk = conv2d(x, wt["wq"].astype(np.float64), stride=4)              # [Q,h,w]
        cl = conv2d(x, wt["wc"].astype(np.float64)).mean(axis=(1, 2)).reshape(mk.shape[0], -1)  # [Q,C+1]
        p = np.exp(cl - cl.max(1, keepdims=True))
        p = p / p.sum(1, keepdims=True)
        return np.einsum("qc,qhw->chw", p[:, :-1], 1 / (1 + np.exp(-mk)))
    return net


def run_masks(tmp, photos, model, *extra):
    out = os.path.join(tmp, "out")
    p = sp.run("masks", *photos, "-o", out, "--model", os.path.join(ROOT, model), *extra)
    return p, out


def load_mask(out, stem, name):
    return np.asarray(Image.open(os.path.join(out, f"{stem}.{name}.png")))


def photo(h, w, seed):
    rng = np.random.default_rng(seed)
    from scipy import ndimage
    a = ndimage.gaussian_filter(rng.random((h, w, 3)) * 255, (2, 2, 0))
    return np.clip((a - a.mean()) * 4 + 128, 0, 255).astype(np.uint8)


def check_model(tmp, model, net):
    man = json.load(open(os.path.join(ROOT, model, "segpipe.json")))
    imgs = {"a": photo(30, 50, 1), "b": photo(61, 23, 2), "c": photo(17, 17, 3)}
    paths = []
    for k, v in imgs.items():
        paths.append(os.path.join(tmp, k + ".png"))
        Image.fromarray(v).save(paths[-1])
    p, out = run_masks(tmp, paths, model, "--batch", "3")
    assert p.returncode == 0, p.stderr
    assert re.search(r"3 photo\(s\) done, 0 failed.*, 1 inference call\(s\)", p.stdout), p.stdout
    for k, v in imgs.items():
        lab, margin = reference(v, man, net)
        sure = margin > 1e-3      # float32 (segpipe) vs float64 (here): near-ties may differ
        meta = json.load(open(os.path.join(out, f"{k}.masks.json")))
        assert set(meta["masks"]) == set(man["masks"])
        for name, cls in man["masks"].items():
            want = np.isin(lab, cls)
            got = load_mask(out, k, name) == 255
            assert got.shape == want.shape
            assert (got == want).mean() >= 0.99, (model, k, name, (got == want).mean())
            # where the margin is clear, only pixels where another class wins
            # between grid points (segpipe interpolates the classes winning
            # at the 4 grid neighbours) may differ
            assert (got[sure] == want[sure]).mean() >= 0.997, (model, k, name, (got[sure] != want[sure]).sum())
            assert abs(meta["masks"][name]["area_fraction"] - got.mean()) < 1e-6
            import base64
            assert base64.b64decode(meta["masks"][name]["png_base64"]) == \
                open(os.path.join(out, f"{k}.{name}.png"), "rb").read()
            if got.any():
                ys, xs = np.nonzero(got)
                assert meta["masks"][name]["bbox"] == [xs.min(), ys.min(), xs.max(), ys.max()]


def test_masks_logits_model(tmp):
    check_model(tmp, "tinymask", logits_net())


def test_masks_mask2former_model(tmp):
    check_model(tmp, "tinym2f", m2f_net())


def test_masks_one_inference_any_number_of_masks(tmp):
    path = os.path.join(tmp, "a.png")
    Image.fromarray(photo(40, 40, 5)).save(path)
    for sel in ("wall", "wall,floor,ceiling,window"):
        p, out = run_masks(tmp, [path], "tinymask", "--masks", sel)
        assert p.returncode == 0 and "1 inference call(s)" in p.stdout
        assert len([f for f in os.listdir(out) if f.endswith(".png")]) == len(sel.split(","))
        for f in os.listdir(out):
            os.remove(os.path.join(out, f))
    p, _ = run_masks(tmp, [path], "tinymask", "--masks", "door")
    assert p.returncode == 2 and "no mask 'door'" in p.stderr


def test_masks_exif_orientations_give_upright_masks(tmp):
    upright = Image.fromarray(photo(36, 60, 6))
    # orientation o stores the inverse transform of the upright picture
    inverse = {1: None, 2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM,
               5: Image.TRANSPOSE, 6: Image.ROTATE_90, 7: Image.TRANSVERSE, 8: Image.ROTATE_270}
    paths = []
    for o, op in inverse.items():
        stored = upright if op is None else upright.transpose(op)
        ex = Image.Exif()
        ex[0x0112] = o
        paths.append(os.path.join(tmp, f"o{o}.jpg"))
        stored.save(paths[-1], quality=100, subsampling=0, exif=ex.tobytes())
    p, out = run_masks(tmp, paths, "tinymask", "--batch", "8")
    assert p.returncode == 0, p.stderr
    base = load_mask(out, "o1", "wall")
    for o in range(2, 9):
        m = load_mask(out, f"o{o}", "wall")
        assert m.shape == base.shape, o
        assert (m == base).mean() >= 0.97, (o, (m == base).mean())


def test_masks_bad_inputs(tmp):
    good = os.path.join(tmp, "good.png")
    Image.fromarray(photo(20, 20, 7)).save(good)
    bad = os.path.join(tmp, "bad.jpg")
    open(bad, "wb").write(b"\xff\xd8\xff\xe0garbage" * 10)
    empty = os.path.join(tmp, "empty.png")
    open(empty, "wb").close()
    p, out = run_masks(tmp, [good, bad, empty], "tinymask", "--batch", "3")
    assert p.returncode == 3 and "bad.jpg" in p.stderr and "empty.png" in p.stderr
    assert os.path.exists(os.path.join(out, "good.masks.json"))
    assert not os.path.exists(os.path.join(out, "bad.masks.json"))
    p, _ = run_masks(tmp, [good], "tinymask", "--max-pixels", "100")
    assert p.returncode == 3 and "limit" in p.stderr
    p, _ = run_masks(tmp, [good], "tinyseg")
    assert p.returncode == 4 and "not a masks model" in p.stderr


def test_masks_full_size_after_scaled_decode(tmp):
    """A large JPEG is decoded at 1/8 (the model needs 64 px) but the masks
    come at the photo's size, past --max-pixels too (decoded smaller, masks
    still full size, the JSON saying how it was decoded); past 4 x
    --max-pixels the photo is refused."""
    big = os.path.join(tmp, "big.jpg")
    Image.fromarray(photo(1200, 1600, 8)).save(big, quality=90)
    p, out = run_masks(tmp, [big], "tinymask", "--masks", "wall")
    assert p.returncode == 0, p.stderr
    m = load_mask(out, "big", "wall")
    assert m.shape == (1200, 1600)
    meta = json.load(open(os.path.join(out, "big.masks.json")))
    assert (meta["width"], meta["height"]) == (1600, 1200)
    p, out2 = run_masks(os.path.join(tmp, "x"), [big], "tinymask", "--masks", "wall", "--max-pixels", "500000")
    assert p.returncode == 0 and load_mask(out2, "big", "wall").shape == (1200, 1600)   # decoded at 1/2
    meta = json.load(open(os.path.join(out2, "big.masks.json")))
    meta.pop("masks")
    assert (meta["width"], meta["height"], meta["decode_scale"]) == (1600, 1200, 2), meta
    assert meta["decoded_width"] == 800 and meta["decoded_height"] == 600, meta
    p, _ = run_masks(os.path.join(tmp, "y"), [big], "tinymask", "--masks", "wall", "--max-pixels", "400000")
    assert p.returncode == 3 and "full-size results" in p.stderr


def test_demo_rooms_four_masks_end_to_end(tmp):
    """The bundled demo room model (default of `segpipe masks`) on rooms the
    renderer makes with seeds it was not trained on (training used seeds
    0..8299): IoU per mask against the rendered labels. Floors (wall, floor,
    ceiling >= 0.85, window >= 0.6) sit well under its validation IoU
    (>= 0.98) to allow for the 160-px canvas and upsampling to photo size."""
    import sys
    sys.path.insert(0, os.path.join(sp.ROOT, "tools", "train"))
    from render_rooms import render
    paths, labels = [], []
    for k, seed in enumerate((100001, 100002, 100003, 100004)):
        img, lab = render((240 + 16 * k, 320), seed=seed)
        paths.append(os.path.join(tmp, f"room{k}.jpg"))
        Image.fromarray(img).save(paths[-1], quality=92)
        labels.append(lab)
    out = os.path.join(tmp, "out")
    p = sp.run("masks", *paths, "-o", out, "--batch", "4", "--masks", "wall,floor,ceiling,window")
    assert p.returncode == 0, p.stderr
    assert "4 photo(s) done, 0 failed" in p.stdout and "1 inference call(s)" in p.stdout
    floors = {"wall": 0.85, "floor": 0.85, "ceiling": 0.85, "window": 0.6}
    for k, lab in enumerate(labels):
        for i, name in enumerate(("wall", "floor", "ceiling", "window")):
            m = load_mask(out, f"room{k}", name) == 255
            t = lab == i
            if t.sum() < 50:
                continue
            iou = (m & t).sum() / (m | t).sum()
            assert iou >= floors[name], (k, name, iou)


def test_masks_thousand_photos_on_one_command_line(tmp):
    """a 50 KB command line (1,000 paths): ONNX Runtime's start-up parser
    overflowed the stack on /proc/self/cmdline; segpipe moves long argument
    lists off the command line (re-exec with a memfd)"""
    d = os.path.join(tmp, "a_rather_long_folder_name_for_photos")
    os.makedirs(d)
    path = os.path.join(d, "photo.png")
    Image.fromarray(photo(12, 16, 9)).save(path)
    args = [path] * 1000
    assert len(" ".join(args)) > 40000
    p, out = run_masks(tmp, args, "tinymask", "--batch", "50")
    assert p.returncode == 0, (p.returncode, p.stderr[-500:])
    assert "1000 photo(s) done, 0 failed" in p.stdout and ", 20 inference call(s)" in p.stdout, p.stdout


def test_masks_refuse_colliding_outputs_and_duplicate_names(tmp):
    """a/img.jpg and b/img.jpg, or photo.jpg and photo.png, would overwrite
    each other's outputs: refused before anything is written; --masks
    wall,wall too."""
    for sub in ("a", "b"):
        os.makedirs(os.path.join(tmp, sub))
        Image.fromarray(photo(40, 50, 3)).save(os.path.join(tmp, sub, "img.jpg"))
    Image.fromarray(photo(40, 50, 4)).save(os.path.join(tmp, "photo.jpg"))
    Image.fromarray(photo(40, 50, 5)).save(os.path.join(tmp, "photo.png"))
    for pair in (["a/img.jpg", "b/img.jpg"], ["photo.jpg", "photo.png"]):
        p, out = run_masks(os.path.join(tmp, "r" + pair[0][0]), [os.path.join(tmp, f) for f in pair], "tinymask")
        assert p.returncode == 2 and "would both write" in p.stderr, p.stderr
        assert not os.path.exists(out) or not os.listdir(out)
    p, out = run_masks(os.path.join(tmp, "d"), [os.path.join(tmp, "photo.jpg")], "tinymask", "--masks", "wall,wall")
    assert p.returncode == 2 and "twice" in p.stderr, p.stderr
    p, out = run_masks(os.path.join(tmp, "e"), [os.path.join(tmp, "a", "img.jpg"), os.path.join(tmp, "photo.png")],
                       "tinymask")
    assert p.returncode == 0 and sorted(f for f in os.listdir(out) if f.endswith(".json")) == \
        ["img.masks.json", "photo.masks.json"]


def test_masks_real_photo_exif_in_png_webp_and_huge_jpeg(tmp):
    """A real photo (matplotlib's Grace Hopper sample, Debian
    python-matplotlib-data) saved as PNG with EXIF orientation 6, as WebP
    with orientation 3, and enlarged to a 3600x4200 JPEG past --max-pixels:
    the masks come in the upright frame at the photo's full size."""
    from PIL import ImageOps
    src = "/usr/share/matplotlib/mpl-data/sample_data/grace_hopper.jpg"
    im = Image.open(src).convert("RGB")
    paths, want = [], []
    for fmt, o, ext in (("PNG", 6, "png"), ("WEBP", 3, "webp")):
        ex = Image.Exif()
        ex[0x0112] = o
        p = os.path.join(tmp, f"gh_{ext}.{ext}")
        im.save(p, fmt, exif=ex.tobytes())
        paths.append(p)
        want.append(ImageOps.exif_transpose(Image.open(p)).size)
    big = os.path.join(tmp, "gh_big.jpg")
    im.resize((3600, 4200), Image.BILINEAR).save(big, quality=90)
    paths.append(big)
    want.append((3600, 4200))
    p, out = run_masks(tmp, paths, os.path.join(sp.ROOT, "models", "demo-rooms"), "--masks", "wall", "--max-pixels", "5000000")
    assert p.returncode == 0, p.stderr
    for path, (w, h) in zip(paths, want):
        stem = os.path.splitext(os.path.basename(path))[0]
        assert load_mask(out, stem, "wall").shape == (h, w), stem
    meta = json.load(open(os.path.join(out, "gh_big.masks.json")))
    assert meta["decode_scale"] > 1 and (meta["width"], meta["height"]) == (3600, 4200)


def test_masks_preview_png(tmp):
    """masks --preview: the photo where no mask is, each mask blended half
    with one colour of its own (the same colour wherever the mask is), and
    a legend swatch per mask."""
    import subprocess, sys
    room = os.path.join(tmp, "room.png")
    subprocess.run([sys.executable, os.path.join(sp.ROOT, "tools", "train", "render_rooms.py"), room, "7"], check=True,
                   capture_output=True)
    names = ["wall", "floor", "ceiling", "window"]
    p, out = run_masks(tmp, [room], os.path.join(sp.ROOT, "models", "demo-rooms"), "--masks", ",".join(names),
                       "--preview")
    assert p.returncode == 0, p.stderr
    photo_px = np.asarray(Image.open(room).convert("RGB")).astype(int)
    h, w = photo_px.shape[:2]
    prev = np.asarray(Image.open(os.path.join(out, "room.preview.png")).convert("RGB")).astype(int)
    panel = prev[8:8 + h, 8:8 + w]
    masks = [load_mask(out, "room", n) > 0 for n in names]
    none = ~np.any(masks, axis=0)
    assert np.array_equal(panel[none], photo_px[none])
    colours = []
    for m in masks:
        only = m & (np.sum(masks, axis=0) == 1)
        if only.sum() < 50:
            continue
        implied = 2 * panel[only] - photo_px[only]          # the colour blended in, up to rounding
        assert np.abs(implied - np.median(implied, 0)).max() <= 2
        colours.append(tuple(np.median(implied, 0)))
    assert len(set(colours)) == len(colours) >= 3
    x0 = 8 + w + 8 + 6
    sw = np.array([prev[8 + 16 * k + 8, x0] for k in range(len(names))])
    assert (sw.max(1) - sw.min(1) > 10).all()


def test_masks_refused_run_leaves_nothing(tmp):
    """A run refused before any photo is written (a CT model, a mask the
    model lacks) leaves no output folder and no timing table; the message
    lists the masks the model has"""
    ph = os.path.join(tmp, "p.png")
    Image.fromarray(photo(40, 30, 3)).save(ph)
    out = os.path.join(tmp, "out")
    for extra, code, text in ((["--model", os.path.join(sp.ROOT, "models", "demo-ct")], 4, "not a masks model"),
                              (["--masks", "sky"], 2, "has no mask 'sky' (it has: wall, floor, ceiling, window)")):
        p = sp.run("masks", ph, "-o", out, *extra)
        assert p.returncode == code and text in p.stderr, (p.returncode, p.stderr)
        assert not os.path.exists(out) and "photo(s) done" not in p.stdout, p.stdout
