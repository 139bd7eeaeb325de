#!/usr/bin/env python3
"""Turn one model folder of brainchop's model zoo (github.com/neuroneural/
brainchop-models, e.g. meshnet/mindgrab, meshnet/model21_104class) into a
segpipe package (docs/mri.md, docs/model-format.md):

  model.json + model.pth   the MeshNet layer list ("layers", "bnorm", "gelu",
                           "elu", "bias") and its weights, a torch zip or a
                           safetensors file (both are called model.pth there)
  model.json + model.bin   a tfjs (Keras) graph and its float32 weights

becomes model.onnx (the network rebuilt in PyTorch as brainchop-cli builds it,
exported with dynamic spatial dims), segpipe.json (brainchop's pipeline:
conform to 256^3 1 mm LIA, 2%/98% quantile scaling, the network's voxel order
(i, j, k), the largest 26-connected component of the non-zero labels) and the
labels and colours of its colormap.json.

  tools/import/import_brainchop.py MODEL_DIR -o PKG [--name NAME] [--colormap FILE]
  tools/import/import_brainchop.py --zoo build/brainchop-models -o models
      every MeshNet of the zoo as models/brainchop-<name> (names in ZOO below)

Upstream rules kept (brainchop-cli's MeshNet loader):
  - a layer is Conv3d (kernel, padding, dilation of model.json) [-> GroupNorm,
    one group per channel, no affine, eps 1e-5, when "bnorm"] -> activation
    (GELU in its tanh form when "gelu", ELU when "elu", else ReLU); the last
    layer is a bare Conv3d;
  - conv biases when "bias" is true; otherwise none, and the checkpoint's
    tensors are matched to the layers by position, so a trailing tensor the
    network has no place for (mindgrab's last bias) is dropped, as upstream;
  - the channel counts come from the weights (mindgrab's model.json says 5
    where its weights have 15).
Exit codes: 2 usage, 4 a folder that is not a brainchop model (named cause).
"""
import argparse, json, os, shutil, struct, sys, zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import need_torch  # noqa: F401  (hands over to Debian's python3 where this one lacks PyTorch)

import numpy as np
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import meshnet_bin  # noqa: E402


class ImportError_(Exception):
    pass


def fail(msg):
    raise ImportError_(msg)


# ---- weights ----------------------------------------------------------------

SAFE_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def read_safetensors(path):
    """[(name, array)] in file order (safetensors: u64 header size, JSON, data)."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        fail(f"{os.path.basename(path)}: too short for safetensors")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8 or n > 16 << 20:
        fail(f"{os.path.basename(path)}: bad safetensors header size")
    hdr = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = []
    for name, t in hdr.items():
        if name == "__metadata__":
            continue
        if t.get("dtype") not in SAFE_DTYPES:
            fail(f"{os.path.basename(path)}: tensor {name} has dtype {t.get('dtype')} (F32/F16/F64 only)")
        b, e = t["data_offsets"]
        if not (0 <= b <= e <= len(data)):
            fail(f"{os.path.basename(path)}: tensor {name} lies outside the file")
        a = np.frombuffer(data[b:e], SAFE_DTYPES[t["dtype"]]).astype(np.float32)
        out.append((name, a.reshape(t["shape"])))
    out.sort(key=lambda kv: hdr[kv[0]]["data_offsets"][0])
    return out


def read_torch(path):
    import torch
    sd = torch.load(path, map_location="cpu")
    if not isinstance(sd, dict):
        fail(f"{os.path.basename(path)}: a torch file that is not a state dict")
    return [(k, v.detach().float().numpy()) for k, v in sd.items()]


def read_pth(path):
    with open(path, "rb") as f:
        head = f.read(9)
    if zipfile.is_zipfile(path):
        return read_torch(path), "torch zip"
    if len(head) == 9 and head[8:9] == b"{":
        return read_safetensors(path), "safetensors"
    fail(f"{os.path.basename(path)}: neither a torch zip nor safetensors")


# ---- layer lists --------------------------------------------------------------

def act_of(cfg):
    return "gelu" if cfg.get("gelu") else "elu" if cfg.get("elu") else "relu"


def layers_from_meshnet(cfg, tensors):
    """model.json with "layers" + model.pth: [dict(w, b, dilation, padding, norm, act)]."""
    spec = cfg["layers"]
    bias = bool(cfg.get("bias", False))
    per = 2 if bias else 1
    if len(tensors) < per * len(spec):
        fail(f"model.pth has {len(tensors)} tensors, {per * len(spec)} needed for {len(spec)} layers")
    out = []
    for i, L in enumerate(spec):
        w = tensors[per * i][1]
        b = tensors[per * i + 1][1] if bias else None
        k = int(L["kernel_size"])
        if w.ndim != 5 or w.shape[2:] != (k, k, k) or (b is not None and b.shape != (w.shape[0],)):
            fail(f"layer {i}: tensor {tensors[per * i][0]} {tuple(w.shape)} does not fit kernel {k}")
        if i and w.shape[1] != out[-1]["w"].shape[0]:
            fail(f"layer {i}: {w.shape[1]} input channels after {out[-1]['w'].shape[0]}")
        if int(L.get("stride", 1)) != 1:
            fail(f"layer {i}: stride {L['stride']} (MeshNet layers have stride 1)")
        last = i == len(spec) - 1
        out.append({"w": w, "b": b, "dilation": int(L["dilation"]), "padding": int(L["padding"]),
                    "norm": bool(cfg.get("bnorm")) and not last, "act": None if last else act_of(cfg)})
    dropped = [n for n, _ in tensors[per * len(spec):]]
    return out, dropped


def layers_from_tfjs(cfg, bin_path):
    """tfjs graph (modelTopology + weightsManifest) + model.bin."""
    topo = cfg["modelTopology"]
    mc = topo.get("model_config", topo)
    layers = mc["config"]["layers"] if isinstance(mc.get("config"), dict) else mc["config"]
    man = [w for g in cfg["weightsManifest"] for w in g["weights"]]
    raw = np.fromfile(bin_path, np.float32)
    pos, arrays = 0, {}
    for w in man:
        if w.get("dtype", "float32") != "float32" or "quantization" in w:
            fail(f"model.bin: weight {w['name']} is not plain float32")
        n = int(np.prod(w["shape"]))
        if pos + n > raw.size:
            fail("model.bin is shorter than its weightsManifest")
        arrays[w["name"]] = raw[pos:pos + n].reshape(w["shape"])
        pos += n
    out = []
    for L in layers:
        c = L["config"]
        if L["class_name"] == "Conv3D":
            name = c["name"]
            k = c["kernel_size"][0]
            d = c["dilation_rate"][0] if isinstance(c["dilation_rate"], list) else c["dilation_rate"]
            if c.get("padding") != "same" or any(s != 1 for s in c.get("strides", [1])):
                fail(f"{name}: only 'same' padding and stride 1 are supported")
            w = np.ascontiguousarray(arrays[name + "/kernel"].transpose(4, 3, 0, 1, 2))
            b = arrays.get(name + "/bias") if c.get("use_bias", True) else None
            out.append({"w": w, "b": b, "dilation": int(d), "padding": (k - 1) * int(d) // 2,
                        "norm": False, "act": None})
            if c.get("activation", "linear") != "linear":
                out[-1]["act"] = c["activation"]
        elif L["class_name"] == "Activation":
            if not out:
                fail("an activation before any convolution")
            out[-1]["act"] = c["activation"]
        elif L["class_name"] not in ("InputLayer",):
            fail(f"tfjs layer {L['class_name']} is not supported")
    for L in out:
        if L["act"] not in (None, "relu", "elu", "gelu"):
            fail(f"activation {L['act']} is not supported")
    return out, []


# ---- the network ----------------------------------------------------------------

def build_torch(layers):
    import torch
    from torch import nn
    mods = []
    for L in layers:
        co, ci, k = L["w"].shape[0], L["w"].shape[1], L["w"].shape[2]
        conv = nn.Conv3d(ci, co, k, padding=L["padding"], dilation=L["dilation"], bias=L["b"] is not None)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(L["w"])))
            if L["b"] is not None:
                conv.bias.copy_(torch.from_numpy(np.ascontiguousarray(L["b"])))
        mods.append(conv)
        if L["norm"]:   # GroupNorm with one group per channel, no affine == InstanceNorm3d (one ONNX node)
            mods.append(nn.InstanceNorm3d(co, eps=1e-5, affine=False, track_running_stats=False))
        if L["act"] == "relu":
            mods.append(nn.ReLU())
        elif L["act"] == "elu":
            mods.append(nn.ELU())
        elif L["act"] == "gelu":
            mods.append(nn.GELU(approximate="tanh"))   # tinygrad's gelu is the tanh form
    return nn.Sequential(*mods).eval()


def export_onnx(net, path):
    import torch
    x = torch.zeros(1, 1, 24, 24, 24)
    dyn = {"input": {2: "d0", 3: "d1", 4: "d2"}, "output": {2: "d0", 3: "d1", 4: "d2"}}
    with torch.no_grad():
        torch.onnx.export(net, x, path, input_names=["input"], output_names=["output"],
                          dynamic_axes=dyn, opset_version=13, do_constant_folding=True)


# ---- labels ------------------------------------------------------------------------

def find_colormap(d, n):
    """colormap.json, else the folder's colormap*.json naming n labels
    (model5_gw_ae: colormap.json has 2, colormap3.json the network's 3)."""
    cands = ["colormap.json"] + sorted(f for f in os.listdir(d) if f.startswith("colormap") and f.endswith(".json"))
    for f in cands:
        p = os.path.join(d, f)
        if os.path.isfile(p):
            try:
                if len(json.load(open(p)).get("labels") or []) == n:
                    return p
            except (OSError, ValueError):
                pass
    return None


def read_colormap(path, n):
    cm = json.load(open(path))
    names = cm.get("labels") or []
    if len(names) != n:
        fail(f"{os.path.basename(path)} names {len(names)} labels, the network has {n} classes")
    rgb = [cm.get(c) or [] for c in ("R", "G", "B")]
    cols = None
    if all(len(c) >= n for c in rgb):
        cols = {str(i): [int(rgb[0][i]), int(rgb[1][i]), int(rgb[2][i])] for i in range(n)}
    return names, cols


# segpipe name -> (folder under meshnet/, colormap borrowed when the folder has none)
ZOO = {"mindgrab": ("mindgrab", None), "dk104": ("model21_104class", None),
       "subcortical": ("subcortical", "model18cls/colormap.json"), "aparc50": ("model30chan50cls", None),
       "subcortical-mini": ("model18cls", None), "tissue-fast": ("model5_gw_ae", None),
       "tissue": ("model20chan3cls", None), "robust-subcortical": ("model30chan18cls", None),
       "tissue-ae11": ("model11_gw_ae", None)}


def import_zoo(a):
    for name, (folder, cmap) in ZOO.items():
        d = os.path.join(a.model_dir, "meshnet", folder)
        if not os.path.isdir(d):
            print(f"import_brainchop: {folder} not in {a.model_dir}, skipped", file=sys.stderr)
            continue
        sub = argparse.Namespace(model_dir=d, out=os.path.join(a.out, "brainchop-" + name), name=name,
                                 colormap=os.path.join(a.model_dir, "meshnet", cmap) if cmap else None,
                                 description="")
        write_package(sub)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--name", help="package name (default: the folder's name)")
    ap.add_argument("--colormap", help="colormap.json to use when the folder has none")
    ap.add_argument("--description", default="")
    ap.add_argument("--zoo", action="store_true", help="MODEL_DIR is the whole zoo: import every MeshNet")
    a = ap.parse_args()
    try:
        import_zoo(a) if a.zoo else write_package(a)
    except ImportError_ as e:
        print(f"import_brainchop: {e}", file=sys.stderr)
        sys.exit(4)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"import_brainchop: {a.model_dir} is not a brainchop model folder ({type(e).__name__}: {e})",
              file=sys.stderr)
        sys.exit(4)


def load_layers(d):
    cfg = json.load(open(os.path.join(d, "model.json")))
    pth, binf = os.path.join(d, "model.pth"), os.path.join(d, "model.bin")
    if "layers" in cfg and os.path.isfile(pth):
        tensors, kind = read_pth(pth)
        layers, dropped = layers_from_meshnet(cfg, tensors)
        return cfg, layers, dropped, f"model.pth ({kind})"
    if "modelTopology" in cfg and os.path.isfile(binf):
        layers, dropped = layers_from_tfjs(cfg, binf)
        return cfg, layers, dropped, "model.bin (tfjs)"
    fail("needs model.json with \"layers\" and model.pth, or a tfjs model.json and model.bin")


def write_package(a):
    d = a.model_dir
    cfg, layers, dropped, src = load_layers(d)
    n = layers[-1]["w"].shape[0]
    cmap = a.colormap or find_colormap(d, n)
    if cmap:
        names, cols = read_colormap(cmap, n)
    elif n == 2:
        names, cols = ["background", "brain"], None
    else:
        names, cols = ["background"] + [f"label_{i}" for i in range(1, n)], None
    os.makedirs(a.out, exist_ok=True)
    export_onnx(build_torch(layers), os.path.join(a.out, "model.onnx"))
    name = a.name or os.path.basename(os.path.normpath(d))
    acts = sorted({L["act"] for L in layers if L["act"]})
    man = {"format": "segpipe-model", "version": 1, "name": name, "task": "mri",
           "description": a.description or cfg.get("header") or f"brainchop {name}",
           "onnx": "model.onnx", "input": {"name": "input", "channels": 1},
           "output": {"name": "output", "kind": "logits"},
           "conform": {"shape": 256, "voxel_mm": 1.0, "orientation": "LIA", "style": "niimath", "f_high": 0.98},
           "axes": [0, 1, 2], "spacing": [1.0, 1.0, 1.0], "patch_size": [256, 256, 256],
           "normalization": {"scheme": "quantile", "q_lo": 0.02, "q_hi": 0.98, "eps": 1e-3},
           "postprocess": {"largest_component": "foreground"},
           "labels": {str(i): s for i, s in enumerate(names)},
           "source": {"upstream": "github.com/neuroneural/brainchop-models", "folder": name, "weights": src,
                      "layers": len(layers), "activations": acts, "group_norm": any(L["norm"] for L in layers),
                      "bias": any(L["b"] is not None for L in layers), "dropped_tensors": dropped}}
    if cols:
        man["colors"] = cols
    if meshnet_bin.write(layers, os.path.join(a.out, "meshnet.bin")):   # the native CPU executor's weights
        man["meshnet"] = "meshnet.bin"
    json.dump(man, open(os.path.join(a.out, "segpipe.json"), "w"), indent=1)
    for f in ("LICENSE", "LICENSE.md", "README.md"):
        if os.path.isfile(os.path.join(d, f)):
            shutil.copyfile(os.path.join(d, f), os.path.join(a.out, f))
    with open(os.path.join(a.out, "NOTICE"), "w") as f:
        f.write(f"Weights: brainchop model '{name}' from github.com/neuroneural/brainchop-models\n"
                "(the brainchop project, MIT licence: github.com/neuroneural/brainchop; the models\n"
                "repository carries no licence file of its own). Converted by segpipe's\n"
                "tools/import/import_brainchop.py.\n")
    print(f"wrote {a.out}: {len(layers)} layers, {n} classes, weights from {src}"
          + (f", dropped {dropped} as upstream" if dropped else ""))


if __name__ == "__main__":
    main()
