"""sitecustomize for the GPU host's Python (tools/gpu/run.sh copies it to
/root/gpu/pylib/sitecustomize.py): Debian 12's nibabel 4.0 (staged there,
the host has none) predates NumPy 2, which the host's PyTorch venv has;
the names it reads that NumPy 2 removed are put back as NumPy 1.26 had them.
Only reading and writing NIfTI for the benchmarks' peers goes through it."""
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
except ImportError:
    pass
