"""An independent reference of brainchop-cli's pipeline (numpy, scipy,
PyTorch), written from brainchop-cli's and niimath's sources (facts, not
code) for the tests of the brainchop zoo (tests/py/test_brainchop.py) and
bench/brainchop.py:

  conform      niimath -conform -odt char: robust range (1000-bin histogram,
               f_high 0.98) scaled to 0..255 and clipped, LIA 256^3 at 1 mm
               with voxel 128 at the world position of input voxel dim/2,
               float32 trilinear (outside: the scaled minimum), rounded;
  voxel order  the uint8 bytes read as (z, y, x) and transposed (2, 1, 0):
               the network sees (i, j, k);
  qnormalize   numpy.quantile 2% / 98%, (v - q02) / (q98 - q02 + 1e-3), clip;
  MeshNet      from model.json + model.pth (torch zip or safetensors):
               conv3d -> [group norm, one group per channel, no affine] ->
               GELU (tanh) / ELU / ReLU; last layer a bare conv; biases when
               "bias"; tensors matched by position;
  bwlabel      the largest 26-connected component of the non-zero labels;
  back         nearest neighbour onto the input grid.
"""
import json, os, struct, zipfile
import numpy as np
import nibabel as nib
from scipy import ndimage


def niimath_conform(img, f_high=0.98):
    """(uint8 256^3 volume indexed [i, j, k], its affine)"""
    x = np.asarray(img.get_fdata(dtype=np.float32), np.float32)
    dim = np.array(x.shape[:3])
    lo, hi = np.float32(x.min()), np.float32(x.max())
    if lo < 0 and 100.0 * (x < 0).sum() / x.size < 2.0:
        lo = np.float32(0)
    nz = int((np.abs(x) >= 1e-15).sum())
    bin_ = np.float32((hi - lo) / np.float32(1000))
    b = np.clip(((x - lo) / bin_).astype(np.int64), 0, 999)     # truncation toward zero, as (int)
    cs = np.cumsum(np.bincount(b.ravel(), minlength=1000))
    nth = x.size - int((1.0 - float(np.float32(f_high))) * nz)
    idx = 0
    while idx < 999 and cs[idx + 1] < nth:
        idx += 1
    smax = np.float32(idx) * bin_ + lo
    scale = np.float32(255.0) / (smax - lo) if smax != lo else np.float32(1)
    s = np.clip(scale * (x - lo), 0, 255).astype(np.float32)
    R = np.array([[-1, 0, 0], [0, 0, 1], [0, -1, 0]], float)
    A = img.affine
    out = np.eye(4)
    out[:3, :3] = R
    out[:3, 3] = A[:3, :3] @ (dim / 2.0) + A[:3, 3] - R @ np.full(3, 128.0)
    m = (np.linalg.inv(A) @ out).astype(np.float32)             # output voxel -> input voxel
    g = np.indices((256, 256, 256), dtype=np.float32).reshape(3, -1)
    q = m[:3, :3] @ g + m[:3, 3:4]
    f = np.floor(q).astype(np.int64)
    ok = (f >= 0).all(0) & (f[0] + 1 < dim[0]) & (f[1] + 1 < dim[1]) & (f[2] + 1 < dim[2])
    v = np.full(q.shape[1], s.min(), np.float32)
    fo, d = f[:, ok], (q[:, ok] - f[:, ok]).astype(np.float32)
    acc = np.zeros(fo.shape[1], np.float32)
    for cx in (0, 1):
        for cy in (0, 1):
            for cz in (0, 1):
                w = (d[0] if cx else 1 - d[0]) * (d[1] if cy else 1 - d[1]) * (d[2] if cz else 1 - d[2])
                acc += s[fo[0] + cx, fo[1] + cy, fo[2] + cz] * w
    v[ok] = acc
    v = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), 0, 255)   # C round(): half away from zero
    return v.reshape(256, 256, 256).astype(np.uint8), out


def qnormalize(v, qmin=0.02, qmax=0.98, eps=1e-3):
    lo, hi = np.quantile(v, qmin), np.quantile(v, qmax)
    return np.clip((v - lo) / (hi - lo + eps), 0, 1)


def _tensors(path):
    """[(name, float32 array)] of a torch zip or safetensors model.pth, file order."""
    if zipfile.is_zipfile(path):
        import torch
        return [(k, v.float().numpy()) for k, v in torch.load(path, map_location="cpu").items()]
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    hdr = {k: v for k, v in json.loads(raw[8:8 + n]).items() if k != "__metadata__"}
    dt = {"F32": np.float32, "F16": np.float16}
    items = sorted(hdr.items(), key=lambda kv: kv[1]["data_offsets"][0])
    return [(k, np.frombuffer(raw[8 + n + t["data_offsets"][0]:8 + n + t["data_offsets"][1]], dt[t["dtype"]])
             .astype(np.float32).reshape(t["shape"])) for k, t in items]


def _conv_slabs(y, w, b, p, d, slab=8):
    """F.conv3d(y, w, b, padding=p, dilation=d) computed slab by slab along the first spatial axis:
    PyTorch's CPU dilated conv3d unfolds the whole input (C * k^3 values per voxel: 38 GB for a
    256^3 21-channel layer), one slab at a time stays near 1 GB."""
    import torch
    import torch.nn.functional as F
    D = y.shape[2]
    yp = F.pad(y, (0, 0, 0, 0, p, p))               # zeros along the first spatial axis only
    out = []
    for a in range(0, D, slab):
        e = min(D, a + slab)
        out.append(F.conv3d(yp[:, :, a:e + 2 * p], w, b, padding=(0, p, p), dilation=d))
    return torch.cat(out, 2)


def meshnet_forward(model_dir, x, threads=None, device="cpu"):
    """x: float32 [D0, D1, D2] -> logits [C, D0, D1, D2] (PyTorch; device "cuda" for bench/brainchop.py)."""
    import torch
    import torch.nn.functional as F
    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    cfg = json.load(open(os.path.join(model_dir, "model.json")))
    ts = _tensors(os.path.join(model_dir, "model.pth"))
    per = 2 if cfg.get("bias") else 1
    y = torch.from_numpy(np.ascontiguousarray(x, np.float32))[None, None].to(dev)
    L = cfg["layers"]
    with torch.no_grad():
        for i, l in enumerate(L):
            w = torch.from_numpy(ts[per * i][1]).to(dev)
            b = torch.from_numpy(ts[per * i + 1][1]).to(dev) if per == 2 else None
            y = _conv_slabs(y, w, b, l["padding"], l["dilation"], slab=8 if device == "cpu" else y.shape[2])
            if i == len(L) - 1:
                break
            if cfg.get("bnorm"):
                y = F.group_norm(y, y.shape[1], eps=1e-5)
            if cfg.get("gelu"):
                y = 0.5 * y * (1 + torch.tanh(0.7978845608028654 * (y + 0.044715 * y ** 3)))
            elif cfg.get("elu"):
                y = F.elu(y)
            else:
                y = F.relu(y)
    return y[0].cpu().numpy()


def largest_fg(lab):
    cc, n = ndimage.label(lab > 0, structure=np.ones((3, 3, 3)))
    if n == 0:
        return lab
    sizes = np.bincount(cc.ravel())
    sizes[0] = 0
    return np.where(cc == sizes.argmax(), lab, 0).astype(lab.dtype)


def back_to_input(lab, caff, img):
    """nearest neighbour (floor(q + 0.5)) of each input voxel on the conformed grid"""
    m = np.linalg.inv(caff) @ img.affine
    g = np.indices(img.shape[:3], dtype=np.float64).reshape(3, -1)
    q = np.floor(m[:3, :3] @ g + m[:3, 3:4] + 0.5).astype(np.int64)
    ok = ((q >= 0) & (q < 256)).all(0)
    out = np.zeros(q.shape[1], lab.dtype)
    out[ok] = lab[q[0, ok], q[1, ok], q[2, ok]]
    return out.reshape(img.shape[:3])


def pipeline(model_dir, path, threads=None, device="cpu"):
    """(conformed labels [i, j, k], labels on the input grid, conformed uint8)"""
    img = nib.load(path)
    vol, caff = niimath_conform(img)
    x = qnormalize(vol.astype(np.float32)).astype(np.float32)
    lab = meshnet_forward(model_dir, x, threads, device).argmax(0).astype(np.uint16)
    lab = largest_fg(lab)
    return lab, back_to_input(lab, caff, img), vol
