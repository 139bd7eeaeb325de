#!/usr/bin/env python3
"""TotalSegmentator's own pipeline against segpipe's `total` task package, on
the same weights, the same scan, in the same run (issue #43, "Benchmarks";
docs/performance.md, "TotalSegmentator's own pipeline").

A fake TotalSegmentator home (tools/dev/fake_totalseg_home.py: its folder
layout, random-weight nnU-Net networks sized by --features/--patch, their
checkpoint_final.pth) is imported by tools/import/import_totalseg.py; then,
alternated round by round, TotalSegmentator's python_api `totalsegmentator(
ct, out, ml=True, task="total", device="cpu", ...)` runs (its source, nnU-Net
v2 and nnU-Net's dependencies read from their git mirrors, --src, as
tools/dev/make_nnunet_refs.py reads them: nothing installed) in a process of
its own, then `segpipe ct --model PKG`; both also with the roi subset
(`roi_subset=[ROI]` / `--roi-subset ROI`). Prints JSON: wall and CPU seconds
of each whole process (imports included), the seconds of the
totalsegmentator() call, the stage times TotalSegmentator prints, segpipe's
stage table, the voxel agreement of the two multilabel outputs, the load.

Patched from the outside (no upstream file changed), in every process
nnU-Net spawns too (this file is their main module):
  - packages missing here that the run never calls are empty stubs (the list
    of make_nnunet_refs.py plus STUBS_TS below);
  - SimpleITK (not installed; nnU-Net's SimpleITKIO reads s01_0000.nii.gz and
    writes s01.nii.gz with it) is a nibabel-backed module with the six calls
    SimpleITKIO makes, SimpleITK's conventions kept: array (k, j, i), spacing
    (i, j, k), origin and direction in LPS;
  - joblib (not installed; TotalSegmentator's resampling.py maps its zoom
    over Parallel(n_jobs=nr_thr_resamp)) runs the calls in turn, as joblib
    does with n_jobs=1 (nr_thr_resamp=1 here);
  - torch._dynamo (PyTorch 1.13 has none) is a module with OptimizedModule.
TOTALSEG_HOME_DIR is the fake home; its config.json has send_usage_stats
false (TotalSegmentator's own switch; there is no network here anyway).

On a GPU (--device cuda): TotalSegmentator's device="gpu" (nnU-Net's
predictor on the device, fp16 autocast) against `segpipe ct --device cuda`
with the package's fp16 models (imported with --fp16; segpipe's
--precision auto picks them on a GPU); peak GPU memory of both (PyTorch's
max_memory_reserved in the TotalSegmentator process, segpipe's --report).
cupy and cucim are never stubbed: TotalSegmentator resamples on the GPU
only when importlib finds both (a stub would be found), so where cupy is
installed and cucim is not it resamples on the CPU, as such an install does.
SEGPIPE (the binary) and SEGPIPE_LD (its LD_LIBRARY_PATH) come from the
environment when set (tools/gpu/run.sh totalseg sets them).

   /usr/bin/python3 bench/totalseg_pipeline.py [CT.nii.gz] [--features 8,16,32] [--patch 64]
        [--threads 2] [--rounds 2] [--roi liver] [--device cpu|cuda] [--src /work/.mirror|SOURCES.tar]
        [--work DIR] [--json OUT.json]
   /usr/bin/python3 bench/totalseg_pipeline.py --pack-sources SOURCES.tar [--src /work/.mirror]

--pack-sources writes the five sources (as unpacked from the mirrors) and
their commits (SOURCES.json) into one tar for a machine without the
mirrors; --src then takes that tar. --work keeps the fake home and the
package in DIR and reuses them when a later run asks for the same sizes.
"""
import argparse, json, os, re, resource, subprocess, sys, tempfile, time, types

import numpy as np
import nibabel as nib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEGPIPE = os.environ.get("SEGPIPE", os.path.join(ROOT, "build", "segpipe"))
SEGPIPE_LD = os.environ.get("SEGPIPE_LD")   # the segpipe process's LD_LIBRARY_PATH (the GPU machine's CUDA libraries)
IDS = "291,292,293,294,295,298"   # total's five parts and the 6 mm crop model --roi-subset runs first
ENV = "SEGPIPE_TS_PATH"   # the unpacked sources (os.pathsep-separated): set, this module installs the shims
TS_REPO = "wasserth+TotalSegmentator"
# imported by TotalSegmentator's modules, never called by this run
STUBS_TS = {"radiomics", "xmltodict", "rt_utils", "highdicom", "pydicom", "p_tqdm",
            "fury", "xvfbwrapper", "psutil", "einops", "timm", "nnunetv2.training.lr_scheduler"}
LPS = np.diag([-1.0, -1.0, 1.0])


def _sitk_module():
    """SimpleITK's ReadImage/WriteImage/GetArrayFromImage/GetImageFromArray
    for NIfTI through nibabel, in SimpleITK's conventions"""
    m = types.ModuleType("SimpleITK")

    class Image:
        def __init__(self, arr, spacing=None, origin=None, direction=None):
            n = arr.ndim
            self.arr, self.spacing = arr, tuple(spacing or (1.0,) * n)
            self.origin, self.direction = tuple(origin or (0.0,) * n), tuple(direction or np.eye(n).ravel())

        def GetSpacing(self): return self.spacing
        def GetOrigin(self): return self.origin
        def GetDirection(self): return self.direction
        def GetDimension(self): return self.arr.ndim
        def SetSpacing(self, v): self.spacing = tuple(float(x) for x in v)
        def SetOrigin(self, v): self.origin = tuple(float(x) for x in v)
        def SetDirection(self, v): self.direction = tuple(float(x) for x in v)

    def read(fname, *a, **k):
        img = nib.load(fname)
        if len(img.shape) != 3:
            raise RuntimeError("SimpleITK shim: 3D NIfTI only")
        arr = np.asanyarray(img.dataobj)
        if img.dataobj.slope not in (1, None) or img.dataobj.inter not in (0, None):
            arr = img.get_fdata(dtype=np.float32)
        a3 = img.affine[:3, :3]
        sp = np.sqrt((a3 ** 2).sum(0))
        return Image(arr.transpose(2, 1, 0).copy(), sp.tolist(), (LPS @ img.affine[:3, 3]).tolist(),
                     (LPS @ (a3 / sp)).ravel().tolist())

    def write(image, fname, *a, **k):
        aff = np.eye(4)
        aff[:3, :3] = LPS @ np.array(image.direction).reshape(3, 3) * np.array(image.spacing)
        aff[:3, 3] = LPS @ np.array(image.origin)
        out = nib.Nifti1Image(image.arr.transpose(2, 1, 0), aff)
        out.set_qform(aff, 1)
        out.set_sform(aff, 1)
        nib.save(out, fname)

    m.Image, m.ReadImage, m.WriteImage = Image, read, write
    m.GetArrayFromImage = lambda image: image.arr
    m.GetImageFromArray = lambda arr, isVector=False: Image(np.asarray(arr))
    return m


def _joblib_module():
    """joblib's Parallel/delayed, sequential: what joblib does with n_jobs=1
    (nr_thr_resamp=1 here; resampling.py is its only user in this run)"""
    m = types.ModuleType("joblib")
    m.delayed = lambda f: (lambda *a, **k: (f, a, k))
    m.Parallel = lambda n_jobs=1, **kw: (lambda tasks: [f(*a, **k) for f, a, k in tasks])
    return m


def install_shims(paths):
    for p in reversed(paths):
        if p not in sys.path:
            sys.path.insert(0, p)
    sys.path.insert(0, os.path.join(ROOT, "tools", "dev"))
    import make_nnunet_refs as mnr
    sys.modules["SimpleITK"] = _sitk_module()
    sys.modules["joblib"] = _joblib_module()
    mnr.install_stubs(STUBS_TS)


if os.environ.get(ENV) and "SimpleITK" not in sys.modules:   # the TotalSegmentator process and its spawned ones
    install_shims(os.environ[ENV].split(os.pathsep))


def unpack_sources(src, dst):
    """nnU-Net's four repositories (make_nnunet_refs.unpack) and
    TotalSegmentator's package folder, from the git mirrors in src or from
    a tar that --pack-sources wrote; returns (paths, commits)"""
    sys.path.insert(0, os.path.join(ROOT, "tools", "dev"))
    import make_nnunet_refs as mnr
    repos = mnr.REPOS + [TS_REPO]
    if os.path.isfile(src):   # --pack-sources' tar: the five folders and SOURCES.json
        os.makedirs(dst)
        import tarfile
        with tarfile.open(src) as t:   # Python's: the GPU machine may lack xz
            t.extractall(dst)
        return [os.path.join(dst, r) for r in repos], json.load(open(os.path.join(dst, "SOURCES.json")))
    commits = mnr.unpack(src, dst)
    git = os.path.join(src, TS_REPO, "repo")
    if not os.path.isdir(git):
        sys.exit(f"totalseg_pipeline: {git} is missing (fetch github:{TS_REPO.replace('+', '/')})")
    commits[TS_REPO.replace("+", "/")] = subprocess.run(["git", "--git-dir", git, "rev-parse", "HEAD"],
                                                        capture_output=True, text=True, check=True).stdout.strip()
    d = os.path.join(dst, TS_REPO)
    os.makedirs(d)
    tar = subprocess.run(["git", "--git-dir", git, "archive", "HEAD", "totalsegmentator"], capture_output=True,
                         check=True).stdout   # the package only (the mirror lacks some test blobs)
    subprocess.run(["tar", "-x", "-C", d], input=tar, check=True)
    return [os.path.join(dst, r) for r in repos], commits


def pack_sources(src, tar):
    """the five sources and SOURCES.json in one tar (xz when tar ends so),
    without the repositories' tests, documentation and images"""
    with tempfile.TemporaryDirectory() as d:
        _, commits = unpack_sources(src, os.path.join(d, "src"))
        json.dump(commits, open(os.path.join(d, "src", "SOURCES.json"), "w"), indent=1)
        subprocess.run(["tar", "-C", os.path.join(d, "src"), "--exclude=*.png", "--exclude=*.jpg", "--exclude=*.gif",
                        "--exclude=documentation", "--exclude=*.ipynb", "-c" + ("J" if tar.endswith("xz") else "")
                        + "f", os.path.abspath(tar), "."], check=True)
    print(f"wrote {tar}: {', '.join(f'{k} {v[:12]}' for k, v in commits.items())}")


def ts_env(paths, home):
    """the environment of a TotalSegmentator process (run_ts)"""
    env = dict(os.environ, **{ENV: os.pathsep.join(paths), "TOTALSEG_HOME_DIR": home, "PYTHONUNBUFFERED": "1"})
    env.pop("TOTALSEG_WEIGHTS_PATH", None)
    cfg = os.path.join(home, "config.json")
    if not os.path.exists(cfg):   # TotalSegmentator's config file with its usage statistics off
        json.dump({"totalseg_id": "totalseg_bench", "send_usage_stats": False, "prediction_counter": 0,
                   "statistics_disclaimer_shown": True}, open(cfg, "w"))
    return env


def ts_run(ct, out, roi, threads, res, device="cpu"):
    """in the TotalSegmentator process: one totalsegmentator() call"""
    import torch
    from totalsegmentator.python_api import totalsegmentator
    torch.set_num_threads(threads)   # nnunet.py sets cpu_count() itself before each prediction
    gpu = device != "cpu" and torch.cuda.is_available()
    t0, r0 = time.time(), resource.getrusage(resource.RUSAGE_SELF)
    totalsegmentator(ct, out, ml=True, task="total", device="gpu" if device != "cpu" else "cpu", nr_thr_resamp=1,
                     nr_thr_saving=1, roi_subset=[roi] if roi else None, quiet=False, verbose=True)
    if gpu:
        torch.cuda.synchronize()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    json.dump({"call_s": round(time.time() - t0, 2), "torch_threads": torch.get_num_threads(),
               "call_cpu_s_main_process": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2),
               "peak_rss_main_process_mb": round(r1.ru_maxrss / 1024),
               **({"gpu": torch.cuda.get_device_name(0),
                   "gpu_max_memory_reserved_mb": round(torch.cuda.max_memory_reserved() / 2 ** 20),
                   "gpu_max_memory_allocated_mb": round(torch.cuda.max_memory_allocated() / 2 ** 20)} if gpu else {})},
              open(res, "w"))


def ts_stages(stdout):
    """the stage times TotalSegmentator prints ("  Resampled in 1.23s", ...)"""
    out = []
    for line in stdout.splitlines():
        m = re.match(r"\s*(Resampled|Predicted|Saved|Removed|Applied|Rough organ segmentation generated) in "
                     r"([0-9.]+)s", line)
        if m:
            out.append([m.group(1), float(m.group(2))])
    return out


def timed(cmd, env=None):
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.time() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        sys.exit(f"{' '.join(cmd[:3])}...: exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p, round(wall, 2), round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2)


def run_ts(ct, out, roi, threads, env, d, device="cpu"):
    res = os.path.join(d, "ts.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--ts-run", ct, out, "--threads", str(threads)]
    p, wall, cpu = timed(cmd + ["--roi", roi or "", "--res", res, "--device", device], env)
    return {"wall_s": wall, "cpu_s": cpu, **json.load(open(res)), "stages": ts_stages(p.stdout)}


def gpu_sampler(device):
    """nvidia-smi printing the GPU's used memory (MiB) every 20 ms while a
    run goes (an independent peak beside segpipe's --report); None on the CPU"""
    if device == "cpu":
        return None
    try:
        return subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0",
                                 "-lms", "20"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except OSError:
        return None


def sampled_peak(p):
    if p is None:
        return None
    p.terminate()
    vals = [int(v) for v in p.communicate(timeout=30)[0].split() if v.isdigit()]
    return max(vals) if vals else None


def run_segpipe(ct, out, pkg, roi, threads, d, device="cpu", parts=""):
    rep = os.path.join(d, "rep.json")
    cmd = [SEGPIPE, "ct", ct, "-o", out, "--model", pkg, "-t", str(threads), "--report", rep, "-q", "--no-passport",
           "--device", device] + (["--parts", parts] if parts else [])
    env = dict(os.environ, LD_LIBRARY_PATH=SEGPIPE_LD) if SEGPIPE_LD else None
    smi = gpu_sampler(device)
    try:
        _, wall, cpu = timed(cmd + (["--roi-subset", roi] if roi else []), env)
    finally:
        smi_peak = sampled_peak(smi)
    r = json.load(open(rep))
    out = {"wall_s": wall, "cpu_s": cpu, "stages": {k: round(v, 2) for k, v in r.get("seconds", {}).items()},
           "peak_rss_mb": round(r.get("peak_rss_bytes", 0) / 2 ** 20)}
    if smi_peak is not None:
        out["gpu_used_peak_nvidia_smi_mb"] = smi_peak   # device-wide, sampled every 20 ms
    if r.get("gpu_memory_bytes"):
        out["gpu_memory_mb"] = round(r["gpu_memory_bytes"] / 2 ** 20)
    for k in ("precision", "device", "gpu"):
        if k in r:
            out[k] = r[k]
    return out


def agreement(a_path, b_path):
    a = np.asanyarray(nib.load(a_path).dataobj)
    b = np.asanyarray(nib.load(b_path).dataobj)
    if a.shape != b.shape:
        return {"shape_ts": list(a.shape), "shape_segpipe": list(b.shape)}
    fg = (a > 0) | (b > 0)
    return {"voxels_equal": round(float((a == b).mean()), 6),
            "labelled_voxels_equal": round(float((a == b)[fg].mean()), 6) if fg.any() else 1.0,
            "labelled_ts": int((a > 0).sum()), "labelled_segpipe": int((b > 0).sum()),
            "labels_ts": int(len(np.unique(a)) - 1), "labels_segpipe": int(len(np.unique(b)) - 1)}


def make_home(d, features, patch, fp16=False):
    """the fake home and the package imported from it, in d; reused when d
    already holds them for the same sizes (a marker file names them)"""
    home, pkg = os.path.join(d, "home"), os.path.join(d, "total")
    key = {"features": features, "patch": patch, "ids": IDS, "fp16": fp16}
    mark = os.path.join(d, "made.json")
    if os.path.exists(mark):   # a package with fp16 models also serves the CPU (segpipe runs fp32 there)
        was = json.load(open(mark))
        if was["fp16"] >= fp16 and dict(was, fp16=fp16) == key:
            return home, pkg, {}
    import shutil
    for x in (home, pkg, mark):
        if os.path.isdir(x):
            shutil.rmtree(x)
        elif os.path.exists(x):
            os.remove(x)
    py, took = sys.executable, {}
    t0 = time.time()
    subprocess.run([py, os.path.join(ROOT, "tools", "dev", "fake_totalseg_home.py"), home, "--features", features,
                    "--patch", str(patch), "--ids", IDS], check=True, capture_output=True)
    took["fake_home_s"] = round(time.time() - t0, 1)
    t0 = time.time()
    p = subprocess.run([py, os.path.join(ROOT, "tools", "import", "import_totalseg.py"), home, "-o", pkg]
                       + (["--fp16"] if fp16 else []), capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"import_totalseg: exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    took["import_s"] = round(time.time() - t0, 1)
    json.dump(key, open(mark, "w"))
    return home, pkg, took


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ct", nargs="?", default=os.path.join(ROOT, "..", "shared", "data", "ct", "example_ct.nii.gz"))
    ap.add_argument("out", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("--features", default="8,16,32")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--roi", default="liver", help="the roi subset case ('' for none)")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--src", default=os.environ.get("NNUNET_SRC", "/work/.mirror"),
                    help="the git mirrors' folder, or a tar that --pack-sources wrote")
    ap.add_argument("--pack-sources", metavar="TAR", help="write the sources into TAR and exit")
    ap.add_argument("--work", help="keep (and reuse) the fake home and the package here")
    ap.add_argument("--tools", default="totalsegmentator,segpipe", help="which of the two run (a check of one)")
    ap.add_argument("--json", help="also write the results here after every case")
    ap.add_argument("--segpipe-parts", default="",
                    help="segpipe once per --parts mode listed (on-demand,resident); '' the default only")
    ap.add_argument("--ts-run", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--res", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.ts_run:
        return ts_run(a.ct, a.out, a.roi, a.threads, a.res, a.device)
    if a.pack_sources:
        return pack_sources(a.src, a.pack_sources)
    ct = os.path.abspath(a.ct)
    d = tempfile.mkdtemp(prefix="bench-tspipe-")
    paths, commits = unpack_sources(a.src, os.path.join(d, "src")) if "totalsegmentator" in a.tools else ([], {})
    if a.work:
        os.makedirs(a.work, exist_ok=True)
    home, pkg, made = make_home(a.work or d, a.features, a.patch, fp16=a.device != "cpu")
    env = ts_env(paths, home)
    cases = {"full": None, **({f"roi_subset {a.roi}": a.roi} if a.roi else {})}
    modes = [m for m in a.segpipe_parts.split(",") if m] or [""]
    sp_keys = {m: f"segpipe --parts {m}" if m else "segpipe" for m in modes}
    res = {k: {"totalsegmentator": [], **{v: [] for v in sp_keys.values()}, "agreement": []} for k in cases}
    load = [os.getloadavg()]
    img = nib.load(ct)
    doc = {"ct": os.path.basename(ct), "shape": list(img.shape), "zooms": [float(z) for z in img.header.get_zooms()],
           "features": a.features, "patch": a.patch, "threads": a.threads, "device": a.device,
           "cpu_count": os.cpu_count(), "sources": commits, "made": made, "loadavg": load, "results": res}
    for _ in range(a.rounds):
        for k, roi in cases.items():
            o_ts, o_sp = os.path.join(d, "ts.nii.gz"), os.path.join(d, "sp.nii.gz")
            if "totalsegmentator" in a.tools:
                res[k]["totalsegmentator"].append(run_ts(ct, o_ts, roi, a.threads, env, d, a.device))
            if "segpipe" in a.tools:
                for m, key in sp_keys.items():
                    res[k][key].append(run_segpipe(ct, o_sp, pkg, roi, a.threads, d, a.device, m))
            if "totalsegmentator" in a.tools and "segpipe" in a.tools:
                res[k]["agreement"].append(agreement(o_ts, o_sp))
            load.append(os.getloadavg())
            print(json.dumps({"case": k, **{t: v[-1] for t, v in res[k].items() if v}}), flush=True)
            if a.json:   # after every case: a long run leaves what it measured
                json.dump(doc, open(a.json, "w"), indent=1)
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
