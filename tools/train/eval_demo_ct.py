#!/usr/bin/env python3
"""Dice per structure of a CT model package, run through `segpipe ct`, on
the labelled example cases of ../shared/data/ct. Writes a markdown table.

  python3 tools/train/eval_demo_ct.py [--model models/demo-ct] [-o models/demo-ct/dice.md]
"""
import argparse, os, subprocess, sys, tempfile
import numpy as np
import nibabel as nib

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
from prep_demo_data import read_dicom

def dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(here, "..", "..", "models", "demo-ct"))
    ap.add_argument("--segpipe", default=os.path.join(here, "..", "..", "build", "segpipe"))
    ap.add_argument("--shared", default=os.path.join(here, "..", "..", "..", "shared", "data", "ct"))
    ap.add_argument("-o", "--out", default=None)
    a = ap.parse_args()
    S = a.shared
    import json
    names = {int(k): v for k, v in json.load(open(f"{S}/total_v2_labels.json")).items()}
    with tempfile.TemporaryDirectory() as tmp:
        segd = nib.load(f"{S}/example_seg_dicom.nii.gz")
        dcm = os.path.join(tmp, "dicom_ct.nii.gz")
        nib.save(nib.Nifti1Image(read_dicom(f"{S}/example_ct_dicom").astype(np.int16), segd.affine), dcm)
        cases = [("example_ct_sm vs --fast labels", f"{S}/example_ct_sm.nii.gz", f"{S}/example_seg_fast.nii.gz"),
                 ("example_ct_sm vs 1.5 mm labels", f"{S}/example_ct_sm.nii.gz", f"{S}/example_seg.nii.gz"),
                 ("DICOM series vs its labels", dcm, f"{S}/example_seg_dicom.nii.gz")]
        table = {}
        for title, ct, ref in cases:
            out = os.path.join(tmp, "seg.nii.gz")
            subprocess.run([a.segpipe, "ct", ct, "-o", out, "--model", a.model, "-q", "--no-passport"], check=True)
            g = np.asanyarray(nib.load(out).dataobj)
            r = np.asanyarray(nib.load(ref).dataobj)
            for l in np.unique(r)[1:]:
                table.setdefault(int(l), {})[title] = dice(g == l, r == l)
    cols = [c[0] for c in cases]
    lines = ["| structure | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for l in sorted(table):
        lines.append(f"| {names[l]} | " + " | ".join(f"{table[l][c]:.3f}" if c in table[l] else "" for c in cols) + " |")
    means = [np.mean([table[l][c] for l in table if c in table[l]]) for c in cols]
    lines.append("| **mean** | " + " | ".join(f"**{m:.3f}**" for m in means) + " |")
    text = "\n".join(lines) + "\n"
    if a.out:
        open(a.out, "w").write(text)
    print(text)

if __name__ == "__main__":
    main()
