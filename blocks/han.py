"""HAN's two attention blocks (Niu et al., "Single Image Super-Resolution via a Holistic Attention
Network", ECCV 2020, https://arxiv.org/abs/2008.08767): the layer attention module (LAM), which
reweights the outputs of the network's residual groups by their mutual correlation, and the
channel-spatial attention module (CSAM), a 3-D convolution gate over (channel, height, width).

Both follow the release (wwlCape/HAN ``src/model/han.py``: ``LAM_Module``, ``CSAM_Module``) formula
for formula and key for key, so its checkpoints load unchanged.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from zoo import kernels
from zoo.kernels.dispatch import autocast_off

from .fusion import can_fuse
from .layers import check_channels
from .registry import register

__all__ = ["ChannelSpatialAttention", "LayerAttention"]


@register("lam")
class LayerAttention(nn.Module):
    """HAN's layer attention module (LAM, Sec. 3.2 of the paper).

    The input stacks ``N`` layers' features, ``x`` of shape (B, N, C, H, W). With each layer flattened
    to a row, ``F = x.view(B, N, C*H*W)``, the release computes::

        E = F F^T                                   (B, N, N), correlation of the layers
        A = softmax_j(max_j E - E)                  row-wise softmax
        y = gamma * (A F) + F, viewed as (B, N*C, H, W)

    ``max_j E - E`` is the release's (and DANet's channel attention's) form; a softmax is invariant to
    the row shift, so ``A = softmax(-E)``: a layer attends most to the layers it correlates *least*
    with. It is kept as released because the weights were trained with it.

    ``gamma`` (key ``gamma``, shape (1,)) starts at 0, so the block starts as the identity. The
    correlation is computed in fp32 (fp64 for fp64 inputs) even under ``torch.autocast``: ``E`` sums
    ``C*H*W`` products and grows large, where bf16's 8-bit mantissa would decide the softmax; the
    result is returned in the input's dtype.

    Args:
        channels: ``C``, the channels of each stacked layer (e.g. ``n_feats`` in HAN).
        num_layers: ``N``, the number of stacked layers; the block has no per-layer weight, so any
            ``N`` works, but when given, inputs with another ``N`` are refused (HAN passes 11).
    """

    def __init__(
        self,
        channels: int,
        num_layers: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_layers is not None and num_layers < 1:
            raise ValueError(f"num_layers must be at least 1; got {num_layers}")
        self.channels, self.num_layers = channels, num_layers
        self.gamma = nn.Parameter(torch.zeros(1, device=device, dtype=dtype))

    def _check_input(self, x: torch.Tensor) -> None:
        n = self.num_layers
        if x.ndim != 5 or x.shape[2] != self.channels or (n is not None and x.shape[1] != n):
            raise ValueError(f"LayerAttention expects stacked layers (B, N, C, H, W) with C={self.channels}"
                             + (f" and N={n}" if n is not None else "") + f"; got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        b, n, c, h, w = x.shape
        compute = torch.promote_types(x.dtype, torch.float32)
        with autocast_off(x.device.type):
            feats = x.to(compute).reshape(b, n, c * h * w)  # (B, N, C*H*W)
            energy = torch.bmm(feats, feats.transpose(1, 2))  # (B, N, N)
            # subtracting the row max only shifts the logits: kept for bit-level parity with the release
            attn = torch.softmax(energy.amax(dim=-1, keepdim=True) - energy, dim=-1)  # (B, N, N)
            out = self.gamma.to(compute) * torch.bmm(attn, feats) + feats  # (B, N, C*H*W)
        return rearrange(out, "b n (c h w) -> b (n c) h w", c=c, h=h, w=w).to(x.dtype)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_layers={self.num_layers}"


@register("csam")
class ChannelSpatialAttention(nn.Module):
    """HAN's channel-spatial attention module (CSAM, Sec. 3.3 of the paper).

    The feature map ``x`` (B, C, H, W) is read as a one-channel volume (B, 1, C, H, W), so a single
    3x3x3 convolution (``conv``, a ``Conv3d(1, 1, 3, padding=1)`` with bias) looks at neighbouring
    channels and positions together, and gives every (channel, position) its own gate::

        y = x * (gamma * sigmoid(conv(x))) + x

    ``gamma`` (key ``gamma``, shape (1,)) starts at 0 as in the release, so the block starts as the
    identity, and ``conv`` gets no gradient until ``gamma`` moves away from 0.

    Args:
        channels: ``C``. The convolution works for any C (it slides along the channels); the count
            is only used to refuse inputs of another width.
    """

    def __init__(
        self,
        channels: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channels = channels
        self.conv = nn.Conv3d(1, 1, 3, stride=1, padding=1, bias=True, **factory)
        self.gamma = nn.Parameter(torch.zeros(1, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"ChannelSpatialAttention expects (B, C, H, W); got shape {tuple(x.shape)}")
        check_channels(type(self).__name__, self.channels, x)
        if type(self.conv) is nn.Conv3d and can_fuse(self.conv) and self.conv.weight.dtype == x.dtype:
            args = (x, self.conv.weight.view(3, 3, 3), self.conv.bias, self.gamma)
            if kernels.csam_runs_fused(x):  # one pass: the 27 neighbours from cache, y written once
                return kernels.csam(*args)
            return kernels.csam_reference(*args)  # the conv as 3x3 conv2d slices: 3-7x ATen's conv3d on a CPU
        gate = torch.sigmoid(self.conv(x.unsqueeze(1)))  # (B, 1, C, H, W)
        return x * (self.gamma * gate).squeeze(1) + x  # gate back to (B, C, H, W)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
