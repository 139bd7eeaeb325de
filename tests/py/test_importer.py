"""tools/import/import_nnunet.py on nnU-Net v2 model folders this test builds itself
(plans.json + dataset.json in nnU-Net's schema, a checkpoint with random
weights in nnU-Net's layout, aliases included), for PlainConvUNet and
ResidualEncoderUNet: the ONNX output equals the PyTorch forward (max abs
logit difference <= 1e-3, through segpipe's own runtime), and `segpipe ct`
gives the labels of a PyTorch implementation of nnU-Net's predictor."""
import ctypes as C
import json, os, sys
import numpy as np
import nibabel as nib
import torch
from scipy import ndimage
import sp

sys.path.insert(0, os.path.join(sp.ROOT, "tools", "import"))
from segpipe_nets import Opts, UNet, nnunet_state_dict  # noqa: E402

IMPORTER = os.path.join(sp.ROOT, "tools", "import", "import_nnunet.py")
LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney": 3}


def make_folder(tmp, arch, reader, transpose, old_style=False, variant=None):
    """variant: {"kwargs": extra arch_kwargs for plans.json, "net": extra UNet
    arguments, "kernels", "strides", "blocks"} (the ResEnc presets' layouts)."""
    v = variant or {}
    feats, patch, spacing = [4, 8, 16], [16, 16, 8], [2.0, 1.5, 3.0]
    kernels = v.get("kernels", [[3, 3, 3], [3, 3, 3], [3, 3, 1]])
    strides = v.get("strides", [[1, 1, 1], [2, 2, 2], [2, 2, 1]])
    blocks = v.get("blocks", [2, 2, 1])
    torch.manual_seed(1)
    net = UNet(arch, 1, len(LABELS), feats, kernels, strides, blocks, [1, 1],
               **v.get("net", {"opts": Opts(conv_bias=True)}))
    with torch.no_grad():   # random affine norms and statistics, so the check sees them
        for m in net.modules():
            if isinstance(m, (torch.nn.InstanceNorm3d, torch.nn.BatchNorm3d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    folder = os.path.join(tmp, f"Dataset999_{arch}{v.get('name', '')}", "nnUNetTrainer__nnUNetPlans__3d_fullres")
    os.makedirs(os.path.join(folder, "fold_0"))
    if old_style:
        cfg = {"UNet_class_name": arch, "UNet_base_num_features": 4, "unet_max_num_features": 16,
               "conv_kernel_sizes": kernels, "pool_op_kernel_sizes": strides,
               "n_conv_per_stage_encoder": [2, 2, 1], "n_conv_per_stage_decoder": [1, 1]}
    else:
        key = "n_conv_per_stage" if arch == "PlainConvUNet" else "n_blocks_per_stage"
        cfg = {"architecture": {"network_class_name": f"dynamic_network_architectures.architectures.unet.{arch}",
                                "arch_kwargs": {"n_stages": 3, "features_per_stage": feats,
                                                "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": kernels,
                                                "strides": strides, key: blocks,
                                                "n_conv_per_stage_decoder": [1, 1], "conv_bias": True,
                                                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                                                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                                                "dropout_op": None, "dropout_op_kwargs": None,
                                                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
                                                **v.get("kwargs", {})},
                                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}
    cfg.update({"data_identifier": "x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
                "patch_size": patch, "spacing": spacing, "normalization_schemes": ["CTNormalization"],
                "use_mask_for_norm": [False]})
    plans = {"dataset_name": "Dataset999_Test", "plans_name": "nnUNetPlans", "image_reader_writer": reader,
             "transpose_forward": transpose, "transpose_backward": list(np.argsort(transpose).tolist()),
             "configurations": {"3d_fullres": cfg},
             "foreground_intensity_properties_per_channel": {"0": {
                 "max": 2000.0, "mean": 50.0, "median": 40.0, "min": -1000.0,
                 "percentile_00_5": -900.0, "percentile_99_5": 1200.0, "std": 300.0}}}
    json.dump(plans, open(os.path.join(folder, "plans.json"), "w"))
    json.dump({"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": 1, "file_ending": ".nii.gz"},
              open(os.path.join(folder, "dataset.json"), "w"))
    torch.save({"network_weights": nnunet_state_dict(net), "trainer_name": "nnUNetTrainer",
                "current_epoch": 1, "init_args": {}}, os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    net.eval()
    return folder, net, cfg


def import_(folder, out):
    p = sp.tool(IMPORTER, folder, "-o", out)
    assert p.returncode == 0, p.stderr
    return json.load(open(os.path.join(out, "segpipe.json")))


class Tensor(C.Structure):
    _fields_ = [("dtype", C.c_int), ("rank", C.c_int), ("shape", C.c_int64 * 8), ("data", C.c_void_p)]


def onnx_forward(path, x):
    """run model at path on x (numpy float32) through libsegpipe's runtime"""
    L = sp.lib()
    rt, m = C.c_void_p(), C.c_void_p()
    assert L.sp_runtime_create(None, C.byref(rt)) == 0
    assert L.sp_model_load(rt, path.encode(), C.byref(m)) == 0, L.sp_last_error()
    x = np.ascontiguousarray(x, np.float32)
    ti = Tensor(1, x.ndim, (C.c_int64 * 8)(*x.shape), x.ctypes.data)
    to = Tensor()
    assert L.sp_model_run(m, C.byref(ti), 1, C.byref(to), 1) == 0, L.sp_last_error()
    shape = tuple(to.shape[i] for i in range(to.rank))
    y = np.ctypeslib.as_array(C.cast(to.data, C.POINTER(C.c_float)), shape=shape).copy()
    L.sp_tensor_free_data(C.byref(to))
    L.sp_model_release(m)
    L.sp_runtime_free(rt)
    return y


def torch_predict(net, vol, patch, step=0.5):
    """nnU-Net's sliding-window predictor semantics in PyTorch (float32)."""
    shape = np.array(vol.shape)
    new = np.maximum(shape, patch)
    lo = (new - shape) // 2
    x = np.pad(vol, [(l, n - s - l) for l, n, s in zip(lo, new, shape)]).astype(np.float32)
    steps = []
    for i, t in zip(new, patch):
        n = int(np.ceil((i - t) / (t * step))) + 1
        act = (i - t) / (n - 1) if n > 1 else 0
        steps.append([int(np.round(act * k)) for k in range(n)])
    tmp = np.zeros(patch)
    tmp[tuple(p // 2 for p in patch)] = 1
    g = ndimage.gaussian_filter(tmp, [p / 8 for p in patch], 0, mode="constant", cval=0)
    g = g / (g.max() / 10)
    g[g == 0] = g[g != 0].min()
    g = torch.from_numpy(g.astype(np.float32))
    acc = torch.zeros((len(LABELS), *new))
    cnt = torch.zeros(tuple(new))
    xt = torch.from_numpy(x)
    with torch.no_grad():
        for a in steps[0]:
            for b in steps[1]:
                for c in steps[2]:
                    sl = (slice(a, a + patch[0]), slice(b, b + patch[1]), slice(c, c + patch[2]))
                    acc[(slice(None),) + sl] += net(xt[sl][None, None])[0] * g
                    cnt[sl] += g
    acc = (acc / cnt)[:, lo[0]:lo[0] + shape[0], lo[1]:lo[1] + shape[1], lo[2]:lo[2] + shape[2]].numpy()
    s = np.sort(acc, 0)
    return acc.argmax(0), s[-1] - s[-2]


def check_arch(tmp, arch, reader, transpose, want_axes, old_style=False, variant=None):
    folder, net, cfg = make_folder(tmp, arch, reader, transpose, old_style, variant)
    # what nnU-Net's readers hand the network, from their code, not from the
    # manifest: (k, j, i) for SimpleITKIO and both NibabelIO readers (they
    # transpose nibabel's (i, j, k) by (2, 1, 0)), then transpose_forward
    nn_axes = [[2, 1, 0][t] for t in transpose]
    out = os.path.join(tmp, "pkg")
    man = import_(folder, out)
    assert man["axes"] == want_axes and man["patch_size"] == cfg["patch_size"]
    assert man["spacing"] == cfg["spacing"]
    assert man["normalization"] == {"scheme": "ct", "lo": -900.0, "hi": 1200.0, "mean": 50.0, "std": 300.0}
    assert man["labels"] == {"0": "background", "1": "liver", "2": "spleen", "3": "kidney"}
    assert sp.run("model", "check", out).returncode == 0
    # ONNX == PyTorch on the same tiles
    x = np.random.default_rng(2).normal(0, 1, (2, 1, *cfg["patch_size"])).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    got = onnx_forward(os.path.join(out, "model.onnx"), x)
    assert got.shape == ref.shape and np.abs(got - ref).max() <= 1e-3
    # segpipe ct == PyTorch predictor on a small volume (no resampling: the
    # file's zooms are the model spacing along the mapped axes)
    zooms = [0.0] * 3
    for d, a in enumerate(nn_axes):
        zooms[a] = man["spacing"][d]
    rng = np.random.default_rng(3)
    ct = ndimage.gaussian_filter(rng.normal(0, 600, (23, 19, 13)), 1.2).astype(np.int16)
    p_in = os.path.join(tmp, "ct.nii.gz")
    nib.save(nib.Nifti1Image(ct, np.diag(zooms + [1.0])), p_in)
    p_out = os.path.join(tmp, "seg.nii.gz")
    sp.run("ct", p_in, "-o", p_out, "--model", out, "-q", "--no-passport", check=True)
    got = np.asanyarray(nib.load(p_out).dataobj)
    n = man["normalization"]
    vol = (np.clip(ct.astype(np.float64), n["lo"], n["hi"]) - n["mean"]) / n["std"]
    lab, margin = torch_predict(net, vol.transpose(nn_axes), cfg["patch_size"])
    inv = np.argsort(nn_axes)
    lab, margin = lab.transpose(inv), margin.transpose(inv)
    sure = margin > 1e-4
    assert sure.mean() > 0.99 and np.array_equal(got[sure], lab[sure])
    assert len(np.unique(got)) > 1 or (variant or {}).get("one_label_ok")


def test_import_plain_conv_unet(tmp):
    check_arch(tmp, "PlainConvUNet", "SimpleITKIO", [0, 1, 2], [2, 1, 0])


def test_import_residual_encoder_unet(tmp):
    check_arch(tmp, "ResidualEncoderUNet", "NibabelIOWithReorient", [2, 0, 1], [0, 2, 1])


def test_import_old_style_plans(tmp):
    check_arch(tmp, "PlainConvUNet", "NibabelIO", [1, 0, 2], [1, 2, 0], old_style=True)


def test_import_errors(tmp):
    folder, _, _ = make_folder(tmp, "PlainConvUNet", "SimpleITKIO", [0, 1, 2])
    ck = torch.load(os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    ck["network_weights"] = {k: v for k, v in ck["network_weights"].items() if "seg_layers" not in k}
    torch.save(ck, os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    p = sp.tool(IMPORTER, folder, "-o", os.path.join(tmp, "x"))
    assert p.returncode == 4 and "missing from the checkpoint" in p.stderr and "seg_layers" in p.stderr
    p = sp.tool(IMPORTER, os.path.join(tmp, "nothing"), "-o", os.path.join(tmp, "x"))
    assert p.returncode == 4 and "dataset.json" in p.stderr


# The layouts nnU-Net's planners write (ResEnc M/L/XL presets: conv_bias true,
# BasicBlockD, first stage kernel 1x3x3 and stride 1x2x2 on anisotropic data,
# n_blocks_per_stage growing), BottleneckD with stem and bottleneck widths,
# conv_bias false, batch norm and ReLU.
RESENC_M = {"name": "M", "kernels": [[1, 3, 3], [3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
            "blocks": [1, 2, 2], "kwargs": {"conv_bias": True,
            "block": "dynamic_network_architectures.building_blocks.residual.BasicBlockD"},
            "net": {"opts": Opts(conv_bias=True)}}
BOTTLENECK = {"name": "B", "blocks": [1, 2, 1], "kwargs": {
    "conv_bias": False, "block": "dynamic_network_architectures.building_blocks.residual.BottleneckD",
    "bottleneck_channels": [2, 4, 8], "stem_channels": 6},
    "net": {"opts": Opts(conv_bias=False), "block": "BottleneckD", "bottleneck_channels": [2, 4, 8],
            "stem_channels": 6}}
PLAIN_BN_RELU = {"name": "P", "kwargs": {"conv_bias": False, "norm_op": "torch.nn.BatchNorm3d",
                 "norm_op_kwargs": {"eps": 1e-3, "affine": True}, "nonlin": "torch.nn.ReLU", "nonlin_kwargs": {}},
                 "net": {"opts": Opts(conv_bias=False, norm="batch", eps=1e-3, slope=0)},
                 "one_label_ok": True}   # random batch-norm + ReLU nets often pick one class everywhere


def test_resenc_module_layout_matches_upstream(tmp):
    """Key names and biases as dynamic_network_architectures builds them
    (read from its residual.py / unet_decoder.py): the 1x1 skip projection
    never has a bias; conv and transposed-conv biases follow conv_bias;
    the segmentation heads always have one."""
    k = set(UNet("ResidualEncoderUNet", 1, 4, [4, 8, 16], RESENC_M["kernels"], RESENC_M["strides"], [1, 2, 2],
                 [1, 1], opts=Opts(conv_bias=True)).state_dict())
    assert "encoder.stem.convs.0.conv.bias" in k and "encoder.stages.0.blocks.0.conv1.conv.bias" in k
    assert "encoder.stages.1.blocks.0.skip.1.conv.weight" in k          # avgpool, then 1x1 conv
    assert "encoder.stages.1.blocks.0.skip.1.conv.bias" not in k
    assert "encoder.stages.0.blocks.0.skip.0.conv.weight" not in k       # same shape: identity
    assert "decoder.transpconvs.0.bias" in k and "decoder.seg_layers.1.bias" in k
    k = set(UNet("ResidualEncoderUNet", 1, 4, [4, 8, 16], RESENC_M["kernels"], RESENC_M["strides"], [1, 2, 2],
                 [1, 1], **BOTTLENECK["net"]).state_dict())
    assert "encoder.stages.0.blocks.0.conv3.conv.weight" in k and "decoder.transpconvs.0.bias" not in k
    assert "encoder.stem.convs.0.conv.weight" in k and "encoder.stages.0.blocks.0.conv1.conv.bias" not in k
    assert "encoder.stages.0.blocks.0.skip.0.conv.weight" in k           # stem 6 -> 4 channels
    assert "decoder.seg_layers.0.bias" in k


def test_import_resenc_m_preset(tmp):
    check_arch(tmp, "ResidualEncoderUNet", "SimpleITKIO", [0, 1, 2], [2, 1, 0], variant=RESENC_M)


def test_import_resenc_bottleneck_no_bias(tmp):
    check_arch(tmp, "ResidualEncoderUNet", "NibabelIO", [0, 1, 2], [2, 1, 0], variant=BOTTLENECK)


def test_import_plain_batchnorm_relu(tmp):
    check_arch(tmp, "PlainConvUNet", "SimpleITKIO", [0, 1, 2], [2, 1, 0], variant=PLAIN_BN_RELU)


def test_import_names_the_mismatch(tmp):
    """A ResEnc checkpoint whose plans say conv_bias false while the weights
    carry biases: refused, naming the keys and the option."""
    v = dict(RESENC_M, kwargs={**RESENC_M["kwargs"], "conv_bias": False})
    folder, _, _ = make_folder(tmp, "ResidualEncoderUNet", "SimpleITKIO", [0, 1, 2], variant=v)
    p = sp.tool(IMPORTER, folder, "-o", os.path.join(tmp, "x"))
    assert p.returncode == 4 and "unexpected" in p.stderr and "conv_bias" in p.stderr, p.stderr
