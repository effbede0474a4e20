"""The shape every channel-attention block shares: y = x * gate(x), gate of shape (B, C)."""
from __future__ import annotations

import torch
from torch import nn

from zoo import kernels

from .layers import check_channels


class ChannelGate(nn.Module):
    """Base class: subclasses compute a per-channel gate in ``channel_gate``; the rescale is a kernel.

    Splitting the gate from the rescale lets a model fuse the rescale with its own epilogue
    (e.g. a residual add) while keeping the block's parameters and state dict unchanged.
    """

    channels: int

    def channel_gate(self, x: torch.Tensor) -> torch.Tensor:
        """The gate, (B, C), for an input of shape (B, C, H, W)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_channels(type(self).__name__, self.channels, x)
        return kernels.channel_scale(x, self.channel_gate(x))
