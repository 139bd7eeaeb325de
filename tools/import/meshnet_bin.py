#!/usr/bin/env python3
"""meshnet.bin: a MeshNet's weights for segpipe's native CPU executor
(src/runtime/meshnet.c, docs/mri.md "Native MeshNet"), written beside the
package's model.onnx from the same tensors. A package whose segpipe.json
names it ("meshnet": "meshnet.bin") runs the network natively on the CPU;
ONNX Runtime runs model.onnx otherwise (GPU, SEGPIPE_MESHNET=0).

  layers: [{"w": [cout, cin, k, k, k] float32, "b": [cout] or None,
            "dilation": d, "padding": p, "norm": bool, "act": None|"relu"|"elu"|"gelu"}]

Only the MeshNet shape is written (3x3x3 layers with padding == dilation,
then one 1x1 classifier without norm or activation); anything else gives
None, and the package runs through ONNX Runtime as before.

  tools/import/meshnet_bin.py PACKAGE      (from PACKAGE/model.onnx: Conv, Relu,
                                            Elu, InstanceNormalization graphs)
"""
import json, os, struct, sys
import numpy as np

ACTS = {None: 0, "relu": 1, "elu": 2, "gelu": 3}


def meshnet_shape(layers):
    """Why layers cannot run natively, or None when they can."""
    if len(layers) < 2:
        return "fewer than 2 layers"
    prev = 1
    for i, L in enumerate(layers):
        co, ci, k = L["w"].shape[0], L["w"].shape[1], L["w"].shape[2]
        last = i == len(layers) - 1
        if ci != prev or L["w"].shape[2:] != (k, k, k) or k != (1 if last else 3):
            return f"layer {i}: kernel {L['w'].shape}"
        if not last and L["padding"] != L["dilation"]:
            return f"layer {i}: padding {L['padding']} != dilation {L['dilation']}"
        if last and (L["norm"] or L["act"]):
            return "the classifier has a norm or an activation"
        if L["act"] not in ACTS:
            return f"layer {i}: activation {L['act']}"
        prev = co
    return None


def write(layers, path):
    """Writes path; False (nothing written) when layers are not a MeshNet."""
    if meshnet_shape(layers):
        return False
    head = [b"SPMESH01", struct.pack("<i", len(layers))]
    body = []
    for L in layers:
        co, ci, k = L["w"].shape[:3]
        head.append(struct.pack("<7i", ci, co, k, int(L["dilation"]) if k == 3 else 1, int(bool(L["norm"])),
                                ACTS[L["act"]], int(L["b"] is not None)))
        body.append(np.ascontiguousarray(L["w"], "<f4").tobytes())
        if L["b"] is not None:
            body.append(np.ascontiguousarray(L["b"], "<f4").tobytes())
    with open(path, "wb") as f:
        f.write(b"".join(head + body))
    return True


def layers_from_onnx(path):
    """A MeshNet's layers from an ONNX graph of Conv [-> InstanceNormalization
    without affine] [-> Relu | Elu(1)] in one chain; None for any other graph."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(path)
    init = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    out = []
    for n in m.graph.node:
        at = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv":
            pads, dil = at.get("pads", [0] * 6), at.get("dilations", [1, 1, 1])
            if at.get("group", 1) != 1 or any(s != 1 for s in at.get("strides", [1, 1, 1])) or \
               len(set(pads)) != 1 or len(set(dil)) != 1 or n.input[1] not in init:
                return None
            b = init.get(n.input[2]) if len(n.input) > 2 else None
            out.append({"w": init[n.input[1]].astype(np.float32), "b": None if b is None else b.astype(np.float32),
                        "dilation": int(dil[0]), "padding": int(pads[0]), "norm": False, "act": None})
        elif out and n.op_type == "InstanceNormalization" and not out[-1]["norm"] and not out[-1]["act"]:
            s, b = init.get(n.input[1]), init.get(n.input[2])
            if s is None or b is None or not np.all(s == 1) or not np.all(b == 0) or abs(at.get("epsilon", 1e-5) - 1e-5) > 1e-9:
                return None
            out[-1]["norm"] = True
        elif out and n.op_type in ("Relu", "Elu") and not out[-1]["act"]:
            if n.op_type == "Elu" and at.get("alpha", 1.0) != 1.0:
                return None
            out[-1]["act"] = n.op_type.lower()
        else:
            return None
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    pkg = sys.argv[1]
    layers = layers_from_onnx(os.path.join(pkg, "model.onnx"))
    if layers is None or not write(layers, os.path.join(pkg, "meshnet.bin")):
        print(f"meshnet_bin: {pkg}/model.onnx is not a MeshNet this executor runs", file=sys.stderr)
        sys.exit(4)
    man_path = os.path.join(pkg, "segpipe.json")
    man = json.load(open(man_path))
    man["meshnet"] = "meshnet.bin"
    json.dump(man, open(man_path, "w"), indent=1)
    print(f"wrote {pkg}/meshnet.bin: {len(layers)} layers")


if __name__ == "__main__":
    main()
