"""segpipe from Python: the C library (libsegpipe) through ctypes, numpy and
nibabel in and out, no re-implementation.

TotalSegmentator's journey (path or nibabel image in, nibabel image out,
outputs written as `segpipe ct` writes them):

    import segpipe
    img = segpipe.segment("ct.nii.gz", "out/labels.nii.gz")   # also out/labels.passport.json,
                                                              # out/labels.statistics.json
    img.affine, img.label_names            # nibabel Nifti1Image; {1: "spleen", ...}
    img = segpipe.segment(nib.load("ct.nii.gz"), roi_subset=["liver", "spleen"], preview="p.png")
    img = segpipe.segment("t1.nii.gz", task="mri", model="models/brainchop-gwm")

Arrays and results:

    r = segpipe.ct("ct.nii.gz")                    # or a nibabel image, or an array + affine
    r.labels            # uint16 array, the input's grid, axes (i, j, k)
    r.affine            # 4x4, voxel -> RAS+ mm
    r.image             # the labels as a nibabel image (as the CLI writes them)
    r.label_names       # {index: name}: the same mapping passport() accepts
    r.passport          # dict: docs/passport.md
    r.statistics        # TotalSegmentator's statistics.json dict
    r.seconds           # per-stage seconds
    p = segpipe.passport(ct_array, labels, affine=aff, label_names=r.label_names)
    m = segpipe.masks(rgb_array, model="models/demo-rooms")  # {name: bool array}
    c = segpipe.classify("photo.jpg", top=3)       # [(label, probability), ...]

Models are loaded once per (path, device, precision, threads) and reused by
later calls (segpipe.Model holds one explicitly). Errors raise
segpipe.Error with the library's message, its status name and the exit code
the CLI would use (segpipe.InputError, also a ValueError, for inputs refused
before the library sees them). The GIL is released while the C code runs
(ctypes), so other Python threads go on meanwhile. Where the package finds
libsegpipe: docs/python.md.
"""
import ctypes as C
import datetime
import hashlib
import json
import os
import tempfile
import threading
import warnings

import numpy as np

from . import _lib

__all__ = ["Error", "InputError", "SegpipeWarning", "Model", "CtResult", "segment", "totalsegmentator", "ct", "mri", "passport",
           "masks", "classify", "version", "library_path"]
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


class SegpipeWarning(UserWarning):
    """An input segpipe runs but doubts (no orientation, values that do not
    look like a CT); the text `segpipe ct` prints on stderr, also kept in
    the passport's provenance "warnings"."""


class InputError(Error, ValueError):
    """An input refused before the library ran (wrong shape, unknown
    structure, bad option value): status "input", exit code 3 - or "usage",
    exit code 2, for an option the CLI would refuse."""

    def __init__(self, message, status="input"):
        super().__init__(STATUS.index(status), message)


def _on_log(level, msg, user):
    """The library's warnings (SP_LOG_WARN: a DICOM source without UIDs, a
    private code, ...) as Python warnings, as the CLI prints them."""
    warnings.warn(msg.decode(errors="replace").rstrip(), SegpipeWarning, stacklevel=2)


_log_fn = _lib.LOG(_on_log)   # kept alive for as long as the library may call it


def lib():
    global _L
    with _lock:
        if _L is None:
            _L = _lib.load()
            _L.sp_log_set_callback(_log_fn, None)
            _L.sp_log_set_level(2)   # SP_LOG_WARN and above
    return _L


def _check(code):
    if code:
        raise Error(code, lib().sp_last_error().decode(errors="replace"))


def lib_version():
    """libsegpipe's version (SP_VERSION_STRING), as the passport records it."""
    return __version__


def library_path():
    """The libsegpipe file this process loaded (docs/python.md: where it is found)."""
    return lib()._name


def version():
    """segpipe's and ONNX Runtime's versions."""
    return {"segpipe": __version__, "onnxruntime": lib().sp_ort_version().decode()}


def _affine_array(affine):
    a = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise ValueError("affine must be 4x4")
    return np.ascontiguousarray(a)


def _is_image(x):
    """A nibabel image (Nifti1Image, Nifti2Image, MGHImage...)."""
    return hasattr(x, "affine") and hasattr(x, "dataobj") and hasattr(x, "header")


class _Volume:
    """An sp_volume from a path (NIfTI, DICOM folder or zip), a nibabel image
    or a 3D array (+ affine); freed on close."""

    def __init__(self, src, affine=None, series=None):
        self.ptr = C.c_void_p()
        if isinstance(src, (str, os.PathLike)):
            rp = lib().sp_read_default_params()
            self._series = os.fsencode(series) if series else None
            rp.dicom_series = self._series
            _check(lib().sp_volume_sniff(os.fsencode(src)))    # a photo, one DICOM file...: named, not read
            _check(lib().sp_volume_read(os.fsencode(src), C.byref(rp), C.byref(self.ptr)))
            self.oriented = None        # the reader knows: _info()'s codes
            return
        self.oriented = True
        if _is_image(src):
            q, s_ = int(src.header.get("qform_code", 1)), int(src.header.get("sform_code", 1))
            self.oriented = bool(q or s_)
        if _is_image(src):
            affine = src.affine if affine is None else affine
            src = np.asanyarray(src.dataobj)
        elif affine is None:   # the model's spacing is in mm: 1 mm voxels may be far from the scan's
            warnings.warn("an array without affine=: taken as 1 mm voxels in RAS+ order; pass the scan's affine "
                          "(e.g. nibabel's img.affine) or the image itself", SegpipeWarning, stacklevel=4)
        a = np.asarray(src)
        while a.ndim > 3 and a.shape[-1] == 1:      # (x, y, z, 1): one volume
            a = a[..., 0]
        if a.ndim != 3:
            hint = " (one 2D slice: the models segment 3D volumes)" if a.ndim == 2 else ""
            raise InputError(f"a volume is 3D, got shape {a.shape}{hint}")
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


class _CropFrom:
    """The crop_from fields of ct params p for a prior result (a label file,
    named by its label table when it has one, or a nibabel image); its
    buffers live until close."""

    def __init__(self, src, p):
        self.vol = None
        if src is None:
            return
        if isinstance(src, (str, os.PathLike)) and os.path.isdir(src):
            raise InputError("crop_from is a label file or image (a folder of masks: segpipe ct --crop-from)",
                             "usage")
        self.vol = _Volume(src)
        self.lab = _labels_for(src, tuple(_info(self.vol).dim[:]))
        names = _file_label_names(src) if isinstance(src, (str, os.PathLike)) else None
        self.names = (C.c_char_p * max(len(names or []), 1))(*[os.fsencode(x) if x else None for x in names or []])
        p.crop_from = self.lab.ctypes.data_as(C.POINTER(C.c_uint16))
        p.crop_from_grid = self.vol.ptr
        p.crop_from_names = self.names if names else None
        p.crop_from_n = len(names or [])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.vol:
            self.vol.close()


def _timings(t):
    t = t.contents
    return {t.stage[i].name.decode(): t.stage[i].seconds for i in range(t.n)}


class CtResult:
    """One segmentation: labels (uint16, the input grid, axes i, j, k),
    affine (4x4 voxel -> RAS+ mm), label_names ({index: name}, the mapping
    passport() accepts), passport and statistics (dicts, or None with
    passport=False), seconds (stage -> seconds), model_labels (the labels on
    the model's grid with keep_model_labels=True), outputs (the files
    written, when an output path was given). .image: the labels as a
    nibabel image, header and label table as `segpipe ct` writes them."""

    def __init__(self, labels, passport, seconds, label_names, affine=None, statistics=None, image=None):
        self.labels, self.passport, self.seconds, self.label_names = labels, passport, seconds, label_names
        self.affine, self.statistics, self._image = affine, statistics, image
        self.model_labels, self.outputs = None, {}

    @property
    def image(self):
        """The labels as a nibabel Nifti1Image (.label_names, .passport,
        .statistics, .seconds set on it)."""
        if self._image is None:
            raise ImportError("segpipe: CtResult.image needs nibabel (pip install nibabel)")
        img = self._image
        img.label_names, img.passport, img.statistics, img.seconds = (self.label_names, self.passport,
                                                                      self.statistics, self.seconds)
        return img

    def __repr__(self):
        return f"CtResult(labels {self.labels.shape}, {len(np.unique(self.labels)) - 1} structures)"


_ACCUMULATORS = ("fp32", "fp16")
_OUTPUT_TYPES = ("nifti", "dicom")


def _stem(path):
    """The CLI's stem of an output path: without .nii.gz, .nii or .dcm."""
    for ext in (".nii.gz", ".nii", ".dcm"):
        if path.endswith(ext) and len(path) > len(ext):
            return path[:-len(ext)]
    return path


def _check_output(output, split, output_type):
    """The CLI's checks of -o OUTPUT, --split and --output-type (exit code 2)."""
    if output_type not in _OUTPUT_TYPES:
        raise InputError("output_type is 'nifti' or 'dicom'", "usage")
    if output_type == "dicom" and (split or not output.endswith(".dcm")):
        raise InputError("with output_type='dicom', output must end in .dcm (and split=False)", "usage")
    if output_type == "nifti" and not split and ".nii" not in output:
        raise InputError("output must end in .nii or .nii.gz (or split=True)", "usage")


def _doubts(v, task, name):
    """The CLI's warnings about an input it runs (ct_cmd.c's ct_check_volume),
    issued as SegpipeWarning; the list of their texts."""
    L, info, out = lib(), _info(v), []
    oriented = v.oriented if v.oriented is not None else bool(info.qform_code or info.sform_code
                                                              or L.sp_volume_from_dicom(v.ptr))
    if not oriented:
        out.append("no orientation (NIfTI qform and sform codes are 0): read as RAS at its pixdim spacing; check "
                   "the labels' left and right")
    if task == "ct":
        n = info.dim[0] * info.dim[1] * info.dim[2]
        d = np.ctypeslib.as_array(L.sp_volume_data(v.ptr), shape=(n,))
        lo, hi = float(d.min()), float(d.max())
        # the CLI's rule: whole numbers in 0..255, at most 64 distinct values (a T1 in 0..255 has more)
        if lo >= 0 and hi <= 255 and np.array_equal(d, np.floor(d)) and len(np.unique(d)) <= 64:
            out.append("the values are a few whole numbers in 0..255: this looks like a label map, not a CT in HU")
        elif np.count_nonzero(d < -500) * 100 < n:
            out.append("less than 1% of the voxels are below -500: no air in Hounsfield units, so this does not look "
                       "like a CT (an MRI? use segpipe mri)")
    for m in out:
        warnings.warn(f"{name}: {m}", SegpipeWarning, stacklevel=4)
    return out


def _sha256_file(path):
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _checksum(path, skip_cache=False):
    """The CLI's provenance of a file or folder (ct_report.c's checksum_json):
    name, size_bytes, sha256; a folder: files and the sha256 of its files'
    `sha256sum` lines sorted by relative path."""
    path = os.fspath(path).rstrip("/") or "/"
    name = os.path.basename(path) or path
    if not os.path.isdir(path):
        hexd, size = _sha256_file(path)
        return {"name": name, "size_bytes": size, "sha256": hexd}
    rels = []
    for root, _dirs, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            if os.path.islink(full) or not os.path.isfile(full) or (skip_cache and f.endswith(".opt.ort")):
                continue
            rels.append(os.path.relpath(full, path))
    rels.sort(key=os.fsencode)
    h, total = hashlib.sha256(), 0
    for rel in rels:
        hexd, size = _sha256_file(os.path.join(path, rel))
        total += size
        h.update(f"{hexd}  ".encode() + os.fsencode(rel) + b"\n")
    return {"name": name, "files": len(rels), "size_bytes": total, "sha256": h.hexdigest()}


def _provenance(src, v, model_dir, given, doubts):
    """passport.json's "provenance" as `segpipe ct` writes it; an in-memory
    input is named by kind and hashed as its float32 voxels (i fastest)."""
    if isinstance(src, (str, os.PathLike)):
        inp = _checksum(src)
    else:
        info = _info(v)
        n = info.dim[0] * info.dim[1] * info.dim[2]
        d = np.ctypeslib.as_array(lib().sp_volume_data(v.ptr), shape=(n,))
        name = os.path.basename(src.get_filename() or "") if _is_image(src) else ""
        inp = {"name": name or ("nibabel image" if _is_image(src) else "array"), "in_memory": True,
               "size_bytes": int(d.nbytes), "sha256": hashlib.sha256(d.tobytes()).hexdigest()}
    return {"input": inp, "model": _checksum(model_dir, skip_cache=True), "command": "python segpipe",
            "arguments": [f"{k}={given[k]!r}" for k in sorted(given)],
            "segpipe_version": lib_version(), "onnxruntime_version": lib().sp_ort_version().decode(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "warnings": list(doubts)}


def _with_provenance(text, prov):
    """The library's passport text with "provenance" as its last member (as ct_report.c adds it)."""
    body = text.rstrip()
    if not body.endswith("}"):
        return text
    return body[:-1].rstrip() + ',\n "provenance": ' + json.dumps(prov, indent=1) + "\n}\n"


class Model:
    """A loaded model package (segpipe.json + ONNX), reusable across calls
    and threads. model: a package folder or a bundled name ("demo-ct");
    None: the default CT model. parts_on_demand: a task package's part
    models are loaded by each call that runs them and released after their
    labels are merged (one part's memory at a time, each call paying the
    set-up); False (default): all held for the Model's life (fast repeats)."""

    def __init__(self, model=None, device="cpu", threads=0, precision="auto", cache_graph=False,
                 parts_on_demand=False):
        L = lib()
        self._keep = [os.fsencode(_device(device)), os.fsencode(precision)]
        rp = L.sp_runtime_default_params()
        rp.device, rp.precision, rp.threads = self._keep[0], self._keep[1], threads
        rp.cache_optimized = int(cache_graph)      # --cache-graph: the per-user graph cache (docs/performance.md)
        rp.parts_on_demand = int(parts_on_demand)   # sp_runtime_params.parts_on_demand
        self.threads = threads
        self._rt, self._pk = C.c_void_p(), C.c_void_p()
        _check(L.sp_runtime_create(C.byref(rp), C.byref(self._rt)))
        try:
            self.dir = _model_dir(model)
            _check(L.sp_package_load(self._rt, os.fsencode(self.dir), C.byref(self._pk)))
        except Error:
            L.sp_runtime_free(self._rt)
            raise
        self.task = L.sp_package_task(self._pk).decode()
        self.labels = [L.sp_package_label(self._pk, i).decode() for i in range(L.sp_package_num_classes(self._pk))]
        # a task package (several part models under one class map): its parts' names; [] for one model
        self.parts = [L.sp_package_name(L.sp_package_part(self._pk, i)).decode()
                      for i in range(L.sp_package_num_parts(self._pk))]

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

    def ct(self, ct, affine=None, passport=True, tile_batch=0, step=0.0, largest_component=False, *, output=None,
           split=False, output_type="nifti", preview=None, roi_subset=None, smooth=False, min_component_ml=0.0,
           keep_border=False, accumulator="fp32", series=None, keep_model_labels=False, save_model_labels=None,
           crop_from=None):
        """Segment a CT (or, with an "mri" package, an MRI): a path (NIfTI,
        DICOM folder or zip), a nibabel image, or a 3D array with its affine.
        Returns a CtResult. The keywords are `segpipe ct`'s options
        (docs/cli.md): output (-o; written as the CLI writes it, with the
        passport and statistics beside it, its folder made when missing),
        split (--split), output_type ("nifti" or "dicom"), preview
        (--preview PNG), roi_subset (list or "a,b"), smooth, min_component_ml,
        keep_border, accumulator ("fp32"/"fp16"), series (--series UID),
        save_model_labels (--save-model-labels PATH), crop_from (--crop-from:
        a prior result of the scan, a label file or nibabel image, that a
        subtask package or roi_subset crops with instead of the crop model).

            m = segpipe.Model("demo-ct")
            r = m.ct("ct.nii.gz", output="out/labels.nii.gz", roi_subset=["liver"])
        """
        if self.task not in ("ct", "mri"):
            raise Error(1, f"this model is a '{self.task}' model, not a CT or MRI model")
        if accumulator not in _ACCUMULATORS:
            raise InputError("accumulator is 'fp32' or 'fp16'", "usage")
        if output is not None:
            output = os.fspath(output)
            _check_output(output, split, output_type)
        if isinstance(roi_subset, (list, tuple, set)):
            roi_subset = ",".join(roi_subset)
        keep_roi = os.fsencode(roi_subset) if roi_subset else None
        L = lib()
        p = L.sp_ct_default_params()
        p.threads, p.passport, p.tile_batch, p.step = self.threads, int(passport), tile_batch, step
        p.largest_component, p.smooth, p.min_component_ml = int(largest_component), int(smooth), min_component_ml
        p.keep_border, p.accum_fp16, p.roi_subset = int(keep_border), int(accumulator == "fp16"), keep_roi
        p.keep_model_labels = int(bool(keep_model_labels or save_model_labels))
        given = {k: val for k, val in locals().items() if k in _CT_DEFAULTS and k != "affine"
                 and isinstance(val, (str, int, float, bool, list, tuple, os.PathLike)) and val != _CT_DEFAULTS[k]}
        res = C.c_void_p()
        with _Volume(ct, affine, series) as v, _CropFrom(crop_from, p):
            if output is not None and output_type == "dicom" and not L.sp_volume_from_dicom(v.ptr):
                raise InputError("output_type='dicom' needs a DICOM input (a DICOM-SEG references the series it "
                                 "was made from)", "usage")
            name = os.fspath(ct) if isinstance(ct, (str, os.PathLike)) else None
            doubts = _doubts(v, self.task, name or "the volume")
            _check(L.sp_ct_run(self._pk, v.ptr, C.byref(p), C.byref(res)))
            try:
                prov = _provenance(ct, v, self.dir, given, doubts)
                return self._result(res, v, output, split, output_type, preview, save_model_labels, prov)
            finally:
                L.sp_ct_result_free(res)

    def _result(self, res, v, output, split, output_type, preview, save_model_labels, prov):
        """A CtResult from res (and the files written, when output is set)."""
        L = lib()
        dim = (C.c_int64 * 3)()
        lab = L.sp_ct_result_labels(res, dim)
        n = dim[0] * dim[1] * dim[2]
        arr = np.ctypeslib.as_array(lab, shape=(n,)).copy().reshape(dim[2], dim[1], dim[0]).T
        pj = L.sp_ct_result_passport_json(res)
        pj = _with_provenance(pj.decode(), prov) if pj else None
        ps = L.sp_ct_result_passport(res)
        stats = json.loads(L.sp_passport_statistics_json(ps)) if ps else None
        info = _info(v)
        aff = np.array(info.affine[:]).reshape(4, 4)
        r = CtResult(arr, json.loads(pj) if pj else None, _timings(L.sp_ct_result_timings(res)),
                     dict(enumerate(self.labels)), aff, stats)
        if save_model_labels or output is not None:
            self._write(res, v, lab, output, split, output_type, preview, save_model_labels, r, pj)
        elif preview:
            self._write_preview(v, lab, preview, r)
        r._image = self._nifti(lab, v, r.outputs.get("labels") if output_type == "nifti" and not split else None)
        return r

    def _write_preview(self, v, lab, preview, r):
        L = lib()
        os.makedirs(os.path.dirname(os.path.abspath(preview)), exist_ok=True)
        _check(L.sp_preview_ct_png(os.fsencode(preview), v.ptr, lab, L.sp_package_labels(self._pk), len(self.labels)))
        r.outputs["preview"] = preview

    def _write(self, res, v, lab, output, split, output_type, preview, save_model_labels, r, pj):
        """The files `segpipe ct -o output` writes, in its order and names."""
        L = lib()
        names, n = L.sp_package_labels(self._pk), len(self.labels)
        if output is not None:
            folder = output if split else os.path.dirname(os.path.abspath(output))
            os.makedirs(folder, exist_ok=True)
            out = os.fsencode(output)
            if split:
                _check(L.sp_labels_write_split(out, lab, v.ptr, self._pk))
                _check(L.sp_labels_write_derived(out, lab, v.ptr, self._pk))   # TotalSegmentator's body: body, skin
                ppath, spath = os.path.join(output, "passport.json"), os.path.join(output, "statistics.json")
            elif output_type == "dicom":
                desc = b"segpipe " + L.sp_package_name(self._pk)
                _check(L.sp_labels_write_dicom_seg(out, lab, v.ptr, names, n, desc))
            else:
                _check(L.sp_labels_write_named(out, lab, v.ptr, names, n))
            if not split:
                ppath, spath = _stem(output) + ".passport.json", _stem(output) + ".statistics.json"
            r.outputs["labels"] = output
        if save_model_labels:
            md, ma = (C.c_int64 * 3)(), (C.c_double * 16)()
            ml = L.sp_ct_result_model_labels(res, md, ma)
            _check(L.sp_labels_write_affine(os.fsencode(save_model_labels), ml, md, ma))
            r.outputs["model_labels"] = save_model_labels
        if preview:
            self._write_preview(v, lab, preview, r)
        ps = L.sp_ct_result_passport(res)
        if output is not None and ps:
            for path, text in ((ppath, pj.encode()), (spath, L.sp_passport_statistics_json(ps))):
                _check(L.sp_write_file_atomic(os.fsencode(path), text, len(text)))
            r.outputs["passport"], r.outputs["statistics"] = ppath, spath

    def _nifti(self, lab, v, written):
        """The labels as a nibabel image, exactly as sp_labels_write_named
        writes them (header, qform/sform, label table): loaded from the file
        just written, else from an uncompressed temporary one."""
        try:
            import nibabel as nib
        except ImportError:
            return None
        L = lib()
        with tempfile.TemporaryDirectory(prefix="segpipe-") as d:
            path = written
            if path is None:
                path = os.path.join(d, "labels.nii")
                _check(L.sp_labels_write_named(os.fsencode(path), lab, v.ptr, L.sp_package_labels(self._pk),
                                               len(self.labels)))
            im = nib.load(path)
            return nib.Nifti1Image(np.asanyarray(im.dataobj).copy(), im.affine, im.header)

    def segment(self, input, output=None, **options):
        """As Model.ct, returning the labels as a nibabel image (affine,
        header and label table as the CLI writes them) with .label_names,
        .passport, .statistics and .seconds set on it."""
        return self.ct(input, output=output, **options).image

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


import inspect as _inspect  # noqa: E402

_CT_DEFAULTS = {k: p.default for k, p in _inspect.signature(Model.ct).parameters.items()
                if p.default is not _inspect.Parameter.empty and k not in ("output",)}


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


def _cached(model, device, threads, precision, cache_graph=False):
    """The Model for these settings, loaded on first use."""
    key = (os.path.abspath(_model_dir(model)), device, threads, precision, bool(cache_graph))
    with _lock:
        m = _models.get(key)
    if m is None:
        m = Model(model, device, threads, precision, cache_graph)
        with _lock:
            m = _models.setdefault(key, m)
    return m


def _device(device):
    """TotalSegmentator's spellings: "gpu" is "cuda"; "gpu:N" / "cuda:N" pick
    GPU N (CUDA's ordinal among the visible GPUs; the library checks it, as
    `segpipe ct --device gpu:N` does), so models on several GPUs can live in
    one process."""
    d = str(device)
    name, colon, index = d.partition(":")
    if name == "gpu":
        name = "cuda"
    if colon:
        if name not in ("cuda", "tensorrt") or not index.isdigit() or len(index) > 2 or int(index) > 63:
            raise InputError(f"device is cpu, cuda, cuda:N, gpu or gpu:N (N 0..63); got {d!r}", "usage")
        return f"{name}:{int(index)}"
    return name


def ct(ct, affine=None, model=None, device="cpu", threads=0, precision="auto", cache_graph=False, **kw):
    """Segment a CT with a cached Model (default: the bundled CT model):
    a path, a nibabel image or an array + affine in, a CtResult out. The
    keywords are Model.ct's (`segpipe ct`'s options).

        r = segpipe.ct("ct.nii.gz", output="out/labels.nii.gz")
        r.labels, r.affine, r.label_names, r.passport
    """
    return _cached(model, _device(device), threads, precision, cache_graph).ct(ct, affine, **kw)


def mri(image, affine=None, model=None, device="cpu", threads=0, precision="auto", cache_graph=False, **kw):
    """Segment a brain MRI (`segpipe mri`): as ct(), with an "mri" model
    package (required: tools/import/make_brainchop_package.py or
    import_brainchop.py builds one), or a list of them: a chain, each but the
    last a brain extractor (as `segpipe mri --model mindgrab,dk104`)."""
    if model is None:
        raise InputError("give model= an MRI package (tools/import/make_brainchop_package.py builds brainchop's "
                         "MeshNet)", "usage")
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    if len(models) > 1:   # a chain (docs/mri.md): each extractor's mask multiplies the T1 before the next
        if isinstance(image, (str, os.PathLike)):
            import nibabel
            img = nibabel.load(image)
            image, affine = np.asarray(img.dataobj, np.float32), img.affine
        elif hasattr(image, "affine") and hasattr(image, "dataobj"):
            image, affine = np.asarray(image.dataobj, np.float32), image.affine
        for m in models[:-1]:
            r = _cached(m, _device(device), threads, precision, cache_graph).ct(image, affine, passport=False)
            image = np.where(r.labels > 0, image, 0).astype(np.float32)
    return _cached(models[-1], _device(device), threads, precision, cache_graph).ct(image, affine, **kw)


def segment(input, output=None, task="ct", model=None, device="cpu", threads=0, precision="auto", ml=True,
            statistics=None, fast=None, quiet=None, **options):
    """TotalSegmentator's totalsegmentator(input, output, ...): segment
    `input` (a NIfTI path, a DICOM folder or zip, or a nibabel image) and
    return the labels as a nibabel Nifti1Image, header, affine and label
    table exactly as `segpipe ct -o` writes them, with .label_names
    ({index: name}), .passport, .statistics and .seconds set on it.

    output: the labels file (.nii.gz, .nii, or .dcm with
    output_type="dicom"), its passport and statistics written beside it as
    the CLI writes them (<stem>.passport.json, <stem>.statistics.json);
    with ml=False (TotalSegmentator's default without --ml) a folder of one
    <structure>.nii.gz per class. Its folder is made when missing.
    task: "ct" or "mri" (an MRI package must be given as model=).
    device: "cpu", "cuda", "gpu" or "gpu:N". statistics=False skips the
    passport and statistics. Any other keyword is Model.ct's (roi_subset,
    preview, keep_border, smooth, step, tile_batch, series, ...).

        img = segpipe.segment("ct.nii.gz", "seg/labels.nii.gz", roi_subset=["liver", "spleen"])
        liver = img.get_fdata() == {v: k for k, v in img.label_names.items()}["liver"]

    Errors raise segpipe.Error (.exit_code: what `segpipe ct` exits with).
    """
    if task not in ("ct", "mri"):
        raise InputError(f"task is 'ct' or 'mri', got {task!r}", "usage")
    if fast:
        raise InputError("fast=True is TotalSegmentator's 3 mm model: give model= the package to use (segpipe "
                         "runs the package it is given at its own resolution)", "usage")
    if statistics is not None:
        options["passport"] = bool(statistics)
    if output is not None and not ml:
        options["split"] = True
    run = mri if task == "mri" else ct
    return run(input, None, model=model, device=device, threads=threads, precision=precision, output=output,
               **options).image


totalsegmentator = segment


def classify(image, model=None, device="cpu", threads=0, top=5):
    """Top labels of a photo with a cached Model (default: the bundled demo-shapes)."""
    return _cached(model or "demo-shapes", device, threads, "auto").classify(image, top)


def masks(image, model=None, device="cpu", threads=0, masks=None, long_side=0):
    """Masks of a photo with a cached Model (default: the bundled demo-rooms)."""
    return _cached(model or "demo-rooms", device, threads, "auto").masks(image, masks, long_side)


def passport(ct, labels, affine=None, label_names=None, components=True, threads=0, statistics=False):
    """Measure every label of `labels` (integer array on ct's grid, a nibabel
    image, or a NIfTI path) on `ct` (array in HU + affine, a nibabel image,
    or a NIfTI path): the passport dict (docs/passport.md); with
    statistics=True also TotalSegmentator's statistics.json dict, as a pair.
    label_names: {index: name} (CtResult.label_names, img.label_names) or a
    list indexed by label; default: the label file's own table.

        r = segpipe.ct("ct.nii.gz")
        p = segpipe.passport("ct.nii.gz", r.labels, label_names=r.label_names)
    """
    L = lib()
    if label_names is None and isinstance(labels, (str, os.PathLike)):
        label_names = _file_label_names(labels)
    if isinstance(label_names, dict):   # {index: name}, as CtResult.label_names
        top = max((int(k) for k in label_names), default=-1)
        label_names = [label_names.get(i, label_names.get(str(i))) for i in range(top + 1)]
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
    if _is_image(labels):
        labels = np.asanyarray(labels.dataobj)
    if isinstance(labels, (str, os.PathLike)):
        with _Volume(labels) as lv:
            got = tuple(_info(lv).dim[:])
            a = np.ctypeslib.as_array(lib().sp_volume_data(lv.ptr), shape=(int(np.prod(got)),)).copy()
            a = a.reshape(got[::-1]).T
    else:
        a = np.asarray(labels)
    if tuple(a.shape) != tuple(shape):
        raise InputError(f"labels have shape {tuple(a.shape)}, the CT {tuple(shape)}")
    if a.size and (a.min() < 0 or a.max() > 65535 or not np.array_equal(a, np.rint(a))):
        raise InputError("labels must be integers in 0..65535")
    return a.astype(np.uint16).ravel(order="F")


def _info(v):
    info = _lib.VolumeInfo()
    lib().sp_volume_get_info(v.ptr, C.byref(info))
    return info
