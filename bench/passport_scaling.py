#!/usr/bin/env python3
"""Passport cost vs number of labels, on one CT: the same label volume with
its structures merged into k labels (k = 1, 5, 20, 117), timed through
`segpipe passport` (best of 3; stage time as the CLI reports it).

  bench/passport_scaling.py CT.nii.gz LABELS.nii.gz OUT.json
"""
import json, os, re, subprocess, sys, tempfile
import numpy as np
import nibabel as nib

ct, labels, out = sys.argv[1:4]
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
seg = nib.load(labels)
lab = np.asanyarray(seg.dataobj).astype(np.int16)
res = {}
with tempfile.TemporaryDirectory() as tmp:
    for k in (1, 5, 20, 117):
        if k == 117:   # spread the body over all 117 classes
            m = np.where(lab > 0, (np.arange(lab.size).reshape(lab.shape) // 4096) % 117 + 1, 0)
        else:
            m = np.where(lab > 0, (lab - 1) % k + 1, 0)
        p = os.path.join(tmp, f"l{k}.nii.gz")
        nib.save(nib.Nifti1Image(m.astype(np.uint8), seg.affine, seg.header), p)
        best = {}
        for comp in ("", "--no-components"):
            ts = []
            for _ in range(3):
                r = subprocess.run([os.path.join(root, "build", "segpipe"), "passport", "--ct", ct, "--labels", p,
                                    "-o", os.path.join(tmp, "p.json")] + ([comp] if comp else []),
                                   capture_output=True, text=True, check=True)
                ts.append(float(re.search(r"passport ([0-9.]+) s", r.stdout).group(1)))
            best["with_components" if not comp else "without_components"] = min(ts)
        res[k] = {"labels_present": int(len(np.unique(m)) - 1), **best}
json.dump(res, open(out, "w"), indent=1)
print(json.dumps(res))
