#!/usr/bin/env python3
"""Prepare the demo CT model's training set from ../shared/data/ct.

Cases (all reoriented to RAS and resampled to 3 mm, as TotalSegmentator's
--fast pipeline sees them):
  1. example_ct_sm + example_seg_fast   (TotalSegmentator --fast labels)
  2. example_ct_sm + example_seg        (TotalSegmentator 1.5 mm labels)
  3. example_ct_dicom + example_seg_dicom (DICOM series read with pydicom,
     rescale slope/intercept applied; 0.98x0.98x2 mm -> 3 mm)
Also computes nnU-Net-style CT normalisation from the foreground voxels
(0.5 / 99.5 percentiles, mean, std). Writes one .npz (git-ignored).
"""
import argparse, json, os, sys
import numpy as np
import nibabel as nib
from scipy import ndimage

def to_3mm(img, data, order):
    img = nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))
    d = np.asanyarray(img.dataobj)
    zoom = np.array(img.header.get_zooms()[:3]) / 3.0
    if np.allclose(zoom, 1):
        return d
    return ndimage.zoom(d.astype(np.float32 if order else d.dtype), zoom, order=order, mode="nearest")

def read_dicom(folder):
    import pydicom
    sl = [pydicom.dcmread(os.path.join(folder, f)) for f in sorted(os.listdir(folder))]
    sl.sort(key=lambda s: float(s.ImagePositionPatient[2]))
    vol = np.stack([s.pixel_array.astype(np.float32) * float(s.RescaleSlope) + float(s.RescaleIntercept)
                    for s in sl], axis=-1)          # (rows, cols, slices)
    # DICOM rows run anterior->posterior; the label grid (LAS) runs P->A in j.
    return np.transpose(vol, (1, 0, 2))[:, ::-1, :].copy()  # (i, j, k), LAS

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(os.path.dirname(__file__), "../../../shared/data/ct"))
    ap.add_argument("-o", "--out", default=".train/cases.npz")
    a = ap.parse_args()
    S = a.shared
    ct = nib.load(f"{S}/example_ct_sm.nii.gz")
    ct_d = np.asanyarray(ct.dataobj).astype(np.float32)
    cases = []
    for seg in ("example_seg_fast", "example_seg"):
        lab = np.asanyarray(nib.load(f"{S}/{seg}.nii.gz").dataobj).astype(np.uint8)
        cases.append((to_3mm(ct, ct_d, 1).astype(np.float32), to_3mm(ct, lab, 0).astype(np.uint8)))
    segd = nib.load(f"{S}/example_seg_dicom.nii.gz")
    dv = read_dicom(f"{S}/example_ct_dicom")
    labd = np.asanyarray(segd.dataobj).astype(np.uint8)
    if dv.shape != labd.shape:
        sys.exit(f"dicom shape {dv.shape} != seg {labd.shape}")
    # The DICOM volume is in the label file's voxel grid (checked by overlap
    # of body and labels below), so it shares the label affine.
    cases.append((to_3mm(segd, dv, 1).astype(np.float32), to_3mm(segd, labd, 0).astype(np.uint8)))
    for i, (x, y) in enumerate(cases):
        body = (x > -500).mean()
        inside = (x[y > 0] > -500).mean()
        print(f"case {i}: shape {x.shape} HU {x.min():.0f}..{x.max():.0f} labels {len(np.unique(y))-1} "
              f"body {body:.2f} labelled-in-body {inside:.2f}")
    fg = np.concatenate([x[y > 0] for x, y in cases])
    norm = dict(lo=float(np.percentile(fg, 0.5)), hi=float(np.percentile(fg, 99.5)),
                mean=float(fg.mean()), std=float(fg.std()))
    print("normalisation", norm)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    arrs = {}
    for i, (x, y) in enumerate(cases):
        arrs[f"x{i}"] = x
        arrs[f"y{i}"] = y
    np.savez_compressed(a.out, n=len(cases), norm=json.dumps(norm), **arrs)

if __name__ == "__main__":
    main()
