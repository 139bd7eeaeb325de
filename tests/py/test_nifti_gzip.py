"""Every .nii.gz segpipe writes is ONE gzip member (niivue and other
JavaScript readers stop after the first member: issue #36), with the
right CRC-32 and ISIZE, and holds the same voxels as the uncompressed .nii
segpipe writes (read by nibabel): the labels of `segpipe ct` (whole, --split,
--save-model-labels), `segpipe mri`, and `resample` outputs in each dtype,
sized to span many of the writer's 1 MiB parallel chunks."""
import gzip, os, struct, zlib
import numpy as np
import nibabel as nib
import sp

CT = os.path.join(sp.CTDIR, "example_ct.nii.gz")
CT_SM = os.path.join(sp.CTDIR, "example_ct_sm.nii.gz")


def members(path):
    """[(crc32, isize, uncompressed bytes)] of each gzip member, parsed with
    zlib one member at a time (its header and trailer read by hand)."""
    data, out = open(path, "rb").read(), []
    while data:
        assert data[:3] == b"\x1f\x8b\x08", data[:3]
        d = zlib.decompressobj(-15)
        flg, pos = data[3], 10
        assert flg & ~0x1f == 0
        if flg & 4:
            pos += 2 + struct.unpack("<H", data[pos:pos + 2])[0]
        for bit in (8, 16):
            if flg & bit:
                pos = data.index(b"\0", pos) + 1
        pos += 2 if flg & 2 else 0
        raw = d.decompress(data[pos:])
        assert d.eof, "truncated member"
        crc, isize = struct.unpack("<II", d.unused_data[:8])
        out.append((crc, isize, raw))
        data = d.unused_data[8:]
    return out


def check(path):
    """one member, its trailer right, nibabel reads it as it reads the bytes"""
    (m,) = members(path)
    crc, isize, raw = m
    assert crc == zlib.crc32(raw) and isize == len(raw) % 2 ** 32
    assert gzip.decompress(open(path, "rb").read()) == raw
    img = nib.load(path)
    plain = path[:-3]
    open(plain, "wb").write(raw)
    assert np.array_equal(np.asanyarray(img.dataobj), np.asanyarray(nib.load(plain).dataobj))
    os.remove(plain)
    return img, len(raw)


def test_resample_outputs_one_member(tmp):
    """int16, uint8 and float32 volumes of 8 to 60 MB: many parallel chunks"""
    for dtype, order, shape in (("int16", 1, "512,512,60"), ("uint8", 0, "512,512,60"), ("float32", 1, "256,256,60")):
        out = os.path.join(tmp, f"r_{dtype}.nii.gz")
        sp.run("resample", CT, "-o", out, "--shape", shape, "--order", order, "--dtype", dtype, check=True)
        img, n = check(out)
        assert img.shape == tuple(map(int, shape.split(","))) and img.get_data_dtype() == np.dtype(dtype)
        assert n > 8 << 20
        ref = np.asanyarray(nib.load(CT).dataobj)
        got = np.asanyarray(img.dataobj)
        assert got.std() > 100 if dtype != "uint8" else got.max() > 0   # the scan, not a constant
        assert abs(float(got.mean()) - float(ref.mean())) < 0.05 * abs(float(ref.mean())) or dtype == "uint8"


def test_gzip_parallel_sizes(tmp):
    """the writer itself (sp_gzip_parallel through ctypes) on the edges of its
    1 MiB chunks, on noise (stored-like blocks), zeros and runs, RLE or not"""
    import ctypes as C
    L = sp.lib()
    L.sp_gzip_parallel.argtypes = [C.c_void_p, C.c_size_t, C.c_int, C.c_int, C.c_int,
                                   C.POINTER(C.c_void_p), C.POINTER(C.c_size_t)]
    libc = C.CDLL(None)
    rng = np.random.default_rng(5)
    MB = 1 << 20
    for n in (0, 1, 32767, MB - 1, MB, MB + 1, 3 * MB + 12345):
        for kind in ("noise", "runs"):
            a = rng.integers(0, 256, n, np.uint8) if kind == "noise" else \
                np.repeat(rng.integers(0, 4, n // 1000 + 1, np.uint8), 1000)[:n]
            for rle in (0, 1):
                out, size = C.c_void_p(), C.c_size_t()
                assert L.sp_gzip_parallel(a.ctypes.data, n, 1, rle, 2, C.byref(out), C.byref(size)) == 0
                path = os.path.join(tmp, "x.gz")
                open(path, "wb").write(C.string_at(out, size.value))
                libc.free(out)
                (m,) = members(path)
                assert m[2] == a.tobytes() and m[0] == zlib.crc32(m[2]) and m[1] == n, (n, kind, rle)


def test_ct_labels_one_member(tmp):
    out = os.path.join(tmp, "seg.nii.gz")
    model = os.path.join(tmp, "model.nii.gz")
    sp.run("ct", CT_SM, "-o", out, "-q", "--save-model-labels", model, check=True)
    img, _ = check(out)
    lab = np.asanyarray(img.dataobj)
    assert img.shape == nib.load(CT_SM).shape and len(np.unique(lab)) > 5
    check(model)
    split = os.path.join(tmp, "split")
    sp.run("ct", CT_SM, "-o", split, "-q", "--split", "--no-passport", check=True)
    files = sorted(f for f in os.listdir(split) if f.endswith(".nii.gz"))
    assert len(files) > 5
    for f in files[:3] + ["liver.nii.gz"]:
        mask = np.asanyarray(check(os.path.join(split, f))[0].dataobj)
        assert mask.max() == 1 and mask.sum() > 0


def test_mri_labels_one_member(tmp):
    """the labels of `segpipe mri tinyT1.nii.gz` (the run test_mri checks
    against its reference, made once per test run), copied here to check"""
    import shutil
    from test_mri import mri_run, ORT_UNDER_ASAN
    out = os.path.join(tmp, "mri.nii.gz")
    shutil.copyfile(os.path.join(mri_run("tinyT1.nii.gz", ORT_UNDER_ASAN or None), "lab.nii.gz"), out)
    img, _ = check(out)
    assert set(np.unique(np.asanyarray(img.dataobj))) == {0, 1, 2}
