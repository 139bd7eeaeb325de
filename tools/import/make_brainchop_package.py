#!/usr/bin/env python3
"""Build a segpipe model package for brainchop's MeshNet grey/white-matter
model (../shared/models/brainchop-gwm: BSD-2, 25 KB) — the ONNX file copied
beside a manifest that states its input convention (docs/model-format.md):
FreeSurfer-style conforming to 256^3 voxels of 1 mm in LIA orientation,
min-max scaling to 0..1, the whole volume in one inference, the ONNX dims
(z, y, x) of the conformed volume, 3 classes.

  tools/import/make_brainchop_package.py [-o build/brainchop-gwm] [--source ../shared/models/brainchop-gwm]
  segpipe mri T1.nii.gz -o labels.nii.gz --model build/brainchop-gwm
"""
import argparse, json, os, shutil, sys

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)
import need_torch  # noqa: E402,F401  (another python3 without Debian's numpy/torch hands over to /usr/bin/python3)
import meshnet_bin  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--out", default=os.path.join(here, "..", "..", "build", "brainchop-gwm"))
    ap.add_argument("--source", default=os.path.join(here, "..", "..", "..", "shared", "models", "brainchop-gwm"))
    a = ap.parse_args()
    src = os.path.join(a.source, "model.onnx")
    if not os.path.isfile(src):
        print(f"make_brainchop_package: {src} not found (../shared/models/brainchop-gwm)", file=sys.stderr)
        sys.exit(4)
    os.makedirs(a.out, exist_ok=True)
    shutil.copyfile(src, os.path.join(a.out, "model.onnx"))
    for f in ("LICENSE", "README.md"):
        if os.path.isfile(os.path.join(a.source, f)):
            shutil.copyfile(os.path.join(a.source, f), os.path.join(a.out, f))
    man = {"format": "segpipe-model", "version": 1, "name": "brainchop-gwm", "task": "mri",
           "description": "brainchop MeshNet grey/white matter from a T1 MRI (BSD-2, github.com/niivue/niivue-onnx)",
           "onnx": "model.onnx", "input": {"name": "input", "channels": 1},
           "output": {"name": "output", "kind": "logits"},
           "conform": {"shape": 256, "voxel_mm": 1.0, "orientation": "LIA"},
           "axes": [2, 1, 0], "spacing": [1.0, 1.0, 1.0], "patch_size": [256, 256, 256],
           "normalization": {"scheme": "minmax"},
           "labels": {"0": "background", "1": "white_matter", "2": "grey_matter"}}
    layers = meshnet_bin.layers_from_onnx(src)   # the native CPU executor's weights (runtime/meshnet.c)
    if layers is not None and meshnet_bin.write(layers, os.path.join(a.out, "meshnet.bin")):
        man["meshnet"] = "meshnet.bin"
    json.dump(man, open(os.path.join(a.out, "segpipe.json"), "w"), indent=1)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
