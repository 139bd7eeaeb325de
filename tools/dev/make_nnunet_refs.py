#!/usr/bin/env python3
"""Reference outputs of nnU-Net v2's REAL predictor for the fixtures of
tests/py/nnunet_fixture.py, stored (small, compressed) in tests/ref/nnunet/.

  tools/dev/make_nnunet_refs.py [--src DIR] [--out tests/ref/nnunet] [CASE ...]

nnU-Net is not installed here (nor in CI): the sources of MIC-DKFZ/nnUNet,
dynamic-network-architectures, acvl_utils and batchgenerators are read
from their git mirrors (--src: a folder holding those four repositories
as git directories `<owner>+<name>/repo`, default /work/.mirror; or
NNUNET_SRC), unpacked to a temporary folder and imported as they are.
Packages they import that this machine lacks and that the prediction never
calls (SimpleITK, tqdm, blosc2, scikit-image, pandas...) are stubbed; the
predictor, sliding window, Gaussian, mirroring, fold averaging,
normalisation, cropping and export code that runs is nnU-Net's own.

Per case: the fixture folder is built (seeded weights, nothing stored),
nnUNetPredictor.initialize_from_trained_model_folder loads its folds (on
the CPU, tile step 0.5, Gaussian on, mirroring as asked), and
predict_single_npy_array predicts the fixture's case with its
probabilities. nnU-Net keeps its sums in torch.half; a second run with
them in float (torch.half read as float32 while it runs) gives
`<case>[.notta].fp32.npz` (`labels`, `probabilities`, `prob_k` as below),
the same algorithm without the half rounding. Stored: `<case>[.notta].npz` with `labels` (uint8, nibabel's
i, j, k order) and `probabilities` (float16, classes x i x j x k) of the
slab k in `prob_k` = [k0, k1) (the whole volume's would be 300 KB a case),
plus `SOURCES.json` with the commits the references came from.
"""
import argparse, importlib.abc, importlib.machinery, json, os, subprocess, sys, tempfile, types
from unittest import mock
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "py"))
import nnunet_fixture as fx  # noqa: E402

REPOS = ["MIC-DKFZ+nnUNet", "MIC-DKFZ+dynamic-network-architectures", "MIC-DKFZ+acvl_utils",
         "MIC-DKFZ+batchgenerators"]
STUBS = {"SimpleITK", "tqdm", "blosc2", "skimage", "pandas", "matplotlib", "graphviz", "imagecodecs", "tifffile",
         "threadpoolctl", "unittest2", "future", "fft_conv_pytorch", "seaborn", "sklearn", "requests", "dicom2nifti",
         "yacs", "cc3d", "batchgeneratorsv2", "nnunetv2.training.dataloading"}


class _Stubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """empty modules for packages the predictor imports but never calls"""

    def __init__(self, names=STUBS):
        self.names = set(names)

    def find_spec(self, name, path, target=None):
        if any(name == s or name.startswith(s + ".") for s in self.names):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        m = mock.MagicMock(name=spec.name)
        m.__path__, m.__spec__, m.__name__ = [], spec, spec.name
        return m

    def exec_module(self, m):
        pass


def unpack(src, dst):
    commits = {}
    for r in REPOS:
        git = os.path.join(src, r, "repo")
        if not os.path.isdir(git):
            sys.exit(f"make_nnunet_refs: {git} is missing (fetch github:{r.replace('+', '/')})")
        commits[r.replace("+", "/")] = subprocess.run(["git", "--git-dir", git, "rev-parse", "HEAD"],
                                                      capture_output=True, text=True, check=True).stdout.strip()
        d = os.path.join(dst, r)
        os.makedirs(d)
        tar = subprocess.run(["git", "--git-dir", git, "archive", "HEAD"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", d], input=tar, check=True)
        sys.path.insert(0, d)
    return commits


def load_nnunet(src, tmp):
    commits = unpack(src, tmp)
    install_stubs()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    return nnUNetPredictor, commits


def install_stubs(extra=()):
    """the stubs (STUBS plus extra) and PyTorch 1.13's missing torch._dynamo;
    also for processes nnU-Net spawns (bench/totalseg_pipeline.py)"""
    sys.meta_path.insert(0, _Stubs(STUBS | set(extra)))
    import torch
    if "torch._dynamo" not in sys.modules:   # PyTorch 1.13 has none; nnU-Net only checks isinstance
        try:
            import torch._dynamo  # noqa: F401
        except ImportError:
            d = types.ModuleType("torch._dynamo")
            d.OptimizedModule = type("OptimizedModule", (torch.nn.Module,), {})
            sys.modules["torch._dynamo"] = d


def predict(nnUNetPredictor, folder, name, tta, float_sums=False):
    """float_sums: nnU-Net's predictor with its half accumulators made float
    (torch.half read as torch.float32 while it runs; the Gaussian stays half)"""
    import torch
    half = torch.half
    if float_sums:
        torch.half = torch.float32
    try:
        return _predict(nnUNetPredictor, folder, name, tta)
    finally:
        torch.half = half


def _predict(nnUNetPredictor, folder, name, tta, prev=None):
    import torch
    c = fx.CASES["cascade" if name == "cascade_stage" else name]
    if name == "cascade":   # 3d_lowres, then 3d_cascade_fullres with its labels (nnU-Net's array order)
        low, high = folder
        seg_low, _ = _predict(nnUNetPredictor, low, "cascade_stage", tta)
        return _predict(nnUNetPredictor, high, "cascade_stage", tta, seg_low.transpose(2, 1, 0)[None])
    p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta, perform_everything_on_device=False,
                        device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    p.initialize_from_trained_model_folder(folder, use_folds=tuple(c["folds"]), checkpoint_name="checkpoint_final.pth")
    chans, affine = fx.make_case(name if name != "cascade_stage" else "cascade")
    # SimpleITKIO's array of a NIfTI: (k, j, i), spacing reversed
    img = np.stack([ch.transpose(2, 1, 0) for ch in chans]).astype(np.float32)
    props = {"spacing": [float(s) for s in np.diag(affine)[:3][::-1]]}
    seg, prob = p.predict_single_npy_array(img, props, prev, None, True)
    return seg.transpose(2, 1, 0).astype(np.uint8), prob.transpose(0, 3, 2, 1).astype(np.float16)


def postprocess(seg):
    """nnU-Net's apply_postprocessing with the functions and kwargs its
    postprocessing.pkl holds (written by nnunet_fixture.write_postprocessing
    with nnU-Net's own function, loaded with pickle as nnU-Net loads it).
    skimage is not here: acvl_utils' skimage.measure.label (connectivity
    None: full, 26 in 3D) is scipy.ndimage.label with a 3x3x3 structure"""
    import pickle
    from scipy import ndimage
    from acvl_utils.morphology import morphology_helper as mh
    from nnunetv2.postprocessing import remove_connected_components as rcc
    mh.label = lambda b, return_num=True, connectivity=None: ndimage.label(b, np.ones((3, 3, 3)))
    path = os.path.join(tempfile.mkdtemp(), "postprocessing.pkl")
    fx.write_postprocessing(path, rcc.remove_all_but_largest_component_from_segmentation)
    fns, kwargs = pickle.load(open(path, "rb"))
    return rcc.apply_postprocessing(seg.copy(), fns, kwargs).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="*", help=f"default: all ({', '.join(fx.CASES)})")
    ap.add_argument("--src", default=os.environ.get("NNUNET_SRC", "/work/.mirror"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "ref", "nnunet"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        nnUNetPredictor, commits = load_nnunet(a.src, os.path.join(tmp, "src"))
        for name in a.cases or list(fx.CASES):
            folder = fx.make_folder(os.path.join(tmp, "models"), name) if name != "cascade" else \
                fx.make_cascade(os.path.join(tmp, "models"))
            for tta in ([True, False] if fx.CASES[name]["mirror"] is not None else [False]):
                seg, prob = predict(nnUNetPredictor, folder, name, tta)
                stem = os.path.join(a.out, name + ("" if tta or fx.CASES[name]["mirror"] is None else ".notta"))
                k0, k1 = fx.PROB_SLAB
                seg32, prob32 = predict(nnUNetPredictor, folder, name, tta, float_sums=True)
                extra = {}
                if name == "ensemble2":   # its postprocessing.pkl applied by nnU-Net's own functions
                    extra, extra32 = {"labels_pp": postprocess(seg)}, {"labels_pp": postprocess(seg32)}
                np.savez_compressed(stem + ".npz", labels=seg, probabilities=prob[..., k0:k1],
                                    prob_k=np.array([k0, k1]), **extra)
                np.savez_compressed(stem + ".fp32.npz", labels=seg32, probabilities=prob32[..., k0:k1],
                                    prob_k=np.array([k0, k1]), **(extra32 if extra else {}))
                print(f"{stem}: labels {np.bincount(seg.ravel()).tolist()}, max p {float(prob.max()):.3f}, "
                      f"{float((seg == seg32).mean()):.5f} equal with float sums")
    json.dump({"generator": "tools/dev/make_nnunet_refs.py", "commits": commits}, open(
        os.path.join(a.out, "SOURCES.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
