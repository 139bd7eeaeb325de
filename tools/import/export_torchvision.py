#!/usr/bin/env python3
"""Export a torchvision image classifier as a segpipe "classify" package
(docs/classify.md): model.onnx + segpipe.json with torchvision's own
ImageNet preprocessing (resize the shorter side to 256, centre crop 224:
crop_fraction 0.875; mean/std of ImageNet; RGB).

  tools/import/export_torchvision.py --arch resnet50 -o OUT [--classes 7 | --labels labels.json]
                              [--weights state_dict.pth | --random-weights] [--fp16]

--labels: a JSON list of class names (or {"0": name, ...}); --classes N
names them class_0..class_N-1. --weights loads a state dict saved from the
same architecture with N outputs (a fine-tuned classifier, e.g. a 7-class
skin-lesion ResNet-50); --random-weights (seed 0) makes a model for timing
only. --fp16 also writes model.fp16.onnx (tools/import/onnx_fp16.py) for GPUs.
"""
import argparse, json, os, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import need_torch  # noqa: F401  (hands over to Debian's python3 where this one lacks PyTorch)
import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def labels_of(a):
    if a.labels:
        v = json.load(open(a.labels))
        return list(v) if isinstance(v, list) else [v[k] for k in sorted(v, key=int)]
    return [f"class_{i}" for i in range(a.classes)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="resnet50", help="a torchvision.models classifier name")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--labels")
    ap.add_argument("--weights")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--fp16", action="store_true")
    a = ap.parse_args()
    if not a.weights and not a.random_weights:
        ap.error("--weights FILE or --random-weights")
    labels = labels_of(a)
    torch.manual_seed(0)
    try:
        net = getattr(torchvision.models, a.arch)(num_classes=len(labels))
    except (AttributeError, TypeError) as e:
        print(f"export_torchvision: unknown or unsupported --arch {a.arch}: {e}", file=sys.stderr)
        sys.exit(4)
    if a.weights:
        net.load_state_dict(torch.load(a.weights, map_location="cpu"))
    net.eval()
    os.makedirs(a.out, exist_ok=True)
    kw = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
    with torch.no_grad():
        torch.onnx.export(net, torch.zeros(1, 3, a.size, a.size), os.path.join(a.out, "model.onnx"),
                          opset_version=17, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **kw)
    man = {"format": "segpipe-model", "version": 1, "name": a.arch, "task": "classify",
           "description": f"torchvision {a.arch}" + (" with RANDOM weights (timing only)" if a.random_weights else ""),
           "onnx": "model.onnx", "input": {"name": "input", "channels": 3, "size": [a.size, a.size]},
           "output": {"name": "logits", "kind": "logits"},
           "preprocess": {"resize": "crop", "crop_fraction": 0.875, "channel_order": "rgb", "scale": 1 / 255,
                          "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
           "labels": {str(i): n for i, n in enumerate(labels)}}
    if a.fp16:
        import onnx
        from onnx_fp16 import convert
        onnx.save(convert(onnx.load(os.path.join(a.out, "model.onnx"))), os.path.join(a.out, "model.fp16.onnx"))
        man["onnx_fp16"] = "model.fp16.onnx"
    json.dump(man, open(os.path.join(a.out, "segpipe.json"), "w"), indent=1)
    print(f"wrote {a.out}: {a.arch}, {len(labels)} classes, input {a.size}x{a.size}")


if __name__ == "__main__":
    main()
