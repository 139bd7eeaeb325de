#!/usr/bin/env python3
"""Train the bundled demonstration classifier, models/demo-shapes: which
shape a synthetic photo shows (circle, square, triangle, cross), on
rendered 64x64 pictures (random background colour, gradient and noise; one
shape of random colour, size, position and rotation). A demonstration of the
"classify" task, not a clinical tool.

  tools/train/train_demo_shapes.py -o models/demo-shapes --iters 2500 [--n 6000]

Renders seeds 0..n-1 for training and 1,000,000.. for the validation table
(accuracy per class in OUT/accuracy.json). The ONNX takes [N, 3, 64, 64]
normalised as the manifest says ((pixel / 255 - 0.5) / 0.25), so segpipe's
own preprocessing ("stretch" to 64 x 64) is the training's.
"""
import json, math, os, sys, time
import numpy as np
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "import"))
from train_util import export_onnx, setup, write_log  # noqa: E402

LABELS = ["circle", "square", "triangle", "cross"]
SIZE = 64


def render(seed, size=SIZE):
    """(uint8 H x W x 3 picture, class index) for a seed"""
    rng = np.random.default_rng(seed)
    cls = int(rng.integers(0, len(LABELS)))
    bg = rng.uniform(0, 255, 3)
    gy, gx = np.mgrid[0:size, 0:size] / size
    img = bg + (gx[..., None] * rng.uniform(-60, 60, 3)) + (gy[..., None] * rng.uniform(-60, 60, 3))
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    fg = tuple(int(v) for v in (bg + rng.choice([-1, 1], 3) * rng.uniform(70, 160, 3)) % 256)
    r = rng.uniform(0.17, 0.36) * size
    cx, cy = rng.uniform(r, size - r, 2)
    a = rng.uniform(0, 2 * math.pi)
    pts = lambda k, rad, off=0.0: [(cx + rad * math.cos(a + off + 2 * math.pi * i / k),
                                    cy + rad * math.sin(a + off + 2 * math.pi * i / k)) for i in range(k)]
    if cls == 0:
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif cls == 1:
        d.polygon(pts(4, r * 1.1), fill=fg)
    elif cls == 2:
        d.polygon(pts(3, r * 1.2), fill=fg)
    else:
        w = r * 0.35
        for off in (0, math.pi / 2):
            c, s = math.cos(a + off), math.sin(a + off)
            d.polygon([(cx + r * c - w * s, cy + r * s + w * c), (cx + r * c + w * s, cy + r * s - w * c),
                       (cx - r * c + w * s, cy - r * s - w * c), (cx - r * c - w * s, cy - r * s + w * c)], fill=fg)
    out = np.asarray(im).astype(np.float32) + rng.normal(0, rng.uniform(2, 12), (size, size, 3))
    return np.clip(out, 0, 255).astype(np.uint8), cls


def sample(seed):
    img, cls = render(seed)
    return ((img.astype(np.float32) / 255 - 0.5) / 0.25).transpose(2, 0, 1), cls


class Net(torch.nn.Module):
    def __init__(self, classes=len(LABELS)):
        super().__init__()
        layers, c = [], 3
        for w in (16, 32, 64, 96):
            layers += [torch.nn.Conv2d(c, w, 3, padding=1), torch.nn.BatchNorm2d(w), torch.nn.ReLU(),
                       torch.nn.MaxPool2d(2)]
            c = w
        self.body = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(c, classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


def main():
    a, _, t0, data = setup(sample, n_val=0)   # -o OUT, --iters, --n; seed 0
    X = torch.tensor(np.stack([d[0] for d in data]))
    Y = torch.tensor([d[1] for d in data])
    net = Net()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    log = []
    for it in range(a.iters):
        lr = 3e-3 * (1 - it / a.iters) ** 0.9
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(X), (64,))
        x = X[idx]
        if torch.rand(1).item() < 0.5:      # the classes are mirror-symmetric
            x = x.flip(-1)
        loss = torch.nn.functional.cross_entropy(net(x), Y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append((it, float(loss.detach()), lr))
        if it % 500 == 0 or it == a.iters - 1:
            print(f"it {it} loss {float(loss.detach()):.4f} {time.time() - t0:.0f}s", flush=True)
    net.eval()
    val = [sample(1_000_000 + s) for s in range(800)]
    with torch.no_grad():
        pred = net(torch.tensor(np.stack([v[0] for v in val]))).argmax(1).numpy()
    truth = np.array([v[1] for v in val])
    acc = {LABELS[c]: round(float((pred[truth == c] == c).mean()), 4) for c in range(len(LABELS))}
    acc["all"] = round(float((pred == truth).mean()), 4)
    print("validation accuracy", acc)
    os.makedirs(a.out, exist_ok=True)
    json.dump(acc, open(os.path.join(a.out, "accuracy.json"), "w"), indent=1)
    write_log(a.out, log)
    export_onnx(net, SIZE, os.path.join(a.out, "model.onnx"), "logits", False)
    man = {"format": "segpipe-model", "version": 1, "name": "demo-shapes", "task": "classify",
           "description": "Demonstration classifier trained by tools/train/train_demo_shapes.py on rendered shapes. "
                          "Not a clinical tool.",
           "onnx": "model.onnx", "input": {"name": "input", "channels": 3, "size": [SIZE, SIZE]},
           "output": {"name": "logits", "kind": "logits"},
           "preprocess": {"resize": "stretch", "scale": 1 / 255, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
           "labels": {str(i): n for i, n in enumerate(LABELS)}}
    json.dump(man, open(os.path.join(a.out, "segpipe.json"), "w"), indent=1)
    print("wrote", a.out, f"in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
