"""PlainConvUNet and ResidualEncoderUNet in plain PyTorch.

Written from the architecture described by nnU-Net v2's plans files
(`architecture.arch_kwargs`) and the module layout of its
dynamic_network_architectures package, so that the state-dict keys of a
checkpoint (`network_weights`) load into these modules:

  encoder.stages.S.0.convs.I.{conv,norm}.*         (PlainConvUNet)
  encoder.stem.convs.0.{conv,norm}.*                (ResidualEncoderUNet)
  encoder.stages.S.blocks.B.{conv1,conv2}.{conv,norm}.*, .skip.*
  decoder.transpconvs.S.*, decoder.stages.S.convs.I.{conv,norm}.*,
  decoder.seg_layers.S.*

Each conv block is conv -> instance norm (affine, eps 1e-5) -> leaky ReLU
(slope 0.01). Deep supervision is off: forward() returns the full-resolution
head only. Used by the demo-model trainer and the nnU-Net importer.
"""
import torch
from torch import nn


def _conv(dim):
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]


def _tconv(dim):
    return {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dim]


def _inorm(dim):
    return {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dim]


def _tuple(v, dim):
    return tuple(v) if isinstance(v, (list, tuple)) else (v,) * dim


class ConvNormAct(nn.Module):
    def __init__(self, dim, cin, cout, kernel, stride, act=True):
        super().__init__()
        kernel = _tuple(kernel, dim)
        self.conv = _conv(dim)(cin, cout, kernel, _tuple(stride, dim),
                               padding=[(k - 1) // 2 for k in kernel], bias=True)
        self.norm = _inorm(dim)(cout, eps=1e-5, affine=True)
        self.nonlin = nn.LeakyReLU(0.01, inplace=True) if act else nn.Identity()

    def forward(self, x):
        return self.nonlin(self.norm(self.conv(x)))


class StackedConvBlocks(nn.Module):
    def __init__(self, n, dim, cin, cout, kernel, first_stride):
        super().__init__()
        self.convs = nn.Sequential(
            ConvNormAct(dim, cin, cout, kernel, first_stride),
            *[ConvNormAct(dim, cout, cout, kernel, 1) for _ in range(n - 1)])

    def forward(self, x):
        return self.convs(x)


class PlainConvEncoder(nn.Module):
    def __init__(self, dim, cin, features, kernels, strides, n_conv):
        super().__init__()
        stages = []
        for s, f in enumerate(features):
            stages.append(nn.Sequential(
                StackedConvBlocks(n_conv[s], dim, cin, f, kernels[s], strides[s])))
            cin = f
        self.stages = nn.Sequential(*stages)

    def forward(self, x):
        skips = []
        for st in self.stages:
            x = st(x)
            skips.append(x)
        return skips


class BasicBlockD(nn.Module):
    """Residual block: conv-norm-act, conv-norm, + skip (avgpool + 1x1 conv-norm
    when the shape changes), then act."""

    def __init__(self, dim, cin, cout, kernel, stride):
        super().__init__()
        self.conv1 = ConvNormAct(dim, cin, cout, kernel, stride)
        self.conv2 = ConvNormAct(dim, cout, cout, kernel, 1, act=False)
        self.nonlin2 = nn.LeakyReLU(0.01, inplace=True)
        stride = _tuple(stride, dim)
        if any(s != 1 for s in stride) or cin != cout:
            ops = []
            if any(s != 1 for s in stride):
                pool = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[dim]
                ops.append(pool(stride, stride))
            if cin != cout:
                ops.append(ConvNormAct(dim, cin, cout, 1, 1, act=False))
            self.skip = nn.Sequential(*ops)
        else:
            self.skip = nn.Identity()

    def forward(self, x):
        return self.nonlin2(self.conv2(self.conv1(x)) + self.skip(x))


class ResidualStage(nn.Module):
    def __init__(self, n, dim, cin, cout, kernel, stride):
        super().__init__()
        self.blocks = nn.Sequential(
            BasicBlockD(dim, cin, cout, kernel, stride),
            *[BasicBlockD(dim, cout, cout, kernel, 1) for _ in range(n - 1)])

    def forward(self, x):
        return self.blocks(x)


class ResidualEncoder(nn.Module):
    def __init__(self, dim, cin, features, kernels, strides, n_blocks):
        super().__init__()
        self.stem = StackedConvBlocks(1, dim, cin, features[0], kernels[0], 1)
        cin = features[0]
        stages = []
        for s, f in enumerate(features):
            stages.append(ResidualStage(n_blocks[s], dim, cin, f, kernels[s], strides[s]))
            cin = f
        self.stages = nn.Sequential(*stages)

    def forward(self, x):
        x = self.stem(x)
        skips = []
        for st in self.stages:
            x = st(x)
            skips.append(x)
        return skips


class UNetDecoder(nn.Module):
    def __init__(self, dim, features, kernels, strides, n_conv_dec, num_classes):
        super().__init__()
        n = len(features)
        self.transpconvs = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.seg_layers = nn.ModuleList()
        for s in range(1, n):
            below, skip = features[-s], features[-(s + 1)]
            st = _tuple(strides[-s], dim)
            self.transpconvs.append(_tconv(dim)(below, skip, st, st, bias=True))
            self.stages.append(StackedConvBlocks(n_conv_dec[s - 1], dim, 2 * skip, skip,
                                                 kernels[-(s + 1)], 1))
            self.seg_layers.append(_conv(dim)(skip, num_classes, 1, 1, 0, bias=True))

    def forward(self, skips):
        x = skips[-1]
        for s in range(len(self.stages)):
            x = self.transpconvs[s](x)
            x = torch.cat((x, skips[-(s + 2)]), 1)
            x = self.stages[s](x)
        return self.seg_layers[-1](x)


class UNet(nn.Module):
    """arch: 'PlainConvUNet' or 'ResidualEncoderUNet'; kwargs as nnU-Net's
    plans (n_stages, features_per_stage, kernel_sizes, strides,
    n_conv_per_stage or n_blocks_per_stage, n_conv_per_stage_decoder)."""

    def __init__(self, arch, input_channels, num_classes, features_per_stage,
                 kernel_sizes, strides, n_conv_per_stage, n_conv_per_stage_decoder,
                 dim=3):
        super().__init__()
        if arch == "PlainConvUNet":
            self.encoder = PlainConvEncoder(dim, input_channels, features_per_stage,
                                            kernel_sizes, strides, n_conv_per_stage)
        elif arch == "ResidualEncoderUNet":
            self.encoder = ResidualEncoder(dim, input_channels, features_per_stage,
                                           kernel_sizes, strides, n_conv_per_stage)
        else:
            raise ValueError(f"unsupported architecture {arch}")
        self.decoder = UNetDecoder(dim, features_per_stage, kernel_sizes, strides,
                                   n_conv_per_stage_decoder, num_classes)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def load_nnunet_state_dict(net, sd):
    """Load an nnU-Net `network_weights` dict: keys duplicated by nnU-Net's
    module aliases (`all_modules`, `decoder.encoder.`) are dropped; every
    parameter of `net` must be present with the right shape."""
    clean = {}
    for k, v in sd.items():
        if k.startswith("module."):
            k = k[len("module."):]
        if ".all_modules." in k or k.startswith("decoder.encoder."):
            continue
        clean[k] = v
    own = net.state_dict()
    missing = [k for k in own if k not in clean]
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} parameters, e.g. {missing[:3]}")
    for k, v in own.items():
        if tuple(clean[k].shape) != tuple(v.shape):
            raise ValueError(f"{k}: checkpoint shape {tuple(clean[k].shape)} != {tuple(v.shape)}")
    net.load_state_dict({k: clean[k] for k in own}, strict=True)
