"""Generators of hostile inputs (issue 39 and the earlier rounds), each at a
small scale (for `make test`: tests/py/test_attack.py) or at full scale (for
`make attack`: tests/attack/run.py). Every generator writes into a folder
and returns what to give segpipe; none needs the network. Sizes are the
attack's: full scale is what the attack run of 2026-12-06 used."""
import gzip, io, os, shutil, struct, zipfile, zlib
import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SERIES = os.path.join(ROOT, "..", "shared", "data", "ct", "example_ct_dicom")
CT_SM = os.path.join(ROOT, "..", "shared", "data", "ct", "example_ct_sm.nii.gz")


def _zeros_gz(out, header, nbytes, chunk=64 << 20):
    """header, then nbytes of zeros, gzipped (a stream of any length in constant memory)"""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    zero = bytes(min(chunk, max(nbytes, 1)))
    with open(out, "wb") as f:
        f.write(z.compress(header))
        left = nbytes
        while left > 0:
            k = min(left, len(zero))
            f.write(z.compress(zero[:k]))
            left -= k
        f.write(z.flush())
    return out


def nifti_header(dim, pixdim=(1, 1, 1), datatype=4, bitpix=16):
    """a NIfTI-1 single-file header (352 bytes, vox_offset 352)"""
    h = bytearray(352)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, 3, dim[0], dim[1], dim[2], 1, 1, 1, 1)
    struct.pack_into("<hh", h, 70, datatype, bitpix)
    struct.pack_into("<8f", h, 76, 1, *pixdim, 1, 1, 1, 1)
    struct.pack_into("<f", h, 108, 352)
    struct.pack_into("<f", h, 112, 1)   # scl_slope
    h[123] = 2                          # xyzt_units: mm
    struct.pack_into("<h", h, 252, 0)   # qform_code
    struct.pack_into("<h", h, 254, 1)   # sform_code
    struct.pack_into("<4f", h, 280, pixdim[0], 0, 0, 0)
    struct.pack_into("<4f", h, 296, 0, pixdim[1], 0, 0)
    struct.pack_into("<4f", h, 312, 0, 0, pixdim[2], 0)
    h[344:348] = b"n+1\0"
    return bytes(h)


def nifti_header_bomb(d, scale):
    """a .nii.gz declaring side x side x 1 int16 (full: 32767, 2 GiB of voxels
    in ~2 MB); at small scale the stream holds only 8 MB of them (the refusal
    must come from the header, before the end of the data is noticed)"""
    side = 32767
    nbytes = side * side * 2 if scale == "full" else 8 << 20
    return _zeros_gz(os.path.join(d, "bomb.nii.gz"), nifti_header((side, side, 1)), nbytes)


def _dicom_slice(rows, cols, pixel_data, ts, series="1.2.3.4.5.6", pos=0.0, sop="1.2.3.4.5.6.7"):
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ts
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = CTImageStorage, sop, series
    ds.Modality = "CT"
    ds.ImagePositionPatient = [0, 0, pos]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelData = pixel_data
    return ds


def _rle_zeros_frame(n):
    """an RLE Lossless frame of n 16-bit zeros: two byte segments of 128-byte replicate runs"""
    runs = n // 128
    seg = b"\x81\x00" * runs + (bytes([257 - (n % 128), 0]) if n % 128 > 1 else (b"\x00\x00" if n % 128 else b""))
    seg += b"\x00" * (len(seg) & 1)
    head = struct.pack("<16I", 2, 64, 64 + len(seg), *([0] * 13))
    return head + seg + seg


def dicom_pixel_bomb(d, scale):
    """one RLE Lossless slice declaring side x side int16 (full: 32767, a
    2 GiB frame; 33.5 MB of DICOM zipped to ~100 KB); small: 8193 (just over
    the side limit, 128 MiB decoded)"""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless
    side = 32767 if scale == "full" else 8193
    ds = _dicom_slice(side, side, encapsulate([_rle_zeros_frame(side * side)]), RLELossless)
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.save_as(buf, write_like_original=False)
    out = os.path.join(d, "pixel-bomb.zip")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("slice.dcm", buf.getvalue())
    return out


def _series_copy(d, name):
    dst = os.path.join(d, name)
    shutil.copytree(SERIES, dst)
    for f in os.listdir(dst):
        os.chmod(os.path.join(dst, f), 0o644)
    return dst


def dicom_link_loop(d, scale):
    """the example series with links back up the tree (loop -> ., a/b -> ../..)"""
    dst = _series_copy(d, "loop")
    os.symlink(".", os.path.join(dst, "loop"))
    os.makedirs(os.path.join(dst, "a"))
    os.symlink("../..", os.path.join(dst, "a", "b"))
    return dst


def dicom_fifo(d, scale):
    """the example series with a FIFO beside the slices (a reader opening it blocks)"""
    dst = _series_copy(d, "fifo")
    os.mkfifo(os.path.join(dst, "zz-fifo.dcm"))
    return dst


def dicom_deep(d, scale):
    """folders nested 40 deep (over the depth bound of 32), a stray file on top
    (so the folder is not refused as empty before the walk)"""
    p = os.path.join(d, "deep")
    os.makedirs(os.path.join(p, *(["x"] * 40)))
    open(os.path.join(p, "readme.txt"), "w").write("not a slice\n")
    return p


def dicom_many(d, scale):
    """more entries than the walk's bound (100000): full scale only (small:
    300 empty files, which must give 'no DICOM image slices')"""
    p = os.path.join(d, "many")
    os.makedirs(p)
    n = 100_001 if scale == "full" else 300
    for i in range(n):
        open(os.path.join(p, f"{i:06d}"), "wb").close()
    return p


def zip_bomb(d, scale):
    """one entry of zeros (full: 4 GiB in ~18 MB; small: 192 MiB)"""
    out = os.path.join(d, "zip-bomb.zip")
    n = (4 << 30) if scale == "full" else (192 << 20)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("x.dcm", "w", force_zip64=True) as f:
            zero = bytes(64 << 20)
            for _ in range(n // len(zero)):
                f.write(zero)
    return out


def zip_bomb_lying(d, scale):
    """an entry whose headers declare 1000 bytes and that inflates to 48 MiB
    (full: 1 GiB): the declared sizes are checked first, so the inflated
    bytes must be counted too"""
    out = os.path.join(d, "zip-lying.zip")
    n = (1 << 30) if scale == "full" else (48 << 20)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("x.dcm", "w") as f:
            zero = bytes(16 << 20)
            for _ in range(n // len(zero)):
                f.write(zero)
    raw = bytearray(open(out, "rb").read())
    struct.pack_into("<I", raw, 22, 1000)                 # the local header's uncompressed size
    cd = raw.rfind(b"PK\x01\x02")
    struct.pack_into("<I", raw, cd + 24, 1000)            # the central directory's
    open(out, "wb").write(bytes(raw))
    return out


def zip_slip(d, scale):
    """the series under names that climb out of any folder (../../evil/...)"""
    out = os.path.join(d, "zip-slip.zip")
    with zipfile.ZipFile(out, "w") as z:
        for f in sorted(os.listdir(SERIES)):
            z.write(os.path.join(SERIES, f), f"../../evil/{f}")
    return out


def nifti_dims_overflow(d, scale):
    """a header whose dims multiply past 2^63 bytes (32767^3 x 8-byte voxels, dim[4..7] too)"""
    h = bytearray(nifti_header((32767, 32767, 32767), datatype=64, bitpix=64))
    struct.pack_into("<8h", h, 40, 7, 32767, 32767, 32767, 32767, 32767, 32767, 32767)
    out = os.path.join(d, "dims.nii")
    open(out, "wb").write(bytes(h) + bytes(64))
    return out


def dicom_element_overrun(d, scale):
    """a slice whose element declares 3.4 GB in a small file (header overflow)"""
    import pydicom
    src = os.path.join(SERIES, sorted(os.listdir(SERIES))[0])
    raw = bytearray(open(src, "rb").read())
    at = raw.find(b"\x10\x00\x10\x00PN")   # PatientName: explicit VR, 2-byte length -> make it UN, 4-byte
    assert at > 0
    raw[at + 4:at + 8] = b"UN\x00\x00"
    raw[at + 8:at + 8] = struct.pack("<I", 0xCAFEBABE)
    p = os.path.join(d, "overrun")
    os.makedirs(p)
    open(os.path.join(p, "slice.dcm"), "wb").write(bytes(raw))
    return p


# name -> (generator, expected exit code, a phrase the message must hold)
CASES = {
    "nifti_header_bomb": (nifti_header_bomb, 3, "refused before reading the voxels"),
    "dicom_pixel_bomb": (dicom_pixel_bomb, 3, "per side"),
    "dicom_link_loop": (dicom_link_loop, 0, "already read"),
    "dicom_fifo": (dicom_fifo, 0, "not regular files"),
    "dicom_deep": (dicom_deep, 3, "nested more than 32 deep"),
    "dicom_many": (dicom_many, 3, None),   # full: 'more than 100000'; small: 'no DICOM image slices'
    "zip_bomb": (zip_bomb, 3, "unpacks to more than"),
    "zip_bomb_lying": (zip_bomb_lying, 3, "holds more than"),
    "zip_slip": (zip_slip, 0, ""),
    "nifti_dims_overflow": (nifti_dims_overflow, 3, ""),
    "dicom_element_overrun": (dicom_element_overrun, 3, "overruns the file"),
}
