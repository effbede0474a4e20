"""Squeeze-and-Excitation (Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018)."""
from __future__ import annotations

import torch
from timm.layers import make_divisible
from torch import nn

from zoo import kernels

from .gate import ChannelGate
from .layers import LayerType, create_act, fused_mlp_gate, param_dtype, pointwise
from .registry import register


@register("se")
class SqueezeExcite(ChannelGate):
    """SE block: ``y = x * gate(fc2(act(fc1(mean_hw(x)))))``.

    ``fc1``/``fc2`` are 1x1 convolutions with bias, the layout of timm's ``SEModule`` and
    torchvision's ``SqueezeExcitation``, so their checkpoints load unchanged. The squeeze width is
    ``rd_channels`` if given, else ``channels * rd_ratio`` rounded to a multiple of ``rd_divisor``
    (timm's rule; ``rd_divisor=1`` gives the paper's plain ``C / r``).
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        act_layer: LayerType = "relu",
        gate_layer: LayerType = "sigmoid",
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.channels = channels
        if rd_channels is None:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=bias, **factory)
        self.act = create_act(act_layer)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=bias, **factory)
        self.gate = create_act(gate_layer)

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        fused = fused_mlp_gate(x, None, self.fc1, self.act, self.fc2, self.gate)
        if fused is not None:
            return fused
        s = kernels.pool_mean(x)
        s = s.to(param_dtype(self.fc1, s.dtype))  # (B, C)
        s = self.act(pointwise(self.fc1, s))  # (B, rd)
        return self.gate(pointwise(self.fc2, s))  # (B, C)
