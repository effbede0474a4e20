"""HAN: Niu et al., "Single Image Super-Resolution via a Holistic Attention Network", ECCV 2020
(https://arxiv.org/abs/2008.08767).

HAN is RCAN (same head, residual groups of channel-attention blocks, upsampler and mean shifts,
reused from :mod:`zoo.models.rcan`) with two attention paths on top of the body::

    x0  = head(sub_mean(255 * img))
    f_i = body_i(f_{i-1}),  f_0 = x0,  i = 1..n_resgroups+1   (groups, then the body's last conv)
    out2 = last_conv(LAM(stack(f_11, f_10, ..., f_1)))        layer attention over all 11 outputs
    out1 = CSAM(f_11)                                         channel-spatial attention
    y   = add_mean(tail(x0 + last(cat(out1, out2)))) / 255

The key layout is the release's (wwlCape/HAN, EDSR-PyTorch code base), so its files load unchanged.
Public convention as in RCAN: RGB in [0, 1] in, [0, 1] out; inside, the network works in 0..255.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo import blocks
from zoo.blocks.validation import check_image, check_tensor, float_param, owner_name

from ..builder import build_model
from ..pretrained import PretrainedCfg
from ..registry import register_model, register_pretrained_cfgs
from ..pruning.groups import Group, Member
from .rcan import DIV2K_MEAN, RGB_RANGE, MeanShift, ResidualGroup, Upsampler, _conv, residual_trunk_groups, upsampler_groups

__all__ = ["HAN"]

# the release hard-codes last_conv's input as n_feats * 11: 10 groups plus the body's last conv
RELEASE_RESGROUPS = 10


class HAN(nn.Module):
    """Holistic attention network for single-image super-resolution.

    Args:
        scale: upscaling factor (2, 3, 4 or 8).
        n_resgroups: must be 10; the release fixes ``last_conv`` to ``n_feats * 11`` input channels.
        n_resblocks, n_feats, reduction: the paper's 20, 64, 16.
        in_chans: 3 (RGB), as released.
        rgb_mean: the mean the mean shifts remove, in [0, 1] (DIV2K's by default).

    The release ignores ``res_scale`` (its blocks always add the full residual) and fixes every
    kernel to 3x3, so neither is an argument here.
    """

    pipeline_tag = "image-to-image"  # the Hugging Face hub's task, for the model card

    def __init__(self, scale: int = 2, n_resgroups: int = RELEASE_RESGROUPS, n_resblocks: int = 20,
                 n_feats: int = 64, reduction: int = 16, in_chans: int = 3,
                 rgb_mean: tuple[float, float, float] = DIV2K_MEAN, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if n_resgroups != RELEASE_RESGROUPS:
            raise ValueError(f"HAN needs n_resgroups={RELEASE_RESGROUPS}: the release hard-codes last_conv's "
                             f"input to n_feats * 11 (10 residual groups plus the body's last conv), so its "
                             f"weights only fit 10 groups; got n_resgroups={n_resgroups}")
        if in_chans != 3:
            raise ValueError(f"HAN works on RGB images (in_chans=3); got in_chans={in_chans}. Convert grey "
                             f"images to RGB first (repeat the channel)")
        factory = {"device": device, "dtype": dtype}
        self.scale, self.in_chans, self.num_features = scale, in_chans, n_feats
        self.n_resgroups, self.n_resblocks = n_resgroups, n_resblocks
        n_layers = n_resgroups + 1  # the layer attention also sees the body's last conv
        # registration order is the release's, so state_dict() lists keys in its order
        self.sub_mean = MeanShift(rgb_mean, -1, **factory)
        self.add_mean = MeanShift(rgb_mean, +1, **factory)
        self.head = nn.Sequential(_conv(in_chans, n_feats, 3, **factory))
        self.body = nn.Sequential(
            *[ResidualGroup(n_feats, n_resblocks, reduction, 3, 1.0, **factory) for _ in range(n_resgroups)],
            _conv(n_feats, n_feats, 3, **factory))
        self.csa = blocks.create("csam", n_feats, **factory)
        self.la = blocks.create("lam", n_feats, num_layers=n_layers, **factory)
        self.last_conv = _conv(n_feats * n_layers, n_feats, 3, **factory)
        self.last = _conv(2 * n_feats, n_feats, 3, **factory)
        self.tail = nn.Sequential(Upsampler(scale, n_feats, **factory), _conv(n_feats, in_chans, 3, **factory))

    def _check_input(self, x: torch.Tensor) -> None:
        """RGB (B, 3, H, W) floats in [0, 1]: the network scales by 255 itself, so a uint8 image overflows
        and a 0..255 float image comes out as garbage instead of failing."""
        arch = owner_name(self)
        check_tensor(arch, x, "RGB images (B, 3, H, W) in [0, 1]")
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{arch} expects RGB input (B, 3, H, W) in [0, 1]; got shape {tuple(x.shape)}. "
                             f"Convert grey or RGBA images to RGB first.")
        check_image(arch, x, float_param(self), unit_range=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB (B, 3, H, W) -> deep features after the long skip (B, n_feats, H, W)."""
        self._check_input(x)
        x = self.head(self.sub_mean(x * RGB_RANGE))
        res, layers = x, []
        for layer in self.body:  # no long skip inside the body: the release adds x after `last`
            res = layer(res)
            layers.append(res)
        # the release prepends each new output, so the stack runs newest first: body.10's output at
        # index 0, group 0's at index 10; last_conv's input channels are ordered that way
        stacked = torch.stack(layers[::-1], dim=1)  # (B, N, C, H, W), N = n_resgroups + 1
        out_la = self.last_conv(self.la(stacked))  # (B, N*C, H, W) -> (B, C, H, W)
        out_csa = self.csa(res)  # (B, C, H, W)
        return x + self.last(torch.cat([out_csa, out_la], dim=1))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Features -> upscaled RGB in [0, 1] (B, 3, H * scale, W * scale), not clamped."""
        return self.add_mean(self.tail(x)) / RGB_RANGE

    def example_inputs(self, batch: int, size: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor]:
        """A forward's arguments for smoke runs (``python -m zoo check``): RGB images in [0, 1]."""
        return (torch.rand(batch, 3, size, size, generator=generator),)  # (B, 3, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


    def pruning_groups(self) -> list[Group]:
        """RCAN's trunk and inner groups (:func:`zoo.models.rcan.residual_trunk_groups`), plus what HAN adds on
        the trunk: CSAM and LAM (channel-count only), ``last_conv`` reading the N stacked layers (N copies
        of the trunk's channels), and ``last`` reading ``cat(CSAM out, last_conv out)``: the trunk is its
        first half, ``last_conv``'s output (a group of its own) the second; the upsampler's stages as in RCAN."""
        trunk, inner = residual_trunk_groups(self.body)
        n_feats, n_layers = self.last.in_channels // 2, self.last_conv.in_channels // (self.last.in_channels // 2)
        trunk.members.insert(0, Member("head.0", "out"))
        trunk.add("csa", "channels").add("la", "channels").add("last_conv", "in", blocks=n_layers)
        trunk.add("last", "in").add("last", "out").add("tail.0.0", "in").add("", "attr:num_features")
        fused = Group("last_conv").add("last_conv", "out").add("last", "in", offset=n_feats)
        return inner + upsampler_groups(self.tail) + [fused, trunk]

def _cfg(**kwargs: Any) -> PretrainedCfg:
    return PretrainedCfg(**{
        "input_size": (3, 48, 48), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "interpolation": "bicubic",
        "crop_pct": 1.0, "num_classes": 0, "first_conv": "head.0", "classifier": "",
        "paper": "https://arxiv.org/abs/2008.08767", "origin_url": "https://github.com/wwlCape/HAN",
        "license": "unknown", **kwargs})


_RELEASE_NOTE = ("the HAN release files (HAN_BIX{s}.pt) are in the authors' Google Drive folder linked from "
                 "https://github.com/wwlCape/HAN; place the file in the torch hub cache")
default_cfgs = register_pretrained_cfgs({
    "han_x2.release": _cfg(filename="HAN_BIX2.pt", notes=_RELEASE_NOTE.format(s=2)),
    "han_x3.release": _cfg(filename="HAN_BIX3.pt", notes=_RELEASE_NOTE.format(s=3)),
    "han_x4.release": _cfg(filename="HAN_BIX4.pt", notes=_RELEASE_NOTE.format(s=4)),
    "han_x8.release": _cfg(filename="HAN_BIX8.pt", notes=_RELEASE_NOTE.format(s=8)),
    "han": _cfg(),
})


def _create_han(variant: str, pretrained: Any = False, **kwargs: Any) -> HAN:
    # release files are bare state dicts in HAN's own layout; the loader strips DataParallel prefixes
    return build_model(HAN, variant, pretrained, **kwargs)


@register_model
def han(pretrained: Any = False, **kwargs: Any) -> HAN:
    """HAN with any ``scale``, ``n_resblocks``, ``n_feats``, ``reduction`` (``n_resgroups`` must be 10)."""
    return _create_han("han", pretrained, **kwargs)


@register_model
def han_x2(pretrained: Any = False, **kwargs: Any) -> HAN:
    """HAN x2, paper size (10 groups x 20 blocks, 64 features, reduction 16)."""
    return _create_han("han_x2", pretrained, **{"scale": 2, **kwargs})


@register_model
def han_x3(pretrained: Any = False, **kwargs: Any) -> HAN:
    """HAN x3, paper size."""
    return _create_han("han_x3", pretrained, **{"scale": 3, **kwargs})


@register_model
def han_x4(pretrained: Any = False, **kwargs: Any) -> HAN:
    """HAN x4, paper size."""
    return _create_han("han_x4", pretrained, **{"scale": 4, **kwargs})


@register_model
def han_x8(pretrained: Any = False, **kwargs: Any) -> HAN:
    """HAN x8, paper size."""
    return _create_han("han_x8", pretrained, **{"scale": 8, **kwargs})
