#!/usr/bin/env python3
"""A 5-fold nnU-Net ensemble with mirroring (8 passes per tile) on the CPU:
segpipe against nnU-Net's own predictor, same weights, same case, one run.

  /usr/bin/python3 bench/nnunet_ensemble.py [--threads 2] [--shape 64,96,96]
      [--features 8,16,32] [--patch 64,64,64] [--folds 0,1,2,3,4] [--no-tta]
      [--src /work/.mirror] [--json OUT]

The model folder is the test fixture's (tests/py/nnunet_fixture.py: a
PlainConvUNet with seeded random weights, nnU-Net's checkpoint layout),
scaled to --features and --patch. nnU-Net's predictor is the real code
(tools/dev/make_nnunet_refs.py loads it from the fetched repositories; not
installed here), run with torch.set_num_threads(--threads), tile step 0.5,
mirroring as the checkpoint allows. segpipe imports the folds with
tools/import/import_nnunet.py --fold and runs `segpipe ct --tta -t THREADS`.
Printed: seconds of each (whole prediction, process start to labels for
segpipe), their ratio, and the share of voxels with equal labels.
"""
import argparse, json, os, subprocess, sys, tempfile, time
import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "py"))
sys.path.insert(0, os.path.join(ROOT, "tools", "dev"))
import nnunet_fixture as fx  # noqa: E402
import make_nnunet_refs as refs  # noqa: E402


def ints(s):
    return [int(x) for x in s.split(",")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shape", default="64,96,96", help="case shape, network (z, y, x) order")
    ap.add_argument("--features", default="8,16,32")
    ap.add_argument("--patch", default="64,64,64")
    ap.add_argument("--folds", default="0,1,2,3,4")
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--src", default=os.environ.get("NNUNET_SRC", "/work/.mirror"))
    ap.add_argument("--json")
    a = ap.parse_args()
    import torch
    import nibabel as nib
    torch.set_num_threads(a.threads)
    fx.FEATS, fx.PATCH, fx.SHAPE = ints(a.features), ints(a.patch), tuple(ints(a.shape))
    folds = a.folds.split(",")
    fx.CASES["bench"] = dict(folds=folds, mirror=None if a.no_tta else [0, 1, 2], schemes=["CTNormalization"],
                             labels={"background": 0, "liver": 1, "spleen": 2, "kidney": 3})
    tmp = tempfile.mkdtemp(prefix="sp_nnunet_bench.")
    predictor, commits = refs.load_nnunet(a.src, os.path.join(tmp, "src"))
    folder = fx.make_folder(tmp, "bench")
    t0 = time.time()
    ref, _ = refs._predict(predictor, folder, "bench", not a.no_tta)
    t_nn = time.time() - t0
    pkg = os.path.join(tmp, "pkg")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "import", "import_nnunet.py"), folder, "-o", pkg,
                    "--fold", a.folds], check=True, capture_output=True)
    chans, affine = fx.make_case("bench")
    case = os.path.join(tmp, "case.nii.gz")
    nib.save(nib.Nifti1Image(chans[0], affine), case)
    out = os.path.join(tmp, "seg.nii.gz")
    seg = os.environ.get("SEGPIPE", os.path.join(ROOT, "build", "segpipe"))
    t0 = time.time()
    subprocess.run([seg, "ct", case, "-o", out, "--model", pkg, "-q", "--no-passport", "-t", str(a.threads),
                    "--no-tta" if a.no_tta else "--tta"], check=True)
    t_sp = time.time() - t0
    got = np.asanyarray(nib.load(out).dataobj)
    res = {"folds": folds, "tta": not a.no_tta, "threads": a.threads, "shape": fx.SHAPE, "features": fx.FEATS,
           "patch": fx.PATCH, "nnunet_s": round(t_nn, 2), "segpipe_s": round(t_sp, 2),
           "ratio": round(t_sp / t_nn, 3), "labels_equal": float((got == ref).mean()), "nnunet_commits": commits}
    print(json.dumps(res, indent=1))
    if a.json:
        json.dump(res, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
