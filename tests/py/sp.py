"""ctypes access to libsegpipe for the reference tests, plus helpers.

The tests call the C stages directly (sp_ornt_*, sp_resample_*) and the
CLI for whole commands, and compare with numpy/scipy/nibabel references.
"""
import ctypes as C
import os
import subprocess
import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, os.environ.get("BUILD", "build"))
SHARED = os.path.abspath(os.path.join(ROOT, "..", "shared"))
CTDIR = os.path.join(SHARED, "data", "ct")
SEGPIPE = os.path.join(BUILD, "segpipe")
DEMO = os.path.join(ROOT, "models", "demo-ct")
TINYSEG = os.path.join(ROOT, "tests", "data", "tinyseg")

_lib = None


class Skip(Exception):
    """raised by a test whose prerequisite is absent (tests/run.py prints the reason)"""


class VolumeInfo(C.Structure):
    _fields_ = [("dim", C.c_int64 * 3), ("spacing", C.c_double * 3),
                ("affine", (C.c_double * 4) * 4), ("file_dtype", C.c_int),
                ("qform_code", C.c_int), ("sform_code", C.c_int),
                ("affine_source", C.c_char_p), ("axcodes", C.c_char * 4)]


class Ornt(C.Structure):
    _fields_ = [("ax", C.c_int * 3), ("fl", C.c_int * 3)]


def lib():
    global _lib
    if _lib is None:
        _lib = C.CDLL(os.path.join(BUILD, "libsegpipe_test.so"))   # internals too (libsegpipe.so: public API only)
        L = _lib
        L.sp_volume_read.argtypes = [C.c_char_p, C.c_void_p, C.POINTER(C.c_void_p)]
        L.sp_volume_get_info.argtypes = [C.c_void_p, C.POINTER(VolumeInfo)]
        L.sp_volume_data.argtypes = [C.c_void_p]
        L.sp_volume_data.restype = C.POINTER(C.c_float)
        L.sp_volume_free.argtypes = [C.c_void_p]
        L.sp_last_error.restype = C.c_char_p
        L.sp_ornt_to_canonical.argtypes = [C.c_void_p, C.POINTER(Ornt)]
        L.sp_ornt_affine.argtypes = [C.POINTER(Ornt), C.c_void_p, C.c_void_p, C.c_void_p]
        L.sp_ornt_dims.argtypes = [C.POINTER(Ornt), C.c_void_p, C.c_void_p]
        L.sp_ornt_apply.argtypes = [C.POINTER(Ornt), C.c_void_p, C.c_void_p, C.c_void_p, C.c_size_t, C.c_void_p]
        L.sp_resample_linear.argtypes = [C.c_void_p, C.c_void_p, C.c_void_p, C.c_void_p, C.c_void_p]
        L.sp_resample_nearest_u16.argtypes = [C.c_void_p, C.c_void_p, C.c_void_p, C.c_void_p, C.c_void_p]
        L.sp_zoom_size.argtypes = [C.c_int64, C.c_double]
        L.sp_zoom_size.restype = C.c_int64
        L.sp_default_pool.restype = C.c_void_p
    return _lib


def ptr(a):
    return a.ctypes.data_as(C.c_void_p)


def read_volume(path):
    """-> (data as (i,j,k) float32 array, VolumeInfo) or raises with the message."""
    L = lib()
    v = C.c_void_p()
    st = L.sp_volume_read(path.encode(), None, C.byref(v))
    if st != 0:
        raise RuntimeError(L.sp_last_error().decode())
    info = VolumeInfo()
    L.sp_volume_get_info(v, C.byref(info))
    d = [info.dim[i] for i in range(3)]
    n = d[0] * d[1] * d[2]
    raw = np.ctypeslib.as_array(L.sp_volume_data(v), shape=(n,)).copy()
    L.sp_volume_free(v)
    return raw.reshape(d[::-1]).transpose(2, 1, 0), info


def affine_of(info):
    return np.array([[info.affine[r][c] for c in range(4)] for r in range(4)])


def to_c(a, dtype):
    """(i,j,k) numpy array -> contiguous buffer with i fastest."""
    return np.ascontiguousarray(np.asarray(a, dtype=dtype).transpose(2, 1, 0))


def from_c(buf, dims):
    return buf.reshape(dims[::-1]).transpose(2, 1, 0)


def canonical(data, affine):
    """segpipe's reorientation of (data, affine) -> (data, affine)."""
    L = lib()
    A = np.ascontiguousarray(affine, dtype=np.float64)
    o = Ornt()
    assert L.sp_ornt_to_canonical(ptr(A), C.byref(o)) == 0
    din = np.array(data.shape, np.int64)
    dout = np.zeros(3, np.int64)
    L.sp_ornt_dims(C.byref(o), ptr(din), ptr(dout))
    out_aff = np.zeros((4, 4))
    L.sp_ornt_affine(C.byref(o), ptr(din), ptr(A), ptr(out_aff))
    src = to_c(data, np.float32)
    dst = np.zeros(int(np.prod(dout)), np.float32)
    L.sp_ornt_apply(C.byref(o), ptr(src), ptr(din), ptr(dst), 4, L.sp_default_pool())
    return from_c(dst, list(dout)), out_aff, o


def _resample(fn, data, out_shape, dtype):
    L = lib()
    din = np.array(data.shape, np.int64)
    dout = np.array(out_shape, np.int64)
    src = to_c(data, dtype)
    dst = np.zeros(int(np.prod(dout)), dtype)
    fn(ptr(src), ptr(din), ptr(dst), ptr(dout), L.sp_default_pool())
    return from_c(dst, list(dout))


def resample_linear(data, out_shape):
    return _resample(lib().sp_resample_linear, data, out_shape, np.float32)


def resample_nnunet(data, out_shape, in_spacing, out_spacing):
    """sp_resample_nnunet: nnU-Net's resampling of image data"""
    L = lib()
    L.sp_resample_nnunet.argtypes = [C.c_void_p] * 7
    din, dout = np.array(data.shape, np.int64), np.array(out_shape, np.int64)
    a, b = np.array(in_spacing, np.float64), np.array(out_spacing, np.float64)
    src, dst = to_c(data, np.float32), np.zeros(int(np.prod(dout)), np.float32)
    assert L.sp_resample_nnunet(ptr(src), ptr(din), ptr(a), ptr(b), ptr(dst), ptr(dout), L.sp_default_pool()) == 0
    return from_c(dst, list(dout))


def resample_nearest(labels, out_shape):
    return _resample(lib().sp_resample_nearest_u16, labels, out_shape, np.uint16)


def run_env():
    env = dict(os.environ)
    if "asan" in BUILD:   # the CLI itself is checked for leaks, error paths included
        env["ASAN_OPTIONS"] = "detect_leaks=1:halt_on_error=1"
        env["LSAN_OPTIONS"] = "suppressions=" + os.path.join(ROOT, "tests", "lsan.supp")
        env.pop("LD_PRELOAD", None)
    return env


def realistic(why):
    """Marks a test of the realistic tier (`make realistic`, tests/run.py
    --tier realistic): a journey at a realistic size, an upstream pipeline as
    the reference, or a third-party consumer, whose C paths the everyday
    tier (`make test`, `make asan`) runs on smaller inputs. why: what it
    proves that the everyday tier does not."""
    def mark(fn):
        fn.realistic = why
        return fn
    return mark


def python_env(env):
    """env for a child Python that loads the library itself: in the sanitizer
    run, with ASan's runtime preloaded again (tests/run.py takes it out of
    the environment of everything else a test starts)"""
    pre = os.environ.get("SP_ASAN_PRELOAD")
    return dict(env, LD_PRELOAD=pre) if pre else env


def run(*args, check=False, timeout=600, env=None):
    """`segpipe ARGS` (env: variables added to its environment)"""
    p = subprocess.run([SEGPIPE, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                       env=dict(run_env(), **(env or {})))
    if check and p.returncode != 0:
        raise AssertionError(f"segpipe {' '.join(map(str, args))} -> {p.returncode}\n{p.stderr}")
    return p


def dice(a, b):
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * (a & b).sum() / s


# ---------------------------------------------------------------- the run cache
# What several tests (often of several modules) compute the same way - an
# input made from the shared data, a model package, a CLI run whose outputs
# are their reference - is made once per `tests/run.py` run, by whichever
# job gets there first, in the folder the runner makes and exports as
# SP_TEST_RUN_CACHE (removed when the run ends). A module run on its own
# without the runner gets a folder of its own process.

_own_cache = None


def run_cache():
    global _own_cache
    d = os.environ.get("SP_TEST_RUN_CACHE")
    if d:
        return d
    if _own_cache is None:
        import atexit, shutil, tempfile
        _own_cache = tempfile.mkdtemp(prefix="segpipe-test-cache.")
        atexit.register(shutil.rmtree, _own_cache, True)
    return _own_cache


def once(key, make):
    """make(folder) run once per test run for this key (a tuple of strings:
    what the result depends on), under a file lock; -> the folder, which the
    tests only read. A make that fails is not kept: the next caller retries
    (and fails the same way, as it would have on its own)."""
    import fcntl, hashlib, shutil
    h = hashlib.sha256(repr((BUILD,) + tuple(map(str, key))).encode()).hexdigest()[:20]
    d = os.path.join(run_cache(), h)
    with open(d + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(d + ".done"):
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            make(d)
            open(d + ".done", "w").close()
    return d


def run_once(*args, env=None):
    """`segpipe ARGS` (check=True; env as run's) once per test run; "{d}" in
    an argument stands for the run's own folder, where its outputs go: ->
    that folder. For a run whose outputs several tests compare against the
    same way."""
    def make(d):
        run(*[str(a).replace("{d}", d) for a in args], check=True, env=env)
    return once(("segpipe",) + args + tuple(sorted((env or {}).items())), make)


def ct_run(src):
    """`segpipe ct SRC -o DIR/seg.nii.gz -q` (the demo model, the defaults:
    labels, passport, statistics) once per test run: -> DIR/seg.nii.gz, its
    passport DIR/seg.passport.json. The reference of the tests that compare
    another way of running the same (the service, the Python binding, the
    page, an installed package, another input format) with the CLI."""
    return os.path.join(run_once("ct", src, "-o", "{d}/seg.nii.gz", "-q"), "seg.nii.gz")


def one_tile_ct():
    """a 64x64x30 crop of the real example CT (3 mm, abdomen: liver, spleen,
    kidneys...): one tile of demo-ct, made once per test run. For the tests
    that check a path (a job's, an option's, a binding's) rather than the
    window over many tiles."""
    src = os.path.join(CTDIR, "example_ct_sm.nii.gz")
    if not os.path.exists(src):
        raise Skip("../shared/data/ct missing")

    def make(d):
        import nibabel as nib
        im = nib.load(src)
        nib.save(nib.Nifti1Image(np.asarray(im.dataobj)[30:94, 20:84, :], im.affine, im.header),
                 os.path.join(d, "crop.nii.gz"))
    return os.path.join(once(("one-tile crop", src), make), "crop.nii.gz")


# ---------------------------------------------------------------- the tools
# The project's Python tools (importers, exporters) import PyTorch: ~1.2 CPU s
# a process. tool() runs them forked from one process per test job that
# imported it once (tests/py/tool_fork.py); their CPU time is counted as the
# job's (pending_cpu() until the job closes the server).

_fork = {"proc": None, "cpu": 0.0}


def tool(script, *args, timeout=600):
    """`python3 SCRIPT ARGS` (a tools/ script) as subprocess.run(...,
    capture_output=True, text=True) returns it, forked from the tool server"""
    import json, select, signal, tempfile
    if _fork["proc"] is None or _fork["proc"].poll() is not None:
        _fork["proc"] = subprocess.Popen(["/usr/bin/python3", os.path.join(ROOT, "tests", "py", "tool_fork.py")],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    srv = _fork["proc"]
    argv = [str(script), *map(str, args)]
    with tempfile.TemporaryDirectory(prefix="sp-tool-") as d:
        out, err = os.path.join(d, "out"), os.path.join(d, "err")
        srv.stdin.write(json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ),
                                    "out": out, "err": err}) + "\n")
        srv.stdin.flush()
        pid = json.loads(srv.stdout.readline())["pid"]
        timed_out = not select.select([srv.stdout], [], [], timeout)[0]
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        r = json.loads(srv.stdout.readline())
        _fork["cpu"] += r["cpu"]
        if timed_out:
            raise subprocess.TimeoutExpired(["python3"] + argv, timeout)
        text = [open(f, encoding="utf-8", errors="replace").read() for f in (out, err)]
        return subprocess.CompletedProcess(["python3"] + argv, r["rc"], *text)


def pending_cpu():
    """CPU seconds of tool runs not yet in this process's RUSAGE_CHILDREN"""
    return _fork["cpu"]


def close():
    """end the tool server (its CPU time, the tools' included, then counts
    as this process's children's)"""
    p = _fork["proc"]
    if p is not None:
        p.stdin.close()
        p.wait()
        p.stdout.close()
    _fork.update(proc=None, cpu=0.0)
