"""RCAN's channel attention (Zhang et al., "Image Super-Resolution Using Very Deep Residual
Channel Attention Networks", ECCV 2018)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo import kernels

from .gate import ChannelGate
from .layers import fused_mlp_gate, param_dtype, pointwise
from .registry import register


@register("ca")
class ChannelAttention(ChannelGate):
    """RCAN's CA layer: ``y = x * sigmoid(W_U relu(W_D mean_hw(x) + b_D) + b_U)``.

    ``W_D``/``W_U`` are the 1x1 convs ``conv_du.0``/``conv_du.2`` (with bias) of the RCAN release,
    reducing ``channels`` by ``reduction``.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if channels // reduction < 1:
            raise ValueError(f"reduction={reduction} leaves no channels out of {channels}; use reduction <= {channels}")
        factory = {"device": device, "dtype": dtype}
        self.channels = channels
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1, bias=True, **factory),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1, bias=True, **factory),
            nn.Sigmoid(),
        )

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        down, act, up, gate = self.conv_du
        fused = fused_mlp_gate(x, None, down, act, up, gate)
        if fused is not None:
            return fused
        s = kernels.pool_mean(x)
        s = s.to(param_dtype(down, s.dtype))  # (B, C)
        s = F.relu(pointwise(down, s))  # (B, C / r)
        return torch.sigmoid(pointwise(up, s))  # (B, C)
