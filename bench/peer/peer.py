#!/usr/bin/env python3
"""The Python peer: the non-inference stages of TotalSegmentator --fast done
the way TotalSegmentator does them (written from its documented behaviour):
nibabel load + get_fdata, as_closest_canonical, scipy.ndimage.zoom order 1
to 3 mm (output shape round(n * zoom)), labels back with zoom order 0 to the
canonical input shape and the reorientation undone, statistics with a
per-class numpy loop (native and 3 mm), nibabel save.

  peer.py CT.nii.gz MODEL_LABELS.nii.gz LABEL_MAP.json --spacing 3 -o OUT_DIR

MODEL_LABELS are the model-resolution labels (segpipe ct --save-model-labels),
so both tools start the labels-back stage from the same network output.
Prints one JSON object: seconds per stage and the output paths.
"""
import argparse, json, os, sys, time
import numpy as np
import nibabel as nib
from scipy import ndimage


def touches_border(m):
    return bool(m[:3].any() or m[-3:].any() or m[:, :3].any() or m[:, -3:].any()
                or m[:, :, :3].any() or m[:, :, -3:].any())


def statistics(ct_img, seg, class_map):
    ct = ct_img.get_fdata().astype(np.int16)
    z = ct_img.header.get_zooms()
    vox_vol = z[0] * z[1] * z[2]
    stats = {}
    for k, name in class_map.items():
        data = seg == k
        if touches_border(data):
            stats[name] = {"volume": 0.0, "intensity": 0.0}
        else:
            roi = (data > 0).astype(np.uint8)
            stats[name] = {"volume": float(data.sum() * vox_vol),
                           "intensity": float(np.average(ct, weights=roi).round(5)) if roi.sum() > 0 else 0.0}
    return stats


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ct")
    ap.add_argument("model_labels")
    ap.add_argument("label_map")
    ap.add_argument("--spacing", type=float, default=3.0)
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    class_map = {int(k): v for k, v in json.load(open(a.label_map)).items()}
    t = {}
    t0 = time.perf_counter()
    img = nib.load(a.ct)
    data = img.get_fdata()
    t["read"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    canon = nib.as_closest_canonical(nib.Nifti1Image(data, img.affine, img.header))
    cdata = np.asanyarray(canon.dataobj)
    zoom = np.array(canon.header.get_zooms()[:3]) / a.spacing
    resampled = ndimage.zoom(cdata, zoom, order=1, mode="nearest")
    t["reorient+resample"] = time.perf_counter() - t0

    lab_m = np.asanyarray(nib.load(a.model_labels).dataobj)
    t0 = time.perf_counter()
    back = ndimage.zoom(lab_m, np.array(cdata.shape) / np.array(lab_m.shape), order=0, mode="nearest")
    back_img = nib.Nifti1Image(back.astype(np.uint8), canon.affine)
    labels = back_img.as_reoriented(nib.orientations.io_orientation(img.affine))
    seg = np.asanyarray(labels.dataobj)
    t["labels_back"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    stats = statistics(img, seg, class_map)
    t["statistics_native"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    img3 = nib.Nifti1Image(resampled, canon.affine)   # TotalSegmentator's 3 mm trick
    img3.header.set_zooms([a.spacing] * 3)
    statistics(img3, lab_m, class_map)
    t["statistics_3mm"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out_labels = os.path.join(a.out, "peer_labels.nii.gz")
    hdr = img.header.copy()
    hdr.set_data_dtype(np.uint8)
    hdr.set_slope_inter(1, 0)
    nib.save(nib.Nifti1Image(seg.astype(np.uint8), img.affine, hdr), out_labels)
    t["write"] = time.perf_counter() - t0
    out_stats = os.path.join(a.out, "peer_statistics.json")
    json.dump(stats, open(out_stats, "w"), indent=4)
    print(json.dumps({"seconds": t, "labels": out_labels, "statistics": out_stats,
                      "resampled_shape": list(resampled.shape)}))


if __name__ == "__main__":
    main()
