"""An independent numpy implementation of the passport's definitions
(docs/passport.md) and of TotalSegmentator's statistics.json rules, used as
the reference in the tests. Deliberately the slow, obvious way: one mask per
label."""
import numpy as np
from scipy import ndimage


def touches_border(m):
    return bool(m[:3].any() or m[-3:].any() or m[:, :3].any() or m[:, -3:].any()
                or m[:, :, :3].any() or m[:, :, -3:].any())


def faces(m):
    n = []
    for ax in range(3):
        p = np.pad(m, [(1, 1) if a == ax else (0, 0) for a in range(3)])
        n.append(int((np.diff(p.astype(np.int8), axis=ax) != 0).sum()))
    return n


def passport(ct, seg, affine, zooms, names):
    out = {}
    sp = np.array(zooms, np.float64)
    vox_vol = float(np.float32(zooms[0]) * np.float32(zooms[1]) * np.float32(zooms[2]))
    for l in np.unique(seg):
        if l == 0:
            continue
        m = seg == l
        v = ct[m].astype(np.float64)
        idx = np.argwhere(m).astype(np.float64)
        c = idx.mean(0)
        world = idx @ affine[:3, :3].T
        cov = np.cov(world.T, bias=True)
        ev = np.sort(np.linalg.eigvalsh(cov))[::-1]
        lab, ncomp = ndimage.label(m, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(lab.ravel())[1:]
        f = faces(m)
        out[int(l)] = {
            "name": names.get(int(l), f"label_{int(l)}"),
            "voxels": int(m.sum()),
            "volume_ml": m.sum() * vox_vol / 1000,
            "hu": {"mean": v.mean(), "std": v.std(), "min": v.min(), "max": v.max(),
                   "median": np.median(v), "p5": np.percentile(v, 5), "p95": np.percentile(v, 95)},
            "centroid_voxel": list(c),
            "centroid_mm": list(affine[:3, :3] @ c + affine[:3, 3]),
            "bbox_voxel": {"min": list(idx.min(0)), "max": list(idx.max(0))},
            "extent_mm": list((idx.max(0) - idx.min(0) + 1) * sp),
            "touches_border": touches_border(m),
            "components": int(ncomp),
            "largest_component_share": sizes.max() / m.sum(),
            "surface_mm2": f[0] * sp[1] * sp[2] + f[1] * sp[0] * sp[2] + f[2] * sp[0] * sp[1],
            "principal_axes_mm": list(2 * np.sqrt(5 * np.clip(ev, 0, None))),
        }
    return out


def statistics(ct_float, seg, zooms, class_map, exclude_border=True):
    """TotalSegmentator's documented get_basic_statistics rules."""
    ct = ct_float.astype(np.int16)
    z = np.array(zooms, np.float32)
    vox_vol = z[0] * z[1] * z[2]
    stats = {}
    for k, name in class_map.items():
        data = seg == k
        if touches_border(data) and exclude_border:
            stats[name] = {"volume": 0.0, "intensity": 0.0}
        else:
            roi = data.astype(np.uint8)
            stats[name] = {"volume": float(data.sum() * vox_vol),
                           "intensity": float(np.average(ct, weights=roi).round(5)) if roi.sum() > 0 else 0.0}
    return stats
