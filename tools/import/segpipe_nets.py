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

Each conv block is conv -> norm -> nonlin as the plans say (Opts: conv_bias,
instance or batch norm with eps/affine, LeakyReLU slope or ReLU); residual
stages use BasicBlockD or BottleneckD with ResNet-D skips (avgpool, then a
bias-free 1x1 conv + norm). Checked module by module against
dynamic_network_architectures (docs/model-format.md). Deep supervision is
off: forward() returns the full-resolution head only (the extra heads'
weights in a checkpoint are the decoder's seg_layers, loaded and unused). Used by the demo-model trainer and the nnU-Net importer.
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


class Opts:
    """What nnU-Net's plans say about every conv block (arch_kwargs):
    conv_bias, norm_op (instance or batch norm) with eps/affine, nonlin
    (LeakyReLU with its slope, or ReLU). Dropout has no weights and is off
    at inference, so it is not modelled."""

    def __init__(self, conv_bias=True, norm="instance", eps=1e-5, affine=True, slope=0.01):
        self.conv_bias, self.norm, self.eps, self.affine, self.slope = conv_bias, norm, eps, affine, slope

    def norm_op(self, dim, c):
        if self.norm == "batch":
            return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dim](c, eps=self.eps, affine=self.affine)
        return _inorm(dim)(c, eps=self.eps, affine=self.affine)

    def act(self):
        return nn.LeakyReLU(self.slope, inplace=True) if self.slope else nn.ReLU(inplace=True)


class ConvNormAct(nn.Module):
    """dynamic_network_architectures' ConvDropoutNormReLU: conv -> norm -> act."""

    def __init__(self, dim, cin, cout, kernel, stride, act=True, opts=None, bias=None):
        super().__init__()
        opts = opts or Opts()
        kernel = _tuple(kernel, dim)
        self.conv = _conv(dim)(cin, cout, kernel, _tuple(stride, dim),
                               padding=[(k - 1) // 2 for k in kernel],
                               bias=opts.conv_bias if bias is None else bias)
        self.norm = opts.norm_op(dim, cout)
        self.nonlin = opts.act() if act else nn.Identity()

    def forward(self, x):
        return self.nonlin(self.norm(self.conv(x)))


class StackedConvBlocks(nn.Module):
    def __init__(self, n, dim, cin, cout, kernel, first_stride, opts=None):
        super().__init__()
        self.convs = nn.Sequential(
            ConvNormAct(dim, cin, cout, kernel, first_stride, opts=opts),
            *[ConvNormAct(dim, cout, cout, kernel, 1, opts=opts) for _ in range(n - 1)])

    def forward(self, x):
        return self.convs(x)


class PlainConvEncoder(nn.Module):
    def __init__(self, dim, cin, features, kernels, strides, n_conv, opts=None):
        super().__init__()
        stages = []
        for s, f in enumerate(features):
            stages.append(nn.Sequential(
                StackedConvBlocks(n_conv[s], dim, cin, f, kernels[s], strides[s], opts)))
            cin = f
        self.stages = nn.Sequential(*stages)

    def forward(self, x):
        skips = []
        for st in self.stages:
            x = st(x)
            skips.append(x)
        return skips


def _skip(dim, cin, cout, stride, opts):
    """ResNet-D skip: average pooling when strided, then a 1x1 conv + norm
    (never a bias: dynamic_network_architectures passes conv_bias=False
    here whatever the plans say) when the channels change."""
    stride = _tuple(stride, dim)
    ops = []
    if any(s != 1 for s in stride):
        pool = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[dim]
        ops.append(pool(stride, stride))
    if cin != cout:
        ops.append(ConvNormAct(dim, cin, cout, 1, 1, act=False, opts=opts, bias=False))
    return nn.Sequential(*ops) if ops else nn.Identity()


class BasicBlockD(nn.Module):
    """conv(k, stride)-norm-act, conv(k)-norm, + skip, then act."""

    def __init__(self, dim, cin, cout, kernel, stride, opts=None, bottleneck=None):
        super().__init__()
        opts = opts or Opts()
        self.conv1 = ConvNormAct(dim, cin, cout, kernel, stride, opts=opts)
        self.conv2 = ConvNormAct(dim, cout, cout, kernel, 1, act=False, opts=opts)
        self.nonlin2 = opts.act()
        self.skip = _skip(dim, cin, cout, stride, opts)

    def forward(self, x):
        return self.nonlin2(self.conv2(self.conv1(x)) + self.skip(x))


class BottleneckD(nn.Module):
    """conv(1x1)-norm-act to the bottleneck width, conv(k, stride)-norm-act,
    conv(1x1)-norm back to cout, + skip, then act (the stride sits in the
    middle conv, as in dynamic_network_architectures)."""

    def __init__(self, dim, cin, cout, kernel, stride, opts=None, bottleneck=None):
        super().__init__()
        opts = opts or Opts()
        b = bottleneck or cout // 4
        self.conv1 = ConvNormAct(dim, cin, b, 1, 1, opts=opts)
        self.conv2 = ConvNormAct(dim, b, b, kernel, stride, opts=opts)
        self.conv3 = ConvNormAct(dim, b, cout, 1, 1, act=False, opts=opts)
        self.nonlin3 = opts.act()
        self.skip = _skip(dim, cin, cout, stride, opts)

    def forward(self, x):
        return self.nonlin3(self.conv3(self.conv2(self.conv1(x))) + self.skip(x))


BLOCKS = {"BasicBlockD": BasicBlockD, "BottleneckD": BottleneckD}


class ResidualStage(nn.Module):
    def __init__(self, n, dim, cin, cout, kernel, stride, opts=None, block="BasicBlockD", bottleneck=None):
        super().__init__()
        B = BLOCKS[block]
        self.blocks = nn.Sequential(
            B(dim, cin, cout, kernel, stride, opts, bottleneck),
            *[B(dim, cout, cout, kernel, 1, opts, bottleneck) for _ in range(n - 1)])

    def forward(self, x):
        return self.blocks(x)


class ResidualEncoder(nn.Module):
    def __init__(self, dim, cin, features, kernels, strides, n_blocks, opts=None, block="BasicBlockD",
                 bottleneck_channels=None, stem_channels=None):
        super().__init__()
        stem = stem_channels or features[0]
        self.stem = StackedConvBlocks(1, dim, cin, stem, kernels[0], 1, opts)
        cin = stem
        if not isinstance(bottleneck_channels, (list, tuple)):
            bottleneck_channels = [bottleneck_channels] * len(features)
        stages = []
        for s, f in enumerate(features):
            stages.append(ResidualStage(n_blocks[s], dim, cin, f, kernels[s], strides[s], opts, block,
                                        bottleneck_channels[s]))
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
    def __init__(self, dim, features, kernels, strides, n_conv_dec, num_classes, opts=None):
        super().__init__()
        opts = opts or Opts()
        n = len(features)
        self.transpconvs = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.seg_layers = nn.ModuleList()
        for s in range(1, n):
            below, skip = features[-s], features[-(s + 1)]
            st = _tuple(strides[-s], dim)
            self.transpconvs.append(_tconv(dim)(below, skip, st, st, bias=opts.conv_bias))
            self.stages.append(StackedConvBlocks(n_conv_dec[s - 1], dim, 2 * skip, skip,
                                                 kernels[-(s + 1)], 1, opts))
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
    n_conv_per_stage or n_blocks_per_stage, n_conv_per_stage_decoder);
    opts: conv_bias, norm, nonlin (Opts); block, bottleneck_channels and
    stem_channels for ResidualEncoderUNet."""

    def __init__(self, arch, input_channels, num_classes, features_per_stage,
                 kernel_sizes, strides, n_conv_per_stage, n_conv_per_stage_decoder,
                 dim=3, opts=None, block="BasicBlockD", bottleneck_channels=None, stem_channels=None):
        super().__init__()
        opts = opts or Opts()
        if arch == "PlainConvUNet":
            self.encoder = PlainConvEncoder(dim, input_channels, features_per_stage,
                                            kernel_sizes, strides, n_conv_per_stage, opts)
        elif arch == "ResidualEncoderUNet":
            self.encoder = ResidualEncoder(dim, input_channels, features_per_stage, kernel_sizes, strides,
                                           n_conv_per_stage, opts, block, bottleneck_channels, stem_channels)
        else:
            raise ValueError(f"unsupported architecture {arch}")
        self.decoder = UNetDecoder(dim, features_per_stage, kernel_sizes, strides,
                                   n_conv_per_stage_decoder, num_classes, opts)

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
    unexpected = [k for k in clean if k not in own]
    if missing or unexpected:
        hint = ""
        keys = missing + unexpected
        if any(".skip." in k and k.endswith(".bias") for k in keys) or \
                any((".conv.bias" in k or "transpconvs" in k) for k in keys):
            hint = " (conv_bias in the plans' arch_kwargs decides the conv and transposed-conv biases)"
        if any(".conv3." in k for k in keys):
            hint = " (block: BottleneckD has conv1/conv2/conv3, BasicBlockD conv1/conv2)"
        if any(k.startswith("encoder.stem.") for k in keys):
            hint += " (stem_channels)"
        raise KeyError(f"checkpoint and network differ: {len(missing)} parameter(s) missing from the checkpoint, "
                       f"e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}{hint}")
    for k, v in own.items():
        if tuple(clean[k].shape) != tuple(v.shape):
            raise ValueError(f"{k}: checkpoint shape {tuple(clean[k].shape)} != {tuple(v.shape)}")
    net.load_state_dict({k: clean[k] for k in own}, strict=True)


def nnunet_state_dict(net):
    """net's weights under nnU-Net's key names, with its module aliases."""
    sd = {}
    for k, v in net.state_dict().items():
        names = [k] + [k.replace(a, b) for a, b in ((".conv.", ".all_modules.0."), (".norm.", ".all_modules.1."))
                       if a in k]
        for n in names + (["decoder." + n for n in names] if k.startswith("encoder.") else []):
            sd[n] = v.clone()
    return sd
