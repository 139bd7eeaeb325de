#!/usr/bin/env python3
"""Split a CT model's final 1x1x1 convolution (its "head") out of the ONNX
graph, so segpipe accumulates the network's features instead of its logits
(docs/model-format.md, "head"; docs/performance.md, memory).

  tools/import/onnx_split_head.py PACKAGE_DIR [-o OUT_DIR] [--split-concat]

The sliding window sums Gaussian-weighted tiles; the head is linear
(logits = W f + b), so sum_t w_t (W f_t + b) = W (sum_t w_t f_t) + b sum_t w_t.
segpipe can therefore add up the F features of each tile (32 for nnU-Net's
first stage) and apply W and b once per voxel at the argmax: the output
tile and the accumulator shrink from C (e.g. 118) to F channels, and the
head's work is done once per voxel instead of once per covering tile.

Writes OUT_DIR (default: PACKAGE_DIR in place) with model.onnx ending at the
head's input, head.bin (float32 little-endian: W as C rows of F, then b as C
values) and "head": {"file": "head.bin", "features": F} in segpipe.json. An
"onnx_fp16" model is dropped from the manifest: split packages run on the
CPU (the GPU window keeps the logits on the device already).

The graph must end in one Conv with a 1x1x1 kernel, group 1, whose output
is the graph's only output; anything else is refused.

--split-concat also rewrites each decoder step Conv(Concat(up, skip)) as
Conv(up, W_up) + Conv(skip, W_skip): the same sum over input channels,
without the concatenated tensor (for nnU-Net's last decoder stage at a
128^3 patch: 64 channels, 537 MB) ever existing. ONNX Runtime's peak drops
by one full-resolution feature map; the sums are reordered, so logits
differ in the last bits (labels: see docs/performance.md).
"""
import argparse, json, os, shutil, sys
import numpy as np
import onnx
from onnx import numpy_helper


class SplitError(Exception):
    pass


def split(model):
    """-> (model without the head, W [C, F] float32, b [C] float32)"""
    g = model.graph
    if len(g.output) != 1:
        raise SplitError(f"the graph has {len(g.output)} outputs; a CT model has one")
    out = g.output[0].name
    heads = [n for n in g.node if out in n.output]
    if len(heads) != 1 or heads[0].op_type != "Conv":
        raise SplitError(f"the output {out!r} is not made by a Conv node")
    head = heads[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in head.attribute}
    if attrs.get("group", 1) != 1:
        raise SplitError("the head convolution is grouped")
    inits = {t.name: t for t in g.initializer}
    if head.input[1] not in inits:
        raise SplitError("the head's weights are not an initializer")
    w = numpy_helper.to_array(inits[head.input[1]]).astype(np.float32)
    if w.ndim != 5 or w.shape[2:] != (1, 1, 1):
        raise SplitError(f"the head's kernel is {list(w.shape[2:])}, not 1x1x1")
    c, f = w.shape[:2]
    b = np.zeros(c, np.float32)
    if len(head.input) > 2 and head.input[2]:
        if head.input[2] not in inits:
            raise SplitError("the head's bias is not an initializer")
        b = numpy_helper.to_array(inits[head.input[2]]).astype(np.float32)
    feat = head.input[0]
    users = [n for n in g.node if feat in n.input and n is not head]
    if users:
        raise SplitError(f"the head's input {feat!r} is used by other nodes too")
    g.node.remove(head)
    for name in head.input[1:]:
        if name and not any(name in n.input for n in g.node):
            g.initializer.remove(inits[name])
    old = g.output[0]
    shape = [d.dim_param or d.dim_value for d in old.type.tensor_type.shape.dim]
    if len(shape) == 5:
        shape[1] = f
    g.output.remove(old)
    g.output.append(onnx.helper.make_tensor_value_info(feat, onnx.TensorProto.FLOAT, shape or None))
    onnx.checker.check_model(model)
    return model, w.reshape(c, f), b


def split_concats(model):
    """Conv(Concat(a, b, axis=1), W, B) -> Add(Conv(a, W_a, B), Conv(b, W_b)); -> count"""
    from onnx import shape_inference
    g = model.graph
    shapes = {}
    inferred = shape_inference.infer_shapes(model)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) > 1 and dims[1].dim_value:
            shapes[vi.name] = dims[1].dim_value
    inits = {t.name: t for t in g.initializer}
    done = 0
    for cat in [n for n in g.node if n.op_type == "Concat"]:
        axis = [a.i for a in cat.attribute if a.name == "axis"]
        users = [n for n in g.node if cat.output[0] in n.input]
        if axis != [1] or len(cat.input) != 2 or len(users) != 1 or users[0].op_type != "Conv" or \
           users[0].input[0] != cat.output[0] or cat.output[0] in [o.name for o in g.output]:
            continue
        conv = users[0]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
        ca = shapes.get(cat.input[0])
        if attrs.get("group", 1) != 1 or conv.input[1] not in inits or not ca:
            continue
        w = numpy_helper.to_array(inits[conv.input[1]])
        if not 0 < ca < w.shape[1]:
            continue
        base = conv.output[0]
        wa = numpy_helper.from_array(np.ascontiguousarray(w[:, :ca]), base + "_Wa")
        wb = numpy_helper.from_array(np.ascontiguousarray(w[:, ca:]), base + "_Wb")
        g.initializer.extend([wa, wb])
        bias = [conv.input[2]] if len(conv.input) > 2 and conv.input[2] else []
        ca_node = onnx.helper.make_node("Conv", [cat.input[0], wa.name] + bias, [base + "_a"],
                                        name=conv.name + "_a", **attrs)
        cb_node = onnx.helper.make_node("Conv", [cat.input[1], wb.name], [base + "_b"], name=conv.name + "_b",
                                        **attrs)
        add = onnx.helper.make_node("Add", [base + "_a", base + "_b"], [base], name=conv.name + "_add")
        at = list(g.node).index(conv)
        g.node.remove(conv)
        g.node.remove(cat)
        at = min(at, len(g.node))
        for k, n in enumerate((ca_node, cb_node, add)):
            g.node.insert(at - 1 + k, n)
        if not any(conv.input[1] in n.input for n in g.node):
            g.initializer.remove(inits[conv.input[1]])
        done += 1
    onnx.checker.check_model(model)
    return done


def split_package(src, dst, concat=False):
    man = json.load(open(os.path.join(src, "segpipe.json")))
    if man.get("task", "ct") not in ("ct", "mri"):
        raise SplitError(f"{src}: a {man.get('task')!r} model; only volume models have a head to split")
    if "head" in man:
        raise SplitError(f"{src}: the head is already split")
    model, w, b = split(onnx.load(os.path.join(src, man.get("onnx", "model.onnx"))))
    if concat:
        man["split_concat"] = split_concats(model)
    ncls = max(int(k) for k in man["labels"]) + 1
    if w.shape[0] != ncls:
        raise SplitError(f"the head has {w.shape[0]} classes, the label map {ncls}")
    if dst != src:
        os.makedirs(dst, exist_ok=True)
        for name in os.listdir(src):
            if name not in (man.get("onnx", "model.onnx"), man.get("onnx_fp16", ""), "segpipe.json") and \
               os.path.isfile(os.path.join(src, name)):
                shutil.copy(os.path.join(src, name), dst)
    onnx.save(model, os.path.join(dst, "model.onnx"))
    with open(os.path.join(dst, "head.bin"), "wb") as fh:
        fh.write(np.ascontiguousarray(w, "<f4").tobytes())
        fh.write(np.ascontiguousarray(b, "<f4").tobytes())
    man["onnx"] = "model.onnx"
    man.pop("onnx_fp16", None)
    man["output"] = {**man.get("output", {}), "name": model.graph.output[0].name}
    man["head"] = {"file": "head.bin", "features": int(w.shape[1])}
    with open(os.path.join(dst, "segpipe.json"), "w") as fh:
        json.dump(man, fh, indent=1)
    return w.shape


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package")
    ap.add_argument("-o", "--out", help="output package folder (default: in place)")
    ap.add_argument("--split-concat", action="store_true",
                    help="also split each Conv(Concat(...)) into two Convs and an Add (less peak memory)")
    a = ap.parse_args()
    try:
        c, f = split_package(a.package, a.out or a.package, a.split_concat)
    except (SplitError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"onnx_split_head: {e}", file=sys.stderr)
        sys.exit(4)
    print(f"wrote {a.out or a.package}: head {c} classes x {f} features in head.bin")


if __name__ == "__main__":
    main()
