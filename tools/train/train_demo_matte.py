#!/usr/bin/env python3
"""Train segpipe's demo foreground (matting) model: a small 2D U-Net that
separates a person-like figure from the background, for `segpipe video`'s
test suite and benchmarks (ISNet is the real model; this one is small enough
for 2 CPU cores). Synthetic data: figures (head, neck, torso, arms, with
clothing textures and soft light) drawn over procedurally rendered rooms
(tools/train/render_rooms.py). A demonstration model, not a product. Run on the
GPU machine:

  python3 tools/train/train_demo_matte.py -o OUT [--iters 3000]

Writes OUT/model.onnx (input [N, 3, 128, 128], output foreground
probability [N, 1, 128, 128] after a sigmoid), OUT/segpipe.json,
OUT/train_log.csv, OUT/iou.json. Training mimics segpipe's preprocessing:
the frame (or ROI) stretched to 128 x 128, ImageNet normalisation.
"""
import os, sys, time
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "import"))
from render_rooms import render as render_room, _texture
from segpipe_nets import UNet
from train_util import setup, train, save

S = 128
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def figure(size, rng, bg=None, cx=None):
    """RGB frame (uint8 H x W x 3) and foreground mask (uint8 0/1). bg: a
    background to draw on (else a rendered room); cx: the figure's centre x."""
    H, W = size
    if bg is None:
        bg, _ = render_room((H, W), rng=rng)
    m = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(m)
    cx = W * rng.uniform(0.25, 0.75) if cx is None else cx
    hy = H * rng.uniform(0.15, 0.45)          # head centre
    r = min(H, W) * rng.uniform(0.07, 0.16)   # head radius
    d.ellipse([cx - r * 0.85, hy - r, cx + r * 0.85, hy + r], fill=1)
    d.rectangle([cx - r * 0.35, hy + r * 0.7, cx + r * 0.35, hy + r * 1.4], fill=1)
    sw = r * rng.uniform(1.8, 2.6)             # shoulders half-width
    top = hy + r * 1.3
    d.polygon([(cx - sw, top + r * 0.4), (cx + sw, top + r * 0.4), (cx + sw * 1.1, H + 2),
               (cx - sw * 1.1, H + 2)], fill=1)
    d.ellipse([cx - sw, top, cx - sw + 2 * r * 0.8, top + r * 0.8], fill=1)
    d.ellipse([cx + sw - 2 * r * 0.8, top, cx + sw, top + r * 0.8], fill=1)
    if rng.random() < 0.5:                     # a raised arm
        s = 1 if rng.random() < 0.5 else -1
        ax = cx + s * sw
        d.line([(ax, top + r * 0.5), (ax + s * r * rng.uniform(0.5, 2), top - r * rng.uniform(0.5, 2.5))],
               fill=1, width=max(2, int(r * 0.6)))
    mask = np.asarray(m, np.uint8)
    skin = rng.uniform([150, 100, 70], [255, 220, 190])
    cloth = _texture(rng, H, W, rng.uniform(20, 230, 3), rng.choice([0, 1, 2]))
    yy = np.mgrid[0:H, 0:W][0]
    body = np.where((yy < hy + r * 1.3)[..., None], skin[None, None, :] + rng.normal(0, 5, (H, W, 3)), cloth)
    shade = 1 - 0.3 * np.clip((np.mgrid[0:H, 0:W][1] - cx) / (2 * sw), -1, 1)[..., None] * rng.uniform(-1, 1)
    body = np.clip(body * shade, 0, 255)
    # soft edge, as a camera would see it
    alpha = np.asarray(Image.fromarray(mask * 255).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2))),
                       np.float32)[..., None] / 255
    img = alpha * body + (1 - alpha) * bg.astype(np.float32)
    img = np.clip(img * rng.uniform(0.75, 1.15) + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    return img, mask


def sample(seed):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 2.0)                  # frame aspect w / h, stretched to S x S
    h, w = (S, int(S * a)) if a < 1 else (int(S / a), S)
    img, mask = figure((h, w), rng)
    img = np.asarray(Image.fromarray(img).resize((S, S), Image.BILINEAR), np.float32)
    mask = np.asarray(Image.fromarray(mask * 255).resize((S, S), Image.BILINEAR), np.float32) / 255
    x = ((img / 255 - MEAN) / STD).transpose(2, 0, 1)
    return x.astype(np.float32), mask.astype(np.float32)


class Matte(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = UNet("PlainConvUNet", 3, 1, [8, 16, 32, 64], [[3, 3]] * 4, [[1, 1], [2, 2], [2, 2], [2, 2]],
                        [1, 1, 2, 2], [1, 1, 1], dim=2)

    def forward(self, x):
        return torch.sigmoid(self.net(x))


def main():
    a, dev, t0, data = setup(sample)
    X = torch.from_numpy(np.stack([d[0] for d in data[:a.n]])).to(dev)
    Y = torch.from_numpy(np.stack([d[1] for d in data[:a.n]])[:, None]).to(dev)
    Xv = torch.from_numpy(np.stack([d[0] for d in data[a.n:]])).to(dev)
    Yv = np.stack([d[1] for d in data[a.n:]]) > 0.5
    print(f"rendered {len(data)} frames in {time.time() - t0:.0f} s", flush=True)
    net = Matte().to(dev)

    def loss_fn(p, y):
        p = p.clamp(1e-6, 1 - 1e-6)
        return F.binary_cross_entropy(p, y) + (1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1))

    log = train(net, X, Y, a.iters, loss_fn, t0)
    net.eval()
    with torch.no_grad():
        pv = torch.cat([net(Xv[i:i + 64]) for i in range(0, len(Xv), 64)]).cpu().numpy()[:, 0] > 0.5
    iou = {"foreground": round(float((pv & Yv).sum() / max((pv | Yv).sum(), 1)), 4)}
    print("validation IoU (300 new frames):", iou, flush=True)
    man = {"format": "segpipe-model", "version": 1, "name": "demo-matte", "task": "masks",
           "description": "Demonstration foreground model (2D U-Net) trained by tools/train/train_demo_matte.py on "
                          "synthetic figures over rendered rooms. Not a product model.",
           "onnx": "model.onnx", "input": {"name": "input", "channels": 3, "size": [S, S]},
           "output": {"name": "alpha", "kind": "probability", "threshold": 0.5},
           "preprocess": {"resize": "stretch", "scale": 1 / 255, "mean": MEAN.tolist(), "std": STD.tolist()},
           "labels": {"0": "background", "1": "foreground"},
           "masks": {"foreground": [1]}}
    save(a.out, net, S, "alpha", False, iou, log, man)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--preview":
        im, mk = figure((240, 320), np.random.default_rng(int(sys.argv[2]) if len(sys.argv) > 2 else 0))
        Image.fromarray(im).save("matte_preview.png")
        Image.fromarray(mk * 255).save("matte_preview_mask.png")
    else:
        main()
