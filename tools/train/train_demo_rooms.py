#!/usr/bin/env python3
"""Train segpipe's demo room model: a small 2D U-Net on procedurally rendered
rooms (tools/train/render_rooms.py), classes wall, floor, ceiling, window, other.
A demonstration model on synthetic data, not a product. Run on the GPU
machine:

  python3 tools/train/train_demo_rooms.py -o OUT [--iters 3000]

Writes OUT/model.onnx (input [N, 3, H, W], H and W multiples of 16; output
logits [N, 5, H, W]), OUT/segpipe.json, OUT/train_log.csv, OUT/iou.json.
Training mimics segpipe's preprocessing: photos letterboxed into a square
canvas at the top-left, ImageNet normalisation, zero padding.
"""
import os, sys, time
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "import"))
from render_rooms import render, CLASSES
from segpipe_nets import UNet
from train_util import setup, train, save

S = 160
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def sample(seed):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.6, 1.6)                 # aspect w / h
    h, w = (S, int(S * a)) if a < 1 else (int(S / a), S)
    img, lab = render((h, w), rng=rng)
    x = np.zeros((3, S, S), np.float32)
    y = np.full((S, S), 255, np.uint8)        # padding: ignored by the loss
    x[:, :h, :w] = ((img.astype(np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1)
    y[:h, :w] = lab
    return x, y


def main():
    a, dev, t0, data = setup(sample)
    X = torch.from_numpy(np.stack([d[0] for d in data[:a.n]])).to(dev)
    Y = torch.from_numpy(np.stack([d[1] for d in data[:a.n]]).astype(np.int64)).to(dev)
    Xv = torch.from_numpy(np.stack([d[0] for d in data[a.n:]])).to(dev)
    Yv = np.stack([d[1] for d in data[a.n:]])
    print(f"rendered {len(data)} rooms in {time.time() - t0:.0f} s", flush=True)
    C = len(CLASSES)
    net = UNet("PlainConvUNet", 3, C, [16, 32, 64, 128], [[3, 3]] * 4, [[1, 1], [2, 2], [2, 2], [2, 2]],
               [2, 2, 2, 2], [2, 2, 2], dim=2).to(dev)
    log = train(net, X, Y, a.iters, lambda p, y: F.cross_entropy(p, y, ignore_index=255), t0)
    net.eval()
    with torch.no_grad():
        pv = torch.cat([net(Xv[i:i + 64]).argmax(1) for i in range(0, len(Xv), 64)]).cpu().numpy()
    iou = {}
    for c, name in CLASSES.items():
        valid = Yv != 255
        inter = ((pv == c) & (Yv == c) & valid).sum()
        union = (((pv == c) | (Yv == c)) & valid).sum()
        iou[name] = round(float(inter / max(union, 1)), 4)
    print("validation IoU (300 new rooms):", iou, flush=True)
    man = {"format": "segpipe-model", "version": 1, "name": "demo-rooms", "task": "masks",
           "description": "Demonstration 2D U-Net trained by tools/train/train_demo_rooms.py on procedurally rendered "
                          "rooms (synthetic data). Not a product model.",
           "onnx": "model.onnx", "input": {"name": "input", "channels": 3},
           "output": {"name": "logits", "kind": "logits"},
           "preprocess": {"resize": "letterbox", "long_side": S, "scale": 1 / 255,
                          "mean": MEAN.tolist(), "std": STD.tolist()},
           "labels": {str(k): v for k, v in CLASSES.items()},
           "masks": {"wall": [0], "floor": [1], "ceiling": [2], "window": [3]}}
    save(a.out, net, S, "logits", True, iou, log, man)


if __name__ == "__main__":
    main()
