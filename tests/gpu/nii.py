"""Minimal NIfTI-1 reading and writing with numpy alone, for the GPU machine
(no nibabel there). Single-file .nii / .nii.gz, 3D, scl_slope ignored
unless set; enough for segpipe's inputs and outputs."""
import gzip, struct
import numpy as np

DT = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 256: np.int8, 512: np.uint16}


def read(path):
    raw = open(path, "rb").read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    dims = struct.unpack_from("<8h", raw, 40)
    code = struct.unpack_from("<h", raw, 70)[0]
    off = int(struct.unpack_from("<f", raw, 108)[0])
    slope, inter = struct.unpack_from("<2f", raw, 112)
    shape = dims[1:1 + dims[0]]
    a = np.frombuffer(raw, DT[code], int(np.prod(shape)), off).reshape(shape, order="F")
    if slope not in (0.0, 1.0) or inter != 0.0:
        a = a * slope + inter
    return a


def write(path, data, spacing):
    """data (i, j, k) in RAS+ with voxel sizes `spacing` mm."""
    code = {np.dtype(v): k for k, v in DT.items()}[data.dtype]
    h = bytearray(352)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, 3, *data.shape, 1, 1, 1, 1)
    struct.pack_into("<2h", h, 70, code, data.dtype.itemsize * 8)
    struct.pack_into("<8f", h, 76, 1.0, *spacing, 1, 1, 1, 1)
    struct.pack_into("<f", h, 108, 352.0)
    struct.pack_into("<2f", h, 112, 1.0, 0.0)
    struct.pack_into("<b", h, 123, 2)     # xyzt_units: mm
    struct.pack_into("<2h", h, 252, 1, 1)  # qform, sform: scanner
    struct.pack_into("<4f", h, 280, spacing[0], 0, 0, 0)
    struct.pack_into("<4f", h, 296, 0, spacing[1], 0, 0)
    struct.pack_into("<4f", h, 312, 0, 0, spacing[2], 0)
    h[344:348] = b"n+1\0"
    with open(path, "wb") as f:
        f.write(bytes(h))
        f.write(np.asfortranarray(data).tobytes(order="F"))


def dice(a, b, labels):
    out = {}
    for v in labels:
        x, y = a == v, b == v
        s = x.sum() + y.sum()
        if s:
            out[int(v)] = 2.0 * (x & y).sum() / s
    return out


# ---- helpers of the GPU scripts (tests/gpu/test_gpu.py, bench/gpu_ct.py)

def seg_env(**kw):
    """the environment for segpipe on the GPU machine (SEGPIPE_LD: its
    libraries, CUDA, cuDNN)"""
    import os
    e = dict(os.environ)
    if os.environ.get("SEGPIPE_LD"):
        e["LD_LIBRARY_PATH"] = os.environ["SEGPIPE_LD"]
    e.update(kw)
    return e


def ct_requests(url, path, n=3, timeout=300):
    """wait for the service to be ready, then POST path to /v1/ct n times;
    the answers"""
    import json, time, urllib.request
    for _ in range(600):
        try:
            if urllib.request.urlopen(url + "/v2/health/ready", timeout=1).status == 200:
                break
        except OSError:
            time.sleep(0.1)
    body = open(path, "rb").read()
    out = []
    for _ in range(n):
        req = urllib.request.Request(url + "/v1/ct?model=ct", data=body, headers={"Content-Type": "application/octet-stream"})
        out.append(json.load(urllib.request.urlopen(req, timeout=timeout)))
    return out
