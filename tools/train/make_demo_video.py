#!/usr/bin/env python3
"""Render a short synthetic clip for `segpipe video` tests and benchmarks: a
person-like figure (tools/train/train_demo_matte.py) walking across a rendered
room. Writes OUT/frames/000001.png ... and OUT/truth/000001.png (foreground
mask, 0/255); encode with ffmpeg if a video file is wanted.

  python3 tools/train/make_demo_video.py OUT [--frames 48] [--size 320x240] [--seed 1]
"""
import argparse, os, sys
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from render_rooms import render as render_room
from train_demo_matte import figure


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--seed", type=int, default=3)
    a = ap.parse_args()
    W, H = map(int, a.size.split("x"))
    room, _ = render_room((H, W), rng=np.random.default_rng(a.seed))
    os.makedirs(os.path.join(a.out, "frames"), exist_ok=True)
    os.makedirs(os.path.join(a.out, "truth"), exist_ok=True)
    for i in range(a.frames):
        cx = W * (0.25 + 0.5 * i / max(1, a.frames - 1))
        rng = np.random.default_rng(a.seed * 1000 + 7)   # same figure every frame, moving
        img, mask = figure((H, W), rng, bg=room, cx=cx)
        Image.fromarray(img).save(os.path.join(a.out, "frames", "%06d.png" % (i + 1)))
        Image.fromarray(mask * 255).save(os.path.join(a.out, "truth", "%06d.png" % (i + 1)))


if __name__ == "__main__":
    main()
