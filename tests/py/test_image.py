"""Photo decoding (src/io/image.c) against Pillow (Debian python3-pil, same
libjpeg-turbo): PNG exact, JPEG exact, EXIF orientation 1..8 equal to
ImageOps.exif_transpose, scaled JPEG decoding equal to Pillow's draft mode,
limits checked from the header, bad files refused with a message."""
import ctypes as C
import io, os
import numpy as np
from PIL import Image, ImageOps
import sp


class SpImage(C.Structure):
    _fields_ = [("width", C.c_int), ("height", C.c_int), ("rgb", C.POINTER(C.c_uint8)),
                ("orientation", C.c_int), ("file_width", C.c_int), ("file_height", C.c_int),
                ("scale_denom", C.c_int), ("out_width", C.c_int), ("out_height", C.c_int),
                ("format", C.c_char_p)]


class Params(C.Structure):
    _fields_ = [("max_pixels", C.c_uint64), ("min_long_side", C.c_int)]


def decode(data, max_pixels=0, min_long_side=0):
    L = sp.lib()
    L.sp_image_read_mem.argtypes = [C.c_char_p, C.c_size_t, C.c_char_p, C.POINTER(Params),
                                    C.POINTER(C.POINTER(SpImage))]
    L.sp_image_free.argtypes = [C.POINTER(SpImage)]
    out = C.POINTER(SpImage)()
    st = L.sp_image_read_mem(data, len(data), b"test", C.byref(Params(max_pixels, min_long_side)), C.byref(out))
    if st != 0:
        raise ValueError(L.sp_last_error().decode())
    im = out.contents
    arr = np.ctypeslib.as_array(im.rgb, shape=(im.height, im.width, 3)).copy()
    meta = dict(orientation=im.orientation, scale=im.scale_denom, file=(im.file_width, im.file_height),
                out=(im.out_width, im.out_height), format=im.format.decode())
    L.sp_image_free(out)
    return arr, meta


def photo(w, h, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.float64)
    a += rng.normal(0, 12, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def save(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def test_png_and_jpeg_match_pillow(tmp):
    img = photo(37, 23)
    for mode in ("RGB", "RGBA", "L", "P"):
        data = save(img.convert(mode), "PNG")
        got, m = decode(data)
        assert np.array_equal(got, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))), mode
    for q, sub in ((90, 0), (75, 2)):
        data = save(img, "JPEG", quality=q, subsampling=sub)
        got, m = decode(data)
        ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert got.shape == ref.shape and np.abs(got.astype(int) - ref).max() <= 1
        assert m["orientation"] == 1 and m["scale"] == 1


def test_exif_orientation_all_8(tmp):
    img = photo(40, 24, 1)
    for o in range(1, 9):
        ex = Image.Exif()
        ex[0x0112] = o
        data = save(img, "JPEG", quality=95, exif=ex.tobytes())
        got, m = decode(data)
        ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
        assert m["orientation"] == o
        assert got.shape == ref.shape, (o, got.shape, ref.shape)
        assert np.abs(got.astype(int) - ref).max() <= 1, o


def test_jpeg_downscaled_at_decode(tmp):
    img = photo(1600, 1200, 2)
    data = save(img, "JPEG", quality=85)
    got, m = decode(data, max_pixels=480_000)     # 1.92 MP -> 1/2 scale: 800x600
    assert m["scale"] == 2 and got.shape == (600, 800, 3) and m["file"] == (1600, 1200)
    assert m["out"] == (1600, 1200) and m["format"] == "jpeg"   # results at the photo's size
    ref = Image.open(io.BytesIO(data))
    ref.draft("RGB", (800, 600))
    assert np.abs(got.astype(int) - np.asarray(ref.convert("RGB"))).max() <= 1
    got, m = decode(data, min_long_side=400)       # long side stays >= 400: 1/4
    assert m["scale"] == 4 and got.shape == (300, 400, 3)
    try:   # results come at full size: past 4 x max_pixels the photo is refused, not shrunk
        decode(data, max_pixels=200_000)
        raise AssertionError("decoded past 4 x max_pixels")
    except ValueError as e:
        assert "full-size results" in str(e)


def test_image_bad_inputs(tmp):
    img = photo(64, 48, 3)
    jpg = save(img, "JPEG")
    png = save(img, "PNG")
    cases = [(b"", "too short"), (b"hello world, not an image", "not a JPEG, PNG, WebP or HEIF"),
             (jpg[: len(jpg) // 2], "JPEG"), (png[: len(png) // 2], "PNG"),
             (save(img, "WEBP")[:40], "WebP"), (png, "limit")]
    cases.append((b"\0\0\0\x18ftypheic" + b"\0" * 40, "HEIF"))
    for i, (data, msg) in enumerate(cases):
        try:
            decode(data, max_pixels=1000 if i == 5 else 0)
            raise AssertionError(f"case {i} decoded")
        except ValueError as e:
            assert msg in str(e), (i, str(e))
    big = photo(3000, 2000, 4)
    try:
        decode(save(big, "JPEG"), max_pixels=10_000)   # even 1/8 (375x250) is over 10k
        raise AssertionError("decoded past the limit")
    except ValueError as e:
        assert "limit" in str(e)


def test_webp_matches_pillow(tmp):
    img = photo(33, 21, 5)
    for kw in ({"lossless": True}, {"quality": 80}):
        data = save(img, "WEBP", **kw)
        got, m = decode(data)
        ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert got.shape == ref.shape and np.abs(got.astype(int) - ref).max() <= 1, kw
    assert np.array_equal(decode(save(img, "WEBP", lossless=True))[0], np.asarray(img))


def test_heic_decodes(tmp):
    """HEIC made by libheif's heif-enc (x265); reference pixels from
    heif-convert; the decode must also resemble the source PNG."""
    import subprocess
    src = os.path.join(tmp, "src.png")
    img = photo(64, 48, 6)
    img.save(src)
    heic = os.path.join(tmp, "x.heic")
    subprocess.run(["heif-enc", "-q", "95", src, "-o", heic], check=True, capture_output=True)
    ref_png = os.path.join(tmp, "ref.png")
    subprocess.run(["heif-convert", heic, ref_png], check=True, capture_output=True)
    got, m = decode(open(heic, "rb").read())
    ref = np.asarray(Image.open(ref_png).convert("RGB"))
    assert got.shape == ref.shape == (48, 64, 3)
    assert np.abs(got.astype(int) - ref).max() <= 1
    assert np.abs(got.astype(int) - np.asarray(img)).mean() < 12   # lossy, but the same picture
    try:
        decode(open(heic, "rb").read(), max_pixels=1000)
        raise AssertionError("decoded past the limit")
    except ValueError as e:
        assert "limit" in str(e)


def test_webp_over_limit_decoded_downscaled(tmp):
    """libwebp scales while decoding: no full-size buffer; the result is the
    picture at the largest size under the limit (compared with Pillow's
    area-average resize of the full decode)"""
    img = photo(400, 300, 7)
    data = save(img, "WEBP", lossless=True)
    got, m = decode(data, max_pixels=40_000)       # 120k px -> factor sqrt(1/3): 230x173
    assert got.shape == (173, 230, 3) and m["file"] == (400, 300) and m["out"] == (400, 300), (got.shape, m)
    assert got.shape[0] * got.shape[1] <= 40_000
    ref = np.asarray(img.resize((230, 173), Image.BOX)).astype(int)
    assert np.abs(got.astype(int) - ref).mean() < 4, np.abs(got.astype(int) - ref).mean()


def test_exif_orientation_in_png_and_webp(tmp):
    """EXIF orientation stored in a PNG eXIf chunk or a WebP EXIF chunk is
    applied as Pillow's ImageOps.exif_transpose applies it (all 8 values)."""
    from PIL import ImageOps
    base = photo(40, 30, 9)
    for fmt, kw in (("PNG", {}), ("WEBP", {"lossless": True})):
        for o in range(1, 9):
            ex = Image.Exif()
            ex[0x0112] = o
            b = io.BytesIO()
            base.save(b, fmt, exif=ex.tobytes(), **kw)
            data = b.getvalue()
            ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
            got, m = decode(data)
            assert m["orientation"] == o, (fmt, o, m)
            assert got.shape == ref.shape and np.array_equal(got, ref), (fmt, o)


def test_cmyk_jpeg_matches_pillow(tmp):
    """A CMYK JPEG (Adobe marker, inverted CMYK, as Pillow and print tools
    write them) decodes to the RGB Pillow gives."""
    img = photo(64, 48, 10).convert("CMYK")
    b = io.BytesIO()
    img.save(b, "JPEG", quality=95)
    data = b.getvalue()
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    got, m = decode(data)
    assert got.shape == ref.shape == (48, 64, 3)
    assert np.abs(got.astype(int) - ref).max() <= 1, np.abs(got.astype(int) - ref).max()
