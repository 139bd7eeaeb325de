"""sitecustomize for the GPU host's Python (tools/gpu/run.sh copies it to
/root/gpu/pylib/sitecustomize.py): the development machine's nibabel
(Debian's 5.0, staged there; the host has none) predates NumPy 2, which the
host's PyTorch venv has; the names it reads that NumPy 2 removed are put
back as NumPy 1.26 had them, and np.array's copy=False means what it meant
then. Only the benchmarks' Python peers (NIfTI in and out) rely on it."""
try:
    import numpy as np
    if int(np.__version__.split(".")[0]) >= 2:
        np.sctypes = {"int": [np.int8, np.int16, np.int32, np.int64],
                      "uint": [np.uint8, np.uint16, np.uint32, np.uint64],
                      "float": [np.float16, np.float32, np.float64, np.longdouble],
                      "complex": [np.complex64, np.complex128, np.clongdouble],
                      "others": [bool, object, bytes, str, np.void]}
        np.float_, np.complex_, np.unicode_, np.string_ = np.float64, np.complex128, np.str_, np.bytes_

        def maximum_sctype(t):
            k = np.dtype(t).kind
            return {"i": np.int64, "u": np.uint64, "f": np.longdouble, "c": np.clongdouble}.get(k, np.dtype(t).type)
        np.maximum_sctype = maximum_sctype
        import sys, types
        py3k = types.ModuleType("numpy.compat.py3k")
        py3k.asstr = lambda s: s.decode("latin1") if isinstance(s, bytes) else str(s)
        py3k.asbytes = lambda s: s if isinstance(s, bytes) else str(s).encode("latin1")
        compat = types.ModuleType("numpy.compat")
        compat.py3k, compat.asstr, compat.asbytes = py3k, py3k.asstr, py3k.asbytes
        sys.modules.setdefault("numpy.compat", compat)
        sys.modules.setdefault("numpy.compat.py3k", py3k)
        # NumPy 1's np.array(x, copy=False) copied when it had to; NumPy 2 raises instead (its
        # copy=None is the old meaning). nibabel 5.0 calls it so (affines.rescale_affine, casting.int_abs)
        _array = np.array

        def array(obj, *a, copy=True, **k):
            return _array(obj, *a, copy=None if copy is False else copy, **k)
        np.array = array
except ImportError:
    pass
