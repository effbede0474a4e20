"""The convolutional encoder and decoder of VAR's tokenizer (the VQGAN / LDM f16 pair).

Tian et al., "Visual Autoregressive Modeling", NeurIPS 2024; the release's ``models/basic_vae.py``
names (``conv_in``, ``down.{i}.block.{j}``, ``mid.block_1``, ``norm_out``, ...), so its files load
unchanged into :class:`zoo.models.vqvae.VQVAE`, which quantizes between the two.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Encoder", "Decoder", "ResnetBlock", "AttnBlock"]


def _group_norm(channels: int, **factory: Any) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, **factory)


class ResnetBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, twice, plus a (1x1 where widths differ) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, **factory: Any) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels, **factory)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, **factory)
        self.norm2 = _group_norm(out_channels, **factory)
        self.dropout = nn.Dropout(dropout) if dropout > 1e-6 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, **factory)
        self.nin_shortcut = (nn.Conv2d(in_channels, out_channels, 1, **factory) if in_channels != out_channels
                             else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over the H*W positions, residual."""

    def __init__(self, channels: int, **factory: Any) -> None:
        super().__init__()
        self.norm = _group_norm(channels, **factory)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, **factory)
        self.proj_out = nn.Conv2d(channels, channels, 1, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)  # each (B, C, HW)
        attn = torch.bmm(q.transpose(1, 2), k).mul_(c ** -0.5).softmax(dim=2)  # (B, HW_q, HW_k)
        out = torch.bmm(v, attn.transpose(1, 2)).view(b, c, h, w)  # (B, C, H, W)
        return x + self.proj_out(out)


class Downsample2x(nn.Module):
    def __init__(self, channels: int, **factory: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad, as LDM


class Upsample2x(nn.Module):
    def __init__(self, channels: int, **factory: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def _stage(blocks: list[nn.Module], attns: list[nn.Module]) -> nn.Module:
    stage = nn.Module()
    stage.block, stage.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
    return stage


class Encoder(nn.Module):
    """LDM's encoder: ``len(ch_mult) - 1`` stride-2 stages, attention at the last, a mid block."""

    def __init__(self, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 dropout: float = 0.0, in_channels: int = 3, z_channels: int = 32, using_sa: bool = True,
                 using_mid_sa: bool = True, **factory: Any) -> None:
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1, **factory)
        in_mult = (1, *ch_mult)
        self.down = nn.ModuleList()
        block_in = ch
        for level, mult in enumerate(ch_mult):
            block_in, block_out = ch * in_mult[level], ch * mult
            last = level == self.num_resolutions - 1
            blocks = [ResnetBlock(block_in if i == 0 else block_out, block_out, dropout, **factory)
                      for i in range(num_res_blocks)]
            block_in = block_out
            stage = _stage(blocks, [AttnBlock(block_out, **factory) for _ in range(num_res_blocks)] if last and using_sa else [])
            if not last:
                stage.downsample = Downsample2x(block_out, **factory)
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout, **factory)
        self.mid.attn_1 = AttnBlock(block_in, **factory) if using_mid_sa else nn.Identity()
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout, **factory)
        self.norm_out = _group_norm(block_in, **factory)
        self.conv_out = nn.Conv2d(block_in, z_channels, 3, padding=1, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, stage in enumerate(self.down):
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if level != self.num_resolutions - 1:
                h = stage.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """LDM's decoder, the encoder's mirror with ``num_res_blocks + 1`` blocks per stage."""

    def __init__(self, ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4), num_res_blocks: int = 2,
                 dropout: float = 0.0, in_channels: int = 3, z_channels: int = 32, using_sa: bool = True,
                 using_mid_sa: bool = True, **factory: Any) -> None:
        super().__init__()
        self.num_resolutions, self.num_res_blocks = len(ch_mult), num_res_blocks
        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1, **factory)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, dropout, **factory)
        self.mid.attn_1 = AttnBlock(block_in, **factory) if using_mid_sa else nn.Identity()
        self.mid.block_2 = ResnetBlock(block_in, block_in, dropout, **factory)
        stages = []
        for level in reversed(range(self.num_resolutions)):
            block_out = ch * ch_mult[level]
            blocks = [ResnetBlock(block_in if i == 0 else block_out, block_out, dropout, **factory)
                      for i in range(num_res_blocks + 1)]
            block_in = block_out
            last = level == self.num_resolutions - 1
            stage = _stage(blocks, [AttnBlock(block_out, **factory) for _ in range(num_res_blocks + 1)]
                           if last and using_sa else [])
            if level != 0:
                stage.upsample = Upsample2x(block_out, **factory)
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)  # up[0] is the finest stage, as the release
        self.norm_out = _group_norm(block_in, **factory)
        self.conv_out = nn.Conv2d(block_in, in_channels, 3, padding=1, **factory)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(self.num_resolutions)):
            stage = self.up[level]
            for i, block in enumerate(stage.block):
                h = block(h)
                if len(stage.attn):
                    h = stage.attn[i](h)
            if level != 0:
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
