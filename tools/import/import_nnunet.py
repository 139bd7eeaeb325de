#!/usr/bin/env python3
"""Import an nnU-Net v2 trained model (e.g. TotalSegmentator's) as a segpipe
model package: model.onnx + segpipe.json (docs/model-format.md).

  tools/import/import_nnunet.py MODEL_FOLDER -o OUT_DIR [--fold 0|0,1,2,3,4|all] [--checkpoint checkpoint_final.pth]
                         [--configuration 3d_fullres]
  tools/import/import_nnunet.py --random-weights --arch totalseg-fast -o OUT_DIR
  add --fp16 to either for a GPU's fp16 model beside the fp32 one
  add --split-head for the CPU's memory-lean form (tools/import/onnx_split_head.py
  --split-concat: the final 1x1x1 convolution applied after accumulation,
  no concatenated decoder tensors; 118-class TotalSegmentator-fast: 3.5 ->
  1.7 GB peak at 512x512x280, same labels)

MODEL_FOLDER is nnU-Net's trained-model folder: dataset.json, plans.json and
fold_N/checkpoint_final.pth. The network is rebuilt in plain PyTorch
(tools/import/segpipe_nets.py) from the plans' architecture section (both the
current `architecture.arch_kwargs` form and the older `UNet_class_name` /
`conv_kernel_sizes` / `pool_op_kernel_sizes` form), the checkpoint's
`network_weights` are loaded, deep supervision is off, and the network is
exported to ONNX (opset 17, dynamic batch).

Several folds (`--fold 0,1,2,3,4`; `all` is nnU-Net's fold_all) make one
network that runs every fold on the tile and returns the mean of their
logits: nnU-Net's predictor sums each fold's Gaussian-weighted logits and
divides by the number of folds, and since every fold sees the same tiles
with the same weights, that equals the sliding window of the folds' mean
tile logits. Mirroring test-time augmentation, when the FIRST fold's
checkpoint has `inference_allowed_mirroring_axes`, is a second graph
(model.tta.onnx): per tile and fold, the plain pass plus every combination
of those axes, `flip(net(flip(x, axes)), axes)`, averaged over the passes
(nnU-Net's `_internal_maybe_mirror_and_predict`); the manifest's "tta"
names it, and `segpipe ct --tta/--no-tta` picks one (default: on, as
nnU-Net's predictor). The manifest takes the spacing
and patch size from the configuration, CT normalisation from
`foreground_intensity_properties_per_channel`, labels from dataset.json and
the axis order from the image reader and `transpose_forward`. The folder's
dataset.json and plans.json are kept as PKG/nnunet/ (segpipe predict
copies them to its OUT_DIR, as nnUNetv2_predict does, for nnUNetv2_ensemble).

Written from nnU-Net's documented file formats; no nnU-Net code is used.
"""
import argparse, itertools, json, os, pickle, shutil, sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import need_torch  # noqa: F401  (hands over to Debian's python3 where this one lacks PyTorch)
import torch

from segpipe_nets import Opts, UNet, load_nnunet_state_dict
from onnx_fp16 import ConvertError
from onnx_split_head import SplitError

SITK_READERS = {"SimpleITKIO", "SimpleITKIOWithReorient"}
NIBABEL_READERS = {"NibabelIO", "NibabelIOWithReorient"}

# TotalSegmentator --fast (task 297, 3 mm): nnU-Net 3d_fullres PlainConvUNet
# as described in ../shared/docs/gpu.md (features 32..320, 118 classes).
TOTALSEG_FAST = dict(
    arch="PlainConvUNet", features=[32, 64, 128, 256, 320, 320], patch=[128, 128, 128],
    strides=[[1, 1, 1]] + [[2, 2, 2]] * 5, kernels=[[3, 3, 3]] * 6, n_conv=[2] * 6, n_conv_dec=[2] * 5,
    spacing=[3.0, 3.0, 3.0], classes=118, axes=[2, 1, 0],
    norm=dict(lo=-1024.0, hi=1500.0, mean=-200.0, std=450.0))


class ImportError_(Exception):
    pass


def opts_from_kwargs(k):
    """Conv-block options of dynamic_network_architectures from arch_kwargs."""
    norm = k.get("norm_op") or "InstanceNorm3d"
    nk = k.get("norm_op_kwargs") or {}
    nonlin = k.get("nonlin") or "LeakyReLU"
    ak = k.get("nonlin_kwargs") or {}
    if "InstanceNorm" in norm:
        kind = "instance"
    elif "BatchNorm" in norm:
        kind = "batch"
    else:
        raise ImportError_(f"norm_op {norm} is not supported (InstanceNorm, BatchNorm)")
    if "LeakyReLU" in nonlin:
        slope = ak.get("negative_slope", 0.01)
    elif nonlin.split(".")[-1] == "ReLU":
        slope = 0
    else:
        raise ImportError_(f"nonlin {nonlin} is not supported (LeakyReLU, ReLU)")
    return Opts(conv_bias=bool(k.get("conv_bias", False)), norm=kind, eps=nk.get("eps", 1e-5),
                affine=nk.get("affine", True), slope=slope)


def arch_from_plans(cfg, num_classes):
    """-> (arch name, kwargs for segpipe_nets.UNet)"""
    if "architecture" in cfg:
        a = cfg["architecture"]
        name = a["network_class_name"].split(".")[-1]
        k = a["arch_kwargs"]
        n_conv = k.get("n_conv_per_stage", k.get("n_blocks_per_stage"))
        conv = k.get("conv_op", "Conv3d").split(".")[-1]
        if conv not in ("Conv3d", "Conv2d"):
            raise ImportError_(f"conv_op {conv}: segpipe imports 3D (Conv3d) and 2D (Conv2d) networks")
        kw = dict(dim=3 if conv == "Conv3d" else 2,features_per_stage=k["features_per_stage"], kernel_sizes=k["kernel_sizes"],
                  strides=k["strides"], n_conv_per_stage=n_conv,
                  n_conv_per_stage_decoder=k["n_conv_per_stage_decoder"], opts=opts_from_kwargs(k))
        if name == "ResidualEncoderUNet":
            block = (k.get("block") or "BasicBlockD").split(".")[-1]
            if block not in ("BasicBlockD", "BottleneckD"):
                raise ImportError_(f"block {block} is not supported (BasicBlockD, BottleneckD)")
            kw.update(block=block, bottleneck_channels=k.get("bottleneck_channels"),
                      stem_channels=k.get("stem_channels"))
        return name, kw
    if "UNet_class_name" in cfg:   # older nnU-Net v2 plans: conv_bias was always on
        name = cfg["UNet_class_name"]
        kernels = cfg["conv_kernel_sizes"]
        strides = cfg["pool_op_kernel_sizes"]
        n = len(kernels)
        feats = [min(cfg["UNet_base_num_features"] * 2 ** i, cfg["unet_max_num_features"]) for i in range(n)]
        enc = cfg["n_conv_per_stage_encoder"]
        dec = cfg["n_conv_per_stage_decoder"]
        return name, dict(dim=len(cfg["patch_size"]), features_per_stage=feats, kernel_sizes=kernels, strides=strides,
                          n_conv_per_stage=enc, n_conv_per_stage_decoder=dec, opts=Opts(conv_bias=True))
    raise ImportError_("plans configuration has no architecture section")


def axes_for(reader, transpose_forward):
    """Every nnU-Net v2 reader hands the network arrays (k, j, i): SimpleITK
    by its own order, NibabelIO and NibabelIOWithReorient by transposing
    nibabel's (i, j, k) with (2, 1, 0) (nnunetv2/imageio/nibabel_reader_writer.py,
    "to be consistent with the way SimpleITK reads images"); the plans'
    transpose_forward then permutes them."""
    if reader not in SITK_READERS | NIBABEL_READERS:
        raise ImportError_(f"unknown image reader {reader!r} (known: {sorted(SITK_READERS | NIBABEL_READERS)})")
    return [[2, 1, 0][t] for t in transpose_forward]


def export(net, patch, out_dir, manifest, onnx_name="model.onnx"):
    os.makedirs(out_dir, exist_ok=True)
    net.eval()
    dummy = torch.zeros(1, manifest["input"]["channels"], *patch)
    kw = {}
    if "dynamo" in torch.onnx.export.__code__.co_varnames:
        kw["dynamo"] = False
    with torch.no_grad():
        torch.onnx.export(net, dummy, os.path.join(out_dir, onnx_name), opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **kw)
    with open(os.path.join(out_dir, "segpipe.json"), "w") as f:
        json.dump(manifest, f, indent=1)


def manifest_for(name, description, spacing, patch, axes, norm, labels, step=0.5):
    return {"format": "segpipe-model", "version": 1, "name": name, "task": "ct",
            "description": description, "onnx": "model.onnx",
            "input": {"name": "input", "channels": 1}, "output": {"name": "logits", "kind": "logits"},
            "axes": axes, "spacing": spacing, "patch_size": patch, "normalization": norm,
            "sliding_window": {"step": step, "sigma_scale": 0.125},
            "labels": {str(k): v for k, v in sorted(labels.items())}}


class Slices(torch.nn.Module):
    """a 2D network on [N, C, 1, H, W] tiles: one slice, as nnU-Net's 2D
    configurations see each slice of the volume (the window's patch is
    [1, H, W] and its steps along dim 0 take every slice once)"""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x[:, :, 0])[:, :, None]


class Ensemble(torch.nn.Module):
    """The folds' networks on one tile: per fold the plain pass plus, with
    mirror_axes (spatial dims, nnU-Net's inference_allowed_mirroring_axes),
    every combination of flips, flip(net(flip(x, a)), a), averaged over the
    passes; then the mean over the folds. The passes run one after another
    (the activations of one pass at a time)."""

    def __init__(self, nets, mirror_axes=None):
        super().__init__()
        self.nets = torch.nn.ModuleList(nets)
        axes = [a + 2 for a in (mirror_axes or [])]
        self.combos = [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]

    def forward(self, x):
        total = None
        for net in self.nets:
            p = net(x)
            for c in self.combos:
                p = p + torch.flip(net(torch.flip(x, c)), c)
            if self.combos:
                p = p / (len(self.combos) + 1)
            total = p if total is None else total + p
        return total / len(self.nets) if len(self.nets) > 1 else total


PP_FN = ("nnunetv2.postprocessing.remove_connected_components", "remove_all_but_largest_component_from_segmentation")


class _PPUnpickler(pickle.Unpickler):
    """postprocessing.pkl names nnU-Net's function by reference; nothing else
    may be loaded (a pickle can run any code it names)"""

    def find_class(self, module, name):
        if (module, name) == PP_FN:
            return PP_FN
        raise ImportError_(f"postprocessing.pkl names {module}.{name}: only {PP_FN[0]}.{PP_FN[1]} is understood")


def read_postprocessing(path, max_label):
    """nnU-Net's postprocessing.pkl ((functions, kwargs), as determine_postprocessing
    saves it) -> the label sets whose largest component is kept, in order"""
    with open(path, "rb") as f:
        fns, kwargs = _PPUnpickler(f).load()
    sets = []
    for fn, kw in zip(fns, kwargs):
        if fn != PP_FN or set(kw) - {"labels_or_regions", "background_label"} or kw.get("background_label", 0):
            raise ImportError_(f"postprocessing.pkl: {fn} {kw} is not remove_all_but_largest_component with "
                               "background 0")
        lr = kw["labels_or_regions"]
        labs = set()
        for x in (lr if isinstance(lr, list) else [lr]):
            labs |= set(int(v) for v in (x if isinstance(x, (tuple, list)) else [x]))
        if not labs or min(labs) < 1 or max(labs) > max_label:
            raise ImportError_(f"postprocessing.pkl: labels {sorted(labs)} are not foreground labels 1..{max_label}")
        sets.append(sorted(labs))
    return sets


def parse_folds(text):
    """'0', '0,1,2', 'all', '0 1' -> ['0', '1', ...] (fold folder suffixes)"""
    folds = [f for f in text.replace(",", " ").split() if f]
    for f in folds:
        if f != "all" and not f.isdigit():
            raise ImportError_(f"--fold {text!r}: a comma list of fold numbers or 'all'")
    if not folds or len(set(folds)) != len(folds):
        raise ImportError_(f"--fold {text!r}: give each fold once")
    return folds


def load_config(folder, configuration):
    ds = json.load(open(os.path.join(folder, "dataset.json")))
    plans = json.load(open(os.path.join(folder, "plans.json")))
    if configuration is None:
        # trained-model folders are named Trainer__Plans__configuration
        base = os.path.basename(os.path.normpath(folder))
        configuration = base.split("__")[-1] if "__" in base else "3d_fullres"
    cfgs = plans["configurations"]
    if configuration not in cfgs:
        raise ImportError_(f"configuration {configuration!r} not in plans ({sorted(cfgs)})")
    cfg = dict(cfgs[configuration])
    while "inherits_from" in cfg and "architecture" not in cfg and "UNet_class_name" not in cfg:
        parent = cfgs[cfg.pop("inherits_from")]
        cfg = {**parent, **cfg}
    return ds, plans, cfg, configuration


def nnunet_resampling(cfg):
    """the configuration resamples its images with nnU-Net's default
    (resample_data_or_seg_to_shape, order 3, order_z 0, separate z
    decided by the spacing), the one segpipe's "resample": "nnunet" does"""
    fn = cfg.get("resampling_fn_data", "resample_data_or_seg_to_shape")
    kw = cfg.get("resampling_fn_data_kwargs", {})
    return (fn == "resample_data_or_seg_to_shape" and kw.get("order", 3) == 3 and kw.get("order_z", 0) == 0
            and kw.get("force_separate_z") is None and not kw.get("is_seg", False))


def normalization_for(plans, cfg, channels):
    """one manifest normalisation per input channel, from the plans'
    normalization_schemes (nnU-Net's preprocessing/normalization)"""
    schemes = cfg.get("normalization_schemes", ["CTNormalization"] * channels)
    masks = cfg.get("use_mask_for_norm", [False] * channels)
    if len(schemes) != channels:
        raise ImportError_(f"the plans give {len(schemes)} normalization_schemes for {channels} channels")
    out = []
    for q, s in enumerate(schemes):
        if s == "CTNormalization":
            p = plans["foreground_intensity_properties_per_channel"][str(q)]
            out.append({"scheme": "ct", "lo": p["percentile_00_5"], "hi": p["percentile_99_5"],
                        "mean": p["mean"], "std": p["std"]})
        elif s == "ZScoreNormalization" and q < len(masks) and masks[q]:   # over the non-zero mask only
            out.append({"scheme": "zscore", "mask": "nonzero"})
        elif s == "ZScoreNormalization":
            out.append({"scheme": "zscore"})
        elif s == "NoNormalization":
            out.append({"scheme": "none"})
        elif s == "RescaleTo01Normalization":   # (x - min) / max(max - min, 1e-8): segpipe's minmax
            out.append({"scheme": "minmax"})
        else:
            raise ImportError_(f"channel {q}: normalisation {s} is not supported (CT, ZScore, NoNormalization, "
                               "RescaleTo01)")
    return out


def load_folds(folder, folds, checkpoint, make_net, wrap=None):
    """one network per fold; the mirroring axes of the first fold's checkpoint
    (nnU-Net reads them from the first only; absent or None: no mirroring)"""
    nets, mirror = [], None
    for i, f in enumerate(folds):
        path = os.path.join(folder, f"fold_{f}", checkpoint)
        if not os.path.isfile(path):
            raise ImportError_(f"fold {f}: no {checkpoint} in {os.path.join(os.path.basename(folder), f'fold_{f}')}")
        ck = torch.load(path, map_location="cpu")
        if i == 0:
            mirror = ck.get("inference_allowed_mirroring_axes")
            mirror = [int(a) for a in mirror] if mirror is not None else None
            if mirror is not None and (not mirror or any(a < 0 or a > 2 for a in mirror)):
                raise ImportError_(f"fold {f}: inference_allowed_mirroring_axes {mirror} are not spatial axes 0..2")
        net = make_net()
        load_nnunet_state_dict(net, ck["network_weights"])
        net.eval()
        nets.append(net if wrap is None else wrap(net))
    return nets, mirror


def labels_and_regions(ds):
    """dataset.json's labels -> ({index: name}, None), or for a region-based
    model (a label that is a list of several values, nnU-Net's has_regions)
    ({class_order[i]: region i's name, 0: background}, class_order): the
    regions in dataset.json's order, background and 'ignore' left out, as
    nnU-Net's LabelManager lists them"""
    items = ds["labels"].items()
    if not any(isinstance(v, (list, tuple)) and len(v) > 1 for _, v in items):
        labels = {}
        for name, v in items:
            v = v[0] if isinstance(v, (list, tuple)) else v
            if name != "ignore":
                labels[int(v)] = name
        return labels, None
    names = [k for k, v in items if k != "ignore" and not (
        (not isinstance(v, (list, tuple)) and v == 0) or (isinstance(v, (list, tuple)) and set(v) == {0}))]
    order = ds.get("regions_class_order")
    if not order or len(order) != len(names):
        raise ImportError_(f"a region-based dataset.json needs regions_class_order with one label per region "
                           f"({len(names)}: {names})")
    labels = {0: "background"}
    for name, c in zip(names, order):
        labels[int(c)] = name
    return labels, [int(c) for c in order]


def import_folder(folder, out_dir, fold="0", checkpoint="checkpoint_final.pth", configuration=None,
                  postprocessing=None):
    ds, plans, cfg, configuration = load_config(folder, configuration)
    labels, regions = labels_and_regions(ds)
    num_classes = len(regions) if regions else max(labels) + 1
    channels = len(ds.get("channel_names", ds.get("modality", {"0": "CT"})))
    if not 1 <= channels <= 8 or (cfg.get("previous_stage") and len(labels) - 1 > 64):
        raise ImportError_(f"{channels} input channels: segpipe takes 1 to 8 (and a cascade up to 64 labels)")
    arch, kw = arch_from_plans(cfg, num_classes)
    if arch not in ("PlainConvUNet", "ResidualEncoderUNet"):
        raise ImportError_(f"architecture {arch} is not supported (PlainConvUNet, ResidualEncoderUNet)")
    folds = parse_folds(str(fold))
    norms = normalization_for(plans, cfg, channels)
    prev = cfg.get("previous_stage")   # a cascade: the previous stage's foreground labels one-hot after the images
    fg = sorted(k for k in labels if k != 0) if prev else []
    if prev and regions:
        raise ImportError_("a region-based cascade stage is not supported")
    norms += [{"scheme": "none"}] * len(fg)
    total = channels + len(fg)
    two_d = kw["dim"] == 2   # a 2D configuration: each slice, [1, H, W] tiles
    nets, mirror = load_folds(folder, folds, checkpoint, lambda: UNet(arch, total, num_classes, **kw),
                              Slices if two_d else None)
    if two_d and mirror is not None:
        mirror = [a + 1 for a in mirror]   # the 2D axes are the tiles' dims 1 and 2
    patch = [1] + list(cfg["patch_size"]) if two_d else list(cfg["patch_size"])
    spacing = [0.0] + list(map(float, cfg["spacing"])) if two_d else list(map(float, cfg["spacing"]))
    norm = norms[0] if total == 1 else norms
    reader = ds.get("overwrite_image_reader_writer", plans.get("image_reader_writer", "SimpleITKIO"))
    axes = axes_for(reader, plans.get("transpose_forward", [0, 1, 2]))
    what = f"fold {folds[0]}" if len(folds) == 1 else f"folds {','.join(folds)} (mean of the folds' logits)"
    man = manifest_for(plans.get("dataset_name", "nnunet"),
                       f"imported from nnU-Net v2: {os.path.basename(os.path.normpath(folder))}, {what}",
                       spacing, patch, axes, norm, labels)
    man["nnunet"] = {"folds": folds, "configuration": configuration,
                     "mirror_axes": mirror}
    man["input"]["channels"] = total
    if prev:
        man["cascade"] = {"previous_stage": prev, "image_channels": channels, "labels": fg}
    man["crop_nonzero"] = True   # nnU-Net predicts inside the box of non-zero voxels (crop_to_nonzero)
    if nnunet_resampling(cfg) and not prev and not any(n.get("mask") == "nonzero" for n in norms):
        man["resample"] = "nnunet"   # normalised, then nnU-Net's order-3 / separate-z resampling (as its preprocessing)
    if regions:
        man["regions"] = {"class_order": regions}
    if postprocessing:
        man["postprocess"] = {"nnunet": read_postprocessing(postprocessing, max(labels))}
    net = nets[0] if len(nets) == 1 else Ensemble(nets)
    export(net, patch, out_dir, man)
    if mirror is not None:
        man["tta"] = {"onnx": "model.tta.onnx", "mirror_axes": mirror, "default": True}
        export(Ensemble(nets, mirror), patch, out_dir, man, "model.tta.onnx")
    keep = os.path.join(out_dir, "nnunet")   # segpipe predict copies them to OUT_DIR, as nnUNetv2_predict
    os.makedirs(keep, exist_ok=True)
    for name in ("dataset.json", "plans.json"):
        shutil.copyfile(os.path.join(folder, name), os.path.join(keep, name))
    return net, man


def random_model(arch, out_dir, labels_json=None, seed=0):
    if arch != "totalseg-fast":
        raise ImportError_(f"unknown --arch {arch} (known: totalseg-fast)")
    a = TOTALSEG_FAST
    torch.manual_seed(seed)
    net = UNet(a["arch"], 1, a["classes"], a["features"], a["kernels"], a["strides"], a["n_conv"], a["n_conv_dec"])
    if labels_json:
        labels = {int(k): v for k, v in json.load(open(labels_json)).items()}
    else:
        labels = {}
    labels[0] = "background"
    for i in range(1, a["classes"]):
        labels.setdefault(i, f"class_{i}")
    man = manifest_for("totalseg-fast-random", "TotalSegmentator --fast architecture with RANDOM weights "
                       "(for timing only; its labels are meaningless)", a["spacing"], a["patch"], a["axes"],
                       {"scheme": "ct", **a["norm"]}, labels)
    export(net, a["patch"], out_dir, man)
    return net, man


def add_fp16(out_dir, man, norm_fp16=False):
    import onnx
    from onnx_fp16 import convert
    model = convert(onnx.load(os.path.join(out_dir, "model.onnx")), norm_fp16)
    onnx.save(model, os.path.join(out_dir, "model.fp16.onnx"))
    man["onnx_fp16"] = "model.fp16.onnx"
    if "tta" in man:
        model = convert(onnx.load(os.path.join(out_dir, man["tta"]["onnx"])))
        onnx.save(model, os.path.join(out_dir, "model.tta.fp16.onnx"))
        man["tta"]["onnx_fp16"] = "model.tta.fp16.onnx"
    with open(os.path.join(out_dir, "segpipe.json"), "w") as f:
        json.dump(man, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--fold", "-f", default="0",
                    help="fold(s): 0, a comma list 0,1,2,3,4 (one package predicting the mean of their logits), "
                         "or all (nnU-Net's fold_all)")
    ap.add_argument("--checkpoint", default="checkpoint_final.pth")
    ap.add_argument("--postprocessing", metavar="PKL",
                    help="nnU-Net's postprocessing.pkl (crossval_results_folds_*/postprocessing.pkl): its "
                         "largest-component removals, applied to every prediction")
    ap.add_argument("--configuration")
    ap.add_argument("--random-weights", action="store_true")
    ap.add_argument("--arch", default="totalseg-fast")
    ap.add_argument("--labels", help="label map JSON for --random-weights")
    ap.add_argument("--fp16", action="store_true",
                    help="also write model.fp16.onnx for GPUs (tools/import/onnx_fp16.py; \"onnx_fp16\" in the manifest)")
    ap.add_argument("--split-head", action="store_true",
                    help="split the final 1x1x1 convolution out (tools/import/onnx_split_head.py); CPU packages")
    ap.add_argument("--seed", type=int, default=0, help="seed of --random-weights")
    a = ap.parse_args()
    try:
        if a.random_weights:
            _, man = random_model(a.arch, a.out, a.labels, a.seed)
        elif a.folder:
            _, man = import_folder(a.folder, a.out, a.fold, a.checkpoint, a.configuration, a.postprocessing)
        else:
            ap.error("MODEL_FOLDER or --random-weights is required")
        if a.fp16 and a.split_head:
            ap.error("--fp16 (GPU) and --split-head (CPU) make different packages: import twice")
        if a.fp16:
            add_fp16(a.out, man)
        if a.split_head and (len(man.get("nnunet", {}).get("folds", [0])) > 1 or "tta" in man):
            os.remove(os.path.join(a.out, "segpipe.json"))   # no half-made package
            raise ImportError_("--split-head takes one fold without mirroring (a fold ensemble or a mirrored "
                               "graph has no single final convolution): import one fold of a NoMirroring "
                               "trainer, or leave --split-head out")
        if a.split_head:
            from onnx_split_head import split_package
            split_package(a.out, a.out, concat=True)
    except (ImportError_, KeyError, FileNotFoundError, ValueError, ConvertError, SplitError,
            pickle.UnpicklingError, EOFError) as e:
        print(f"import_nnunet: {e}", file=sys.stderr)
        sys.exit(4)
    print(f"wrote {a.out}/model.onnx and segpipe.json: {man['name']}, {len(man['labels'])} classes, "
          f"patch {man['patch_size']}, spacing {man['spacing']}, axes {man['axes']}")


if __name__ == "__main__":
    main()
