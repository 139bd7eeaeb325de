"""Mask PNGs (sp_mask_png: run-length deflate written by segpipe) decode,
with Pillow and with zlib, to exactly the mask's pixels: runs shorter and
longer than deflate's 258-byte match limit, runs across rows, single
pixels, noise, empty and full masks, 1-pixel-wide and 1-pixel-high."""
import ctypes as C
import io, struct, zlib
import numpy as np
from PIL import Image
import sp


class Mask(C.Structure):
    _fields_ = [("name", C.c_char_p), ("pixels", C.POINTER(C.c_uint8)), ("area_fraction", C.c_double),
                ("bbox", C.c_int * 4)]


def encode(a):
    L = sp.lib()
    L.sp_mask_png.argtypes = [C.POINTER(Mask), C.c_int, C.c_int, C.POINTER(C.c_void_p), C.POINTER(C.c_size_t)]
    a = np.ascontiguousarray(a, np.uint8)
    m = Mask(b"m", a.ctypes.data_as(C.POINTER(C.c_uint8)), 0, (C.c_int * 4)(-1, -1, -1, -1))
    out, n = C.c_void_p(), C.c_size_t()
    assert L.sp_mask_png(C.byref(m), a.shape[1], a.shape[0], C.byref(out), C.byref(n)) == 0
    data = C.string_at(out, n.value)
    C.CDLL(None).free(out)
    return data


def check(a):
    data = encode(a)
    got = np.asarray(Image.open(io.BytesIO(data)))
    assert got.dtype == np.uint8 and got.shape == a.shape and np.array_equal(got, a)
    # chunk CRCs and the zlib stream (Adler-32 included) checked independently
    pos, chunks = 8, []
    while pos < len(data):
        n, = struct.unpack(">I", data[pos:pos + 4])
        body = data[pos + 4:pos + 8 + n]
        crc, = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
        assert zlib.crc32(body) == crc, body[:4]
        chunks.append((body[:4], body[4:]))
        pos += 12 + n
    assert [c[0] for c in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    raw = zlib.decompress(chunks[1][1])
    h, w = a.shape
    assert raw == b"".join(b"\0" + a[y].tobytes() for y in range(h))
    return len(data)


def test_mask_png_roundtrip(tmp):
    rng = np.random.default_rng(3)
    cases = [np.zeros((7, 9), np.uint8), np.full((5, 300), 255, np.uint8), np.zeros((1, 1), np.uint8),
             np.full((1, 1), 255, np.uint8), (rng.random((33, 47)) > 0.5).astype(np.uint8) * 255,
             np.full((600, 1), 255, np.uint8), np.full((1, 1000), 255, np.uint8)]
    for L in (1, 2, 3, 4, 257, 258, 259, 260, 261, 262, 515, 516, 517):   # run lengths around the limits
        r = np.zeros((3, 600), np.uint8)
        r[1, 5:5 + L] = 255
        cases.append(r)
    blob = np.zeros((400, 500), np.uint8)
    yy, xx = np.mgrid[0:400, 0:500]
    blob[(yy - 200) ** 2 + (xx - 260) ** 2 < 150 ** 2] = 255
    cases.append(blob)
    big = np.zeros((1500, 2000), np.uint8)
    big[300:1200, 100:1900] = 255
    cases.append(big)
    for a in cases:
        check(a)
    # compact for masks: the 3 MP rectangle mask is about 40 kB (raw: 3 MB)
    assert check(big) < 100000
