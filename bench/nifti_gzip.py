#!/usr/bin/env python3
"""Seconds to write a 512x512x300 label volume as .nii.gz (sp_labels_write_affine
through ctypes: build the NIfTI, compress in parallel on every core, write),
best of 7 wall and CPU seconds (CPU time: the fair number on a busy
machine), the file's size and gzip member count. BUILD=dir picks the library. The labels are organ-like:
40 Voronoi regions of random seeds inside a body-shaped ellipsoid, zero outside
(a segmentation's statistics: long zero runs, large constant regions).

  python3 bench/nifti_gzip.py [--slices 300]
"""
import argparse, ctypes as C, os, sys, tempfile, time, zlib
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "py"))
import sp


def labels(nx=512, ny=512, nz=300, n=40, seed=0):
    rng = np.random.default_rng(seed)
    seeds = rng.uniform([100, 120, 0], [412, 392, nz], size=(n, 3))
    lab = np.zeros((nx, ny, nz), np.uint16)
    x, y = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    body = ((x - 256) / 200.0) ** 2 + ((y - 256) / 150.0) ** 2 <= 1
    pts = np.stack([x[body], y[body]], 1).astype(np.float32)
    for k in range(nz):
        d = ((pts[:, None, 0] - seeds[None, :, 0]) ** 2 + (pts[:, None, 1] - seeds[None, :, 1]) ** 2
             + (k - seeds[None, :, 2]) ** 2 * 4)
        near = d.argmin(1)
        lab[x[body], y[body], k] = np.where(d.min(1) < 70 ** 2, near + 1, 0)
    return lab


def members(path):
    """gzip members in a file (zlib, one member at a time)"""
    data, count = open(path, "rb").read(), 0
    while data:
        d = zlib.decompressobj(31)
        d.decompress(data)
        data, count = d.unused_data, count + 1
    return count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    a = ap.parse_args()
    cache = os.path.join(tempfile.gettempdir(), f"segpipe_bench_labels_{a.slices}.npy")
    if os.path.exists(cache):
        lab = np.load(cache)
    else:
        lab = labels(nz=a.slices)
        np.save(cache, lab)
    L = sp.lib()
    L.sp_labels_write_affine.argtypes = [C.c_char_p, C.c_void_p, C.POINTER(C.c_int64), C.c_void_p]
    dim = (C.c_int64 * 3)(*lab.shape)
    aff = np.ascontiguousarray(np.diag([0.8, 0.8, 1.5, 1.0]), dtype=np.float64)
    flat = np.asfortranarray(lab)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "labels.nii.gz")
        best, cpu = 1e9, 1e9
        for _ in range(7):
            t, c = time.perf_counter(), time.process_time()
            rc = L.sp_labels_write_affine(out.encode(), flat.ctypes.data, dim, aff.ctypes.data)
            best, cpu = min(best, time.perf_counter() - t), min(cpu, time.process_time() - c)
            assert rc == 0, rc
        size = os.path.getsize(out)
        print(f"| {'x'.join(map(str, lab.shape))} uint8 labels | {best:.3f} | {cpu:.3f} | {size / 1e6:.2f} MB | "
              f"{members(out)} |")


if __name__ == "__main__":
    main()
