"""pix2pix networks (Isola et al. 2017): U-Net generator, PatchGAN discriminator, presets, init.

The generator maps a photo to an alpha matte (1 channel) or to the person painted on white
(3 channels). The discriminator judges (photo, target) pairs patch by patch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Preset:
    """Network widths. `ngf`/`ndf`: filters in the first generator/discriminator layer."""

    ngf: int
    ndf: int
    n_layers: int  # PatchGAN depth; 3 gives the paper's 70x70 receptive field
    why: str
    max_mult: int = 8  # the generator's widths double per level up to ngf * max_mult (the paper: 8)
    outer_widths: tuple[int, ...] = ()  # when given, the outer levels' widths instead of the doubling

    def widths(self, num_downs: int) -> list[int]:
        """Filters of each U-Net level, outermost (full resolution / 2) to the 1x1 bottleneck."""
        rule = [self.ngf * min(2 ** level, self.max_mult) for level in range(num_downs)]
        return [*self.outer_widths[:num_downs], *rule[len(self.outer_widths):]]


PRESETS: dict[str, Preset] = {
    "base": Preset(ngf=64, ndf=64, n_layers=3, why="the paper's unet_256 + 70x70 PatchGAN"),
    "lite": Preset(ngf=16, ndf=32, n_layers=3, why="1/16 of base's convolution cost, for CPU inference"),
    # Most of a U-Net's cost is its outer levels (large images); the inner ones are cheap. slim
    # halves lite's outer widths and keeps lite's 128 filters deep down: a third of lite's cost
    # at 256^2, so 256^2 costs on a CPU what lite costs at 128^2. D is halved too: at 256^2 a
    # 32-filter PatchGAN would cost six times this G.
    "slim": Preset(ngf=8, ndf=16, n_layers=3, max_mult=16,
                   why="256^2 input at lite-128's CPU cost: 8 filters at full resolution, 128 deep down"),
    # slim fits its own training photos hardly better than its val photos (whole-photo IoU on
    # coco 0.33 train vs 0.30 val, ccp 0.87 vs 0.86): too little capacity, not too little data.
    # mid keeps slim's two full-resolution levels and triples the filters at 1/8 to 1/64 of the
    # side, where a person is told from a post; 1.6x slim's cost. Its widths contain slim's, so `fit --init-from` can
    # start it from a slim checkpoint (hx_train.models.widen).
    "mid": Preset(ngf=8, ndf=16, n_layers=3, max_mult=16, outer_widths=(8, 16, 48, 96, 160, 160),
                  why="slim with 3x the filters at 1/8-1/64 resolution: widths 8, 16, 48, 96, 160, 160, then 128"),
    # mid still fits pennfudan's training photos hardly better than its val ones (0.706 vs 0.681).
    # wide adds a third to mid's filters at 1/8 and 1/16 of the side, where a person spans tens of
    # pixels; that level's cost is FLOPs, not parameters (+36 % FLOPs, +11 % parameters), so the
    # bundled model stays small. Its widths contain mid's, so `fit --init-from` starts it from mid.
    "wide": Preset(ngf=8, ndf=16, n_layers=3, max_mult=16, outer_widths=(8, 16, 64, 128, 160, 160),
                   why="mid with 4/3 its filters at 1/8-1/16 resolution: widths 8, 16, 64, 128, 160, 160, then 128"),
    # wide fits ccp's training photos no better than its val ones (whole-photo IoU 0.888 vs 0.885)
    # and has stopped improving: the 8 and 16 filters at 1/2 and 1/4 of the side, which draw the
    # outline, are its narrowest point. wide16 doubles them (lite at 128^2 had 16 filters at that
    # share of a person's height): 1.5x wide's FLOPs, +2 % parameters. Its widths contain wide's.
    "wide16": Preset(ngf=16, ndf=16, n_layers=3, max_mult=8, outer_widths=(16, 32, 64, 128, 160, 160),
                     why="wide with twice its filters at 1/2 and 1/4 resolution: widths 16, 32, 64, 128, 160, 160, then 128"),
}

MIN_SIZE, MAX_SIZE = 64, 512


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None


def check_size(size: int) -> int:
    """Return the number of down-samplings for `size`, or raise if it is not a power of two in range."""
    if size < MIN_SIZE or size > MAX_SIZE or size & (size - 1):
        raise ValueError(f"--size must be a power of two from {MIN_SIZE} to {MAX_SIZE}, got {size}")
    return int(math.log2(size))


class UnetBlock(nn.Module):
    """One level of the U-Net: down-sample, the inner levels, up-sample, and concatenate the skip.

    x: [B, C_outer, H, W] -> [B, 2*C_outer, H, W] (skip + up), or [B, C_out, H, W] at the outermost level.
    """

    def __init__(self, outer: int, inner: int, submodule: nn.Module | None = None, *,
                 in_channels: int | None = None, out_channels: int | None = None,
                 outermost: bool = False, dropout: bool = False):
        super().__init__()
        self.outermost = outermost
        in_channels = in_channels or outer
        down_conv = nn.Conv2d(in_channels, inner, 4, 2, 1, bias=False)
        if outermost:
            up_conv = nn.ConvTranspose2d(inner * 2, out_channels, 4, 2, 1)
            layers = [down_conv, submodule, nn.ReLU(True), up_conv, nn.Tanh()]
        elif submodule is None:  # innermost: 1x1 bottleneck, no norm on the way down (as in pix2pix)
            up_conv = nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False)
            layers = [nn.LeakyReLU(0.2, True), down_conv, nn.ReLU(True), up_conv, nn.BatchNorm2d(outer)]
        else:
            up_conv = nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=False)
            layers = [nn.LeakyReLU(0.2, True), down_conv, nn.BatchNorm2d(inner), submodule,
                      nn.ReLU(True), up_conv, nn.BatchNorm2d(outer)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """U-Net with log2(size) down-samplings, so the bottleneck is 1x1 (unet_128, unet_256, ...).

    image: [B, 3, S, S] float in [-1, 1] -> [B, out_channels, S, S] in [-1, 1] (tanh).
    """

    def __init__(self, size: int, widths: list[int] | int, out_channels: int = 1):
        """widths: filters per level, outermost first (Preset.widths), or ngf for the paper's."""
        super().__init__()
        num_downs = check_size(size)
        if isinstance(widths, int):
            widths = Preset(widths, 0, 0, "").widths(num_downs)
        if len(widths) != num_downs:
            raise ValueError(f"{len(widths)} widths for {num_downs} levels")
        # Innermost to outermost. As in pix2pix, the three levels nearest the bottleneck (after
        # the innermost, and not among the four outer ones) carry dropout, the paper's noise source.
        block = UnetBlock(widths[-2], widths[-1])
        for level in range(num_downs - 2, 0, -1):
            block = UnetBlock(widths[level - 1], widths[level], block,
                              dropout=level >= max(4, num_downs - 4))
        self.model = UnetBlock(widths[0], widths[0], block, in_channels=3, out_channels=out_channels,
                               outermost=True)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)


class PatchDiscriminator(nn.Module):
    """PatchGAN conditioned on the photo: [B, 3 + C_target, S, S] -> [B, 1, S', S'] logits."""

    def __init__(self, in_channels: int, ndf: int, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, photo_and_target: torch.Tensor) -> torch.Tensor:
        return self.model(photo_and_target)


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """pix2pix init: conv weights ~ N(0, 0.02), batch-norm scale ~ N(1, 0.02), biases 0."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return net


def out_channels_for(target: str) -> int:
    if target == "alpha":
        return 1
    if target == "rgb":
        return 3
    raise ValueError(f"unknown --target {target!r}; choose alpha or rgb")


def _blocks(net: UnetGenerator) -> list[UnetBlock]:
    """The U-Net's levels, outermost first."""
    blocks, block = [], net.model
    while block is not None:
        blocks.append(block)
        block = next((m for m in block.model if isinstance(m, UnetBlock)), None)
    return blocks


@torch.no_grad()
def widen(old: UnetGenerator, new: UnetGenerator) -> UnetGenerator:
    """Copy `old` into `new`, a U-Net as deep and at least as wide at every level, so that `new`
    computes exactly what `old` does (Net2Net's idea, with zeros instead of copies).

    Every filter new has beyond old's keeps new's random weights, but each old filter gets zero
    weight from every added one: the added filters change nothing until training moves those
    zeros. The zeros get gradients at the first step; the added filters' own weights from the
    second, once the zeros have moved. Returns `new`; ValueError if the two do not fit (another
    depth, a narrower level, another output).
    """
    old_blocks, new_blocks = _blocks(old), _blocks(new)
    if len(old_blocks) != len(new_blocks):
        raise ValueError(f"a {len(old_blocks)}-level U-Net cannot be widened into a {len(new_blocks)}-level one")
    for old_block, new_block in zip(old_blocks, new_blocks):
        for a, b in zip(old_block.model, new_block.model):
            if isinstance(a, UnetBlock) or not isinstance(a, (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d)):
                continue
            if isinstance(a, nn.BatchNorm2d):
                _check_wider(a.num_features, b.num_features)
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(b, name)[:a.num_features] = getattr(a, name)
                b.num_batches_tracked.copy_(a.num_batches_tracked)
                continue
            # Conv2d weights are [out, in, k, k], ConvTranspose2d's [in, out, k, k]: view both as the former.
            transposed = isinstance(a, nn.ConvTranspose2d)
            src = a.weight.transpose(0, 1) if transposed else a.weight
            dst = b.weight.transpose(0, 1) if transposed else b.weight
            (a_out, a_in), (b_out, b_in) = src.shape[:2], dst.shape[:2]
            _check_wider(a_in, b_in)
            _check_wider(a_out, b_out)
            if old_block.outermost and transposed and a_out != b_out:
                raise ValueError(f"{a_out} output channels cannot become {b_out} (another --target)")
            # An up-convolution above the innermost level reads [skip, up]: two halves, each widened.
            if transposed and old_block is not old_blocks[-1]:
                pairs = [(slice(0, a_in // 2), slice(0, a_in // 2)),
                         (slice(a_in // 2, a_in), slice(b_in // 2, b_in // 2 + a_in // 2))]
            else:
                pairs = [(slice(0, a_in), slice(0, a_in))]
            dst[:a_out] = 0  # added inputs feed old filters nothing
            for old_in, new_in in pairs:
                dst[:a_out, new_in] = src[:, old_in]
            if a.bias is not None:
                b.bias[:a_out] = a.bias
    return new


def _check_wider(old: int, new: int) -> None:
    if new < old:
        raise ValueError(f"a level narrows from {old} to {new} filters")


def build_generator(preset: str, size: int, target: str = "alpha") -> UnetGenerator:
    widths = get_preset(preset).widths(check_size(size))
    return init_weights(UnetGenerator(size, widths, out_channels_for(target)))


def build_discriminator(preset: str, target: str = "alpha") -> PatchDiscriminator:
    p = get_preset(preset)
    return init_weights(PatchDiscriminator(3 + out_channels_for(target), p.ndf, p.n_layers))


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def conv_gflops(net: nn.Module, size: int, in_channels: int = 3) -> float:
    """Multiply-adds x 2 of every convolution for one [1, C, size, size] input, in GFLOPs."""
    total = 0

    def hook(module: nn.Module, inputs, output) -> None:
        nonlocal total
        if isinstance(module, nn.ConvTranspose2d):
            # each input pixel scatters into k*k*C_out outputs
            x = inputs[0]
            total += x.numel() * module.out_channels * module.kernel_size[0] * module.kernel_size[1]
        else:
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output.numel() * k

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            net(torch.zeros(1, in_channels, size, size))
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
    return 2 * total / 1e9
