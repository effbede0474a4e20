"""Excite step of channel attention: rescale every channel of a feature map by its gate."""
from __future__ import annotations

import torch

from .dispatch import kernel_op


@kernel_op("channel_scale")
def channel_scale(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """y[b, c, h, w] = x[b, c, h, w] * gate[b, c]; the result keeps x's dtype and memory format."""
    return x * gate.to(x.dtype)[:, :, None, None]  # (B, C, 1, 1) broadcast over H, W
