#!/usr/bin/env python3
"""Add an fp16 model to a segpipe model package (docs/gpu.md).

  tools/import/onnx_fp16.py PACKAGE_DIR [--out model.fp16.onnx]

Writes PACKAGE_DIR/model.fp16.onnx and sets "onnx_fp16" in segpipe.json;
`segpipe ct --device cuda` then runs it (`--precision auto` or `fp16`).
The graph's input and output become float16 (the GPU window gathers tiles
in fp16 and accumulates the fp16 logits into fp32 sums), weights are
rounded to float16, and, as PyTorch's autocast does, normalisation layers
run in float32 between casts: their means and variances over 128^3 voxels
are where fp16 loses precision. Everything else (Conv, ConvTranspose,
activations, Concat, Add) runs in fp16.

A convolution whose only reader is an InstanceNormalization loses its bias
(drop_cancelled_bias): the norm subtracts each channel's mean, which takes
a per-channel constant away exactly, so the bias only costs a kernel (on an
H100, ONNX Runtime adds it with cudnnAddTensor: 75 of 446 ms for
TotalSegmentator's fast network; docs/performance.md). The fp32 model keeps
its biases (the CPU path's labels stay as they are).

Plain onnx only: initializers, Constant nodes, Cast targets and declared
types are rewritten; a graph with subgraphs or non-float inputs is refused.
"""
import argparse, sys
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx_util import load_package, save_variant, set_initializers, set_nodes

FP32_OPS = {"InstanceNormalization", "BatchNormalization", "LayerNormalization", "GroupNormalization",
            "ReduceMean", "Softmax"}


class ConvertError(Exception):
    pass


def to16(t):
    a = numpy_helper.to_array(t)
    if a.dtype != np.float32:
        return t
    if np.isfinite(a).all() and np.abs(a).max(initial=0) > 65504:
        raise ConvertError(f"initializer {t.name!r} has values beyond float16's range")
    return numpy_helper.from_array(a.astype(np.float16), t.name)


def retype(vi):
    tt = vi.type.tensor_type
    if tt.elem_type == TensorProto.FLOAT:
        tt.elem_type = TensorProto.FLOAT16


def drop_cancelled_bias(graph):
    """Remove the bias input of every Conv read only by InstanceNormalization
    (as its data input) and not a graph output; returns how many."""
    readers = {}
    for n in graph.node:
        for k, x in enumerate(n.input):
            readers.setdefault(x, []).append((n.op_type, k))
    outputs = {o.name for o in graph.output}
    dropped = 0
    for n in graph.node:
        if n.op_type != "Conv" or len(n.input) < 3 or not n.input[2] or n.output[0] in outputs:
            continue
        r = readers.get(n.output[0], [])
        if r and all(op == "InstanceNormalization" and k == 0 for op, k in r):
            del n.input[2]
            dropped += 1
    used = {x for n in graph.node for x in n.input}
    set_initializers(graph, [t for t in graph.initializer if t.name in used])
    return dropped


def convert(model, norm_fp16=False, keep_bias=False):
    """model in place to fp16; norm_fp16: InstanceNormalization in fp16 too
    (no casts around it: PyTorch's autocast runs instance_norm so, and ONNX
    Runtime's CUDA kernel keeps its statistics in fp32); keep_bias: leave
    the biases that a following InstanceNormalization cancels"""
    fp32_ops = FP32_OPS - {"InstanceNormalization"} if norm_fp16 else FP32_OPS
    g = model.graph
    for n in g.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
            raise ConvertError(f"node {n.name or n.op_type} has a subgraph (not supported)")
    for vi in g.input:
        if vi.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise ConvertError(f"input {vi.name!r} is not float32")
    if not keep_bias:
        drop_cancelled_bias(g)
    keep32 = set()      # initializers read by fp32 nodes stay fp32
    for n in g.node:
        if n.op_type in fp32_ops:
            keep32.update(n.input[1:])
    set_initializers(g, [t if t.name in keep32 else to16(t) for t in g.initializer])
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        retype(vi)
    nodes = []
    for i, n in enumerate(g.node):
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    a.t.CopyFrom(to16(a.t))
        if n.op_type == "Cast":
            for a in n.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = TensorProto.FLOAT16
        if n.op_type not in fp32_ops:
            nodes.append(n)
            continue
        x = n.input[0]
        nodes.append(helper.make_node("Cast", [x], [f"{x}__fp32_{i}"], to=TensorProto.FLOAT))
        n.input[0] = f"{x}__fp32_{i}"
        outs = list(n.output)
        for j, y in enumerate(outs):
            n.output[j] = f"{y}__fp32_{i}"
        nodes.append(n)
        for y in outs:
            nodes.append(helper.make_node("Cast", [f"{y}__fp32_{i}"], [y], to=TensorProto.FLOAT16))
    set_nodes(g, nodes)
    onnx.checker.check_model(model)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package")
    ap.add_argument("--out", default="model.fp16.onnx", help="file name inside the package")
    a = ap.parse_args()
    if "/" in a.out:
        ap.error("--out is a file name inside the package")
    try:
        man, model = load_package(a.package)
        convert(model)
    except (OSError, ValueError, ConvertError, onnx.checker.ValidationError) as e:
        print(f"onnx_fp16: {e}", file=sys.stderr)
        sys.exit(4)
    save_variant(a.package, man, model, a.out, "onnx_fp16")
    print(f"wrote {a.package}/{a.out} (fp16, normalisation in fp32) and \"onnx_fp16\" in segpipe.json")


if __name__ == "__main__":
    main()
