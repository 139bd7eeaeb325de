"""segpipe from Python: the C library (libsegpipe) through ctypes, numpy in
and out, no re-implementation.

    import segpipe
    r = segpipe.ct("ct.nii.gz")                    # or an array + affine
    r.labels            # uint16 array, the input's grid, axes (i, j, k)
    r.passport          # dict: docs/passport.md
    r.seconds           # per-stage seconds
    p = segpipe.passport(ct_array, labels, affine=aff)
    m = segpipe.masks(rgb_array, model="models/demo-rooms")  # {name: bool array}
    c = segpipe.classify("photo.jpg", top=3)       # [(label, probability), ...]

Models are loaded once per (path, device, precision, threads) and reused by
later calls (segpipe.Model holds one explicitly). Errors raise
segpipe.Error with the library's message, its status name and the exit code
the CLI would use. The GIL is released while the C code runs (ctypes), so
other Python threads go on meanwhile.
"""
import ctypes as C
import json
import os
import threading

import numpy as np

from . import _lib

__all__ = ["Error", "Model", "CtResult", "ct", "passport", "masks", "classify", "version"]
__version__ = "0.1.0"

_L = None
_lock = threading.Lock()
STATUS = ["ok", "usage", "input", "model", "runtime", "io", "nomem", "cancelled"]


class Error(RuntimeError):
    """A failed segpipe call: str(e) is the library's message; .status the
    status name ("input", "model", ...); .exit_code what the CLI exits with."""

    def __init__(self, code, message):
        super().__init__(message)
        self.status = STATUS[code] if 0 <= code < len(STATUS) else str(code)
        self.exit_code = lib().sp_status_exit_code(code)


def lib():
    global _L
    with _lock:
        if _L is None:
            _L = _lib.load()
    return _L


def _check(code):
    if code:
        raise Error(code, lib().sp_last_error().decode(errors="replace"))


def version():
    """segpipe's and ONNX Runtime's versions."""
    return {"segpipe": __version__, "onnxruntime": lib().sp_ort_version().decode()}


def _affine_array(affine):
    a = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError("affine must be 4x4")
    return np.ascontiguousarray(a)


class _Volume:
    """An sp_volume from a NIfTI path or a 3D array (+ affine); freed on close."""

    def __init__(self, src, affine=None):
        self.ptr = C.c_void_p()
        if isinstance(src, (str, os.PathLike)):
            _check(lib().sp_volume_read(os.fsencode(src), None, C.byref(self.ptr)))
            return
        a = np.asarray(src)
        if a.ndim != 3:
            raise ValueError(f"a CT volume is 3D, got shape {a.shape}")
        data = np.asfortranarray(a, dtype=np.float32)          # i fastest, as NIfTI
        dim = (C.c_int64 * 3)(*a.shape)
        aff = _affine_array(affine)
        _check(lib().sp_volume_from_array(data.ctypes.data_as(C.POINTER(C.c_float)), dim,
                                          aff.ctypes.data_as(C.POINTER(C.c_double)), C.byref(self.ptr)))

    def close(self):
        if self.ptr:
            lib().sp_volume_free(self.ptr)
            self.ptr = C.c_void_p()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _timings(t):
    t = t.contents
    return {t.stage[i].name.decode(): t.stage[i].seconds for i in range(t.n)}


class CtResult:
    """labels (uint16, the input grid, axes i, j, k), passport (dict or None),
    seconds (stage -> seconds), labels_names (index -> name)."""

    def __init__(self, labels, passport, seconds, label_names):
        self.labels, self.passport, self.seconds, self.label_names = labels, passport, seconds, label_names

    def __repr__(self):
        return f"CtResult(labels {self.labels.shape}, {len(np.unique(self.labels)) - 1} structures)"


class Model:
    """A loaded model package (segpipe.json + ONNX), reusable across calls
    and threads. model: a package folder or a bundled name ("demo-ct");
    None: the default CT model."""

    def __init__(self, model=None, device="cpu", threads=0, precision="auto"):
        L = lib()
        self._keep = [os.fsencode(device), os.fsencode(precision)]
        rp = L.sp_runtime_default_params()
        rp.device, rp.precision, rp.threads = self._keep[0], self._keep[1], threads
        self.threads = threads
        self._rt, self._pk = C.c_void_p(), C.c_void_p()
        _check(L.sp_runtime_create(C.byref(rp), C.byref(self._rt)))
        try:
            _check(L.sp_package_load(self._rt, os.fsencode(_model_dir(model)), C.byref(self._pk)))
        except Error:
            L.sp_runtime_free(self._rt)
            raise
        self.task = L.sp_package_task(self._pk).decode()
        self.labels = [L.sp_package_label(self._pk, i).decode() for i in range(L.sp_package_num_classes(self._pk))]

    def close(self):
        if self._pk:
            lib().sp_package_free(self._pk)
            lib().sp_runtime_free(self._rt)
            self._pk = self._rt = C.c_void_p()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def ct(self, ct, affine=None, passport=True, tile_batch=0, step=0.0, largest_component=False):
        """Segment a CT (NIfTI path, or a 3D array in HU with its affine)."""
        if self.task != "ct":
            raise Error(1, f"this model is a '{self.task}' model, not a CT model")
        L = lib()
        p = L.sp_ct_default_params()
        p.threads, p.passport, p.tile_batch, p.step = self.threads, int(passport), tile_batch, step
        p.largest_component = int(largest_component)
        res = C.c_void_p()
        with _Volume(ct, affine) as v:
            _check(L.sp_ct_run(self._pk, v.ptr, C.byref(p), C.byref(res)))
        try:
            dim = (C.c_int64 * 3)()
            lab = L.sp_ct_result_labels(res, dim)
            n = dim[0] * dim[1] * dim[2]
            arr = np.ctypeslib.as_array(lab, shape=(n,)).copy().reshape(dim[2], dim[1], dim[0]).T
            pj = L.sp_ct_result_passport_json(res)
            return CtResult(arr, json.loads(pj) if pj else None, _timings(L.sp_ct_result_timings(res)),
                            dict(enumerate(self.labels)))
        finally:
            L.sp_ct_result_free(res)

    def _image(self, image):
        """an sp_image from a path or an H x W x 3 uint8 RGB array (caller frees)"""
        L = lib()
        img = C.c_void_p()
        if isinstance(image, (str, os.PathLike)):
            _check(L.sp_image_read(os.fsencode(image), None, C.byref(img)))
            return img
        a = np.ascontiguousarray(image, dtype=np.uint8)
        if a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"a photo is H x W x 3 (RGB), got shape {a.shape}")
        _check(L.sp_image_from_rgb(a.ctypes.data_as(C.POINTER(C.c_uint8)), a.shape[1], a.shape[0], C.byref(img)))
        return img

    def classify(self, image, top=5):
        """Top labels of one photo (path or H x W x 3 uint8 RGB array):
        [(label, probability), ...] best first; .probabilities on the
        result has every label's, .seconds the stages'."""
        if self.task != "classify":
            raise Error(1, f"this model is a '{self.task}' model, not a classify model")
        L = lib()
        img = self._image(image)
        try:
            p = L.sp_classify_default_params()
            p.top_k, p.threads = top, self.threads
            imgs = (C.c_void_p * 1)(img)
            out = C.POINTER(C.POINTER(_lib.ClassifyResult))()
            t = _lib.Timings()
            _check(L.sp_classify_run(self._pk, imgs, 1, C.byref(p), C.byref(out), C.byref(t)))
        finally:
            L.sp_image_free(img)
        r = out[0]
        try:
            c = r.contents
            res = ClassifyResult((c.top[i].label.decode(), c.top[i].prob) for i in range(c.k))
            res.probabilities = {self.labels[i]: c.probs[i] for i in range(c.n_classes)}
            res.seconds = _timings(C.pointer(t))
            return res
        finally:
            L.sp_classify_result_free(r)
            _lib.libc.free(out)

    def masks(self, image, masks=None, long_side=0):
        """Masks of one photo (path, or an H x W x 3 uint8 RGB array):
        {name: bool array H x W}, with .areas and .seconds on the result."""
        if self.task != "masks":
            raise Error(1, f"this model is a '{self.task}' model, not a photo-masks model")
        L = lib()
        img = self._image(image)
        try:
            return self._masks_of(img, masks, long_side)
        finally:
            L.sp_image_free(img)

    def _masks_of(self, img, masks, long_side):
        L = lib()
        p = L.sp_masks_default_params()
        p.long_side, p.threads = long_side, self.threads
        if masks:
            names = [m.encode() for m in masks]
            arr = (C.c_char_p * len(names))(*names)
            p.masks, p.n_masks = C.cast(arr, C.POINTER(C.c_char_p)), len(names)
        imgs = (C.c_void_p * 1)(img)
        out = C.POINTER(C.POINTER(_lib.MasksResult))()
        t = _lib.Timings()
        _check(L.sp_masks_run(self._pk, imgs, 1, C.byref(p), C.byref(out), C.byref(t)))
        r = out[0]
        try:
            res = MasksResult()
            for i in range(r.contents.n_masks):
                m = r.contents.masks[i]
                pix = np.ctypeslib.as_array(m.pixels, shape=(r.contents.height, r.contents.width))
                res[m.name.decode()] = pix != 0
                res.areas[m.name.decode()] = m.area_fraction
            res.seconds = _timings(C.pointer(t))
            return res
        finally:
            L.sp_masks_result_free(r)
            _lib.libc.free(out)


class ClassifyResult(list):
    """[(label, probability), ...] best first; .probabilities, .seconds."""


class MasksResult(dict):
    """{mask name: bool array H x W}; .areas {name: fraction}, .seconds."""

    def __init__(self):
        super().__init__()
        self.areas, self.seconds = {}, {}


def _model_dir(model):
    if model is None:
        return lib().sp_default_model_dir().decode()
    if os.path.isdir(model):
        return model
    buf = C.create_string_buffer(4096)
    if lib().sp_bundled_model(os.fsencode(model), buf, len(buf)) == 0:
        return buf.value.decode()
    return model    # let the library say what is wrong with it


_models = {}


def _cached(model, device, threads, precision):
    key = (os.path.abspath(_model_dir(model)), device, threads, precision)
    with _lock:
        m = _models.get(key)
    if m is None:
        m = Model(model, device, threads, precision)
        with _lock:
            m = _models.setdefault(key, m)
    return m


def ct(ct, affine=None, model=None, device="cpu", threads=0, precision="auto", **kw):
    """Segment a CT with a cached Model: see Model.ct."""
    return _cached(model, device, threads, precision).ct(ct, affine, **kw)


def classify(image, model=None, device="cpu", threads=0, top=5):
    """Top labels of a photo with a cached Model (default: the bundled demo-shapes)."""
    return _cached(model or "demo-shapes", device, threads, "auto").classify(image, top)


def masks(image, model=None, device="cpu", threads=0, masks=None, long_side=0):
    """Masks of a photo with a cached Model (default: the bundled demo-rooms)."""
    return _cached(model or "demo-rooms", device, threads, "auto").masks(image, masks, long_side)


def passport(ct, labels, affine=None, label_names=None, components=True, threads=0, statistics=False):
    """Measure every label of `labels` (integer array on ct's grid, or a
    NIfTI path) on `ct` (array in HU + affine, or a NIfTI path): the
    passport dict (docs/passport.md); with statistics=True also
    TotalSegmentator's statistics.json dict, as a pair."""
    L = lib()
    if label_names is None and isinstance(labels, (str, os.PathLike)):
        label_names = _file_label_names(labels)
    with _Volume(ct, affine) as v:
        lab = _labels_for(labels, _info(v).dim[:])
        names = [os.fsencode(x) if x else None for x in (label_names or [])]
        arr = (C.c_char_p * max(len(names), 1))(*names)
        p = L.sp_passport_default_params()
        p.components, p.threads = int(components), threads
        ps = C.c_void_p()
        _check(L.sp_passport_compute(v.ptr, lab.ctypes.data_as(C.POINTER(C.c_uint16)), arr, len(names),
                                     C.byref(p), C.byref(ps)))
    try:
        out = json.loads(L.sp_passport_json(ps))
        return (out, json.loads(L.sp_passport_statistics_json(ps))) if statistics else out
    finally:
        L.sp_passport_free(ps)


def _file_label_names(path):
    """Names from a label file's NIfTI label table (TotalSegmentator's, segpipe's), or None."""
    L = lib()
    with _Volume(path) as lv:
        arr = C.POINTER(C.c_void_p)()
        n = L.sp_volume_label_names(lv.ptr, C.byref(arr))
        names = []
        for i in range(n):
            names.append(C.string_at(arr[i]).decode() if arr[i] else None)
            _lib.libc.free(arr[i])
        if n:
            _lib.libc.free(arr)
    return names or None


def _labels_for(labels, shape):
    """labels (array or NIfTI path) as uint16, i fastest, checked against shape."""
    if isinstance(labels, (str, os.PathLike)):
        with _Volume(labels) as lv:
            got = tuple(_info(lv).dim[:])
            a = np.ctypeslib.as_array(lib().sp_volume_data(lv.ptr), shape=(int(np.prod(got)),)).copy()
            a = a.reshape(got[::-1]).T
    else:
        a = np.asarray(labels)
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"labels have shape {tuple(a.shape)}, the CT {tuple(shape)}")
    if a.size and (a.min() < 0 or a.max() > 65535 or not np.array_equal(a, np.rint(a))):
        raise ValueError("labels must be integers in 0..65535")
    return a.astype(np.uint16).ravel(order="F")


def _info(v):
    info = _lib.VolumeInfo()
    lib().sp_volume_get_info(v.ptr, C.byref(info))
    return info
