"""Efficient Channel Attention (Wang et al., "ECA-Net", CVPR 2020)."""
from __future__ import annotations

import torch
from torch import nn

from zoo import kernels

from .gate import ChannelGate
from .layers import LayerType, create_act, eca_kernel_size, fused_conv_gate
from .registry import register


@register("eca")
class EfficientChannelAttention(ChannelGate):
    """ECA block: ``y = x * sigmoid(conv1d_k(mean_hw(x)))``, the 1-D conv running along channels.

    No dimensionality reduction: ``k`` neighbouring channels interact through one shared kernel
    (``conv.weight`` of shape (1, 1, k), no bias, zero padding ``(k - 1) / 2``). ``k_size=None``
    picks the paper's adaptive size ``k = |log2(C) / gamma + beta / gamma|_odd``.
    """

    def __init__(
        self,
        channels: int,
        k_size: int | None = None,
        gamma: float = 2.0,
        beta: float = 1.0,
        gate_layer: LayerType = "sigmoid",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = channels
        k = eca_kernel_size(channels, gamma, beta) if k_size is None else int(k_size)
        if k < 1 or k % 2 == 0:
            raise ValueError(f"ECA needs an odd kernel size >= 1 so the output keeps C channels; got k_size={k}")
        self.k_size = k
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False, device=device, dtype=dtype)
        self.gate = create_act(gate_layer)

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        fused = fused_conv_gate(x, self.conv, self.gate)
        if fused is not None:
            return fused
        s = kernels.pool_mean(x).to(self.conv.weight.dtype)  # (B, C)
        return self.gate(self.conv(s[:, None, :])[:, 0, :])  # channels as a length-C sequence: (B, 1, C)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, k_size={self.k_size}"
