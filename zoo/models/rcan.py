"""RCAN: Zhang et al., "Image Super-Resolution Using Very Deep Residual Channel Attention Networks",
ECCV 2018.

Residual-in-residual: ``n_resgroups`` residual groups (each ``n_resblocks`` residual channel-attention
blocks and a conv, with a short skip) inside a long skip, then a PixelShuffle upsampler. The key
layout is the release's (EDSR-PyTorch code base); BasicSR's layout of the same network loads through
:func:`checkpoint_filter_fn`.

Public convention: RGB in [0, 1] in, [0, 1] out. Inside, the network works in 0..255 as released,
and the mean shifts are 1x1 convs whose weights come from the checkpoint (the release trained them).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo import blocks
from zoo.blocks.layers import PixelShuffle, channels_last_inference
from zoo.blocks.validation import check_image, check_tensor, float_param, owner_name

from ..builder import build_model
from ..pretrained import PretrainedCfg
from ..pruning.groups import Group, Member
from ..registry import register_model, register_pretrained_cfgs

__all__ = ["RCAN", "RCAB", "ResidualGroup", "Upsampler", "MeanShift"]

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)  # RGB mean of DIV2K, used by the release and BasicSR
RGB_RANGE = 255.0


def _conv(in_chs: int, out_chs: int, kernel: int = 3, **factory) -> nn.Conv2d:
    return nn.Conv2d(in_chs, out_chs, kernel, padding=kernel // 2, bias=True, **factory)


class MeanShift(nn.Module):
    """``y = W x + b`` per pixel (3x3 ``weight`` as a 1x1 conv, ``bias``): subtracts (``sign=-1``) or
    adds back the dataset mean in 0..255 units. Buffers, not parameters: loaded, never trained."""

    def __init__(self, mean: tuple[float, ...] = DIV2K_MEAN, sign: int = -1, rgb_range: float = RGB_RANGE,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.register_buffer("weight", torch.eye(3, device=device, dtype=dtype).view(3, 3, 1, 1))
        self.register_buffer("bias", sign * rgb_range * torch.tensor(mean, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # eager CPU only: a GPU would sync on the check, and meta tensors (shape runs) hold no values to check
        if (type(x) is torch.Tensor and x.device.type == "cpu" and not torch.compiler.is_compiling()
                and not torch.jit.is_tracing()):
            w = self.weight.view(3, 3)  # (out, in)
            if torch.equal(w, torch.diag(w.diagonal())):  # the release's identity, or any per-channel scale
                # a 3-channel 1x1 conv runs through PyTorch's slow reference kernel (0.7 ms at 192 x 192 on one
                # thread, 3% of a pruned quickstart RCAN); a per-channel scale and shift is one pass (0.2 ms)
                return torch.addcmul(self.bias.view(1, -1, 1, 1), x, w.diagonal().view(1, -1, 1, 1))
        return F.conv2d(x, self.weight, self.bias)


class RCAB(nn.Module):
    """Residual channel-attention block: ``x + CA(conv(relu(conv(x))))`` (``body.0/2`` convs, ``body.3`` CA)."""

    def __init__(self, n_feats: int, reduction: int = 16, kernel: int = 3, res_scale: float = 1.0,
                 device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.body = nn.Sequential(_conv(n_feats, n_feats, kernel, **factory), nn.ReLU(inplace=True),
                                  _conv(n_feats, n_feats, kernel, **factory),
                                  blocks.create("ca", n_feats, reduction=reduction, **factory))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.body(x) if self.res_scale != 1 else x + self.body(x)


class ResidualGroup(nn.Module):
    """``n_resblocks`` RCABs and a conv (``body.{n_resblocks}``), with a short skip."""

    def __init__(self, n_feats: int, n_resblocks: int, reduction: int = 16, kernel: int = 3,
                 res_scale: float = 1.0, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.body = nn.Sequential(*[RCAB(n_feats, reduction, kernel, res_scale, **factory) for _ in range(n_resblocks)],
                                  _conv(n_feats, n_feats, kernel, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Upsampler(nn.Sequential):
    """Sub-pixel upsampling (Shi et al., CVPR 2016): conv to ``r^2`` times the features, PixelShuffle(r);
    twice-per-octave for powers of two (``0, 2, 4`` are the convs), once for x3."""

    def __init__(self, scale: int, n_feats: int, device=None, dtype=None) -> None:
        factory = {"device": device, "dtype": dtype}
        layers: list[nn.Module] = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [_conv(n_feats, 4 * n_feats, 3, **factory), PixelShuffle(2)]
        elif scale == 3:
            layers += [_conv(n_feats, 9 * n_feats, 3, **factory), PixelShuffle(3)]
        else:
            raise ValueError(f"scale must be 2, 3, 4 or 8 (a power of two or 3); got {scale}")
        super().__init__(*layers)


def residual_trunk_groups(body: nn.Sequential, prefix: str = "body") -> tuple[Group, list[Group]]:
    """The residual-in-residual trunk of RCAN / HAN as pruning groups (see :mod:`zoo.pruning.groups`).

    Every residual add (inside each RCAB, each group's short skip, the long skip) ties the feature
    channels of the whole body to one index, so they form one ``trunk`` group: every conv that reads
    or writes the trunk, and every CA block (which gates it). Each RCAB's middle channels (after its
    first conv) and each CA's squeeze width are groups of their own. Returns (trunk, the others); the
    caller adds the head, the tail and anything else that touches the trunk.
    """
    trunk, inner = Group("trunk"), []
    for g, group in enumerate(body):
        if isinstance(group, nn.Conv2d):  # the body's last conv
            trunk.add(f"{prefix}.{g}", "in").add(f"{prefix}.{g}", "out")
            continue
        for b, block in enumerate(group.body):
            name = f"{prefix}.{g}.body.{b}"
            if isinstance(block, nn.Conv2d):  # the group's last conv
                trunk.add(name, "in").add(name, "out")
                continue
            trunk.add(f"{name}.body.0", "in").add(f"{name}.body.2", "out").add(f"{name}.body.3", "channels")
            trunk.gates.append(f"{name}.body.3")
            inner.append(Group(f"{name}.mid").add(f"{name}.body.0", "out").add(f"{name}.body.2", "in"))
            inner.append(Group(f"{name}.ca.hidden").add(f"{name}.body.3", "hidden"))
    return trunk, inner


def upsampler_groups(tail: nn.Sequential, prefix: str = "tail") -> list[Group]:
    """The upsampler's channels as pruning groups, one per sub-pixel stage: PixelShuffle(r) turns output
    channels ``c r^2 .. c r^2 + r^2 - 1`` of the stage's conv into channel ``c`` of the finer map, so a
    channel of the group is ``unit=r^2`` rows of that conv and one input of the conv that reads the map
    (the next stage's, or the last conv's). ``tail`` is ``Sequential(Upsampler, last conv)``."""
    upsampler = tail[0]
    convs = [i for i, layer in enumerate(upsampler) if isinstance(layer, nn.Conv2d)]
    groups = []
    for stage, index in enumerate(convs):
        ratio = upsampler[index + 1].upscale_factor
        reader = f"{prefix}.0.{convs[stage + 1]}" if stage + 1 < len(convs) else f"{prefix}.1"
        groups.append(Group(f"upsampler.{stage}").add(f"{prefix}.0.{index}", "out", unit=ratio * ratio)
                      .add(reader, "in"))
    return groups


class RCAN(nn.Module):
    """Residual channel attention network for single-image super-resolution.

    Args:
        scale: upscaling factor (2, 3, 4 or 8).
        n_resgroups, n_resblocks, n_feats, reduction: the paper's 10, 20, 64, 16.
        res_scale: residual scaling inside each RCAB (1 in the paper).
        rgb_mean: the mean the mean shifts remove, in [0, 1] (DIV2K's by default).
    """

    pipeline_tag = "image-to-image"  # the Hugging Face hub's task, for the model card

    def __init__(self, scale: int = 2, n_resgroups: int = 10, n_resblocks: int = 20, n_feats: int = 64,
                 reduction: int = 16, res_scale: float = 1.0, kernel_size: int = 3, in_chans: int = 3,
                 rgb_mean: tuple[float, float, float] = DIV2K_MEAN, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if in_chans != 3:
            raise ValueError(f"RCAN works on RGB images (in_chans=3); got in_chans={in_chans}. Convert grey "
                             f"images to RGB first (repeat the channel)")
        factory = {"device": device, "dtype": dtype}
        self.scale, self.in_chans, self.num_features = scale, in_chans, n_feats
        self.n_resgroups, self.n_resblocks = n_resgroups, n_resblocks
        self.sub_mean = MeanShift(rgb_mean, -1, **factory)
        self.add_mean = MeanShift(rgb_mean, +1, **factory)  # registered here to keep the release's key order
        self.head = nn.Sequential(_conv(in_chans, n_feats, kernel_size, **factory))
        self.body = nn.Sequential(
            *[ResidualGroup(n_feats, n_resblocks, reduction, kernel_size, res_scale, **factory) for _ in range(n_resgroups)],
            _conv(n_feats, n_feats, kernel_size, **factory))
        self.tail = nn.Sequential(Upsampler(scale, n_feats, **factory), _conv(n_feats, in_chans, kernel_size, **factory))

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
        return x + self.body(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Features -> upscaled RGB in [0, 1] (B, 3, H * scale, W * scale), not clamped."""
        return self.add_mean(self.tail(x)) / RGB_RANGE

    def example_inputs(self, batch: int, size: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor]:
        """A forward's arguments for smoke runs (``python -m zoo check``): RGB images in [0, 1]."""
        return (torch.rand(batch, 3, size, size, generator=generator),)  # (B, 3, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # CPU inference runs channels-last: ~10% faster at every width, and a pruned model's odd widths pay
        return channels_last_inference(lambda t: self.forward_head(self.forward_features(t)), x)


    def pruning_groups(self) -> list[Group]:
        """The trunk (head's output through the body to the upsampler's first conv), each block's inner
        channels (:func:`residual_trunk_groups`) and each upsampling stage's (:func:`upsampler_groups`)."""
        trunk, inner = residual_trunk_groups(self.body)
        trunk.members.insert(0, Member("head.0", "out"))
        trunk.add("tail.0.0", "in").add("", "attr:num_features")
        return inner + upsampler_groups(self.tail) + [trunk]

def _basicsr_to_release(state_dict: dict, n_resblocks: int, n_resgroups: int, rgb_mean=DIV2K_MEAN) -> dict:
    """BasicSR's RCAN keys -> the release's; BasicSR keeps the mean as a constant, so the mean shifts
    are rebuilt from it (BasicSR: ``(x - mean) * 255``, the same as ``sub_mean(255 x)``)."""
    rules = [
        (r"^conv_first\.", "head.0."),
        (r"^body\.(\d+)\.residual_group\.(\d+)\.rcab\.3\.attention\.1\.", r"body.\1.body.\2.body.3.conv_du.0."),
        (r"^body\.(\d+)\.residual_group\.(\d+)\.rcab\.3\.attention\.3\.", r"body.\1.body.\2.body.3.conv_du.2."),
        (r"^body\.(\d+)\.residual_group\.(\d+)\.rcab\.(\d+)\.", r"body.\1.body.\2.body.\3."),
        (r"^body\.(\d+)\.conv\.", rf"body.\1.body.{n_resblocks}."),
        (r"^conv_after_body\.", f"body.{n_resgroups}."),
        (r"^upsample\.", "tail.0."),
        (r"^conv_last\.", "tail.1."),
    ]
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in rules:
            new = re.sub(pattern, repl, key)
            if new != key:
                key = new
                break
        out[key] = value
    ref = next(iter(state_dict.values()))
    mean = torch.tensor(rgb_mean, dtype=ref.dtype)
    out.setdefault("sub_mean.weight", torch.eye(3, dtype=ref.dtype).view(3, 3, 1, 1))
    out.setdefault("sub_mean.bias", -RGB_RANGE * mean)
    out.setdefault("add_mean.weight", torch.eye(3, dtype=ref.dtype).view(3, 3, 1, 1))
    out.setdefault("add_mean.bias", RGB_RANGE * mean)
    return out


def checkpoint_filter_fn(state_dict: dict, model: RCAN) -> dict:
    """Release layout passes through; BasicSR's layout (``conv_first``, ``residual_group``) is renamed."""
    if "conv_first.weight" in state_dict:
        return _basicsr_to_release(state_dict, model.n_resblocks, model.n_resgroups)
    return state_dict


def _cfg(**kwargs: Any) -> PretrainedCfg:
    return PretrainedCfg(**{
        "input_size": (3, 48, 48), "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "interpolation": "bicubic",
        "crop_pct": 1.0, "num_classes": 0, "first_conv": "head.0", "classifier": "",
        "paper": "https://arxiv.org/abs/1807.02758", "origin_url": "https://github.com/yulunzhang/RCAN",
        "license": "mit", **kwargs})


_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"  # small weights shipped inside the package
_RELEASE_NOTE = "the RCAN release files (RCAN_BIX{s}.pt) are on Google Drive / Dropbox; place the file in the torch hub cache"
default_cfgs = register_pretrained_cfgs({
    "rcan_x2.release": _cfg(filename="RCAN_BIX2.pt", notes=_RELEASE_NOTE.format(s=2)),
    "rcan_x3.release": _cfg(filename="RCAN_BIX3.pt", notes=_RELEASE_NOTE.format(s=3)),
    "rcan_x4.release": _cfg(filename="RCAN_BIX4.pt", notes=_RELEASE_NOTE.format(s=4)),
    "rcan_x8.release": _cfg(filename="RCAN_BIX8.pt", notes=_RELEASE_NOTE.format(s=8)),
    "rcan_tiny_x2.quickstart": _cfg(
        file=str(_WEIGHTS / "rcan_tiny_x2.safetensors"), license="apache-2.0", origin_url="",
        notes="trained by this project with configs/quickstart.yaml (longer) on scikit-image's bundled photographs"),
    "rcan": _cfg(),
})


def _create_rcan(variant: str, pretrained: Any = False, **kwargs: Any) -> RCAN:
    return build_model(RCAN, variant, pretrained, filter_fn=checkpoint_filter_fn, **kwargs)


@register_model
def rcan(pretrained: Any = False, **kwargs: Any) -> RCAN:
    """RCAN with any ``scale``, ``n_resgroups``, ``n_resblocks``, ``n_feats``, ``reduction``."""
    return _create_rcan("rcan", pretrained, **kwargs)


@register_model
def rcan_tiny_x2(pretrained: Any = False, **kwargs: Any) -> RCAN:
    """A small RCAN x2 (2 groups x 3 blocks, 32 features) that trains on a CPU in minutes; its weights
    ship with the package, so ``pretrained=True`` works offline."""
    return _create_rcan("rcan_tiny_x2", pretrained, **{"scale": 2, "n_resgroups": 2, "n_resblocks": 3,
                                                      "n_feats": 32, "reduction": 8, **kwargs})


@register_model
def rcan_x2(pretrained: Any = False, **kwargs: Any) -> RCAN:
    """RCAN x2, paper size (10 groups x 20 blocks, 64 features)."""
    return _create_rcan("rcan_x2", pretrained, **{"scale": 2, **kwargs})


@register_model
def rcan_x3(pretrained: Any = False, **kwargs: Any) -> RCAN:
    """RCAN x3, paper size."""
    return _create_rcan("rcan_x3", pretrained, **{"scale": 3, **kwargs})


@register_model
def rcan_x4(pretrained: Any = False, **kwargs: Any) -> RCAN:
    """RCAN x4, paper size."""
    return _create_rcan("rcan_x4", pretrained, **{"scale": 4, **kwargs})


@register_model
def rcan_x8(pretrained: Any = False, **kwargs: Any) -> RCAN:
    """RCAN x8, paper size."""
    return _create_rcan("rcan_x8", pretrained, **{"scale": 8, **kwargs})
