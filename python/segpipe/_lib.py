"""ctypes declarations of libsegpipe's public header (include/segpipe.h).

The structures mirror the header field by field; keep them in step with it
(tests/py/test_python.py checks the defaults the library reports through
them). Every call goes through ctypes.CDLL, which releases the GIL while C
runs.
"""
import ctypes as C
import ctypes.util
import os

c_int, c_double, c_char_p, c_void_p, c_int64, c_uint64 = C.c_int, C.c_double, C.c_char_p, C.c_void_p, C.c_int64, C.c_uint64


class RuntimeParams(C.Structure):
    _fields_ = [("threads", c_int), ("inter_threads", c_int), ("device", c_char_p), ("cache_optimized", c_int),
                ("no_spin", c_int), ("precision", c_char_p), ("arena", c_char_p), ("tta", c_char_p),
                ("parts_on_demand", c_int), ("one_shot", c_int)]


PROGRESS = C.CFUNCTYPE(None, c_char_p, c_int, c_int, c_void_p)
LOG = C.CFUNCTYPE(None, c_int, c_char_p, c_void_p)   # sp_log_fn


class CtParams(C.Structure):
    _fields_ = [("tile_batch", c_int), ("step", c_double), ("smooth", c_int), ("largest_component", c_int),
                ("min_component_ml", c_double), ("threads", c_int), ("passport", c_int),
                ("keep_model_labels", c_int), ("progress", PROGRESS), ("progress_user", c_void_p),
                ("cancel", C.POINTER(c_int)), ("max_model_voxels", c_uint64), ("max_tiles", c_int64),
                ("keep_border", c_int), ("accum_fp16", c_int), ("roi_subset", c_char_p), ("spill", c_int),
                ("spill_dir", c_char_p), ("release_input", c_int), ("keep_probabilities", c_int),
                ("crop_from", C.POINTER(C.c_uint16)), ("crop_from_grid", c_void_p),
                ("crop_from_names", C.POINTER(c_char_p)), ("crop_from_n", c_int)]


class PassportParams(C.Structure):
    _fields_ = [("threads", c_int), ("components", c_int), ("keep_border", c_int), ("source", c_char_p),
                ("not_hu", c_int)]


class MasksParams(C.Structure):
    _fields_ = [("long_side", c_int), ("masks", C.POINTER(c_char_p)), ("n_masks", c_int), ("threads", c_int)]


class Mask(C.Structure):
    _fields_ = [("name", c_char_p), ("pixels", C.POINTER(C.c_uint8)), ("area_fraction", c_double),
                ("bbox", c_int * 4)]


class MasksResult(C.Structure):
    _fields_ = [("width", c_int), ("height", c_int), ("n_masks", c_int), ("masks", C.POINTER(Mask))]


class ClassifyParams(C.Structure):
    _fields_ = [("top_k", c_int), ("threads", c_int)]


class ClassScore(C.Structure):
    _fields_ = [("index", c_int), ("label", c_char_p), ("prob", c_double)]


class ClassifyResult(C.Structure):
    _fields_ = [("n_classes", c_int), ("probs", C.POINTER(c_double)), ("k", c_int), ("top", C.POINTER(ClassScore))]


class VolumeInfo(C.Structure):
    _fields_ = [("dim", c_int64 * 3), ("spacing", c_double * 3), ("affine", c_double * 16), ("file_dtype", c_int),
                ("qform_code", c_int), ("sform_code", c_int), ("affine_source", c_char_p), ("axcodes", C.c_char * 4)]


class ReadParams(C.Structure):
    _fields_ = [("max_voxels", c_uint64), ("dicom_series", c_char_p), ("cancel", C.POINTER(c_int)),
                ("max_memory", c_uint64), ("check_header", c_void_p), ("check_user", c_void_p)]


class StageTime(C.Structure):
    _fields_ = [("name", C.c_char * 32), ("seconds", c_double)]


class Timings(C.Structure):
    _fields_ = [("n", c_int), ("stage", StageTime * 24)]


P = C.POINTER
SIGNATURES = {
    # name: (restype, argtypes)
    "sp_last_error": (c_char_p, []),
    "sp_status_exit_code": (c_int, [c_int]),
    "sp_runtime_default_params": (RuntimeParams, []),
    "sp_runtime_create": (c_int, [P(RuntimeParams), P(c_void_p)]),
    "sp_runtime_free": (None, [c_void_p]),
    "sp_package_load": (c_int, [c_void_p, c_char_p, P(c_void_p)]),
    "sp_package_free": (None, [c_void_p]),
    "sp_package_task": (c_char_p, [c_void_p]),
    "sp_package_num_classes": (c_int, [c_void_p]),
    "sp_package_label": (c_char_p, [c_void_p, c_int]),
    "sp_package_num_parts": (c_int, [c_void_p]),
    "sp_package_part": (c_void_p, [c_void_p, c_int]),
    "sp_default_model_dir": (c_char_p, []),
    "sp_bundled_model": (c_int, [c_char_p, c_char_p, C.c_size_t]),
    "sp_volume_read": (c_int, [c_char_p, c_void_p, P(c_void_p)]),
    "sp_volume_from_array": (c_int, [P(C.c_float), P(c_int64), P(c_double), P(c_void_p)]),
    "sp_volume_free": (None, [c_void_p]),
    "sp_volume_get_info": (None, [c_void_p, P(VolumeInfo)]),
    "sp_volume_data": (P(C.c_float), [c_void_p]),
    "sp_volume_label_names": (c_int, [c_void_p, P(P(c_void_p))]),
    "sp_ct_default_params": (CtParams, []),
    "sp_ct_run": (c_int, [c_void_p, c_void_p, P(CtParams), P(c_void_p)]),
    "sp_ct_result_free": (None, [c_void_p]),
    "sp_ct_result_timings": (P(Timings), [c_void_p]),
    "sp_ct_result_labels": (P(C.c_uint16), [c_void_p, P(c_int64)]),
    "sp_ct_result_passport_json": (c_char_p, [c_void_p]),
    "sp_passport_default_params": (PassportParams, []),
    "sp_passport_compute": (c_int, [c_void_p, P(C.c_uint16), P(c_char_p), c_int, P(PassportParams),
                                    P(c_void_p)]),
    "sp_passport_free": (None, [c_void_p]),
    "sp_passport_json": (c_char_p, [c_void_p]),
    "sp_passport_statistics_json": (c_char_p, [c_void_p]),
    "sp_image_read": (c_int, [c_char_p, c_void_p, P(c_void_p)]),
    "sp_image_from_rgb": (c_int, [P(C.c_uint8), c_int, c_int, P(c_void_p)]),
    "sp_image_free": (None, [c_void_p]),
    "sp_masks_default_params": (MasksParams, []),
    "sp_masks_run": (c_int, [c_void_p, P(c_void_p), c_int, P(MasksParams), P(P(P(MasksResult))), P(Timings)]),
    "sp_masks_result_free": (None, [P(MasksResult)]),
    "sp_classify_default_params": (ClassifyParams, []),
    "sp_classify_run": (c_int, [c_void_p, P(c_void_p), c_int, P(ClassifyParams), P(P(P(ClassifyResult))),
                                P(Timings)]),
    "sp_classify_result_free": (None, [P(ClassifyResult)]),
    "sp_ort_version": (c_char_p, []),
    "sp_read_default_params": (ReadParams, []),
    "sp_package_name": (c_char_p, [c_void_p]),
    "sp_package_labels": (P(c_char_p), [c_void_p]),
    "sp_ct_result_passport": (c_void_p, [c_void_p]),
    "sp_ct_result_model_labels": (P(C.c_uint16), [c_void_p, P(c_int64), P(c_double)]),
    "sp_labels_write_named": (c_int, [c_char_p, P(C.c_uint16), c_void_p, P(c_char_p), c_int]),
    "sp_labels_write_split": (c_int, [c_char_p, P(C.c_uint16), c_void_p, c_void_p]),
    "sp_labels_write_derived": (c_int, [c_char_p, P(C.c_uint16), c_void_p, c_void_p]),
    "sp_package_has_derived_masks": (c_int, [c_void_p]),
    "sp_labels_write_dicom_seg": (c_int, [c_char_p, P(C.c_uint16), c_void_p, P(c_char_p), c_int, c_char_p]),
    "sp_labels_write_affine": (c_int, [c_char_p, P(C.c_uint16), P(c_int64), P(c_double)]),
    "sp_volume_from_dicom": (c_int, [c_void_p]),
    "sp_preview_ct_png": (c_int, [c_char_p, c_void_p, P(C.c_uint16), P(c_char_p), c_int]),
    "sp_write_file_atomic": (c_int, [c_char_p, c_char_p, C.c_size_t]),
    "sp_volume_sniff": (c_int, [c_char_p]),
    "sp_log_set_level": (None, [c_int]),
    "sp_log_set_callback": (None, [LOG, c_void_p]),
}


libc = C.CDLL(None)
libc.free.restype, libc.free.argtypes = None, [c_void_p]


def _recorded():
    """The library setup.py found at install time (segpipe/_where.py), or None."""
    try:
        from . import _where
    except ImportError:
        return None
    return _where.LIBRARY


def _checkout_build():
    """<checkout>/build/libsegpipe.so when this package is imported from a
    checkout (python/segpipe beside python/setup.py), else None."""
    here = os.path.dirname(os.path.abspath(__file__))
    if not os.path.isfile(os.path.join(here, "..", "setup.py")):
        return None
    return os.path.normpath(os.path.join(here, "..", "..", "build", "libsegpipe.so"))


def _candidates():
    """Where libsegpipe is looked for, in order (docs/python.md)."""
    env = os.environ.get("SEGPIPE_LIBRARY")
    if env:                                     # an explicit override: only this one
        yield env
        return
    for path in (_recorded(), _checkout_build()):
        if path and os.path.isfile(path):
            yield path
    yield "libsegpipe.so.0"                     # the system loader (ld.so.cache, LD_LIBRARY_PATH)
    found = ctypes.util.find_library("segpipe")
    if found:
        yield found


def load():
    """libsegpipe with its signatures declared: SEGPIPE_LIBRARY, else the
    library recorded at install time, else the checkout's build/ when
    imported from a checkout, else the system loader's libsegpipe.so.0."""
    errors = []
    for path in _candidates():
        try:
            lib = C.CDLL(path)
        except OSError as e:
            errors.append(f"{path}: {e}")
            continue
        for name, (res, args) in SIGNATURES.items():
            f = getattr(lib, name)
            f.restype, f.argtypes = res, args
        return lib
    raise OSError("segpipe: cannot load libsegpipe; install it with `make install PREFIX=P` and reinstall this package "
                  "with `SEGPIPE_PREFIX=P pip install ./python` (or set SEGPIPE_LIBRARY):\n  " + "\n  ".join(errors))
