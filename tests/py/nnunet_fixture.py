"""Small nnU-Net v2 trained-model folders with seeded random weights, shared by
tools/dev/make_nnunet_refs.py (which runs nnU-Net's real predictor on them
and stores its outputs in tests/ref/nnunet/) and tests/py/test_nnunet.py
(which rebuilds the same folders, imports them with segpipe and compares).

Weights come from numpy's seeded generator tensor by tensor, so they are the
same whatever the PyTorch version; the checkpoint carries nnU-Net's key
names with its module aliases (`all_modules`, `decoder.encoder.`), so the
real dynamic_network_architectures network loads it strictly.
"""
import json, os, sys
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tools", "import"))

FEATS, KERNELS, STRIDES = [4, 8, 16], [[3, 3, 3], [3, 3, 3], [3, 3, 1]], [[1, 1, 1], [2, 2, 2], [2, 2, 1]]
PATCH, SPACING = [16, 16, 8], [3.0, 1.5, 2.0]   # network (SimpleITK) order: z, y, x
PROB_SLAB = (12, 14)                             # nibabel k slices whose probabilities are stored
SHAPE = (26, 38, 46)                             # case shape in network order (nibabel's is reversed)
CT_PROPS = {"max": 2000.0, "mean": 50.0, "median": 40.0, "min": -1000.0,
            "percentile_00_5": -900.0, "percentile_99_5": 1200.0, "std": 300.0}

# name -> what the fixture is: folds, the first checkpoint's mirroring axes,
# channels with their normalisation, labels
CASES = {
    "ensemble2": dict(folds=["0", "1"], mirror=None, schemes=["CTNormalization"],
                      labels={"background": 0, "liver": 1, "spleen": 2, "kidney": 3}),
    "mirror": dict(folds=["0"], mirror=[0, 1, 2], schemes=["CTNormalization"],
                   labels={"background": 0, "liver": 1, "spleen": 2, "kidney": 3}),
    "ensemble2_mirror": dict(folds=["0", "all"], mirror=[1, 2], schemes=["CTNormalization"],
                             labels={"background": 0, "liver": 1, "spleen": 2, "kidney": 3}),
    # an MRI-like model of three sequences, each normalised its own way
    "mr3": dict(folds=["0"], mirror=[0, 1, 2], schemes=["ZScoreNormalization", "RescaleTo01Normalization",
                                                       "NoNormalization"],
                labels={"background": 0, "edema": 1, "tumor": 2}),
    # BraTS-like: two sequences, z-score over the non-zero mask, zero borders
    # (nnU-Net crops to the non-zero box) and zero holes inside (filled in its mask)
    "brain2": dict(folds=["0"], mirror=None, schemes=["ZScoreNormalization", "ZScoreNormalization"],
                   mask=[True, True], labels={"background": 0, "edema": 1, "tumor": 2}, zero_border=True),
    # region-based (BraTS's whole tumour / core / enhancing): sigmoid per region,
    # regions_class_order, mirroring, on the brain-like case
    # a cascade: 3d_lowres (one CT channel), then 3d_cascade_fullres taking the image
    # and the lowres labels one-hot (1 + 3 input channels); same spacing, no resampling
    "cascade": dict(folds=["0"], mirror=None, schemes=["CTNormalization"],
                    labels={"background": 0, "liver": 1, "spleen": 2, "kidney": 3}),
    # a 2D configuration: every slice (along the first SimpleITK axis) through a 2D U-Net
    "slices2d": dict(folds=["0"], mirror=[0, 1], schemes=["CTNormalization"], config="2d",
                     labels={"background": 0, "liver": 1, "spleen": 2, "kidney": 3}),
    "regions": dict(folds=["0"], mirror=[0, 1, 2], schemes=["ZScoreNormalization", "ZScoreNormalization"],
                    mask=[True, True], zero_border=True, order=[1, 2, 3],
                    labels={"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing": [3]}),
}


# postprocessing.pkl of fixture ensemble2: remove_all_but_largest_component_from_segmentation's
# labels_or_regions, in order (the foreground as a list, a label, a region)
POSTPROCESSING = [[1, 2, 3], 1, (2, 3)]
PP_FN = ("nnunetv2.postprocessing.remove_connected_components", "remove_all_but_largest_component_from_segmentation")


def write_postprocessing(path, fn=None):
    """postprocessing.pkl as nnU-Net's determine_postprocessing saves it:
    (functions, kwargs) with the function pickled by reference. fn: nnU-Net's
    own function when it is importable, else a stand-in under its name (in
    modules that exist only while pickling)"""
    import pickle, types
    made = []
    if fn is None:
        mod, name = PP_FN
        parts = mod.split(".")
        for i in range(len(parts)):
            m = ".".join(parts[:i + 1])
            if m not in sys.modules:
                sys.modules[m] = types.ModuleType(m)
                made.append(m)

        def fn(segmentation, labels_or_regions, background_label=0):
            raise NotImplementedError
        fn.__module__, fn.__name__, fn.__qualname__ = mod, name, name
        setattr(sys.modules[mod], name, fn)
    try:
        with open(path, "wb") as f:
            pickle.dump(([fn] * len(POSTPROCESSING), [{"labels_or_regions": x} for x in POSTPROCESSING]), f)
    finally:
        for m in made:
            del sys.modules[m]


def seeds(name, fold):
    return sum(map(ord, name)) * 100 + (99 if fold == "all" else int(fold))


KERNELS_2D, STRIDES_2D, PATCH_2D = [[3, 3], [3, 3], [3, 3]], [[1, 1], [2, 2], [2, 2]], [16, 16]


def state_dict(seed, channels, classes, dim=3):
    """nnU-Net-layout weights for the fixture network, from numpy's seed"""
    import torch
    from segpipe_nets import Opts, UNet
    k, s = (KERNELS, STRIDES) if dim == 3 else (KERNELS_2D, STRIDES_2D)
    net = UNet("PlainConvUNet", channels, classes, FEATS, k, s, [2, 2, 1], [1, 1], dim=dim,
               opts=Opts(conv_bias=True))
    rng = np.random.default_rng(seed)
    sd = {}
    for k, v in net.state_dict().items():
        if k.endswith("weight") and v.ndim > 1:
            fan = int(np.prod(v.shape[1:])) if "transpconvs" not in k else int(v.shape[0])
            a = rng.normal(0, np.sqrt(2.0 / fan), v.shape)
        elif ".norm.weight" in k:
            a = rng.uniform(0.5, 1.5, v.shape)
        else:
            a = rng.uniform(-0.3, 0.3, v.shape)
        t = torch.from_numpy(a.astype(np.float32))
        for kk in [k] + (["decoder." + k] if k.startswith("encoder.") else []):
            sd[kk] = t.clone()
            for x, y in ((".conv.", ".all_modules.0."), (".norm.", ".all_modules.1.")):
                if x in kk:
                    sd[kk.replace(x, y)] = t.clone()
    return sd


def plans_and_dataset(name):
    c = CASES[name]
    n = len(c["schemes"])
    cfg = {"data_identifier": "x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
           "patch_size": PATCH, "median_image_size_in_voxels": list(SHAPE), "spacing": SPACING,
           "normalization_schemes": c["schemes"], "use_mask_for_norm": c.get("mask", [False] * n),
           "resampling_fn_data": "resample_data_or_seg_to_shape",
           "resampling_fn_seg": "resample_data_or_seg_to_shape",
           "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
           "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
           "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
           "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                  "force_separate_z": None},
           "batch_dice": False,
           "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                            "arch_kwargs": {"n_stages": 3, "features_per_stage": FEATS,
                                            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": KERNELS,
                                            "strides": STRIDES, "n_conv_per_stage": [2, 2, 1],
                                            "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
                                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                                            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                                            "dropout_op": None, "dropout_op_kwargs": None,
                                            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
                            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}
    if c.get("config") == "2d":   # nnU-Net's 2d configuration: in-plane spacing and patch, Conv2d
        ak = cfg["architecture"]["arch_kwargs"]
        ak.update(conv_op="torch.nn.modules.conv.Conv2d", kernel_sizes=KERNELS_2D, strides=STRIDES_2D,
                  norm_op="torch.nn.modules.instancenorm.InstanceNorm2d")
        cfg.update(patch_size=PATCH_2D, spacing=SPACING[1:], median_image_size_in_voxels=list(SHAPE[1:]))
    plans = {"dataset_name": f"Dataset990_{name}", "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": SPACING, "original_median_shape_after_transp": list(SHAPE),
             "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "configurations": {c.get("config", "3d_fullres"): cfg}, "experiment_planner_used": "ExperimentPlanner",
             "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {str(i): CT_PROPS for i in range(n)}}
    ds = {"channel_names": {str(i): ("CT" if s == "CTNormalization" else f"MR{i}") for i, s in
                            enumerate(c["schemes"])},
          "labels": c["labels"], "numTraining": 1, "file_ending": ".nii.gz"}
    if "order" in c:
        ds["regions_class_order"] = c["order"]
    return plans, ds


def num_classes(name):
    """the network's output channels: classes, or regions (nnU-Net's heads)"""
    if "order" in CASES[name]:
        return len(CASES[name]["order"])
    return max(v if isinstance(v, int) else max(v) for v in CASES[name]["labels"].values()) + 1


def make_folder(root, name):
    """the trained-model folder of fixture `name` under root; returns its path"""
    import torch
    c = CASES[name]
    config = c.get("config", "3d_fullres")
    folder = os.path.join(root, f"Dataset990_{name}", f"nnUNetTrainer__nnUNetPlans__{config}")
    plans, ds = plans_and_dataset(name)
    for f in c["folds"]:
        os.makedirs(os.path.join(folder, f"fold_{f}"), exist_ok=True)
        ck = {"network_weights": state_dict(seeds(name, f), len(c["schemes"]), num_classes(name),
                                            2 if config == "2d" else 3),
              "trainer_name": "nnUNetTrainer", "current_epoch": 1,
              "init_args": {"configuration": config, "fold": f}}
        if c["mirror"] is not None:
            ck["inference_allowed_mirroring_axes"] = tuple(c["mirror"])
        torch.save(ck, os.path.join(folder, f"fold_{f}", "checkpoint_final.pth"))
    json.dump(plans, open(os.path.join(folder, "plans.json"), "w"), indent=1)
    json.dump(ds, open(os.path.join(folder, "dataset.json"), "w"), indent=1)
    return folder


def make_cascade(root):
    """the cascade fixture's two trained-model folders (3d_lowres,
    3d_cascade_fullres) sharing one plans.json; returns their paths"""
    import torch
    plans, ds = plans_and_dataset("cascade")
    cfgs = plans["configurations"]
    cfgs["3d_lowres"] = json.loads(json.dumps(cfgs["3d_fullres"]))
    cfgs["3d_fullres"]["next_stage"] = "3d_cascade_fullres"
    cfgs["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    out = []
    for cfg, chans in (("3d_lowres", 1), ("3d_cascade_fullres", 4)):
        folder = os.path.join(root, "Dataset990_cascade", f"nnUNetTrainer__nnUNetPlans__{cfg}")
        os.makedirs(os.path.join(folder, "fold_0"), exist_ok=True)
        ck = {"network_weights": state_dict(seeds("cascade", "0") + chans, chans, 4),
              "trainer_name": "nnUNetTrainer", "current_epoch": 1, "init_args": {"configuration": cfg, "fold": "0"}}
        torch.save(ck, os.path.join(folder, "fold_0", "checkpoint_final.pth"))
        json.dump(plans, open(os.path.join(folder, "plans.json"), "w"), indent=1)
        json.dump(ds, open(os.path.join(folder, "dataset.json"), "w"), indent=1)
        out.append(folder)
    return out


def make_case(name):
    """the case's channels as nibabel arrays (i, j, k) and its affine: a
    smooth CT-like volume per channel, voxel sizes the model's spacing (no
    resampling), axes RAS (segpipe's canonical grid is the file's)"""
    from scipy import ndimage
    rng = np.random.default_rng(seeds(name, "0") + 7)
    chans = []
    for s in CASES[name]["schemes"]:
        if s == "CTNormalization":
            v = ndimage.gaussian_filter(rng.normal(0, 600, SHAPE[::-1]), 1.2) + 40
            chans.append(np.round(v).astype(np.int16))
        else:   # an MR-like sequence: positive, never 0 (nnU-Net's crop to non-zero keeps all)
            scale = 1.0 if s == "NoNormalization" else 300.0
            v = ndimage.gaussian_filter(rng.normal(0, 1, SHAPE[::-1]), 1.5) * 4 + 3
            chans.append((np.abs(v) + 0.5).astype(np.float32) * scale)
    if CASES[name].get("zero_border"):   # a "brain" box off-centre, a hole inside, zeros around
        keep = np.zeros(SHAPE[::-1], bool)
        keep[5:40, 3:30, 2:22] = True
        keep[20:23, 12:15, 10:12] = False
        chans = [np.where(keep, c, 0).astype(c.dtype) for c in chans]
    affine = np.diag(list(SPACING[::-1]) + [1.0])
    return chans, affine
