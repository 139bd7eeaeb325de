#!/usr/bin/env python3
"""Procedural room renderer for segpipe's demo room model (and its tests).

Each sample is a one-point-perspective room seen from inside: back wall,
side walls, floor, ceiling, windows (on the back and side walls) and box
furniture, with random textures (noise, wood-like stripes, tiles), lighting
gradients, colours, camera offset and field of view. Returns an RGB image
(uint8 H x W x 3) and labels (uint8 H x W):

  0 wall, 1 floor, 2 ceiling, 3 window, 4 other (furniture)

Uses numpy and Pillow only (Debian python3-numpy, python3-pil; both are on
the GPU machine too).
"""
import numpy as np
from PIL import Image, ImageDraw

CLASSES = {0: "wall", 1: "floor", 2: "ceiling", 3: "window", 4: "other"}


def _quad_point(q, u, v):
    """bilinear point inside quad q = [p00, p10, p11, p01] at (u, v)"""
    p00, p10, p11, p01 = [np.array(p, float) for p in q]
    return tuple((1 - v) * ((1 - u) * p00 + u * p10) + v * ((1 - u) * p01 + u * p11))


def _texture(rng, h, w, base, kind):
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    t = np.zeros((h, w), np.float32)
    if kind == 0:      # plaster noise
        t = rng.normal(0, 6, (h, w)).astype(np.float32)
    elif kind == 1:    # stripes (wood, panels)
        f = rng.uniform(0.05, 0.3)
        ang = rng.uniform(0, np.pi)
        t = 14 * np.sin(f * (x * np.cos(ang) + y * np.sin(ang))) + rng.normal(0, 4, (h, w))
    else:              # tiles
        s = rng.integers(6, 20)
        t = 18 * (((x // s) + (y // s)) % 2) - 9 + rng.normal(0, 3, (h, w))
    return np.clip(np.array(base, np.float32)[None, None, :] + t[..., None], 0, 255)


def render(size=(128, 128), seed=None, rng=None):
    rng = rng or np.random.default_rng(seed)
    H, W = size
    vx = W * rng.uniform(0.3, 0.7)
    vy = H * rng.uniform(0.3, 0.7)
    bw = W * rng.uniform(0.25, 0.6)
    bh = H * rng.uniform(0.25, 0.6)
    x0, x1 = vx - bw * rng.uniform(0.3, 0.7), 0
    x1 = x0 + bw
    y0 = vy - bh * rng.uniform(0.3, 0.7)
    y1 = y0 + bh
    x0, x1 = np.clip([x0, x1], W * 0.05, W * 0.95)
    y0, y1 = np.clip([y0, y1], H * 0.05, H * 0.95)
    regions = {   # polygon, class
        "ceiling": ([(0, 0), (W, 0), (x1, y0), (x0, y0)], 2),
        "floor": ([(0, H), (W, H), (x1, y1), (x0, y1)], 1),
        "left": ([(0, 0), (x0, y0), (x0, y1), (0, H)], 0),
        "right": ([(W, 0), (x1, y0), (x1, y1), (W, H)], 0),
        "back": ([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], 0),
    }
    img = np.zeros((H, W, 3), np.float32)
    lab = Image.new("L", (W, H), 0)
    dl = ImageDraw.Draw(lab)
    wall_col = rng.uniform(90, 235, 3)
    for name, (poly, cls) in regions.items():
        m = Image.new("L", (W, H), 0)
        ImageDraw.Draw(m).polygon(poly, fill=1)
        mask = np.asarray(m, bool)
        if name in ("left", "right", "back"):
            base = wall_col * rng.uniform(0.75, 1.0)
            kind = rng.choice([0, 0, 1])
        elif name == "floor":
            base = rng.uniform(40, 200, 3)
            kind = rng.choice([1, 2])
        else:
            base = rng.uniform(170, 250, 3)
            kind = 0
        tex = _texture(rng, H, W, base, kind)
        img[mask] = tex[mask]
        dl.polygon(poly, fill=cls)
    # windows: on the back wall and on side walls (quads in wall coordinates)
    for _ in range(rng.integers(0, 4)):
        wall = rng.choice(["back", "left", "right"])
        q = regions[wall][0]
        if wall == "right":
            q = [q[1], q[0], q[3], q[2]]
        elif wall == "back":
            q = [q[0], q[1], q[2], q[3]]
        else:
            q = [q[0], q[1], q[2], q[3]]
        u0 = rng.uniform(0.1, 0.6)
        v0 = rng.uniform(0.1, 0.5)
        u1 = min(0.95, u0 + rng.uniform(0.15, 0.35))
        v1 = min(0.9, v0 + rng.uniform(0.2, 0.45))
        if wall == "back":
            poly = [_quad_point([q[0], q[1], q[2], q[3]], u, v) for u, v in ((u0, v0), (u1, v0), (u1, v1), (u0, v1))]
        else:   # side wall quad: [outer-top, inner-top, inner-bottom, outer-bottom]
            qq = [q[0], q[1], q[2], q[3]]
            poly = [_quad_point(qq, u, v) for u, v in ((u0, v0), (u1, v0), (u1, v1), (u0, v1))]
        m = Image.new("L", (W, H), 0)
        ImageDraw.Draw(m).polygon(poly, fill=1)
        mask = np.asarray(m, bool)
        sky = np.array([rng.uniform(120, 200), rng.uniform(170, 230), 255.0])
        yy = np.mgrid[0:H, 0:W][0][..., None] / H
        win = np.clip(sky[None, None, :] * (1.05 - 0.3 * yy) + rng.normal(0, 5, (H, W, 1)), 0, 255)
        img[mask] = win[mask]
        frame = tuple(int(c) for c in rng.uniform(200, 255, 3))
        pil = Image.fromarray(img.astype(np.uint8))
        ImageDraw.Draw(pil).polygon(poly, outline=frame)
        img = np.asarray(pil, np.float32).copy()
        dl.polygon(poly, fill=3)
    # furniture boxes standing on the floor
    for _ in range(rng.integers(0, 3)):
        bx = rng.uniform(0, W * 0.8)
        bwid = rng.uniform(W * 0.1, W * 0.35)
        by1 = rng.uniform(min(max(y1, H * 0.55), H - 1), H)
        bhei = rng.uniform(H * 0.1, H * 0.35)
        poly = [(bx, by1 - bhei), (bx + bwid, by1 - bhei), (bx + bwid, by1), (bx, by1)]
        m = Image.new("L", (W, H), 0)
        ImageDraw.Draw(m).polygon(poly, fill=1)
        mask = np.asarray(m, bool)
        img[mask] = _texture(rng, H, W, rng.uniform(30, 220, 3), rng.choice([0, 1]))[mask]
        dl.polygon(poly, fill=4)
    # lighting: a soft light falloff and global exposure
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    lx, ly = rng.uniform(0, W), rng.uniform(0, H * 0.5)
    light = 1.0 - rng.uniform(0.1, 0.45) * np.sqrt((xx - lx) ** 2 + (yy - ly) ** 2) / np.hypot(W, H)
    img = img * light[..., None] * rng.uniform(0.7, 1.15)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), np.asarray(lab, np.uint8).copy()


if __name__ == "__main__":
    import sys
    out = sys.argv[1] if len(sys.argv) > 1 else "room.png"
    im, lb = render((256, 320), seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    Image.fromarray(im).save(out)
    Image.fromarray((lb * 60).astype(np.uint8)).save(out.replace(".png", "_labels.png"))
