#!/usr/bin/env python3
"""Seconds from a DICOM series to a volume: segpipe (GDCM, slices decoded in
parallel, in process: sp_volume_read through ctypes) side by side with
dcm2niix (Debian's; the peer TotalSegmentator uses; its whole job, writing
an uncompressed .nii to a tmpfs-like temp folder, `-z n`), on the ../shared
example series (20 JPEG 2000 slices) and on a larger synthetic series made
from it (the example's slices repeated along the normal to 300 slices,
pixel data left JPEG 2000 as it is, new positions and UIDs). Best of 3 runs
each. Writes bench/out/dicom_read.json and prints a markdown table.

  python3 bench/dicom_read.py
"""
import json, os, shutil, subprocess, sys, tempfile, time
import numpy as np
import pydicom
from pydicom.uid import generate_uid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "py"))
import sp   # ctypes over build/libsegpipe_test.so

SERIES = os.path.join(sp.CTDIR, "example_ct_dicom")


def synthetic(dst, n=300):
    """n slices: the example's, cycled, stacked 2 mm apart along the normal"""
    src = sorted((pydicom.dcmread(os.path.join(SERIES, f)) for f in os.listdir(SERIES)),
                 key=lambda d: float(d.ImagePositionPatient[2]))
    iop = np.array([float(x) for x in src[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    p0 = np.array([float(x) for x in src[0].ImagePositionPatient])
    series = generate_uid()
    os.makedirs(dst)
    for k in range(n):
        ds = src[k % len(src)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in p0 + normal * 2.0 * k]
        ds.SeriesInstanceUID = series
        ds.InstanceNumber = k + 1   # dcm2niix checks positions against instance order
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.save_as(os.path.join(dst, f"s{k:04d}.dcm"))
    return dst


def best(fn, runs=3):
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return min(t)


def main():
    out = {}
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as tmp:
        cases = {"example, 512x512x20 JPEG 2000": SERIES,
                 "synthetic, 512x512x300 JPEG 2000": synthetic(os.path.join(tmp, "big"))}
        for name, folder in cases.items():
            shape = sp.read_volume(folder)[0].shape
            seg = best(lambda: sp.read_volume(folder))
            d = os.path.join(tmp, "d2n")

            def d2n():
                shutil.rmtree(d, ignore_errors=True)
                os.makedirs(d)
                subprocess.run(["dcm2niix", "-z", "n", "-o", d, "-f", "x", folder], check=True, capture_output=True)
            peer = best(d2n)
            out[name] = {"shape": list(shape), "segpipe_s": seg, "dcm2niix_s": peer}
            print(json.dumps({name: out[name]}), flush=True)
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    json.dump(out, open(os.path.join(ROOT, "bench", "out", "dicom_read.json"), "w"), indent=1)
    print(f"\n| series | segpipe read (s) | dcm2niix (s) | dcm2niix / segpipe |\n|---|---|---|---|")
    for name, r in out.items():
        print(f"| {name} | {r['segpipe_s']:.3f} | {r['dcm2niix_s']:.3f} | {r['dcm2niix_s'] / r['segpipe_s']:.1f}x |")


if __name__ == "__main__":
    main()
