#!/usr/bin/env python3
"""Write a fake TotalSegmentator home: TotalSegmentator's weights layout with
small random-weight nnU-Net networks, for tests and benchmarks.

  tools/dev/fake_totalseg_home.py HOME [--ids 291,292,293,294,295,297,298]
                                       [--features 4,8] [--patch 32] [--seed 0] [--plans nnUNetPlans]
                                       [--folds 0]

For each task id: HOME/nnunet/results/<TotalSegmentator's folder name>/
<trainer>__nnUNetPlans__3d_fullres/{plans.json, dataset.json,
fold_0/checkpoint_final.pth}, names and trainers from TotalSegmentator's task
configuration (tools/import/totalseg_maps.json), dataset.json's labels from
its class maps (the part's map for 291..295, class_map["total"] for 297/298,
a subtask's class map and its "<task>_auxiliary" classes),
plans.json in nnU-Net v2's current layout (PlainConvUNet, instance norm,
LeakyReLU; spacing = the task's resampling), each part with its own CT
intensity statistics. The checkpoint holds the network's weights under
nnU-Net's key names (with its module aliases). Random weights would make one
class win everywhere; the background bias of the head is set so that about
half the voxels of a CT-like input are background and the rest spread over
the classes, so merging parts is exercised. --features 32,64,128,256,320,320
--patch 128 gives TotalSegmentator-sized networks (benchmarks).
"""
import argparse, json, os, sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "import"))
from segpipe_nets import Opts, UNet, nnunet_state_dict  # noqa: E402

MAPS = os.path.join(HERE, "..", "import", "totalseg_maps.json")


def task_of(maps, tid):
    """(trainer, spacing mm [x, y, z], labels {id: name}, nnU-Net configuration)
    of task id tid: a part of `total`, its fast/fastest model, a part of
    headneck_muscles, or a one-model subtask (spacing: its resampling, 1.5 mm
    when it has none)."""
    parts = {"total": ("map_taskid_to_partname_ct", "class_map_5_parts"),
             "total_v3": ("map_taskid_to_partname_ct_v3", "class_map_5_parts_total_v3"),
             "total_mr": ("map_taskid_to_partname_mr", "class_map_parts_mr")}
    for task in ("total", "total_v3", "total_mr", "body", "body_mr"):   # tasks of several modes
        sub = maps["TASK_CONFIGS"][task]["sub_modes"]
        for mode in sub:
            ids = sub[mode]["task_id"]
            if tid in (ids if isinstance(ids, list) else [ids]):
                if isinstance(ids, list):
                    part = maps[parts[task][0]][str(tid)]
                    labels = maps[parts[task][1]][part]
                else:
                    labels = maps["class_map"][task]
                return (sub[mode]["trainer"], [float(sub[mode]["resample"])] * 3,
                        {int(k): v for k, v in labels.items()}, "3d_fullres")
    for task, cfg in maps["TASK_CONFIGS"].items():   # a subtask
        ids = cfg.get("task_id")
        if "sub_modes" in cfg or tid not in (ids if isinstance(ids, list) else [ids]):
            continue
        r = cfg.get("resample") or 1.5
        spacing = [float(x) for x in r] if isinstance(r, list) else [float(r)] * 3
        model = cfg.get("model", "3d_fullres")
        if isinstance(ids, list):   # a part of a multi-model subtask (headneck_muscles)
            part = maps["map_taskid_to_partname_" + task][str(tid)]
            labels = maps["class_map_parts_" + task][part]
            return cfg["trainer"], spacing, {int(k): v for k, v in labels.items()}, model
        # the network also has the task's auxiliary classes (TotalSegmentator trains with them and
        # removes them after prediction: remove_auxiliary_labels)
        labels = {**maps["class_map"][task], **maps["class_map"].get(task + "_auxiliary", {})}
        return cfg["trainer"], spacing, {int(k): v for k, v in labels.items()}, model
    raise SystemExit(f"task id {tid} is not a TotalSegmentator task this script knows")


def make_net(n_classes, feats, patch, seed, arch="PlainConvUNet"):
    torch.manual_seed(seed)
    n = len(feats)
    kernels = [[3, 3, 3]] * n
    strides = [[1, 1, 1]] + [[2, 2, 2]] * (n - 1)
    n_conv, n_dec = [1] * n if feats[0] < 16 else [2] * n, [1] * (n - 1) if feats[0] < 16 else [2] * (n - 1)
    net = UNet(arch, 1, n_classes, feats, kernels, strides, n_conv, n_dec, opts=Opts(conv_bias=True),
               stem_channels=feats[0] if arch != "PlainConvUNet" else None)
    net.eval()
    # calibrate the background bias: about half the voxels of a smooth CT-like input background
    g = torch.Generator().manual_seed(seed + 1000)
    x = torch.nn.functional.avg_pool3d(torch.randn(1, 1, patch + 8, patch + 8, patch + 8, generator=g) * 3,
                                       9, 1, 0)
    head = net.decoder.seg_layers[-1]
    with torch.no_grad():
        y = net(x)[0]
        margin = (y[1:].max(0).values - y[0]).flatten()
        head.bias[0] += float(margin.median())
    return net, dict(kernels=kernels, strides=strides, n_conv=n_conv, n_dec=n_dec)


def write_model(root, folder, trainer, tid, labels, spacing, feats, patch, seed, model="3d_fullres",
                plans_name="nnUNetPlans", folds=(0,)):
    d = os.path.join(root, folder, f"{trainer}__{plans_name}__{model}")
    os.makedirs(d, exist_ok=True)
    n_classes = max(labels) + 1
    # nnU-Net's residual encoder plans (nnUNetResEncUNet{M,L,XL}Plans*) build a ResidualEncoderUNet
    res = plans_name.startswith("nnUNetResEncUNet")
    net, a = make_net(n_classes, feats, patch, seed, "ResidualEncoderUNet" if res else "PlainConvUNet")
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet."
                                  + ("ResidualEncoderUNet" if res else "PlainConvUNet"),
            "arch_kwargs": {"n_stages": len(feats), "features_per_stage": feats,
                            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": a["kernels"],
                            "strides": a["strides"], ("n_blocks_per_stage" if res else "n_conv_per_stage"): a["n_conv"],
                            "n_conv_per_stage_decoder": a["n_dec"], "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    cfg = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
           "batch_size": 2, "patch_size": [patch] * 3, "spacing": spacing,
           "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
           "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
           "resampling_fn_probabilities": "resample_data_or_seg_to_shape",   # nnU-Net's defaults (its predictor reads them)
           "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
           "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
           "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
           "batch_dice": False, "architecture": arch}
    rng = np.random.default_rng(tid)
    stats = {"max": 3000.0, "mean": float(rng.uniform(-100, 300)), "median": 50.0, "min": -1024.0,
             "percentile_00_5": float(rng.uniform(-1024, -900)), "percentile_99_5": float(rng.uniform(900, 1600)),
             "std": float(rng.uniform(250, 500))}
    if res:
        arch["arch_kwargs"]["block"] = "dynamic_network_architectures.building_blocks.residual.BasicBlockD"
        arch["arch_kwargs"]["stem_channels"] = feats[0]
    plans = {"dataset_name": folder, "plans_name": plans_name, "original_median_spacing_after_transp": spacing,
             "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "configurations": {model: cfg},
             "foreground_intensity_properties_per_channel": {"0": stats}}
    json.dump(plans, open(os.path.join(d, "plans.json"), "w"), indent=1)
    ds_labels = {"background": 0, **{v: k for k, v in sorted(labels.items())}}
    json.dump({"channel_names": {"0": "CT"}, "labels": ds_labels, "numTraining": 1, "file_ending": ".nii.gz"},
              open(os.path.join(d, "dataset.json"), "w"), indent=1)
    # nnU-Net's checkpoint: the axes its trainer allows mirroring over (NoMirroring trainers: None;
    # TotalSegmentator's onlyMirror01: 0 and 1)
    mirror = None if "NoMirroring" in trainer else (0, 1) if "onlyMirror01" in trainer else (0, 1, 2)
    for f in folds:   # fold 0 the network returned; each further fold its own weights
        fnet = net if f == folds[0] else make_net(n_classes, feats, patch, seed + 1000 * f,
                                                   "ResidualEncoderUNet" if res else "PlainConvUNet")[0]
        os.makedirs(os.path.join(d, f"fold_{f}"), exist_ok=True)
        torch.save({"network_weights": nnunet_state_dict(fnet), "trainer_name": trainer, "current_epoch": 1,
                    "inference_allowed_mirroring_axes": mirror,
                    "init_args": {"configuration": model, "fold": f}},
                   os.path.join(d, f"fold_{f}", "checkpoint_final.pth"))
    return d, net


def make_home(home, ids=(291, 292, 293, 294, 295, 297, 298), feats=(4, 8), patch=32, seed=0, plans="nnUNetPlans",
              folds=(0,)):
    """Returns {task id: (model folder, PyTorch network)}."""
    maps = json.load(open(MAPS))
    root = os.path.join(home, "nnunet", "results")
    out = {}
    for tid in ids:
        trainer, spacing, labels, model = task_of(maps, tid)
        folder = maps["TASK_ID_WEIGHTS_CONFIGS"][str(tid)]["foldername"]
        out[tid] = write_model(root, folder, trainer, tid, labels, spacing, list(feats), patch, seed + tid, model,
                               plans, folds)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("home")
    ap.add_argument("--ids", default="291,292,293,294,295,297,298")
    ap.add_argument("--features", default="4,8")
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plans", default="nnUNetPlans",
                    help="the plans name (nnUNetResEncUNetLPlans_8: total_v3's small models, residual encoders)")
    ap.add_argument("--folds", default="0", help="the folds written (fold_N folders), e.g. 0,1,2,3,4")
    a = ap.parse_args()
    made = make_home(a.home, [int(x) for x in a.ids.split(",")], [int(x) for x in a.features.split(",")],
                     a.patch, a.seed, a.plans, [int(x) for x in a.folds.split(",")])
    for tid, (d, _) in made.items():
        print(f"{tid}: {d}")


if __name__ == "__main__":
    main()
