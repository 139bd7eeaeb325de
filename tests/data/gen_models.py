#!/usr/bin/env python3
"""Generate the tiny ONNX models the tests use (committed; rerun to refresh).

tiny.onnx          x float32 [N,1,4,4,4] -> y = Conv1x1x1(x) with 3 output
                   channels, weights (1, 2, -1), biases (0, 0.5, 1): every
                   output value is computable by hand.
tinyseg/           a model package: Conv3x3x3 (padding 1), 1 -> 4 classes,
                   fixed pseudo-random weights, patch 8x8x8, spacing 2 mm,
                   network axes (2, 1, 0) (SimpleITK-style k, j, i order),
                   CT normalisation. Small enough for numpy references.
"""
import json, os
import numpy as np
import onnx
from onnx import helper, TensorProto, numpy_helper

here = os.path.dirname(os.path.abspath(__file__))

def save(model, path):
    model.opset_import[0].version = 13
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, path)

# tiny.onnx
w = np.array([1, 2, -1], np.float32).reshape(3, 1, 1, 1, 1)
b = np.array([0, 0.5, 1], np.float32)
g = helper.make_graph(
    [helper.make_node("Conv", ["x", "w", "b"], ["y"])], "tiny",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4, 4])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4, 4])],
    [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
save(helper.make_model(g), os.path.join(here, "tiny.onnx"))

# tinyseg package
rng = np.random.default_rng(7)
C = 4
w = rng.normal(0, 1, (C, 1, 3, 3, 3)).astype(np.float32)
b = rng.normal(0, 0.5, C).astype(np.float32)
P = [8, 8, 8]
g = helper.make_graph(
    [helper.make_node("Conv", ["input", "w", "b"], ["logits"], pads=[1] * 6)], "tinyseg",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1] + P)],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", C] + P)],
    [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
d = os.path.join(here, "tinyseg")
os.makedirs(d, exist_ok=True)
save(helper.make_model(g), os.path.join(d, "model.onnx"))
np.savez(os.path.join(d, "weights.npz"), w=w, b=b)
man = {
    "format": "segpipe-model", "version": 1, "name": "tinyseg", "task": "ct",
    "description": "test model: one 3x3x3 convolution, random weights",
    "onnx": "model.onnx", "input": {"name": "input", "channels": 1},
    "output": {"name": "logits", "kind": "logits"},
    "axes": [2, 1, 0], "spacing": [2.0, 2.0, 2.0], "patch_size": P,
    "normalization": {"scheme": "ct", "lo": -1000, "hi": 1000, "mean": 0, "std": 500},
    "sliding_window": {"step": 0.5, "sigma_scale": 0.125},
    "labels": {"0": "background", "1": "alpha", "2": "beta", "3": "gamma"},
}
json.dump(man, open(os.path.join(d, "segpipe.json"), "w"), indent=1)
# tiny2d.onnx: a 2D model (rank-4 tensors) for the package checks
g = helper.make_graph(
    [helper.make_node("Conv", ["input", "w", "b"], ["logits"], pads=[1] * 4)], "tiny2d",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", C, 8, 8])],
    [numpy_helper.from_array(w[:, :, 1], "w"), numpy_helper.from_array(b, "b")])
save(helper.make_model(g), os.path.join(here, "tiny2d.onnx"))
# tinymask/: a per-pixel-logits photo model (SegFormer/DeepLab form):
# Conv 3x3 stride 2, 3 -> 4 classes, dynamic H and W
C2 = 4
wm = rng.normal(0, 0.5, (C2, 3, 3, 3)).astype(np.float32)
bm = rng.normal(0, 0.2, C2).astype(np.float32)
g = helper.make_graph(
    [helper.make_node("Conv", ["input", "w", "b"], ["logits"], pads=[1] * 4, strides=[2, 2])], "tinymask",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", C2, "h", "w"])],
    [numpy_helper.from_array(wm, "w"), numpy_helper.from_array(bm, "b")])
d = os.path.join(here, "tinymask")
os.makedirs(d, exist_ok=True)
save(helper.make_model(g), os.path.join(d, "model.onnx"))
np.savez(os.path.join(d, "weights.npz"), w=wm, b=bm)
room = {"0": "wall", "1": "floor", "2": "ceiling", "3": "window"}
masks = {"wall": [0], "floor": [1], "ceiling": [2], "window": [3], "wall_or_ceiling": [0, 2]}
pre = {"resize": "letterbox", "long_side": 64, "scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
       "std": [0.229, 0.224, 0.225]}
json.dump({"format": "segpipe-model", "version": 1, "name": "tinymask", "task": "masks",
           "onnx": "model.onnx", "input": {"name": "input", "channels": 3},
           "output": {"name": "logits", "kind": "logits"}, "preprocess": pre, "labels": room, "masks": masks},
          open(os.path.join(d, "segpipe.json"), "w"), indent=1)

# tinym2f/: Mask2Former's query form: masks_queries_logits = Conv 4x4 stride 4
# (3 -> Q), class_queries_logits = mean over pixels of a 1x1 conv, reshaped
Q = 5
wq = rng.normal(0, 0.5, (Q, 3, 4, 4)).astype(np.float32)
wc = rng.normal(0, 0.8, (Q * (C2 + 1), 3, 1, 1)).astype(np.float32)
g = helper.make_graph(
    [helper.make_node("Conv", ["input", "wq"], ["masks_queries_logits"], strides=[4, 4]),
     helper.make_node("Conv", ["input", "wc"], ["cc"]),
     helper.make_node("GlobalAveragePool", ["cc"], ["cg"]),
     helper.make_node("Reshape", ["cg", "shape"], ["class_queries_logits"])], "tinym2f",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
    [helper.make_tensor_value_info("class_queries_logits", TensorProto.FLOAT, ["N", Q, C2 + 1]),
     helper.make_tensor_value_info("masks_queries_logits", TensorProto.FLOAT, ["N", Q, "h", "w"])],
    [numpy_helper.from_array(wq, "wq"), numpy_helper.from_array(wc, "wc"),
     numpy_helper.from_array(np.array([-1, Q, C2 + 1], np.int64), "shape")])
d = os.path.join(here, "tinym2f")
os.makedirs(d, exist_ok=True)
save(helper.make_model(g), os.path.join(d, "model.onnx"))
np.savez(os.path.join(d, "weights.npz"), wq=wq, wc=wc)
json.dump({"format": "segpipe-model", "version": 1, "name": "tinym2f", "task": "masks",
           "onnx": "model.onnx", "input": {"name": "input", "channels": 3},
           "output": {"kind": "mask2former", "class_output": "class_queries_logits",
                      "mask_output": "masks_queries_logits"},
           "preprocess": pre, "labels": room, "masks": masks},
          open(os.path.join(d, "segpipe.json"), "w"), indent=1)

# tinymatte/: a foreground (matting) model for video: alpha = Sigmoid(Conv 3x3
# stride 2, 3 -> 1), fixed input [N, 3, 24, 40], stretched (not letterboxed)
wa = rng.normal(0, 0.6, (1, 3, 3, 3)).astype(np.float32)
ba = np.array([0.1], np.float32)
g = helper.make_graph(
    [helper.make_node("Conv", ["input", "w", "b"], ["z"], pads=[1] * 4, strides=[2, 2]),
     helper.make_node("Sigmoid", ["z"], ["alpha"])], "tinymatte",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 24, 40])],
    [helper.make_tensor_value_info("alpha", TensorProto.FLOAT, ["N", 1, 12, 20])],
    [numpy_helper.from_array(wa, "w"), numpy_helper.from_array(ba, "b")])
d = os.path.join(here, "tinymatte")
os.makedirs(d, exist_ok=True)
save(helper.make_model(g), os.path.join(d, "model.onnx"))
np.savez(os.path.join(d, "weights.npz"), w=wa, b=ba)
json.dump({"format": "segpipe-model", "version": 1, "name": "tinymatte", "task": "masks",
           "onnx": "model.onnx", "input": {"name": "input", "channels": 3, "size": [24, 40]},
           "output": {"name": "alpha", "kind": "probability", "threshold": 0.5},
           "preprocess": {"resize": "stretch", "scale": 1 / 255, "mean": [0.485, 0.456, 0.406],
                          "std": [0.229, 0.224, 0.225]},
           "labels": {"0": "background", "1": "foreground"}, "masks": {"foreground": [1]}},
          open(os.path.join(d, "segpipe.json"), "w"), indent=1)
print("wrote tiny.onnx, tiny2d.onnx, tinyseg/, tinymask/, tinym2f/, tinymatte/")
